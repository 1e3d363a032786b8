"""Namespace audits: a bundle with every header, signature, evidence and anchor but only one
namespace's transactions (and governance's) verifies on its own, checking the namespace's whole
history and its running root; one with a transaction of another namespace slipped in, or one of
its own left out, or a root that does not match, fails naming the block."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerdb.audit.bundle import BlockEntry, Head, Item, PartEntry, Trailer
from peerdb.audit.errors import AuditFailure
from peerdb.audit.export import MemorySource
from peerdb.core.consortium import NamespaceRule
from peerdb.core.governance import propose_op, vote_op
from peerdb.core.model import Block, BlockSignature, Tx
from peerdb.core.privacy import seal_value
from peerdb.core.proposals import Proposal, RotateKey, SetNamespace, Vote
from peerdb.core.smt import Proof
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.bundles import assemble, items_of, verify
from tests.helpers.chainbuilder import ChainBuilder
from tests.helpers.consortium import seed_key

NOTES_KEY = "notes-only-key-0001"
"""Long enough that it cannot turn up by chance in a bundle's hashes and signatures (a two-byte
key did, now and then)."""


class Books:
    """Blocks with transactions of ``books``, of ``notes``, of both, a private namespace, a key
    rotation, a side block, evidence and anchors, in a MemorySource with their state trees."""

    def __init__(self) -> None:
        self.cb = cb = ChainBuilder(4)
        self.src = MemorySource(cb.consortium)
        self.keys = dict(cb.keys)
        self.tip: Block = cb.genesis
        self.notes_only = self.grow([cb.tx("m1", [("notes", NOTES_KEY, b"x")])])
        self.mixed = self.grow([cb.tx("m0", [("books", "a", b"1")]),
                                cb.tx("m2", [("notes", "n2", b"y"), ("books", "b", b"2")]),
                                cb.tx("m3", [("notes", "n3", b"z")])])
        self.governed = self.change(RotateKey("m1", seed_key("member/m1/next").public))
        self.keys["m1"] = seed_key("member/m1/next")
        self.change(SetNamespace(NamespaceRule("vault", ("m0",), ("m0", "m1"), private=True)))
        readers = {m: [self.keys[m].public] for m in ("m0", "m1")}
        self.sealed = self.grow([cb.tx("m0", [("vault", "v", seal_value("vault", "v", b"secret", readers))])])
        parent = self.tip
        side = cb.block(parent, [cb.tx("m3", [("books", "side", b"s")])], round=1)
        self.src.add_block(side, [self.sign(side, side.header.proposer)], tree=cb.effects(side).nodes)
        self.grow([cb.tx("m1", [("books", "a", None), ("books", "c", b"3")])],
                  signers=[m for m in cb.members if m != side.header.proposer])
        _, _, evidence = cb.double_sign("m2", self.mixed)
        self.src.add_evidence(evidence)
        main = cb.chain_to(self.tip)[1:]
        for block, proof in zip(main[:3], make_anchor([b.hash for b in main[:3]])):
            self.src.anchors[block.hash] = proof.encode()

    def sign(self, block: Block, member: str) -> BlockSignature:
        return BlockSignature.create(self.keys[member], self.cb.cid, member, block.hash)

    def grow(self, txs: list[Tx] = [], signers: list[str] | None = None) -> Block:  # noqa: B006 - never mutated
        block = self.cb.block(self.tip, txs)
        self.src.add_block(block, [self.sign(block, m) for m in (signers or self.cb.members)],
                           tree=self.cb.effects(block).nodes)
        self.tip = block
        return block

    def change(self, change: object) -> Block:
        proposal = Proposal(change, "", len(self.src.blocks))  # type: ignore[arg-type]
        first = self.grow([self.cb.tx("m0", [propose_op(proposal)])])
        self.grow([self.cb.tx("m0", [vote_op(Vote.create(self.keys[m], self.cb.cid, proposal.id, m, True))])
                   for m in self.cb.members])
        self.grow()  # the next block is the first the change is in force for
        return first

    def bundle(self, namespace: str | None) -> bytes:
        return self.src.bundle("m0", now_ms=1_700_000_100_000, namespace=namespace)


@pytest.fixture(scope="module")
def books() -> Books:
    return Books()


def parts(data: bytes) -> list[Item]:
    return items_of(data)


def rebuilt(items: list[Item]) -> bytes:
    return assemble(items)


def test_a_namespace_bundle_verifies_and_holds_only_its_namespace(books: Books) -> None:
    full = verify(books.bundle(None))
    data = books.bundle("books")
    report = verify(data)
    assert report.namespace == "books" and report.heads == full.heads and report.blocks == full.blocks
    assert report.anchored_blocks == full.anchored_blocks and [e.member for e in report.excluded] == ["m2"]
    items = parts(data)
    assert isinstance(items[0], Head) and items[0].namespace == "books"
    assert not any(isinstance(i, BlockEntry) for i in items)
    carried = [Tx.decode(raw) for i in items if isinstance(i, PartEntry) for raw in i.txs]
    for tx in carried:
        assert {op.namespace for op in tx.ops} & {"books", "_gov"}
    assert b"secret" not in data and NOTES_KEY.encode() not in data  # no other namespace's data, except a mixed tx's
    assert report.namespace_root and "namespace audit of 'books'" in report.text()


def test_a_private_namespace_exports_its_envelopes(books: Books) -> None:
    data = books.bundle("vault")
    report = verify(data)
    assert report.namespace == "vault"
    vault = [Tx.decode(raw) for i in parts(data) if isinstance(i, PartEntry) for raw in i.txs
             if "vault" in {op.namespace for op in Tx.decode(raw).ops}]
    assert len(vault) == 1 and b"secret" not in vault[0].raw


def _part_of(items: list[Item], block: Block) -> int:
    return next(n for n, i in enumerate(items) if isinstance(i, PartEntry) and i.hash == block.hash)


def test_a_transaction_of_another_namespace_slipped_in_fails(books: Books) -> None:
    items = parts(books.bundle("books"))
    n = _part_of(items, books.notes_only)
    part = items[n]
    assert isinstance(part, PartEntry) and part.txs == ()
    foreign = books.cb.blocks[books.notes_only.hash].txs[0]
    items[n] = replace(part, txs=(foreign.raw,))
    with pytest.raises(AuditFailure) as info:
        verify(rebuilt(items))
    assert f"block {books.notes_only.height}" in str(info.value) and "touches neither 'books'" in str(info.value)


def test_a_transaction_of_its_own_left_out_fails(books: Books) -> None:
    items = parts(books.bundle("books"))
    n = _part_of(items, books.mixed)
    part = items[n]
    assert isinstance(part, PartEntry) and len(part.txs) == 2
    items[n] = replace(part, txs=part.txs[1:])
    with pytest.raises(AuditFailure) as info:
        verify(rebuilt(items))
    assert f"block {books.mixed.height}" in str(info.value) and "transactions of 'books'" in str(info.value)


def test_transactions_reordered_fail(books: Books) -> None:
    items = parts(books.bundle("books"))
    n = _part_of(items, books.mixed)
    part = items[n]
    assert isinstance(part, PartEntry)
    items[n] = replace(part, txs=part.txs[::-1])
    with pytest.raises(AuditFailure, match="not exactly the block's transactions"):
        verify(rebuilt(items))


def test_a_root_proof_of_another_block_fails(books: Books) -> None:
    items = parts(books.bundle("books"))
    n, m = _part_of(items, books.mixed), _part_of(items, books.tip)
    a, b = items[n], items[m]
    assert isinstance(a, PartEntry) and isinstance(b, PartEntry)
    items[n] = replace(a, ns_roots=(b.ns_roots[0], a.ns_roots[1]))
    with pytest.raises(AuditFailure, match="root of 'books'"):
        verify(rebuilt(items))


def test_governance_transactions_are_in_every_namespace_bundle(books: Books) -> None:
    items = parts(books.bundle("notes"))
    n = _part_of(items, books.governed)
    part = items[n]
    assert isinstance(part, PartEntry) and len(part.txs) == 1
    items[n] = replace(part, txs=(), ns_txs=(part.ns_txs[0], Proof((), None)))
    with pytest.raises(AuditFailure, match="_gov"):
        verify(rebuilt(items))


def test_parts_in_a_full_bundle_or_blocks_in_a_namespace_bundle_are_refused(books: Books) -> None:
    full, ns = parts(books.bundle(None)), parts(books.bundle("books"))
    mixed = [ns[0], *[i for i in full[1:] if not isinstance(i, Trailer)]]
    with pytest.raises(AuditFailure, match="a block item in a namespace bundle"):
        verify(assemble(mixed))
