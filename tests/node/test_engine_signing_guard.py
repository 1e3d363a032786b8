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

from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdb.node.engine import Engine
from peerdb.node.messages import SigsMsg
from peerdb.store import Store

from tests.helpers.engine_net import PARAMS, Net, run_until


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path)
    yield n
    n.close()


def _refused_turn(net: Net) -> tuple[Engine, Store]:
    """Bring the chain to height 2, then let the next proposer's guard refuse its turn."""
    net.engines["firm-a"].submit([net.tx("firm-a", "k").raw], None, net.now)
    run_until(net, lambda: net.engines["firm-a"].heads().majority >= 2)
    net.deliver()
    a = net.engines["firm-a"]
    height, _round, proposer = a.current_turn(net.now)
    engine, store = net.engines[proposer], net.stores[proposer]
    store.set_guard_floor(height)  # what a restore followed by a reorg to a lower tip leaves
    net.now = engine.tip_seen_ms + PARAMS.heartbeat_ms + 1  # round 0, heartbeat due: its turn
    assert engine.current_turn(net.now)[2] == proposer
    return engine, store


def test_guard_refuses_an_own_proposal_at_or_below_the_floor(net: Net) -> None:
    engine, store = _refused_turn(net)
    head = store.head()
    assert engine.maybe_propose(net.now) is None
    assert not engine.take_outbox()  # nothing left the node
    assert store.head() == head and store.guard_record(head.height + 1) is None


def test_a_refused_own_proposal_leaves_no_phantom_block(net: Net) -> None:
    engine, store = _refused_turn(net)
    tip = engine.tree.best_tip
    signed_before = engine.tree.latest_signed(engine.me)
    assert engine.maybe_propose(net.now) is None
    assert engine.tree.best_tip == tip, "a block that was never stored became the best tip"
    assert engine.tree.latest_signed(engine.me) == signed_before
    assert engine.status_message().height == store.head().height
    engine.on_sigs("firm-a", SigsMsg(()), net.now)  # any later call must not fail
    assert store.head().hash == engine.tree.best_tip.hash
