"""A consortium under writes while its members are killed and restarted: is anything lost?

    python bench/soak.py [--minutes 10] [--rate 40] [--kill-every 8]

What an operator would try before trusting the product with a year: four member daemons (TLS,
LMDB synced, the production defaults from ``init_consortium``) on 127.0.0.1, a writer that posts
client-signed transactions to a random live member and waits for ``majority``, and a killer that
every ``--kill-every`` seconds sends SIGKILL to a random member other than firm-a and starts it
again. firm-a is never killed, so its memory over the run says whether a long-running node grows.

At the end, with every member up: every write acknowledged at ``majority`` must be on the best
chain of every member (a lost acknowledged write is the failure this looks for), every member
must hold the same block at every height up to the lowest ``unanimous_signed`` head, and no
member's log may hold a traceback. Exit status 0 when all of that holds, 1 otherwise; a report
on stdout (and ``--out`` JSON). Bounded in time and count; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import trio  # noqa: E402

from bench.procs import ManagedProcesses, free_ports, wait_until  # noqa: E402

MEMBERS = ("firm-a", "firm-b", "firm-c", "firm-d")
KEEPER = "firm-a"
"""Never killed: its resident memory across the run is the long-running node's."""
WAIT_S = 10.0
"""How long a write waits for ``majority`` before it counts as not acknowledged."""
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 120.0
SAMPLE_EVERY_S = 15.0
CHECK_CONCURRENCY = 16


