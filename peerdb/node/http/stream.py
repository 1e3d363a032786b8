"""``/v1/stream``: the streaming write endpoint (docs/stream.md), a WebSocket on the API listener.

One connection carries many frames of client-signed transactions in flight. Per frame, in the
order frames arrive: admission through :meth:`NodeService.submit` (the same group commit as
``POST /v1/txs``), an ``admitted`` frame, then one acknowledgement per view the frame asked for,
from :meth:`NodeService.wait_for` (the same notification as a waiting HTTP write). The engine is
touched only through the service; nothing here logs or builds JSON per transaction.

Every budget is per connection and named in :mod:`peerdb.stream_frames`: frames in flight,
transactions in flight, bytes waiting for admission, frames queued to send. When one is spent,
or while a frame is held because the pool is full, the connection stops reading; hypercorn's
queue then fills and TCP pushes back on the client.

:class:`StreamConnection` runs over any :class:`FrameChannel`; the ASGI endpoint at the bottom
adapts Starlette's WebSocket to it, and the tests use memory channels.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ...core.chain import View
from ...core.errors import (AccessError, DecodeError, LimitError, RemoteError, ReplayError, SignatureError,
                            ValidationError)
from ...stream_frames import (DUPLICATE_ID, MAX_ADMITTING_BYTES, MAX_STREAMS, PATH, Admitted, Busy, ErrorFrame,
                              FrameError, Hello, Limits, Reached, Refusal, ServerFrame, SubmitFrame, TimedOut,
                              encode_server_frame, parse_client_frame)
from ..mempool import MempoolFull, NeverIncluded, SubmitResult
from .context import ApiContext
from .errors import error_response

log = logging.getLogger("peerdb.api")

OUTBOX_FRAMES = 256
"""Frames queued to send to one client. A client that stops reading its acknowledgements fills
it; then its frames stop finishing, its budgets stay spent, and the node stops reading from it."""

BUSY_HOLD_S = 30.0
"""Longest the node holds a frame the full pool refused, retrying as blocks empty the pool;
then its transactions are refused ``mempool_full`` and the connection is read again."""

ROOM_POLL_S = 1.0
"""A held frame re-reads the pool's room at least this often (and whenever the engine changed)."""

REFUSAL_CODES: dict[type[Exception], str] = {
    MempoolFull: "mempool_full",        # the pool is full (a frame held past BUSY_HOLD_S, or larger than the pool)
    NeverIncluded: "never_included",    # no block could ever carry it
    SignatureError: "bad_signature",    # the client signature does not verify
    AccessError: "forbidden",           # a namespace write rule denies this member
    ReplayError: "replay",              # already included, or expired
    LimitError: "too_large",            # over a size or count limit
    DecodeError: "bad_tx",              # not a well-formed canonical transaction
    ValidationError: "invalid",         # breaks another rule (a client key not this member's, expiry, ...)
    RemoteError: "rejected",            # any other refusal
}
"""The code of a refused transaction, by the refusal's type (the most specific class with a row)."""


def refusal_code(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        code = REFUSAL_CODES.get(cls)
        if code is not None:
            return code
    return "rejected"


class ChannelClosed(Exception):
    """The client's side of the channel is gone."""


class FrameChannel(Protocol):
    """One client connection as the stream sees it."""

    async def receive(self) -> bytes | str | None:
        """The next message (None: the client closed the connection)."""

    async def send(self, data: bytes) -> None:
        """Send one frame; :class:`ChannelClosed` if the client is gone."""

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code."""


class Budget:
    """A count that a connection's tasks take from and give back; :meth:`take` waits until the
    amount fits (an amount over the whole limit waits until nothing else is taken)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = trio.Event()

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.limit:
            await self._freed.wait()
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()
        self._freed = trio.Event()


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


@dataclass
class StreamStats:
    """Counters of one node's streams (for tests and status; no per-transaction state)."""

    open: int = 0
    frames: int = 0
    busy: int = 0
    closed_for_errors: int = 0


@dataclass
class _Held:
    """Frames a full pool refused, in arrival order; retried head first."""

    seqs: list[int] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, seq: int) -> None:
        bisect.insort(self.seqs, seq)

    def remove(self, seq: int) -> None:
        self.seqs.remove(seq)
        self.changed.set()
        self.changed = trio.Event()


