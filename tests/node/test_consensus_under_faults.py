"""Consensus among four members in one process (memory hub, autojump clock), in normal flow and
under faults: writes reach unanimous-signed everywhere; a crashed proposer's turn passes and the
majority keeps going; a restarted member catches up and signs again; a partitioned member
heals and catches up (asking for each next batch before handling the current one); and a
two-two partition, once healed, loses no transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


async def test_catch_up_asks_for_the_next_batch_before_handling_the_current_one(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A member far behind asks for batch k+1 as soon as batch k arrives, so its peer reads and
    sends the next blocks while it checks and applies these (one request per batch, no more)."""
    from peerdb.core.blockdecode import peek_header_fast
    from peerdb.node.messages import MAX_CATCHUP_BLOCKS, BlocksMsg, GetBlocksMsg, from_wire

    cluster = Cluster(tmp_path, idle_block_ms=0)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.crash("firm-d")
        a = cluster.nodes["firm-a"].engine
        await cluster.wait_until(lambda: a.heads().majority >= 3 * MAX_CATCHUP_BLOCKS, timeout=600,
                                 what="three catch-up batches of empty blocks")
        await cluster.start_node("firm-d")
        d = cluster.nodes["firm-d"]
        events: list[tuple[str, int]] = []
        send = d.network.send

        def spy_send(peer: str, wire: Any) -> None:
            msg = from_wire(wire)
            if isinstance(msg, GetBlocksMsg):
                events.append(("ask", msg.from_height))
            send(peer, wire)
        d.network.send = spy_send  # type: ignore[method-assign, assignment]
        on_blocks = d.engine.on_blocks

        def spy_blocks(peer: str | None, msg: BlocksMsg, now_ms: int) -> None:
            if msg.items and msg.peer_height > (last := peek_header_fast(msg.items[-1][0]).height):
                events.append(("handle", last))  # a batch with more after it
            on_blocks(peer, msg, now_ms)
        d.engine.on_blocks = spy_blocks  # type: ignore[method-assign]
        await cluster.wait_until(lambda: d.engine.tree.best_tip.height >= 3 * MAX_CATCHUP_BLOCKS, timeout=600,
                                 what="firm-d caught up")
        await cluster.close()
        nursery.cancel_scope.cancel()
    handled = [i for i, (kind, _) in enumerate(events) if kind == "handle"]
    assert len(handled) >= 2
    for i in handled:
        # The batch after this one was asked for before this one was handled.
        assert ("ask", events[i][1] + 1) in events[:i], events
