"""The anchoring schedule as a pure state machine: no I/O, no clock (``now_ms`` is passed in).

The service (:mod:`.service`) feeds it block hashes and what the Bitcoin node says, and carries
out what it decides; everything about *when* to anchor, *what* goes in a batch and *what state*
to show lives here, so it is tested without a node or a clock.

Rules:

- Block hashes wait in a queue. When an anchor is **due**, everything waiting (and everything of
  failed batches) goes under **one** Merkle root in **one** Bitcoin transaction, whatever the
  block rate: the number of transactions per hour is bounded by the interval, not the load.
- Due means something is waiting and either ``interval_ms`` has passed since the last published
  anchor (the first anchor goes out at once) or ``interval_blocks`` hashes are waiting; a failed
  batch is retried after its backoff regardless of the interval, and while a failure's backoff
  runs nothing new is published (it would most likely fail the same way).
- A transaction missing from both the best chain and the mempool is re-anchored only once it
  has stayed missing for ``drop_grace_ms`` (see :data:`DEFAULT_DROP_GRACE_MS`).
- Batch states (the transitions table is :data:`TRANSITIONS`):

  ======================  ===================================================================
  ``publishing``          taken from the queue, the service is funding and sending the tx
  ``pending``             tx in the mempool or a block, fewer than ``confirmations`` deep
  ``confirmed``           deep enough; the service builds and hands over the proofs
  ``failed``              publishing failed (node down, fee over budget, ...) or Bitcoin
                          dropped the tx (a reorg it did not survive); retried after backoff
  ======================  ===================================================================

  A confirmed batch whose proofs are delivered leaves the planner (``delivered``).
- A reason is kept with every state that needs a person's attention, and ``since_ms`` with each,
  so statuses and alerts can say "anchor for heights 100-140 pending 25 min: node unreachable".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from peerdb.core.errors import ConfigError, LocalError

from .anchortx import anchor_payload
from .hashes import HASH_LEN
from .proof import batch_root

DEFAULT_INTERVAL_MS = 10 * 60 * 1000
"""One anchor per ten minutes: Bitcoin's block interval, so at most one anchor per block."""

DEFAULT_CONFIRMATIONS = 6
"""Bitcoin's customary depth beyond which a reorg is considered practically impossible."""

DEFAULT_MAX_FEE_SAT = 50_000
"""Fee budget per anchor: a ~200 vB transaction at 250 sat/vB, a busy-mempool rate."""

DEFAULT_RETRY_BACKOFF_MS = 5_000
"""First retry after a failure: long enough not to hammer a restarting node."""

DEFAULT_MAX_RETRY_BACKOFF_MS = 10 * 60 * 1000
"""Backoff doubles per attempt up to this, so a long outage is retried every ten minutes."""

DEFAULT_DROP_GRACE_MS = 60_000
"""How long a transaction must be missing from both the best chain and the mempool before it is
re-anchored. A node's wallet learns of blocks asynchronously, so a transaction that just left the
mempool for a block can look missing for a moment; a minute is small next to Bitcoin's ten-minute
blocks and avoids paying for a second anchor."""

MAX_REASON_CHARS = 300
"""Reasons come from exceptions (possibly node error text); trimmed to a readable status line."""


class BatchState(enum.Enum):
    PUBLISHING = "publishing"
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"


TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.PUBLISHING: frozenset({BatchState.PENDING, BatchState.FAILED}),
    BatchState.PENDING: frozenset({BatchState.PENDING, BatchState.CONFIRMED, BatchState.FAILED}),
    BatchState.CONFIRMED: frozenset({BatchState.CONFIRMED, BatchState.PENDING, BatchState.FAILED}),
    BatchState.FAILED: frozenset(),
}
"""Allowed moves; a failed batch is not moved but merged into the next batch when retried."""


class Observation(enum.Enum):
    """What an observation of the anchor transaction changed."""

    UNCHANGED = "unchanged"
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"
    DROPPED = "dropped"


