"""PeerDB: four member daemons as real processes, measured through the public HTTP API.

Settings (the production defaults, written by ``peerdb consortium init``): TLS 1.3 between
members, LMDB with ``sync = true`` (every commit fsynced), consortium parameters at their
defaults (heartbeat 1 s, turn timeout 3 s, at most 5,000 transactions per block). Each write is
one client-signed transaction (signed in ``prepare``, before the clock starts), posted to one
member's ``/v1/txs`` with ``wait = unanimous_signed``; the answer's ``levels_ms`` gives when the
transaction reached ``majority`` and ``unanimous_signed``. Anchoring is not part of these
figures (no Bitcoin node is attached).
"""

from __future__ import annotations

import base64
import importlib.metadata
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from bench import http1
from bench.drivers import Client, ClientSpec
from bench.errors import SubmitError
from bench.pool import Pool
from bench.procs import ManagedProcesses, dead_child, free_ports, wait_until

MEMBERS = 4
"""The consortium size the issue measures and ``bound_tps`` is computed for."""
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
CATCHUP_TIMEOUT_S = 300.0
CATCHUP_PRELOAD_TXS = 20_000
"""Transactions added in full batches before a member is wiped, so catch-up moves real blocks."""
NAMESPACE = "bench"
PRELOAD_ENV = "PEERDB_BENCH_PRELOAD_BLOCKS"
"""Start every member on a store that already holds this many blocks (``bench/run.py
--preload-blocks``): the same figures on an old consortium, to show they do not depend on age."""
LEVELS = ("majority", "unanimous_signed")


