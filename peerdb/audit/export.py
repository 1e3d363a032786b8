"""Writing bundles: from a running node (a snapshot, then blocks in batches) or from plain objects.

Consistency without stopping the node. The node's block tree keeps changing while a bundle
streams out, so the export first takes a **snapshot** in one short read under the engine lock:
the blocks in the tree, each block's signer set, the evidence, the heads and the best tip (the
head item's claims). Every later read is of data that never changes (a block's bytes) or is
filtered to the snapshot (signatures), so the bundle is exactly the node's books at that
instant and the verifier's recomputation must match the claims exactly. Only anchor proofs are
read as they are when their batch is written: a proof that arrives during the export can only
raise the anchored and unanimous heads, which the claims therefore state as lower bounds.

A namespace export (``namespace`` given) writes the same blocks as ``part`` items: everything
but the transactions that touch neither the namespace nor ``_gov``, plus the proofs that the
ones written are all that do (:func:`part_entry`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from peerdb.anchor.proof import AnchorProof
from peerdb.core.chain import BlockTree, MemberSchedule
from peerdb.core.consortium import Consortium
from peerdb.core.errors import CorruptionError, DecodeError, StorageError, ValidationError
from peerdb.core.model import (GOV_NAMESPACE, Block, BlockSignature, Evidence, Header, Objection, consortium_id,
                               genesis_header, tx_namespaces)
from peerdb.core.smt import MemoryNodes, Proof, prove
from peerdb.core.statetree import ns_path, prove_ns_txs

from .bundle import FORMAT_VERSION, AnchorRef, BlockEntry, BtcPart, BundleWriter, Claims, Head, PartEntry

MAX_BATCH_BLOCKS = 64
"""Blocks read per batch: a short, bounded read of the store between two chunks of output."""

MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Block bytes per batch (at least one block): bounds the memory a batch holds on the node."""


class BlockSource(Protocol):
    """What an export reads per block (:class:`peerdb.store.Store` has exactly these)."""

    def block(self, block_hash: bytes) -> Block | None: ...
    def signatures(self, block_hash: bytes) -> list[BlockSignature]: ...
    def objections(self, block_hash: bytes) -> list[Objection]: ...
    def anchor(self, block_hash: bytes) -> bytes | None: ...
    def namespace_proof(self, header: Header, namespace: str) -> Proof: ...


@dataclass(frozen=True)
class SnapshotBlock:
    height: int
    hash: bytes
    best: bool
    signers: frozenset[str]
    unsaved: tuple[BlockSignature, ...] = ()
    """Signatures the node counts but has not written to its store yet (the engine batches
    peers' signatures into its next commit): taken with the snapshot, since the store lags."""


@dataclass(frozen=True)
class Snapshot:
    head: Head
    blocks: tuple[SnapshotBlock, ...]
    evidence: tuple[Evidence, ...]


def claims_from_tree(tree: BlockTree) -> Claims:
    heads = tree.heads()
    tip = tree.best_tip
    return Claims(tip.hash, tip.height, heads.majority, heads.unanimous_signed, heads.unanimous, heads.anchored,
                  tuple(sorted(tree.culprits)))


@dataclass(frozen=True)
class Capture:
    """The raw snapshot, taken under the engine's lock with as little work as possible: the
    blocks the tree holds in memory (about a microsecond each: the signer sets are the only
    thing copied), never the settled history below its root, which :func:`snapshot_from` reads
    from the store outside the lock."""

    consortium: Consortium
    member: str
    now_ms: int
    rows: list[tuple[int, bytes, frozenset[str]]]
    chain: list[bytes | None]
    """The best chain's hashes from the root up."""
    claims: Claims
    evidence: list[Evidence]
    unsaved: list[BlockSignature]
    root_height: int = 0


class ArchivedBlocks(Protocol):
    """The store, for the blocks below the tree's root (and side branches it dropped)."""

    def headers_iter(self, start_height: int = 0) -> Iterator[Header]: ...
    def signers(self, block_hash: bytes) -> list[str]: ...
    def block_hash_at(self, height: int) -> bytes | None: ...


