"""Handles to the named sub-databases and the small typed reads every other module needs."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb

from peerdb.core.blockdecode import decode_block_fast
from peerdb.core.errors import CorruptionError, DecodeError, DiskFullError, PeerDBError, StorageError
from peerdb.core.model import Block, Header

from . import layout

if TYPE_CHECKING:
    from typing import TypeAlias

    Txn: TypeAlias = lmdb.Transaction[bytes]
    Db: TypeAlias = lmdb._Database


@dataclass(frozen=True)
class Tables:
    meta: Db
    headers: Db
    blocks: Db
    heights: Db
    signatures: Db
    evidence: Db
    objections: Db
    best: Db
    state: Db
    history: Db
    undo: Db
    txindex: Db
    anchors: Db
    mempool: Db
    guard: Db
    nodes: Db

    @classmethod
    def open(cls, env: lmdb.Environment, txn: Txn) -> "Tables":
        """Open (creating if missing) every sub-database inside the given write transaction."""
        handles = {name.decode("ascii"): env.open_db(name, txn=txn, create=True) for name in layout.ALL_DBS}
        return cls(**handles)


def read_header(txn: Txn, t: Tables, block_hash: bytes) -> Header | None:
    raw = txn.get(block_hash, db=t.headers)
    if raw is None:
        return None
    try:
        header = Header.decode(raw)
    except DecodeError as exc:
        raise CorruptionError(f"stored header {block_hash.hex()[:16]} is corrupt: {exc}", "header", block_hash) from None
    if header.hash != block_hash:
        raise CorruptionError(f"stored header {block_hash.hex()[:16]} hashes to {header.hash.hex()[:16]}: "
                              "the data file is corrupt", "header", block_hash)
    return header


def need_header(txn: Txn, t: Tables, block_hash: bytes) -> Header:
    header = read_header(txn, t, block_hash)
    if header is None:
        raise StorageError(f"block {block_hash.hex()[:16]} is not in the store")
    return header


def read_block(txn: Txn, t: Tables, block_hash: bytes) -> Block | None:
    raw = txn.get(block_hash, db=t.blocks)
    if raw is None:
        return None
    try:
        block = decode_block_fast(raw)
    except PeerDBError as exc:  # decode errors, and roots that do not match the body
        raise CorruptionError(f"stored block {block_hash.hex()[:16]} is corrupt: {exc}", "block", block_hash) from None
    if block.hash != block_hash:
        raise CorruptionError(f"stored block {block_hash.hex()[:16]} hashes to {block.hash.hex()[:16]}: "
                              "the data file is corrupt", "block", block_hash)
    return block


def need_block(txn: Txn, t: Tables, block_hash: bytes) -> Block:
    block = read_block(txn, t, block_hash)
    if block is None:
        raise StorageError(f"block {block_hash.hex()[:16]} is not in the store")
    return block


def best_hash(txn: Txn, t: Tables, height: int) -> bytes | None:
    return txn.get(layout.be64(height), db=t.best)


def head_hash(txn: Txn, t: Tables) -> bytes:
    head = txn.get(layout.META_HEAD, db=t.meta)
    if head is None:
        raise StorageError("the store records no head block")
    return head


def on_best_chain(txn: Txn, t: Tables, header: Header) -> bool:
    return best_hash(txn, t, header.height) == header.hash


DISK_FULL_MARGIN = 1024 * 1024
"""Free bytes below which a failed write is reported as a full disk. LMDB reports a write that
ran out of space as an I/O error (ENOSPC from the kernel becomes EIO in ``mdb_txn_commit``), so
the free space is looked at to name the real cause."""


def _disk_full(where: str) -> bool:
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < DISK_FULL_MARGIN
    except OSError:
        return False


@contextmanager
def lmdb_errors(where: str) -> Iterator[None]:
    """LMDB failures are storage failures: name the store and the cause (a full map, a full
    disk) with the fix. A failed write transaction is aborted whole: nothing half-written stays."""
    try:
        yield
    except lmdb.MapFullError:
        raise StorageError(f"{where}: the LMDB map is full; reopen with a larger map_size "
                           f"(now {layout.DEFAULT_MAP_SIZE} bytes by default)") from None
    except lmdb.Error as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC or _disk_full(where):
            free = shutil.disk_usage(Path(where) if Path(where).exists() else Path(where).parent).free
            raise DiskFullError(f"{where}: no space left on the disk ({free:,} bytes free; LMDB said: {exc}); "
                                "nothing of the failed write was stored. Free some space and start the node "
                                "again: it continues where it stopped") from None
        raise StorageError(f"{where}: LMDB error: {exc}") from None
