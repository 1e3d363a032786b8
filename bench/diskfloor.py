"""The durable-write floor of this run's disk, measured in the same run as everything else.

A transaction acknowledged at ``unanimous_signed`` has passed two durable commits (the
proposer's, then each co-signer's). What one costs differs twenty-fold or more between machines
of the same kind (0.12–0.24 ms and 4.6 ms for the same 4 KiB fdatasync), so a latency can
be explained only by the floor measured beside it: a 4 KiB write plus ``fdatasync`` in the data
directory's filesystem, and an LMDB write transaction of 50 small puts committed with ``sync``
(the shape of a co-signer's block commit).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb

PUTS_PER_COMMIT = 50
MAP_SIZE = 64 << 20


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered) * 1000, 3),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3)}


def measure(directory: Path, count: int = 100) -> dict[str, Any]:
    """``count`` of each, in a fresh temporary directory under ``directory`` (removed after)."""
    with tempfile.TemporaryDirectory(prefix="diskfloor-", dir=directory) as tmp:
        path = Path(tmp)
        block = os.urandom(4096)
        fsyncs = []
        fd = os.open(path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for i in range(count):
                t = time.perf_counter()
                os.pwrite(fd, block, (i % 64) * 4096)
                os.fdatasync(fd)
                fsyncs.append(time.perf_counter() - t)
        finally:
            os.close(fd)
        commits = []
        env = lmdb.open(str(path / "db"), map_size=MAP_SIZE, sync=True, metasync=True)
        try:
            value = os.urandom(200)
            for i in range(count):
                t = time.perf_counter()
                with env.begin(write=True) as txn:
                    for j in range(PUTS_PER_COMMIT):
                        txn.put(f"{i:06d}-{j:03d}".encode(), value)
                commits.append(time.perf_counter() - t)
        finally:
            env.close()
    return {"fdatasync_4k_ms": _ms(fsyncs), f"lmdb_sync_commit_{PUTS_PER_COMMIT}_puts_ms": _ms(commits),
            "samples": count}