class PeerDBDriver:
    name = "peerdb"
    levels = LEVELS
    members = MEMBERS

    def __init__(self) -> None:
        self._pids: list[int] = []
        self._procs: dict[str, int] = {}
        self._workdir: Path | None = None

    def ensure_available(self, install: bool) -> None:
        return None  # PeerDB is this repository; nothing to install

    def version(self) -> str | None:
        try:
            return importlib.metadata.version("peerdb")
        except importlib.metadata.PackageNotFoundError:
            return None

    def how_measured(self) -> dict[str, Any]:
        return {
            "members": MEMBERS,
            "durability": "LMDB sync=true (fsync per commit); signing guard durable before each signature",
            "transport": "TLS 1.3 between members, certificates bound to member Ed25519 keys",
            "params": "consortium defaults (heartbeat_ms 1000, turn_timeout_ms 3000, max_block_txs 5000)",
            "client": "one client-signed transaction per POST /v1/txs with wait=unanimous_signed, "
                      "keep-alive HTTP/1.1 round-robin over members; levels from the answer's levels_ms",
            "ack": "majority: >50% of members endorse the block; unanimous_signed: all four signed "
                   "(anchoring excluded)",
        }

    def start(self, procs: ManagedProcesses, workdir: Path) -> ClientSpec:
        from peerdb.consortium_file import load_consortium
        from peerdb.core.model import consortium_id
        from peerdb.keyfile import read_key
        from peerdb.setup_files import init_consortium

        self._workdir = workdir / "peerdb"
        names = [f"firm-{chr(ord('a') + i)}" for i in range(MEMBERS)]
        ports = free_ports(2 * MEMBERS)
        preload = int(os.environ.get(PRELOAD_ENV, "0"))
        # An aged consortium: its chain began `preload` seconds ago, one block a second.
        genesis = int(time.time() * 1000) - (preload + 60) * 1000 if preload else None
        init_consortium(self._workdir, "bench", names, ports=ports[:MEMBERS], api_ports=ports[MEMBERS:],
                        overwrite=True, genesis_time_ms=genesis)
        if preload:
            from bench.chainfill import write_chain
            consortium = load_consortium(self._workdir / "consortium.toml")
            keys = {n: read_key(self._workdir / "keys" / f"{n}.key")[0] for n in names}
            clients = {n: read_key(self._workdir / "keys" / f"{n}-client.key")[0] for n in names}
            write_chain(self._workdir, consortium, keys, clients, preload, 0, members=names)
        started = []
        apis = []
        for name in names:
            cfg_path = self._workdir / f"{name}.toml"
            cfg = tomllib.loads(cfg_path.read_text())
            apis.append([cfg["api"]["listen"], cfg["api"]["token"]])
            log = self._workdir / f"{name}.log"
            proc = procs.spawn(name, [sys.executable, "-m", "cli", "node", "run", "--config", str(cfg_path)],
                               log_path=log)
            self._pids.append(proc.pid)
            self._procs[name] = proc.pid
            started.append((name, proc, log))
        wait_until(lambda: all(_ready(api, token) for api, token in apis), timeout_s=START_TIMEOUT_S,
                   what="PeerDB members answering", alive=lambda: dead_child(started))
        consortium = load_consortium(self._workdir / "consortium.toml")
        seeds = {n: read_key(self._workdir / "keys" / f"{n}-client.key")[0].seed.hex() for n in names}
        return {"kind": "peerdb", "apis": apis, "members": names, "cid": consortium_id(consortium).hex(),
                "client_seeds": seeds}

    def stop(self, procs: ManagedProcesses) -> None:
        for pid in self._pids:
            procs.stop(pid)
        self._pids.clear()

    def extra_measurements(self, procs: ManagedProcesses, workdir: Path) -> dict[str, Any]:
        """bytes per stored transaction, audit verification rate, catch-up rate (see the module doc)."""
        out: dict[str, Any] = {"bytes_per_tx": None, "audit_verify_tps": None, "catchup_tps": None}
        if self._workdir is None:
            return out
        if int(os.environ.get(PRELOAD_ENV, "0")):
            # Per-transaction figures over a chain of mostly empty preloaded blocks would measure
            # the preload, not the node: they are taken on fresh runs only.
            out["extras_note"] = "not measured on a preloaded chain (they divide by the transactions on it)"
            return out
        api, token = self._first_api()
        txs = _transactions_on_chain(api, token)
        if not txs:
            return out
        data = self._workdir / "data" / "firm-a"
        out["bytes_per_tx"] = round(sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / txs, 1)
        out["transactions_on_chain"] = txs
        cli = [sys.executable, "-m", "cli"]
        bundle = self._workdir / "audit.bundle"
        export = subprocess.run([*cli, "-c", str(self._workdir / "firm-a.toml"), "audit", "export", "--out",
                                 str(bundle), "--force", "--json"], capture_output=True, text=True, timeout=600)
        if export.returncode == 0:
            verify = subprocess.run([*cli, "audit", "verify", str(bundle), "--json"], capture_output=True,
                                    text=True, timeout=900)
            if verify.returncode == 0:
                out["audit_verify_tps"] = json.loads(verify.stdout).get("tx_per_s")
        # Catch-up is measured on a chain with real blocks: preload full batches first.
        txs += self._preload(api, token, CATCHUP_PRELOAD_TXS)
        out["catchup_tps"] = self._catchup(procs, api, token, txs)
        out["catchup_chain_transactions"] = txs
        return out

    def _preload(self, api: str, token: str, count: int) -> int:
        """Submit ``count`` transactions in 500-transaction requests and wait until they are
        unanimous-signed; returns how many went in."""
        from peerdb.consortium_file import load_consortium
        from peerdb.core.model import OP_PUT, Op, Tx, consortium_id
        from peerdb.keyfile import read_key
        assert self._workdir is not None
        consortium = load_consortium(self._workdir / "consortium.toml")
        cid = consortium_id(consortium)
        key = read_key(self._workdir / "keys" / "firm-a-client.key")[0]
        expires = int(time.time() * 1000) + 3_600_000
        base = random.getrandbits(40)
        headers = {"Authorization": f"Bearer {token}"}
        done = 0
        with httpx.Client(base_url=f"http://{api}", headers=headers, timeout=REQUEST_TIMEOUT_S + 10) as client:
            for start in range(0, count, 500):
                batch = [Tx.create(key, cid, "firm-a", base + i, expires,
                                   [Op(OP_PUT, NAMESPACE, f"pre{base + i}", b"p" * 150)])
                         for i in range(start, min(count, start + 500))]
                r = client.post("/v1/txs", json={"txs": [base64.b64encode(t.raw).decode() for t in batch],
                                                 "wait": "unanimous_signed", "timeout_s": REQUEST_TIMEOUT_S})
                if r.status_code == 200 and r.json().get("wait", {}).get("reached"):
                    done += len(batch)
        return done

    def _catchup(self, procs: ManagedProcesses, api: str, token: str, txs: int) -> float | None:
        """Wipe firm-d's data and restart it: transactions fetched, verified and applied per second."""
        assert self._workdir is not None
        name = "firm-d"
        if name not in self._procs:
            return None
        procs.stop(self._procs[name])
        shutil.rmtree(self._workdir / "data" / name, ignore_errors=True)
        target = _status(api, token)["heads"]["tentative"]
        cfg_path = self._workdir / f"{name}.toml"
        cfg = tomllib.loads(cfg_path.read_text())
        proc = procs.spawn(name, [sys.executable, "-m", "cli", "node", "run", "--config", str(cfg_path)],
                           log_path=self._workdir / f"{name}.log")
        self._procs[name] = proc.pid
        self._pids.append(proc.pid)
        # The clock starts once the member answers (process start-up is not catch-up).
        wait_until(lambda: _ready(cfg["api"]["listen"], cfg["api"]["token"]), timeout_s=START_TIMEOUT_S,
                   what=f"{name} answering after the restart")
        start = time.monotonic()
        deadline = start + CATCHUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if _status(cfg["api"]["listen"], cfg["api"]["token"])["heads"]["tentative"] >= target:
                    return round(txs / (time.monotonic() - start), 1)
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return None

    def trace_counts(self) -> dict[str, dict[int, int]] | None:
        """Every member's block-cycle trace histograms (``GET /v1/trace``), summed: stage ->
        bucket index -> count. Two of these subtract into one load step's stage breakdown."""
        from peerdb.node.trace import bucket_counts
        if self._workdir is None:
            return None
        total: dict[str, dict[int, int]] = {}
        for name in self._procs:
            cfg = tomllib.loads((self._workdir / f"{name}.toml").read_text())
            try:
                r = httpx.get(f"http://{cfg['api']['listen']}/v1/trace", params={"blocks": 0},
                              headers={"Authorization": f"Bearer {cfg['api']['token']}"}, timeout=10)
                r.raise_for_status()
            except httpx.HTTPError:
                return None  # a member that does not answer: no breakdown rather than a partial one
            for stage, counts in bucket_counts(r.json()).items():
                into = total.setdefault(stage, {})
                for index, n in counts.items():
                    into[index] = into.get(index, 0) + n
        return total

    def _first_api(self) -> tuple[str, str]:
        assert self._workdir is not None
        cfg = tomllib.loads((self._workdir / "firm-a.toml").read_text())
        return cfg["api"]["listen"], cfg["api"]["token"]


