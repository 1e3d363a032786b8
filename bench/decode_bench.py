"""The worst-case cost of decoding one frame under the limits (MAX_FRAME_BYTES, MAX_FRAME_ITEMS).

Builds frames of the shapes that cost most per byte or per item, each as large as the limits
allow, and times :func:`peerdb.core.codec.decode` on them (best of ``--repeat``, after a
warm-up): frames that are refused (over the item limit) and frames that decode. Also times the
structural pre-scan alone per item head. Prints a table and one JSON line with the load average;
the maximum over the shapes is the decode bound stated in docs/protocol.md §18. Reported, never
asserted.

    .venv/bin/python bench/decode_bench.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections.abc import Callable
from typing import Any

from peerdb.core import codec
from peerdb.core.errors import DecodeError
from peerdb.core.limits import MAX_FRAME_BYTES, MAX_FRAME_ITEMS

ROOM = MAX_FRAME_BYTES - 64
"""Payload bytes left for the content once the envelope and heads are written."""


def frame(value: Any) -> bytes:
    return codec.encode({"msg": value})


def tree_of(leaf: bytes, size: int) -> bytes:
    """Nested arrays of 23 (one-byte heads) down to ``leaf``: no head announces much, so the
    pre-scan must walk up to the item limit before it can refuse."""
    level = leaf
    while len(level) * 23 + 1 < size:
        level = b"\x97" + level * 23
    return b"\xa1\x63msg" + level


def shapes() -> list[tuple[str, Callable[[], bytes]]]:
    n = MAX_FRAME_ITEMS - 8  # items left for the content inside {"msg": [...]}
    per = ROOM // n
    return [
        ("16 MiB of empty arrays in one array", lambda: b"\xa1\x63msg\x9a" + (ROOM).to_bytes(4, "big")
         + b"\x80" * ROOM),
        ("tree of empty arrays (fan-out 23)", lambda: tree_of(b"\x80", ROOM)),
        ("tree of 64-bit integers (fan-out 23)", lambda: tree_of(b"\x1b" + b"\xff" * 8, ROOM)),
        ("tree of 500-byte strings (fan-out 23)", lambda: tree_of(b"\x59\x01\xf4" + b"s" * 500, ROOM)),
        ("empty arrays at the item limit", lambda: frame([[]] * n)),
        ("empty maps at the item limit", lambda: frame([{}] * n)),
        ("nested maps at the item limit", lambda: frame([{"a": {"b": {"c": {}}}}] * (n // 7))),
        ("64-bit integers at the item limit", lambda: frame([2**64 - 1] * n)),
        ("text-keyed map at the item limit", lambda: frame({f"k{i:07d}": 0 for i in range(n // 2)})),
        ("byte strings filling 16 MiB at the item limit", lambda: frame([os.urandom(per - 3)
                                                                                 for _ in range(n)])),
        ("one 16 MiB byte string", lambda: frame(os.urandom(ROOM))),
        ("one 16 MiB text of 4-byte characters", lambda: frame("\U0001F600" * (ROOM // 4))),
        ("4-byte texts filling 16 MiB at the item limit", lambda: frame(["\U0001F600" * ((per - 3) // 4)
                                                                                 for _ in range(n)])),
    ]


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_decode(data: bytes) -> Callable[[], object]:
    def go() -> object:
        try:
            return codec.decode(data, max_items=MAX_FRAME_ITEMS, what="frame")
        except DecodeError as exc:
            return exc
    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load_start = os.getloadavg()
    rows = []
    for name, build in shapes():
        data = build()
        outcome = run_decode(data)()
        seconds = best_of(args.repeat, run_decode(data))
        rows.append({"shape": name, "bytes": len(data), "ms": round(seconds * 1000, 1),
                     "outcome": type(outcome).__name__ if isinstance(outcome, Exception) else "decoded"})
        print(f"{name:58s} {len(data):>11,d} B {seconds * 1000:8.1f} ms  {rows[-1]['outcome']}", flush=True)
    prescan = {}
    for head, item in (("empty array", b"\x80"), ("small int", b"\x01"), ("one-byte string", b"\x41x"),
                       ("64-bit int", b"\x1b" + b"\xff" * 8)):
        n = MAX_FRAME_ITEMS - 1
        data = b"\x99" + n.to_bytes(2, "big") + item * n
        prescan[head] = round(best_of(args.repeat, lambda: codec._scan_structure(data, "x", MAX_FRAME_ITEMS))
                              / n * 1e9, 1)
    print("pre-scan, ns per item head:", prescan)
    print(json.dumps({"limits": {"MAX_FRAME_BYTES": MAX_FRAME_BYTES, "MAX_FRAME_ITEMS": MAX_FRAME_ITEMS},
                      "worst_ms": max(r["ms"] for r in rows), "rows": rows, "prescan_ns_per_item": prescan,
                      "load_average": [load_start, os.getloadavg()]}))


if __name__ == "__main__":
    main()
