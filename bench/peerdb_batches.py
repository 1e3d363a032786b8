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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    with tempfile.TemporaryDirectory(prefix="peerdb-batches-") as work, LocalConsortium(Path(work) / "c") as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        consortium = load_consortium(net.directory / "consortium.toml")
        cid = consortium_id(consortium)
        names = list(net.nodes)
        keys = {m: read_key(net.directory / "keys" / f"{m}-client.key")[0] for m in names}
        expires = int(time.time() * 1000) + 600_000
        nonce = itertools.count(random.getrandbits(40))
        txs = [Tx.create(keys[names[i % 4]], cid, names[i % 4], next(nonce), expires,
                         [Op(OP_PUT, "bench", f"k{i}", b"x" * 150)]) for i in range(n)]
        clients = {m: net.nodes[m].client(timeout=120) for m in names}

        def submit(chunk: list[Tx]) -> None:
            r = clients[chunk[0].member].post("/v1/txs", json={"txs": [base64.b64encode(t.raw).decode() for t in chunk]})
            r.raise_for_status()

        chunks = [txs[i:i + batch] for i in range(0, n, batch)]
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(submit, chunks))
        accepted = time.perf_counter() - start

        def done() -> bool:
            for tx in (txs[0], txs[n // 2], txs[-1]):
                info = clients["firm-a"].get(f"/v1/tx/{tx.txid.hex()}").json()
                if info.get("status") not in ("unanimous_signed", "unanimous"):
                    return False
            return bool(clients["firm-a"].get("/v1/status").json()["mempool"] == 0)
        poll_until(done, 300, "every batch unanimous-signed")
        total = time.perf_counter() - start
        latencies = []
        for i in range(LIGHT_SAMPLES):
            tx = Tx.create(keys["firm-a"], cid, "firm-a", next(nonce), int(time.time() * 1000) + 600_000,
                           [Op(OP_PUT, "bench", f"light{i}", b"y" * 150)])
            t0 = time.perf_counter()
            r = clients["firm-a"].post("/v1/txs", json={"txs": [base64.b64encode(tx.raw).decode()],
                                                        "wait": "unanimous_signed", "timeout_s": 30})
            latencies.append((time.perf_counter() - t0) * 1000)
            if not r.json()["wait"]["reached"]:
                raise SystemExit("a light-load transaction did not reach unanimous_signed")
        latencies.sort()
        print(f"{n} transactions in batches of {batch}: accepted at {n / accepted:.0f} tx/s, "
              f"all unanimous-signed at {n / total:.0f} tx/s end to end")
        print(f"light load, one transaction at a time, to unanimous_signed: p50 {statistics.median(latencies):.1f} ms, "
              f"max of {LIGHT_SAMPLES} {latencies[-1]:.1f} ms")
        for c in clients.values():
            c.close()


if __name__ == "__main__":
    main()
