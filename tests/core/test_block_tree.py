"""The block tree: fork choice by counted signatures, exclusion of double-signers, views, statuses.

The properties compare the tree against a from-scratch reference model written straight from
the rule in docs/protocol.md, for every arrival order Hypothesis can think of.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.chain import BlockTree, Status, View, ViewHeads
from peerdb.core.errors import ValidationError
from peerdb.core.merkle import merkle_root
from peerdb.core.model import ZERO_HASH, Header

from tests.helpers.core import GENESIS, MEMBER_NAMES, assert_names, bare_header

A, B, C, D = MEMBER_NAMES


def tree() -> BlockTree:
    return BlockTree(GENESIS, MEMBER_NAMES)


def chain_of(t: BlockTree, parent: Header, length: int, salt: int = 0) -> list[Header]:
    out = []
    for _ in range(length):
        parent = bare_header(parent, salt=salt)
        t.add_header(parent)
        out.append(parent)
    return out


def sign(t: BlockTree, header: Header, *members: str) -> None:
    for m in members:
        t.add_signature(header.hash, m)


# --- unit tests ----------------------------------------------------------------------------------

def test_tree_starts_at_a_genesis() -> None:
    t = tree()
    assert t.best_tip == GENESIS and GENESIS.hash in t
    assert t.heads() == ViewHeads(0, 0, 0, 0, 0)
    assert t.status(GENESIS.hash) is Status.UNANIMOUS
    with pytest.raises(ValueError, match="height-0 genesis"):
        BlockTree(bare_header(GENESIS), MEMBER_NAMES)


def test_header_needs_a_known_parent_at_the_height_below() -> None:
    t = tree()
    orphan = bare_header(bare_header(GENESIS))
    with pytest.raises(ValidationError) as info:
        t.add_header(orphan)
    assert_names(info.value, "block at height 2", "parent", "is unknown")
    wrong_height = Header(5, 0, GENESIS.hash, "firm-a", 1, merkle_root([]), 0, ZERO_HASH, merkle_root([]))
    with pytest.raises(ValidationError) as info:
        t.add_header(wrong_height)
    assert_names(info.value, "block at height 5", "parent is at height 0")
    assert orphan.hash not in t and wrong_height.hash not in t


def test_adding_twice_is_a_no_op() -> None:
    t = tree()
    h = bare_header(GENESIS)
    assert t.add_header(h) is True
    assert t.add_header(h) is False
    assert t.add_signature(h.hash, A) is True
    assert t.add_signature(h.hash, A) is False
    assert t.weight(h.hash) == 1


def test_signature_from_a_non_member() -> None:
    t = tree()
    with pytest.raises(ValidationError) as info:
        t.add_signature(GENESIS.hash, "firm-x")
    assert_names(info.value, "signature", "'firm-x' is not a member")


def test_signatures_may_arrive_before_their_block() -> None:
    t = tree()
    h = bare_header(GENESIS)
    assert t.add_signature(h.hash, B) is True
    assert t.add_signature(h.hash, B) is False
    assert t.signers(h.hash) == frozenset({B})
    assert h.hash not in t
    t.add_header(h)
    assert t.weight(h.hash) == 1 and t.best_tip == h
    assert t.signers(h.hash) == frozenset({B})
    assert t.signed_at(B, 1) == [h.hash]


def test_heaviest_chain_wins_not_the_longest() -> None:
    t = tree()
    long = chain_of(t, GENESIS, 3, salt=1)
    short = chain_of(t, GENESIS, 1, salt=2)
    sign(t, long[2], A)
    sign(t, short[0], B, C)
    assert t.best_tip == short[0]
    assert t.on_best_chain(short[0].hash) and not t.on_best_chain(long[0].hash)
    assert t.status(long[2].hash) is Status.ORPHANED
    assert t.fork_point(long[2].hash) == GENESIS
    sign(t, long[0], D)
    sign(t, long[1], D)  # long: 3 counted signatures along the path to long[2], short: 2
    assert t.best_tip == long[2]
    assert [t.best_chain_hash(i) for i in range(4)] == [GENESIS.hash] + [h.hash for h in long]
    assert t.best_chain_hash(4) is None and t.best_chain_hash(-1) is None


def test_ties_go_to_the_lower_height_then_the_lower_hash() -> None:
    t = tree()
    x = bare_header(GENESIS, salt=1)
    y = bare_header(GENESIS, salt=2)
    t.add_header(x)
    t.add_header(y)
    assert t.best_tip == GENESIS  # equal weight 0: the lower height wins
    sign(t, x, A)
    sign(t, y, B)
    assert t.best_tip.hash == min(x.hash, y.hash)
    child = bare_header(max(x, y, key=lambda h: h.hash))
    t.add_header(child)  # same weight as its parent, one higher: does not win
    assert t.best_tip.hash == min(x.hash, y.hash)


def test_double_signer_is_excluded_everywhere() -> None:
    t = tree()
    x = bare_header(GENESIS, salt=1)
    y = bare_header(GENESIS, salt=2)
    t.add_header(x)
    t.add_header(y)
    sign(t, x, A, B)
    sign(t, y, C)
    assert t.best_tip == x and t.weight(x.hash) == 2
    assert t.add_culprit(B) is True
    assert t.add_culprit(B) is False
    assert t.weight(x.hash) == 1 and t.culprits == {B}
    sign(t, y, D)
    assert t.best_tip == y
    t.add_signature(x.hash, B)  # a culprit's later signatures do not count either
    assert t.weight(x.hash) == 1
    assert t.eligible() == (A, C, D)


def test_views_statuses_and_endorsement() -> None:
    t = tree()
    b1, b2, b3 = chain_of(t, GENESIS, 3)
    fork = bare_header(b1, salt=9)
    t.add_header(fork)
    sign(t, b1, A, B, C, D)
    sign(t, b2, A, B, C)
    sign(t, b3, A)
    assert t.best_tip == b3
    assert [t.endorsement_height(m) for m in MEMBER_NAMES] == [3, 2, 2, 1]
    assert t.endorsers(b2.hash) == (A, B, C)
    heads = t.heads()
    assert heads == ViewHeads(tentative=3, majority=2, unanimous_signed=1, unanimous=0, anchored=0)
    assert [t.head(v).height for v in View] == [3, 2, 1, 0]
    assert [t.status(h.hash) for h in (GENESIS, b1, b2, b3, fork)] == [
        Status.UNANIMOUS, Status.UNANIMOUS_SIGNED, Status.MAJORITY, Status.TENTATIVE, Status.ORPHANED]
    t.set_anchored(b2.hash)
    assert t.heads() == ViewHeads(tentative=3, majority=2, unanimous_signed=1, unanimous=1, anchored=2)
    assert t.status(b1.hash) is Status.UNANIMOUS
    assert t.head(View.UNANIMOUS) == b1
    t.set_anchored(bytes(32))  # an anchor for a block we do not hold changes nothing
    assert t.heads().anchored == 2


def test_endorsing_a_fork_block_endorses_its_best_chain_ancestors() -> None:
    t = tree()
    b1, b2 = chain_of(t, GENESIS, 2)
    fork = bare_header(b1, salt=5)
    t.add_header(fork)
    sign(t, b2, A, B)
    sign(t, fork, C)
    assert t.best_tip == b2
    assert t.endorsement_height(C) == 1  # fork point of its fork block
    assert t.signed_at(C, 2) == [fork.hash] and t.latest_signed(C) == fork.hash
    assert t.latest_signed(D) is None
    assert {h.hash for h in t.leaves()} == {b2.hash, fork.hash}
    assert {h.hash for h in t.headers()} == {GENESIS.hash, b1.hash, b2.hash, fork.hash}


def test_culprits_do_not_count_towards_the_majority() -> None:
    t = tree()
    (b1,) = chain_of(t, GENESIS, 1)
    sign(t, b1, A, B)
    assert t.heads().majority == 0  # 2 of 4 is not more than half
    t.add_culprit(D)
    assert t.heads().majority == 1  # 2 of the 3 eligible


@pytest.mark.parametrize("text, view", [("tentative", View.TENTATIVE), ("majority", View.MAJORITY),
                                        ("unanimous-signed", View.UNANIMOUS_SIGNED), ("unanimous", View.UNANIMOUS)])
def test_view_parse(text: str, view: View) -> None:
    assert View.parse(text) is view


def test_view_parse_refuses_unknown_views() -> None:
    with pytest.raises(ValidationError) as info:
        View.parse("eventual")
    assert_names(info.value, "view", "'eventual'")


# --- reference model -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    members: tuple[str, ...]
    headers: tuple[Header, ...]  # parents before children
    signatures: tuple[tuple[bytes, str], ...]
    culprits: tuple[str, ...]
    anchored: tuple[bytes, ...]

    def events(self) -> list[tuple[str, object]]:
        return ([("header", h) for h in self.headers] + [("sig", s) for s in self.signatures]
                + [("culprit", c) for c in self.culprits] + [("anchor", a) for a in self.anchored])


def reference(s: Scenario, genesis: Header) -> dict[str, object]:
    """Fork choice, views and statuses computed from scratch, straight from the rules."""
    by_hash = {h.hash: h for h in (genesis, *s.headers)}
    culprits = set(s.culprits)
    signers: dict[bytes, set[str]] = {h: set() for h in by_hash}
    for block, member in s.signatures:
        if block in signers:
            signers[block].add(member)

    def path(h: bytes) -> list[bytes]:
        out = [h]
        while by_hash[out[-1]].height > 0:
            out.append(by_hash[out[-1]].prev)
        return out[::-1]

    weight = {h: sum(len(signers[x] - culprits) for x in path(h)) for h in by_hash}
    best = min(by_hash, key=lambda h: (-weight[h], by_hash[h].height, h))
    chain = path(best)

    def fork_height(h: bytes) -> int:
        return max(by_hash[x].height for x in path(h) if x in chain)

    endorsement = {m: max([fork_height(b) for b in by_hash if m in signers[b]], default=0) for m in s.members}
    eligible = [m for m in s.members if m not in culprits]
    heights = sorted((endorsement[m] for m in eligible), reverse=True)
    need = len(eligible) // 2 + 1
    majority = heights[need - 1] if len(heights) >= need else 0
    unanimous_signed = heights[-1] if heights else 0
    anchored = max([fork_height(a) for a in s.anchored if a in by_hash], default=0)
    heads = ViewHeads(by_hash[best].height, majority, unanimous_signed, min(unanimous_signed, anchored), anchored)

    def status(h: bytes) -> Status:
        height = by_hash[h].height
        if h not in chain:
            return Status.ORPHANED
        for limit, st_ in ((heads.unanimous, Status.UNANIMOUS), (heads.unanimous_signed, Status.UNANIMOUS_SIGNED),
                           (heads.majority, Status.MAJORITY)):
            if height <= limit:
                return st_
        return Status.TENTATIVE

    return {
        "best": best, "heads": heads, "chain": chain, "weight": weight, "endorsement": endorsement,
        "status": {h: status(h) for h in by_hash}, "signers": {h: frozenset(v) for h, v in signers.items()},
    }


def observe(t: BlockTree, s: Scenario) -> dict[str, object]:
    hashes = [t.genesis.hash] + [h.hash for h in s.headers]
    heads = t.heads()
    return {
        "best": t.best_tip.hash, "heads": heads,
        "chain": [t.best_chain_hash(i) for i in range(t.best_tip.height + 1)],
        "weight": {h: t.weight(h) for h in hashes},
        "endorsement": {m: t.endorsement_height(m) for m in s.members},
        "status": {h: t.status(h, heads) for h in hashes},
        "signers": {h: t.signers(h) for h in hashes},
    }


def play(s: Scenario, genesis: Header, rng: random.Random) -> BlockTree:
    """Feed the events in a random order in which every header comes after its parent."""
    t = BlockTree(genesis, s.members)
    remaining = s.events()
    rng.shuffle(remaining)
    while remaining:
        ready = [i for i, (kind, item) in enumerate(remaining)
                 if kind != "header" or item.prev in t]  # type: ignore[attr-defined]
        kind, item = remaining.pop(rng.choice(ready))
        if kind == "header":
            t.add_header(item)  # type: ignore[arg-type]
        elif kind == "sig":
            t.add_signature(*item)  # type: ignore[misc]
        elif kind == "culprit":
            t.add_culprit(item)  # type: ignore[arg-type]
        else:
            t.set_anchored(item)  # type: ignore[arg-type]
    return t


@st.composite
def scenarios(draw: st.DrawFn, max_blocks: int = 12) -> Scenario:
    members = tuple(f"m{i}" for i in range(draw(st.integers(1, 5))))
    headers: list[Header] = []
    for i in range(draw(st.integers(0, max_blocks))):
        parent = draw(st.sampled_from([GENESIS] + headers))
        headers.append(bare_header(parent, round_=draw(st.integers(0, 2)), proposer=members[0],
                                   time_ms=GENESIS.time_ms + i + 1))
    hashes = [GENESIS.hash] + [h.hash for h in headers]
    unknown = bare_header(GENESIS, time_ms=0).hash  # a block that never arrives
    signatures = draw(st.lists(st.tuples(st.sampled_from(hashes + [unknown]), st.sampled_from(members)), max_size=30))
    culprits = draw(st.lists(st.sampled_from(members), max_size=2, unique=True))
    anchored = draw(st.lists(st.sampled_from(hashes), max_size=2))
    return Scenario(members, tuple(headers), tuple(signatures), tuple(culprits), tuple(anchored))


@given(scenarios(), st.randoms(use_true_random=False))
def test_property_tree_matches_the_reference_model(s: Scenario, rng: random.Random) -> None:
    assert observe(play(s, GENESIS, rng), s) == reference(s, GENESIS)


@given(scenarios(), st.randoms(use_true_random=False), st.randoms(use_true_random=False))
def test_property_fork_choice_is_independent_of_arrival_order(
        s: Scenario, rng1: random.Random, rng2: random.Random) -> None:
    t1, t2 = play(s, GENESIS, rng1), play(s, GENESIS, rng2)
    assert observe(t1, s) == observe(t2, s)
    assert t1.best_tip == t2.best_tip and t1.heads() == t2.heads()
    assert {h.hash for h in t1.leaves()} == {h.hash for h in t2.leaves()}


@given(scenarios(), st.randoms(use_true_random=False), st.data())
def test_property_evidence_never_increases_any_weight(s: Scenario, rng: random.Random, data: st.DataObject) -> None:
    t = play(s, GENESIS, rng)
    culprit = data.draw(st.sampled_from(s.members))
    hashes = [GENESIS.hash] + [h.hash for h in s.headers]
    before = {h: t.weight(h) for h in hashes}
    already = culprit in t.culprits
    t.add_culprit(culprit)
    by_hash = {h.hash: h for h in (GENESIS, *s.headers)}
    for h in hashes:
        assert t.weight(h) <= before[h]
        # exactly the culprit's signatures on the path are gone
        signed_on_path, x = 0, h
        while True:
            signed_on_path += culprit in t.signers(x)
            if by_hash[x].height == 0:
                break
            x = by_hash[x].prev
        assert before[h] - t.weight(h) == (0 if already else signed_on_path)


@st.composite
def endorsed_and_minority_fork(draw: st.DrawFn) -> tuple[Scenario, list[Header], list[Header]]:
    members = tuple(f"m{i}" for i in range(draw(st.integers(1, 6))))
    honest = []
    parent = GENESIS
    for i in range(draw(st.integers(1, 5))):
        parent = bare_header(parent, time_ms=GENESIS.time_ms + 1 + i)
        honest.append(parent)
    fork_at = draw(st.integers(0, len(honest) - 1))
    parent = GENESIS if fork_at == 0 else honest[fork_at - 1]
    fork = []
    for i in range(draw(st.integers(1, len(honest) - fork_at))):  # never longer than the endorsed chain
        parent = bare_header(parent, round_=1, time_ms=GENESIS.time_ms + 100 + i)
        fork.append(parent)
    signatures = [(h.hash, m) for h in honest for m in members]
    for h in fork:
        # each fork block signed by fewer than all members (some of whom double-sign, unnoticed)
        minority = draw(st.lists(st.sampled_from(members), max_size=len(members) - 1, unique=True))
        signatures += [(h.hash, m) for m in minority]
    return Scenario(members, tuple(honest + fork), tuple(signatures), (), ()), honest, fork


@given(endorsed_and_minority_fork(), st.randoms(use_true_random=False))
def test_property_chain_endorsed_by_all_beats_a_minority_fork(
        case: tuple[Scenario, list[Header], list[Header]], rng: random.Random) -> None:
    s, honest, fork = case
    t = play(s, GENESIS, rng)
    assert t.best_tip == honest[-1]
    assert all(t.on_best_chain(h.hash) for h in honest)
    assert all(t.status(h.hash) is Status.ORPHANED for h in fork)
    assert all(t.weight(honest[-1].hash) > t.weight(h.hash) for h in fork)
    assert t.heads().unanimous_signed == len(honest)

