"""Property: the consortium in force at any height is a pure function of the ordered block sequence.

Random governance histories (proposals of every kind by random members, votes for and against,
empty blocks, deadlines passing) are built the way a proposer builds blocks (requests that do
not apply are left out), then checked three ways: replaying the same blocks from genesis gives
the same state roots and the same consortium at every height; following the chain block by block
from the writes alone gives the same; and what a state read after block ``b`` says about heights
up to ``b + GOVERNANCE_DELAY`` never changes later.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import example, given
from hypothesis import strategies as st

from peerdb.core.blockbody import Admit, header_template, select_body
from peerdb.core.consortium import Member
from peerdb.core.governance import PROPOSAL_TTL_MS, propose_op, vote_op
from peerdb.core.keys import SigningKey
from peerdb.core.membership import GOVERNANCE_DELAY, ConsortiumState
from peerdb.core.model import Tx
from peerdb.core.proposals import AddMember, Change, Proposal, RemoveMembers, RotateKey, SetParams, Vote
from peerdb.core.state import BlockRun
from peerdb.core.validate import proposer_for

from tests.helpers.core import client_key, member_key, seed_key
from tests.helpers.governance import Chain


@dataclass(frozen=True)
class Propose:
    proposer: int
    kind: str
    target: int
    value: int


@dataclass(frozen=True)
class VoteOn:
    voter: int
    proposal: int
    approve: bool


@dataclass(frozen=True)
class Consent:
    """Every member in force votes yes on one proposal (random single votes rarely add up)."""

    proposal: int


@dataclass(frozen=True)
class Empty:
    skip_deadline: bool


Action = Propose | VoteOn | Consent | Empty


actions = st.one_of(
    st.builds(Propose, st.integers(0, 7), st.sampled_from(["add", "remove", "rotate", "params"]),
              st.integers(0, 7), st.integers(1, 1000)),
    st.builds(VoteOn, st.integers(0, 7), st.integers(0, 9), st.booleans()),
    st.builds(Consent, st.integers(0, 9)),
    st.builds(Empty, st.booleans()),
)
blocks = st.lists(st.lists(actions, min_size=1, max_size=3), min_size=1, max_size=14)


class History:
    """Builds a chain from abstract actions, keeping the keys every member ever got."""

    def __init__(self) -> None:
        self.chain = Chain()
        self.proposals: list[Proposal] = []
        self.keyring: dict[bytes, SigningKey] = {member_key(m).public: member_key(m) for m in self.chain.consortium.member_names}
        self.fresh = 0

    def new_key(self, label: str) -> SigningKey:
        self.fresh += 1
        key = seed_key(f"property/{label}/{self.fresh}")
        self.keyring[key.public] = key
        return key

    def change(self, action: Propose) -> Change:
        latest = self.chain.cs().latest().member_names
        target = latest[action.target % len(latest)]
        if action.kind == "add":
            name = f"new-{self.fresh}"
            return AddMember(Member(name, self.new_key(name).public, "127.0.0.1:7100", (client_key(name).public,)))
        if action.kind == "remove":
            return RemoveMembers((target,))
        if action.kind == "rotate":
            return RotateKey(target, self.new_key(target).public)
        return SetParams((("max_block_txs", action.value),))

    def txs(self, action: Action, height: int, time_ms: int) -> list[Tx]:
        if isinstance(action, Empty):
            return []
        if isinstance(action, Consent):
            if not self.proposals:
                return []
            members = self.chain.cs().members_at(height)
            return [t for i in range(len(members))
                    if (t := self.tx(VoteOn(i, action.proposal, True), height, time_ms)) is not None]
        tx = self.tx(action, height, time_ms)
        return [] if tx is None else [tx]

    def tx(self, action: Propose | VoteOn, height: int, time_ms: int) -> Tx | None:
        cs = self.chain.cs()
        members = cs.members_at(height)
        if isinstance(action, Propose):
            proposer = members[action.proposer % len(members)]
            proposal = Proposal(self.change(action), nonce=action.value)
            self.proposals.append(proposal)
            return self.chain.tx(proposer, [propose_op(proposal)], key=self.signer(proposer, height), time_ms=time_ms)
        if not self.proposals:
            return None
        voter = members[action.voter % len(members)]
        proposal = self.proposals[action.proposal % len(self.proposals)]
        vote = Vote.create(self.signer(voter, height), self.chain.cid, proposal.id, voter, action.approve)
        return self.chain.tx(voter, [vote_op(vote)], key=self.signer(voter, height), time_ms=time_ms)

    def signer(self, member: str, height: int) -> SigningKey:
        key = self.chain.cs().key_at(member, height)
        assert key is not None
        return self.keyring[key]

    def block(self, step: list[Action]) -> None:
        chain = self.chain
        height = chain.height + 1
        time_ms = chain.next_time()
        if any(isinstance(a, Empty) and a.skip_deadline for a in step):
            time_ms += PROPOSAL_TTL_MS // 2
        txs = [t for a in step for t in self.txs(a, height, time_ms)]
        state = chain.cs()
        run = BlockRun(chain.state, chain.consortium, chain.cid, time_ms, height=height, consortium_state=state)
        proposer = proposer_for(state.members_at(height), height, 0)
        body = select_body(header_template(height, 0, chain.tip.hash, proposer, time_ms), state.params_at(height),
                           txs, (), lambda tx: Admit.TAKE if run.try_add(tx) is None else Admit.DROP)
        chain.add(chain.build(body.txs, time_ms=time_ms))


@given(blocks)
# A vote that sets max_block_txs=1, then a block of several transactions: the proposer's
# selection must stop at the parameter in force (the generator once built a block of 5).
@example([[Propose(0, "params", 0, 1)], [Consent(0)], [Empty(False)], [Empty(False)],
          [Propose(1, "add", 0, 7), Propose(2, "rotate", 1, 9), VoteOn(3, 0, True)]])
def test_member_set_is_a_pure_function_of_the_block_sequence(steps: list[list[Action]]) -> None:
    history = History()
    snapshots: list[ConsortiumState] = []
    for step in steps:
        history.block(step)
        snapshots.append(history.chain.cs())
    chain = history.chain
    final = chain.cs()

    replay = Chain(chain.consortium)
    for block in chain.blocks:
        replay.add(block)
    assert [h.state_root for h in replay.headers] == [h.state_root for h in chain.headers]
    assert replay.state.values == chain.state.values
    again = replay.cs()
    followed = ConsortiumState(chain.consortium)
    for effects in chain.effects:
        followed = followed.after_writes(effects.writes)
    top = chain.height + GOVERNANCE_DELAY + 1
    for state in (again, followed):
        assert state.digest == final.digest
        assert all(state.at(h) == final.at(h) for h in range(top))

    for block, snapshot in zip(chain.blocks, snapshots):
        exact_until = block.height + GOVERNANCE_DELAY
        assert all(snapshot.at(h) == final.at(h) for h in range(exact_until + 1))

    seen_names: set[str] = set()
    retired: set[bytes] = set()
    previous = None
    for start, consortium in final.epochs():
        assert 1 <= len(consortium.members)
        keys = [m.key for m in consortium.members] + [k for m in consortium.members for k in m.clients]
        assert len(keys) == len(set(keys))
        assert not retired & set(keys), "a key came back after it was retired"
        if previous is not None:
            gone = set(previous.member_names) - set(consortium.member_names)
            assert not gone & set(consortium.member_names)
            retired |= {m.key for m in previous.members} - set(keys)
            returning = set(consortium.member_names) - set(previous.member_names)
            assert not returning & seen_names, "a name came back"
        seen_names |= set(consortium.member_names)
        previous = consortium
        assert start == 0 or start > GOVERNANCE_DELAY
