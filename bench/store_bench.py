"""Store throughput and footprint: blocks and transactions applied per second, bytes per transaction.

    python bench/store_bench.py [--blocks 40] [--txs 1000] [--value-bytes 100] [--json]

Builds a chain of signed blocks in memory first (untimed), then applies them to a fresh store
with ``add_block(..., make_head=True)``, one durable (fsync'd) LMDB transaction per block, the
node's hot path. Two ways are timed on separate stores: with the effects passed in (the node
computed them while validating), and with the store recomputing them. A third run without fsync
shows what the disk flush costs. Bytes per transaction are the growth of the data in use
(LMDB pages) divided by the transactions applied, with the per-table split.

CPU time per block is reported beside the wall time: on a shared machine it is the steadier
figure (the fsync wait is not CPU). Each transaction puts one value (``--value-bytes``) under a key; ``--update-fraction`` of them
overwrite a key written earlier (which costs an undo record holding the old value), the rest
write new keys. Each block carries every member's signature (4 members).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # ``bench`` and ``tests`` are directories of the repository
    sys.path.insert(0, str(REPO))

from peerdb.core.model import Block, BlockSignature  # noqa: E402
from peerdb.store import Store  # noqa: E402
from tests.helpers.chainbuilder import ChainBuilder  # noqa: E402

WARMUP_BLOCKS = 2
"""Applied before timing starts: the first commits create the tables' first pages."""


def build_chain(cb: ChainBuilder, blocks: int, txs: int, value_bytes: int, update_fraction: float,
                seed: int) -> list[tuple[Block, list[BlockSignature]]]:
    rng = random.Random(seed)
    written: list[str] = []
    out = []
    tip: Block = cb.genesis
    for height in range(1, blocks + 1):
        batch = []
        for i in range(txs):
            if written and rng.random() < update_fraction:
                key = rng.choice(written)
            else:
                key = f"account/{height:06d}/{i:05d}"
                written.append(key)
            member = cb.members[i % len(cb.members)]
            batch.append(cb.tx(member, [("ledger", key, rng.randbytes(value_bytes))]))
        tip = cb.block(tip, batch, check=False)
        out.append((tip, cb.sign_all(tip)))
    return out


def apply_all(path: Path, cb: ChainBuilder, chain: list[tuple[Block, list[BlockSignature]]], *,
              sync: bool, pass_effects: bool) -> dict[str, Any]:
    with Store.open(path, cb.consortium, "m0", sync=sync) as store:
        for block, sigs in chain[:WARMUP_BLOCKS]:
            store.add_block(block, sigs, effects=cb.effects(block), make_head=True)
        before = store.stats()
        timed = chain[WARMUP_BLOCKS:]
        start = time.perf_counter()
        cpu_start = time.process_time()
        for block, sigs in timed:
            store.add_block(block, sigs, effects=cb.effects(block) if pass_effects else None, make_head=True)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        after = store.stats()
    start = time.perf_counter()
    Store.open(path, cb.consortium, "m0", sync=sync).close()
    reopen = time.perf_counter() - start
    n_txs = sum(len(b.txs) for b, _ in timed)
    tables = {name: (after["table_bytes"][name] - before["table_bytes"][name]) / n_txs
              for name in after["table_bytes"]}
    return {
        "sync": sync,
        "effects_passed": pass_effects,
        "blocks": len(timed),
        "txs": n_txs,
        "seconds": elapsed,
        "blocks_per_s": len(timed) / elapsed,
        "txs_per_s": n_txs / elapsed,
        "ms_per_block": 1000 * elapsed / len(timed),
        "cpu_ms_per_block": 1000 * cpu / len(timed),
        "reopen_seconds": reopen,
        "bytes_per_tx": (after["used_bytes"] - before["used_bytes"]) / n_txs,
        "live_table_bytes_per_tx": sum(tables.values()),
        "bytes_per_tx_by_table": {k: round(v, 1) for k, v in tables.items() if v},
        "block_bytes_per_tx": sum(len(b.raw) for b, _ in timed) / n_txs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=40, help="blocks per run (default 40)")
    parser.add_argument("--txs", type=int, default=1000, help="transactions per block (default 1000)")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--update-fraction", type=float, default=0.5)
    parser.add_argument("--dir", type=Path, default=None, help="where to create the stores (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.blocks <= WARMUP_BLOCKS:
        parser.error(f"--blocks must be more than the {WARMUP_BLOCKS} warm-up blocks")

    cb = ChainBuilder(n_members=4)
    t0 = time.perf_counter()
    chain = build_chain(cb, args.blocks, args.txs, args.value_bytes, args.update_fraction, args.seed)
    build_s = time.perf_counter() - t0
    runs = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, sync, pass_effects in (("sync, effects passed (node hot path)", True, True),
                                         ("sync, effects recomputed by the store", True, False),
                                         ("no fsync, effects passed (atomic, not power-safe)", False, True)):
            result = apply_all(Path(tmp) / name.split(",")[0].replace(" ", "-") / str(len(runs)), cb, chain,
                               sync=sync, pass_effects=pass_effects)
            result["name"] = name
            runs.append(result)
    report = {"txs_per_block": args.txs, "value_bytes": args.value_bytes,
              "update_fraction": args.update_fraction, "build_seconds": build_s, "runs": runs}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.blocks - WARMUP_BLOCKS} timed blocks of {args.txs} transactions "
          f"(1 put of {args.value_bytes} B each, {args.update_fraction:.0%} overwrites), 4 signatures per block")
    for r in runs:
        print(f"  {r['name']}:")
        print(f"    {r['blocks_per_s']:8.1f} blocks/s  {r['txs_per_s']:10.0f} tx/s  "
              f"({r['ms_per_block']:.1f} ms per block, {r['cpu_ms_per_block']:.1f} ms of CPU)")
    r = runs[0]
    print(f"  stored bytes per transaction: {r['bytes_per_tx']:.0f} of data file in use "
          f"(incl. LMDB free pages), {r['live_table_bytes_per_tx']:.0f} in table pages; "
          f"the block's own bytes: {r['block_bytes_per_tx']:.0f}")
    print("    table pages by table: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(
        r["bytes_per_tx_by_table"].items(), key=lambda kv: -kv[1])))
    print(f"  reopen with startup check: {r['reopen_seconds'] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
