"""What the metrics cost on the hot path: the same workload with metrics off and on.

    .venv/bin/python bench/metrics_bench.py [--txs 20000] [--batch 500] [--runs 2] [--scrape-interval 1.0]
    PYTHONPATH=<a checkout without metrics> .venv/bin/python bench/metrics_bench.py --baseline
    .venv/bin/python bench/metrics_bench.py --micro

Four members (real processes, TLS, LMDB synced, production parameters) take ``--txs``
client-signed transactions in batches of ``--batch`` through ``POST /v1/txs``; the figure is
the end-to-end rate until every batch is ``unanimous_signed``, and the light-load latency of
single transactions to ``unanimous_signed``. Configurations, run alternately ``--runs`` times:

* ``off``: no ``[metrics]`` section (the engine still bumps its integer counters, the mempool
  still notes arrival times: that cost is always paid);
* ``on``: ``[metrics] listen`` on every member (store commits timed into a histogram) and every
  member scraped every ``--scrape-interval`` seconds during the run (Prometheus' default is
  15 s; 1 s exaggerates the scraping on purpose), with the time each scrape took;
* ``--baseline``: with PYTHONPATH at a checkout that has no metrics at all (counters
  included), the ``off`` workload alone, for the comparison.

``--micro`` times each thing the metrics add, alone: the engine's counter increments per block,
the mempool's arrival bookkeeping per transaction, one histogram observation per store commit,
and one scrape (the read under the engine's lock, then the formatting) of a node whose chain
has a few hundred blocks; these do not depend on how loaded the machine is, the runs above do.

Prints one line per run and the load average before each, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from peerdb.localnet import LocalConsortium  # noqa: E402

from bench.peerdb_batches import BatchWorkload  # noqa: E402

LIGHT_SAMPLES = 20


def scraper(net: LocalConsortium, interval: float, stop: threading.Event, took_ms: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.wait(interval):
            for node in net.nodes.values():
                t0 = time.perf_counter()
                r = client.get(f"http://{node.metrics}/metrics")
                took_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()


def one_run(config: str, n: int, batch: int, interval: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="peerdb-metrics-bench-") as work:
        kwargs: dict[str, Any] = {"metrics": True} if config == "on" else {}
        with LocalConsortium(Path(work) / "c", **kwargs) as net:
            net.write_files()
            net.start_all()
            net.wait_ready()
            workload = BatchWorkload(net, n)
            stop = threading.Event()
            scrapes: list[float] = []
            thread = None
            if config == "on":
                thread = threading.Thread(target=scraper, args=(net, interval, stop, scrapes), daemon=True)
                thread.start()
            try:
                start = time.perf_counter()
                workload.post(batch)
                workload.wait_all_signed(600)
                total = time.perf_counter() - start
                latencies = workload.light_latencies(LIGHT_SAMPLES)
            finally:
                stop.set()
                if thread is not None:
                    thread.join(timeout=60)
                workload.close()
    return {"config": config, "load_avg_1m": round(load, 2), "tps": round(n / total),
            "light_p50_ms": round(statistics.median(latencies), 1), "light_max_ms": round(max(latencies), 1),
            "scrapes": len(scrapes),
            "scrape_p50_ms": round(statistics.median(scrapes), 1) if scrapes else None,
            "scrape_max_ms": round(max(scrapes), 1) if scrapes else None}


def micro() -> None:
    import timeit

    import trio
    import trio.testing
    from prometheus_client import generate_latest

    from peerdb.node.counters import EngineCounters
    from peerdb.node.metrics import NodeMetrics, read_snapshot
    from tests.helpers.node_harness import Cluster

    def per_call(stmt: Any, number: int) -> float:
        return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9  # ns

    counters = EngineCounters()

    def block_event() -> None:  # what the engine adds per applied block with four signatures
        counters.blocks_applied += 1
        counters.txs_applied += 500
        for member in ("firm-a", "firm-b", "firm-c", "firm-d"):
            counters.signed(member)
    arrived: dict[bytes, float] = {}
    keys = [i.to_bytes(32, "big") for i in range(1000)]

    def arrival() -> None:  # the mempool's extra work per transaction (put, then drop)
        for k in keys:
            arrived[k] = time.monotonic()
        for k in keys:
            arrived.pop(k, None)
    metrics = NodeMetrics()
    print({"counters_per_block_ns": round(per_call(block_event, 100_000)),
           "mempool_arrival_per_tx_ns": round(per_call(arrival, 200) / len(keys)),
           "commit_observation_ns": round(per_call(lambda: metrics.observe_commit(0.009), 100_000))})

    async def scrape_cost(work: Path) -> None:
        cluster = Cluster(work)
        async with trio.open_nursery() as nursery:
            await cluster.start(nursery)
            node = cluster.nodes["firm-a"]
            for i in range(20):
                await cluster.submit("firm-a", [cluster.tx("firm-a", f"k{i}-{j}") for j in range(50)])
            await cluster.wait_until(lambda: node.engine.heads().unanimous_signed >= 300, timeout=600,
                                     what="300 blocks")
            reads, formats = [], []
            for _ in range(50):
                t0 = time.perf_counter()
                metrics.snapshot = read_snapshot(node.service, None)
                t1 = time.perf_counter()
                body = generate_latest(metrics.registry)
                formats.append(time.perf_counter() - t1)
                reads.append(t1 - t0)
            print({"chain_height": node.engine.heads().tentative, "scrape_read_under_lock_us": round(
                statistics.median(reads) * 1e6), "scrape_format_us": round(statistics.median(formats) * 1e6),
                "exposition_bytes": len(body)})
            await cluster.close()
            nursery.cancel_scope.cancel()
    with tempfile.TemporaryDirectory(prefix="peerdb-metrics-micro-") as work:
        trio.run(scrape_cost, Path(work), clock=trio.testing.MockClock(autojump_threshold=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--baseline", action="store_true", help="only the off workload (for a checkout without metrics)")
    parser.add_argument("--micro", action="store_true", help="time each addition alone (no cluster of processes)")
    args = parser.parse_args()
    if args.micro:
        micro()
        return
    configs = ["off"] if args.baseline else ["off", "on"]
    for _ in range(args.runs):
        for config in configs:
            result = one_run(config, args.txs, args.batch, args.scrape_interval)
            if args.baseline:
                result["config"] = "baseline"
            print(result, flush=True)


if __name__ == "__main__":
    main()
