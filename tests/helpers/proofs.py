"""A member's store grown block by block from a :class:`ChainBuilder`, for read proof tests:
blocks signed by whom the test says, governance changes voted through, anchors recorded.

    chain = StoredChain(tmp_path)
    chain.grow([chain.cb.tx("m0", [("books", "k", b"v")])])
    proof = ProofBuilder(chain.store).read_proof("books", "k", chain.height)
    verify_read_proof(chain.cb.consortium, proof.encode())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from peerdb.core.governance import propose_op, vote_op
from peerdb.core.keys import SigningKey
from peerdb.core.membership import ConsortiumState
from peerdb.core.model import Block, BlockSignature, Tx
from peerdb.core.proposals import Change, Proposal, Vote
from peerdb.core.validate import proposer_for
from peerdb.store import Store
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.chainbuilder import ChainBuilder, OpSpec


class StoredChain:
    def __init__(self, tmp_path: Path, n_members: int = 4, **builder: object) -> None:
        self.cb = ChainBuilder(n_members=n_members, **builder)  # type: ignore[arg-type]
        self.store = Store.open(tmp_path / "store", self.cb.consortium, self.cb.members[0], sync=False)
        self.tip: Block = self.cb.genesis
        self.members: tuple[str, ...] = self.cb.members
        """The members at the next height (follows governance)."""
        self.keys: dict[str, SigningKey] = dict(self.cb.keys)
        """Each member's current member key."""
        self._nonce = 0

    @property
    def height(self) -> int:
        return self.tip.height

    def tx(self, member: str, ops: Iterable[OpSpec]) -> Tx:
        return self.cb.tx(member, ops)

    def grow(self, txs: Sequence[Tx] = (), signers: Iterable[str] | None = None) -> Block:
        """The next block on the tip, stored as the head, signed by ``signers`` (default: all)."""
        height = self.height + 1
        members = self._members_at(height)
        block = self.cb.block(self.tip, txs, proposer=proposer_for(members, height, 0))
        who = list(members if signers is None else signers)
        sigs = [self._sign(block, m) for m in who]
        self.store.add_block(block, sigs, effects=self.cb.effects(block), make_head=True)
        self.tip = block
        return block

    def sign(self, block: Block, members: Iterable[str]) -> None:
        """Later signatures on a stored block."""
        self.store.add_signatures([self._sign(block, m) for m in members])

    def _sign(self, block: Block, member: str) -> BlockSignature:
        return BlockSignature.create(self.keys[member], self.cb.cid, member, block.hash)

    def _members_at(self, height: int) -> tuple[str, ...]:
        with self.store.state_reader_at(self.tip.hash) as reader:
            return ConsortiumState.load(self.cb.consortium, reader).members_at(height)

    def change(self, change: Change, voters: Sequence[str] | None = None, carrier: str = "m0") -> int:
        """Propose ``change`` and vote it through (every member); grow to the block before it is
        in force (update :attr:`keys` for a rotation now). Returns the height from which it is."""
        self._nonce += 1
        proposal = Proposal(change, "test", self._nonce)
        self.grow([self.tx(carrier, [propose_op(proposal)])])
        voters = list(voters if voters is not None else self._members_at(self.height + 1))
        votes = [self.tx(carrier, [vote_op(Vote.create(self.keys[v], self.cb.cid, proposal.id, v, True))])
                 for v in voters]
        self.grow(votes)
        effective = self.height + 2
        while self.height < effective - 1:
            self.grow()
        return effective

    def anchor(self, blocks: Sequence[Block]) -> None:
        """Anchor proofs (one Bitcoin header deep) for ``blocks``, recorded in the store."""
        for block, proof in zip(blocks, make_anchor([b.hash for b in blocks], depth=1)):
            self.store.record_anchor(block.hash, proof.encode())

    def close(self) -> None:
        self.store.close()
