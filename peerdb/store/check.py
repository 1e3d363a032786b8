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

from peerdb.core.errors import StorageError
from peerdb.core.model import Header

from . import layout
from .tables import Tables, best_hash, head_hash, need_block, read_header

if TYPE_CHECKING:
    from .tables import Txn

STARTUP_CHECK_BLOCKS = 32
"""Recent best-chain blocks re-hashed on open. LMDB's copy-on-write commits mean a crash cannot
tear a committed page, so corruption comes from the disk or from outside tampering; checking the
blocks written last catches a bad last write, and 32 blocks of up to 1,000 transactions decode in
well under a second."""

Migration = Callable[["Txn", Tables], None]

MIGRATIONS: dict[int, Migration] = {}
"""Migration hook: ``MIGRATIONS[v]`` upgrades a store at schema ``v`` to ``v + 1`` inside the
open's write transaction (so a failed migration changes nothing). Empty while the schema is at
its first version; add an entry with every bump of :data:`layout.SCHEMA_VERSION`."""


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


def _check_recent_blocks(txn: Txn, t: Tables, where: str, head: Header, recent: int) -> None:
    for height in range(head.height, max(head.height - recent, -1), -1):
        block_hash = best_hash(txn, t, height)
        if block_hash is None:
            raise StorageError(f"{where}: no best-chain block at height {height}")
        try:
            block = need_block(txn, t, block_hash)  # re-hashes the header, re-checks tx and evidence roots
            header = read_header(txn, t, block_hash)
        except StorageError as exc:
            raise StorageError(f"{where}: {exc}") from None
        if header is None or header.raw != block.header.raw:
            raise StorageError(f"{where}: block {block_hash.hex()[:16]}: stored header and block disagree")
        if block.height != height:
            raise StorageError(f"{where}: block {block_hash.hex()[:16]} is indexed at height {height} "
                               f"but says {block.height}")
        if height > 0:
            if block.header.prev != best_hash(txn, t, height - 1):
                raise StorageError(f"{where}: best-chain block at height {height} does not link to the one below")
            if txn.get(block_hash, db=t.undo) is None:
                raise StorageError(f"{where}: best-chain block at height {height} has no undo record")
        if txn.get(layout.be64(height) + block_hash, db=t.heights) is None:
            raise StorageError(f"{where}: block at height {height} is missing from the height index")
        for index, tx in enumerate(block.txs):
            raw = txn.get(tx.txid, db=t.txindex)
            if raw is None or layout.parse_txindex_record(raw) != (height, index):
                raise StorageError(f"{where}: transaction {tx.txid.hex()[:16]} of block at height {height} "
                                   "is missing from the transaction index")
