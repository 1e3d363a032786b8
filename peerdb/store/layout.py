"""The on-disk layout: sub-database names, key encodings and record formats, in one place.

Everything the store writes is described here, so that a schema change is a change to this file
plus a migration in :mod:`peerdb.store.check`. Records are canonical CBOR through
:mod:`peerdb.core.codec`; keys are raw bytes chosen so that LMDB's byte order is the order we
iterate in (heights are big-endian, so they sort numerically).

Sub-databases (all in one LMDB environment, so one write transaction spans all of them):

==============  ==========================================  =========================================
name            key                                         value
==============  ==========================================  =========================================
``meta``        ``schema``, ``consortium``, ``member``,     scalars (see ``META_*``); ``tree``: the
                ``identity``, ``instance``, ``head``,       block tree's snapshot (:func:`tree_record`)
                ``guard_floor``, ``guard_locked``, ``tree``
``headers``     block hash                                  header raw (every branch)
``blocks``      block hash                                  block raw (every branch)
``heights``     be64(height) + block hash                   empty (every branch; headers in order)
``signatures``  block hash + member name                    64-byte signature
``evidence``    evidence id                                 ``Evidence.encode()``
``objections``  block hash + member name                    CBOR ``Objection.to_cbor()``
``best``        be64(height)                                block hash on the best chain
``state``       :func:`state_key`                           CBOR ``[height, value]`` (+ key if long)
``history``     sha256(state key) + be64(height)            CBOR value, or CBOR null for a delete
``undo``        block hash (applied blocks only)            CBOR ``[[state key, old record|null]..]``
``txindex``     txid (best chain only)                      CBOR ``[height, index in block]``
``anchors``     block hash                                  anchor proof bytes (issue 5's format)
``mempool``     txid                                        tx raw
``guard``       be64(height)                                CBOR ``[round, block hash]``
``nodes``       be64(height) + node hash (every branch)     a state tree record (:mod:`peerdb.core.smt`)
==============  ==========================================  =========================================

The ``nodes`` table keeps every version of the state tree (the records each stored block added,
under its height), so a proof can be made at any stored height and a side branch's tree shares
its fork point's records instead of copying them. Nothing is deleted from it, on a reorg or
otherwise: records are content-addressed, and an orphaned block's few records cost less than
finding them.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from typing import Any

from peerdb.core.codec import decode, encode, expect_bytes, expect_int, expect_list, expect_str
from peerdb.core.errors import DecodeError, StorageError
from peerdb.core.limits import HASH_LEN, MAX_KEY_BYTES, MAX_NAMESPACE_LEN, MAX_VALUE_BYTES

SCHEMA_VERSION = 2
"""Version of this layout. Bump it with every incompatible change and add a migration from the
previous version to :data:`peerdb.store.check.MIGRATIONS` (or, when the chain itself cannot be
carried over, a reason to :data:`peerdb.store.check.REFUSED`). Version 2: the ``nodes`` table
of protocol 2's state tree."""

DEFAULT_MAP_SIZE = 64 * 1024**3 if sys.maxsize > 2**32 else 1024**3
"""LMDB's map size is the largest the data file may grow, reserved as *virtual* address space
only (the file grows as data is written). 64 GiB is roughly 150 million 1-op transactions; on a
64-bit machine reserving it costs nothing, so the node never stops on MapFullError in practice.
32-bit builds cannot map more than ~2 GiB. Configurable through ``Store.open(map_size=...)``."""

MAX_DBS = 32
"""Named sub-databases the environment may hold: 16 today, room for later schema versions."""

MAX_READERS = 256
"""Concurrent read transactions (LMDB reader slots): the trio thread plus worker threads plus
open state readers; the LMDB default of 126 is tight for a node with many peers validating."""

DB_META = b"meta"
DB_HEADERS = b"headers"
DB_BLOCKS = b"blocks"
DB_HEIGHTS = b"heights"
DB_SIGNATURES = b"signatures"
DB_EVIDENCE = b"evidence"
DB_OBJECTIONS = b"objections"
DB_BEST = b"best"
DB_STATE = b"state"
DB_HISTORY = b"history"
DB_UNDO = b"undo"
DB_TXINDEX = b"txindex"
DB_ANCHORS = b"anchors"
DB_MEMPOOL = b"mempool"
DB_GUARD = b"guard"
DB_NODES = b"nodes"

ALL_DBS = (DB_META, DB_HEADERS, DB_BLOCKS, DB_HEIGHTS, DB_SIGNATURES, DB_EVIDENCE, DB_OBJECTIONS,
           DB_BEST, DB_STATE, DB_HISTORY, DB_UNDO, DB_TXINDEX, DB_ANCHORS, DB_MEMPOOL, DB_GUARD, DB_NODES)

