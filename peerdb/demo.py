"""`peerdb demo`: the whole story on one machine, start to finish, in one command.

A regtest Bitcoin node, N member daemons (real processes, TLS, LMDB, synced writes) on
127.0.0.1, a workload of client-signed transactions through the public API, every block
co-signed by every member and anchored, an audit bundle exported and verified, a summary, and
everything stopped again. The exit status is 0 only if every step held.

SIGINT and SIGTERM stop everything the demo started, at any step: the demo sets its own
handlers, because a process started in the background by a script inherits SIGINT ignored, and
SIGTERM's default kills Python without running any cleanup, which would leave the regtest node
and every member daemon (each in its own session) running with parent 1.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .consortium_file import load_consortium
from .core.model import OP_PUT, Op, Tx, consortium_id
from .keyfile import read_key
from .localnet import LocalConsortium

DEMO_PARAMS = {"heartbeat_ms": 500, "turn_timeout_ms": 2000, "anchor_interval_s": 3, "anchor_confirmations": 1}
"""Quick turns and a short anchor interval so the story fits in a minute; production defaults
are in docs/protocol.md."""
BATCH = 50
"""Transactions per API request of the workload."""


class DemoFailed(Exception):
    pass


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so that no
    ``except Exception`` on the way swallows it before the demo stops what it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Stopped` in the main thread (whatever
    the process inherited); the previous handlers are restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a caller elsewhere handles its own
        return

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_held() -> Iterator[None]:
    """While the demo stops what it started, a second Ctrl-C or SIGTERM must not cut that
    short: both are ignored for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait_for_a_signal() -> None:
    """Wait until SIGINT or SIGTERM raises :class:`Stopped`."""
    while True:
        time.sleep(3600)


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic() - self.started
        return self.marks[name]


def _miner(regtest: Any, stop: threading.Event, interval_s: float = 1.0) -> None:
    """Mine a regtest block every second so anchors confirm (a real network does this itself)."""
    while not stop.wait(interval_s):
        try:
            regtest.mine(1)
        except Exception:  # noqa: BLE001 - the node may be stopping; the demo checks anchoring itself
            return


def run_demo(members: int = 4, txs: int = 200, workdir: str | None = None, keep_running: bool = False,
             echo: Callable[[str], None] = print, wait_forever: Callable[[], None] | None = None) -> int:
    """The demo; returns its exit status: 0 if every step held (with ``keep_running``, once
    stopped by SIGINT or SIGTERM after that), 1 if a step failed, 128 + the signal's number if
    a signal stopped it before it was done. ``wait_forever`` waits in the keep-running phase
    (default: until a signal)."""
    with stop_on_signals():
        return _run_demo(members, txs, workdir, keep_running, echo, wait_forever or _wait_for_a_signal)


