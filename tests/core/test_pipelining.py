"""Pipelined proposals (docs/protocol.md §8.2, ``validate.may_extend``) against the pure rules.

A model consortium of four honest members, each with its own block tree, where proposals and
signatures are delivered in any order Hypothesis chooses and any member may time a round out.
Every member follows the node's rules: it proposes on its best tip when it is the proposer for
the next height in its current round, has not signed at that height, and ``may_extend`` allows
it (transactions are always waiting); it co-signs a block that becomes its best tip unless it
already signed at that height. The properties are the safety argument of §8.2:

* no honest member signs two blocks at one height (so pipelining creates no evidence);
* at its proposer, a pipelined proposal leaves at most ``PIPELINE_DEPTH`` blocks above the
  majority head;
* a signature on a child endorses its parent: a member's endorsement height reaches the parent's
  height as soon as its signature on the child is counted, so the parent loses nothing;
* the child of a best tip becomes the best tip of every member that holds it (it outweighs its
  parent by its proposer's signature): the next proposer extends it;
* once everything is delivered every member holds the same best tip, and without timeouts the
  whole chain is unanimous-signed (the pipeline leaves no block behind).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given
from hypothesis import strategies as st

from peerdb.core.chain import BlockTree
from peerdb.core.model import Header
from peerdb.core.validate import PIPELINE_DEPTH, may_extend, proposer_for

from tests.helpers.core import GENESIS, MEMBER_NAMES, bare_header

MAJORITY = len(MEMBER_NAMES) // 2 + 1


@dataclass
class Member:
    name: str
    tree: BlockTree = field(init=False)
    rounds: int = 0
    """Timeouts since its best tip last changed (its current round)."""
    tip_seen: bytes = GENESIS.hash

    def __post_init__(self) -> None:
        self.tree = BlockTree(GENESIS, MEMBER_NAMES)

    def follow_tip(self) -> None:
        if self.tree.best_tip.hash != self.tip_seen:
            self.tip_seen = self.tree.best_tip.hash
            self.rounds = 0


@dataclass
class Model:
    members: dict[str, Member]
    in_flight: list[tuple[str, str, bytes, Header | None]] = field(default_factory=list)
    """(kind, to, block hash, header for a proposal / None for a signature by ``signer``)."""
    signers: list[str] = field(default_factory=list)
    """The signer of each in-flight signature (parallel to in_flight; '' for proposals)."""
    signed: dict[tuple[str, int], set[bytes]] = field(default_factory=dict)
    """(member, height) -> blocks it signed there, over the whole run."""
    headers: dict[bytes, Header] = field(default_factory=dict)
    proposals: int = 0

    def sign(self, member: Member, header: Header) -> None:
        self.signed.setdefault((member.name, header.height), set()).add(header.hash)
        member.tree.add_signature(header.hash, member.name)
        for other in self.members:
            if other != member.name:
                self.in_flight.append(("sig", other, header.hash, None))
                self.signers.append(member.name)

    def cosign_tip(self, member: Member) -> None:
        """§9.3: sign the best tip unless already signed at its height."""
        tip = member.tree.best_tip
        if tip.height > 0 and not member.tree.signed_at(member.name, tip.height):
            self.sign(member, tip)

    def propose(self, member: Member) -> bool:
        tree = member.tree
        tip = tree.best_tip
        height = tip.height + 1
        if proposer_for(MEMBER_NAMES, height, member.rounds) != member.name or tree.signed_at(member.name, height):
            return False
        if not may_extend(tip.height, tree.heads().majority):
            return False
        header = bare_header(tip, round_=member.rounds, proposer=member.name, salt=self.proposals)
        self.proposals += 1
        self.headers[header.hash] = header
        tree.add_header(header)
        self.sign(member, header)
        for other in self.members:
            if other != member.name:
                self.in_flight.append(("block", other, header.hash, header))
                self.signers.append("")
        member.follow_tip()
        # The bound holds where the proposer decided, with its own signature counted.
        heads = tree.heads()
        assert tree.best_tip.hash == header.hash
        assert header.height - heads.majority <= PIPELINE_DEPTH
        return True

    def deliver(self, index: int, among: tuple[str, ...] = MEMBER_NAMES) -> bool:
        """Deliver one in-flight message to a member of ``among`` that holds the block's parent
        (for a proposal) or the block (for a signature)."""
        ready = [i for i, (kind, to, block_hash, header) in enumerate(self.in_flight)
                 if to in among and self.signers[i] in ("", *among)
                 and (header.prev if kind == "block" and header is not None else block_hash) in self.members[to].tree]
        if not ready:
            return False
        i = ready[index % len(ready)]
        kind, to, block_hash, header = self.in_flight.pop(i)
        signer = self.signers.pop(i)
        member = self.members[to]
        if kind == "block":
            assert header is not None
            tree = member.tree
            parent_endorsers = self.endorsers(tree, header.prev)
            tip_before = tree.best_tip.hash
            tree.add_header(header)
            tree.add_signature(header.hash, header.proposer)
            # The child's proposer now endorses the parent, and nobody stopped endorsing it.
            assert self.endorsers(tree, header.prev) == parent_endorsers | {header.proposer}
            # A child of the best tip outweighs it by its proposer's signature: it is the new tip.
            assert tree.weight(header.hash) > tree.weight(header.prev)
            if header.prev == tip_before:
                assert tree.best_tip.hash == header.hash
        else:
            member.tree.add_signature(block_hash, signer)
        member.follow_tip()
        self.cosign_tip(member)
        member.follow_tip()
        return True

    def endorsers(self, tree: BlockTree, block_hash: bytes) -> set[str]:
        """Members whose signature, in ``tree``, is on ``block_hash`` or on a descendant of it
        (§9.1: a signature endorses the whole ancestry), whatever the best chain."""
        out: set[str] = set()
        for header in tree.headers():
            signers = tree.signers(header.hash) - out
            at = header
            while signers:
                if at.hash == block_hash:
                    out |= signers
                    break
                if at.height == 0:
                    break
                at = self.headers.get(at.prev, GENESIS)
        return out

    def drain(self) -> None:
        while self.deliver(0):
            pass

    def check_no_double_sign(self) -> None:
        for (member, height), blocks in self.signed.items():
            assert len(blocks) == 1, f"{member} signed {len(blocks)} blocks at height {height}"


ACTIONS = st.lists(st.tuples(st.sampled_from(("deliver", "deliver", "deliver", "propose", "propose", "timeout")),
                             st.integers(0, 10_000)), min_size=10, max_size=200)
"""Deliveries weighted so that chains grow long enough for the pipeline to fill."""
NO_TIMEOUTS = st.lists(st.tuples(st.sampled_from(("deliver", "deliver", "propose")), st.integers(0, 10_000)),
                       min_size=10, max_size=200)


def run(actions: list[tuple[str, int]]) -> Model:
    model = Model({name: Member(name) for name in MEMBER_NAMES})
    for action, n in actions:
        member = model.members[MEMBER_NAMES[n % len(MEMBER_NAMES)]]
        if action == "deliver":
            for k in range(1 + n % 8):  # a burst: messages move faster than members act
                model.deliver(n + k)
        elif action == "propose":
            # Whoever's turn it is in its own view (starting the search at a chosen member).
            start = n % len(MEMBER_NAMES)
            for k in range(len(MEMBER_NAMES)):
                if model.propose(model.members[MEMBER_NAMES[(start + k) % len(MEMBER_NAMES)]]):
                    break
        else:
            member.rounds += 1  # its turn timeout passed: the next member's round
        model.check_no_double_sign()
    return model


@given(ACTIONS)
@example([("propose", 0), ("deliver", 0), ("propose", 1), ("propose", 2)])  # b proposes before a's block has a majority
@example([("propose", 0), ("timeout", 1), ("propose", 1), ("deliver", 0), ("deliver", 1), ("propose", 1)])
def test_pipelined_proposals_never_double_sign_and_never_lose_an_endorsement(actions: list[tuple[str, int]]) -> None:
    model = run(actions)
    model.drain()
    model.check_no_double_sign()
    tips = {m.tree.best_tip.hash for m in model.members.values()}
    assert len(tips) == 1, "with everything delivered every member chooses the same tip"


@given(NO_TIMEOUTS)
@example([("propose", 0)] + [("deliver", 0)] * 3 + [("propose", 1)] + [("deliver", 0)] * 3 + [("propose", 2)])
@example([("propose", 0), ("deliver", 7)] * 40)  # a long pipeline: each proposal on a barely signed parent
def test_without_timeouts_the_pipeline_leaves_no_block_behind(actions: list[tuple[str, int]]) -> None:
    model = run(actions)
    model.drain()
    for member in model.members.values():
        heads = member.tree.heads()
        # No forks without timeouts: every block proposed is on the chain, and everyone endorses
        # the tip (co-signed it, or signed a descendant).
        assert heads.tentative == model.proposals
        assert heads.unanimous_signed == heads.tentative


def test_the_pipeline_lets_the_next_proposer_build_before_its_parent_has_a_majority() -> None:
    model = Model({name: Member(name) for name in MEMBER_NAMES})
    a, b, c = (model.members[n] for n in MEMBER_NAMES[:3])
    assert model.propose(a)  # height 1
    model.deliver(0)  # firm-b receives it and co-signs: two signatures, no majority of four
    assert b.tree.heads().majority == 0
    assert model.propose(b)  # height 2 on a parent without a majority
    assert not model.propose(c)  # c holds neither block yet: not its turn at height 1
    model.drain()
    assert model.propose(c)  # height 3, and everything is endorsed by all four
    model.drain()
    assert all(m.tree.heads().unanimous_signed == 3 for m in model.members.values())


def test_the_pipeline_stops_at_its_depth_when_signatures_stop_coming() -> None:
    """Only firm-a and firm-b talk to each other (firm-c and firm-d are silent): the chain grows
    PIPELINE_DEPTH blocks above the majority head (still genesis) and stops there."""
    model = Model({name: Member(name) for name in MEMBER_NAMES})
    pair = MEMBER_NAMES[:2]
    for _ in range(20):
        for name in pair:
            model.propose(model.members[name])
            while model.deliver(0, among=pair):
                pass
        for name in pair:
            model.members[name].rounds += 1  # the silent members' turns time out
    for name in pair:
        heads = model.members[name].tree.heads()
        assert heads.majority == 0
        assert heads.tentative == PIPELINE_DEPTH
    model.check_no_double_sign()


def test_depth_one_is_the_rule_without_pipelining() -> None:
    for tip in range(0, 6):
        for majority in range(0, tip + 1):
            assert may_extend(tip, majority, 1) == (tip == 0 or majority >= tip)
            assert may_extend(tip, majority) == (tip == 0 or tip + 1 - majority <= PIPELINE_DEPTH)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 8))
def test_may_extend_bounds_the_blocks_above_the_majority_and_grows_with_it(tip: int, majority: int, depth: int) -> None:
    majority = min(majority, tip)
    if may_extend(tip, majority, depth) and tip > 0:
        assert tip + 1 - majority <= depth
    if may_extend(tip, majority, depth):
        assert may_extend(tip, min(tip, majority + 1), depth)  # more endorsement never closes it
        assert may_extend(tip, majority, depth + 1)
