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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb

from peerdb.core.codec import encode
from peerdb.core.consortium import NAME_RE, Consortium
from peerdb.core.errors import DoubleSignRefused, StorageError
from peerdb.core.limits import HASH_LEN, MAX_ROUND
from peerdb.core.membership import StateCache
from peerdb.core.model import Block, BlockSignature, Evidence, Header, Objection, Tx, genesis_header
from peerdb.core.state import Effects

from . import layout
from .apply import ReorgResult, apply_block, move_head, put_tree
from .check import STARTUP_CHECK_BLOCKS, check_store, migrate
from .datafile import check_data_file
from .identity import DirLock
from .opening import check_identity, initialise, is_empty
from .queries import StoreQueries
from .readers import TxnStateReader, recompute_effects
from .tables import Tables, head_hash, lmdb_errors, need_header, read_header

if TYPE_CHECKING:
    from .tables import Txn


@dataclass
class _Batch:
    head_before: Header
    txn: "Txn | None" = None
    """Begun at the batch's first write."""


class Store(StoreQueries):
    """Blocks of every branch, signatures, evidence, objections, best-chain state with history,
    anchors, the mempool and the signing guard, for one member of one consortium. The reads are
    in :class:`peerdb.store.queries.StoreQueries`; the writes, each one durable transaction, here."""

    # --- opening and closing -------------------------------------------------------------

    def __init__(self, path: Path, env: lmdb.Environment, tables: Tables, lock: DirLock,
                 consortium: Consortium, member: str, head: Header, instance_id: bytes) -> None:
        self.path = path
        self._env: lmdb.Environment | None = env
        self._t = tables
        self._dir_lock = lock
        self.consortium = consortium
        self.consortium_id = genesis_header(consortium).hash
        self.gov_states = StateCache(consortium)
        """Governance states for recomputing the effects of stored blocks (side branches, reorgs);
        its lock makes it safe for writes and snapshots in different worker threads."""
        self.member = member
        self.instance_id = instance_id
        self._head = head
        self._write_lock = threading.Lock()
        self._local = threading.local()
        """``batch``: this thread's open :meth:`batch` (a :class:`_Batch`), if any."""
        self.on_commit: Callable[[float], None] | None = None
        """Called with the seconds each durable commit took (its fsync, with ``sync``): the
        node's metrics set it; it runs in the writing thread, so it must be thread-safe."""

    def _commit(self, txn: Txn) -> None:
        if self.on_commit is None:
            txn.commit()
            return
        start = time.perf_counter()
        txn.commit()
        self.on_commit(time.perf_counter() - start)

    @classmethod
    def open(cls, path: str | os.PathLike[str], consortium: Consortium, member: str, *, sync: bool = True,
             accept_restored: bool = False, map_size: int = layout.DEFAULT_MAP_SIZE,
             check_blocks: int = STARTUP_CHECK_BLOCKS, joining: bool = False) -> "Store":
        """Open (creating if needed) the store in directory ``path``, migrate it, and check it.

        ``accept_restored=True`` declares the directory restored (copied, rolled back, or
        recreated empty for a member that signed before): the open succeeds even if the data
        file's identity changed, and signing is locked until :meth:`set_guard_floor`. It is
        needed when a copy is detected, and is the operator's switch for restores the store
        cannot detect (see ``docs/operations-restore.md``).

        ``joining=True``: ``member`` is not a founding member; it was (or is being) added by a
        governance proposal, which this store learns by catching up.

        ``sync=False`` skips fsync on commit: still atomic and safe against a process crash, but
        not against power loss; for tests and benchmarks only.
        """
        where = str(path)
        directory = Path(path)
        if consortium.member(member) is None and not joining:
            raise StorageError(f"{where}: {member!r} is not a member of consortium {consortium.name}")
        if joining and not NAME_RE.match(member):
            raise StorageError(f"{where}: {member!r} is not a valid member name")
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{where}: cannot create the data directory ({exc})") from None
        lock = DirLock.acquire(directory)
        env: lmdb.Environment | None = None
        try:
            check_data_file(directory)  # before LMDB maps it: a file cut short would crash us with SIGBUS
            try:
                env = lmdb.open(str(directory), map_size=map_size, subdir=True, max_dbs=layout.MAX_DBS,
                                max_readers=layout.MAX_READERS, sync=sync, metasync=sync, writemap=False,
                                map_async=False, mode=0o600, readahead=False)
            except lmdb.Error as exc:
                raise StorageError(f"{where}: cannot open the LMDB environment ({exc})") from None
            with lmdb_errors(where):
                env.reader_check()  # free reader slots of killed processes, so freed pages get reused
                with env.begin(write=True) as txn:
                    tables = Tables.open(env, txn)
                    if txn.get(layout.META_SCHEMA, db=tables.meta) is None and is_empty(txn, tables):
                        instance, head = initialise(txn, tables, directory, consortium, member,
                                                     accept_restored)
                    else:
                        migrate(txn, tables, where)
                        head = check_store(txn, tables, where, genesis_header(consortium).hash, member,
                                           check_blocks)
                        instance = check_identity(txn, tables, directory, accept_restored)
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

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run several writes as ONE durable transaction (catch-up stores a whole batch of blocks
        with one commit instead of one per block; the node's engine calls write the block they
        co-sign and the block they propose together). Inside, this thread's reads see the
        batch's own writes; other threads see nothing of it until the commit. All or nothing: an
        exception aborts every write of the batch. The write transaction begins at the first
        write: a batch that writes nothing costs nothing (no commit, no writer lock)."""
        local = self._local
        if getattr(local, "batch", None) is not None:
            yield  # nested: the outer batch commits
            return
        batch = _Batch(self._head)
        local.batch = batch
        with lmdb_errors(str(self.path)):
            try:
                yield
            except BaseException:
                local.batch = None
                if batch.txn is not None:
                    self._head = batch.head_before
                    batch.txn.abort()
                    self._write_lock.release()
                raise
            local.batch = None
            if batch.txn is not None:
                try:
                    self._commit(batch.txn)
                except BaseException:
                    self._head = batch.head_before
                    raise
                finally:
                    self._write_lock.release()

    def in_batch(self) -> bool:
        """Whether this thread has a :meth:`batch` open (its writes become durable when it ends)."""
        return getattr(self._local, "batch", None) is not None

    def _batch_txn_here(self) -> Txn | None:
        batch: _Batch | None = getattr(self._local, "batch", None)
        return batch.txn if batch is not None else None

    def _batch_txn_for_write(self) -> Txn | None:
        """This thread's batch transaction, begun now if the batch has not written yet."""
        batch: _Batch | None = getattr(self._local, "batch", None)
        if batch is None:
            return None
        if batch.txn is None:
            self._write_lock.acquire()
            try:
                with lmdb_errors(str(self.path)):
                    batch.txn = self._environment().begin(write=True)
            except BaseException:
                self._write_lock.release()
                raise
            batch.head_before = self._head
        return batch.txn

    @contextmanager
    def _write(self) -> Iterator[Txn]:
        """One durable write transaction; the head cache follows the committed head."""
        batch = self._batch_txn_for_write()
        if batch is not None:
            # A child of the batch transaction: a write that fails leaves nothing behind, one that
            # succeeds becomes durable when the whole batch commits.
            child = self._environment().begin(write=True, parent=batch)
            try:
                yield child
                new_head = head_hash(child, self._t)
                head = self._head if new_head == self._head.hash else need_header(child, self._t, new_head)
            except BaseException:
                child.abort()
                raise
            child.commit()
            self._head = head
            return
        with self._write_lock, lmdb_errors(str(self.path)):
            txn = self._environment().begin(write=True)
            try:
                yield txn
                new_head = head_hash(txn, self._t)
                head = self._head if new_head == self._head.hash else need_header(txn, self._t, new_head)
            except BaseException:
                txn.abort()
                raise
            self._commit(txn)
            self._head = head

    # --- blocks --------------------------------------------------------------------------

    def add_block(self, block: Block, signatures: Iterable[BlockSignature] = (), *,
                  effects: Effects | None = None, make_head: bool = False,
                  own_signature: BlockSignature | None = None) -> ReorgResult | None:
        """Store a validated block (on any branch) with signatures, in one durable transaction.

        With ``make_head`` the block also becomes the head in the same transaction: the hot path
        (a child of the head) applies ``effects`` as computed by validation, or recomputes them;
        any other block moves the head as :meth:`set_head` would. Returns what moved, or None
        when the head was not touched. The parent must already be stored. Evidence carried in the
        block is also recorded in the evidence table.

        ``own_signature`` (this member's signature on the block, not yet released) passes the
        signing guard in the same transaction: one commit makes the block, the guard entry and
        the signature durable together. If the guard refuses, nothing is written and
        DoubleSignRefused is raised; store the block again without the signature.
        """
        with self._write() as txn:
            if own_signature is not None:
                self._guard(txn, block.height, block.header.round, block.hash, own_signature)
            self._put_block(txn, block)
            self._put_signatures(txn, signatures)
            head = head_hash(txn, self._t)
            applies = make_head and block.header.prev == head
            if effects is not None and not applies and block.hash != head:
                put_tree(txn, self._t, block, effects)  # applying writes them (apply_block)
            if not make_head:
                return None
            if block.hash == head:
                return ReorgResult()
            if applies:
                if effects is None:
                    parent_root = need_header(txn, self._t, head).state_root
                    effects = recompute_effects(TxnStateReader(txn, self._t), block, self.consortium,
                                                self.consortium_id, parent_root, states=self.gov_states)
                apply_block(txn, self._t, block, effects)
                return ReorgResult(applied=[block.hash])
            cache = {block.hash: effects} if effects is not None else None
            return move_head(txn, self._t, block.hash, self.consortium, self.consortium_id, cache,
                             states=self.gov_states)

    def set_head(self, tip: bytes, effects_cache: Mapping[bytes, Effects] | None = None) -> ReorgResult:
        """Move the head state to stored block ``tip`` (any branch), atomically.

        Rolls back to the fork point, applies the branch (effects from ``effects_cache`` where
        given, else recomputed), and puts transactions of rolled-back blocks that are not on the
        new branch back in the mempool; they are also returned.
        """
        with self._write() as txn:
            if head_hash(txn, self._t) == tip:
                return ReorgResult()
            return move_head(txn, self._t, tip, self.consortium, self.consortium_id, effects_cache,
                             states=self.gov_states)

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

    # --- signing guard -------------------------------------------------------------------

    def guard_sign(self, height: int, round_: int, block_hash: bytes,
                   signature: BlockSignature | None = None,
                   others: Iterable[BlockSignature] = ()) -> None:
        """Durably record that this member signs ``block_hash`` at ``height``; call before the
        signature leaves the node. Raises DoubleSignRefused for a different block at a height
        already signed, for a height at or below the guard floor, while signing is locked after
        a restore, or if the store holds this member's own signature on another block at that
        height (a signature from before a restore, learned back from peers). Signing the same
        block again is allowed.

        ``signature`` (this member's signature of ``block_hash``, made but not yet released) is
        stored in the same transaction, saving the separate :meth:`add_signatures` commit, and so
        are ``others`` (peers' signatures waiting to be written)."""
        with self._write() as txn:
            self._guard(txn, height, round_, block_hash, signature)
            self._put_signatures(txn, others)

    def _guard(self, txn: Txn, height: int, round_: int, block_hash: bytes,
               signature: BlockSignature | None) -> None:
        if len(block_hash) != HASH_LEN or not 0 <= round_ <= MAX_ROUND or height < 1:
            raise StorageError(f"guard_sign: bad arguments (height {height}, round {round_}, "
                               f"hash of {len(block_hash)} bytes)")
        if signature is not None and (signature.block_hash != block_hash or signature.member != self.member):
            raise StorageError(f"guard_sign: the signature given is not {self.member}'s on this block")
        t = self._t
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

    def repair_block(self, block: Block) -> bool:
        """Replace the stored bytes of a block whose copy is corrupt by a good copy (its hash is
        the key, so a copy that hashes to it is the block). Returns True if a copy was replaced."""
        with self._write() as txn:
            stored = txn.get(block.hash, db=self._t.blocks)
            if stored is None or stored == block.raw:
                return False
            txn.put(block.hash, block.raw, db=self._t.blocks)
            txn.put(block.hash, block.header.raw, db=self._t.headers)
            return True

    def repair_signature(self, signature: BlockSignature) -> bool:
        """Replace a stored block signature whose copy is corrupt by a good one (verified by the
        caller with the member's key). Returns True if a copy was replaced."""
        key = signature.block_hash + signature.member.encode("utf-8")
        with self._write() as txn:
            stored = txn.get(key, db=self._t.signatures)
            if stored is None or stored == signature.signature:
                return False
            txn.put(key, signature.signature, db=self._t.signatures)
            return True

    def save_meta(self, key: bytes, value: bytes) -> None:
        """Record a node-local scalar (the block tree's snapshot): one small synced commit."""
        with self._write() as txn:
            txn.put(key, value, db=self._t.meta)

    # --- anchors and mempool -------------------------------------------------------------

    def record_anchor(self, block_hash: bytes, proof: bytes) -> None:
        """Store (or replace, e.g. with a deeper proof) the anchor proof of a block."""
        if len(proof) > layout.MAX_ANCHOR_PROOF_BYTES:
            raise StorageError(f"anchor proof: {len(proof)} bytes exceeds {layout.MAX_ANCHOR_PROOF_BYTES}")
        with self._write() as txn:
            txn.put(block_hash, bytes(proof), db=self._t.anchors)

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
