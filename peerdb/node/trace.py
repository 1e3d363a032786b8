"""The block-cycle trace: how long each stage of a transaction's and a block's path takes here.

A transaction written to this member passes through parsing, admission, a block, the views; a
block passes through building, the durable commit and sending (at its proposer) or the inbox,
decoding, validation, the commit and our signature (at a co-signer), and then the views. Every
such stage is timed where it happens and kept in a **histogram per stage** with fixed,
logarithmic buckets (:data:`BUCKET_BOUNDS_MS`, about 9 % wide), so the trace costs a fixed
amount of memory whatever the load, an observation is a bisection and an increment, and two
snapshots subtract into the distribution of the interval between them (what ``bench/run.py``
does per load step). Beside the histograms the trace keeps the **timelines of the last
:data:`TIMELINES` blocks** (when each stage happened, relative to the moment the block was
first seen here), for a person reading one block's life.

Bounds: :data:`STAGES` histograms of ``len(BUCKET_BOUNDS_MS) + 1`` integers each; at most
:data:`TIMELINES` finished and :data:`OPEN_BLOCKS` unfinished block records. Cross-member stages
are measured as round trips on one member's clock (a proposal sent, a co-signer's signature
received), never by comparing two members' clocks.

Thread safety: the trace has its own lock and is the only owner of what it holds. The engine
records into it from the worker thread it runs in; the service and the API from the trio
thread. :attr:`sink` (the metrics' ``observe_stage``) is called outside that lock and must be
thread-safe itself.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

STAGES: dict[str, str] = {
    # A transaction, at the member a client wrote it to (the HTTP write route).
    "tx.parse": "request handler started -> transactions handed to admission (JSON body, base64)",
    "tx.admit_wait": "handed to admission -> its group's engine call starts (the previous group commit, the lock)",
    "tx.admit": "the admission engine call: decode, client signature, forward, durable write when asked",
    "tx.block": "admitted -> in a block stored here (waiting for a turn, proposed, received)",
    "tx.majority": "admitted -> in the majority view",
    "tx.unanimous_signed": "admitted -> in the unanimous_signed view",
    "tx.answer": "the view asked for reached -> the handler returns its answer",
    "tx.total": "request handler started -> the handler returns its answer",
    # A block, at its proposer.
    "pool.wait": "the oldest pooled transaction arrived (or the tip changed, if later) -> the proposal is built",
    "propose.build": "choosing the transactions, applying them, the header",
    "propose.commit": "the durable commit of the block, its guard entry and our signature",
    "propose.send": "commit done -> proposal handed to the network (end of the engine call, hop back)",
    "propose.sig_rtt": "proposal handed to the network -> a co-signer's signature handled here (one per co-signer)",
    # A block, at a co-signer.
    "cosign.queue": "proposal taken from the inbox -> its engine handler starts (thread hop, lock, batch)",
    "cosign.decode": "header and proposer signature checked, body decoded",
    "cosign.validate": "client signatures and state checked against the parent",
    "cosign.commit": "the durable commit of the block, the guard entry and our signature",
    "cosign.send": "commit done -> our signature handed to the network",
    # A block, at every member.
    "block.majority": "block first seen here (built or received) -> majority view",
    "block.unanimous_signed": "block first seen here -> unanimous_signed view",
    # Engine calls (service): the cost of the lock and the worker thread.
    "call.lock": "an engine call waits for the service lock",
    "call.hop": "thread hops of an engine call (to the worker and back), beyond the call itself",
    # Catch-up.
    "catchup.batch": "one catch-up answer: decode, verify, validate and store its blocks (one commit)",
}
"""Every stage the trace knows, with what it measures (also served by ``GET /v1/trace``)."""

BUCKET_RATIO = 2 ** 0.125
"""Each bucket's upper bound is this multiple of the one below: a quantile read from the
histogram is within about 4.5 % of the true value (half a bucket on a log scale)."""
BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(0.005 * BUCKET_RATIO ** k for k in range(int(27 * 8) + 1))
"""Upper bounds in milliseconds, 5 us .. ~671 s: below the cheapest stage, above a turn timeout."""
TIMELINES = 64
"""Finished block timelines kept for ``GET /v1/trace`` (the newest)."""
OPEN_BLOCKS = 256
"""Blocks whose later stages (signatures, views) the trace is still waiting for; the oldest is
dropped beyond this (a block that never reaches a view must not hold memory)."""

BLOCK_VIEWS = ("majority", "unanimous_signed")


class Histogram:
    """Counts per bucket of :data:`BUCKET_BOUNDS_MS` (the last one open), sum and count."""

    __slots__ = ("counts", "total_ms", "count", "max_ms")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKET_BOUNDS_MS) + 1)
        self.total_ms = 0.0
        self.count = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKET_BOUNDS_MS, ms)] += 1
        self.total_ms += ms
        self.count += 1
        if ms > self.max_ms:
            self.max_ms = ms


def quantile_ms(buckets: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile of a histogram given as bucket index -> count (None if empty): the
    geometric middle of the bucket holding it."""
    total = sum(buckets.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            upper = BUCKET_BOUNDS_MS[min(index, len(BUCKET_BOUNDS_MS) - 1)]
            return round(float(upper / BUCKET_RATIO ** 0.5), 4)
    return None  # pragma: no cover - seen reaches total


def summarise(buckets: Mapping[int, int]) -> dict[str, float | int | None]:
    """count, p50 and p99 (ms) of a histogram given as bucket index -> count."""
    return {"count": sum(buckets.values()), "p50_ms": quantile_ms(buckets, 0.5), "p99_ms": quantile_ms(buckets, 0.99)}


@dataclass
class _BlockRecord:
    height: int
    proposer: str
    txs: int
    seen: float
    """Trace-clock time the block was first seen here (its build began, or it was taken in)."""
    own: bool
    events: dict[str, float] = field(default_factory=dict)
    """Stage -> trace-clock time it happened."""
    sent: float | None = None
    views: set[str] = field(default_factory=set)

    def timeline(self, block_hash: bytes) -> dict[str, Any]:
        return {"hash": block_hash.hex(), "height": self.height, "proposer": self.proposer, "txs": self.txs,
                "own": self.own,
                "events_ms": {k: round((t - self.seen) * 1000, 3) for k, t in sorted(self.events.items(),
                                                                                     key=lambda kv: kv[1])}}


class BlockTrace:
    """The stage histograms and block timelines of one node (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        """Seconds on a monotonic clock (shared with the mempool's arrival times)."""
        self.sink: Callable[[str, float], None] | None = None
        """Also told every observation (stage, seconds): the Prometheus histogram, when metrics are on."""
        self._lock = threading.Lock()
        self._hist: dict[str, Histogram] = {name: Histogram() for name in STAGES}
        self._open: OrderedDict[bytes, _BlockRecord] = OrderedDict()
        self._done: OrderedDict[bytes, _BlockRecord] = OrderedDict()

    def now(self) -> float:
        return self.clock()

    # --- observations ----------------------------------------------------------------------------

    def observe(self, stage: str, seconds: float) -> None:
        """One duration of ``stage`` (a name from :data:`STAGES`)."""
        ms = max(0.0, seconds) * 1000
        with self._lock:
            self._hist[stage].add(ms)
        sink = self.sink
        if sink is not None:
            sink(stage, ms / 1000)

    def since(self, stage: str, start: float) -> float:
        """Observe ``stage`` as the time from ``start`` to now; returns now."""
        now = self.clock()
        self.observe(stage, now - start)
        return now

    # --- blocks ----------------------------------------------------------------------------------

    def block_seen(self, block_hash: bytes, height: int, proposer: str, txs: int, own: bool,
                   at: float | None = None) -> None:
        """A block is first seen here (``own``: we are building it), at ``at`` (default: now)."""
        with self._lock:
            if block_hash in self._open or block_hash in self._done:
                return
            self._open[block_hash] = _BlockRecord(height, proposer, txs, self.clock() if at is None else at, own)
            while len(self._open) > OPEN_BLOCKS:
                old_hash, old = self._open.popitem(last=False)
                self._finish(old_hash, old)

    def block_event(self, block_hash: bytes, stage: str, at: float | None = None) -> None:
        """``stage`` happened to a block being traced (a timeline entry; no histogram)."""
        with self._lock:
            record = self._open.get(block_hash)
            if record is not None:
                record.events.setdefault(stage, self.clock() if at is None else at)

    def proposal_sent(self, block_hash: bytes) -> None:
        """Our proposal left for the network: ``propose.send`` and the start of the round trips."""
        now = self.clock()
        with self._lock:
            record = self._open.get(block_hash)
            if record is None or record.sent is not None:
                return
            record.sent = now
            record.events["sent"] = now
            committed = record.events.get("committed")
        if committed is not None:
            self.observe("propose.send", now - committed)

    def signature_sent(self, block_hash: bytes) -> None:
        """Our co-signature left for the network: ``cosign.send``."""
        now = self.clock()
        with self._lock:
            record = self._open.get(block_hash)
            if record is None or record.own or "sig_sent" in record.events:
                return
            record.events["sig_sent"] = now
            committed = record.events.get("committed")
        if committed is not None:
            self.observe("cosign.send", now - committed)

    def signature_received(self, block_hash: bytes, member: str) -> None:
        """A peer's signature on a block was handled here; a round trip if we proposed it."""
        now = self.clock()
        with self._lock:
            record = self._open.get(block_hash)
            if record is None:
                return
            record.events.setdefault(f"sig:{member}", now)
            sent = record.sent
        if sent is not None:
            self.observe("propose.sig_rtt", now - sent)

    def heads_moved(self, heights: Mapping[str, int], on_best_chain: Callable[[bytes], bool]) -> None:
        """After an engine change: blocks that reached a view (``heights``: view -> head height)."""
        now = self.clock()
        reached: list[tuple[str, float]] = []
        with self._lock:
            if not self._open:
                return
            for block_hash, record in list(self._open.items()):
                for view in BLOCK_VIEWS:
                    if view not in record.views and heights[view] >= record.height and on_best_chain(block_hash):
                        record.views.add(view)
                        record.events[view] = now
                        reached.append((f"block.{view}", now - record.seen))
                if len(record.views) == len(BLOCK_VIEWS):
                    del self._open[block_hash]
                    self._finish(block_hash, record)
        for stage, seconds in reached:
            self.observe(stage, seconds)

    def _finish(self, block_hash: bytes, record: _BlockRecord) -> None:
        self._done[block_hash] = record
        while len(self._done) > TIMELINES:
            self._done.popitem(last=False)

    # --- reading ---------------------------------------------------------------------------------

    def snapshot(self, blocks: int = TIMELINES) -> dict[str, Any]:
        """Every stage's histogram (non-empty buckets as ``[index, count]``), summary and meaning,
        and the newest ``blocks`` timelines (finished first, then open)."""
        with self._lock:
            stages = {}
            for name, hist in self._hist.items():
                buckets = {i: n for i, n in enumerate(hist.counts) if n}
                stages[name] = {"meaning": STAGES[name], **summarise(buckets),
                                "mean_ms": round(hist.total_ms / hist.count, 4) if hist.count else None,
                                "max_ms": round(hist.max_ms, 4) if hist.count else None,
                                "buckets": [[i, n] for i, n in sorted(buckets.items())]}
            records = list(self._done.items()) + list(self._open.items())
            timelines = [r.timeline(h) for h, r in records[-blocks:]] if blocks > 0 else []
        return {"clock": "monotonic seconds, this node only",
                "bucket_bounds_ms": {"first": BUCKET_BOUNDS_MS[0], "ratio": BUCKET_RATIO,
                                     "count": len(BUCKET_BOUNDS_MS)},
                "bounds": {"stages": len(STAGES), "timelines": TIMELINES, "open_blocks": OPEN_BLOCKS},
                "stages": stages, "blocks": timelines}

    def open_blocks(self) -> int:
        with self._lock:
            return len(self._open)

    def count(self, stage: str) -> int:
        with self._lock:
            return self._hist[stage].count


def bucket_counts(snapshot: Mapping[str, Any]) -> dict[str, dict[int, int]]:
    """Stage -> bucket index -> count, from a :meth:`BlockTrace.snapshot` (or its JSON)."""
    return {name: {int(i): int(n) for i, n in stage["buckets"]} for name, stage in snapshot["stages"].items()}


def difference(after: Mapping[str, Mapping[int, int]], before: Mapping[str, Mapping[int, int]]) -> dict[str, dict[int, int]]:
    """The observations made between two :func:`bucket_counts` of one node."""
    out: dict[str, dict[int, int]] = {}
    for name, counts in after.items():
        old = before.get(name, {})
        diff = {i: n - old.get(i, 0) for i, n in counts.items() if n - old.get(i, 0) > 0}
        out[name] = diff
    return out