def _run_demo(members: int, txs: int, workdir: str | None, keep_running: bool, echo: Callable[[str], None],
              wait_forever: Callable[[], None]) -> int:
    from .anchor.regtest import RegtestNode

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="peerdb-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    t = Timeline()
    echo(f"PeerDB demo in {work}")
    regtest = RegtestNode(work / "regtest")
    net: LocalConsortium | None = None
    stop_mining = threading.Event()
    miner: threading.Thread | None = None
    done = False
    try:
        echo("1/7 starting a regtest Bitcoin node (litecoind, Bitcoin Core 0.21 RPC) on 127.0.0.1 ...")
        regtest.start()
        echo(f"    regtest RPC on 127.0.0.1:{regtest.rpc_port}, wallet funded ({t.mark('bitcoin'):.1f} s)")
        if (work / "consortium").exists():
            shutil.rmtree(work / "consortium")
        net = LocalConsortium(work / "consortium", members=members, params=dict(DEMO_PARAMS),
                              bitcoin_rpc=regtest.wallet_url, metrics=True)
        net.write_files()
        echo(f"2/7 wrote keys and configs for {members} members in {net.directory}")
        net.start_all()
        net.wait_ready()
        echo(f"3/7 {members} member daemons up (TLS between them, LMDB synced) ({t.mark('nodes'):.1f} s)")
        miner = threading.Thread(target=_miner, args=(regtest, stop_mining), daemon=True)
        miner.start()

        consortium = load_consortium(net.directory / "consortium.toml")
        cid = consortium_id(consortium)
        names = list(net.nodes)
        client_keys = {n: read_key(net.directory / "keys" / f"{n}-client.key")[0] for n in names}
        nonce = itertools.count(random.getrandbits(40))
        now_ms = int(time.time() * 1000)
        work_txs = []
        for i in range(txs):
            member = names[i % len(names)]
            value = f'{{"seq": {i}, "amount": {random.randint(1, 10**6)}, "note": "{"x" * 80}"}}'.encode()
            work_txs.append(Tx.create(client_keys[member], cid, member, next(nonce), now_ms + 600_000,
                                      [Op(OP_PUT, "ledger", f"{member}/{i:06d}", value)]))
        echo(f"4/7 submitting {txs} client-signed transactions through the members' APIs ...")
        submit_at: dict[bytes, float] = {}

        latencies: dict[str, list[float]] = {"majority": [], "unanimous_signed": []}

        def submit(batch: list[Tx]) -> None:
            member = batch[0].member
            node = net.nodes[member]
            with node.client(timeout=150) as c:
                start = time.monotonic()
                r = c.post("/v1/txs", json={"txs": [base64.b64encode(tx.raw).decode() for tx in batch],
                                            "wait": "unanimous_signed", "timeout_s": 120})
                body = r.json()
                if r.status_code != 200 or len(body.get("accepted", [])) != len(batch):
                    raise DemoFailed(f"{member} refused transactions: {r.text[:300]}")
                if not body["wait"]["reached"]:
                    raise DemoFailed(f"{member}: a batch was not unanimous-signed within 120 s")
                total = time.monotonic() - start
                done_ms = body["wait"]["levels_ms"]["unanimous_signed"]
                for level in latencies:
                    latencies[level].append(total - (done_ms - body["wait"]["levels_ms"][level]) / 1000)
                for tx in batch:
                    submit_at[tx.txid] = start
        batches: list[list[Tx]] = []
        for member in names:
            mine = [tx for tx in work_txs if tx.member == member]
            batches.extend(mine[i:i + BATCH] for i in range(0, len(mine), BATCH))
        t0 = time.monotonic()
        pool = ThreadPoolExecutor(8)
        try:
            list(pool.map(submit, batches))
        finally:
            # On a signal, do not wait for the batches in flight: stopping the nodes ends them.
            pool.shutdown(wait=False, cancel_futures=True)
        t.mark("submitted")

        echo("5/7 waiting until every member has co-signed every block carrying them ...")
        last_of_batch = [batch[-1].txid for batch in batches]
        levels = _wait_levels(net, last_of_batch, "unanimous_signed", timeout=120)
        t_signed = time.monotonic() - t0
        t.mark("unanimous_signed")
        echo(f"    all {txs} transactions unanimous-signed after {t_signed:.2f} s "
             f"({txs / t_signed:.0f} tx/s end to end)")
        echo("6/7 waiting for the Bitcoin anchor to confirm (seed 001: a block is unanimous only when anchored) ...")
        _wait_levels(net, last_of_batch, "unanimous", timeout=180)
        t_unanimous = time.monotonic() - t0
        t.mark("unanimous")
        echo(f"    unanimous (signed by all and anchored) after {t_unanimous:.2f} s")

        echo("7/7 exporting an audit bundle from firm-a and verifying it independently ...")
        audit_summary = _audit(net, work, regtest.rpc_url)
        t.mark("audited")

        summary = _summary(net, levels, latencies, t, txs, t_signed, t_unanimous, audit_summary)
        echo(summary)
        done = True
        if keep_running:
            stop_mining.set()
            cfg = net.nodes[names[0]].config
            echo("\nThe consortium keeps running. Talk to it, for example:\n"
                 f"  peerdb -c {cfg} status\n"
                 f"  peerdb -c {cfg} put books 2026-Q4 '{{\"cash\": 1}}' --wait majority\n"
                 f"  peerdb -c {cfg} blocks list\n"
                 f"Explorer (in a browser): http://{net.nodes[names[0]].api}/explorer#token={net.nodes[names[0]].token}\n"
                 "Metrics (Prometheus, no token): "
                 + ", ".join(f"http://{n.metrics}/metrics" for n in net.nodes.values()) + "\n"
                 "Press Ctrl-C (or send SIGTERM) to stop everything.")
            stop_mining.clear()
            miner = threading.Thread(target=_miner, args=(regtest, stop_mining), daemon=True)
            miner.start()
            wait_forever()
        echo("PeerDB demo: OK")
        return 0
    except Stopped as stop:
        echo(f"{stop}: stopping everything the demo started ...")
        if done:
            echo("PeerDB demo: OK")
            return 0
        echo(f"PeerDB demo: interrupted by {stop}")
        return 128 + stop.signum
    except (DemoFailed, TimeoutError, RuntimeError, httpx.HTTPError) as exc:
        if net is not None:
            for node in net.nodes.values():
                echo(f"--- last lines of {node.name}'s log ({node.log_path}):\n{node.log_tail(15)}")
        echo(f"PeerDB demo FAILED: {exc}")
        return 1
    finally:
        with signals_held():
            stop_mining.set()
            if miner is not None:
                miner.join(timeout=5)
            if net is not None:
                net.stop_all()
            regtest.stop()
            echo(f"stopped everything the demo started; files (logs, data, bundle) remain in {work}")