class StreamConnection:
    """One client's stream: a reader, a sender, and one task per frame in flight."""

    def __init__(self, ctx: ApiContext, channel: FrameChannel, stats: StreamStats | None = None,
                 limits: Limits = Limits()) -> None:
        """``limits``: the in-flight budgets enforced and announced in the hello frame (the
        frame size limits are the protocol's constants)."""
        self.ctx = ctx
        self.service = ctx.service
        self.channel = channel
        self.stats = stats or StreamStats()
        self.limits = limits
        self.frames = Budget(limits.max_in_flight_frames)
        self.txs = Budget(limits.max_in_flight_txs)
        self.admitting = Budget(MAX_ADMITTING_BYTES)
        self.in_flight: set[int] = set()
        self.unsaved: dict[int, list[bytes]] = {}
        """Frame id -> its accepted txids admitted without an fsync (it asked for views) and not
        yet in a stored block: persisted if the frame times out or the connection ends."""
        self.held = _Held()
        self._seq = itertools.count()
        self._out_send, self._out_recv = trio.open_memory_channel[ServerFrame | _Close](OUTBOX_FRAMES)

    async def run(self) -> None:
        """Serve until the client closes or the node closes over a bad frame; then make what was
        admitted durable."""
        try:
            await self.channel.send(encode_server_frame(Hello(self.ctx.engine.me, self.limits)))
        except ChannelClosed:
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, nursery.cancel_scope)
                close = await self._read_loop(nursery)
                if close is None:
                    nursery.cancel_scope.cancel()  # the client left: nobody reads what is in flight
                else:
                    await self._out_send.send(close)  # the sender flushes, closes, and ends the rest
        finally:
            pending = [t for txids in self.unsaved.values() for t in txids]
            self.unsaved.clear()
            await self.ctx.make_durable(pending)

    # --- reading -------------------------------------------------------------------------------

    async def _read_loop(self, nursery: trio.Nursery) -> _Close | None:
        """Read and start frames until the client closes (None) or a frame closes the connection."""
        while True:
            await self._unheld()
            data = await self.channel.receive()
            if data is None:
                return None
            try:
                frame = parse_client_frame(data)
                if frame.id in self.in_flight:
                    raise FrameError(DUPLICATE_ID, f"frame {frame.id}: a frame with this id is still in flight",
                                     frame.id)
            except FrameError as exc:
                await self._out_send.send(ErrorFrame(exc.frame_id, exc.code, exc.message))
                if exc.close is not None:  # once per connection: no log line per frame or transaction
                    self.stats.closed_for_errors += 1
                    log.info("write stream closed (%d) over a bad frame: %s: %.200s", exc.close, exc.code, exc.message)
                    return _Close(exc.close, exc.code)
                continue
            self.in_flight.add(frame.id)
            size = sum(len(tx) for tx in frame.txs)
            await self.frames.take(1)
            await self.txs.take(len(frame.txs))
            await self.admitting.take(size)
            await self._unheld()  # a frame read while another became held waits here, unadmitted
            self.stats.frames += 1
            # ``start`` returns once the frame task is queued for admission (NodeService.submit
            # queues before its first checkpoint), so frames reach the pool in the order read.
            await nursery.start(self._frame, frame, size, next(self._seq))

    async def _unheld(self) -> None:
        """Wait while the full pool holds a frame of this connection."""
        while self.held.seqs:
            await self.held.changed.wait()

    # --- one frame -----------------------------------------------------------------------------

    async def _frame(self, frame: SubmitFrame, size: int, seq: int,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            result = await self._admit(frame, seq)
            self.admitting.give(size)
            size = 0
            txids = result.accepted + result.duplicates
            if frame.views and result.accepted:
                self.unsaved[frame.id] = list(result.accepted)
            refused = tuple(Refusal(i, refusal_code(err), str(err)) for i, err in result.rejected)
            await self._out_send.send(Admitted(frame.id, tuple(result.accepted), tuple(result.duplicates), refused))
            if frame.views and txids:
                await self._wait_views(frame, txids)
        finally:  # what is still in ``unsaved`` (cancelled: the connection ended) is persisted by run()
            self.admitting.give(size)
            self.txs.give(len(frame.txs))
            self.frames.give(1)
            self.in_flight.discard(frame.id)

    async def _admit(self, frame: SubmitFrame, seq: int) -> SubmitResult:
        """Admission of the frame; a full pool holds it (``busy``) and retries it in arrival order."""
        durable = not frame.views  # a frame that waits for views is made durable by its blocks
        try:
            return await self.service.submit(list(frame.txs), durable=durable)
        except MempoolFull as full:
            refusal = full
        limit, room = await self.service.read(self._pool_room)
        if len(frame.txs) > limit:  # holding it would not help
            refusal = MempoolFull(f"mempool: a frame of {len(frame.txs)} transactions is larger than the whole "
                                  f"pool (limit {limit}); send smaller frames")
        refused = SubmitResult(rejected=[(i, refusal) for i in range(len(frame.txs))])
        if len(frame.txs) > limit:
            return refused
        self.held.add(seq)
        self.stats.busy += 1
        try:
            await self._out_send.send(Busy(frame.id, limit - room, limit, str(refusal)))
            deadline = trio.current_time() + BUSY_HOLD_S
            while trio.current_time() < deadline:
                if self.held.seqs[0] == seq and (await self.service.read(self._pool_room))[1] >= len(frame.txs):
                    try:
                        return await self.service.submit(list(frame.txs), durable=durable)
                    except MempoolFull:
                        pass  # another client took the room first
                await self.service.wait_changed(min(deadline, trio.current_time() + ROOM_POLL_S))
            return refused
        finally:
            self.held.remove(seq)

    def _pool_room(self) -> tuple[int, int]:
        """(the pool's limit, its room); call through :meth:`NodeService.read`."""
        pool = self.ctx.engine.mempool
        return pool.max_txs, pool.room

    async def _wait_views(self, frame: SubmitFrame, txids: list[bytes]) -> None:
        deadline = trio.current_time() + frame.timeout_ms / 1000
        for name in frame.views:
            view = View(name)
            remaining = deadline - trio.current_time()
            if remaining <= 0 or not await self.service.wait_for(txids, view, remaining):
                await self.ctx.make_durable(self.unsaved.pop(frame.id, []))
                await self._out_send.send(TimedOut(frame.id, name, f"not yet in the {name} view after "
                                                   f"{frame.timeout_ms} ms; the transactions are still pending"))
                return
            self.unsaved.pop(frame.id, None)  # in stored blocks from the first view on
            await self._out_send.send(Reached(name, (frame.id,)))

    # --- sending -------------------------------------------------------------------------------

    async def _send_loop(self, scope: trio.CancelScope) -> None:
        """Send queued frames in order; acknowledgements of one view queued together go as one
        ``view`` frame. After a close, end the connection's other tasks."""
        async with self._out_recv:
            while True:
                batch = [await self._out_recv.receive()]
                while len(batch) < OUTBOX_FRAMES:
                    try:
                        batch.append(self._out_recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                for item in _merge_views(batch):
                    if isinstance(item, _Close):
                        await self.channel.close(item.code, item.reason)
                        scope.cancel()
                        return
                    try:
                        await self.channel.send(encode_server_frame(item))
                    except ChannelClosed:
                        scope.cancel()  # the client is gone: nothing in flight can be answered
                        return


def _merge_views(batch: list[ServerFrame | _Close]) -> list[ServerFrame | _Close]:
    out: list[ServerFrame | _Close] = []
    for item in batch:
        last = out[-1] if out else None
        if isinstance(item, Reached) and isinstance(last, Reached) and last.view == item.view:
            out[-1] = Reached(item.view, last.ids + item.ids)
        else:
            out.append(item)
    return out


# --- the ASGI side --------------------------------------------------------------------------------

class _WebSocketChannel:
    """Starlette's WebSocket as a :class:`FrameChannel`."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> bytes | str | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        return data if data is not None else str(message.get("text") or "")

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass


def routes(ctx: ApiContext) -> list[WebSocketRoute]:
    stats = StreamStats()

    async def stream(ws: WebSocket) -> None:
        if stats.open >= MAX_STREAMS:
            await ws.send_denial_response(error_response(
                503, "too_many_streams", f"this node serves at most {MAX_STREAMS} streams at once; retry later"))
            return
        await ws.accept()
        stats.open += 1
        try:
            await StreamConnection(ctx, _WebSocketChannel(ws), stats).run()
        finally:
            stats.open -= 1

    return [WebSocketRoute(PATH, stream)]


__all__ = ["ChannelClosed", "FrameChannel", "StreamConnection", "StreamStats", "routes"]
