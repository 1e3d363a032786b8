"""Four members in one process over the in-memory hub, with the autojump clock."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.node_harness import Cluster


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
