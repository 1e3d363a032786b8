"""Finality: a member's tree never leaves a block that was unanimous (endorsed by every
non-excluded member, and anchored) in its own view; and pruning what lies below the tree's root
changes no answer the tree gives.

The seed's fork rule alone lets members who signed an anchored unanimous block outweigh it by
signing a longer fork without ever signing twice at one height. A tree built with
``settle=True`` (every node's) refuses such a fork; an auditor's tree (``settle=False``) keeps the
seed's rule, so that its verdict does not depend on the order of a bundle, and checks settled
blocks on the whole data instead.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.chain import BlockTree, SettledConflict, Status
from peerdb.core.errors import ValidationError
from peerdb.core.model import Header

from tests.helpers.core import GENESIS, MEMBER_NAMES, bare_header

A, B, C, D = MEMBER_NAMES


def rewrite_attempt(settle: bool) -> tuple[BlockTree, Header, list[Header]]:
    """Block 1 signed by all and anchored; then A, B and C sign heights 2 and 3 of a fork from
    genesis (one signature per height each: no double-sign, so no evidence)."""
    tree = BlockTree(GENESIS, MEMBER_NAMES, settle=settle)
    endorsed = bare_header(GENESIS, salt=1)
    tree.add_header(endorsed)
    for member in MEMBER_NAMES:
        tree.add_signature(endorsed.hash, member)
    tree.set_anchored(endorsed.hash)
    assert tree.heads().unanimous == 1 and tree.status(endorsed.hash) is Status.UNANIMOUS
    fork = [bare_header(GENESIS, round_=1, salt=2)]
    for _ in range(2):
        fork.append(bare_header(fork[-1], salt=3))
    refused = []
    for header in fork:
        try:
            tree.add_header(header)
        except SettledConflict:
            refused.append(header)
            continue
        except ValidationError:
            continue  # its parent was refused
        if header.height > 1:
            for member in (A, B, C):
                tree.add_signature(header.hash, member)
    assert not tree.culprits
    return tree, endorsed, refused


def test_a_block_every_member_signed_and_anchored_is_never_orphaned() -> None:
    tree, endorsed, refused = rewrite_attempt(settle=True)
    assert tree.final == endorsed
    assert tree.on_best_chain(endorsed.hash) and tree.status(endorsed.hash) is Status.UNANIMOUS
    assert [h.height for h in refused] == [1]  # the fork's first block; its children never get a parent


def test_the_refusal_names_the_settled_block() -> None:
    tree, endorsed, _ = rewrite_attempt(settle=True)
    sibling = bare_header(GENESIS, round_=2, salt=9)
    with pytest.raises(SettledConflict) as info:
        tree.check_settled(sibling)
    assert info.value.final == endorsed and info.value.block == sibling
    assert "leaves out the settled block" in str(info.value) and endorsed.hash.hex()[:16] in str(info.value)


def test_without_settling_the_seed_rule_alone_orphans_it() -> None:
    """Why nodes settle and why auditors must check settled blocks: weight alone lets a longer
    fork win (6 counted signatures against 4)."""
    tree, endorsed, refused = rewrite_attempt(settle=False)
    assert not refused and not tree.on_best_chain(endorsed.hash)


def test_a_member_may_switch_forks_before_a_block_is_unanimous_in_its_view() -> None:
    tree = BlockTree(GENESIS, MEMBER_NAMES, settle=True)
    x = bare_header(GENESIS, salt=1)
    tree.add_header(x)
    for member in (A, B, C):  # not D: not unanimous, and not anchored either
        tree.add_signature(x.hash, member)
    y = bare_header(GENESIS, round_=1, salt=2)
    y2 = bare_header(y)
    tree.add_header(y)
    tree.add_header(y2)
    for member in MEMBER_NAMES:
        tree.add_signature(y2.hash, member)
    assert tree.best_tip == y2 and not tree.on_best_chain(x.hash)  # the seed's rule, unchanged
    assert tree.final == GENESIS


def test_unanimous_but_not_anchored_is_not_final() -> None:
    tree = BlockTree(GENESIS, MEMBER_NAMES, settle=True)
    x = bare_header(GENESIS, salt=1)
    tree.add_header(x)
    for member in MEMBER_NAMES:
        tree.add_signature(x.hash, member)
    assert tree.heads().unanimous_signed == 1 and tree.final == GENESIS
    tree.set_anchored(x.hash)
    assert tree.final == x


def test_a_culprit_is_not_needed_for_unanimity() -> None:
    tree = BlockTree(GENESIS, MEMBER_NAMES, settle=True)
    x = bare_header(GENESIS, salt=1)
    tree.add_header(x)
    tree.set_anchored(x.hash)
    for member in (A, B, C):
        tree.add_signature(x.hash, member)
    assert tree.final == GENESIS
    tree.add_culprit(D)
    assert tree.heads().unanimous == 1 and tree.final == x


# --- property: the final block is never left ----------------------------------------------------

@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Header], list[tuple[str, object]]]:
    headers: list[Header] = []
    for i in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from([GENESIS] + headers))
        headers.append(bare_header(parent, round_=draw(st.integers(0, 2)), time_ms=GENESIS.time_ms + i + 1))
    hashes = [h.hash for h in headers]
    events: list[tuple[str, object]] = [("header", h) for h in headers]
    events += [("sig", (draw(st.sampled_from(hashes)), draw(st.sampled_from(MEMBER_NAMES))))
               for _ in range(draw(st.integers(0, 40)))]
    events += [("anchor", draw(st.sampled_from(hashes))) for _ in range(draw(st.integers(0, 4)))]
    events += [("culprit", c) for c in draw(st.lists(st.sampled_from(MEMBER_NAMES), max_size=1))]
    return headers, events


def descends(by_hash: dict[bytes, Header], block: bytes, ancestor: Header) -> bool:
    h = by_hash.get(block)
    while h is not None and h.height > ancestor.height:
        h = by_hash.get(h.prev)
    return h is not None and h.hash == ancestor.hash


@given(histories(), st.randoms(use_true_random=False))
def test_property_the_final_block_is_never_left(case: tuple[list[Header], list[tuple[str, object]]],
                                                rng: random.Random) -> None:
    headers, events = case
    by_hash = {h.hash: h for h in (GENESIS, *headers)}
    tree = BlockTree(GENESIS, MEMBER_NAMES, settle=True)
    rng.shuffle(events)
    refused: set[bytes] = set()
    finals = [GENESIS]
    pending = list(events)
    while pending:
        ready = [e for e in pending if e[0] != "header" or e[1].prev in tree  # type: ignore[attr-defined]
                 or e[1].prev in refused]  # type: ignore[attr-defined]
        if not ready:
            break
        kind, item = event = ready[rng.randrange(len(ready))]
        pending.remove(event)
        if kind == "header":
            assert isinstance(item, Header)
            if item.prev in refused:
                refused.add(item.hash)
                continue
            try:
                tree.add_header(item)
            except SettledConflict:
                refused.add(item.hash)
                assert not descends(by_hash, item.hash, tree.final)
        elif kind == "sig":
            assert isinstance(item, tuple)
            block: bytes = item[0]
            if block not in refused:
                tree.add_signature(block, item[1])
        elif kind == "anchor":
            if item not in refused:
                tree.set_anchored(item)  # type: ignore[arg-type]
        else:
            tree.add_culprit(item)  # type: ignore[arg-type]
        final = tree.final
        assert descends(by_hash, final.hash, finals[-1])  # it only moves forward, along one chain
        finals.append(final)
        assert tree.on_best_chain(final.hash) and descends(by_hash, tree.best_tip.hash, final)
        assert tree.heads().unanimous >= final.height or tree.heads().tentative >= final.height
    # Among the blocks held, the best tip is the seed's rule restricted to the final block's descendants.
    held = [h for h in (GENESIS, *headers) if h.hash in tree and h.hash not in refused]
    candidates = [h for h in held if descends(by_hash, h.hash, tree.final)]
    best = min(candidates, key=lambda h: (-tree.weight(h.hash), h.height, h.hash))
    assert tree.best_tip == best


# --- pruning changes no answer -------------------------------------------------------------------

class FullArchive:
    """A test archive: the blocks below the pruned tree's root, answered by an unpruned tree fed
    the same events (the node's store plays this part)."""

    def __init__(self, full: BlockTree) -> None:
        self.full = full

    def best_hash_at(self, height: int) -> bytes | None:
        return self.full.best_chain_hash(height)

    def header(self, block_hash: bytes) -> Header | None:
        return self.full.header(block_hash) if block_hash in self.full else None

    def signers(self, block_hash: bytes) -> frozenset[str]:
        return self.full.signers(block_hash)

    def signed_at(self, member: str, height: int) -> list[bytes]:
        return self.full.signed_at(member, height)


@given(st.integers(0, 2**32), st.integers(1, 12), st.booleans())
def test_property_a_pruned_tree_answers_like_a_full_one(seed: int, keep: int, anchor: bool) -> None:
    rng = random.Random(seed)
    full = BlockTree(GENESIS, MEMBER_NAMES, settle=True)
    pruned = BlockTree(GENESIS, MEMBER_NAMES, settle=True, archive=FullArchive(full))
    trees = (full, pruned)
    tips = [GENESIS]
    blocks: list[Header] = []
    for step in range(60):
        # mostly extend the best tip, sometimes fork near it; sign with random members
        parent = full.best_tip if rng.random() < 0.8 or len(tips) < 2 else rng.choice(tips[-4:])
        if not pruned.held(parent.hash):
            parent = full.best_tip
        header = bare_header(parent, round_=rng.randrange(3), salt=step)
        refused = False
        for t in trees:
            try:
                t.add_header(header)
            except SettledConflict:
                refused = True
        if refused:
            continue
        tips.append(header)
        blocks.append(header)
        for member in rng.sample(MEMBER_NAMES, rng.randrange(len(MEMBER_NAMES) + 1)):
            for t in trees:
                t.add_signature(header.hash, member)
        if anchor and rng.random() < 0.2:
            for t in trees:
                t.set_anchored(header.hash)
        if rng.random() < 0.3:
            pruned.prune(keep)
        assert pruned.best_tip == full.best_tip
        assert pruned.heads() == full.heads()
        assert pruned.final == full.final
        assert pruned.root.height <= pruned.best_tip.height and pruned.on_best_chain(pruned.root.hash)
    held = sum(1 for _ in pruned.headers())
    assert held <= len(blocks) + 1
    for header in blocks:
        if header.hash not in full:
            continue  # a dead branch (forking below the final block): forgotten by both
        assert pruned.on_best_chain(header.hash) == full.on_best_chain(header.hash)
        assert pruned.signers(header.hash) == full.signers(header.hash)
        assert pruned.status(header.hash) == full.status(header.hash)
        assert pruned.fork_point(header.hash) == full.fork_point(header.hash)
        for member in MEMBER_NAMES:
            assert set(pruned.signed_at(member, header.height)) == set(full.signed_at(member, header.height))
            assert pruned.endorsement_height(member) == full.endorsement_height(member)
    for height in range(full.best_tip.height + 1):
        assert pruned.best_chain_hash(height) == full.best_chain_hash(height)
    assert pruned.weight(pruned.best_tip.hash) == full.weight(full.best_tip.hash)
    # A late signature on a pruned best-chain block still raises its signer's endorsement.
    if pruned.root.height > 1:
        old = full.best_chain_hash(1)
        assert old is not None and not pruned.held(old)
        for t in trees:
            t.add_signature(old, D)
        assert pruned.endorsement_height(D) == full.endorsement_height(D)


def test_pruning_needs_the_archive() -> None:
    with pytest.raises(ValueError, match="archive"):
        BlockTree(GENESIS, MEMBER_NAMES).prune(10)


def test_a_parent_below_the_root_is_named() -> None:
    full = BlockTree(GENESIS, MEMBER_NAMES, settle=True)
    pruned = BlockTree(GENESIS, MEMBER_NAMES, settle=True, archive=FullArchive(full))
    chain = [GENESIS]
    for _ in range(8):
        header = bare_header(chain[-1])
        chain.append(header)
        for t in (full, pruned):
            t.add_header(header)
            t.add_signature(header.hash, A)
    pruned.prune(3)
    assert pruned.root.height == 5
    with pytest.raises(ValidationError, match="below the tree's root"):
        pruned.add_header(bare_header(chain[2], round_=1))