META_SCHEMA = b"schema"
META_CONSORTIUM = b"consortium"
META_MEMBER = b"member"
META_IDENTITY = b"identity"
META_INSTANCE = b"instance"
META_HEAD = b"head"
META_GUARD_FLOOR = b"guard_floor"
META_GUARD_LOCKED = b"guard_locked"
META_TREE = b"tree"

INSTANCE_ID_LEN = 16
"""Random bytes naming one incarnation of a data directory (renewed when a restore is accepted)."""

LITERAL_KEY_LIMIT = 448
"""Longest state key stored literally (namespace + marker + key bytes). LMDB keys are at most
511 bytes in default builds, while a namespace (64) plus a key (512) can reach 577; longer keys
are stored as a prefix plus a SHA-256 of the whole key, and keep their full text in the record."""

_LONG_PREFIX = LITERAL_KEY_LIMIT - 1 - MAX_NAMESPACE_LEN - HASH_LEN
_LITERAL = b"\x00"
_HASHED = b"\x01"
"""Marker bytes after the namespace (names cannot contain them): the literal and the hashed form
can never produce the same key, so a client cannot forge a short key equal to a long key's."""

MAX_ANCHOR_PROOF_BYTES = 1024 * 1024
"""An anchor proof is a Bitcoin transaction, a Merkle branch and a few headers: kilobytes. A
megabyte bounds what a buggy caller can make us store per block."""

_BE64 = struct.Struct(">Q")


def be64(n: int) -> bytes:
    return _BE64.pack(n)


def from_be64(data: bytes) -> int:
    value: int = _BE64.unpack(data)[0]
    return value


def state_key(namespace: str, key: str) -> bytes:
    """The LMDB key of (namespace, key) in the ``state`` table; see :data:`LITERAL_KEY_LIMIT`."""
    ns = namespace.encode("utf-8")
    k = key.encode("utf-8")
    if len(ns) + 1 + len(k) <= LITERAL_KEY_LIMIT:
        return ns + _LITERAL + k
    return ns + _HASHED + k[:_LONG_PREFIX] + hashlib.sha256(k).digest()


def _marker_at(skey: bytes) -> int:
    """Index of the form marker: the first byte below 0x02 (namespace names never contain one)."""
    for i in range(min(len(skey), MAX_NAMESPACE_LEN + 1)):
        if skey[i] < 2:
            return i
    raise StorageError(f"stored state key {skey[:40]!r} has no namespace marker")


def is_long_key(skey: bytes) -> bool:
    return skey[_marker_at(skey)] == _HASHED[0]


def scan_prefixes(namespace: str, prefix: str) -> tuple[bytes, bytes]:
    """The two key ranges (literal and hashed form) that hold keys of ``namespace`` starting with
    ``prefix`` (for a long prefix, a superset: callers filter on the full key)."""
    ns = namespace.encode("utf-8")
    p = prefix.encode("utf-8")
    return ns + _LITERAL + p, ns + _HASHED + p[:_LONG_PREFIX]


def history_key(skey: bytes, height: int) -> bytes:
    """Fixed-length prefix (so no key's history runs into another's) plus the height, big-endian."""
    return hashlib.sha256(skey).digest() + be64(height)


def history_prefix(skey: bytes) -> bytes:
    return hashlib.sha256(skey).digest()


HISTORY_PREFIX_LEN = HASH_LEN


# --- records -----------------------------------------------------------------------------------

def _decoded(data: bytes, what: str, max_size: int) -> Any:
    try:
        return decode(data, max_size=max_size, what=what)
    except DecodeError as exc:
        raise StorageError(f"stored {what} is corrupt: {exc}") from None


def state_record(height: int, value: bytes, namespace: str, key: str, skey: bytes) -> bytes:
    if is_long_key(skey):
        return encode([height, value, namespace, key])
    return encode([height, value])


def parse_state_record(data: bytes) -> tuple[int, bytes]:
    """(height written, value) of a ``state`` record."""
    items = _decoded(data, "state record", MAX_VALUE_BYTES + 1024)
    try:
        items = expect_list(items, "state record")
        if len(items) not in (2, 4):
            raise DecodeError(f"state record: expected 2 or 4 elements, got {len(items)}")
        return expect_int(items[0], "state record.height"), expect_bytes(items[1], "state record.value")
    except DecodeError as exc:
        raise StorageError(f"stored {exc}") from None