def capture(tree: BlockTree, consortium: Consortium, member: str, evidence: Iterable[Evidence],
            now_ms: int, unsaved: Iterable[BlockSignature] = ()) -> Capture:
    """Call under the engine's lock: everything the bundle will hold that can still change.
    ``unsaved``: signatures in the tree that the store does not hold yet."""
    signers = tree.signers
    rows = [(h.height, h.hash, signers(h.hash)) for h in tree.headers() if h.height > 0]
    root = tree.root.height
    chain = [tree.best_chain_hash(i) for i in range(root, tree.best_tip.height + 1)]
    return Capture(consortium, member, now_ms, rows, chain, claims_from_tree(tree), list(evidence), list(unsaved),
                   root)


def snapshot_from(cap: Capture, archive: ArchivedBlocks | None = None, namespace: str | None = None) -> Snapshot:
    """The snapshot, built from a capture outside the lock (of a namespace bundle if ``namespace``);
    with ``archive`` (the store), the stored blocks the tree no longer holds too (O(chain) reads,
    in the caller's thread)."""
    on_chain = set(cap.chain)
    rows = list(cap.rows)
    if archive is not None and cap.root_height > 0:
        held = {block_hash for _height, block_hash, _signers in cap.rows}
        for header in archive.headers_iter():
            if header.height == 0 or header.hash in held:
                continue
            rows.append((header.height, header.hash, frozenset(archive.signers(header.hash))))
            if header.height < cap.root_height and archive.block_hash_at(header.height) == header.hash:
                on_chain.add(header.hash)
    unsaved: dict[bytes, list[BlockSignature]] = {}
    for sig in cap.unsaved:
        unsaved.setdefault(sig.block_hash, []).append(sig)
    blocks = tuple(SnapshotBlock(height, block_hash, block_hash in on_chain, signers,
                                 tuple(unsaved.get(block_hash, ())))
                   for height, block_hash, signers in sorted(rows, key=lambda r: (r[0], r[1])))
    head = Head(FORMAT_VERSION, cap.consortium, consortium_id(cap.consortium), cap.member, cap.now_ms, cap.claims,
                namespace)
    return Snapshot(head, blocks, tuple(sorted(cap.evidence, key=lambda e: e.id)))


def take_snapshot(tree: BlockTree, consortium: Consortium, member: str, evidence: Iterable[Evidence],
                  now_ms: int, namespace: str | None = None) -> Snapshot:
    """Everything the bundle will claim, read at one instant (the capture under the engine's lock)."""
    return snapshot_from(capture(tree, consortium, member, evidence, now_ms), None, namespace)


def batches(blocks: Sequence[SnapshotBlock], max_blocks: int = MAX_BATCH_BLOCKS) -> Iterator[Sequence[SnapshotBlock]]:
    for start in range(0, len(blocks), max_blocks):
        yield blocks[start:start + max_blocks]


class BtcNumbering:
    """Gives each distinct Bitcoin part of the anchor proofs its ``btc`` item number."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[bytes, bytes, tuple[bytes, ...], int], int] = {}

    def split(self, proof: AnchorProof) -> tuple[BtcPart | None, AnchorRef]:
        """The proof's shared part (None if already numbered) and its own part."""
        key = (proof.bitcoin_tx, proof.txoutproof, proof.headers, proof.bitcoin_height)
        n = self._numbers.get(key)
        new = None
        if n is None:
            n = self._numbers[key] = len(self._numbers)
            new = BtcPart(n, *key)
        return new, AnchorRef(n, proof.path, proof.root)


def encode_block(writer: BundleWriter, numbering: BtcNumbering, block: Block, best: bool,
                 signatures: Iterable[BlockSignature], objections: Iterable[Objection] = (),
                 anchor: AnchorProof | None = None, part: tuple[str, BlockSource] | None = None) -> bytes:
    """Frames for one block (preceded by a btc item if its anchor brings a new one); with
    ``part`` (the namespace, and where to read its root proofs), as a namespace bundle's part."""
    out = []
    ref = None
    if anchor is not None:
        btc, ref = numbering.split(anchor)
        if btc is not None:
            out.append(writer.btc(btc))
    sigs = tuple(sorted((s.member, s.signature) for s in signatures if s.block_hash == block.hash))
    objs = tuple(sorted((o.member, o.reason, o.signature) for o in objections if o.block_hash == block.hash))
    if part is None:
        out.append(writer.block(BlockEntry(block.raw, block.header, best, sigs, objs, ref)))
    else:
        out.append(writer.block(part_entry(block, best, sigs, objs, ref, part[0], part[1])))
    return b"".join(out)


