"""Four engines driven through random interleavings of turns, partitions, late deliveries,
restarts, competing blocks and governance changes; after every step the engines' answers are
checked against an oracle that knows nothing of the engine.

What it is after: a block that is valid on *its own* branch must be judged on that branch.
Competing blocks at one height are routine (a member back from a partition proposes its round-0
block after the others moved on to round 1, with the same transactions, since pools are shared),
and a competing block that carries the same governance vote passes the same change as its
sibling. Every rule below is honest: no member double-signs and every block is built right, so
an objection, an exception out of a handler, a state that differs from a replay, or members that
do not converge once the network heals is a bug.

Invariants, after every rule:

* no honest engine ever objects (every block here is built correctly by its rightful proposer);
* for every block an engine holds, ``state_for(block, height + 1)`` is the governance state its
  store records after that block;
* the best chain's blocks replay from genesis on :class:`~peerdb.core.state.MemoryState` to the
  state roots they carry, and the store's governance state after the tip is the replay's;
* after :meth:`ForkMachine.settle` (network healed, time passes), every engine has the same best
  chain up to the majority head, and the majority head moved.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from peerdb.core.errors import DoubleSignRefused
from peerdb.core.governance import propose_op, read_pending, vote_op
from peerdb.core.membership import ConsortiumState
from peerdb.core.model import Block, Header, Tx
from peerdb.core.proposals import Proposal, RotateKey, SetParams, Vote
from peerdb.core.state import MemoryState, apply_txs
from peerdb.core.validate import proposer_for
from peerdb.node.messages import Message, ProposalMsg, from_wire, to_wire

from tests.helpers.consortium import seed_key
from tests.helpers.engine_net import NAMES, Net

ROTATION_KEYS = 3
"""Fresh member keys each engine holds for rotations (a rotation must use an unused key)."""
SETTLE_STEPS = 80
"""Steps of 250 ms (with anti-entropy) that a healed network gets to agree again: a few turn
timeouts' worth for every member that was away, and catch-up in batches."""
MACHINE_EXAMPLES = 12
MACHINE_STEPS = 30
"""Bounded (``HYPOTHESIS_PROFILE=thorough`` lifts the example bound, for hunting by hand) so that the whole machine runs in well under a minute on the 2-core CI machine."""

members = st.sampled_from(NAMES)
Wire = dict[str, Any]
"""A message as it travels (:func:`peerdb.node.messages.to_wire`)."""


class ForkMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory(prefix="peerdb-forks-")
        self.rotation_keys = {n: [seed_key(f"member/{n}/rotation/{i}") for i in range(ROTATION_KEYS)] for n in NAMES}
        self.net = Net(Path(self.dir.name), extra_keys=self.rotation_keys)
        self.cut: set[str] = set()
        """Members whose messages are lost (in both directions)."""
        self.isolated: set[str] = set()
        """One side of a partition: messages between it and the rest wait until :meth:`heal`."""
        self.held: list[tuple[str, str, Wire]] = []
        """(target, sender, wire form) of messages waiting for an isolated member."""
        self.proposals: list[Proposal] = []
        self.stash: list[tuple[str, Tx]] = []
        """Transactions (with their member) kept back for the next late proposal."""
        self.rotations = dict.fromkeys(NAMES, 0)
        self.replayed: dict[bytes, MemoryState] = {}
        """Oracle: the state after a block, replayed from genesis (by block hash)."""
        self.replayed[self._genesis().hash] = MemoryState()
        self.majority_at_heal = 0
        for _ in range(4):
            self._step(250)

    def _genesis(self) -> Header:
        tree = self.net.engines[NAMES[0]].tree
        return tree.header(tree.best_chain_hash(0) or b"")

    def teardown(self) -> None:
        try:
            self.settle()
        finally:
            self.net.close()
            self.dir.cleanup()

    # --- the network ------------------------------------------------------------------------

    def _away(self) -> set[str]:
        return self.cut | self.isolated

    def _deliver(self) -> None:
        net = self.net
        for _ in range(1000):
            moved = False
            for sender, engine in net.engines.items():
                for out in engine.take_outbox():
                    moved = True
                    targets = [out.to] if out.to else [n for n in NAMES if n != sender]
                    raw = to_wire(out.msg)
                    for target in targets:
                        if sender in self.cut or target in self.cut:
                            continue
                        if (sender in self.isolated) != (target in self.isolated):
                            self.held.append((target, sender, raw))
                            continue
                        self._dispatch(target, sender, raw)
            if not moved:
                return
        raise AssertionError("messages never settled")

    def _dispatch(self, target: str, sender: str, raw: Wire) -> None:
        """Hand one message to its target; a proposal must then be in the target's tree, or
        wait there for its parent, or be refused for leaving out the settled block: every block
        here is built right by its rightful proposer, so no honest engine may drop one."""
        msg = from_wire(raw)
        engine = self.net.engines[target]
        engine.handle(sender, msg, self.net.now)
        if isinstance(msg, ProposalMsg):
            block_hash = msg.signature.block_hash
            assert block_hash in engine.tree or block_hash in engine.orphans or block_hash in engine.conflicts, \
                f"{target} dropped a correctly built proposal from {sender}"

    def _step(self, ms: int) -> None:
        """Time passes; every running member (partitioned or not) proposes if it is its turn."""
        self.net.now += ms
        for engine in self.net.engines.values():
            engine.maybe_propose(self.net.now)
        self._deliver()

    def _release(self, newest_first: bool) -> None:
        held, self.held = self.held, []
        for target, sender, raw in (reversed(held) if newest_first else held):
            self._dispatch(target, sender, raw)
        self._deliver()

    # --- rules ------------------------------------------------------------------------------

    @rule(ms=st.sampled_from([10, 250, 1100]))
    def step(self, ms: int) -> None:
        self._step(ms)

    @rule(member=members, n=st.integers(1, 3))
    def put(self, member: str, n: int) -> None:
        txs = [self.net.tx(member, f"k{next(self.net.nonce)}") for _ in range(n)]
        self.net.engines[member].submit([t.raw for t in txs], None, self.net.now)
        self._deliver()

    @rule(member=members, rotate=st.booleans(), value=st.sampled_from([200, 300, 400]))
    def propose_change(self, member: str, rotate: bool, value: int) -> None:
        if rotate:
            if self.rotations[member] >= ROTATION_KEYS:
                return
            change: RotateKey | SetParams = RotateKey(member, self.rotation_keys[member][self.rotations[member]].public)
            self.rotations[member] += 1
        else:
            change = SetParams((("heartbeat_ms", value),))
        proposal = Proposal(change, "randomized", nonce=len(self.proposals))
        self.proposals.append(proposal)
        tx = self.net.gov_tx(member, propose_op(proposal))
        self.net.engines[member].submit([tx.raw], None, self.net.now)
        self._deliver()

    @precondition(lambda self: bool(self.proposals))
    @rule(data=st.data(), voters=st.sets(members, min_size=1))
    def vote(self, data: st.DataObject, voters: set[str]) -> None:
        self._vote(data.draw(st.sampled_from(self.proposals[-3:]), label="proposal"), voters)

    @precondition(lambda self: len(self._away()) < 2)
    @rule(member=members, lose=st.booleans())
    def partition(self, member: str, lose: bool) -> None:
        (self.cut if lose else self.isolated).add(member)

    @rule(newest_first=st.booleans())
    def heal(self, newest_first: bool) -> None:
        self.cut.clear()
        self.isolated.clear()
        self._release(newest_first)

    @rule(member=members)
    def restart(self, member: str) -> None:
        self.held = [h for h in self.held if h[0] != member]  # what was on its way to it is lost
        self.net.restart(member)
        self._deliver()

    @rule(ref=members, depth=st.integers(0, 2), round_=st.integers(0, 2), prefix=st.integers(0, 3),
          to=st.sets(members))
    def compete(self, ref: str, depth: int, round_: int, prefix: int, to: set[str]) -> None:
        """A block at the height of a best-chain block B, on B's parent, by the rightful
        proposer of some round who has not signed at that height (it was away), carrying a
        prefix of B's transactions: what a late proposal looks like. It goes to some members now;
        the others get it with the next anti-entropy or proposal."""
        net = self.net
        tree = net.engines[ref].tree
        height = tree.best_tip.height - depth
        if height < 1 or not tree.held(tree.best_chain_hash(height - 1) or b""):
            return
        sibling = net.stores[ref].block(tree.best_chain_hash(height) or b"")
        parent = tree.header(tree.best_chain_hash(height - 1) or b"")
        if sibling is None:
            return
        state = net.state_of(ref, parent.hash)
        here = state.at(height)
        proposer = proposer_for(here.member_names, height, round_)
        if parent.hash not in net.engines[proposer].tree:
            return
        key = next((k for k in net.keyrings[proposer] if k.public == here.member(proposer).key), None)  # type: ignore[union-attr]
        if key is None:
            return
        params = here.params
        time_ms = max(parent.time_ms, parent.time_ms + round_ * params.turn_timeout_ms - params.clock_skew_ms)
        if time_ms > net.now + params.clock_skew_ms:
            return
        block, sig = net.craft(proposer, list(sibling.txs[:prefix]), parent=parent, round_=round_, time_ms=time_ms,
                               key=key)
        if block.hash in net.engines[ref].tree:
            return
        try:  # an honest proposer never signs two blocks at one height
            net.stores[proposer].guard_sign(height, round_, block.hash)
        except DoubleSignRefused:
            return
        raw = to_wire(ProposalMsg(block.raw, sig))
        for target in sorted(to | {proposer}):
            if target not in self.cut:
                self._dispatch(target, proposer, raw)
        self._deliver()

    @rule(change=st.sampled_from(["params", "rotate"]), proposer=members, holdout=members,
          value=st.sampled_from([200, 300, 400]), stash=st.booleans())
    def pass_change_but_one_vote(self, change: str, proposer: str, holdout: str, value: int, stash: bool) -> None:
        """A change proposed and approved by every member but ``holdout``, whose vote is then put
        in every pool (the next block, or blocks if they compete, passes the change), or kept
        back (``stash``) for the next late proposal, so that only one of two competing blocks
        passes it."""
        self.propose_change(proposer, change == "rotate", value)
        proposal = self.proposals[-1]
        self._steps_until(lambda: all(proposal.id in self._open(n) for n in NAMES if n not in self._away()))
        voters = {n for n in NAMES if n not in (proposer, holdout)}
        if voters:
            self._vote(proposal, voters)
            self._steps_until(lambda: all(not e.mempool for n, e in self.net.engines.items() if n not in self._away()))
        if holdout != proposer:
            if stash:
                self.stash.extend(self._vote_txs(proposal, {holdout}))
            else:
                self._vote(proposal, {holdout})

    @rule(early=st.sets(members), first_wait=st.sampled_from([10, 250]), puts=st.integers(0, 2),
          newest_first=st.booleans(), stash_to_late=st.booleans(), partner=members, away_steps=st.integers(0, 6))
    def late_round_zero_proposal(self, early: set[str], first_wait: int, puts: int, newest_first: bool,
                                 stash_to_late: bool, partner: str, away_steps: int) -> None:
        """The next height's round-0 proposer proposes, but its block is late: the others time
        out and the round-1 proposer proposes at the same height with the same pool. The late
        block then reaches ``early`` first and the others after a while. Stashed transactions
        reach only the late proposer's pool in time (``stash_to_late``), or only the others'.
        The late proposer and ``partner`` may stay apart for ``away_steps`` more steps, building
        on the late block while the others build on its sibling."""
        net = self.net
        ref = next((n for n in NAMES if n not in self._away()), None)
        if ref is None:
            return
        engine = net.engines[ref]
        height = engine.tree.best_tip.height + 1
        late = proposer_for(engine.gov.at(height).member_names, height, 0)
        if puts:
            self.put(ref, puts)
        self.isolated |= {late, partner}
        stash, self.stash = self.stash, []
        for member, tx in stash:
            target = late if stash_to_late else next(n for n in NAMES if n not in self._away())
            self.net.engines[target].submit([tx.raw], None, self.net.now)
        self._deliver()
        self._step(first_wait)
        self._step(engine.params.turn_timeout_ms + 100)
        for _ in range(away_steps):
            self._step(250)
        held, self.held = self.held, []
        self.isolated.clear()
        for target, sender, raw in held:
            if sender == late and target in early and target not in self._away():
                self._dispatch(target, sender, raw)
            else:
                self.held.append((target, sender, raw))
        self._deliver()
        self._step(10)
        self._release(newest_first)

    def _open(self, name: str) -> set[bytes]:
        with self.net.stores[name].state_reader_at(self.net.engines[name].tree.best_tip.hash) as reader:
            return set(read_pending(reader))

    def _vote_txs(self, proposal: Proposal, voters: set[str]) -> list[tuple[str, Tx]]:
        out = []
        for voter in sorted(voters):
            engine = self.net.engines[voter]
            public = engine.gov.key_at(voter, engine.tree.best_tip.height + 1)
            if public is not None:
                vote = Vote.create(self.net.member_key(voter, public), self.net.cid, proposal.id, voter, True)
                out.append((voter, self.net.gov_tx(voter, vote_op(vote))))
        return out

    def _vote(self, proposal: Proposal, voters: set[str]) -> None:
        for voter, tx in self._vote_txs(proposal, voters):
            self.net.engines[voter].submit([tx.raw], None, self.net.now)
        self._deliver()

    def _steps_until(self, done: Callable[[], bool], steps: int = 20) -> None:
        for _ in range(steps):
            if done():
                return
            self._step(250)

    @rule()
    def anti_entropy(self) -> None:
        for sender, engine in self.net.engines.items():
            status = engine.status_message()
            for target in NAMES:
                if target == sender or {sender, target} & self.cut:
                    continue
                if (sender in self.isolated) != (target in self.isolated):
                    self.held.append((target, sender, to_wire(status)))
                else:
                    self.net.dispatch(target, sender, status)
        self._deliver()

    @rule()
    def settle(self) -> None:
        """Heal the network and let time pass: every engine must agree on the best chain up to
        the majority head, and the majority head must move."""
        self.heal(newest_first=False)
        net = self.net
        before = min(e.heads().majority for e in net.engines.values())
        for _ in range(SETTLE_STEPS):
            self._step(250)
            net.exchange_status()
            if self._agreed() and min(e.heads().majority for e in net.engines.values()) > before:
                return
        heads = {n: (e.heads().majority, e.tree.best_tip.height, e.tree.best_tip.hash.hex()[:8])
                 for n, e in net.engines.items()}
        raise AssertionError(f"no convergence after healing: majority before {before}, now {heads}")

    def _agreed(self) -> bool:
        engines = list(self.net.engines.values())
        top = min(e.heads().majority for e in engines)
        return all(e.tree.best_chain_hash(h) == engines[0].tree.best_chain_hash(h)
                   for e in engines[1:] for h in range(max(0, top - 8), top + 1))

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def nobody_objects(self) -> None:
        for name, engine in self.net.engines.items():
            assert engine.objection_count == 0, f"{name} objected to a correctly built block"

    @invariant()
    def state_for_is_the_blocks_own_state(self) -> None:
        net = self.net
        for name, engine in net.engines.items():
            for header in engine.tree.headers():
                if not engine.tree.held(header.hash):
                    continue
                expected = net.state_of(name, header.hash).digest
                got = engine.state_for(header.hash, header.height + 1).digest
                assert got == expected, f"{name}: state_for block {header.height} {header.hash.hex()[:8]}"

    @invariant()
    def best_chain_equals_a_replay(self) -> None:
        net = self.net
        for name, engine in net.engines.items():
            tip = engine.tree.best_tip
            assert net.stores[name].head().hash == tip.hash, f"{name}: store head is not the best tip"
            replayed = self._replay(name, tip.hash)
            stored = net.state_of(name, tip.hash)
            oracle = ConsortiumState.load(net.consortium, replayed)
            assert stored.digest == oracle.digest, f"{name}: governance state at the tip differs from a replay"
            assert engine.gov.digest == oracle.digest, f"{name}: engine.gov differs from a replay"

    def _replay(self, name: str, block_hash: bytes) -> MemoryState:
        net = self.net
        path: list[Block] = []
        cursor = block_hash
        while cursor not in self.replayed:
            block = net.stores[name].block(cursor)
            assert block is not None, f"{name}: best-chain block {cursor.hex()[:8]} missing from its store"
            path.append(block)
            cursor = block.header.prev
        state = self.replayed[cursor]
        for block in reversed(path):
            parent = net.stores[name].header(block.header.prev)
            assert parent is not None
            effects = apply_txs(state, block.txs, net.consortium, net.cid, block.header.time_ms, parent.state_root,
                                height=block.height)
            assert effects.state_root == block.header.state_root, \
                f"{name}: block {block.height} does not replay to its state root"
            after = MemoryState(state.nodes)
            after.values, after.seen = dict(state.values), set(state.seen)
            after.apply(effects)
            self.replayed[block.hash] = state = after
        return state