def rss_kib(pid: int) -> dict[str, int]:
    """Resident memory by kind: ``RssAnon`` is the process's own (the heap: what a leak grows);
    ``RssFile`` is mostly LMDB's memory-mapped store, pages the kernel may drop at any time, so
    it follows the store's size and the reads, not the process's health."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("RssAnon", "RssFile"):
                found[key] = int(line.split()[1])
    except OSError:
        pass
    return found


class Soak:
    def __init__(self, procs: ManagedProcesses, workdir: Path, args: argparse.Namespace) -> None:
        from peerdb.consortium_file import load_consortium
        from peerdb.core.keys import SigningKey
        from peerdb.core.model import consortium_id
        from peerdb.keyfile import read_key
        from peerdb.setup_files import init_consortium

        self.procs, self.args = procs, args
        self.dir = workdir / "consortium"
        ports = free_ports(2 * len(MEMBERS))
        init_consortium(self.dir, "soak", list(MEMBERS), ports=ports[:len(MEMBERS)],
                        api_ports=ports[len(MEMBERS):], overwrite=True)
        consortium = load_consortium(self.dir / "consortium.toml")
        self.cid = consortium_id(consortium)
        self.api: dict[str, tuple[str, str]] = {}
        for name in MEMBERS:
            cfg = tomllib.loads((self.dir / f"{name}.toml").read_text())
            self.api[name] = (cfg["api"]["listen"], cfg["api"]["token"])
        self.client_keys = {n: SigningKey(read_key(self.dir / "keys" / f"{n}-client.key")[0].seed) for n in MEMBERS}
        self.pids: dict[str, int] = {}
        self.up: set[str] = set()
        self.acked: list[tuple[str, bytes]] = []
        self.unacked = 0
        self.kills: list[dict[str, Any]] = []
        self.rss: list[tuple[float, dict[str, int]]] = []
        self.nonce = itertools.count(random.getrandbits(40))

    # --- members -------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        argv = [sys.executable, "-m", "cli", "node", "run", "--config", str(self.dir / f"{name}.toml")]
        proc = self.procs.spawn(name, argv, log_path=self.dir / f"{name}.log")
        self.pids[name] = proc.pid

    def ready(self, name: str) -> bool:
        api, token = self.api[name]
        try:
            return httpx.get(f"http://{api}/v1/status", headers={"Authorization": f"Bearer {token}"},
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    async def killer(self, stop_at: float) -> None:
        victims = [m for m in MEMBERS if m != KEEPER]
        while trio.current_time() + self.args.kill_every < stop_at:
            await trio.sleep(self.args.kill_every)
            name = random.choice(victims)
            self.up.discard(name)
            pid = self.pids[name]
            os.kill(pid, signal.SIGKILL)  # our own child, by its PID
            self.procs.stop(pid)  # reaps it (already dead: nothing else is signalled)
            await trio.sleep(random.uniform(0.5, 2.0))
            began = trio.current_time()
            self.start(name)
            with trio.fail_after(START_TIMEOUT_S):
                while not await trio.to_thread.run_sync(self.ready, name):
                    await trio.sleep(0.1)
            self.up.add(name)
            self.kills.append({"member": name, "ready_s": round(trio.current_time() - began, 2)})

    # --- writes --------------------------------------------------------------------------------

    def tx(self, member: str) -> Any:
        from peerdb.core.model import OP_PUT, Op, Tx
        n = next(self.nonce)
        return Tx.create(self.client_keys[member], self.cid, member, n, int(time.time() * 1000) + 600_000,
                         [Op(OP_PUT, "soak", f"k{n % 5000}", os.urandom(16))])

    async def write(self, client: httpx.AsyncClient) -> None:
        member = random.choice(sorted(self.up))
        tx = self.tx(member)
        api, token = self.api[member]
        try:
            r = await client.post(f"http://{api}/v1/txs", headers={"Authorization": f"Bearer {token}"},
                                  json={"txs": [base64.b64encode(tx.raw).decode()], "wait": "majority",
                                        "timeout_s": WAIT_S}, timeout=WAIT_S + 5)
            if r.status_code == 200 and r.json().get("wait", {}).get("reached"):
                self.acked.append((member, tx.txid))
                return
        except httpx.HTTPError:
            pass
        self.unacked += 1  # refused, timed out, or the member died under it: not acknowledged, not counted

    async def writer(self, stop_at: float) -> None:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            begin = trio.current_time()
            for i in itertools.count():
                due = begin + i / self.args.rate
                if due >= stop_at:
                    break
                await trio.sleep_until(due)
                nursery.start_soon(self.write, client)

    async def sampler(self, stop_at: float) -> None:
        begin = trio.current_time()
        while trio.current_time() < stop_at:
            self.rss.append((round(trio.current_time() - begin, 1), rss_kib(self.pids[KEEPER])))
            await trio.sleep(SAMPLE_EVERY_S)

    async def run(self) -> None:
        stop_at = trio.current_time() + self.args.minutes * 60
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.killer, stop_at)
            nursery.start_soon(self.writer, stop_at)
            nursery.start_soon(self.sampler, stop_at)

    # --- the checks ----------------------------------------------------------------------------

    async def status(self, client: httpx.AsyncClient, name: str) -> dict[str, Any]:
        api, token = self.api[name]
        r = await client.get(f"http://{api}/v1/status", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    async def check(self) -> dict[str, Any]:
        problems: list[str] = []
        async with httpx.AsyncClient(timeout=30) as client:
            # Every member catches up to where the acknowledged writes are.
            deadline = trio.current_time() + SETTLE_TIMEOUT_S
            while True:
                heads = {n: (await self.status(client, n))["heads"] for n in MEMBERS}
                if min(h["unanimous_signed"] for h in heads.values()) >= max(h["majority"] for h in heads.values()) \
                        or trio.current_time() > deadline:
                    break
                await trio.sleep(1)
            lost: list[str] = []
            limiter = trio.Semaphore(CHECK_CONCURRENCY)

            async def look(member: str, txid: bytes) -> None:
                api, token = self.api[member]
                async with limiter:
                    r = await client.get(f"http://{api}/v1/tx/{txid.hex()}", headers={"Authorization": f"Bearer {token}"})
                if r.status_code != 200 or r.json().get("status") == "pending":
                    lost.append(f"{txid.hex()[:16]} (acknowledged by {self.writer_of[txid]}) not on {member}'s chain: "
                                f"{r.status_code} {r.text[:120]}")

            self.writer_of = {txid: m for m, txid in self.acked}
            async with trio.open_nursery() as nursery:
                for member in MEMBERS:
                    for _m, txid in self.acked:
                        nursery.start_soon(look, member, txid)
            problems += lost[:20]
            # The same block at every height up to the lowest unanimous_signed head (a sample).
            top = min(h["unanimous_signed"] for h in heads.values())
            heights = sorted({*range(1, top + 1, max(1, top // 200)), *range(max(1, top - 50), top + 1)})
            for h in heights:
                hashes = set()
                for member in MEMBERS:
                    api, token = self.api[member]
                    r = await client.get(f"http://{api}/v1/blocks/{h}", headers={"Authorization": f"Bearer {token}"})
                    hashes.add(r.json().get("hash") if r.status_code == 200 else f"HTTP {r.status_code}")
                if len(hashes) != 1:
                    problems.append(f"height {h}: members hold different blocks: {sorted(hashes)}")
        tracebacks = {n: (self.dir / f"{n}.log").read_text(errors="replace").count("Traceback") for n in MEMBERS}
        keeper_dir = self.dir / "data" / KEEPER
        store_bytes = sum(f.stat().st_size for f in keeper_dir.rglob("*") if f.is_file())
        store_used = sum(f.stat().st_blocks * 512 for f in keeper_dir.rglob("*") if f.is_file())
        problems += [f"{n}'s log holds {c} traceback(s)" for n, c in tracebacks.items() if c]
        return {"heads": heads, "lost": len(lost), "checked_blocks": len(heights), "tracebacks": tracebacks,
                "keeper_store_bytes": store_bytes, "keeper_store_disk_bytes": store_used,
                "keeper_store_bytes_per_block": round(store_used / max(1, heads[KEEPER]["tentative"])),
                "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the writes and kills go on (default 10)")
    parser.add_argument("--rate", type=float, default=40.0, help="writes offered per second (default 40)")
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds between kills (default 8)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with ManagedProcesses() as procs, tempfile.TemporaryDirectory(prefix="peerdb-soak-") as tmp:
        soak = Soak(procs, Path(tmp), args)
        for name in MEMBERS:
            soak.start(name)
        wait_until(lambda: all(soak.ready(n) for n in MEMBERS), timeout_s=START_TIMEOUT_S, what="members answering")
        soak.up = set(MEMBERS)
        started = time.monotonic()
        trio.run(soak.run)
        soaked = time.monotonic() - started
        result = trio.run(soak.check)
        report = {"minutes": round(soaked / 60, 2), "offered_rate": args.rate, "acknowledged": len(soak.acked),
                  "not_acknowledged": soak.unacked, "kills": len(soak.kills),
                  "restart_to_ready_s_max": max((k["ready_s"] for k in soak.kills), default=None),
                  "keeper_rss_kib": soak.rss, "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
                  **result}
    print(json.dumps({k: v for k, v in report.items() if k != "keeper_rss_kib"}, indent=1))
    for kind in ("RssAnon", "RssFile"):
        rss = [kib[kind] for _t, kib in report["keeper_rss_kib"] if kind in kib]
        if rss:
            print(f"{KEEPER} {kind}: first {rss[0] / 1024:.0f} MiB, max {max(rss) / 1024:.0f} MiB, "
                  f"last {rss[-1] / 1024:.0f} MiB ({len(rss)} samples every {SAMPLE_EVERY_S:g} s)")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("SOAK: OK" if not report["problems"] else "SOAK: FAILED\n  " + "\n  ".join(report["problems"]))
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