def _wait_levels(net: LocalConsortium, txids: list[bytes], level: str, timeout: float) -> dict[str, int]:
    """Wait until every member reports every transaction at ``level`` or stronger; returns the
    height of the last one per member."""
    deadline = time.monotonic() + timeout
    heights: dict[str, int] = {}
    for name, node in net.nodes.items():
        with node.client() as c:
            top = 0
            pending = list(txids)
            while pending:  # first, where every transaction landed on this member's best chain
                info = c.get(f"/v1/tx/{pending[-1].hex()}").json()
                if "height" in info:
                    top = max(top, int(info["height"]))
                    pending.pop()
                    continue
                if time.monotonic() > deadline:
                    raise DemoFailed(f"{name}: transaction {pending[-1].hex()[:16]} not in a block after {timeout} s")
                time.sleep(0.05)
            while True:  # then, until that height is in the view
                status = c.get("/v1/status").json()
                if status["heads"][level] >= top:
                    heights[name] = top
                    break
                if time.monotonic() > deadline:
                    raise DemoFailed(f"{name}: height {top} not {level} after {timeout} s; heads "
                                     f"{status['heads']}; alerts {[a['message'] for a in status['alerts']]}")
                time.sleep(0.05)
    return heights


def _audit(net: LocalConsortium, work: Path, bitcoin_rpc: str) -> dict[str, Any]:
    """Export and verify exactly as an auditor would: with the `peerdb audit` commands."""
    node = net.nodes["firm-a"]
    bundle = work / "audit.bundle"
    cli = [sys.executable, "-m", "cli"]
    export = subprocess.run([*cli, "-c", str(node.config), "audit", "export", "--out", str(bundle), "--force",
                             "--json"], capture_output=True, text=True, timeout=300)
    if export.returncode != 0:
        raise DemoFailed(f"audit export failed (exit {export.returncode}): {export.stderr.strip()[-500:]}")
    verify = subprocess.run([*cli, "audit", "verify", str(bundle), "--bitcoin-rpc", bitcoin_rpc, "--json"],
                            capture_output=True, text=True, timeout=600)
    if verify.returncode != 0:
        raise DemoFailed(f"audit verify failed (exit {verify.returncode}): "
                         f"{(verify.stdout + verify.stderr).strip()[-800:]}")
    report: dict[str, Any] = json.loads(verify.stdout)
    return {"bundle": str(bundle), "bytes": bundle.stat().st_size, "report": report}


def _summary(net: LocalConsortium, heights: dict[str, int], latencies: dict[str, list[float]], t: Timeline,
             txs: int, t_signed: float, t_unanimous: float, audit: dict[str, Any]) -> str:
    node = net.nodes["firm-a"]
    with node.client() as c:
        status = c.get("/v1/status").json()
        tip = status["heads"]["tentative"]
        blocks = c.get("/v1/blocks", params={"from": 1, "to": tip}).json()["blocks"]
        anchors = c.get("/v1/anchors").json()
    signatures: dict[str, int] = {}
    for b in blocks:
        for m in b["signers"]:
            signatures[m] = signatures.get(m, 0) + 1
    with_txs = [b for b in blocks if b["tx_count"]]
    lines = [
        "",
        "==================== PeerDB demo summary ====================",
        f"members            {', '.join(net.nodes)}",
        f"blocks             {len(blocks)} on the best chain ({len(with_txs)} carrying transactions, "
        f"{sum(b['tx_count'] for b in blocks)} transactions)",
        "signatures         " + ", ".join(f"{m}: {n}" for m, n in sorted(signatures.items())),
        f"heads (firm-a)     tentative {status['heads']['tentative']}, majority {status['heads']['majority']}, "
        f"unanimous-signed {status['heads']['unanimous_signed']}, unanimous {status['heads']['unanimous']}, "
        f"anchored {status['heads']['anchored']}",
        f"anchoring          {anchors.get('anchoring', {}) and anchors['anchoring'].get('summary')}",
        f"workload           {txs} transactions submitted; all unanimous-signed in {t_signed:.2f} s "
        f"({txs / t_signed:.0f} tx/s), unanimous incl. Bitcoin anchor in {t_unanimous:.2f} s",
        f"audit              {audit['bundle']} ({audit['bytes']} bytes): VERIFIED "
        f"({audit['report'].get('transactions', '?')} transactions, "
        f"{audit['report'].get('anchored_blocks', '?')} anchored blocks, verified at "
        f"{audit['report'].get('tx_per_s', 0):.0f} tx/s)",
        "latency per batch  " + ", ".join(
            f"{level} p50 {1000 * sorted(v)[len(v) // 2]:.0f} ms / max {1000 * max(v):.0f} ms"
            for level, v in latencies.items() if v),
        "timeline           " + ", ".join(f"{k} {v:.1f}s" for k, v in t.marks.items()),
        "=============================================================",
    ]
    return "\n".join(lines)
