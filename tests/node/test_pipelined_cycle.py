"""The pipelined block cycle on running nodes (docs/protocol.md §8.2): the next proposer builds
its block as soon as it holds and has checked its parent, before the parent has gathered a
majority, and in the same durable commit as its co-signature of that parent.

In-process: four real engines and stores on the in-memory hub under the autojump clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import trio
import trio.testing

from peerdb.core.validate import PIPELINE_DEPTH
from peerdb.node.engine import Engine
from tests.helpers.node_harness import FAST_PARAMS, Cluster

PARAMS = dataclasses.replace(FAST_PARAMS, max_block_txs=4)
"""Small blocks, so that a burst of transactions needs several blocks in a row."""


def record_proposals(engine: Engine, log: list[tuple[int, int, int]]) -> None:
    """Log (height proposed, parent's height, majority head) each time ``engine`` proposes."""
    propose = engine.maybe_propose

    def recorded(now_ms: int) -> Any:
        parent, majority = engine.tree.best_tip.height, engine.heads().majority
        block = propose(now_ms)
        if block is not None:
            log.append((block.height, parent, majority))
        return block
    engine.maybe_propose = recorded  # type: ignore[method-assign]


async def test_the_next_block_is_proposed_before_the_previous_one_has_a_majority(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, params=PARAMS)
    proposals: dict[str, list[tuple[int, int, int]]] = {}
    commits: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for name, node in cluster.nodes.items():
            proposals[name] = []
            record_proposals(node.engine, proposals[name])
            commits[name] = 0

            def count(seconds: float, name: str = name) -> None:
                commits[name] += 1
            node.store.on_commit = count
        txs = [cluster.tx(cluster.names[i % 4], f"k{i}") for i in range(40)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: all(cluster.included(n, txs) for n in cluster.names),
                                 what="every transaction unanimous-signed")
        await cluster.wait_until(cluster.same_tip, what="one tip")
        tip = cluster.nodes["firm-a"].engine.tree.best_tip.height
        blocks = sum(len(p) for p in proposals.values())
        evidence = [len(node.engine.evidence) for node in cluster.nodes.values()]
        await cluster.close()
        nursery.cancel_scope.cancel()
    made = [p for log in proposals.values() for p in log]
    pipelined = [(height, parent, majority) for height, parent, majority in made if majority < parent]
    assert pipelined, f"every block waited for its parent's majority: {made}"
    for height, parent, majority in made:
        assert height == parent + 1
        assert height - majority <= PIPELINE_DEPTH  # the bound, as its proposer saw it
    assert blocks >= len(txs) // PARAMS.max_block_txs and tip >= len(txs) // PARAMS.max_block_txs
    assert evidence == [0, 0, 0, 0]  # no member signed two blocks at one height
    # At most one durable commit per block per member: the block a member co-signs and the one
    # it proposes on it share a commit, and an engine call that writes nothing commits nothing.
    assert sum(commits.values()) <= tip * len(cluster.names)
