"""The node's durable store: one LMDB environment in the data directory.

What it promises:

* **Atomic blocks.** Storing a block, applying it to the head state (writes, key history, undo
  record, transaction index, mempool cleanup) and moving the head is one LMDB write
  transaction. A crash leaves all of it or none of it; a reorg (undo to the fork point, apply the
  new branch, return the losing branch's transactions to the mempool) is one transaction too.
* **Durable before acknowledged.** The environment is opened with ``sync=True, metasync=True``
  and without ``writemap``, so a write method returns only after its commit is on disk. The node
  must not acknowledge a block to a peer or a transaction to a client, nor release a signature,
  before the corresponding call here has returned.
* **Never double-sign.** :meth:`Store.guard_sign` durably records (height, round, block hash)
  before the node releases a signature and refuses a different block at a height already signed,
  also after a restart. A data directory that was copied or restored from a backup is detected
  (:mod:`peerdb.store.identity`) and refused unless opened with ``accept_restored=True``, which
  locks signing until the node, having caught up, calls :meth:`Store.set_guard_floor`.
* **Refuse, don't serve.** :meth:`Store.open` migrates the schema and checks consistency
  (:mod:`peerdb.store.check`), raising :class:`StorageError` rather than serving damaged data.

Threads and trio: every method is synchronous. LMDB readers never block and never wait for the
writer, and a point read (head, a header, a key, a guard record) is a bounded B-tree lookup in
the memory map taking microseconds, so the node calls those inline from trio. Write methods end
in an fsync (milliseconds) and must be called through ``trio.to_thread.run_sync``; py-lmdb
releases the GIL while committing, so the event loop keeps running meanwhile. Reads that decode
whole blocks or walk many of them (:meth:`block` of a big block, :meth:`headers_iter` at start,
:meth:`state_reader_at` on a side branch, which may recompute a few blocks' effects) are CPU
work of up to tens of milliseconds and belong in a worker thread too. Writes are serialised by a
lock (LMDB allows one writer anyway), so calling them from several worker threads is safe; a
write transaction is begun and committed on the same thread, as LMDB requires.

Views: the store keeps the state of the best chain's head (``tentative``); a read at another
view (``majority``, ``unanimous``) is :meth:`Store.get` with ``at_height`` set to that view's
height from :class:`peerdb.core.chain.BlockTree.heads`, answered from per-key history.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from peerdb.core.codec import decode, encode
from peerdb.core.consortium import Consortium
from peerdb.core.errors import DecodeError, DoubleSignRefused, StorageError, ValidationError
from peerdb.core.limits import HASH_LEN, MAX_ROUND
from peerdb.core.model import Block, BlockSignature, Evidence, Header, Objection, Tx, genesis_header
from peerdb.core.state import Effects

from . import layout
from .apply import ReorgResult, apply_block, move_head
from .check import STARTUP_CHECK_BLOCKS, check_store, migrate
from .identity import DATA_FILE, DirLock, data_file_identity, restored_message
from .readers import StateSnapshot, TxnStateReader, recompute_effects
from .tables import Tables, head_hash, lmdb_errors, need_header, read_block, read_header

if TYPE_CHECKING:
    from .tables import Db, Txn

T = TypeVar("T")

HISTORY_PAGE_MAX = 10_000
"""Most versions of one key :meth:`Store.history` returns per call: a key written in every block
has one version per block, and one call must stay a bounded read; callers page with
``start_height``."""

SCAN_PAGE_MAX = 10_000
"""Most keys :meth:`Store.scan` returns per call, for the same reason; page with ``start_after``."""

ITER_BATCH = 1024
"""Entries read per read transaction by the iterators, so that a slow consumer never holds one
LMDB reader open (which would stop LMDB from reusing freed pages) for long."""


@dataclass(frozen=True)
class TxLocation:
    """Where a transaction sits on the best chain: what an inclusion proof starts from."""

    height: int
    block_hash: bytes
    index: int


class Store:
    """Blocks of every branch, signatures, evidence, objections, best-chain state with history,
    anchors, the mempool and the signing guard, for one member of one consortium."""

    def __init__(self, path: Path, env: lmdb.Environment, tables: Tables, lock: DirLock,
                 consortium: Consortium, member: str, head: Header, instance_id: bytes) -> None:
        self.path = path
        self._env: lmdb.Environment | None = env
        self._t = tables
        self._dir_lock = lock
        self.consortium = consortium
        self.consortium_id = genesis_header(consortium).hash
        self.member = member
        self.instance_id = instance_id
        self._head = head
        self._write_lock = threading.Lock()

    # --- opening and closing ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], consortium: Consortium, member: str, *, sync: bool = True,
             accept_restored: bool = False, map_size: int = layout.DEFAULT_MAP_SIZE,
             check_blocks: int = STARTUP_CHECK_BLOCKS) -> "Store":
        """Open (creating if needed) the store in directory ``path``, migrate it, and check it.

        ``accept_restored=True`` declares the directory restored (copied, rolled back, or
        recreated empty for a member that signed before): the open succeeds even if the data
        file's identity changed, and signing is locked until :meth:`set_guard_floor`. It is
        needed when a copy is detected, and is the operator's switch for restores the store
        cannot detect (see ``docs/operations-restore.md``).

        ``sync=False`` skips fsync on commit: still atomic and safe against a process crash, but
        not against power loss; for tests and benchmarks only.
        """
        where = str(path)
        directory = Path(path)
        if consortium.member(member) is None:
            raise StorageError(f"{where}: {member!r} is not a member of consortium {consortium.name}")
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{where}: cannot create the data directory ({exc})") from None
        lock = DirLock.acquire(directory)
        env: lmdb.Environment | None = None
        try:
            try:
                env = lmdb.open(str(directory), map_size=map_size, subdir=True, max_dbs=layout.MAX_DBS,
                                max_readers=layout.MAX_READERS, sync=sync, metasync=sync, writemap=False,
                                map_async=False, mode=0o600, readahead=False)
            except lmdb.Error as exc:
                raise StorageError(f"{where}: cannot open the LMDB environment ({exc})") from None
            with lmdb_errors(where):
                with env.begin(write=True) as txn:
                    tables = Tables.open(env, txn)
                    if txn.get(layout.META_SCHEMA, db=tables.meta) is None and _is_empty(txn, tables):
                        instance, head = _initialise(txn, tables, directory, consortium, member,
                                                     accept_restored)
                    else:
                        migrate(txn, tables, where)
                        head = check_store(txn, tables, where, genesis_header(consortium).hash, member,
                                           check_blocks)
                        instance = _check_identity(txn, tables, directory, accept_restored)
            return cls(directory, env, tables, lock, consortium, member, head, instance)
        except BaseException:
            if env is not None:
                env.close()
            lock.release()
            raise

    def close(self) -> None:
        """Close the environment and release the directory lock. Idempotent."""
        with self._write_lock:
            if self._env is not None:
                self._env.close()
                self._env = None
                self._dir_lock.release()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._env is None

    def _environment(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"{self.path}: the store is closed")
        return self._env

    @contextmanager
    def _read(self) -> Iterator[Txn]:
        with lmdb_errors(str(self.path)):
            txn = self._environment().begin()
            try:
                yield txn
            finally:
                txn.abort()

    @contextmanager
    def _write(self) -> Iterator[Txn]:
        """One durable write transaction; the head cache follows the committed head."""
        with self._write_lock, lmdb_errors(str(self.path)):
            txn = self._environment().begin(write=True)
            try:
                yield txn
                new_head = head_hash(txn, self._t)
                head = self._head if new_head == self._head.hash else need_header(txn, self._t, new_head)
            except BaseException:
                txn.abort()
                raise
            txn.commit()
            self._head = head

    # --- blocks ----------------------------------------------------------------------------

    def add_block(self, block: Block, signatures: Iterable[BlockSignature] = (), *,
                  effects: Effects | None = None, make_head: bool = False) -> ReorgResult | None:
        """Store a validated block (on any branch) with signatures, in one durable transaction.

        With ``make_head`` the block also becomes the head in the same transaction: the hot path
        (a child of the head) applies ``effects`` as computed by validation, or recomputes them;
        any other block moves the head as :meth:`set_head` would. Returns what moved, or None
        when the head was not touched. The parent must already be stored. Evidence carried in the
        block is also recorded in the evidence table.
        """
        with self._write() as txn:
            self._put_block(txn, block)
            self._put_signatures(txn, signatures)
            if not make_head:
                return None
            head = head_hash(txn, self._t)
            if block.hash == head:
                return ReorgResult()
            if block.header.prev == head:
                if effects is None:
                    parent_root = need_header(txn, self._t, head).state_root
                    effects = recompute_effects(TxnStateReader(txn, self._t), block, self.consortium,
                                                self.consortium_id, parent_root)
                apply_block(txn, self._t, block, effects)
                return ReorgResult(applied=[block.hash])
            cache = {block.hash: effects} if effects is not None else None
            return move_head(txn, self._t, block.hash, self.consortium, self.consortium_id, cache)

    def set_head(self, tip: bytes, effects_cache: Mapping[bytes, Effects] | None = None) -> ReorgResult:
        """Move the head state to stored block ``tip`` (any branch), atomically.

        Rolls back to the fork point, applies the branch (effects from ``effects_cache`` where
        given, else recomputed), and puts transactions of rolled-back blocks that are not on the
        new branch back in the mempool; they are also returned.
        """
        with self._write() as txn:
            if head_hash(txn, self._t) == tip:
                return ReorgResult()
            return move_head(txn, self._t, tip, self.consortium, self.consortium_id, effects_cache)

    def _put_block(self, txn: Txn, block: Block) -> bool:
        t = self._t
        if txn.get(block.hash, db=t.blocks) is not None:
            return False
        if block.height == 0:
            raise StorageError(f"block {block.hash.hex()[:16]}: a second genesis block is not this consortium's")
        parent = read_header(txn, t, block.header.prev)
        if parent is None:
            raise StorageError(f"block {block.hash.hex()[:16]} at height {block.height}: parent "
                               f"{block.header.prev.hex()[:16]} is not stored; store parents first")
        if parent.height + 1 != block.height:
            raise StorageError(f"block {block.hash.hex()[:16]}: height {block.height} is not its parent's "
                               f"height {parent.height} + 1")
        txn.put(block.hash, block.header.raw, db=t.headers)
        txn.put(block.hash, block.raw, db=t.blocks)
        txn.put(layout.be64(block.height) + block.hash, b"", db=t.heights)
        for ev in block.evidence:
            txn.put(ev.id, ev.encode(), overwrite=False, db=t.evidence)
        return True

    def _put_signatures(self, txn: Txn, signatures: Iterable[BlockSignature]) -> int:
        added = 0
        for sig in signatures:
            if txn.put(sig.block_hash + sig.member.encode("utf-8"), sig.signature, overwrite=False,
                       db=self._t.signatures):
                added += 1
        return added

    def add_signatures(self, signatures: Iterable[BlockSignature]) -> int:
        """Persist verified block signatures (the block need not be stored yet); returns how many
        were new."""
        with self._write() as txn:
            return self._put_signatures(txn, signatures)

    def add_evidence(self, evidence: Evidence) -> bool:
        """Persist verified double-sign evidence; False if it was already known."""
        with self._write() as txn:
            return txn.put(evidence.id, evidence.encode(), overwrite=False, db=self._t.evidence)

    def add_objection(self, objection: Objection) -> bool:
        """Persist a verified objection; the first one per (block, member) is kept."""
        with self._write() as txn:
            return txn.put(objection.block_hash + objection.member.encode("utf-8"),
                           encode(objection.to_cbor()), overwrite=False, db=self._t.objections)

    # --- signing guard ---------------------------------------------------------------------

    def guard_sign(self, height: int, round_: int, block_hash: bytes,
                   signature: BlockSignature | None = None) -> None:
        """Durably record that this member signs ``block_hash`` at ``height``; call before the
        signature leaves the node. Raises DoubleSignRefused for a different block at a height
        already signed, for a height at or below the guard floor, while signing is locked after
        a restore, or if the store holds this member's own signature on another block at that
        height (a signature from before a restore, learned back from peers). Signing the same
        block again is allowed.

        ``signature`` (this member's signature of ``block_hash``, made but not yet released) is
        stored in the same transaction, saving the separate :meth:`add_signatures` commit."""
        if len(block_hash) != HASH_LEN or not 0 <= round_ <= MAX_ROUND or height < 1:
            raise StorageError(f"guard_sign: bad arguments (height {height}, round {round_}, "
                               f"hash of {len(block_hash)} bytes)")
        if signature is not None and (signature.block_hash != block_hash or signature.member != self.member):
            raise StorageError(f"guard_sign: the signature given is not {self.member}'s on this block")
        t = self._t
        with self._write() as txn:
            if txn.get(layout.META_GUARD_LOCKED, db=t.meta) is not None:
                raise DoubleSignRefused(
                    f"signing guard: refusing to sign at height {height}: this data directory was restored "
                    "from a backup and signing stays locked until the node has caught up with the network "
                    "and set the guard floor")
            floor = self._guard_floor(txn)
            if floor is not None and height <= floor:
                raise DoubleSignRefused(f"signing guard: refusing to sign at height {height}, at or below the "
                                        f"guard floor {floor} set after a restore")
            raw = txn.get(layout.be64(height), db=t.guard)
            if raw is not None:
                signed_round, signed = layout.parse_guard_record(raw)
                if signed != block_hash:
                    raise DoubleSignRefused(
                        f"signing guard: already signed block {signed.hex()[:16]} at height {height} (round "
                        f"{signed_round}); refusing block {block_hash.hex()[:16]} (round {round_})")
                if signature is not None:
                    self._put_signatures(txn, [signature])
                return
            me = self.member.encode("utf-8")
            cursor = txn.cursor(db=t.heights)
            prefix = layout.be64(height)
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    other = key[len(prefix):]
                    if other != block_hash and txn.get(other + me, db=t.signatures) is not None:
                        raise DoubleSignRefused(
                            f"signing guard: the store holds {self.member}'s signature on block "
                            f"{other.hex()[:16]} at height {height}; refusing block {block_hash.hex()[:16]}")
            txn.put(layout.be64(height), layout.guard_record(round_, block_hash), db=t.guard)
            if signature is not None:
                self._put_signatures(txn, [signature])

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

    def set_guard_floor(self, height: int) -> None:
        """After a restore, once caught up: never sign at or below ``height`` (the network's
        height now), and unlock signing above it. The floor can only rise."""
        if height < 0:
            raise StorageError(f"guard floor: {height} is negative")
        with self._write() as txn:
            floor = self._guard_floor(txn)
            if floor is not None and height < floor:
                raise StorageError(f"guard floor: cannot lower it from {floor} to {height}")
            txn.put(layout.META_GUARD_FLOOR, layout.int_record(height), db=self._t.meta)
            txn.delete(layout.META_GUARD_LOCKED, db=self._t.meta)

    def _guard_floor(self, txn: Txn) -> int | None:
        raw = txn.get(layout.META_GUARD_FLOOR, db=self._t.meta)
        return None if raw is None else layout.parse_int_record(raw, "guard floor")

    # --- anchors ---------------------------------------------------------------------------

    def record_anchor(self, block_hash: bytes, proof: bytes) -> None:
        """Store (or replace, e.g. with a deeper proof) the anchor proof of a block."""
        if len(proof) > layout.MAX_ANCHOR_PROOF_BYTES:
            raise StorageError(f"anchor proof: {len(proof)} bytes exceeds {layout.MAX_ANCHOR_PROOF_BYTES}")
        with self._write() as txn:
            txn.put(block_hash, bytes(proof), db=self._t.anchors)

    def anchor(self, block_hash: bytes) -> bytes | None:
        with self._read() as txn:
            return txn.get(block_hash, db=self._t.anchors)

    def anchors(self) -> Iterator[tuple[bytes, bytes]]:
        """(block hash, proof) for every anchored block, in hash order."""
        return self._iterate(self._t.anchors, lambda _txn, k, v: (k, v))

    # --- mempool ---------------------------------------------------------------------------

    def mempool_add(self, txs: Iterable[Tx]) -> int:
        """Persist pending transactions; those already on the best chain or pooled are skipped.
        Returns how many were added."""
        added = 0
        with self._write() as txn:
            for tx in txs:
                if txn.get(tx.txid, db=self._t.txindex) is None and txn.put(
                        tx.txid, tx.raw, overwrite=False, db=self._t.mempool):
                    added += 1
        return added

    def mempool_remove(self, txids: Iterable[bytes]) -> int:
        with self._write() as txn:
            return sum(1 for txid in txids if txn.delete(txid, db=self._t.mempool))

    def mempool_items(self) -> list[Tx]:
        """Pending transactions in txid order (applying a block removes its transactions)."""
        return list(self._iterate(self._t.mempool, lambda _txn, _k, v: _decode_tx(v)))

    # --- reads: chain ----------------------------------------------------------------------

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
        """The block's stored canonical bytes, undecoded (peers decode and check what they get)."""
        with self._read() as txn:
            return txn.get(block_hash, db=self._t.blocks)

    def block_hash_at(self, height: int) -> bytes | None:
        """The best chain's block at ``height``."""
        if height < 0:
            return None
        with self._read() as txn:
            return txn.get(layout.be64(height), db=self._t.best)

    def state_root_at(self, block_hash: bytes) -> bytes | None:
        header = self.header(block_hash)
        return None if header is None else header.state_root

    def headers_iter(self) -> Iterator[Header]:
        """Every stored header, all branches, by height (parents before children): the node
        rebuilds its BlockTree from it at start."""
        return self._iterate(self._t.heights, lambda txn, key, _v: need_header(txn, self._t, key[8:]))

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

    # --- reads: state ----------------------------------------------------------------------

    def state_reader_at(self, block_hash: bytes,
                        effects_cache: Mapping[bytes, Effects] | None = None) -> StateSnapshot:
        """A StateReader of the state after any stored block (any branch), for validating its
        children. Close it promptly (use ``with``)."""
        with lmdb_errors(str(self.path)):
            return StateSnapshot(self._environment(), self._t, block_hash, self.consortium,
                                 self.consortium_id, effects_cache)

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

    # --- stats -----------------------------------------------------------------------------

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

    # --- helpers ---------------------------------------------------------------------------

    def _iterate(self, db: Db, convert: Callable[[Txn, bytes, bytes], T]) -> Iterator[T]:
        """Iterate a table in key order, ITER_BATCH entries per short read transaction (the
        conversion runs inside it, so it may read other tables consistently)."""
        after: bytes | None = None
        while True:
            batch: list[T] = []
            with self._read() as txn:
                cursor = txn.cursor(db=db)
                positioned = cursor.first() if after is None else cursor.set_range(after)
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


# --- module helpers ----------------------------------------------------------------------------

def _is_empty(txn: Txn, t: Tables) -> bool:
    return all(txn.stat(getattr(t, name.decode("ascii")))["entries"] == 0 for name in layout.ALL_DBS)


def _initialise(txn: Txn, t: Tables, directory: Path, consortium: Consortium, member: str,
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


def _check_identity(txn: Txn, t: Tables, directory: Path, accept_restored: bool) -> bytes:
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
            raise StorageError(restored_message(directory, recorded, found))
        return instance
    instance = secrets.token_bytes(layout.INSTANCE_ID_LEN)
    txn.put(layout.META_IDENTITY, encode(list(found)), db=t.meta)
    txn.put(layout.META_INSTANCE, instance, db=t.meta)
    txn.put(layout.META_GUARD_LOCKED, layout.int_record(1), db=t.meta)
    return instance


def _signature(key: bytes, value: bytes) -> BlockSignature:
    try:
        return BlockSignature(key[:HASH_LEN], key[HASH_LEN:].decode("utf-8"), value)
    except (DecodeError, UnicodeDecodeError) as exc:
        raise StorageError(f"stored signature on {key[:HASH_LEN].hex()[:16]} is corrupt: {exc}") from None


def _decode_tx(raw: bytes) -> Tx:
    try:
        return Tx.decode(raw)
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
