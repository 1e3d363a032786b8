"""Prometheus metrics of one node, exposed with ``prometheus_client`` (``[metrics] listen``).

Two kinds, so that the hot path pays almost nothing:

* **Counted where events happen.** The engine bumps plain integers
  (:class:`~peerdb.node.counters.EngineCounters`: blocks and transactions applied, reorgs and
  their depth, signatures per member, objections), the signature checker counts what it
  verified, the alert book counts raises and clears; none of them imports this module. Only
  two things are observed into ``prometheus_client`` objects as they happen, because their
  distribution matters: each durable store commit's duration (``peerdb_store_commit_seconds``,
  fsync-bound) and each anchor transaction's fee.
* **Computed at scrape time**, in one ``service.read`` (under the service's lock, like every
  read of the engine's state): heads per view, endorsement per member, mempool size and age,
  peers, evidence, side branches, anchoring, active alerts, store size; and the counters above,
  read in the same call so a scrape is one consistent picture.

No loop polls anything for the metrics: a node nobody scrapes does no metrics work beyond the
integer increments and the two observations.

Block-cycle stages: ``peerdb_block_stage_seconds{stage}`` is filled by the block-cycle trace
(:mod:`peerdb.node.trace`, whose ``sink`` the daemon points at :meth:`NodeMetrics.observe_stage`),
one label value per stage of :data:`peerdb.node.trace.STAGES`.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..anchor.planner import AnchorStatus, BatchState
from .health import read_readiness

if TYPE_CHECKING:
    from .service import NodeService

COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Store commit seconds: a synced LMDB commit is two fsyncs (~9 ms on the project's disk, under
1 ms on NVMe); anything above 100 ms is a disk in trouble."""
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Block-cycle stage seconds: from sub-millisecond steps (a signature) to a turn timeout."""
REORG_DEPTH_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 1000)
"""Blocks rolled back by one reorganisation; a healthy consortium sees 1-2 at most."""
VIEWS = ("tentative", "majority", "unanimous_signed", "unanimous", "anchored")


@functools.cache
def _version() -> str:
    """PeerDB's version, looked up once (the package metadata lookup costs ~1 ms of CPU)."""
    try:
        return importlib.metadata.version("peerdb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Snapshot:
    """Everything a scrape exposes besides the live histograms, read in one engine read."""

    member: str
    consortium: str
    heads: dict[str, int]
    final_height: int
    up_to_date: bool
    endorsed: dict[str, int]
    """Eligible member -> its endorsement height."""
    excluded: list[str]
    evidence: int
    side_branches: int
    mempool: int
    mempool_age_s: float
    peers: dict[str, bool]
    counters: dict[str, Any]
    verified: int
    alerts_active: dict[str, int]
    alerts_raised: dict[str, int]
    alerts_cleared: dict[str, int]
    store_file_bytes: int
    store_used_bytes: int
    anchor_pending_age_s: float
    ready: bool = False
    anchor_batches: dict[str, int] = field(default_factory=dict)
    anchor_confirmations: int | None = None


def read_snapshot(service: NodeService, anchor_status: Callable[[], AnchorStatus] | None) -> Snapshot:
    """The scrape's picture of the node; call through ``service.read`` (under the lock)."""
    engine = service.engine
    tree = engine.tree
    heads = engine.heads()
    now_ms = service.clock_ms()
    eligible = tree.eligible()
    counters = engine.counters
    pending_age = 0.0
    if heads.tentative > heads.anchored:
        oldest = tree.best_chain_hash(heads.anchored + 1)
        if oldest is not None:
            pending_age = max(0.0, (now_ms - tree.header(oldest).time_ms) / 1000)
    stats = engine.store.stats()
    active: dict[str, int] = {}
    for alert in service.alerts.snapshot():
        active[alert["kind"]] = active.get(alert["kind"], 0) + 1
    snap = Snapshot(
        member=engine.me, consortium=engine.consortium.name,
        heads={"tentative": heads.tentative, "majority": heads.majority,
               "unanimous_signed": heads.unanimous_signed, "unanimous": heads.unanimous,
               "anchored": heads.anchored},
        final_height=tree.final.height, up_to_date=heads.unanimous == heads.tentative,
        endorsed={m: tree.endorsement_height(m) for m in eligible},
        excluded=sorted(tree.culprits), evidence=len(engine.evidence), side_branches=len(tree.side_tips()),
        mempool=len(engine.mempool), mempool_age_s=engine.mempool.oldest_age(),
        peers={m: service.is_up(m) for m in engine.current.member_names if m != engine.me},
        counters={"blocks": counters.blocks_applied, "txs": counters.txs_applied, "reorgs": counters.reorgs,
                  "reorg_depths": dict(counters.reorg_depths), "signatures": dict(counters.signatures),
                  "objections": dict(counters.objections)},
        verified=engine.verifier.checked,
        alerts_active=active, alerts_raised=dict(service.alerts.raised_total),
        alerts_cleared=dict(service.alerts.cleared_total),
        store_file_bytes=stats["file_bytes"], store_used_bytes=stats["used_bytes"],
        anchor_pending_age_s=pending_age)
    snap.ready = read_readiness(service).ok
    if anchor_status is not None:
        status = anchor_status()
        for batch in status.batches:
            snap.anchor_batches[batch.state.value] = snap.anchor_batches.get(batch.state.value, 0) + 1
        in_flight = [b for b in status.batches if b.state in (BatchState.PENDING, BatchState.CONFIRMED)]
        if in_flight:
            snap.anchor_confirmations = min(in_flight, key=lambda b: b.batch_id).confirmations
    return snap


def _gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, labels=None if value is not None else list(labels))


