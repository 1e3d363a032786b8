"""What opening does to a data directory: create a new store, or check who an existing one is.

A new store gets its genesis block as head, the schema version, the consortium id, the member
name, the data file's identity and a random instance id, in the same write transaction as the
open. An existing one is compared against its recorded identity (see
:mod:`peerdb.store.identity`); an accepted restore locks signing until the node sets the guard
floor.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from peerdb.core.codec import decode, encode
from peerdb.core.consortium import Consortium
from peerdb.core.errors import DecodeError, RestoredDataDir, StorageError
from peerdb.core.model import Block, Header, genesis_header

from . import layout
from .identity import data_file_identity, restored_message
from .tables import Tables

if TYPE_CHECKING:
    from .tables import Txn


def is_empty(txn: Txn, t: Tables) -> bool:
    return all(txn.stat(getattr(t, name.decode("ascii")))["entries"] == 0 for name in layout.ALL_DBS)


def initialise(txn: Txn, t: Tables, directory: Path, consortium: Consortium, member: str,
                accept_restored: bool) -> tuple[bytes, Header]:
    genesis = Block(genesis_header(consortium), ())
    instance = secrets.token_bytes(layout.INSTANCE_ID_LEN)
    meta = t.meta
    txn.put(layout.META_SCHEMA, layout.int_record(layout.SCHEMA_VERSION), db=meta)
    txn.put(layout.META_CONSORTIUM, genesis.hash, db=meta)
    txn.put(layout.META_MEMBER, member.encode("utf-8"), db=meta)
    txn.put(layout.META_IDENTITY, encode(list(data_file_identity(directory))), db=meta)
    txn.put(layout.META_INSTANCE, instance, db=meta)
    txn.put(genesis.hash, genesis.header.raw, db=t.headers)
    txn.put(genesis.hash, genesis.raw, db=t.blocks)
    txn.put(layout.be64(0) + genesis.hash, b"", db=t.heights)
    txn.put(layout.be64(0), genesis.hash, db=t.best)
    txn.put(layout.META_HEAD, genesis.hash, db=meta)
    if accept_restored:  # a member starting over with an empty directory: it may have signed before
        txn.put(layout.META_GUARD_LOCKED, layout.int_record(1), db=meta)
    return instance, genesis.header


def check_identity(txn: Txn, t: Tables, directory: Path, accept_restored: bool) -> bytes:
    """Compare the data file's identity with the recorded one. On an accepted restore (detected
    or declared), lock signing, renew the instance id and record the current identity."""
    raw = txn.get(layout.META_IDENTITY, db=t.meta)
    instance = txn.get(layout.META_INSTANCE, db=t.meta)
    if raw is None or instance is None:
        raise StorageError(f"{directory}: the store has no identity record; it is damaged")
    try:
        recorded = decode(raw, max_size=64, what="identity")
    except DecodeError as exc:
        raise StorageError(f"{directory}: the identity record is corrupt ({exc})") from None
    found = data_file_identity(directory)
    if not accept_restored:
        if recorded != list(found):
            raise RestoredDataDir(restored_message(directory, recorded, found))
        return instance
    instance = secrets.token_bytes(layout.INSTANCE_ID_LEN)
    txn.put(layout.META_IDENTITY, encode(list(found)), db=t.meta)
    txn.put(layout.META_INSTANCE, instance, db=t.meta)
    txn.put(layout.META_GUARD_LOCKED, layout.int_record(1), db=t.meta)
    return instance
