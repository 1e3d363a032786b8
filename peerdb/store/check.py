"""Schema migrations and the startup consistency check.

A store that is wrong must not be served: a node that answered reads from a damaged state, or
extended a chain whose recent blocks no longer hash to their recorded ids, would sign and spread
wrong data under its members' names. So :func:`check_store` runs on every open and raises a
:class:`StorageError` naming the first thing it finds wrong; the operator then restores or
resyncs (``docs/operations-restore.md``).

The check is bounded so that start-up time does not grow with the chain: O(1) structural checks
on the whole best-chain index (first height, last height, entry count: with unique integer keys
these three prove it contiguous), and full re-hashing only of the most recent
:data:`STARTUP_CHECK_BLOCKS` blocks, which are the ones a crash could have touched last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from peerdb.core.codec import decode, expect_bytes, expect_list, tagged_hash
from peerdb.core.errors import CorruptionError, DecodeError, StorageError
from peerdb.core.limits import MAX_BLOCK_BYTES, MAX_HEADER_BYTES, MAX_TX_BYTES
from peerdb.core.merkle import merkle_root
from peerdb.core.model import Evidence, Header
from peerdb.core.smt import EMPTY, node_key

from . import layout
from .tables import Tables, best_hash, head_hash, read_header

if TYPE_CHECKING:
    from .tables import Txn

STARTUP_CHECK_BLOCKS = 32
"""Recent best-chain blocks re-hashed on open. LMDB's copy-on-write commits mean a crash cannot
tear a committed page, so corruption comes from the disk or from outside tampering; checking the
blocks written last catches a bad last write."""

STARTUP_CHECK_TXS = 20_000
"""...but stop after this many transactions (the head block is always checked whole): re-hashing
costs ~40 us per transaction, so start-up stays under a second even with full blocks."""

Migration = Callable[["Txn", Tables], None]

MIGRATIONS: dict[int, Migration] = {}
"""Migration hook: ``MIGRATIONS[v]`` upgrades a store at schema ``v`` to ``v + 1`` inside the
open's write transaction (so a failed migration changes nothing). Add an entry with every bump
of :data:`layout.SCHEMA_VERSION` that the data can survive; see :data:`REFUSED` for the others."""

REFUSED: dict[int, str] = {
    1: "it holds a protocol-1 chain, and protocol 2 (the state tree with per-key proofs, "
       "docs/protocol.md §21) changes every block's header, hence every block hash and signature: "
       "the chain cannot be carried over. Keep the directory to export and verify it with the "
       "peerdb version that wrote it; run this version on a new data directory of a consortium "
       "founded on protocol 2",
}
"""Schema versions a store cannot be migrated from, with the reason the open gives."""


def migrate(txn: Txn, t: Tables, where: str) -> int:
    """Bring the store to the current schema version; returns the version found on disk."""
    raw = txn.get(layout.META_SCHEMA, db=t.meta)
    if raw is None:
        raise StorageError(f"{where}: the store has data but no schema version record; it is not a PeerDB "
                           "store or it is damaged")
    found = layout.parse_int_record(raw, "schema version")
    current = layout.SCHEMA_VERSION
    if found > current:
        raise StorageError(f"{where}: store schema version {found} is newer than this build understands "
                           f"({current}); run a newer peerdb, or restore a backup made with this version")
    if found in REFUSED:
        raise StorageError(f"{where}: store schema version {found} cannot be opened by this build: {REFUSED[found]}")
    version = found
    while version < current:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StorageError(f"{where}: no migration from store schema version {version} to {version + 1}")
        step(txn, t)
        version += 1
        txn.put(layout.META_SCHEMA, layout.int_record(version), db=t.meta)
    return found


def check_store(txn: Txn, t: Tables, where: str, consortium_id: bytes, member: str,
                recent: int = STARTUP_CHECK_BLOCKS) -> Header:
    """Raise StorageError unless the store is consistent; returns the head header."""
    stored_cid = txn.get(layout.META_CONSORTIUM, db=t.meta)
    if stored_cid != consortium_id:
        found = stored_cid.hex()[:16] if stored_cid else "none"
        raise StorageError(f"{where}: the store belongs to consortium {found}, not {consortium_id.hex()[:16]}; "
                           "wrong data directory or wrong consortium file")
    stored_member = txn.get(layout.META_MEMBER, db=t.meta)
    if stored_member != member.encode("utf-8"):
        found = stored_member.decode("utf-8", "replace") if stored_member else "none"
        raise StorageError(f"{where}: the store belongs to member {found!r}, not {member!r}; its signing guard "
                           "protects that member's key only")
    head = read_header(txn, t, head_hash(txn, t))
    if head is None:
        raise StorageError(f"{where}: the head block recorded in meta is missing from the store")
    _check_best_index(txn, t, where, head, consortium_id)
    _check_recent_blocks(txn, t, where, head, recent)
    if head.state_root != EMPTY and txn.get(node_key(head.height, head.state_root), db=t.nodes) is None:
        raise StorageError(f"{where}: the state tree of the head block (height {head.height}) is not stored; "
                           "the store is incomplete")
    return head


def _check_best_index(txn: Txn, t: Tables, where: str, head: Header, consortium_id: bytes) -> None:
    cursor = txn.cursor(db=t.best)
    if not cursor.first() or cursor.key() != layout.be64(0):
        raise StorageError(f"{where}: the best-chain index does not start at height 0")
    if cursor.value() != consortium_id:
        raise StorageError(f"{where}: the best chain does not start at this consortium's genesis block")
    if not cursor.last() or cursor.key() != layout.be64(head.height) or cursor.value() != head.hash:
        raise StorageError(f"{where}: the best-chain index does not end at the head (height {head.height})")
    entries = txn.stat(t.best)["entries"]
    if entries != head.height + 1:
        raise StorageError(f"{where}: the best-chain index has {entries} entries for heights 0..{head.height}; "
                           "it has gaps")


def verify_block_bytes(block_hash: bytes, raw: bytes) -> tuple[Header, list[bytes]]:
    """Check that stored block bytes still are the block ``block_hash`` names: the header hashes
    to it, and the transactions and evidence hash to the header's roots. Returns the header and
    the txids. Cheaper than ``Block.decode`` (which also builds every operation): each
    transaction is decoded once, to its body, whose tagged hash is its id (as in ``Tx``)."""
    try:
        items = expect_list(decode(raw, max_size=MAX_BLOCK_BYTES, what="block"), "block", 3)
        header = Header.decode(expect_bytes(items[0], "block.header", max_len=MAX_HEADER_BYTES))
        txids = []
        for i, tx_raw in enumerate(expect_list(items[1], "block.txs")):
            tx = expect_list(decode(expect_bytes(tx_raw, f"block.txs[{i}]"), max_size=MAX_TX_BYTES,
                                    what=f"block.txs[{i}]"), f"block.txs[{i}]", 2)
            txids.append(tagged_hash("tx", expect_bytes(tx[0], f"block.txs[{i}].body")))
        evidence_ids = [Evidence.from_cbor(e, f"block.evidence[{i}]").id
                        for i, e in enumerate(expect_list(items[2], "block.evidence"))]
    except DecodeError as exc:
        raise CorruptionError(f"stored block {block_hash.hex()[:16]} is corrupt: {exc}", "block", block_hash) from None
    if header.hash != block_hash:
        raise CorruptionError(f"stored block {block_hash.hex()[:16]} hashes to {header.hash.hex()[:16]}", "block",
                              block_hash)
    if len(txids) != header.tx_count or merkle_root(txids) != header.tx_root:
        raise CorruptionError(f"stored block {block_hash.hex()[:16]}: transactions do not match the header's tx_root",
                              "block", block_hash)
    if merkle_root(evidence_ids) != header.evidence_root:
        raise CorruptionError(f"stored block {block_hash.hex()[:16]}: evidence does not match the header's "
                              "evidence_root", "block", block_hash)
    return header, txids


def _check_recent_blocks(txn: Txn, t: Tables, where: str, head: Header, recent: int) -> None:
    checked_txs = 0
    for height in range(head.height, max(head.height - recent, -1), -1):
        if checked_txs >= STARTUP_CHECK_TXS:
            break
        block_hash = best_hash(txn, t, height)
        if block_hash is None:
            raise StorageError(f"{where}: no best-chain block at height {height}")
        raw = txn.get(block_hash, db=t.blocks)
        if raw is None:
            raise StorageError(f"{where}: best-chain block {block_hash.hex()[:16]} at height {height} is missing")
        try:
            header, txids = verify_block_bytes(block_hash, raw)
            stored_header = read_header(txn, t, block_hash)
        except StorageError as exc:
            raise StorageError(f"{where}: {exc}") from None
        if stored_header is None or stored_header.raw != header.raw:
            raise StorageError(f"{where}: block {block_hash.hex()[:16]}: stored header and block disagree")
        if header.height != height:
            raise StorageError(f"{where}: block {block_hash.hex()[:16]} is indexed at height {height} "
                               f"but says {header.height}")
        if height > 0:
            if header.prev != best_hash(txn, t, height - 1):
                raise StorageError(f"{where}: best-chain block at height {height} does not link to the one below")
            if txn.get(block_hash, db=t.undo) is None:
                raise StorageError(f"{where}: best-chain block at height {height} has no undo record")
        if txn.get(layout.be64(height) + block_hash, db=t.heights) is None:
            raise StorageError(f"{where}: block at height {height} is missing from the height index")
        for index, txid in enumerate(txids):
            raw_index = txn.get(txid, db=t.txindex)
            if raw_index is None or layout.parse_txindex_record(raw_index) != (height, index):
                raise StorageError(f"{where}: transaction {txid.hex()[:16]} of block at height {height} "
                                   "is missing from the transaction index")
        checked_txs += len(txids)
