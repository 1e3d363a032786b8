"""Clients waiting for a view (``NodeService.wait_for``): each is woken once its transactions
are in that view, in the order of the views, and never on the strength of a block that left
the best chain.

The service learns where transactions landed from the blocks the engine applies, not from the
store, except after a reorganisation; these tests hold it to the store's answer."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from peerdb.core.chain import View
from tests.helpers.node_harness import Cluster

ORDER = ("tentative", "majority", "unanimous_signed")


async def test_many_waiting_clients_are_each_woken_in_view_order(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    outcomes: dict[int, tuple[bool, dict[str, float], bool]] = {}
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        service = cluster.nodes["firm-b"].service
        txs = [cluster.tx(cluster.names[i % 4], f"k{i}") for i in range(40)]

        async def client(i: int) -> None:
            await cluster.submit(txs[i].member, [txs[i]])
            levels: dict[str, float] = {}
            reached = await service.wait_for([txs[i].txid], View.UNANIMOUS_SIGNED, 60, levels)
            outcomes[i] = (reached, levels, cluster.included("firm-b", [txs[i]], "unanimous_signed"))

        async with trio.open_nursery() as clients:
            for i in range(len(txs)):
                clients.start_soon(client, i)
        assert service.followers.idle()  # nothing left behind
        await cluster.close()
        nursery.cancel_scope.cancel()
    assert sorted(outcomes) == list(range(len(txs)))
    for reached, levels, included in outcomes.values():
        assert reached and included
        assert [levels[v] for v in ORDER] == sorted(levels[v] for v in ORDER)


async def test_a_transaction_already_in_the_view_is_answered_at_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        tx = cluster.tx("firm-a", "early")
        await cluster.submit("firm-a", [tx])
        await cluster.wait_until(lambda: cluster.included("firm-c", [tx]), what="unanimous_signed at firm-c")
        levels: dict[str, float] = {}
        started = trio.current_time()
        assert await cluster.nodes["firm-c"].service.wait_for([tx.txid], View.UNANIMOUS_SIGNED, 60, levels)
        assert trio.current_time() == started  # no engine change was needed
        assert set(levels) >= set(ORDER)
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_waiter_is_not_woken_by_a_block_its_node_then_rolled_back(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """firm-c, cut off, puts a client's transaction in a block of its own; the others' heavier
    chain replaces it when the link heals, the transaction goes back to the pool and into their
    chain. The client waiting at firm-c must be answered only once that is unanimous-signed."""
    cluster = Cluster(tmp_path)
    seen: list[bool] = []
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        c = cluster.nodes["firm-c"]
        cluster.hub.isolate("firm-c")
        tx = cluster.tx("firm-c", "lonely")
        await cluster.submit("firm-c", [tx])
        levels: dict[str, float] = {}

        async def waiting_client() -> None:
            reached = await c.service.wait_for([tx.txid], View.UNANIMOUS_SIGNED, 600, levels)
            # Nothing ran between the wake-up and this line: it is what the client is told.
            seen.append(reached and cluster.included("firm-c", [tx], "unanimous_signed"))

        nursery.start_soon(waiting_client)
        await cluster.wait_until(lambda: c.store.tx_location(tx.txid) is not None, what="firm-c's own block")
        lonely_block = c.store.tx_location(tx.txid)
        assert lonely_block is not None and "tentative" in levels and not seen
        await cluster.wait_until(lambda: cluster.nodes["firm-a"].engine.heads().majority > lonely_block.height + 1,
                                 what="the others' chain outgrows firm-c's")
        cluster.hub.heal()
        await cluster.wait_until(lambda: bool(seen), timeout=300, what="the client answered")
        assert seen == [True]
        assert not c.engine.tree.on_best_chain(lonely_block.block_hash)  # it was rolled back meanwhile
        await cluster.close()
        nursery.cancel_scope.cancel()
