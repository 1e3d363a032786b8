"""The engine's state is touched only under the service lock, even with worker threads.

A daemon runs engine calls (proposals, co-signatures, recorded anchor proofs) in worker threads
while, on the trio thread, the anchoring service picks blocks to anchor, the alert loop reads
the chain's conditions and API handlers read views. Reading the block tree there without the
lock once crashed a node ("Set changed size during iteration"). This test runs a real
four-member consortium with engine calls in worker threads and hammers every reader and writer
concurrently for thousands of iterations; any unlocked access shows up as an exception or an
inconsistent read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from peerdb.node.anchoring import NodeAnchoring, anchor_duty
from peerdb.node.config import BitcoinConfig, NodeConfig
from peerdb.node.service import EngineView, NodeService
from tests.helpers.node_harness import FAST_PARAMS, Cluster

ITERATIONS = 2000


def node_config(tmp_path: Path, member: str) -> NodeConfig:
    # Anchoring is built but never run: only its hand-over and alert reads are exercised.
    return NodeConfig(path=tmp_path / "node.toml", member=member, consortium_file=tmp_path / "c.toml",
                      key_file=tmp_path / "k", extra_key_files=(), joining=False, data_dir=tmp_path,
                      listen=None, api_listen="127.0.0.1:0", api_token="t", api_audit_token=None, client_key_file=None,
                      bitcoin=BitcoinConfig("http://127.0.0.1:9/"), alert_webhook=None, alert_command=None,
                      mempool_max_txs=1000, sync=False, log_level="INFO")


TREE_METHODS = ("heads", "best_chain_hash", "header", "signers", "held", "on_best_chain", "status", "set_anchored",
                "add_header", "add_signature", "add_culprit", "fork_point", "signed_at", "endorsers")


def watch_owner(tree: object, service: NodeService, unlocked: list[str]) -> None:
    """Record every use of the tree's methods made while nobody holds the service lock."""
    for name in TREE_METHODS:
        method = getattr(tree, name)

        def checked(*args: object, __name: str = name, __method: object = method) -> object:
            if not service._lock.locked():
                unlocked.append(__name)
            return __method(*args)  # type: ignore[operator]
        setattr(tree, name, checked)


async def test_readers_and_writers_share_the_engine_only_under_its_lock(tmp_path: Path) -> None:
    params = dataclasses.replace(FAST_PARAMS, heartbeat_ms=20, turn_timeout_ms=500)
    cluster = Cluster(tmp_path, params=params, offload=True)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        duty = anchor_duty(cluster.names, cluster.nodes[cluster.names[0]].service.clock_ms(), params.anchor_interval_s)
        node = cluster.nodes[duty]
        service: NodeService = node.service
        engine = node.engine
        anchoring = NodeAnchoring(service, node_config(tmp_path, duty), cluster.consortium)
        service.extra_status = anchoring.alert_conditions
        unlocked: list[str] = []
        watch_owner(engine.tree, service, unlocked)
        counts = {"anchor": 0, "alerts": 0, "reads": 0, "writes": 0}
        handed: set[bytes] = set()

        async def anchoring_reader() -> None:
            for _ in range(ITERATIONS):
                anchoring.last_duty_interval = -1  # every round is a new duty interval
                items = await anchoring.new_blocks()
                handed.update(i.block_hash for i in items)
                counts["anchor"] += 1
                await trio.sleep(0)

        async def alert_reader() -> None:
            for _ in range(ITERATIONS):
                conditions = await service.read(service._alert_conditions, service.clock_ms())
                assert all(c.kind for c in conditions)
                counts["alerts"] += 1
                await trio.sleep(0)

        async def view_reader() -> None:
            for _ in range(ITERATIONS):
                view: EngineView = service.view
                assert view.heads.tentative == view.tip.height >= view.heads.majority >= view.heads.unanimous
                status = await service.read(engine.status_message)
                assert status.height >= view.tip.height or status.height >= 0
                counts["reads"] += 1
                await trio.sleep(0)

        async def writer() -> None:
            for i in range(ITERATIONS):
                tip = service.view.tip
                if i % 50 == 0:
                    await cluster.submit(duty, [cluster.tx(duty, f"k{i}")])
                # What AnchorBook.record does in a worker thread when a proof arrives.
                await service.call(engine.tree.set_anchored, tip.hash)
                counts["writes"] += 1

        async with trio.open_nursery() as hammer:
            for task in (anchoring_reader, alert_reader, view_reader, writer):
                hammer.start_soon(task)
        await cluster.wait_until(lambda: engine.tree.best_tip.height > 20, timeout=60, what="blocks made meanwhile")
        assert not unlocked, f"the block tree was used without the service lock: {sorted(set(unlocked))}"
        assert counts == {"anchor": ITERATIONS, "alerts": ITERATIONS, "reads": ITERATIONS, "writes": ITERATIONS}
        assert handed, "the anchoring reader picked blocks to anchor"
        await cluster.close()
        nursery.cancel_scope.cancel()
