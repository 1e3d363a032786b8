"""The trio layer around the engine: timers, the inbox, the outbox, waiting clients, alerts.

Who owns what (the rule every task and thread of a node follows):

* The **engine** and everything it holds — the block tree, the mempool, the governance state,
  evidence, the store's write side, the anchoring layer's hand-over set — belong to whoever
  holds the service lock. Mutations go through :meth:`NodeService.call` (which, in production,
  runs the engine in a worker thread because store writes fsync); reads through
  :meth:`NodeService.read` (inline on the trio thread, under the same lock). Nothing else touches
  them: not the API's handlers, not the anchoring service, not the alert loop.
* A task that only needs a recent picture (the heartbeat interval, the consortium in force, the
  view heads) reads :attr:`NodeService.view`, an immutable :class:`EngineView` published under
  the lock after every engine call; replacing one reference is atomic, so a reader never sees a
  half-updated picture.
* Network state (connections, queues) belongs to the trio thread; the alert book, waiters and
  admissions too. Worker threads never touch them.

Tests on trio's memory streams and autojump clock run engine calls inline so time only moves
when every task waits. After each call the outbox is flushed to the network and waiters are
woken.

Why one module of this size: it is the one place the ownership rule above is enforced — the
lock, the calls and reads, the flush after each call, and the loops that feed the engine; the
pieces with their own state live beside it (:mod:`.waiters`, :mod:`.alerts`, :mod:`.trace`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from ..core.chain import View, ViewHeads
from ..core.consortium import Consortium, Params
from ..core.errors import CorruptionError, LocalError, ProtocolError
from ..core.membership import ConsortiumState
from ..core.model import Header
from ..net.inbox import FairInbox
from .alerts import Alert, AlertBook, AlertEvent
from .engine import Engine
from .waiters import LEVELS, Follower, FollowerBook
from .mempool import MempoolFull, SubmitResult
from .messages import (AnchorMsg, BlocksMsg, Message, ProposalMsg, SigsMsg, StatusMsg, TxsMsg, UnknownMessageType,
                       from_wire, to_wire)

log = logging.getLogger("peerdb.node")

T = TypeVar("T")

MAX_UNKNOWN_LOGGED = 256
"""(peer, type) pairs of unknown message types logged once each; beyond it they are only counted."""
INBOX_BATCH = 256
"""Messages handled in one engine call at most, so one burst cannot hold the engine for long."""

INBOX_BATCH_BYTES = 64 * 1024
"""Frame bytes of peer messages handled in one engine call (at least one message). The engine's
work on a message grows with its size: every CBOR item, transaction and signature it carries
takes at least a byte, and costs up to about a microsecond per byte (a ~110-byte signature is a
~60 us check plus, if forged, a log line; a ~200-byte transaction a decode and a check). So one
call does about a tenth of a second of work at most, and that is how long the API and the other
members' messages wait for the engine because of one member's traffic (a flood of forged
signatures measured p99 124 ms at the API; docs/performance.md). Small messages still share a
call. A larger message whose items are independent (transactions, signatures, anchor proofs) is
handled in slices of this size, the rest going back to its sender's queue for its next turn; a
proposal or a catch-up answer is one unit (its cost is that of validating the blocks it carries)."""

_SLICEABLE = (TxsMsg, SigsMsg, AnchorMsg)
"""Messages whose items are independent, so that handling them in slices changes nothing."""

ALERT_HOOK_TIMEOUT_S = 30
"""Longest an alert webhook or command may run before it is abandoned (and the next event goes)."""
ALERT_HOOK_QUEUE = 256
"""Alert events waiting for the hooks, at most. Hooks hear events one at a time, in the order
they happened (a ``cleared`` never overtakes its ``raised``); while a hook hangs, events wait
here, and past this many the newest are logged and dropped (the alert history keeps them)."""

TX_STAGES = {"tentative": "tx.block", "majority": "tx.majority", "unanimous_signed": "tx.unanimous_signed"}
"""The trace's stage for a waiting client's transactions reaching each view (tentative: in a block)."""


class Network(Protocol):
    """What the service needs from :mod:`peerdb.net` (real TLS or in-memory)."""

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...
    def send(self, peer: str, message: Any) -> None: ...
    def broadcast(self, message: Any) -> None: ...
    def peer_state(self, name: str) -> Any: ...
    def disconnect(self, name: str, reason: str) -> None: ...
    def set_members(self, members: Iterable[str]) -> None: ...
    def reconnect(self, name: str, reason: str) -> None: ...
    @property
    def incoming(self) -> FairInbox: ...


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def trio_clock_ms() -> int:
    """For tests under trio's MockClock: 'wall' time is trio's virtual time."""
    return int(trio.current_time() * 1000)


@dataclass
class _PendingSubmit:
    raws: list[bytes]
    durable: bool
    queued: float
    """When it was handed to admission (the trace's clock)."""
    done: trio.Event = field(default_factory=trio.Event)
    result: SubmitResult | MempoolFull | None = None


@dataclass(frozen=True)
class EngineView:
    """An immutable picture of the engine for readers on the trio thread (see the module doc)."""

    gov: ConsortiumState
    current: Consortium
    """The consortium in force at the next height."""
    heads: ViewHeads
    tip: Header
    unsaved_signatures: bool

    @property
    def params(self) -> Params:
        return self.current.params

    @classmethod
    def of(cls, engine: Engine) -> "EngineView":
        """Build under the lock."""
        return cls(engine.gov, engine.current, engine.heads(), engine.tree.best_tip, bool(engine.unsaved_sigs))


class NodeService:
    def __init__(self, engine: Engine, network: Network, *, clock_ms: Callable[[], int] = wall_clock_ms,
                 offload: bool = True, on_alert: Callable[[AlertEvent], Awaitable[None]] | None = None,
                 extra_status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.network = network
        self.clock_ms = clock_ms
        self.offload = offload
        self.on_alert = on_alert
        self.extra_status = extra_status
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self.view = EngineView.of(engine)  # before the service runs: nothing else touches the engine yet
        self.alerts = AlertBook(grace_ms=engine.params.turn_timeout_ms)
        self.started_ms = clock_ms()
        self.anchor_handler: Callable[[str, AnchorMsg, int], None] | None = None
        self._admissions: list[_PendingSubmit] = []
        self.followers = FollowerBook()
        """Clients following their transactions through the views (:meth:`follow`)."""
        self._trace_heads: ViewHeads | None = None
        """The view heads the trace was last told."""
        self._admission_wakeup = trio.Event()
        self.on_members: Callable[[tuple[tuple[str, bytes], ...]], None] | None = None
        """Called with :meth:`Engine.network_members` when it changes, before the network
        follows it (the daemon re-keys its TLS trust list here)."""
        self._gov_seen: object = None
        self._current_seen: object = None
        self._members_seen: tuple[tuple[str, bytes], ...] = ()
        self._key_problem_seen: str | None = None
        self.loop_turned: dict[str, float] = {}
        """Periodic loop -> trio time it last went round (``/healthz``: the loops turn)."""
        self.peer_heights: dict[str, int] = {}
        self.unknown_skipped = 0
        """Messages of a type this node does not know, skipped since start."""
        self._unknown_logged: set[tuple[str, str]] = set()
        """Member -> the tip height its latest status message advertised (``/readyz``: caught up)."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        trace = self.engine.trace
        asked = trace.now()
        async with self._lock:
            locked = trace.now()
            trace.observe("call.lock", locked - asked)
            if self.offload:
                ran: list[float] = []

                def timed() -> T:
                    start = trace.now()
                    try:
                        return fn(*args)
                    finally:
                        ran.append(trace.now() - start)
                result = await trio.to_thread.run_sync(timed)
                trace.observe("call.hop", trace.now() - locked - sum(ran))
            else:
                result = fn(*args)
            self._flush()
        return result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short read inline (no thread) while no engine call is mutating state. A stored
        item found corrupt is refused to the reader and reported to the engine (alert, refetch)."""
        async with self._lock:
            try:
                return fn(*args)
            except CorruptionError as exc:
                self.engine.note_corruption(exc)
                self._flush()
                raise

    def _follow_members(self) -> None:
        """Governance changed who may connect (a member added, removed, or a key rotated) or
        how to reach one (an address or certificate update)."""
        gov, current = self.engine.gov, self.engine.current
        if gov is self._gov_seen and current is self._current_seen:
            return  # after almost every engine call: two identity checks, nothing rebuilt
        members = self.engine.network_members()
        first = self._gov_seen is None
        before = self._members_seen
        retired = set(before) - set(members)
        if self.on_members is not None:
            self.on_members(members)
        names = {name for name, _ in members}
        self.network.set_members(names)
        # Recorded only once applied: a failure is retried on the next call.
        self._gov_seen, self._current_seen, self._members_seen = gov, current, members
        if not first and members != before:
            log.info("member set changed: the network now admits %s",
                     ", ".join(f"{name} ({key.hex()[:8]})" for name, key in members))
        for name in sorted({name for name, _ in retired} & names - {self.engine.me}):
            # A key of a member that stays was retired (rotation in force): its connection was
            # authenticated with that key; the member must come back with its current one.
            self.network.reconnect(name, "its member key was rotated")
        problem = self.engine.key_problem()
        if problem is not None and problem != self._key_problem_seen:
            log.error("%s", problem)
        self._key_problem_seen = problem

    def _flush(self) -> None:
        self._follow_members()
        trace = self.engine.trace
        me = self.engine.me
        for out in self.engine.take_outbox():
            wire = to_wire(out.msg)
            if out.to is None:
                self.network.broadcast(wire)
            else:
                self.network.send(out.to, wire)
            if isinstance(out.msg, ProposalMsg):
                trace.proposal_sent(out.msg.signature.block_hash)
            elif isinstance(out.msg, SigsMsg) and out.to is None:
                for sig in out.msg.sigs:
                    if sig.member == me:
                        trace.signature_sent(sig.block_hash)
        feed = self.engine.take_applied()
        if len(self.followers) or feed.rolled_back:
            self.followers.update(feed.blocks, feed.rolled_back, self.engine.store, self.engine.heads())
        self.view = EngineView.of(self.engine)
        heads = self.view.heads
        if heads != self._trace_heads:
            self._trace_heads = heads
            trace.heads_moved({"majority": heads.majority, "unanimous_signed": heads.unanimous_signed},
                              self.engine.tree.on_best_chain)
        self._changed.set()
        self._changed = trio.Event()

    def is_up(self, peer: str) -> bool:
        try:
            return bool(self.network.peer_state(peer).connected)
        except LocalError:  # a member the network does not follow (yet)
            return False

    async def wait_changed(self, deadline: float) -> None:
        """Wait until the engine changed or the trio-time ``deadline`` passed."""
        event = self._changed
        with trio.move_on_at(deadline):
            await event.wait()

    # --- services ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._follow_members()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.network.run)
            nursery.start_soon(self._inbox_loop)
            nursery.start_soon(self._turn_loop)
            nursery.start_soon(self._status_loop)
            nursery.start_soon(self._alert_loop)
            nursery.start_soon(self._admission_loop)
            log.info("node %s running: tip height %d", self.engine.me, self.view.tip.height)
            task_status.started()

    async def _inbox_loop(self) -> None:
        """Take the messages already waiting, round-robin over the peers and within
        INBOX_BATCH / INBOX_BATCH_BYTES, and hand them to the engine in one call: one thread hop
        and one lock acquisition for a burst instead of one per message, and a bounded wait for
        everyone else. Parsing runs on the event loop one message at a time (each is bounded by
        MAX_FRAME_ITEMS: a few milliseconds at most), with a checkpoint after each."""
        incoming = self.network.incoming
        while True:
            try:
                batch = await incoming.take_batch(INBOX_BATCH, INBOX_BATCH_BYTES)
            except trio.EndOfChannel:
                return
            taken = self.engine.trace.now()
            work: list[tuple[Callable[[str, Any, int], None], str, Message]] = []
            for peer, raw, size in batch:
                if isinstance(raw, _SLICEABLE):
                    msg: Message = raw  # the rest of a message sliced on an earlier turn
                else:
                    try:
                        msg = from_wire(raw)
                    except UnknownMessageType as exc:
                        self._note_unknown(peer, exc.kind)
                        continue
                    except ProtocolError as exc:
                        log.warning("rejected malformed message from %s, closing the connection: %s", peer, exc)
                        self.network.disconnect(peer, f"malformed message: {exc}")
                        continue
                    finally:
                        await trio.lowlevel.checkpoint()
                if isinstance(msg, StatusMsg):
                    self.peer_heights[peer] = msg.height
                if isinstance(msg, BlocksMsg) and msg.items:
                    ahead = await self.read(self.engine.catchup_ahead, peer, msg, self.clock_ms())
                    if ahead is not None:
                        self.network.send(peer, to_wire(ahead))
                if size > INBOX_BATCH_BYTES and isinstance(msg, _SLICEABLE):
                    msg = self._slice(peer, msg, size)
                if isinstance(msg, AnchorMsg):
                    if self.anchor_handler is not None:
                        work.append((self.anchor_handler, peer, msg))
                    continue
                work.append((self.engine.handle, peer, msg))
            if work:
                now = self.clock_ms()
                await self.call(self.engine.run_and_propose, now, self._dispatch, work, now, taken)

    def _note_unknown(self, peer: str, kind: str) -> None:
        """Skip a message type this node does not know (a peer that upgraded first), logging each
        (peer, type) once; the set is bounded so that a peer inventing names cannot grow it."""
        self.unknown_skipped += 1
        if (peer, kind) in self._unknown_logged or len(self._unknown_logged) >= MAX_UNKNOWN_LOGGED:
            return
        self._unknown_logged.add((peer, kind))
        log.warning("skipped a message of unknown type %r from %s (a newer protocol version?); "
                    "further ones of that type are skipped silently", kind, peer)

    def _slice(self, peer: str, msg: TxsMsg | SigsMsg | AnchorMsg, size: int) -> Message:
        """The first INBOX_BATCH_BYTES (pro rata) of ``msg``'s items; the rest goes back to the
        front of ``peer``'s queue, to be handled in its next turn."""
        items: tuple[Any, ...] = msg.txs if isinstance(msg, TxsMsg) else \
            msg.sigs if isinstance(msg, SigsMsg) else msg.proofs
        take = max(1, len(items) * INBOX_BATCH_BYTES // size)
        if take >= len(items):
            return msg
        rest_size = size - size * take // len(items)
        self.network.incoming.put_back(peer, type(msg)(items[take:]), rest_size)
        return type(msg)(items[:take])

    def _dispatch(self, work: list[tuple[Callable[[str, Any, int], None], str, Message]], now_ms: int,
                  taken: float) -> None:
        trace = self.engine.trace
        for handler, peer, msg in work:
            if isinstance(msg, ProposalMsg):
                trace.since("cosign.queue", taken)
            handler(peer, msg, now_ms)

    def _trio_deadline(self, deadline_ms: int, now_ms: int) -> float:
        return trio.current_time() + max(0, deadline_ms - now_ms) / 1000

    async def _turn_loop(self) -> None:
        while True:
            self.loop_turned["turn"] = trio.current_time()
            now = self.clock_ms()
            if await self.read(self.engine.proposal_due, now):  # inline: no thread hop when idle
                await self.call(self.engine.maybe_propose, now)
            deadline = await self.read(self.engine.next_deadline_ms, now)
            await self.wait_changed(self._trio_deadline(deadline, now))

    async def _status_loop(self) -> None:
        while True:
            self.loop_turned["status"] = trio.current_time()
            await trio.sleep(self.view.params.heartbeat_ms / 1000)  # governance may change it
            status = await self.read(self.engine.status_message)
            self.network.broadcast(to_wire(status))
            if self.view.unsaved_signatures:
                await self.call(self.engine.flush_signatures)

    async def _alert_loop(self) -> None:
        send, receive = trio.open_memory_channel[AlertEvent](ALERT_HOOK_QUEUE)
        async with trio.open_nursery() as hooks:
            hooks.start_soon(self._deliver_alerts, receive)
            while True:
                self.loop_turned["alert"] = trio.current_time()
                await trio.sleep(self.view.params.heartbeat_ms / 1000)
                now = self.clock_ms()
                conditions = await self.read(self._alert_conditions, now)
                for event in self.alerts.update(conditions, now):
                    if self.on_alert is None:
                        continue
                    try:
                        send.send_nowait(event)
                    except trio.WouldBlock:
                        log.warning("alert hooks are %d events behind: %s %s (%s) not sent to them",
                                    ALERT_HOOK_QUEUE, event.kind, event.event, event.subject)

    def _alert_conditions(self, now_ms: int) -> list[Alert]:
        """Every alert condition, read under the lock (the anchoring part reads the tree too)."""
        conditions = self.engine.alert_conditions(now_ms, self.is_up)
        if self.extra_status is not None:
            conditions.extend(self.extra_status().get("alerts", []))
        return conditions

    async def _deliver_alerts(self, receive: trio.MemoryReceiveChannel[AlertEvent]) -> None:
        """One event at a time, in order, so that a receiver never sees an alert cleared before
        it was raised (or two command runs write over each other). A webhook or command that
        hangs is abandoned after ALERT_HOOK_TIMEOUT_S: it holds the next events up that long
        at most."""
        async for event in receive:
            hook = self.on_alert
            if hook is None:
                continue
            with trio.move_on_after(ALERT_HOOK_TIMEOUT_S) as scope:
                await hook(event)
            if scope.cancelled_caught:
                log.warning("alert hook for %s %s (%s) did not finish within %d s; abandoned", event.kind,
                            event.event, event.subject, ALERT_HOOK_TIMEOUT_S)

    # --- client operations ---------------------------------------------------------------------

    async def submit(self, raws: list[bytes], durable: bool = True) -> SubmitResult:
        """Admit a client's transactions: the one admission entry point, for the HTTP write
        route and a streaming connection alike. Hands them to the admission task, which admits
        every request that arrived meanwhile in one engine call (one signature batch, one
        commit, and our proposal if that made our turn come), and waits for it. ``durable``
        False skips persisting them in the pool: for a client that waits for a view (see
        :meth:`Engine.submit_many`), which then follows the accepted txids with :meth:`follow`."""
        pending = _PendingSubmit(raws, durable, self.engine.trace.now())
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
            trace = self.engine.trace
            started = trace.now()
            for p in batch:
                trace.observe("tx.admit_wait", started - p.queued)
            try:
                now = self.clock_ms()
                results = await self.call(self.engine.run_and_propose, now, self.engine.submit_many,
                                          [p.raws for p in batch], None, now, [p.durable for p in batch])
                admitted = trace.now()
                for p, result in zip(batch, results):
                    p.result = result
                    trace.observe("tx.admit", admitted - started)
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

    async def follow(self, txids: Sequence[bytes], until: View,
                     on_view: Callable[[Follower, View, int], None] | None = None) -> Follower:
        """Follow transactions already admitted (by :meth:`submit`) through the views, up to
        ``until``: the one entry point for telling a client when its transactions reach a view.

        ``on_view(follower, view, height)`` is called once per view all of ``txids`` reached,
        weakest first (tentative: they are in blocks of the best chain; ``height`` is the
        highest of those blocks), up to ``until``; views they are already in are told before
        this returns. It runs on the trio thread inside the engine's flush, under the service
        lock, so it must only record or hand over (``send_nowait``, an append), never block or
        await. The returned :class:`Follower` has ``done`` (a :class:`trio.Event`, set once
        ``until`` is reached) and ``reached`` (the views told so far); :meth:`unfollow` it when
        the client goes away. After a reorganisation a follower is told again only views it had
        not been told; ``done`` needs ``until`` on the new best chain.

        The HTTP write route (``wait``) is :meth:`wait_for` on top of this; a streaming
        connection follows each of its transactions with its own ``on_view``.
        """
        follower = Follower(tuple(txids), LEVELS.index(until), on_view)
        await self.read(lambda: self.followers.add(follower, self.engine.store, self.engine.heads()))
        return follower

    def unfollow(self, follower: Follower) -> None:
        """Stop following (the client gave up or went away); harmless once it is done."""
        self.followers.cancel(follower)

    async def wait_for(self, txids: list[bytes], view: View, timeout_s: float,
                       levels_ms: dict[str, float] | None = None) -> bool:
        """Wait until all ``txids`` are in ``view``; record in ``levels_ms`` when each weaker
        view was reached (ms after the call), so clients can see the whole path."""
        start = trio.current_time()
        traced_from = self.engine.trace.now()
        levels = levels_ms if levels_ms is not None else {}
        trace = self.engine.trace

        def reached(_follower: Follower, level: View, _height: int) -> None:
            levels[level.value] = round((trio.current_time() - start) * 1000, 3)
            stage = TX_STAGES.get(level.value)
            if stage is not None:
                trace.observe(stage, trace.now() - traced_from)

        follower = await self.follow(txids, view, reached)
        try:
            with trio.move_on_after(timeout_s):
                await follower.done.wait()
        finally:
            self.unfollow(follower)
        return view in follower.reached
