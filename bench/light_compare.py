"""Light load through HTTP and through the write stream, on one cluster, alternating.

    python bench/light_compare.py [--txs 600] [--rate 100] [--rounds 2]

``bench/run.py`` measures each client on its own fresh cluster, from a separate load-generator
process that shares the two cores with the members; a difference between the two light-load
figures there may be the generators' own CPU (the stream client answers three acknowledgements
per transaction). Here one cluster serves both clients in turn, from this process, so what
differs is only the path through the node. Prints p50/p90/p99 per view for each round.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from bench.peerdb_driver import PeerDBClient, PeerDBDriver  # noqa: E402
from bench.peerdb_stream_driver import PeerDBStreamClient  # noqa: E402
from bench.procs import ManagedProcesses  # noqa: E402

VALUE_BYTES = 150
CONNECTIONS = 64


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_round(client: Any, kind: str, txs: int, rate: float) -> None:
    await client.prepare(txs, VALUE_BYTES)
    latencies: dict[str, list[float]] = {}
    errors: list[str] = []

    async def submit(i: int) -> None:
        started = trio.current_time()
        try:
            levels = await client.submit(i, b"", b"")
        except Exception as exc:  # noqa: BLE001 - counted and shown, the round goes on
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        for level, at in levels.items():
            latencies.setdefault(level, []).append((at - started) * 1000)

    try:
        begin = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(txs):
                await trio.sleep_until(begin + i / rate)
                nursery.start_soon(submit, i)
    finally:
        await client.aclose()
    for level, values in latencies.items():
        print(f"{kind:7s} {level:17s} n {len(values):5d}  p50 {quantile(values, .5):7.2f}  "
              f"p90 {quantile(values, .9):7.2f}  p99 {quantile(values, .99):7.2f} ms")
    if errors:
        print(f"{kind:7s} errors {len(errors)} (first: {errors[0]})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=600, help="transactions per round (default 600)")
    parser.add_argument("--rate", type=float, default=100.0, help="offered tx/s (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of HTTP then stream (default 2)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} at start; {args.txs} transactions per round at {args.rate:g}/s")
    with ManagedProcesses() as procs, tempfile.TemporaryDirectory(prefix="peerdb-light-") as workdir:
        driver = PeerDBDriver()
        spec = driver.start(procs, Path(workdir))
        try:
            for _ in range(args.rounds):
                trio.run(one_round, PeerDBClient(spec, CONNECTIONS), "http", args.txs, args.rate)
                trio.run(one_round, PeerDBStreamClient(spec, CONNECTIONS), "stream", args.txs, args.rate)
        finally:
            driver.stop(procs)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
