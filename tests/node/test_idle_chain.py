"""An idle consortium rests: one empty block per idle interval, not one per heartbeat.

Storing a block every heartbeat made an idle consortium grow by 86,400 blocks a day. With the
node's ``idle_block_s`` the chain rests while nothing waits in the pool, a transaction is still
proposed at once by whoever's turn it is, and resting is not reported as a stall.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.helpers.engine_net import PARAMS, Net, run_until
from tests.helpers.node_harness import FAST_PARAMS, Cluster

IDLE_MS = 20_000


async def test_an_idle_chain_rests_and_wakes_for_a_transaction(tmp_path: Path,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, idle_block_ms=IDLE_MS)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        start = trio.current_time()
        await trio.sleep(60)
        # Heartbeats every 0.2 s would have made ~300 blocks; resting makes one per 20 s.
        assert 2 <= a.engine.tree.best_tip.height <= 4, a.engine.tree.best_tip.height
        alerts = await a.service.read(a.engine.alert_conditions, a.service.clock_ms(), lambda _m: True)
        assert not [x for x in alerts if x.kind == "stalled"], alerts
        height = a.engine.tree.best_tip.height
        tx = cluster.tx("firm-b", "wake")
        sent = trio.current_time()
        await cluster.submit("firm-b", [tx])
        await cluster.wait_until(lambda: cluster.included("firm-a", [tx], "unanimous_signed"), what="the write")
        # Included within a turn or two, not an idle interval.
        assert trio.current_time() - sent < 2 * FAST_PARAMS.turn_timeout_ms / 1000 + 1
        assert a.engine.tree.best_tip.height >= height + 1
        assert trio.current_time() - start >= 60
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_stall_is_still_reported_when_work_waits(tmp_path: Path,
                                                         autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, idle_block_ms=IDLE_MS)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        await trio.sleep(5)
        for name in ("firm-b", "firm-c", "firm-d"):  # no majority is possible any more
            await cluster.crash(name)
        await a.service.submit([cluster.tx("firm-a", "stuck").raw])
        await trio.sleep(10)
        alerts = await a.service.read(a.engine.alert_conditions, a.service.clock_ms(), lambda _m: True)
        assert [x for x in alerts if x.kind == "stalled"], alerts
        nursery.cancel_scope.cancel()
    a.store.close()


def test_a_member_that_signed_a_lost_sibling_gets_a_block_to_endorse_without_waiting_the_idle_interval(
        tmp_path: Path) -> None:
    """The race CI's three-firm founding run lost: two blocks at one height, the write in both.
    The member that signed the losing one cannot sign the winner (a second signature at that
    height), so only a later block brings its endorsement. With the pool empty the chain used to
    rest for the whole idle interval, and a write waiting for ``unanimous_signed`` timed out."""
    net = Net(tmp_path, idle_block_ms=IDLE_MS)
    try:
        tx = net.tx("firm-a", "raced")
        net.cut.add("firm-d")
        for name in ("firm-a", "firm-d"):
            net.engines[name].submit([tx.raw], None, net.now)
        a, d = net.engines["firm-a"], net.engines["firm-d"]
        run_until(net, lambda: a.tree.heads().majority >= 1)
        for _ in range(200):  # firm-d, alone, proposes at its own turn (within four rounds)
            if d.tree.signed_at("firm-d", 1):
                break
            net.step(50)
            d.maybe_propose(net.now)
        lost = d.tree.best_chain_hash(1)
        assert lost is not None and lost != a.tree.best_chain_hash(1)  # firm-d signed its own block 1

        net.cut.clear()
        net.exchange_status()
        healed = net.now
        for engine in net.engines.values():
            assert engine.tree.best_chain_hash(1) == a.tree.best_chain_hash(1)
        assert a.tree.stranded() == ("firm-d",)
        run_until(net, lambda: all(e.tree.heads().unanimous_signed >= 1 for e in net.engines.values()))
        assert net.now - healed < PARAMS.turn_timeout_ms + 2 * PARAMS.heartbeat_ms  # not IDLE_MS
        assert a.tree.stranded() == ()

        # One block was enough: the chain rests again.
        height = a.tree.best_tip.height
        for _ in range(IDLE_MS // 2 // 50):
            net.step(50)
        assert a.tree.best_tip.height == height
    finally:
        net.close()
