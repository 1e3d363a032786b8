"""The block-cycle trace: every stage of the write path is timed, the trace stays bounded, and
the histograms give back what was put in (within a bucket)."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from peerdb.node.trace import (
    BUCKET_BOUNDS_MS,
    BUCKET_RATIO,
    OPEN_BLOCKS,
    STAGES,
    TIMELINES,
    BlockTrace,
    bucket_counts,
    difference,
    quantile_ms,
    summarise,
)
from tests.helpers.node_harness import Cluster, api_clients


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_quantile_is_within_half_a_bucket_of_the_value_observed() -> None:
    trace = BlockTrace()
    for ms in (0.01, 0.3, 4.0, 17.5, 250.0, 9000.0):
        before = bucket_counts(trace.snapshot(0))
        trace.observe("propose.commit", ms / 1000)
        one = difference(bucket_counts(trace.snapshot(0)), before)["propose.commit"]
        got = quantile_ms(one, 0.5)
        assert got is not None
        assert ms / BUCKET_RATIO <= got <= ms * BUCKET_RATIO, (ms, got)


def test_p50_and_p99_of_many_observations() -> None:
    trace = BlockTrace()
    for i in range(1, 1001):
        trace.observe("cosign.commit", i / 1000 / 1000 * 10)  # 0.01 .. 10 ms
    stage = trace.snapshot(0)["stages"]["cosign.commit"]
    assert stage["count"] == 1000
    assert 5.0 / BUCKET_RATIO <= stage["p50_ms"] <= 5.0 * BUCKET_RATIO
    assert 9.9 / BUCKET_RATIO <= stage["p99_ms"] <= 9.9 * BUCKET_RATIO
    assert stage["max_ms"] == pytest.approx(10.0)


def test_durations_beyond_the_last_bucket_and_below_zero_are_kept() -> None:
    trace = BlockTrace()
    trace.observe("call.hop", -1.0)  # a clock that stepped back must not break the histogram
    trace.observe("call.hop", 10 * BUCKET_BOUNDS_MS[-1] / 1000)
    counts = bucket_counts(trace.snapshot(0))["call.hop"]
    assert counts == {0: 1, len(BUCKET_BOUNDS_MS): 1}
    assert summarise(counts)["count"] == 2


def test_an_unknown_stage_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        BlockTrace().observe("no.such.stage", 0.001)


def test_the_sink_hears_every_observation() -> None:
    heard: list[tuple[str, float]] = []
    trace = BlockTrace()
    trace.sink = lambda stage, seconds: heard.append((stage, seconds))
    trace.observe("tx.parse", 0.002)
    assert heard == [("tx.parse", 0.002)]


def test_a_block_timeline_follows_its_stages_on_the_trace_clock() -> None:
    clock = FakeClock()
    trace = BlockTrace(clock)
    h = b"\x01" * 32
    trace.block_seen(h, 7, "firm-a", 3, own=True)
    clock.t += 0.002
    trace.block_event(h, "committed")
    clock.t += 0.001
    trace.proposal_sent(h)
    clock.t += 0.010
    trace.signature_received(h, "firm-b")
    trace.heads_moved({"majority": 6, "unanimous_signed": 6}, lambda _h: True)
    assert trace.open_blocks() == 1  # not in a view yet
    clock.t += 0.005
    trace.heads_moved({"majority": 7, "unanimous_signed": 7}, lambda _h: True)
    snap = trace.snapshot()
    [timeline] = snap["blocks"]
    assert timeline["height"] == 7 and timeline["own"] and timeline["txs"] == 3
    assert timeline["events_ms"] == {"committed": 2.0, "sent": 3.0, "sig:firm-b": 13.0, "majority": 18.0,
                                     "unanimous_signed": 18.0}
    stages = snap["stages"]
    assert stages["propose.send"]["count"] == 1
    assert stages["propose.sig_rtt"]["count"] == 1
    assert stages["block.majority"]["count"] == 1
    assert trace.open_blocks() == 0


def test_a_block_off_the_best_chain_does_not_count_as_in_a_view() -> None:
    trace = BlockTrace(FakeClock())
    trace.block_seen(b"\x02" * 32, 5, "firm-b", 0, own=False)
    trace.heads_moved({"majority": 9, "unanimous_signed": 9}, lambda _h: False)
    assert trace.snapshot(0)["stages"]["block.majority"]["count"] == 0
    assert trace.open_blocks() == 1


def test_the_trace_is_bounded_whatever_the_number_of_blocks() -> None:
    trace = BlockTrace(FakeClock())
    for height in range(1, 3 * OPEN_BLOCKS):
        trace.block_seen(height.to_bytes(32, "big"), height, "firm-a", 1, own=False)
    assert trace.open_blocks() == OPEN_BLOCKS  # blocks that never reach a view are dropped, oldest first
    trace.heads_moved({"majority": 10**6, "unanimous_signed": 10**6}, lambda _h: True)
    assert trace.open_blocks() == 0
    snap = trace.snapshot(10**6)
    assert len(snap["blocks"]) == TIMELINES
    assert snap["blocks"][-1]["height"] == 3 * OPEN_BLOCKS - 1  # the newest are kept
    assert set(snap["stages"]) == set(STAGES)
    assert all(len(s["buckets"]) <= len(BUCKET_BOUNDS_MS) + 1 for s in snap["stages"].values())


def test_difference_keeps_only_what_happened_between_two_snapshots() -> None:
    trace = BlockTrace()
    trace.observe("tx.total", 0.001)
    before = bucket_counts(trace.snapshot(0))
    trace.observe("tx.total", 0.050)
    trace.observe("tx.total", 0.050)
    diff = difference(bucket_counts(trace.snapshot(0)), before)
    assert sum(diff["tx.total"].values()) == 2
    assert diff["tx.parse"] == {}


WRITE_PATH = ("tx.parse", "tx.admit_wait", "tx.admit", "tx.block", "tx.majority", "tx.unanimous_signed", "tx.answer",
              "tx.total")
"""Stages every waiting write passes through at the member it was written to."""
BLOCK_PATH = ("propose.build", "propose.commit", "propose.send", "propose.sig_rtt", "cosign.queue", "cosign.decode",
              "cosign.validate", "cosign.commit", "cosign.send", "block.majority", "block.unanimous_signed")
"""Stages every block with transactions passes through at its proposer and its co-signers."""


async def test_a_write_through_the_api_passes_every_stage_of_the_trace(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        async with api_clients(cluster) as clients:
            for i, member in enumerate(cluster.names * 2):
                tx = cluster.tx(member, f"k{i}")
                r = await clients[member].post("/v1/txs", json={
                    "txs": [base64.b64encode(tx.raw).decode()], "wait": "unanimous_signed"})
                assert r.status_code == 200 and r.json()["wait"]["reached"], r.text
            traces = {}
            for member in cluster.names:
                r = await clients[member].get("/v1/trace", params={"blocks": 3})
                assert r.status_code == 200
                traces[member] = r.json()
        await cluster.close()
        nursery.cancel_scope.cancel()
    for member, trace in traces.items():
        for stage in WRITE_PATH:
            assert trace["stages"][stage]["count"] == 2, (member, stage)  # two writes to each member
        assert trace["stages"]["block.unanimous_signed"]["count"] >= 1, member
        assert len(trace["blocks"]) <= 3
        assert set(trace["stages"]) == set(STAGES)
    for stage in BLOCK_PATH:
        assert sum(t["stages"][stage]["count"] for t in traces.values()) >= 1, stage


async def test_the_trace_route_refuses_a_bad_parameter(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        async with api_clients(cluster) as clients:
            client: httpx.AsyncClient = clients[cluster.names[0]]
            r = await client.get("/v1/trace", params={"blocks": "-1"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter"
        await cluster.close()
        nursery.cancel_scope.cancel()