def part_entry(block: Block, best: bool, sigs: tuple[tuple[str, bytes], ...],
               objections: tuple[tuple[str, str, bytes], ...], anchor: AnchorRef | None, namespace: str,
               source: BlockSource) -> PartEntry:
    """``block`` as a namespace's auditor gets it: the transactions touching ``namespace`` or
    ``_gov``, the proofs that those are all (under ``ns_tx_root``), and both namespaces' roots
    after the block (under ``state_root``)."""
    touched = [(tx.txid, tx_namespaces(tx)) for tx in block.txs]
    txs = tuple(tx.raw for tx, (_, spaces) in zip(block.txs, touched) if namespace in spaces or GOV_NAMESPACE in spaces)
    ns_txs = (prove_ns_txs(touched, namespace), prove_ns_txs(touched, GOV_NAMESPACE))
    roots = (source.namespace_proof(block.header, namespace), source.namespace_proof(block.header, GOV_NAMESPACE))
    return PartEntry(block.header.raw, block.header, best, sigs, objections, anchor, txs, block.evidence, ns_txs, roots)


def encode_batch(source: BlockSource, batch: Sequence[SnapshotBlock], writer: BundleWriter,
                 numbering: BtcNumbering, max_bytes: int = MAX_BATCH_BYTES,
                 namespace: str | None = None,
                 stored_ok: Callable[[BlockSignature | Objection], bool] | None = None) -> tuple[bytes, int]:
    """Frames for the blocks of ``batch`` read from ``source``, stopping once ``max_bytes`` of
    blocks were read; returns the bytes and how many blocks they cover (at least one). With
    ``namespace``, the blocks are written as a namespace bundle's parts. With ``stored_ok``,
    every stored signature and objection is checked with it first: one that fails raises
    :class:`CorruptionError` rather than being exported as the member's."""
    out = []
    size = 0
    done = 0
    for snap in batch:
        if done and size >= max_bytes:
            break
        block = source.block(snap.hash)
        if block is None:
            raise StorageError(f"audit export: block {snap.height} {snap.hash.hex()[:16]} is in the tree but "
                               "its body is not stored")
        raw_proof = source.anchor(snap.hash)
        proof = None
        if raw_proof is not None:
            try:
                proof = AnchorProof.decode(raw_proof)
            except DecodeError as exc:
                raise StorageError(f"audit export: stored anchor proof of block {snap.height} is corrupt: {exc}") from None
        held = {s.member: s for s in snap.unsaved}
        stored = source.signatures(snap.hash)
        objections = source.objections(snap.hash)
        if stored_ok is not None:
            _check_stored(stored_ok, snap, stored, objections)
        held.update((s.member, s) for s in stored)
        sigs = [s for s in held.values() if s.member in snap.signers]
        out.append(encode_block(writer, numbering, block, snap.best, sigs, objections, proof,
                                None if namespace is None else (namespace, source)))
        size += len(block.raw)
        done += 1
    return b"".join(out), done


def _check_stored(stored_ok: Callable[[BlockSignature | Objection], bool], snap: SnapshotBlock,
                  signatures: Iterable[BlockSignature], objections: Iterable[Objection]) -> None:
    items: list[BlockSignature | Objection] = [*signatures, *objections]
    for item in items:
        if not stored_ok(item):
            kind = "signature" if isinstance(item, BlockSignature) else "objection"
            raise CorruptionError(f"stored {kind} of {item.member} on block {snap.height} {snap.hash.hex()[:16]} does "
                                  "not verify", kind, snap.hash + item.member.encode())


