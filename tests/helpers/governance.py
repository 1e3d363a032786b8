"""A linear chain on a MemoryState for the governance tests, every block checked like a member would.

Each block is built by its rightful proposer (``proposer_for`` over the members in force at its
height), its effects computed with ``apply_txs(height=...)`` and then re-checked with
``check_block`` on the parent's state, so a test that passes here exercises the validation
path, not only the builder.
"""

from __future__ import annotations

from collections.abc import Sequence

from peerdb.core.consortium import Consortium
from peerdb.core.governance import ProposalRecord, propose_op, read_proposal, vote_op
from peerdb.core.keys import SigningKey
from peerdb.core.membership import ConsortiumState, StateCache
from peerdb.core.model import Block, Evidence, Header, Op, Tx, body_header, consortium_id, genesis_header
from peerdb.core.proposals import Change, Proposal, Vote
from peerdb.core.state import Effects, MemoryState, apply_txs
from peerdb.core.validate import check_block, proposer_for

from tests.helpers.core import CONSORTIUM, client_key, member_key

BLOCK_GAP_MS = 10
"""Block times advance by this much per block unless a test jumps ahead."""


class Chain:
    def __init__(self, consortium: Consortium = CONSORTIUM) -> None:
        self.consortium = consortium
        self.cid = consortium_id(consortium)
        self.state = MemoryState()
        self.gov_states = StateCache(consortium)
        self.headers: list[Header] = [genesis_header(consortium)]
        self.blocks: list[Block] = []
        self.effects: list[Effects] = []
        self._nonce = 0
        self.keys: dict[str, SigningKey] = {}
        """Member keys by name when not the fixed test key (after a rotation)."""

    @property
    def tip(self) -> Header:
        return self.headers[-1]

    @property
    def height(self) -> int:
        return self.tip.height

    def cs(self) -> ConsortiumState:
        return ConsortiumState.load(self.consortium, self.state, self.gov_states)

    def member_key(self, name: str) -> SigningKey:
        return self.keys.get(name) or member_key(name)

    def next_time(self) -> int:
        return self.tip.time_ms + BLOCK_GAP_MS

    def tx(self, member: str, ops: Sequence[Op], key: SigningKey | None = None, time_ms: int | None = None) -> Tx:
        self._nonce += 1
        expires = (time_ms if time_ms is not None else self.next_time()) + 60_000
        return Tx.create(key or client_key(member), self.cid, member, self._nonce, expires, list(ops))

    def build(self, txs: Sequence[Tx] = (), *, time_ms: int | None = None, round_: int = 0,
              evidence: Sequence[Evidence] = ()) -> Block:
        """The block the rightful proposer would make (not applied)."""
        parent = self.tip
        height = parent.height + 1
        time_ms = time_ms if time_ms is not None else self.next_time()
        members = self.cs().members_at(height)
        effects = apply_txs(self.state, txs, self.consortium, self.cid, time_ms, parent.state_root, height=height)
        header = body_header(height, round_, parent.hash, proposer_for(members, height, round_), time_ms,
                             txs, effects.state_root, evidence)
        return Block(header, tuple(txs), tuple(evidence))

    def add(self, block: Block) -> Effects:
        """Check ``block`` on the tip as a member would, then apply it."""
        effects = check_block(block, self.tip, self.tip.state_root, self.state, self.consortium, self.cid,
                              now_ms=block.header.time_ms)
        self.state.apply(effects)
        self.headers.append(block.header)
        self.blocks.append(block)
        self.effects.append(effects)
        return effects

    def step(self, txs: Sequence[Tx] = (), *, time_ms: int | None = None) -> Effects:
        return self.add(self.build(txs, time_ms=time_ms))

    def propose(self, proposer: str, change: Change, note: str = "", nonce: int = 0) -> Proposal:
        proposal = Proposal(change, note, nonce)
        self.step([self.tx(proposer, [propose_op(proposal)])])
        return proposal

    def vote_tx(self, voter: str, proposal: Proposal | bytes, approve: bool = True, carrier: str | None = None,
                key: SigningKey | None = None, time_ms: int | None = None) -> Tx:
        pid = proposal if isinstance(proposal, bytes) else proposal.id
        vote = Vote.create(key or self.member_key(voter), self.cid, pid, voter, approve)
        return self.tx(carrier or voter, [vote_op(vote)], time_ms=time_ms)

    def vote(self, voters: Sequence[str], proposal: Proposal, approve: bool = True) -> None:
        """Each voter's vote in its own block."""
        for voter in voters:
            self.step([self.vote_tx(voter, proposal, approve)])

    def fork(self, nonce_offset: int = 1_000_000) -> "Chain":
        """An independent copy from the tip, to grow a side branch on (blocks at the same heights
        with another round): its transactions use nonces from ``nonce_offset`` on, so the two
        branches never build the same transaction by accident."""
        other = Chain(self.consortium)
        other.state = MemoryState(self.state.nodes)  # tree records never change: share them
        other.state.values = dict(self.state.values)
        other.state.seen = set(self.state.seen)
        other.headers = list(self.headers)
        other.blocks = list(self.blocks)
        other.effects = list(self.effects)
        other.keys = dict(self.keys)
        other._nonce = self._nonce + nonce_offset
        return other

    def record(self, proposal: Proposal) -> ProposalRecord:
        record = read_proposal(self.state, proposal.id)
        assert record is not None
        return record
