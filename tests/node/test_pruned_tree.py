"""A node whose block tree keeps only recent blocks in memory behaves like one that keeps all.

With a tiny window (8 blocks, steps of 4) the tree's root moves up many times during the test;
the node must still answer for old blocks (the API, catch-up of a member that was away), export
its whole history in an audit bundle that verifies, and restart from its snapshot with the same
views it had.
"""

from __future__ import annotations

import io
from pathlib import Path

import trio

from peerdb.audit.export import capture, export_snapshot, snapshot_from
from peerdb.audit.verify import VerifyOptions, verify_bundle
from peerdb.node.engine import Engine
from peerdb.node.service import trio_clock_ms
from peerdb.store.archive import load_tree
from tests.helpers.node_harness import Cluster, MemberNode

KEEP, STEP = 8, 4


def small_window(node: MemberNode) -> None:
    node.engine.chain.keep, node.engine.chain.prune_step = KEEP, STEP


async def test_a_pruned_node_serves_exports_and_restarts_like_a_full_one(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        for node in cluster.nodes.values():
            small_window(node)
        a = cluster.nodes["firm-a"]
        await cluster.crash("firm-d")  # away while the others move on
        txs = []
        for i in range(6):
            batch = [cluster.tx("firm-a", f"k{i}-{j}") for j in range(3)]
            txs += batch
            await cluster.submit("firm-a", batch)
            await cluster.wait_until(lambda: cluster.included("firm-a", batch, "majority"), what=f"batch {i}")
        await cluster.wait_until(lambda: a.engine.tree.best_tip.height >= 40, what="a long chain")
        tree = a.engine.tree
        assert tree.root.height > 20, "the root moved up"
        assert sum(1 for _ in tree.headers()) <= KEEP + STEP + 2
        saved = load_tree(a.store)
        assert saved is not None and saved.snapshot.root.height > 0
        # Old blocks are still known, on the best chain, with their signers, from the store.
        first = a.store.tx_location(txs[0].txid)
        assert first is not None and first.height < tree.root.height
        assert first.block_hash in tree and tree.on_best_chain(first.block_hash)
        assert tree.signers(first.block_hash) >= {"firm-a", "firm-b", "firm-c"}

        # The member that was away catches up through the blocks below everyone's root.
        await cluster.start_node("firm-d")
        small_window(cluster.nodes["firm-d"])
        await cluster.wait_until(lambda: cluster.nodes["firm-d"].engine.tree.best_tip.height
                                 >= a.engine.tree.best_tip.height - 1, what="firm-d caught up")
        assert cluster.included("firm-d", txs, "majority")

        # The audit bundle holds the whole history and verifies.
        cap = await a.service.read(lambda: capture(a.engine.tree, a.engine.consortium, "firm-a",
                                                   a.engine.evidence.values(), trio_clock_ms(), a.engine.unsaved_sigs))
        snapshot = snapshot_from(cap, a.store)
        assert len([b for b in snapshot.blocks if b.best]) == cap.claims.height
        report = verify_bundle(io.BytesIO(b"".join(export_snapshot(a.store, snapshot))), VerifyOptions(threads=1))
        assert report.best_chain_blocks == cap.claims.height and report.best_chain_transactions == len(txs)

        for name in ("firm-b", "firm-c", "firm-d"):  # nothing moves any more
            await cluster.crash(name)
        await a.service.call(a.engine.flush_signatures)  # peers' signatures ride a later commit: write them now
        heads_before = await a.service.read(a.engine.heads)
        await cluster.crash("firm-a")
        nursery.cancel_scope.cancel()
    # A restart reads the snapshot and the blocks above its root: the same views, few blocks held.
    store = cluster.nodes["firm-a"].store.__class__.open(tmp_path / "firm-a", cluster.consortium, "firm-a", sync=False)
    try:
        engine = Engine(cluster.consortium, "firm-a", cluster.keys["firm-a"], store, trio_clock_ms())
        assert engine.tree.root.height >= heads_before.tentative - KEEP - STEP - 1
        assert engine.heads() == heads_before
        engine.verifier.close()
    finally:
        store.close()
    await cluster.close()
