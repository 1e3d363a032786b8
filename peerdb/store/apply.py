"""Applying and undoing blocks on the head state, and moving the head between branches.

Every function here works inside a write transaction that the caller commits (or aborts) as a
whole: a block's writes, its history entries, its undo record, its transaction index entries,
the mempool cleanup and the new head pointer become durable together or not at all.

Undo records hold, per applied block, the *previous* state record of every key the block wrote
(None if the key was absent); rolling a block back puts those back and deletes the block's
history entries and index entries. They exist for best-chain blocks only. The state tree needs
no undo: every version of it stays in the ``nodes`` table (:func:`put_tree`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peerdb.core.consortium import Consortium
from peerdb.core.errors import StorageError
from peerdb.core.membership import StateCache
from peerdb.core.model import Block, Header, Tx
from peerdb.core.smt import EMPTY, node_key
from peerdb.core.state import Effects

from . import layout
from .readers import TxnStateReader, recompute_effects
from .tables import Tables, head_hash, need_block, need_header, on_best_chain

if TYPE_CHECKING:
    from .tables import Txn


@dataclass(frozen=True)
class ReorgResult:
    """What a head move did: blocks rolled back (old head first), blocks applied (fork point's
    child first), and transactions of rolled-back blocks not on the new branch, which are back in
    the persisted mempool."""

    rolled_back: list[bytes] = field(default_factory=list)
    applied: list[bytes] = field(default_factory=list)
    returned_txs: list[Tx] = field(default_factory=list)


def put_tree(txn: Txn, t: Tables, block: Block, effects: Effects) -> None:
    """Write the state tree records the block adds (in key order: one run of pages per block),
    and make sure the tree of the state after it is complete: its root's record is stored under
    the block's height (:mod:`peerdb.core.statetree`), now or by an earlier write."""
    if effects.nodes:
        items = sorted(effects.nodes.items())
        with txn.cursor(db=t.nodes) as cursor:
            # A new block's records (keyed by its height) usually sort after everything stored:
            # appended, they fill pages without searching or splitting. Otherwise (a side branch
            # at a height already stored, a reorg applying a block again) they are inserted.
            append = not cursor.last() or cursor.key() < items[0][0]
            _consumed, added = cursor.putmulti(items, append=append)
            if added < len(items) and append:  # pragma: no cover - sorted and above the last key
                cursor.putmulti(items)
    root = block.header.state_root
    if root != EMPTY and txn.get(node_key(block.height, root), db=t.nodes) is None:
        raise StorageError(f"block {block.hash.hex()[:16]} at height {block.height}: the effects passed in "
                           "carry no state tree records for its state root, and none are stored")


def apply_block(txn: Txn, t: Tables, block: Block, effects: Effects) -> None:
    """Apply ``block`` (a child of the current head) with its precomputed effects; its state
    tree records are written too (:func:`put_tree`)."""
    height = block.height
    head = head_hash(txn, t)
    if block.header.prev != head:
        raise StorageError(f"block {block.hash.hex()[:16]} at height {height} does not extend the head "
                           f"{head.hex()[:16]}")
    if effects.state_root != block.header.state_root or len(effects.txids) != len(block.txs):
        raise StorageError(f"block {block.hash.hex()[:16]} at height {height}: the effects passed in are "
                           "not this block's (state_root or transaction count differ)")
    put_tree(txn, t, block, effects)
    undo: list[tuple[bytes, bytes | None]] = []
    final: dict[bytes, bytes | None] = {}
    state = t.state
    for namespace, key, value in effects.writes:
        skey = layout.state_key(namespace, key)
        if skey not in final:
            undo.append((skey, txn.get(skey, db=state)))
        final[skey] = value
        if value is None:
            txn.delete(skey, db=state)
        else:
            txn.put(skey, layout.state_record(height, value, namespace, key, skey), db=state)
    hist = t.history
    for skey, value in final.items():
        txn.put(layout.history_key(skey, height), layout.history_record(value), db=hist)
    txn.put(block.hash, layout.undo_record(undo), db=t.undo)
    for index, tx in enumerate(block.txs):
        if not txn.put(tx.txid, layout.txindex_record(height, index), overwrite=False, db=t.txindex):
            raise StorageError(f"block {block.hash.hex()[:16]}: transaction {tx.txid.hex()[:16]} is already "
                               "on the best chain (a replay that validation should have refused)")
        txn.delete(tx.txid, db=t.mempool)
    txn.put(layout.be64(height), block.hash, db=t.best)
    txn.put(layout.META_HEAD, block.hash, db=t.meta)


def undo_block(txn: Txn, t: Tables, block: Block) -> None:
    """Roll back the head block, restoring the state of its parent."""
    if head_hash(txn, t) != block.hash:
        raise StorageError(f"cannot roll back block {block.hash.hex()[:16]}: it is not the head")
    raw = txn.get(block.hash, db=t.undo)
    if raw is None:
        raise StorageError(f"head block {block.hash.hex()[:16]} at height {block.height} has no undo record")
    state = t.state
    for skey, old in layout.parse_undo_record(raw):
        if old is None:
            txn.delete(skey, db=state)
        else:
            txn.put(skey, old, db=state)
        txn.delete(layout.history_key(skey, block.height), db=t.history)
    txn.delete(block.hash, db=t.undo)
    for tx in block.txs:
        txn.delete(tx.txid, db=t.txindex)
    txn.delete(layout.be64(block.height), db=t.best)
    txn.put(layout.META_HEAD, block.header.prev, db=t.meta)


def branch_to(txn: Txn, t: Tables, tip: bytes) -> tuple[Header, list[Header]]:
    """The fork point (highest best-chain ancestor-or-self of ``tip``) and the headers from its
    child up to ``tip``, in height order."""
    branch = []
    header = need_header(txn, t, tip)
    while not on_best_chain(txn, t, header):
        branch.append(header)
        header = need_header(txn, t, header.prev)
    branch.reverse()
    return header, branch


def move_head(txn: Txn, t: Tables, tip: bytes, consortium: Consortium, cid: bytes,
              effects_cache: Mapping[bytes, Effects] | None = None, *, states: StateCache) -> ReorgResult:
    """Make ``tip`` the head: undo down to the fork point, then apply the branch up to ``tip``."""
    fork, branch = branch_to(txn, t, tip)
    head = need_header(txn, t, head_hash(txn, t))
    rolled: list[Block] = []
    for _ in range(head.height - fork.height):
        block = need_block(txn, t, head_hash(txn, t))
        undo_block(txn, t, block)
        rolled.append(block)
    applied_txids: set[bytes] = set()
    reader = TxnStateReader(txn, t)
    for header in branch:
        block = need_block(txn, t, header.hash)
        effects = effects_cache.get(header.hash) if effects_cache else None
        if effects is None:
            parent_root = need_header(txn, t, header.prev).state_root
            effects = recompute_effects(reader, block, consortium, cid, parent_root, states=states)
        apply_block(txn, t, block, effects)
        applied_txids.update(effects.txids)
    returned: list[Tx] = []
    for block in reversed(rolled):
        for tx in block.txs:
            if tx.txid not in applied_txids:
                txn.put(tx.txid, tx.raw, db=t.mempool)
                returned.append(tx)
    return ReorgResult([b.hash for b in rolled], [h.hash for h in branch], returned)