class PlannerError(LocalError):
    """The service drove the planner against its rules (a bug in the caller)."""


@dataclass(frozen=True)
class AnchorItem:
    """A PeerDB block to anchor; the height is only for statuses ("heights 100-140")."""

    height: int
    block_hash: bytes

    def __post_init__(self) -> None:
        if type(self.block_hash) is not bytes or len(self.block_hash) != HASH_LEN:
            raise ValueError(f"block_hash must be {HASH_LEN} bytes")
        if type(self.height) is not int or self.height < 0:
            raise ValueError("height must be a non-negative integer")


@dataclass(frozen=True)
class AnchorPolicy:
    """When to anchor, how deep to wait, what to pay. Times in milliseconds."""

    interval_ms: int | None = DEFAULT_INTERVAL_MS
    interval_blocks: int | None = None
    confirmations: int = DEFAULT_CONFIRMATIONS
    max_fee_sat: int = DEFAULT_MAX_FEE_SAT
    retry_backoff_ms: int = DEFAULT_RETRY_BACKOFF_MS
    max_retry_backoff_ms: int = DEFAULT_MAX_RETRY_BACKOFF_MS
    drop_grace_ms: int = DEFAULT_DROP_GRACE_MS

    def __post_init__(self) -> None:
        if self.interval_ms is None and self.interval_blocks is None:
            raise ConfigError("anchor: set interval_ms (seconds) and/or interval_blocks")
        if self.interval_ms is not None and self.interval_ms < 0:
            raise ConfigError(f"anchor.interval_ms: {self.interval_ms} is negative")
        if self.interval_blocks is not None and self.interval_blocks < 1:
            raise ConfigError(f"anchor.interval_blocks: {self.interval_blocks} must be at least 1")
        if self.confirmations < 1:
            raise ConfigError(f"anchor.confirmations: {self.confirmations} must be at least 1")
        if self.max_fee_sat < 0:
            raise ConfigError(f"anchor.max_fee_sat: {self.max_fee_sat} is negative")
        if not 0 <= self.retry_backoff_ms <= self.max_retry_backoff_ms:
            raise ConfigError("anchor.retry_backoff_ms: must be between 0 and max_retry_backoff_ms")
        if self.drop_grace_ms < 0:
            raise ConfigError(f"anchor.drop_grace_ms: {self.drop_grace_ms} is negative")

    def backoff_ms(self, attempts: int) -> int:
        """Delay before retry number ``attempts`` (1 = first failure): doubling, capped."""
        doublings = min(max(attempts - 1, 0), 30)
        return min(self.max_retry_backoff_ms, self.retry_backoff_ms << doublings)


@dataclass(frozen=True)
class PublishPlan:
    """What the service must publish now: ``payload`` in one OP_RETURN output."""

    batch_id: int
    items: tuple[AnchorItem, ...]
    root: bytes
    payload: bytes

    @property
    def block_hashes(self) -> tuple[bytes, ...]:
        return tuple(item.block_hash for item in self.items)


@dataclass(frozen=True)
class BatchStatus:
    """A snapshot of one batch, for the service, statuses and alerts."""

    batch_id: int
    state: BatchState
    items: tuple[AnchorItem, ...]
    since_ms: int
    """When the batch entered its current state."""
    first_queued_ms: int
    """When its oldest block hash started waiting: how long those blocks have been unanchored."""
    attempts: int
    txid: str | None = None
    raw_tx: bytes | None = None
    fee_sat: int | None = None
    confirmations: int = 0
    reason: str | None = None
    retry_at_ms: int | None = None

    @property
    def block_hashes(self) -> tuple[bytes, ...]:
        return tuple(item.block_hash for item in self.items)

    @property
    def heights(self) -> tuple[int, int]:
        hs = [item.height for item in self.items]
        return min(hs), max(hs)

    def describe(self, now_ms: int, confirmations_needed: int) -> str:
        lo, hi = self.heights
        what = f"anchor for height {lo}" if lo == hi else f"anchor for heights {lo}-{hi}"
        text = f"{what} {self.state.value} {format_duration(now_ms - self.first_queued_ms)}"
        if self.state in (BatchState.PENDING, BatchState.CONFIRMED):
            text += f" ({max(self.confirmations, 0)}/{confirmations_needed} confirmations, tx {self.txid})"
        if self.reason:
            text += f": {self.reason}"
        if self.state is BatchState.FAILED and self.retry_at_ms is not None:
            text += f" (retry in {format_duration(max(self.retry_at_ms - now_ms, 0))})"
        return text


