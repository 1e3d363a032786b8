"""Start-up cost against the chain's age: a member store of N blocks, started for real.

    python bench/startup_bench.py [--blocks 10000 100000 1000000] [--txs-per-block 0] [--json FILE]

For each N, writes a local consortium's files (``peerdb consortium init``'s layout), fills
firm-a's data directory with a synthetic chain of N signed blocks (every member's signature on
every block, ``--txs-per-block`` one-op transactions each), then measures:

* ``engine_first_s``: building the engine on the store the first time (no tree snapshot yet:
  what an upgraded store costs once; the tree is pruned as it loads);
* ``engine_s`` / ``engine_rss_mb``: building it again (snapshot + the blocks above its root),
  with the process's resident memory after;
* ``api_ready_s`` / ``daemon_rss_mb``: a real ``peerdb node run`` on that store, from exec to its
  API answering ``/v1/status`` (its peers are not running: it dials them in the background),
  and its resident memory then.

Reported, not asserted. The chain is written with ``sync=False`` in batches (it is a fixture,
not the thing measured); the daemon then opens it with the config's ``sync`` as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from peerdb.consortium_file import load_consortium  # noqa: E402
from peerdb.core.consortium import Consortium  # noqa: E402
from peerdb.core.keys import SigningKey  # noqa: E402
from peerdb.keyfile import read_key  # noqa: E402
from peerdb.localnet import LocalConsortium, poll_until  # noqa: E402
from peerdb.node.engine import Engine  # noqa: E402
from bench.chainfill import write_chain  # noqa: E402
from peerdb.store import Store  # noqa: E402

def rss_mb(pid: int | None = None, kind: str = "VmRSS") -> float:
    """Resident memory: ``VmRSS`` in all, ``RssAnon`` (the process's own heap) or ``RssFile``
    (pages of the mapped LMDB file: the OS's cache of the store, shared and reclaimable)."""
    path = f"/proc/{pid or os.getpid()}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith(kind + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def engine_load(directory: Path, consortium: Consortium, key: SigningKey) -> tuple[float, int]:
    start = time.perf_counter()
    with Store.open(directory / "data" / "firm-a", consortium, "firm-a", sync=False) as store:
        engine = Engine(consortium, "firm-a", key, store, int(time.time() * 1000))
        elapsed = time.perf_counter() - start
        held = sum(1 for _ in engine.tree.headers())
        engine.verifier.close()
    return elapsed, held


def daemon_ready(net: LocalConsortium) -> dict[str, float]:
    node = net.nodes["firm-a"]
    start = time.perf_counter()
    net.start("firm-a")
    try:
        with node.client(timeout=5) as client:
            def answers() -> bool:
                if not node.running():
                    raise RuntimeError(f"firm-a stopped:\n{node.log_tail()}")
                try:
                    return client.get("/v1/status").status_code == 200
                except httpx.HTTPError:
                    return False
            poll_until(answers, 600, "firm-a's API")
        ready = time.perf_counter() - start
        assert node.pid is not None
        return {"api_ready_s": round(ready, 2), "daemon_rss_mb": rss_mb(node.pid),
                "daemon_rss_anon_mb": rss_mb(node.pid, "RssAnon"), "daemon_rss_file_mb": rss_mb(node.pid, "RssFile")}
    finally:
        if node.proc is not None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


def measure(blocks: int, txs_per_block: int, workdir: Path) -> dict[str, Any]:
    directory = workdir / f"chain-{blocks}"
    if directory.exists():
        shutil.rmtree(directory)
    net = LocalConsortium(directory, members=4)
    net.write_files()
    consortium = load_consortium(directory / "consortium.toml")
    keys = {m: read_key(directory / "keys" / f"{m}.key")[0] for m in consortium.member_names}
    clients = {m: read_key(directory / "keys" / f"{m}-client.key")[0] for m in consortium.member_names}
    written = write_chain(directory, consortium, keys, clients, blocks, txs_per_block)
    first, _ = engine_load(directory, consortium, keys["firm-a"])
    again, held = engine_load(directory, consortium, keys["firm-a"])
    result: dict[str, Any] = {
        "blocks": blocks, "txs": blocks * txs_per_block, "write_s": round(written, 1),
        "store_mb": round(sum(f.stat().st_size for f in (directory / "data" / "firm-a").iterdir()) / 2**20, 1),
        "engine_first_s": round(first, 2), "engine_s": round(again, 2), "blocks_held": held,
        "engine_rss_mb": rss_mb(), "engine_rss_anon_mb": rss_mb(kind="RssAnon"),
        "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    result.update(daemon_ready(net))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--txs-per-block", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="peerdb-startup-"))
    results = []
    try:
        for n in args.blocks:
            print(f"chain of {n:,} blocks:", file=sys.stderr, flush=True)
            results.append(measure(n, args.txs_per_block, workdir))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