def state_record_key(data: bytes, skey: bytes) -> tuple[str, str]:
    """(namespace, key) of a ``state`` entry: from the key itself, or the record for long keys."""
    if is_long_key(skey):
        items = _decoded(data, "state record", MAX_VALUE_BYTES + 1024)
        try:
            items = expect_list(items, "state record", 4)
            return (expect_str(items[2], "state record.namespace", MAX_NAMESPACE_LEN),
                    expect_str(items[3], "state record.key", MAX_KEY_BYTES))
        except DecodeError as exc:
            raise StorageError(f"stored {exc}") from None
    at = _marker_at(skey)
    try:
        return skey[:at].decode("utf-8"), skey[at + 1:].decode("utf-8")
    except UnicodeDecodeError:
        raise StorageError(f"stored state key {skey[:40]!r} is not UTF-8") from None


def history_record(value: bytes | None) -> bytes:
    return encode(value)


def parse_history_record(data: bytes) -> bytes | None:
    value = _decoded(data, "history record", MAX_VALUE_BYTES + 16)
    if value is not None and type(value) is not bytes:
        raise StorageError("stored history record is corrupt: neither a value nor a tombstone")
    return value


def undo_record(entries: list[tuple[bytes, bytes | None]]) -> bytes:
    return encode([[skey, old] for skey, old in entries])


def parse_undo_record(data: bytes) -> list[tuple[bytes, bytes | None]]:
    items = _decoded(data, "undo record", 1 << 31)
    try:
        out: list[tuple[bytes, bytes | None]] = []
        for i, entry in enumerate(expect_list(items, "undo record")):
            pair = expect_list(entry, f"undo record[{i}]", 2)
            skey = expect_bytes(pair[0], f"undo record[{i}].key")
            old = None if pair[1] is None else expect_bytes(pair[1], f"undo record[{i}].old")
            out.append((skey, old))
        return out
    except DecodeError as exc:
        raise StorageError(f"stored {exc}") from None


def txindex_record(height: int, index: int) -> bytes:
    return encode([height, index])


def parse_txindex_record(data: bytes) -> tuple[int, int]:
    items = _decoded(data, "tx index record", 64)
    try:
        items = expect_list(items, "tx index record", 2)
        return expect_int(items[0], "tx index.height"), expect_int(items[1], "tx index.index")
    except DecodeError as exc:
        raise StorageError(f"stored {exc}") from None


def guard_record(round_: int, block_hash: bytes) -> bytes:
    return encode([round_, block_hash])


def parse_guard_record(data: bytes) -> tuple[int, bytes]:
    items = _decoded(data, "signing guard record", 128)
    try:
        items = expect_list(items, "signing guard record", 2)
        return (expect_int(items[0], "signing guard.round"),
                expect_bytes(items[1], "signing guard.block", HASH_LEN))
    except DecodeError as exc:
        raise StorageError(f"stored {exc}") from None


def int_record(value: int) -> bytes:
    return encode(value)


def parse_int_record(data: bytes, what: str) -> int:
    value = _decoded(data, what, 64)
    if type(value) is not int or value < 0:
        raise StorageError(f"stored {what} is corrupt: not a non-negative integer")
    return value



def tree_record(root: bytes, final: bytes, floors: dict[str, int], below: dict[str, int], anchored_floor: int,
                settled_evidence: list[bytes]) -> bytes:
    """The block tree's snapshot: root and final header bytes, per-member endorsement floors and
    signature counts below the root, the anchored floor, and the ids of evidence included in
    best-chain blocks below the root (see :class:`peerdb.core.chain.TreeSnapshot`)."""
    return encode([root, final, [[m, h] for m, h in sorted(floors.items())],
                   [[m, n] for m, n in sorted(below.items())], anchored_floor, sorted(settled_evidence)])


def parse_tree_record(data: bytes) -> tuple[bytes, bytes, dict[str, int], dict[str, int], int, list[bytes]]:
    items = _decoded(data, "block tree snapshot", 1 << 24)
    try:
        items = expect_list(items, "tree snapshot", 6)
        pairs = []
        for where, raw in (("floors", items[2]), ("below", items[3])):
            pairs.append({expect_str(p[0], f"tree snapshot.{where}.member", 64): expect_int(p[1], f"tree snapshot.{where}")
                          for p in (expect_list(e, f"tree snapshot.{where}", 2) for e in expect_list(raw, where))})
        evidence = [expect_bytes(e, "tree snapshot.evidence", HASH_LEN) for e in expect_list(items[5], "evidence")]
        return (expect_bytes(items[0], "tree snapshot.root"), expect_bytes(items[1], "tree snapshot.final"),
                pairs[0], pairs[1], expect_int(items[4], "tree snapshot.anchored"), evidence)
    except DecodeError as exc:
        raise StorageError(f"stored {exc}") from None
