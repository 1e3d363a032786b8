"""State as of any stored block, as a :class:`peerdb.core.state.StateReader`.

The ``state`` table holds the state after the best chain's head only. The state after another
block is the head state seen through an *overlay*: the undo records of the best-chain blocks
above the fork point (putting back what they overwrote), then the effects of the side-branch
blocks from the fork point up to the block. Cost grows with the distance from the head, which
for validating a competing block is the depth of the fork: a handful of blocks.

A :class:`StateSnapshot` holds an LMDB read transaction, so everything it answers comes from one
consistent moment even while the node applies new blocks; close it (or use ``with``) promptly,
because LMDB cannot reuse pages an open reader may still see.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import lmdb

from peerdb.core.consortium import Consortium
from peerdb.core.errors import PeerDBError, StorageError
from peerdb.core.membership import ConsortiumState, StateCache
from peerdb.core.model import Block, Tx
from peerdb.core.state import Effects, StateReader, apply_txs

from . import layout
from .tables import Tables, best_hash, head_hash, lmdb_errors, need_block, need_header, on_best_chain

if TYPE_CHECKING:
    from .tables import Txn


def _trust_stored(_tx: Tx) -> bool:
    """Blocks are validated, signatures included, before they are stored."""
    return True


class TxnStateReader:
    """The head state as one transaction sees it, optionally through an overlay.

    ``overlay`` maps state keys to the value they have in the view (None: absent), overriding the
    table; ``extra_seen`` are transaction ids included by side-branch blocks in the view;
    ``seen_max_height`` hides best-chain transactions above the fork point; ``nodes`` are state
    tree records of side-branch blocks recomputed for the view and not stored.
    """

    def __init__(self, txn: Txn, tables: Tables, overlay: dict[bytes, bytes | None] | None = None,
                 extra_seen: set[bytes] | None = None, seen_max_height: int | None = None) -> None:
        self._txn = txn
        self._t = tables
        self.overlay: dict[bytes, bytes | None] = overlay if overlay is not None else {}
        self.extra_seen: set[bytes] = extra_seen if extra_seen is not None else set()
        self.seen_max_height = seen_max_height
        self.nodes: dict[bytes, bytes] = {}

    def tree_node(self, key: bytes) -> bytes | None:
        if self.nodes:
            rec = self.nodes.get(key)
            if rec is not None:
                return rec
        return self._txn.get(key, db=self._t.nodes)

    def tree_getter(self) -> Callable[[bytes], bytes | None]:
        """:meth:`tree_node` as LMDB's own ``get`` when there is no overlay (the best chain's
        blocks): a state tree update calls it once per level per written key."""
        if self.nodes:
            return self.tree_node
        return functools.partial(self._txn.get, db=self._t.nodes)

    def get(self, namespace: str, key: str) -> bytes | None:
        skey = layout.state_key(namespace, key)
        if skey in self.overlay:
            return self.overlay[skey]
        raw = self._txn.get(skey, db=self._t.state)
        return None if raw is None else layout.parse_state_record(raw)[1]

    def tx_seen(self, txid: bytes) -> bool:
        if txid in self.extra_seen:
            return True
        raw = self._txn.get(txid, db=self._t.txindex)
        if raw is None:
            return False
        return self.seen_max_height is None or layout.parse_txindex_record(raw)[0] <= self.seen_max_height


def recompute_effects(reader: StateReader, block: Block, consortium: Consortium, cid: bytes,
                      parent_state_root: bytes, *, states: StateCache) -> Effects:
    """Effects of a stored block on its parent's state (signatures were checked before storing);
    the parent's governance state is loaded through ``states``, the store's cache."""
    try:
        state = ConsortiumState.load(consortium, reader, states)
        effects = apply_txs(reader, block.txs, consortium, cid, block.header.time_ms, parent_state_root,
                            signature_ok=_trust_stored, height=block.height, consortium_state=state)
    except PeerDBError as exc:
        raise StorageError(f"stored block {block.hash.hex()[:16]} at height {block.height} does not apply "
                           f"on its parent ({exc}); it should never have been stored") from None
    if effects.state_root != block.header.state_root:
        raise StorageError(f"stored block {block.hash.hex()[:16]} at height {block.height}: its transactions "
                           "do not produce its state_root; it should never have been stored")
    return effects


def undo_overlay(txn: Txn, t: Tables, down_to_height: int) -> dict[bytes, bytes | None]:
    """What the best-chain blocks above ``down_to_height`` overwrote: the state at that height,
    as differences from the head state."""
    overlay: dict[bytes, bytes | None] = {}
    head = need_header(txn, t, head_hash(txn, t))
    for height in range(head.height, down_to_height, -1):
        block_hash = best_hash(txn, t, height)
        raw = None if block_hash is None else txn.get(block_hash, db=t.undo)
        if raw is None:
            raise StorageError(f"best chain block at height {height} has no undo record")
        for skey, old in layout.parse_undo_record(raw):
            overlay[skey] = None if old is None else layout.parse_state_record(old)[1]
    return overlay


def reader_at(txn: Txn, t: Tables, block_hash: bytes, consortium: Consortium, cid: bytes,
              effects_cache: Mapping[bytes, Effects] | None = None,
              on_effects: Callable[[bytes, Effects], None] | None = None, *,
              states: StateCache) -> TxnStateReader:
    """A reader of the state after ``block_hash`` (any stored block, on any branch)."""
    target = need_header(txn, t, block_hash)
    branch = []
    fork = target
    while not on_best_chain(txn, t, fork):
        branch.append(fork)
        fork = need_header(txn, t, fork.prev)
    reader = TxnStateReader(txn, t, undo_overlay(txn, t, fork.height), set(), fork.height)
    parent_root = fork.state_root
    for header in reversed(branch):
        effects = effects_cache.get(header.hash) if effects_cache else None
        if effects is None:
            effects = recompute_effects(reader, need_block(txn, t, header.hash), consortium, cid, parent_root,
                                        states=states)
            if on_effects is not None:
                on_effects(header.hash, effects)
        for namespace, key, value in effects.writes:
            reader.overlay[layout.state_key(namespace, key)] = value
        reader.extra_seen.update(effects.txids)
        reader.nodes.update(effects.nodes)
        parent_root = header.state_root
    return reader


class StateSnapshot:
    """A :class:`StateReader` of the state after one stored block, frozen at creation time.

    Use as a context manager, or call :meth:`close`; reads after closing raise StorageError.
    """

    def __init__(self, env: lmdb.Environment, t: Tables, block_hash: bytes, consortium: Consortium,
                 cid: bytes, effects_cache: Mapping[bytes, Effects] | None = None,
                 txn: Txn | None = None, *, states: StateCache) -> None:
        # ``txn``: read through an open write transaction (a store batch) instead of a snapshot
        # of its own; the snapshot then neither owns nor ends it.
        self._owned = txn is None
        self._txn: Txn | None = env.begin() if txn is None else txn
        try:
            self._reader = reader_at(self._txn, t, block_hash, consortium, cid, effects_cache, states=states)
            self.header = need_header(self._txn, t, block_hash)
        except BaseException:
            self.close()
            raise

    def get(self, namespace: str, key: str) -> bytes | None:
        self._check_open()
        with lmdb_errors("state snapshot"):
            return self._reader.get(namespace, key)

    def tx_seen(self, txid: bytes) -> bool:
        self._check_open()
        with lmdb_errors("state snapshot"):
            return self._reader.tx_seen(txid)

    def tree_node(self, key: bytes) -> bytes | None:
        # Called once per tree node a block's update visits: a plain try instead of the
        # context manager the other reads use, same errors.
        if self._txn is None:
            raise StorageError("state snapshot: used after close()")
        try:
            return self._reader.tree_node(key)
        except lmdb.Error as exc:
            raise StorageError(f"state snapshot: LMDB error: {exc}") from None

    def tree_getter(self) -> Callable[[bytes], bytes | None]:
        """The reader's fastest tree read (see :class:`TxnStateReader`), for one update made
        while the snapshot is open."""
        self._check_open()
        return self._reader.tree_getter()

    def _check_open(self) -> None:
        if self._txn is None:
            raise StorageError("state snapshot: used after close()")

    def close(self) -> None:
        if self._txn is not None:
            txn, self._txn = self._txn, None
            if self._owned:
                with lmdb_errors("state snapshot"):
                    txn.abort()

    def __enter__(self) -> "StateSnapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
