"""Handles to the named sub-databases and the small typed reads every other module needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lmdb

from peerdb.core.errors import DecodeError, PeerDBError, StorageError
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
        raise StorageError(f"stored header {block_hash.hex()[:16]} is corrupt: {exc}") from None
    if header.hash != block_hash:
        raise StorageError(f"stored header {block_hash.hex()[:16]} hashes to {header.hash.hex()[:16]}: "
                           "the data file is corrupt")
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
        block = Block.decode(raw)
    except PeerDBError as exc:  # decode errors, and roots that do not match the body
        raise StorageError(f"stored block {block_hash.hex()[:16]} is corrupt: {exc}") from None
    if block.hash != block_hash:
        raise StorageError(f"stored block {block_hash.hex()[:16]} hashes to {block.hash.hex()[:16]}: "
                           "the data file is corrupt")
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


@contextmanager
def lmdb_errors(where: str) -> Iterator[None]:
    """LMDB failures are storage failures: name the store and, for a full map, the fix."""
    try:
        yield
    except lmdb.MapFullError:
        raise StorageError(f"{where}: the LMDB map is full; reopen with a larger map_size "
                           f"(now {layout.DEFAULT_MAP_SIZE} bytes by default)") from None
    except lmdb.Error as exc:
        raise StorageError(f"{where}: LMDB error: {exc}") from None
