"""The engine when the signing guard refuses the member's *own* proposal.

The guard floor can lie above the member's next turn: after a restored data directory caught
up, the floor is the member's tip height then (``Engine.on_status``), and if fork choice later
moves to a heavier branch with a lower tip, the member's next turn is at or below the floor. The
guard must refuse that proposal (the member may have signed a block at that height before the
restore), and the refusal must leave nothing behind: no block or signature leaves the node, the
store is unchanged, and the block tree holds no block the store lacks. Such a phantom block would
become the best tip (one more signature than its parent), be advertised in status messages that
peers can never satisfy, and make the next engine call fail because the tree's head is not in
the store, which stops the node.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from peerdb.core.consortium import Params
from peerdb.core.model import OP_PUT, Op, Tx
from peerdb.node.engine import Engine
from peerdb.node.messages import SigsMsg, from_wire, to_wire
from peerdb.store import Store

from tests.helpers.consortium import MEMBER_NAMES, seeded_consortium

NAMES = MEMBER_NAMES
PARAMS = Params(heartbeat_ms=200, turn_timeout_ms=1000, clock_skew_ms=1000)


class Four:
    """Four engines, messages delivered synchronously through the wire encoding."""

    def __init__(self, tmp_path: Path, params: Params = PARAMS) -> None:
        seeded = seeded_consortium(NAMES, name="test", genesis_time_ms=0, params=params)
        self.keys = seeded.keys
        self.clients = seeded.client_keys
        self.consortium = seeded.consortium
        self.cid = seeded.cid
        self.now = 1000
        self.stores = {n: Store.open(tmp_path / n, self.consortium, n, sync=False) for n in NAMES}
        self.engines = {n: Engine(self.consortium, n, self.keys[n], self.stores[n], self.now) for n in NAMES}
        self.nonce = itertools.count(1)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.verifier.close()
        for store in self.stores.values():
            store.close()

    def deliver(self) -> None:
        for _ in range(1000):
            moved = False
            for sender, engine in self.engines.items():
                for out in engine.take_outbox():
                    moved = True
                    for target in [out.to] if out.to else [n for n in NAMES if n != sender]:
                        self.engines[target].handle(sender, from_wire(to_wire(out.msg)), self.now)
            if not moved:
                return
        raise AssertionError("messages never settled")

    def run_until_majority(self, height: int) -> None:
        for _ in range(500):
            if self.engines["firm-a"].heads().majority >= height:
                return
            self.now += 50
            for engine in self.engines.values():
                engine.maybe_propose(self.now)
            self.deliver()
        raise AssertionError(f"no majority at height {height}")

    def tx(self, member: str, key: str) -> Tx:
        return Tx.create(self.clients[member], self.cid, member, next(self.nonce), self.now + 600_000,
                         [Op(OP_PUT, "ns", key, b"v")])


@pytest.fixture
def four(tmp_path: Path) -> "Four":
    return Four(tmp_path)


def _refused_turn(four: Four) -> tuple[Engine, Store]:
    """Bring the chain to height 2, then let the next proposer's guard refuse its turn."""
    four.engines["firm-a"].submit([four.tx("firm-a", "k").raw], None, four.now)
    four.run_until_majority(2)
    four.deliver()
    a = four.engines["firm-a"]
    height, _round, proposer = a.current_turn(four.now)
    engine, store = four.engines[proposer], four.stores[proposer]
    store.set_guard_floor(height)  # what a restore followed by a reorg to a lower tip leaves
    four.now = engine.tip_seen_ms + PARAMS.heartbeat_ms + 1  # round 0, heartbeat due: its turn
    assert engine.current_turn(four.now)[2] == proposer
    return engine, store


def test_guard_refuses_an_own_proposal_at_or_below_the_floor(four: Four) -> None:
    try:
        engine, store = _refused_turn(four)
        head = store.head()
        assert engine.maybe_propose(four.now) is None
        assert not engine.take_outbox()  # nothing left the node
        assert store.head() == head and store.guard_record(head.height + 1) is None
    finally:
        four.close()


def test_a_refused_own_proposal_leaves_no_phantom_block(four: Four) -> None:
    try:
        engine, store = _refused_turn(four)
        tip = engine.tree.best_tip
        signed_before = engine.tree.latest_signed(engine.me)
        assert engine.maybe_propose(four.now) is None
        assert engine.tree.best_tip == tip, "a block that was never stored became the best tip"
        assert engine.tree.latest_signed(engine.me) == signed_before
        assert engine.status_message().height == store.head().height
        engine.on_sigs("firm-a", SigsMsg(()), four.now)  # any later call must not fail
        assert store.head().hash == engine.tree.best_tip.hash
    finally:
        four.close()
