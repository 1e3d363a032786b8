"""Auditors refuse a history that leaves out a settled block, whatever the fork rule's weights say.

Block 1 is settled: anchored in Bitcoin and endorsed by every member (m1 through its signature
on block 2). Members m1, m2 and m3 then sign a longer fork from genesis — never twice at one
height, so no evidence exists — that outweighs it by the seed's rule. A bundle whose best chain
is that fork fails verification naming block 1 and the members who signed both sides; a bundle
from an honest member, which never left block 1 and holds the fork's blocks as a dead side
branch, verifies; `audit diff` against an earlier export names the settled block the later one
left out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from peerdb.audit.diff import diff_bundles
from peerdb.audit.errors import AuditFailure
from peerdb.audit.export import MemorySource, Snapshot, SnapshotBlock, export_snapshot, take_snapshot
from peerdb.core.chain import BlockTree, SettledConflict
from peerdb.core.model import Block, genesis_header
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.bundles import verify
from tests.helpers.chainbuilder import ChainBuilder

COLLUDERS = ("m1", "m2", "m3")


@dataclass
class World:
    cb: ChainBuilder
    settled: Block
    honest: list[Block]
    fork: list[Block]
    signers: dict[bytes, tuple[str, ...]]


def build() -> World:
    cb = ChainBuilder(4)
    signed: dict[int, set[str]] = {}
    signers: dict[bytes, tuple[str, ...]] = {}

    def add(parent: Block, wanted: tuple[str, ...], txs: bool = False) -> Block:
        height = parent.height + 1
        done = signed.setdefault(height, set())
        for round_ in range(8):  # a round whose proposer has not signed at this height yet
            block = cb.block(parent, [cb.tx("m0", [("books", f"k{height}-{round_}", b"v")])] if txs else [],
                             round=round_)
            if block.header.proposer not in done:
                break
        who = tuple(sorted({block.header.proposer, *(m for m in wanted if m not in done)}))
        done.update(who)
        signers[block.hash] = who
        return block

    genesis = cb.genesis
    b1 = add(genesis, ("m0", "m2", "m3"), txs=True)
    b2 = add(b1, ("m0", "m1"))
    fork = [add(genesis, ())]
    for _ in range(4):
        fork.append(add(fork[-1], COLLUDERS))
    return World(cb, b1, [b1, b2], fork, signers)


def source_of(world: World, blocks: list[Block]) -> MemorySource:
    src = MemorySource(world.cb.consortium)
    proof = {p.block_hash: p for p in make_anchor([world.settled.hash])}
    for block in sorted(blocks, key=lambda b: b.height):
        src.add_block(block, world.cb.sign_all(block, world.signers[block.hash]), anchor=proof.get(block.hash))
    return src


def test_the_fork_outweighs_the_settled_block_by_the_seed_rule_alone() -> None:
    world = build()
    tree = source_of(world, world.honest + world.fork).tree()  # the seed's rule, no settling
    assert tree.best_tip == world.fork[-1].header and not tree.on_best_chain(world.settled.hash)
    assert not tree.culprits  # nobody signed twice at one height


def test_a_bundle_whose_best_chain_leaves_out_a_settled_block_fails_naming_it() -> None:
    world = build()
    bundle = source_of(world, world.honest + world.fork).bundle("m1", now_ms=1_700_000_100_000)
    with pytest.raises(AuditFailure) as info:
        verify(bundle)
    text = str(info.value)
    assert info.value.where == "settled history"
    assert f"leaves out block 1 {world.settled.hash.hex()[:16]}" in text and "Bitcoin block 500" in text
    assert "m1, m2, m3 signed both it (or a descendant) and the chain that leaves it out" in text


def honest_bundle(world: World) -> bytes:
    """What an honest member exports: it held block 1 final, refused the fork's later blocks,
    and keeps the fork's first block it had stored before, as a dead side branch."""
    cb = world.cb
    tree = BlockTree(genesis_header(cb.consortium), cb.consortium.member_names, settle=True)
    for block in world.honest:
        tree.add_header(block.header)
        for member in world.signers[block.hash]:
            tree.add_signature(block.hash, member)
    tree.set_anchored(world.settled.hash)
    assert tree.final == world.settled.header
    with pytest.raises(SettledConflict):
        tree.add_header(world.fork[0].header)
    src = source_of(world, world.honest + world.fork[:2])
    snap = take_snapshot(tree, cb.consortium, "m0", (), 1_700_000_100_000)
    dead = tuple(SnapshotBlock(b.height, b.hash, False, frozenset(world.signers[b.hash])) for b in world.fork[:2])
    full = Snapshot(snap.head, tuple(sorted(snap.blocks + dead, key=lambda b: (b.height, b.hash))), snap.evidence)
    return b"".join(export_snapshot(src, full))


def test_an_honest_members_bundle_with_the_dead_fork_verifies() -> None:
    world = build()
    report = verify(honest_bundle(world))
    assert report.best_chain_blocks == 2 and report.side_blocks == 2
    assert report.heads.unanimous == 1


def test_diff_names_the_settled_block_a_later_export_left_out() -> None:
    world = build()
    earlier = honest_bundle(world)
    later = source_of(world, world.fork).bundle("m1", now_ms=1_700_000_200_000)  # the fork only
    result = diff_bundles(io.BytesIO(earlier), io.BytesIO(later))
    assert result.diverged
    settled = [d for d in result.differences if d.kind == "settled"]
    assert settled and f"block 1 {world.settled.hash.hex()[:16]}" in settled[0].message
