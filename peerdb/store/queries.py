"""Everything the store answers without writing: chain, state, history, guard and pool reads.

:class:`StoreQueries` is the read half of :class:`peerdb.store.Store`; each method is one short
LMDB read transaction (readers never wait for the writer), except the iterators, which read in
batches of :data:`ITER_BATCH` entries so that no reader stays open while a slow consumer works.

Why one module of this size: it is every read the store answers, each short; they share the
table handles and the batching helpers, and splitting them by topic would split those too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from peerdb.core.blockdecode import decode_tx_fast
from peerdb.core.codec import decode
from peerdb.core.consortium import Consortium
from peerdb.core.errors import CorruptionError, DecodeError, StorageError, ValidationError
from peerdb.core.membership import StateCache
from peerdb.core.limits import HASH_LEN
from peerdb.core.model import Block, BlockSignature, Evidence, Header, Objection, Tx
from peerdb.core.state import Effects
from peerdb.core.smt import Proof, ProofError
from peerdb.core.statetree import StateProof, prove_key, prove_namespace, verify_key

from . import layout
from .identity import DATA_FILE
from .check import verify_block_bytes
from .readers import StateSnapshot, TxnStateReader
from .tables import Tables, head_hash, lmdb_errors, need_header, read_block, read_header

if TYPE_CHECKING:
    from .tables import Db, Txn

T = TypeVar("T")

HISTORY_PAGE_MAX = 10_000
"""Most versions of one key :meth:`StoreQueries.history` returns per call: a key written in
every block has one version per block, and one call must stay a bounded read; callers page
with ``start_height``."""

SCAN_PAGE_MAX = 10_000
"""Most keys :meth:`StoreQueries.scan` returns per call, for the same reason; page with
``start_after``."""

ITER_BATCH = 1024
"""Entries read per read transaction by the iterators, so that a slow consumer never holds one
LMDB reader open (which would stop LMDB from reusing freed pages) for long."""


@dataclass(frozen=True)
class TxLocation:
    """Where a transaction sits on the best chain: what an inclusion proof starts from."""

    height: int
    block_hash: bytes
    index: int


class StoreQueries:
    """The read-only methods of the store (see :class:`peerdb.store.Store`)."""

    path: Path
    consortium: Consortium
    consortium_id: bytes
    gov_states: StateCache
    member: str
    instance_id: bytes
    _env: lmdb.Environment | None
    _t: Tables
    _head: Header

    # --- plumbing ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._env is None

    def _environment(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"{self.path}: the store is closed")
        return self._env

    @contextmanager
    def _read(self) -> Iterator[Txn]:
        batch = self._batch_txn_here()
        if batch is not None:  # read our own uncommitted writes
            yield batch
            return
        with lmdb_errors(str(self.path)):
            txn = self._environment().begin()
            try:
                yield txn
            finally:
                txn.abort()

    def _batch_txn_here(self) -> Txn | None:
        """The open batch write transaction, if this thread owns one (see Store.batch)."""
        return None

    # --- chain ---------------------------------------------------------------------------

    def head(self) -> Header:
        """The best chain's head, whose state the ``state`` table holds."""
        return self._head

    def header(self, block_hash: bytes) -> Header | None:
        with self._read() as txn:
            return read_header(txn, self._t, block_hash)

    def has_block(self, block_hash: bytes) -> bool:
        with self._read() as txn:
            return txn.get(block_hash, db=self._t.headers) is not None

    def block(self, block_hash: bytes) -> Block | None:
        """The block, decoded and re-checked (~0.3 ms per transaction: use a worker thread for
        big blocks, and :meth:`block_raw` to pass a block on to a peer)."""
        with self._read() as txn:
            return read_block(txn, self._t, block_hash)

    def block_raw(self, block_hash: bytes) -> bytes | None:
        """The block's stored canonical bytes, unchecked: use :meth:`block_raw_checked` for
        anything served or sent."""
        with self._read() as txn:
            return txn.get(block_hash, db=self._t.blocks)

    def block_raw_checked(self, block_hash: bytes) -> bytes | None:
        """The block's stored bytes after checking they still hash to ``block_hash`` (header,
        transaction and evidence roots; ~5 us per transaction, without building the objects).
        Raises :class:`~peerdb.core.errors.CorruptionError` naming the block if they do not."""
        raw = self.block_raw(block_hash)
        if raw is not None:
            verify_block_bytes(block_hash, raw)
        return raw

    def block_hash_at(self, height: int) -> bytes | None:
        """The best chain's block at ``height``."""
        if height < 0:
            return None
        with self._read() as txn:
            return txn.get(layout.be64(height), db=self._t.best)

    def state_root_at(self, block_hash: bytes) -> bytes | None:
        header = self.header(block_hash)
        return None if header is None else header.state_root

    def headers_iter(self, start_height: int = 0) -> Iterator[Header]:
        """Every stored header at ``start_height`` and above, all branches, by height (parents
        before children): the node rebuilds its block tree above its root from it at start."""
        start = layout.be64(start_height) if start_height > 0 else None
        return self._iterate(self._t.heights, lambda txn, key, _v: need_header(txn, self._t, key[8:]), start=start)

    def signers(self, block_hash: bytes) -> list[str]:
        """Names of the members whose signatures on a block are stored (keys only, no decoding)."""
        with self._read() as txn:
            cursor = txn.cursor(db=self._t.signatures)
            out = []
            if cursor.set_range(block_hash):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(block_hash):
                        break
                    out.append(key[len(block_hash):].decode("utf-8", "replace"))
            return out

    def signed_at(self, member: str, height: int) -> list[bytes]:
        """Stored blocks at ``height`` (any branch) that carry ``member``'s signature."""
        prefix = layout.be64(height)
        name = member.encode("utf-8")
        with self._read() as txn:
            cursor = txn.cursor(db=self._t.heights)
            out = []
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    block_hash = key[8:]
                    if txn.get(block_hash + name, db=self._t.signatures) is not None:
                        out.append(block_hash)
            return out

    def meta(self, key: bytes) -> bytes | None:
        with self._read() as txn:
            return txn.get(key, db=self._t.meta)

    def signatures(self, block_hash: bytes) -> list[BlockSignature]:
        with self._read() as txn:
            cursor = txn.cursor(db=self._t.signatures)
            out = []
            if cursor.set_range(block_hash):
                for key, value in cursor:
                    if not key.startswith(block_hash):
                        break
                    out.append(_signature(key, value))
            return out

    def all_signatures_iter(self) -> Iterator[BlockSignature]:
        return self._iterate(self._t.signatures, lambda _txn, k, v: _signature(k, v))

    def evidence_list(self) -> list[Evidence]:
        return list(self._iterate(self._t.evidence, lambda _txn, _k, v: _decode_evidence(v)))

    def objections(self, block_hash: bytes) -> list[Objection]:
        with self._read() as txn:
            cursor = txn.cursor(db=self._t.objections)
            out = []
            if cursor.set_range(block_hash):
                for key, value in cursor:
                    if not key.startswith(block_hash):
                        break
                    out.append(_decode_objection(value))
            return out

    def all_objections(self) -> Iterator[Objection]:
        """Every stored objection, also those against blocks that were never accepted (an
        invalid proposal is objected to but never enters the block tree)."""
        return self._iterate(self._t.objections, lambda _txn, _key, value: _decode_objection(value))

    def included(self, txids: Iterable[bytes]) -> set[bytes]:
        """Which of ``txids`` are on the best chain: one read transaction for a whole batch
        (mempool admission checks thousands at a time)."""
        with self._read() as txn:
            return {txid for txid in txids if txn.get(txid, db=self._t.txindex) is not None}

    def ids_with_prefix(self, kind: str, prefix: str, limit: int) -> list[bytes]:
        """Up to ``limit`` ids whose hex starts with ``prefix`` (lowercase hex): ``kind`` is
        ``block`` (every stored block, of any branch) or ``tx`` (transactions on the best
        chain). One short read; the API resolves id prefixes with it."""
        db = {"block": self._t.headers, "tx": self._t.txindex}[kind]
        start = bytes.fromhex(prefix[:len(prefix) // 2 * 2])
        out: list[bytes] = []
        with self._read() as txn:
            cursor = txn.cursor(db=db)
            positioned = cursor.set_range(start)
            while positioned and len(out) < limit:
                key = cursor.key()
                if not key.startswith(start):
                    break
                if key.hex().startswith(prefix):
                    out.append(key)
                positioned = cursor.next()
        return out

    def tx_location(self, txid: bytes) -> TxLocation | None:
        """Where a transaction is on the best chain (None if it is not)."""
        with self._read() as txn:
            raw = txn.get(txid, db=self._t.txindex)
            if raw is None:
                return None
            height, index = layout.parse_txindex_record(raw)
            block_hash = txn.get(layout.be64(height), db=self._t.best)
            if block_hash is None:
                raise StorageError(f"tx index points at height {height}, which is not on the best chain")
            return TxLocation(height, block_hash, index)

    # --- state ---------------------------------------------------------------------------

    def state_reader_at(self, block_hash: bytes,
                        effects_cache: Mapping[bytes, Effects] | None = None) -> StateSnapshot:
        """A StateReader of the state after any stored block (any branch), for validating its
        children. Close it promptly (use ``with``)."""
        with lmdb_errors(str(self.path)):
            return StateSnapshot(self._environment(), self._t, block_hash, self.consortium,
                                 self.consortium_id, effects_cache, txn=self._batch_txn_here(),
                                 states=self.gov_states)

    def get(self, namespace: str, key: str, at_height: int | None = None) -> tuple[bytes | None, int | None]:
        """(value, height of the write that set it) at the head, or as of best-chain height
        ``at_height``. A deleted key gives (None, height of the delete); a key never written
        gives (None, None)."""
        skey = layout.state_key(namespace, key)
        with self._read() as txn:
            head = head_hash(txn, self._t)
            head_height = need_header(txn, self._t, head).height
            if at_height is None:
                raw = txn.get(skey, db=self._t.state)
                if raw is not None:
                    height, value = layout.parse_state_record(raw)
                    return value, height
                at_height = head_height
            elif not 0 <= at_height <= head_height:
                raise ValidationError(f"at_height: {at_height} is not between 0 and the head height {head_height}")
            found = _history_at(txn, self._t, skey, at_height)
            if found is None:
                return None, None
            height, hvalue = found
            return hvalue, height

    def get_checked(self, namespace: str, key: str, height: int) -> tuple[bytes | None, int | None]:
        """:meth:`get` as of best-chain ``height``, checked against the state tree under that
        block's state root (which every member's signature covers): a value the disk changed is
        never served. Raises :class:`~peerdb.core.errors.CorruptionError` naming the key.
        Costs a tree path (about log2 of the namespace's keys LMDB reads and hashes)."""
        value, written = self.get(namespace, key, height)
        self.check_value(namespace, key, value, height)
        return value, written

    def check_value(self, namespace: str, key: str, value: bytes | None, height: int) -> None:
        """Raise :class:`~peerdb.core.errors.CorruptionError` unless the state tree under the
        best-chain block at ``height`` holds ``value`` for the key (None: holds none)."""
        header, proof = self.state_proof(namespace, key, height)
        try:
            verify_key(header.state_root, namespace, key, value, proof)
        except ProofError as exc:
            raise CorruptionError(f"stored value of {namespace}/{key} at height {height} does not match the state "
                                  f"tree under block {header.hash.hex()[:16]}'s state root ({exc})", "value",
                                  layout.state_key(namespace, key)) from None

    def state_proof(self, namespace: str, key: str, height: int) -> tuple[Header, StateProof]:
        """The best-chain header at ``height`` and the state tree path from its state root to the
        key (proving its value there, or its absence): one read transaction."""
        with self._read() as txn:
            block_hash = txn.get(layout.be64(height), db=self._t.best)
            if block_hash is None:
                raise ValidationError(f"height {height} is not on the best chain (head {self._head.height})")
            header = need_header(txn, self._t, block_hash)
            return header, prove_key(TxnStateReader(txn, self._t), header.state_root, height, namespace, key)

    def namespace_proof(self, header: Header, namespace: str) -> Proof:
        """The proof of a namespace's root (or its absence) under a stored block's state root:
        what a namespace bundle carries per block (any branch: every stored block's tree is)."""
        with self._read() as txn:
            return prove_namespace(TxnStateReader(txn, self._t), header.state_root, header.height, namespace)

    def tree_node(self, key: bytes) -> bytes | None:
        """A state tree record (:func:`peerdb.core.smt.node_key`)."""
        with self._read() as txn:
            return txn.get(key, db=self._t.nodes)

    def history(self, namespace: str, key: str, *, start_height: int = 0,
                limit: int = HISTORY_PAGE_MAX) -> list[tuple[int, bytes, bytes | None]]:
        """Versions of a key on the best chain from ``start_height`` up, oldest first:
        (height, block hash, value or None for a delete); at most ``limit`` of them."""
        limit = min(limit, HISTORY_PAGE_MAX)
        skey = layout.state_key(namespace, key)
        prefix = layout.history_prefix(skey)
        out: list[tuple[int, bytes, bytes | None]] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._t.history)
            if not cursor.set_range(layout.history_key(skey, max(start_height, 0))):
                return out
            for hkey, value in cursor:
                if not hkey.startswith(prefix) or len(out) >= limit:
                    break
                height = layout.from_be64(hkey[layout.HISTORY_PREFIX_LEN:])
                block_hash = txn.get(layout.be64(height), db=self._t.best)
                if block_hash is None:
                    raise StorageError(f"history of {namespace}/{key} names height {height}, not on the best chain")
                out.append((height, block_hash, layout.parse_history_record(value)))
        return out

    def state_items(self) -> Iterator[tuple[str, str, bytes, int]]:
        """Every (namespace, key, value, height written) at the head, in key order (the deep
        check compares them with a replay)."""
        def convert(_txn: Txn, skey: bytes, raw: bytes) -> tuple[str, str, bytes, int]:
            ns, key = layout.state_record_key(raw, skey)
            height, value = layout.parse_state_record(raw)
            return ns, key, value, height
        return self._iterate(self._t.state, convert)

    def scan(self, namespace: str, prefix: str = "", *, start_after: str | None = None,
             limit: int = SCAN_PAGE_MAX) -> list[tuple[str, bytes, int]]:
        """Keys of ``namespace`` starting with ``prefix`` at the head: (key, value, height
        written), at most ``limit``; pass the last key returned as ``start_after`` for the next
        page. Keys come in byte order of their UTF-8, except that keys too long to store
        literally (see :data:`layout.LITERAL_KEY_LIMIT`) come after all others."""
        limit = min(limit, SCAN_PAGE_MAX)
        literal, hashed = layout.scan_prefixes(namespace, prefix)
        ranges: list[tuple[bytes, bytes | None]] = [(literal, None), (hashed, None)]
        if start_after is not None:
            after = layout.state_key(namespace, start_after)
            ranges = [(hashed, after)] if layout.is_long_key(after) else [(literal, after), (hashed, None)]
        out: list[tuple[str, bytes, int]] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._t.state)
            for range_prefix, after_key in ranges:
                seek = after_key if after_key is not None and after_key > range_prefix else range_prefix
                if not cursor.set_range(seek):
                    continue
                for skey, raw in cursor:
                    if len(out) >= limit or not skey.startswith(range_prefix):
                        break
                    if skey == after_key:
                        continue
                    ns, key = layout.state_record_key(raw, skey)
                    if ns == namespace and key.startswith(prefix):
                        height, value = layout.parse_state_record(raw)
                        out.append((key, value, height))
        return out

    # --- signing guard, anchors, mempool -------------------------------------------------

    def guard_record(self, height: int) -> tuple[int, bytes] | None:
        """(round, block hash) this member signed at ``height``, if any."""
        with self._read() as txn:
            raw = txn.get(layout.be64(height), db=self._t.guard)
            return None if raw is None else layout.parse_guard_record(raw)

    def guard_floor(self) -> int | None:
        with self._read() as txn:
            return self._guard_floor(txn)

    def guard_locked(self) -> bool:
        """True after an accepted restore, until :meth:`set_guard_floor`."""
        with self._read() as txn:
            return txn.get(layout.META_GUARD_LOCKED, db=self._t.meta) is not None

    def _guard_floor(self, txn: Txn) -> int | None:
        raw = txn.get(layout.META_GUARD_FLOOR, db=self._t.meta)
        return None if raw is None else layout.parse_int_record(raw, "guard floor")

    def anchor(self, block_hash: bytes) -> bytes | None:
        with self._read() as txn:
            return txn.get(block_hash, db=self._t.anchors)

    def anchors(self) -> Iterator[tuple[bytes, bytes]]:
        """(block hash, proof) for every anchored block, in hash order."""
        return self._iterate(self._t.anchors, lambda _txn, k, v: (k, v))

    def mempool_items(self) -> list[Tx]:
        """Pending transactions in txid order (applying a block removes its transactions)."""
        return list(self._iterate(self._t.mempool, lambda _txn, _k, v: _decode_tx(v)))

    # --- stats ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Entry counts and bytes of pages per table, bytes of the data file and in use (the
        file also holds free pages LMDB reuses), head, guard state."""
        env = self._environment()
        page = env.stat()["psize"]
        counts: dict[str, int] = {}
        table_bytes: dict[str, int] = {}
        with self._read() as txn:
            for name in (n.decode("ascii") for n in layout.ALL_DBS):
                st = txn.stat(getattr(self._t, name))
                counts[name] = st["entries"]
                table_bytes[name] = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * page
            floor = self._guard_floor(txn)
            locked = txn.get(layout.META_GUARD_LOCKED, db=self._t.meta) is not None
        info = env.info()
        try:
            file_bytes = os.stat(self.path / DATA_FILE).st_size
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot stat the data file ({exc})") from None
        return {
            "path": str(self.path),
            "head_height": self._head.height,
            "head": self._head.hash.hex(),
            "entries": counts,
            "table_bytes": table_bytes,
            "file_bytes": file_bytes,
            "used_bytes": (info["last_pgno"] + 1) * page,
            "map_size": info["map_size"],
            "guard_floor": floor,
            "guard_locked": locked,
            "instance_id": self.instance_id.hex(),
        }

    # --- helpers -------------------------------------------------------------------------

    def _iterate(self, db: Db, convert: Callable[[Txn, bytes, bytes], T], start: bytes | None = None) -> Iterator[T]:
        """Iterate a table in key order (from ``start``, inclusive), ITER_BATCH entries per short
        read transaction (the conversion runs inside it, so it may read other tables consistently)."""
        after: bytes | None = None
        while True:
            batch: list[T] = []
            with self._read() as txn:
                cursor = txn.cursor(db=db)
                if after is None:
                    positioned = cursor.first() if start is None else cursor.set_range(start)
                else:
                    positioned = cursor.set_range(after)
                if positioned and after is not None and cursor.key() == after:
                    positioned = cursor.next()
                last = after
                while positioned and len(batch) < ITER_BATCH:
                    last = cursor.key()
                    batch.append(convert(txn, last, cursor.value()))
                    positioned = cursor.next()
            yield from batch
            if len(batch) < ITER_BATCH:
                return
            after = last


# --- module helpers ---------------------------------------------------------------------------

def _signature(key: bytes, value: bytes) -> BlockSignature:
    try:
        return BlockSignature(key[:HASH_LEN], key[HASH_LEN:].decode("utf-8"), value)
    except (DecodeError, UnicodeDecodeError) as exc:
        raise StorageError(f"stored signature on {key[:HASH_LEN].hex()[:16]} is corrupt: {exc}") from None


def _decode_tx(raw: bytes) -> Tx:
    try:
        return decode_tx_fast(raw)
    except DecodeError as exc:
        raise StorageError(f"stored mempool transaction is corrupt: {exc}") from None


def _decode_evidence(raw: bytes) -> Evidence:
    try:
        return Evidence.decode(raw)
    except DecodeError as exc:
        raise StorageError(f"stored evidence is corrupt: {exc}") from None


def _decode_objection(raw: bytes) -> Objection:
    try:
        return Objection.from_cbor(decode(raw, max_size=4096, what="objection"))
    except DecodeError as exc:
        raise StorageError(f"stored objection is corrupt: {exc}") from None


def _history_at(txn: Txn, t: Tables, skey: bytes, height: int) -> tuple[int, bytes | None] | None:
    """The latest version of a key written at or below ``height``: (height written, value)."""
    target = layout.history_key(skey, height)
    cursor = txn.cursor(db=t.history)
    if cursor.set_range(target):
        if cursor.key() != target and not cursor.prev():
            return None
    elif not cursor.last():
        return None
    hkey = cursor.key()
    if not hkey.startswith(layout.history_prefix(skey)):
        return None
    return layout.from_be64(hkey[layout.HISTORY_PREFIX_LEN:]), layout.parse_history_record(cursor.value())
