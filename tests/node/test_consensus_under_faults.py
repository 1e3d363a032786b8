"""Consensus among four members in one process (memory hub, autojump clock), in normal flow and
under faults: writes reach unanimous-signed everywhere; a crashed proposer's turn passes and the
majority keeps going; a restarted member catches up and signs again; a partitioned member
heals and catches up; and a two-two partition, once healed, loses no transaction.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers.node_harness import Cluster, best_chain_header


async def test_normal_flow_reaches_unanimous_signed(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        txs = [cluster.tx("firm-a", f"k{i}", f"v{i}".encode()) for i in range(30)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: all(cluster.included(n, txs) for n in cluster.names),
                                 what="all txs unanimous-signed everywhere")
        await cluster.wait_until(cluster.same_tip, what="same tip")
        for name in cluster.names:
            store = cluster.nodes[name].store
            assert store.get("ns", "k7")[0] == b"v7"
        roots = {n.engine.tree.best_tip.state_root for n in cluster.nodes.values()}
        assert len(roots) == 1
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_crashed_proposer_turn_passes_and_majority_continues(tmp_path: Path,
                                                                  autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.crash("firm-b")
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(20)]
        await cluster.submit("firm-a", txs)
        # Heights whose round-0 proposer is firm-b must pass to firm-c (round 1).
        await cluster.wait_until(lambda: cluster.nodes["firm-a"].engine.heads().majority >= 6, what="majority >= 6")
        assert all(cluster.included(n, txs, "majority") for n in ("firm-a", "firm-c", "firm-d"))
        engine = cluster.nodes["firm-a"].engine
        passed = [best_chain_header(engine, h) for h in range(1, 7)]
        assert any(h.round >= 1 and h.proposer == "firm-c" for h in passed)
        assert all(h.proposer != "firm-b" for h in passed)
        # Nobody reaches unanimity without firm-b, and the alert names it.
        assert engine.heads().unanimous_signed == 0
        await cluster.wait_until(lambda: any(a["kind"] == "peer_down" and a["subject"] == "firm-b"
                                             for a in cluster.nodes["firm-a"].service.alerts.snapshot()),
                                 what="peer_down alert naming firm-b")
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_restarted_member_catches_up_and_signs_again(tmp_path: Path,
                                                           autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.crash("firm-d")
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(40)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: cluster.nodes["firm-a"].engine.heads().majority >= 12, what="progress")
        await cluster.start_node("firm-d")
        await cluster.wait_until(lambda: all(cluster.included(n, txs) for n in cluster.names),
                                 what="unanimous after restart")
        d = cluster.nodes["firm-d"].engine
        assert d.tree.endorsement_height("firm-d") >= cluster.nodes["firm-a"].engine.tree.best_tip.height - 1
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_partitioned_member_heals_and_catches_up(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.hub.isolate("firm-c")
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(20)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: all(cluster.included(n, txs, "majority") for n in ("firm-a", "firm-b", "firm-d")),
                                 what="majority without firm-c")
        assert cluster.nodes["firm-c"].engine.tree.best_tip.height < cluster.nodes["firm-a"].engine.tree.best_tip.height
        cluster.hub.heal()
        await cluster.wait_until(lambda: all(cluster.included(n, txs) for n in cluster.names), what="healed")
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_two_two_partition_then_heal_loses_no_transaction(tmp_path: Path,
                                                                autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.hub.partition(("firm-a", "firm-b"), ("firm-c", "firm-d"))
        left = [cluster.tx("firm-a", f"left{i}") for i in range(10)]
        right = [cluster.tx("firm-c", f"right{i}") for i in range(10)]
        await cluster.submit("firm-a", left)
        await cluster.submit("firm-c", right)
        # Both sides build tentative chains; neither reaches a majority (2 of 4 is not > 50%).
        await cluster.wait_until(lambda: cluster.nodes["firm-a"].engine.tree.best_tip.height >= 2
                                 and cluster.nodes["firm-c"].engine.tree.best_tip.height >= 2, what="both sides grow")
        assert cluster.nodes["firm-a"].engine.heads().majority == 0
        assert cluster.nodes["firm-c"].engine.heads().majority == 0
        cluster.hub.heal()
        await cluster.wait_until(lambda: all(cluster.included(n, left + right) for n in cluster.names),
                                 what="all transactions of both sides unanimous-signed after heal")
        await cluster.wait_until(cluster.same_tip, what="same tip")
        await cluster.close()
        nursery.cancel_scope.cancel()
