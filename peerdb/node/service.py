"""The trio layer around the engine: timers, the inbox, the outbox, waiting clients, alerts.

Every engine call goes through :meth:`NodeService.call`, which holds one lock (the engine is
single-threaded by design) and, in production, runs the call in a worker thread because store
writes fsync; tests on trio's memory streams and autojump clock run calls inline so time only
moves when every task waits. After each call the outbox is flushed to the network and waiters
are woken.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from ..core.alerts import Alert
from ..core.chain import View
from ..core.errors import LocalError, ProtocolError
from .engine import Engine, MempoolFull, SubmitResult
from .messages import AnchorMsg, Blocks, EvidenceMsg, GetBlocks, ObjectionMsg, Proposal, Sigs, Status, Txs, from_wire, to_wire

log = logging.getLogger("peerdb.node")

T = TypeVar("T")

ALERT_REPEAT_MS = 60_000
"""A standing alert is logged again this often, so it cannot scroll away unnoticed."""


class Network(Protocol):
    """What the service needs from :mod:`peerdb.net` (real TLS or in-memory)."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...
    def send(self, peer: str, message: Any) -> None: ...
    def broadcast(self, message: Any) -> None: ...
    def peer_state(self, name: str) -> Any: ...
    @property
    def incoming(self) -> trio.MemoryReceiveChannel[tuple[str, Any]]: ...


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def trio_clock_ms() -> int:
    """For tests under trio's MockClock: 'wall' time is trio's virtual time."""
    return int(trio.current_time() * 1000)


@dataclass
class AlertBook:
    """Debounces alert conditions into raised alerts, repeats and clears them, and logs each step."""

    grace_ms: int
    first_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    active: dict[tuple[str, str], tuple[Alert, int, int]] = field(default_factory=dict)  # alert, since, last log
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, conditions: list[Alert], now_ms: int) -> list[Alert]:
        """Returns alerts newly raised (for webhooks/commands)."""
        raised = []
        keys = {a.key for a in conditions}
        for key in list(self.first_seen):
            if key not in keys:
                del self.first_seen[key]
        for key in list(self.active):
            if key not in keys:
                alert, since, _ = self.active.pop(key)
                log.warning("alert cleared: %s (%s) after %.1f s", alert.kind, alert.subject, (now_ms - since) / 1000)
                self.history.append({"kind": alert.kind, "subject": alert.subject, "cleared_ms": now_ms})
        for alert in conditions:
            since = self.first_seen.setdefault(alert.key, now_ms)
            if alert.key in self.active:
                _, since_raised, last = self.active[alert.key]
                if now_ms - last >= ALERT_REPEAT_MS:
                    log.warning("ALERT still active: %s: %s", alert.kind, alert.message)
                    last = now_ms
                self.active[alert.key] = (alert, since_raised, last)
            elif now_ms - since >= self.grace_ms or alert.kind == "double_sign":
                self.active[alert.key] = (alert, since, now_ms)
                log.warning("ALERT %s: %s", alert.kind, alert.message)
                raised.append(alert)
        del self.history[:-100]
        return raised

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"kind": a.kind, "message": a.message, "subject": a.subject, "since_ms": since,
                 "details": a.details} for a, since, _ in self.active.values()]


@dataclass
class _PendingSubmit:
    raws: list[bytes]
    durable: bool
    done: trio.Event = field(default_factory=trio.Event)
    result: SubmitResult | MempoolFull | None = None