@dataclass(frozen=True)
class AnchorStatus:
    """The anchoring state as a whole, for ``peerdb status`` and alerts."""

    now_ms: int
    state: str
    """``failed`` > ``pending`` > ``waiting`` > ``idle``: the most urgent state of any batch."""
    waiting: tuple[AnchorItem, ...]
    waiting_since_ms: int | None
    batches: tuple[BatchStatus, ...]
    last_anchored: BatchStatus | None
    reason: str | None
    confirmations_needed: int

    def lines(self) -> list[str]:
        out = [b.describe(self.now_ms, self.confirmations_needed) for b in self.batches]
        if self.waiting and self.waiting_since_ms is not None:
            lo = min(i.height for i in self.waiting)
            hi = max(i.height for i in self.waiting)
            span = f"height {lo}" if lo == hi else f"heights {lo}-{hi}"
            out.append(f"{span} waiting for the next anchor {format_duration(self.now_ms - self.waiting_since_ms)}")
        return out


def format_duration(ms: int) -> str:
    seconds = max(ms, 0) // 1000
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _trim(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


@dataclass
class _Batch:
    batch_id: int
    state: BatchState
    items: tuple[AnchorItem, ...]
    since_ms: int
    first_queued_ms: int
    attempts: int
    txid: str | None = None
    raw_tx: bytes | None = None
    fee_sat: int | None = None
    confirmations: int = 0
    reason: str | None = None
    retry_at_ms: int | None = None
    missing_since_ms: int | None = None

    def snapshot(self) -> BatchStatus:
        return BatchStatus(
            self.batch_id, self.state, self.items, self.since_ms, self.first_queued_ms, self.attempts,
            self.txid, self.raw_tx, self.fee_sat, self.confirmations, self.reason, self.retry_at_ms,
        )


@dataclass
class AnchorPlanner:
    """The anchoring state machine. All methods are synchronous and do no I/O."""

    policy: AnchorPolicy
    _queue: list[AnchorItem] = field(default_factory=list)
    _queued_ms: dict[bytes, int] = field(default_factory=dict)
    _batches: dict[int, _Batch] = field(default_factory=dict)
    _live: set[bytes] = field(default_factory=set)
    """Every hash queued or in a batch, so that adding is O(1) per hash at any backlog."""
    _next_id: int = 1
    _last_publish_ms: int | None = None
    _last_anchored: BatchStatus | None = None

    # -- input --------------------------------------------------------------------------------

    def add(self, items: Iterable[AnchorItem], now_ms: int) -> int:
        """Queue block hashes; ones already queued or in a live batch are ignored. Returns how many were new."""
        added = 0
        for item in items:
            if item.block_hash in self._live:
                continue
            self._live.add(item.block_hash)
            self._queue.append(item)
            self._queued_ms[item.block_hash] = now_ms
            added += 1
        return added

    # -- scheduling ---------------------------------------------------------------------------

    def _failed(self) -> list[_Batch]:
        return [b for b in self._batches.values() if b.state is BatchState.FAILED]

    def due(self, now_ms: int) -> bool:
        """Whether the service should publish an anchor now."""
        if any(b.state is BatchState.PUBLISHING for b in self._batches.values()):
            return False
        failed = self._failed()
        if failed:
            return any(b.retry_at_ms is None or b.retry_at_ms <= now_ms for b in failed)
        if not self._queue:
            return False
        policy = self.policy
        if policy.interval_blocks is not None and len(self._queue) >= policy.interval_blocks:
            return True
        if policy.interval_ms is not None:
            return self._last_publish_ms is None or now_ms - self._last_publish_ms >= policy.interval_ms
        return False

    def next_due_ms(self, now_ms: int) -> int | None:
        """The earliest time at which :meth:`due` can become true without new input, if any."""
        if self.due(now_ms):
            return now_ms
        if any(b.state is BatchState.PUBLISHING for b in self._batches.values()):
            return None
        retries = [b.retry_at_ms for b in self._failed() if b.retry_at_ms is not None]
        if retries:
            return min(retries)
        if self._queue and self.policy.interval_ms is not None and self._last_publish_ms is not None:
            return self._last_publish_ms + self.policy.interval_ms
        return None

    def start_batch(self, now_ms: int) -> PublishPlan:
        """Take everything waiting (failed batches first, then the queue) into one new batch."""
        if not self.due(now_ms):
            raise PlannerError("start_batch: no anchor is due")
        failed = sorted(self._failed(), key=lambda b: b.batch_id)
        items = tuple(i for b in failed for i in b.items) + tuple(self._queue)
        first_queued = min(
            [b.first_queued_ms for b in failed] + [self._queued_ms[i.block_hash] for i in self._queue]
        )
        attempts = max([b.attempts for b in failed], default=0) + 1
        for b in failed:
            del self._batches[b.batch_id]
        self._queue.clear()
        self._queued_ms.clear()
        batch = _Batch(self._next_id, BatchState.PUBLISHING, items, now_ms, first_queued, attempts)
        self._next_id += 1
        self._batches[batch.batch_id] = batch
        root = batch_root([i.block_hash for i in items])
        return PublishPlan(batch.batch_id, items, root, anchor_payload(root))

    # -- results of publishing ----------------------------------------------------------------

    def _get(self, batch_id: int, *states: BatchState) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise PlannerError(f"batch {batch_id}: unknown")
        if batch.state not in states:
            raise PlannerError(f"batch {batch_id}: is {batch.state.value}, expected {'/'.join(s.value for s in states)}")
        return batch

    def _move(self, batch: _Batch, state: BatchState, now_ms: int) -> None:
        if state not in TRANSITIONS[batch.state]:
            raise PlannerError(f"batch {batch.batch_id}: {batch.state.value} -> {state.value} is not allowed")
        if state is not batch.state:
            batch.since_ms = now_ms
        batch.state = state

    def published(self, batch_id: int, txid: str, raw_tx: bytes, fee_sat: int, now_ms: int) -> None:
        batch = self._get(batch_id, BatchState.PUBLISHING)
        self._move(batch, BatchState.PENDING, now_ms)
        batch.txid, batch.raw_tx, batch.fee_sat = txid, raw_tx, fee_sat
        batch.confirmations, batch.reason, batch.retry_at_ms = 0, None, None
        self._last_publish_ms = now_ms

    def publish_failed(self, batch_id: int, reason: str, now_ms: int) -> None:
        batch = self._get(batch_id, BatchState.PUBLISHING)
        self._fail(batch, reason, now_ms, now_ms + self.policy.backoff_ms(batch.attempts))

    def _fail(self, batch: _Batch, reason: str, now_ms: int, retry_at_ms: int) -> None:
        self._move(batch, BatchState.FAILED, now_ms)
        batch.reason = _trim(reason)
        batch.retry_at_ms = retry_at_ms

    # -- observing the transaction ------------------------------------------------------------

    def tracked(self) -> list[BatchStatus]:
        """Batches whose transaction the service must keep watching (pending and confirmed)."""
        return [
            b.snapshot() for b in self._batches.values()
            if b.state in (BatchState.PENDING, BatchState.CONFIRMED)
        ]

    def confirmed(self) -> list[BatchStatus]:
        """Batches deep enough whose proofs the service should build and deliver."""
        return [b.snapshot() for b in self._batches.values() if b.state is BatchState.CONFIRMED]

    def observe(self, batch_id: int, *, confirmations: int, in_mempool: bool, now_ms: int) -> Observation:
        """Record what the node says about the batch's transaction.

        ``confirmations`` as Bitcoin Core reports them (<= 0: not in the best chain). Not in the
        best chain and not in the mempool for ``drop_grace_ms`` means Bitcoin dropped it (a reorg,
        an eviction, a conflict): the batch fails with retry now, which re-anchors its blocks.
        """
        batch = self._get(batch_id, BatchState.PENDING, BatchState.CONFIRMED)
        was = batch.state
        batch.confirmations = confirmations
        batch.reason = None
        if confirmations <= 0 and not in_mempool:
            if batch.missing_since_ms is None:
                batch.missing_since_ms = now_ms
            if now_ms - batch.missing_since_ms >= self.policy.drop_grace_ms:
                self._fail(batch, f"bitcoin tx {batch.txid} dropped from the best chain and the mempool; "
                                  "re-anchoring", now_ms, now_ms)
                return Observation.DROPPED
            batch.reason = (f"bitcoin tx {batch.txid} is in neither the best chain nor the mempool; re-anchoring "
                            f"if still missing after {format_duration(self.policy.drop_grace_ms)}")
            self._move(batch, BatchState.PENDING, now_ms)
            return Observation.UNCHANGED if was is BatchState.PENDING else Observation.UNCONFIRMED
        batch.missing_since_ms = None
        if confirmations >= self.policy.confirmations:
            self._move(batch, BatchState.CONFIRMED, now_ms)
            return Observation.UNCHANGED if was is BatchState.CONFIRMED else Observation.CONFIRMED
        self._move(batch, BatchState.PENDING, now_ms)
        return Observation.UNCHANGED if was is BatchState.PENDING else Observation.UNCONFIRMED

    def observe_failed(self, batch_id: int, reason: str, now_ms: int) -> None:
        """The node could not be asked: the batch keeps its state, with the reason shown."""
        batch = self._get(batch_id, BatchState.PENDING, BatchState.CONFIRMED)
        batch.reason = _trim(reason)

    def proofs_failed(self, batch_id: int, reason: str, now_ms: int) -> None:
        """Building proofs for a confirmed batch failed; it stays confirmed and is tried again."""
        batch = self._get(batch_id, BatchState.CONFIRMED)
        batch.reason = _trim(reason)

    def delivered(self, batch_id: int, now_ms: int) -> None:
        """The proofs of a confirmed batch reached the host: the batch is done."""
        batch = self._get(batch_id, BatchState.CONFIRMED)
        batch.reason = None
        del self._batches[batch_id]
        self._live.difference_update(i.block_hash for i in batch.items)
        self._last_anchored = replace(batch.snapshot(), since_ms=now_ms)

    # -- status -------------------------------------------------------------------------------

    def batch(self, batch_id: int) -> BatchStatus | None:
        batch = self._batches.get(batch_id)
        return None if batch is None else batch.snapshot()

    def status(self, now_ms: int) -> AnchorStatus:
        batches = tuple(b.snapshot() for b in sorted(self._batches.values(), key=lambda b: b.batch_id))
        states = {b.state for b in batches}
        if BatchState.FAILED in states:
            state = "failed"
        elif states:
            state = "pending"
        elif self._queue:
            state = "waiting"
        else:
            state = "idle"
        reasons = [b.reason for b in sorted(batches, key=lambda b: b.since_ms) if b.reason]
        return AnchorStatus(
            now_ms=now_ms,
            state=state,
            waiting=tuple(self._queue),
            waiting_since_ms=min(self._queued_ms.values()) if self._queued_ms else None,
            batches=batches,
            last_anchored=self._last_anchored,
            reason=reasons[-1] if reasons else None,
            confirmations_needed=self.policy.confirmations,
        )
