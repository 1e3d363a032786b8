"""A synthetic chain written straight into member stores: the fixture of the ageing benchmarks.

Every block is signed by every member, proposed by the member whose turn it is, one second after
its parent, with ``txs_per_block`` one-op transactions (each key new), the state tree kept across blocks. The stores are written with ``sync=False`` in batches: this is a fixture, not the
thing measured.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from peerdb.core.consortium import Consortium
from peerdb.core.keys import SigningKey
from peerdb.core.model import OP_PUT, Block, BlockSignature, Op, Tx, body_header, consortium_id, genesis_header
from peerdb.core.state import MemoryState, apply_txs
from peerdb.core.validate import proposer_for
from peerdb.store import Store

BATCH = 2000
"""Blocks per LMDB commit while writing the fixture chain."""


def write_chain(directory: Path, consortium: Consortium, keys: dict[str, SigningKey], clients: dict[str, SigningKey],
                blocks: int, txs_per_block: int, members: Sequence[str] = ("firm-a",)) -> float:
    """Write ``blocks`` blocks into the stores of ``members`` under ``directory/data/``; seconds taken."""
    cid = consortium_id(consortium)
    names = consortium.member_names
    start = time.perf_counter()
    parent = genesis_header(consortium)
    state = MemoryState()  # the state tree the chain builds on (kept across blocks)
    nonce = 0
    with ExitStack() as stack:
        stores = [stack.enter_context(Store.open(directory / "data" / m, consortium, m, sync=False)) for m in members]
        height = 1
        while height <= blocks:
            with ExitStack() as batch:
                for store in stores:
                    batch.enter_context(store.batch())
                for height in range(height, min(blocks, height + BATCH - 1) + 1):
                    proposer = proposer_for(names, height, 0)
                    time_ms = consortium.genesis_time_ms + height * 1000
                    txs = []
                    for i in range(txs_per_block):
                        nonce += 1
                        member = names[i % len(names)]
                        txs.append(Tx.create(clients[member], cid, member, nonce, time_ms + 600_000,
                                             [Op(OP_PUT, "bench", f"k{height}-{i}", b"v" * 32)]))
                    effects = apply_txs(state, txs, consortium, cid, time_ms, parent.state_root,
                                        signature_ok=lambda _tx: True, height=height)
                    state.apply(effects)
                    header = body_header(height, 0, parent.hash, proposer, time_ms, txs, effects.state_root)
                    block = Block(header, tuple(txs))
                    sigs = [BlockSignature.create(keys[m], cid, m, block.hash) for m in names]
                    for store in stores:
                        store.add_block(block, sigs, effects=effects, make_head=True)
                    parent = header
                height += 1
            print(f"  wrote {min(height - 1, blocks):,} blocks ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
                  flush=True)
    return time.perf_counter() - start