ForkMachine.TestCase.settings = settings(
    max_examples=settings().max_examples if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else MACHINE_EXAMPLES,
    stateful_step_count=MACHINE_STEPS)
TestForksRandomized = ForkMachine.TestCase


def run_machine(*rules: Callable[[ForkMachine], None]) -> None:
    """A fixed sequence of the machine's rules, each followed by every invariant, then the
    teardown's convergence check: a failing case the search found, kept as a plain test."""
    machine = ForkMachine()
    try:
        for apply in rules:
            apply(machine)
            machine.nobody_objects()
            machine.state_for_is_the_blocks_own_state()
            machine.best_chain_equals_a_replay()
    finally:
        machine.teardown()


def test_a_late_block_that_passes_a_rotation_alone_keeps_its_branch_alive() -> None:
    """Only the late round-0 block carries the last vote of firm-a's key rotation; firm-a stays
    apart and builds on it with its new key. Its proposals reach firm-b, whose best tip is the
    sibling without the rotation: they must be taken, not dropped as unsigned."""
    run_machine(lambda m: m.pass_change_but_one_vote("rotate", "firm-a", "firm-b", 200, stash=True),
                lambda m: m.late_round_zero_proposal(set(), 10, 0, False, stash_to_late=True, partner="firm-a",
                                                     away_steps=2),
                *[lambda m: m.step(250)] * 6)