class NodeService:
    def __init__(self, engine: Engine, network: Network, *, clock_ms: Callable[[], int] = wall_clock_ms,
                 offload: bool = True, on_alert: Callable[[Alert], Awaitable[None]] | None = None,
                 extra_status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.network = network
        self.clock_ms = clock_ms
        self.offload = offload
        self.on_alert = on_alert
        self.extra_status = extra_status
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self.alerts = AlertBook(grace_ms=engine.consortium.params.turn_timeout_ms)
        self.started_ms = clock_ms()
        self.handlers: dict[type, Callable[[str, Any, int], None]] = {
            Proposal: engine.on_proposal,
            Sigs: engine.on_sigs,
            EvidenceMsg: engine.on_evidence,
            ObjectionMsg: engine.on_objection,
            Txs: engine.on_txs,
            GetBlocks: lambda peer, msg, now: engine.on_get_blocks(peer, msg),
            Blocks: engine.on_blocks,
            Status: engine.on_status,
        }
        self.anchor_handler: Callable[[str, AnchorMsg, int], None] | None = None
        self._admissions: list[_PendingSubmit] = []
        self._admission_wakeup = trio.Event()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            if self.offload:
                result = await trio.to_thread.run_sync(fn, *args)
            else:
                result = fn(*args)
            self._flush()
        return result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short read inline (no thread) while no engine call is mutating state."""
        async with self._lock:
            return fn(*args)

    def _flush(self) -> None:
        for out in self.engine.take_outbox():
            wire = to_wire(out.msg)
            if out.to is None:
                self.network.broadcast(wire)
            else:
                self.network.send(out.to, wire)
        self._changed.set()
        self._changed = trio.Event()

    def is_up(self, peer: str) -> bool:
        return bool(self.network.peer_state(peer).connected)

    async def wait_changed(self, deadline: float) -> None:
        """Wait until the engine changed or the trio-time ``deadline`` passed."""
        event = self._changed
        with trio.move_on_at(deadline):
            await event.wait()

    # --- services ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.network.run)
            nursery.start_soon(self._inbox_loop)
            nursery.start_soon(self._turn_loop)
            nursery.start_soon(self._status_loop)
            nursery.start_soon(self._alert_loop)
            nursery.start_soon(self._admission_loop)
            log.info("node %s running: tip height %d", self.engine.me, self.engine.tree.best_tip.height)
            task_status.started()

    async def _inbox_loop(self) -> None:
        async for peer, raw in self.network.incoming:
            try:
                msg = from_wire(raw)
            except ProtocolError as exc:
                log.warning("rejected malformed message from %s: %s", peer, exc)
                continue
            if isinstance(msg, AnchorMsg):
                if self.anchor_handler is not None:
                    await self.call(self.anchor_handler, peer, msg, self.clock_ms())
                continue
            handler = self.handlers[type(msg)]
            await self.call(handler, peer, msg, self.clock_ms())

    def _trio_deadline(self, deadline_ms: int, now_ms: int) -> float:
        return trio.current_time() + max(0, deadline_ms - now_ms) / 1000

    async def _turn_loop(self) -> None:
        while True:
            now = self.clock_ms()
            await self.call(self.engine.maybe_propose, now)
            deadline = self.engine.next_deadline_ms(now)
            await self.wait_changed(self._trio_deadline(deadline, now))

    async def _status_loop(self) -> None:
        interval = self.engine.consortium.params.heartbeat_ms / 1000
        while True:
            await trio.sleep(interval)
            status = await self.read(self.engine.status_message)
            self.network.broadcast(to_wire(status))

    async def _alert_loop(self) -> None:
        interval = self.engine.consortium.params.heartbeat_ms / 1000
        while True:
            await trio.sleep(interval)
            now = self.clock_ms()
            conditions = await self.read(self.engine.alert_conditions, now, self.is_up)
            if self.extra_status is not None:
                conditions.extend(self.extra_status().get("alerts", []))
            for alert in self.alerts.update(conditions, now):
                if self.on_alert is not None:
                    await self.on_alert(alert)

    # --- client operations ---------------------------------------------------------------------

    async def submit(self, raws: list[bytes], durable: bool = True) -> SubmitResult:
        """Hand a client's transactions to the admission task and wait for its group commit
        (``durable`` False: see :meth:`Engine.submit_many`)."""
        pending = _PendingSubmit(raws, durable)
        self._admissions.append(pending)
        self._admission_wakeup.set()
        await pending.done.wait()
        if isinstance(pending.result, MempoolFull):
            raise pending.result
        if pending.result is None:
            raise LocalError("the node stopped while admitting these transactions")
        return pending.result

    async def _admission_loop(self) -> None:
        while True:
            await self._admission_wakeup.wait()
            self._admission_wakeup = trio.Event()
            batch, self._admissions = self._admissions, []
            if not batch:
                continue
            try:
                results = await self.call(self.engine.submit_many, [p.raws for p in batch], None, self.clock_ms(),
                                          [p.durable for p in batch])
                for p, result in zip(batch, results):
                    p.result = result
            finally:
                for p in batch:
                    p.done.set()  # on a crash the waiters see no result; the node is stopping

    def tx_level(self, txid: bytes) -> tuple[int | None, str | None]:
        """(height, strongest view that includes it) for a transaction on the best chain.

        Call through :meth:`read`."""
        location = self.engine.store.tx_location(txid)
        if location is None:
            return None, None
        height = location.height
        heads = self.engine.heads()
        for view in (View.UNANIMOUS, View.UNANIMOUS_SIGNED, View.MAJORITY, View.TENTATIVE):
            if heads.height(view) >= height:
                return height, view.value
        return height, None

    LEVELS = (View.TENTATIVE, View.MAJORITY, View.UNANIMOUS_SIGNED, View.UNANIMOUS)

    def _level_of(self, txids: list[bytes]) -> int:
        """Index in LEVELS of the strongest view holding every one of ``txids`` (-1: not all in)."""
        heights = []
        for txid in txids:
            location = self.engine.store.tx_location(txid)
            if location is None:
                return -1
            heights.append(location.height)
        needed = max(heights, default=0)
        heads = self.engine.heads()
        level = -1
        for i, view in enumerate(self.LEVELS):
            if heads.height(view) >= needed:
                level = i
        return level

    async def wait_for(self, txids: list[bytes], view: View, timeout_s: float,
                       levels_ms: dict[str, float] | None = None) -> bool:
        """Wait until all ``txids`` are in ``view``; record in ``levels_ms`` when each weaker
        view was reached (ms after the call), so clients can see the whole path."""
        start = trio.current_time()
        deadline = start + timeout_s
        goal = self.LEVELS.index(view)
        while True:
            level = await self.read(self._level_of, txids)
            if levels_ms is not None:
                for i in range(level + 1):
                    levels_ms.setdefault(self.LEVELS[i].value, round((trio.current_time() - start) * 1000, 3))
            if level >= goal:
                return True
            if trio.current_time() >= deadline:
                return False
            await self.wait_changed(deadline)
