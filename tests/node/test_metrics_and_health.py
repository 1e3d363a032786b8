"""The monitoring endpoints (peerdb/node/http/monitor.py, peerdb/node/metrics.py,
peerdb/node/health.py): Prometheus metrics that move when the consortium makes blocks and name
a stopped member's missing signatures; ``/healthz`` that fails when a loop stops turning; and
``/readyz`` that names why a node should not be relied on: alone, locked by a restored data
directory, or catching up.

In-process: four real engines and stores on the in-memory hub under the autojump clock, the
monitoring app reached through httpx's ASGI transport (tests/system covers real daemons
scraped over sockets). The exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from peerdb.node.health import LOOP_STALE_MIN_S, READY_MAX_LAG_BLOCKS, health, readiness
from peerdb.node.http.monitor import MonitorApp
from peerdb.node.metrics import NodeMetrics
from peerdb.store import Store
from tests.helpers.node_harness import FAST_PARAMS, Cluster, MemberNode

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@asynccontextmanager
async def monitor(node: MemberNode) -> AsyncIterator[httpx.AsyncClient]:
    metrics = NodeMetrics()
    node.store.on_commit = metrics.observe_commit
    node.engine.trace.sink = metrics.observe_stage  # as the daemon wires it
    app = MonitorApp(node.service, metrics, node.engine.params)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://monitor") as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def test_metrics_move_when_blocks_are_made(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        async with monitor(a) as client:
            before = await scrape(client)
            [info] = [dict(labels) for name, labels in before if name == "peerdb_info"]
            assert info["member"] == "firm-a" and info["consortium"] == "test"
            txs = [cluster.tx("firm-a", f"k{i}") for i in range(30)]
            await cluster.submit("firm-a", txs)
            await cluster.wait_until(lambda: all(cluster.included(n, txs, "unanimous_signed") for n in cluster.names),
                                     what="every transaction signed by all")
            after = await scrape(client)
        heads = a.engine.heads()
        assert value(after, "peerdb_head_height", view="tentative") >= heads.unanimous_signed >= 1
        assert value(after, "peerdb_head_height", view="unanimous_signed") >= value(
            before, "peerdb_head_height", view="unanimous_signed") + 1
        assert value(after, "peerdb_transactions_applied_total") - value(before, "peerdb_transactions_applied_total") \
            >= len(txs)
        assert value(after, "peerdb_blocks_applied_total") > value(before, "peerdb_blocks_applied_total")
        assert value(after, "peerdb_tx_signatures_verified_total") >= len(txs)
        for member in cluster.names:
            assert value(after, "peerdb_signatures_total", member=member) > 0
        assert [value(after, "peerdb_peer_up", peer=m) for m in ("firm-b", "firm-c", "firm-d")] == [1, 1, 1]
        assert value(after, "peerdb_peers_up") == 3 and value(after, "peerdb_ready") == 1
        assert value(after, "peerdb_store_commit_seconds_count") > value(before, "peerdb_store_commit_seconds_count")
        assert value(after, "peerdb_mempool_transactions") == 0
        assert value(after, "peerdb_store_file_bytes") > 0
        assert value(after, "peerdb_reorgs_total") == 0 and value(after, "peerdb_reorg_depth_blocks_count") == 0
        # The block-cycle trace's stages: firm-a either proposed a block or co-signed one, and
        # every block it saw reached unanimous_signed.
        stages = {dict(labels)["stage"]: v for (name, labels), v in after.items()
                  if name == "peerdb_block_stage_seconds_count"}
        assert stages.get("block.unanimous_signed", 0) >= 1
        assert stages.get("propose.commit", 0) + stages.get("cosign.commit", 0) >= 1
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_stopped_members_missing_signatures_and_alert_show(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        await cluster.crash("firm-d")
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(5)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: cluster.included("firm-a", txs, "majority"), what="majority without firm-d")
        await cluster.wait_until(lambda: any(al["kind"] == "peer_down" for al in a.service.alerts.snapshot()),
                                 what="peer_down raised")
        async with monitor(a) as client:
            samples = await scrape(client)
        tip = value(samples, "peerdb_head_height", view="tentative")
        assert value(samples, "peerdb_missing_signatures", member="firm-d") == tip - a.engine.tree.endorsement_height(
            "firm-d") > 0
        assert value(samples, "peerdb_missing_signatures", member="firm-b") < value(
            samples, "peerdb_missing_signatures", member="firm-d")
        assert value(samples, "peerdb_peer_up", peer="firm-d") == 0 and value(samples, "peerdb_peers_up") == 2
        assert value(samples, "peerdb_ready") == 1  # three of four still make a majority
        assert value(samples, "peerdb_alerts_active", kind="peer_down") == 1
        assert value(samples, "peerdb_alerts_raised_total", kind="peer_down") == 1
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_ready_when_connected_and_not_ready_when_alone(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        async with monitor(a) as client:
            await cluster.wait_until(lambda: all(a.service.is_up(m) for m in ("firm-b", "firm-c", "firm-d")),
                                     what="all peers connected")
            await trio.sleep(1)
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json()["ready"] is True and r.json()["reasons"] == []
            r = await client.get("/healthz")
            assert r.status_code == 200 and r.json()["healthy"] is True
            assert set(r.json()["loops_last_turned_s_ago"]) == {"turn", "status", "alert"}
            for name in ("firm-b", "firm-c", "firm-d"):
                await cluster.crash(name)
            await cluster.wait_until(lambda: not any(a.service.is_up(m) for m in ("firm-b", "firm-c", "firm-d")),
                                     what="all peers gone")
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["ready"] is False
            [reason] = r.json()["reasons"]
            assert reason.startswith("alone: no member is connected; a majority needs 3 of 4 members")
            assert (await client.get("/healthz")).status_code == 200  # alone, but running: restart would not help
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_not_ready_while_a_restored_data_directory_locks_signing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    # What `peerdb node run --accept-restored` does to an empty directory: signing locked.
    Store.open(tmp_path / "firm-c", cluster.consortium, "firm-c", sync=False, accept_restored=True).close()
    async with trio.open_nursery() as nursery:
        cluster.nursery = nursery
        await cluster.start_node("firm-c")
        c = cluster.nodes["firm-c"]
        async with monitor(c) as client:
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["locked"] is True
            locked, alone = r.json()["reasons"]
            assert locked.startswith("restored data directory: signing is locked until the node has caught up")
            assert alone.startswith("alone: no member is connected")
            for name in ("firm-a", "firm-b", "firm-d"):
                await cluster.start_node(name)
            await cluster.wait_until(lambda: not c.store.guard_locked(), what="firm-c caught up and unlocked")
            await cluster.wait_until(lambda: all(c.service.is_up(m) for m in ("firm-a", "firm-b", "firm-d")),
                                     what="firm-c connected")
            r = await client.get("/readyz")
            assert r.status_code == 200 and r.json()["reasons"] == []
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_healthz_fails_when_a_loop_stops_turning(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        release = trio.Event()

        async def stuck_engine_call() -> None:
            async with a.service._lock:  # noqa: SLF001 - an engine call that does not return
                await release.wait()

        async with monitor(a) as client:
            nursery.start_soon(stuck_engine_call)
            await trio.sleep(3 * LOOP_STALE_MIN_S)
            r = await client.get("/healthz")
            assert r.status_code == 503 and r.json()["healthy"] is False
            assert any("the alert loop has not turned" in reason for reason in r.json()["reasons"])
            release.set()
            await trio.sleep(1)
            assert (await client.get("/healthz")).status_code == 200  # it turns again once the lock is free
        await cluster.close()
        nursery.cancel_scope.cancel()


# --- the pure decisions ------------------------------------------------------------------------------

def test_health_names_each_stuck_loop() -> None:
    beat, turn = FAST_PARAMS.heartbeat_ms / 1000, FAST_PARAMS.turn_timeout_ms / 1000
    assert health({"turn": 99.0, "status": 99.5, "alert": 99.8}, 100.0, beat, turn).ok
    verdict = health({"turn": 99.0, "status": 50.0, "alert": 99.8}, 100.0, beat, turn)
    assert not verdict.ok and verdict.reasons == ["the status loop has not turned for 50.0 s (limit 10 s)"]
    assert not health({}, 100.0, beat, turn).ok


def test_readiness_reasons() -> None:
    common = {"members": 4, "tip_height": 100, "peer_heights": {"firm-b": 100, "firm-c": 101}}
    assert readiness(locked=False, peers_up=["firm-b", "firm-c"], peers_down=["firm-d"], **common).ok  # type: ignore[arg-type]
    verdict = readiness(locked=False, peers_up=["firm-b"], peers_down=["firm-c", "firm-d"], **common)  # type: ignore[arg-type]
    assert verdict.reasons == ["connected to 1 of 3 members (firm-b); a majority needs 3 of 4 members; "
                               "down: firm-c, firm-d"]
    far = 10 + READY_MAX_LAG_BLOCKS + 5
    behind = readiness(locked=True, members=4, peers_up=["firm-b", "firm-c", "firm-d"], peers_down=[],
                       tip_height=10, peer_heights={"firm-b": far, "firm-c": far - 1, "firm-d": 12})
    assert len(behind.reasons) == 2
    assert behind.reasons[0].startswith("restored data directory: signing is locked")
    assert behind.reasons[1] == f"catching up: tip at height 10, firm-b, firm-c at {far}"


def test_one_peer_claiming_a_tip_far_ahead_does_not_make_a_node_unready() -> None:
    """A status is a claim: a member that lies about its tip must not take the others out of service."""
    liar = readiness(locked=False, members=4, peers_up=["firm-b", "firm-c", "firm-d"], peers_down=[],
                     tip_height=10, peer_heights={"firm-b": 10, "firm-c": 11, "firm-d": 1_010})
    assert liar.ok, liar.reasons