def _transactions_on_chain(api: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    tip = _status(api, token)["heads"]["tentative"]
    total = 0
    for start in range(1, tip + 1, 500):
        r = httpx.get(f"http://{api}/v1/blocks", params={"from": start, "to": min(tip, start + 499)},
                      headers=headers, timeout=30)
        r.raise_for_status()
        total += sum(b["tx_count"] for b in r.json()["blocks"])
    return total


def _ready(api: str, token: str) -> bool:
    try:
        r = httpx.get(f"http://{api}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def _status(api: str, token: str) -> dict[str, Any]:
    r = httpx.get(f"http://{api}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


class PeerDBClient:
    """Pre-signed transactions posted over keep-alive connections spread over the members."""

    def __init__(self, spec: ClientSpec, concurrency: int) -> None:
        from peerdb.core.keys import SigningKey
        self._cid = bytes.fromhex(spec["cid"])
        self._members = list(spec["members"])
        self._keys = {m: SigningKey(bytes.fromhex(seed)) for m, seed in spec["client_seeds"].items()}
        conns = []
        for i in range(concurrency):
            api, token = spec["apis"][i % len(spec["apis"])]
            host, port = api.rsplit(":", 1)
            conns.append((self._members[i % len(self._members)],
                          http1.Connection(host, int(port), {"Authorization": f"Bearer {token}"})))
        self._by_member: dict[str, Pool[http1.Connection]] = {
            m: Pool([c for owner, c in conns if owner == m]) for m in self._members}
        self._bodies: list[tuple[str, bytes]] = []
        self._next = itertools.count()

    async def prepare(self, count: int, value_bytes: int) -> None:
        from peerdb.core.model import OP_PUT, Op, Tx
        expires = int(time.time() * 1000) + 3_600_000
        nonce = random.getrandbits(40)
        for i in range(count):
            member = self._members[i % len(self._members)]
            value = bytes(random.getrandbits(8) for _ in range(8)) + b"v" * max(0, value_bytes - 8)
            tx = Tx.create(self._keys[member], self._cid, member, nonce + i, expires,
                           [Op(OP_PUT, NAMESPACE, f"k{nonce + i}", value)])
            body = json.dumps({"txs": [base64.b64encode(tx.raw).decode()], "wait": "unanimous_signed",
                               "timeout_s": REQUEST_TIMEOUT_S}).encode()
            self._bodies.append((member, body))
        for pool in self._by_member.values():
            for conn in pool.items:
                await conn.connect()

    async def submit(self, seq: int, key: bytes, value: bytes) -> Mapping[str, float]:
        index = next(self._next)
        if index >= len(self._bodies):
            raise SubmitError("more submissions than prepared transactions")
        member, body = self._bodies[index]
        start = trio.current_time()
        async with self._by_member[member].borrow() as conn:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S + 5):
                    status, answer = await conn.request("POST", "/v1/txs", body, "application/json")
            except trio.TooSlowError:
                await conn.close()
                raise SubmitError(f"no answer within {REQUEST_TIMEOUT_S} s") from None
            except http1.HTTPError as e:
                raise SubmitError(str(e)) from None
        if status != 200:
            raise SubmitError(f"HTTP {status}: {answer[:120]!r}")
        wait = json.loads(answer).get("wait", {})
        if not wait.get("reached"):
            raise SubmitError("not unanimous_signed within the request timeout")
        # The answer arrives when the last level is reached; earlier levels were reached the
        # server-measured interval before that (so the client's clock is the only clock used).
        done = trio.current_time()
        levels = wait.get("levels_ms", {})
        final = levels.get(LEVELS[-1], 0.0)
        return {level: max(start, done - (final - levels[level]) / 1000) for level in LEVELS if level in levels}

    async def aclose(self) -> None:
        for pool in self._by_member.values():
            for conn in pool.items:
                await conn.close()


def make_client(spec: ClientSpec, concurrency: int) -> Client:
    return PeerDBClient(spec, concurrency)


DRIVER_CLASS = PeerDBDriver