def export_snapshot(source: BlockSource, snapshot: Snapshot) -> Iterator[bytes]:
    """The whole bundle for a snapshot, chunk by chunk (synchronously; the node's API streams
    the same chunks with its own batching)."""
    writer = BundleWriter()
    numbering = BtcNumbering()
    yield writer.start(snapshot.head)
    pending = list(snapshot.blocks)
    while pending:
        data, done = encode_batch(source, pending[:MAX_BATCH_BLOCKS], writer, numbering,
                                  namespace=snapshot.head.namespace)
        del pending[:done]
        yield data
    yield finish(writer, snapshot.evidence)


def finish(writer: BundleWriter, evidence: Iterable[Evidence]) -> bytes:
    return b"".join(writer.evidence(ev) for ev in evidence) + writer.end()


class MemorySource:
    """Blocks, signatures, objections, evidence and anchors held in memory: a node's books
    without a node, for tests, benchmarks and tools that build bundles offline."""

    def __init__(self, consortium: Consortium) -> None:
        self.consortium = consortium
        self.blocks: dict[bytes, Block] = {}
        self.sigs: dict[bytes, dict[str, BlockSignature]] = {}
        self.objs: dict[bytes, list[Objection]] = {}
        self.anchors: dict[bytes, bytes] = {}
        self.evidence_by_id: dict[bytes, Evidence] = {}
        self.schedule: MemberSchedule | None = None
        self.trees = MemoryNodes()
        """State tree records of the blocks (for namespace bundles): pass them to :meth:`add_block`."""

    def add_block(self, block: Block, signatures: Iterable[BlockSignature] = (),
                  objections: Iterable[Objection] = (), anchor: AnchorProof | None = None,
                  tree: Mapping[bytes, bytes] | None = None) -> None:
        """``tree``: the state tree records the block added (its effects' ``nodes``)."""
        self.blocks[block.hash] = block
        if tree is not None:
            self.trees.add(tree)
        self.add_signatures(signatures)
        self.objs.setdefault(block.hash, []).extend(objections)
        if anchor is not None:
            self.anchors[block.hash] = anchor.encode()
        for ev in block.evidence:
            self.evidence_by_id[ev.id] = ev

    def add_signatures(self, signatures: Iterable[BlockSignature]) -> None:
        for sig in signatures:
            self.sigs.setdefault(sig.block_hash, {})[sig.member] = sig

    def add_evidence(self, evidence: Evidence) -> None:
        self.evidence_by_id[evidence.id] = evidence

    # BlockSource
    def block(self, block_hash: bytes) -> Block | None:
        return self.blocks.get(block_hash)

    def signatures(self, block_hash: bytes) -> list[BlockSignature]:
        return list(self.sigs.get(block_hash, {}).values())

    def objections(self, block_hash: bytes) -> list[Objection]:
        return list(self.objs.get(block_hash, []))

    def anchor(self, block_hash: bytes) -> bytes | None:
        return self.anchors.get(block_hash)

    def namespace_proof(self, header: Header, namespace: str) -> Proof:
        return prove(self.trees, (header.state_root, header.height), ns_path(namespace))[0]

    def tree(self) -> BlockTree:
        """The block tree a node holding exactly these would have (blocks must connect). Set
        :attr:`schedule` (the best tip's ``ConsortiumState``) when governance changed the
        member set, as the node's tree follows it."""
        tree = BlockTree(genesis_header(self.consortium), self.consortium.member_names, self.schedule)
        for block in sorted(self.blocks.values(), key=lambda b: b.height):
            tree.add_header(block.header)
        for block_hash, sigs in self.sigs.items():
            if block_hash in tree:
                for member in sigs:
                    try:
                        tree.add_signature(block_hash, member)
                    except ValidationError:
                        pass  # a member only another branch's governance knows (as the node does)
        for ev in self.evidence_by_id.values():
            tree.add_culprit(ev.member)
        for block_hash in self.anchors:
            if block_hash in tree:
                tree.set_anchored(block_hash)
        return tree

    def snapshot(self, member: str, now_ms: int, namespace: str | None = None) -> Snapshot:
        return take_snapshot(self.tree(), self.consortium, member, self.evidence_by_id.values(), now_ms, namespace)

    def bundle(self, member: str, now_ms: int = 0, namespace: str | None = None) -> bytes:
        return b"".join(export_snapshot(self, self.snapshot(member, now_ms, namespace)))