def _counter(name: str, doc: str, value: float | None = None, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value, labels=None if value is not None else list(labels))


def snapshot_metrics(s: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (names and help texts: docs/operations.md)."""
    info = _gauge("peerdb_info", "This node: member, consortium and PeerDB version (always 1).",
                  labels=("member", "consortium", "version"))
    info.add_metric([s.member, s.consortium, _version()], 1)
    yield info
    heads = _gauge("peerdb_head_height", "Height of the head of each view on this node's best chain.",
                   labels=("view",))
    for view in VIEWS:
        heads.add_metric([view], s.heads[view])
    heads.add_metric(["final"], s.final_height)
    yield heads
    yield _gauge("peerdb_ready", "1 when /readyz would answer ready (its reasons are in /readyz).", 1 if s.ready else 0)
    yield _gauge("peerdb_up_to_date", "1 when the newest block is unanimous (signed by all and anchored).",
                 1 if s.up_to_date else 0)
    endorsed = _gauge("peerdb_member_endorsed_height",
                      "Highest best-chain height each non-excluded member endorses (signed it or a descendant).",
                      labels=("member",))
    missing = _gauge("peerdb_missing_signatures",
                     "Best-chain blocks above each non-excluded member's endorsement: signatures the chain waits for.",
                     labels=("member",))
    for member, height in sorted(s.endorsed.items()):
        endorsed.add_metric([member], height)
        missing.add_metric([member], max(0, s.heads["tentative"] - height))
    yield endorsed
    yield missing
    signatures = _counter("peerdb_signatures", "Block signatures accepted, by signer (any branch, ours included).",
                          labels=("member",))
    for member, n in sorted(s.counters["signatures"].items()):
        signatures.add_metric([member], n)
    yield signatures
    yield _counter("peerdb_blocks_applied", "Blocks applied to the best chain's state (again after a reorg).",
                   s.counters["blocks"])
    yield _counter("peerdb_transactions_applied", "Transactions in the blocks applied.", s.counters["txs"])
    yield _counter("peerdb_reorgs", "Reorganisations: the best chain moved to another branch.", s.counters["reorgs"])
    depths = HistogramMetricFamily("peerdb_reorg_depth_blocks", "Blocks rolled back per reorganisation.")
    buckets, total, count = [], 0, 0
    for bound in REORG_DEPTH_BUCKETS:
        buckets.append((str(bound), sum(n for d, n in s.counters["reorg_depths"].items() if d <= bound)))
    count = sum(s.counters["reorg_depths"].values())
    total = sum(d * n for d, n in s.counters["reorg_depths"].items())
    buckets.append(("+Inf", count))
    depths.add_metric([], buckets, total)
    yield depths
    yield _gauge("peerdb_side_branches", "Side branches (forks that lost) held in the block tree.", s.side_branches)
    yield _gauge("peerdb_evidence", "Double-sign evidence held.", s.evidence)
    yield _gauge("peerdb_excluded_members", "Members excluded for double-signing.", len(s.excluded))
    objections = _counter("peerdb_objections", "Objections recorded, by objecting member (ours included).",
                          labels=("member",))
    for member, n in sorted(s.counters["objections"].items()):
        objections.add_metric([member], n)
    yield objections
    yield _gauge("peerdb_mempool_transactions", "Transactions waiting for a block.", s.mempool)
    yield _gauge("peerdb_mempool_oldest_age_seconds", "How long the longest-waiting transaction has waited.",
                 s.mempool_age_s)
    yield _gauge("peerdb_peers_up", "Other members this node is connected to.", sum(s.peers.values()))
    peer_up = _gauge("peerdb_peer_up", "1 if connected to that member.", labels=("peer",))
    for peer, up in sorted(s.peers.items()):
        peer_up.add_metric([peer], 1 if up else 0)
    yield peer_up
    yield _counter("peerdb_tx_signatures_verified", "Client transaction signatures verified (rate: verify rate).",
                   s.verified)
    yield _gauge("peerdb_anchor_pending_age_seconds",
                 "Age of the oldest best-chain block not anchored yet (0 when all are).", s.anchor_pending_age_s)
    yield _gauge("peerdb_anchor_pending_blocks", "Best-chain blocks not anchored yet.",
                 s.heads["tentative"] - s.heads["anchored"])
    batches = _gauge("peerdb_anchor_batches", "This node's own anchor transactions in flight, by state.",
                     labels=("state",))
    for state in BatchState:
        batches.add_metric([state.value], s.anchor_batches.get(state.value, 0))
    yield batches
    if s.anchor_confirmations is not None:
        yield _gauge("peerdb_anchor_confirmations", "Confirmations of this node's oldest anchor transaction in flight.",
                     s.anchor_confirmations)
    active = _gauge("peerdb_alerts_active", "Alerts raised and not cleared, by kind.", labels=("kind",))
    for kind, n in sorted(s.alerts_active.items()):
        active.add_metric([kind], n)
    yield active
    for name, doc, values in (("peerdb_alerts_raised", "Alerts raised, by kind.", s.alerts_raised),
                              ("peerdb_alerts_cleared", "Alerts cleared, by kind.", s.alerts_cleared)):
        family = _counter(name, doc, labels=("kind",))
        for kind, n in sorted(values.items()):
            family.add_metric([kind], n)
        yield family
    yield _gauge("peerdb_store_file_bytes", "Size of the LMDB data file.", s.store_file_bytes)
    yield _gauge("peerdb_store_used_bytes", "Bytes of the data file in use (the rest is free pages LMDB reuses).",
                 s.store_used_bytes)


class _SnapshotCollector(Collector):
    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        snapshot = self.metrics.snapshot
        return snapshot_metrics(snapshot) if snapshot is not None else ()


class NodeMetrics:
    """One node's registry (not the process-global one, so several nodes fit in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_seconds = Histogram(
            "peerdb_store_commit_seconds", "Duration of each durable store commit (fsync-bound with sync = true).",
            buckets=COMMIT_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram(
            "peerdb_block_stage_seconds", "Duration of each stage of the block cycle, by stage.",
            labelnames=("stage",), buckets=STAGE_BUCKETS, registry=self.registry)
        self.anchor_fees = Counter("peerdb_anchor_fees_satoshis", "Fees paid by this node's anchor transactions.",
                                   registry=self.registry)
        self.anchors_published = Counter("peerdb_anchors_published", "Anchor transactions this node published.",
                                         registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.snapshot: Snapshot | None = None
        self.registry.register(_SnapshotCollector(self))
        self.anchor_status: Callable[[], AnchorStatus] | None = None
        """The node's anchoring state, when it anchors (set by the daemon)."""

    def observe_commit(self, seconds: float) -> None:
        """A store commit's duration (the store's ``on_commit``; any thread)."""
        self.commit_seconds.observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One block-cycle stage's duration (for the block-cycle trace)."""
        self.stage_seconds.labels(stage).observe(seconds)

    def published(self, fee_sat: int) -> None:
        self.anchors_published.inc()
        self.anchor_fees.inc(fee_sat)

    async def scrape(self, service: NodeService) -> bytes:
        """The exposition text: one engine read, then formatting with no await in between, so
        concurrent scrapes cannot mix their snapshots."""
        snapshot = await service.read(read_snapshot, service, self.anchor_status)
        self.snapshot = snapshot
        return generate_latest(self.registry)
