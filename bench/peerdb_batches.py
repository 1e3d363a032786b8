"""PeerDB with client batches: N client-signed transactions posted 500 per request.

The harness (bench/run.py) sends one transaction per request, like every system it compares;
this script shows what a firm's application gets when it batches, and light-load latency of
single transactions to unanimous_signed. Four members, production defaults, TLS, LMDB synced.

    .venv/bin/python bench/peerdb_batches.py [N] [BATCH]
"""

from __future__ import annotations

import base64
import itertools
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peerdb.consortium_file import load_consortium
from peerdb.core.model import OP_PUT, Op, Tx, consortium_id
from peerdb.keyfile import read_key
from peerdb.localnet import LocalConsortium, poll_until

LIGHT_SAMPLES = 30


class BatchWorkload:
    """N client-signed transactions for a running LocalConsortium, posted in batches, then
    single transactions timed to unanimous_signed (also what bench/metrics_bench.py runs)."""

    def __init__(self, net: LocalConsortium, n: int) -> None:
        consortium = load_consortium(net.directory / "consortium.toml")
        self.cid = consortium_id(consortium)
        names = list(net.nodes)
        self.keys = {m: read_key(net.directory / "keys" / f"{m}-client.key")[0] for m in names}
        self.nonce = itertools.count(random.getrandbits(40))
        expires = int(time.time() * 1000) + 600_000
        self.txs = [Tx.create(self.keys[names[i % 4]], self.cid, names[i % 4], next(self.nonce), expires,
                              [Op(OP_PUT, "bench", f"k{i}", b"x" * 150)]) for i in range(n)]
        self.clients = {m: net.nodes[m].client(timeout=120) for m in names}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()

    def post(self, batch: int) -> None:
        """Every transaction, ``batch`` per request, four requests at a time."""
        def submit(chunk: list[Tx]) -> None:
            r = self.clients[chunk[0].member].post("/v1/txs",
                                                   json={"txs": [base64.b64encode(t.raw).decode() for t in chunk]})
            r.raise_for_status()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(submit, [self.txs[i:i + batch] for i in range(0, len(self.txs), batch)]))

    def wait_all_signed(self, timeout_s: float) -> None:
        """Until the first, middle and last transaction are unanimous-signed and the pool is empty."""
        txs, client = self.txs, self.clients["firm-a"]

        def done() -> bool:
            for tx in (txs[0], txs[len(txs) // 2], txs[-1]):
                info = client.get(f"/v1/tx/{tx.txid.hex()}").json()
                if info.get("status") not in ("unanimous_signed", "unanimous"):
                    return False
            return bool(client.get("/v1/status").json()["mempool"] == 0)
        poll_until(done, timeout_s, "every batch unanimous-signed")

    def light_latencies(self, samples: int) -> list[float]:
        """Milliseconds to unanimous_signed of ``samples`` single transactions, one at a time, sorted."""
        latencies = []
        for i in range(samples):
            tx = Tx.create(self.keys["firm-a"], self.cid, "firm-a", next(self.nonce), int(time.time() * 1000) + 600_000,
                           [Op(OP_PUT, "bench", f"light{i}", b"y" * 150)])
            t0 = time.perf_counter()
            r = self.clients["firm-a"].post("/v1/txs", json={"txs": [base64.b64encode(tx.raw).decode()],
                                                             "wait": "unanimous_signed", "timeout_s": 30})
            latencies.append((time.perf_counter() - t0) * 1000)
            if not r.json()["wait"]["reached"]:
                raise SystemExit("a light-load transaction did not reach unanimous_signed")
        return sorted(latencies)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    with tempfile.TemporaryDirectory(prefix="peerdb-batches-") as work, LocalConsortium(Path(work) / "c") as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        workload = BatchWorkload(net, n)
        try:
            start = time.perf_counter()
            workload.post(batch)
            accepted = time.perf_counter() - start
            workload.wait_all_signed(300)
            total = time.perf_counter() - start
            latencies = workload.light_latencies(LIGHT_SAMPLES)
        finally:
            workload.close()
        print(f"{n} transactions in batches of {batch}: accepted at {n / accepted:.0f} tx/s, "
              f"all unanimous-signed at {n / total:.0f} tx/s end to end")
        print(f"light load, one transaction at a time, to unanimous_signed: p50 {statistics.median(latencies):.1f} ms, "
              f"max of {LIGHT_SAMPLES} {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
