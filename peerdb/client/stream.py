"""The write stream from trio: sign, batch, pipeline, and follow every transaction's acks.

::

    from peerdb.client import TxSigner, open_stream
    signer = TxSigner.from_node_config("/etc/peerdb/firm-a.toml")
    async with open_stream("127.0.0.1:8101", token, views=("majority",), signer=signer) as stream:
        pending = [await stream.put("books", f"k{i}", b"...") for i in range(10_000)]
        outcomes = [await p.wait() for p in pending]

:meth:`StreamWriter.submit` queues a transaction and returns at once with its :class:`Pending`
(it waits only when the node's window is full: that is the back-pressure an application feels).
A sender task packs whatever is queued into frames (up to the node's limits) and keeps up to
``pipeline`` frames waiting for admission (one by default), so frames grow with the load: one
transaction per frame when it is light, large frames under load. A receiver task applies the node's
acknowledgements (docs/stream.md). Everything runs on the caller's trio thread;
:mod:`peerdb.client.sync` wraps it for plain Python.

Why one module of this size: the writer's state (the queue, the frames in flight, the window and
the per-transaction pending acks) is one state machine driven by one sender and one receiver task;
splitting the sender from the receiver would spread one invariant (every queued transaction ends
in exactly one outcome) across modules.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from trio_websocket import (CloseReason, ConnectionClosed, ConnectionRejected, HandshakeError, WebSocketConnection,
                            wrap_client_stream)

from ..core.model import Op, Tx
from ..stream_frames import (MAX_FRAME_BYTES, PATH, SUBMIT_OVERHEAD_BYTES, VIEWS, Admitted, Busy, ErrorFrame,
                             Hello, Reached, StreamProtocolError, SubmitFrame, TimedOut, parse_server_frame,
                             tx_cost_bytes)
from .http import NodeError, NodeUnreachable, refused
from .signer import TxSigner

ADMITTED = "admitted"
"""The key of :attr:`TxOutcome.reached_s` for admission (the views use their own names)."""

ACCEPTED, DUPLICATE, REFUSED, TIMEOUT, LOST = "accepted", "duplicate", "refused", "timeout", "lost"
"""Final statuses of a transaction (:attr:`TxOutcome.status`)."""

DEFAULT_PIPELINE = 1
"""Frames sent and not yet admitted, at most. With one, the next frame leaves when the previous
is admitted and carries everything submitted meanwhile (as Nagle's algorithm does): a lone
write goes at once, and under load frames grow with the node's admission time. Measured on
four local members at 800 tx/s, two in flight made frames half as large and cost the members and
the client about a sixth more CPU, for no gain in latency."""

RECEIVE_BUFFER_BYTES = 64 * 1024
"""Bytes read from the socket at a time (trio-websocket's default, 4 KiB, takes many reads per frame)."""

MESSAGE_QUEUE = 16
"""Node frames the WebSocket layer buffers before it stops reading the socket."""

CONNECT_TIMEOUT_S = 10.0
"""Longest the TCP connection and then the WebSocket handshake may take, each."""
CLOSE_TIMEOUT_S = 5.0
"""Longest the closing handshake may take before the connection is dropped."""


class StreamClosed(NodeError):
    """The stream is closed (by the node, the network, or the client); ``code`` is the WebSocket
    close code, ``reason`` the node's."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"the stream closed ({code}): {reason}" if code is not None else
                         f"the stream closed: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class TxOutcome:
    """What became of one transaction, once nothing more will be heard of it on this stream."""

    txid: bytes
    status: str
    """``accepted``, ``duplicate`` (already pending or on the chain), ``refused`` (see ``code``),
    ``timeout`` (a view asked for was not reached in time; still pending at the node) or
    ``lost`` (the stream closed first: look the txid up with ``GET /v1/tx``)."""
    views: tuple[str, ...]
    """The views asked for."""
    reached_s: Mapping[str, float]
    """``admitted`` and each view reached, in seconds after :meth:`StreamWriter.submit`."""
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """Admitted (or a duplicate) and in every view asked for."""
        return self.status in (ACCEPTED, DUPLICATE) and all(v in self.reached_s for v in self.views)


class Pending:
    """One submitted transaction: its acks as they arrive (trio times in :attr:`reached_at`)."""

    __slots__ = ("txid", "submitted_at", "reached_at", "status", "outcome", "_done")

    def __init__(self, txid: bytes, submitted_at: float) -> None:
        self.txid = txid
        self.submitted_at = submitted_at
        self.reached_at: dict[str, float] = {}
        self.status: str | None = None
        self.outcome: TxOutcome | None = None
        self._done: trio.Event | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    async def wait(self) -> TxOutcome:
        """The final outcome (every view asked for reached, or why not)."""
        if self.outcome is None:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        else:
            await trio.lowlevel.checkpoint()
        assert self.outcome is not None
        return self.outcome


class MessageConnection(Protocol):
    """What the writer needs of a WebSocket (trio-websocket's connection; a memory pair in tests).
    ``get_message`` raises trio-websocket's ``ConnectionClosed`` once the connection is closed."""

    async def send_message(self, message: bytes | str) -> None: ...
    async def get_message(self) -> bytes | str: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass
class StreamStats:
    """What a writer saw; read it from its own trio thread."""

    frames_sent: int = 0
    txs_sent: int = 0
    largest_frame: int = 0
    busy_frames: int = 0
    """``busy`` frames received: the node's pool was full and it held a frame."""
    held: set[int] = field(default_factory=set)
    """Frames the node holds right now (busy, not yet admitted)."""
    window_waits: int = 0
    """Times :meth:`StreamWriter.submit` waited because the node's window was full."""
    window_wait_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    """Final status -> transactions."""


@dataclass
class _Frame:
    pendings: list[Pending]
    views: tuple[str, ...]
    admitted: bool = False


class StreamWriter:
    """A stream's client side; made by :func:`open_stream`, used from the trio thread that opened it."""

    def __init__(self, conn: MessageConnection, hello: Hello, *, views: tuple[str, ...] = (),
                 timeout_s: float = 30.0, signer: TxSigner | None = None, pipeline: int = DEFAULT_PIPELINE,
                 on_final: Callable[[TxOutcome], None] | None = None,
                 on_busy: Callable[[Busy], None] | None = None, frame_txs: int | None = None) -> None:
        """``frame_txs``: most transactions per frame (default and ceiling: the node's limit)."""
        unknown = [v for v in views if v not in VIEWS]
        if unknown or len(set(views)) != len(views):
            raise ValueError(f"views: distinct names among {', '.join(VIEWS)}, got {views}")
        if pipeline < 1:
            raise ValueError("pipeline: at least 1 frame")
        self.conn = conn
        self.hello = hello
        self.member = hello.member
        self.views = tuple(v for v in VIEWS if v in views)
        self.timeout_ms = max(1, min(hello.limits.max_timeout_ms, int(timeout_s * 1000)))
        self.signer = signer
        self.pipeline = pipeline
        self.on_final = on_final
        self.on_busy = on_busy
        self.stats = StreamStats()
        self.closed: StreamClosed | None = None
        limits = hello.limits
        self._window = limits.max_in_flight_txs
        self._max_frames = limits.max_in_flight_frames
        self._frame_txs = max(1, min(limits.max_frame_txs, frame_txs or limits.max_frame_txs))
        self._frame_bytes = min(limits.max_frame_bytes, MAX_FRAME_BYTES) - SUBMIT_OVERHEAD_BYTES
        self._queue: deque[tuple[bytes, Pending]] = deque()
        self._frames: dict[int, _Frame] = {}
        self._outstanding = 0
        self._unadmitted = 0
        self._ids = itertools.count()
        self._changed = trio.Event()
        self._last_error: ErrorFrame | None = None
        """The node's last error frame that named no frame in flight: the reason of its close."""

    # --- the application's side ---------------------------------------------------------------

    async def submit(self, tx: Tx) -> Pending:
        """Queue a signed transaction; waits only while the node's window is full."""
        if self._outstanding >= self._window:
            self.stats.window_waits += 1
            started = trio.current_time()
            while self._outstanding >= self._window and self.closed is None:
                await self._wait_changed()
            self.stats.window_wait_s += trio.current_time() - started
        else:
            await trio.lowlevel.checkpoint()
        if self.closed is not None:
            raise self.closed
        pending = Pending(tx.txid, trio.current_time())
        self._queue.append((tx.raw, pending))
        self._outstanding += 1
        self._notify()
        return pending

    async def submit_ops(self, ops: list[Op]) -> Pending:
        return await self.submit(self._signer().sign(ops))

    async def put(self, namespace: str, key: str, value: bytes | str) -> Pending:
        return await self.submit(self._signer().put(namespace, key, value))

    async def delete(self, namespace: str, key: str) -> Pending:
        return await self.submit(self._signer().delete(namespace, key))

    async def drain(self) -> None:
        """Wait until every transaction submitted so far has its final outcome."""
        while self._outstanding and self.closed is None:
            await self._wait_changed()
        await trio.lowlevel.checkpoint()

    @property
    def outstanding(self) -> int:
        """Transactions submitted whose outcome is not final yet."""
        return self._outstanding

    def _signer(self) -> TxSigner:
        if self.signer is None:
            raise ValueError("this stream has no signer: pass signer= to open_stream, or submit signed transactions")
        return self.signer

    # --- background tasks ----------------------------------------------------------------------

    async def run(self) -> None:
        """The sender and the receiver, until the connection closes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_loop)
            await self._receive_loop()
            nursery.cancel_scope.cancel()

    async def _send_loop(self) -> None:
        while True:
            while not (self._queue and self._unadmitted < self.pipeline and len(self._frames) < self._max_frames):
                await self._wait_changed()
            raws: list[bytes] = []
            pendings: list[Pending] = []
            size = 0
            while self._queue and len(raws) < self._frame_txs:
                raw, pending = self._queue[0]
                cost = tx_cost_bytes(raw)
                if raws and size + cost > self._frame_bytes:
                    break
                self._queue.popleft()
                raws.append(raw)
                pendings.append(pending)
                size += cost
            frame_id = next(self._ids)
            self._frames[frame_id] = _Frame(pendings, self.views)
            self._unadmitted += 1
            self.stats.frames_sent += 1
            self.stats.txs_sent += len(raws)
            self.stats.largest_frame = max(self.stats.largest_frame, len(raws))
            try:
                await self.conn.send_message(SubmitFrame(frame_id, tuple(raws), self.views, self.timeout_ms).encode())
            except ConnectionClosed:
                return  # the receiver sees the close and settles every transaction

    async def _receive_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self.conn.get_message()
                except ConnectionClosed as exc:
                    self._close(exc.reason)
                    return
                try:
                    self._apply(parse_server_frame(data), trio.current_time())
                except StreamProtocolError as exc:
                    self._close(CloseReason(1002, f"the node broke the stream protocol: {exc}"))
                    await self.conn.aclose(1002, "protocol error")
                    return
        finally:
            if self.closed is None:
                self._close(CloseReason(1000, "the client closed the stream"))

    def _apply(self, frame: Any, now: float) -> None:
        if isinstance(frame, Admitted):
            self._admitted(frame, now)
        elif isinstance(frame, Reached):
            for frame_id in frame.ids:
                state = self._frame(frame_id)
                if frame.view not in state.views:
                    raise StreamProtocolError(f"frame {frame_id} did not ask for the {frame.view} view")
                for p in state.pendings:
                    if p.status in (ACCEPTED, DUPLICATE):
                        p.reached_at[frame.view] = now
                if frame.view == state.views[-1]:
                    self._finish(frame_id, None, None, None, now)
        elif isinstance(frame, TimedOut):
            self._finish(frame.id, TIMEOUT, "timeout", frame.message, now)
        elif isinstance(frame, Busy):
            self._frame(frame.id)
            self.stats.busy_frames += 1
            self.stats.held.add(frame.id)
            if self.on_busy is not None:
                self.on_busy(frame)
        elif isinstance(frame, ErrorFrame):
            if frame.id is not None and frame.id in self._frames:
                state = self._frames[frame.id]
                if not state.admitted:
                    state.admitted = True
                    self._unadmitted -= 1
                self._finish(frame.id, REFUSED, frame.code, frame.message, now)
            else:
                self._last_error = frame  # the reason of the close that follows
        else:
            raise StreamProtocolError(f"unexpected {type(frame).__name__} frame")
        self._notify()

    def _frame(self, frame_id: int) -> _Frame:
        state = self._frames.get(frame_id)
        if state is None:
            raise StreamProtocolError(f"the node answered frame {frame_id}, which is not in flight")
        return state

    def _admitted(self, frame: Admitted, now: float) -> None:
        state = self._frame(frame.id)
        if state.admitted:
            raise StreamProtocolError(f"frame {frame.id} admitted twice")
        state.admitted = True
        self._unadmitted -= 1
        self.stats.held.discard(frame.id)
        accepted, duplicates = Counter(frame.accepted), set(frame.duplicates)
        for refusal in frame.refused:
            if 0 <= refusal.index < len(state.pendings):
                self._settle(state.pendings[refusal.index], REFUSED, refusal.code, refusal.message, now)
        for p in state.pendings:
            if p.outcome is not None:
                continue
            if accepted[p.txid] > 0:  # a txid twice in one frame: the first is accepted, the next a duplicate
                accepted[p.txid] -= 1
                p.status = ACCEPTED
                p.reached_at[ADMITTED] = now
            elif p.txid in duplicates or p.txid in frame.accepted:
                p.status = DUPLICATE
                p.reached_at[ADMITTED] = now
            else:
                self._settle(p, LOST, "unaccounted", "the node's answer does not name this transaction", now)
        if not state.views or all(p.outcome is not None for p in state.pendings):
            self._finish(frame.id, None, None, None, now)

    def _finish(self, frame_id: int, status: str | None, code: str | None, message: str | None, now: float) -> None:
        """Frame ``frame_id`` is over: settle its transactions (``status`` None: each keeps its own)."""
        state = self._frames.pop(frame_id, None)
        if state is None:
            raise StreamProtocolError(f"the node answered frame {frame_id}, which is not in flight")
        for p in state.pendings:
            if p.outcome is None:
                self._settle(p, status or p.status or LOST, code, message, now)

    def _settle(self, p: Pending, status: str, code: str | None, message: str | None, now: float) -> None:
        p.status = status
        p.outcome = TxOutcome(p.txid, status, self.views,
                              {k: round(t - p.submitted_at, 6) for k, t in p.reached_at.items()}, code, message)
        self._outstanding -= 1
        self.stats.outcomes[status] = self.stats.outcomes.get(status, 0) + 1
        if p._done is not None:
            p._done.set()
        if self.on_final is not None:
            self.on_final(p.outcome)

    def _close(self, reason: CloseReason | None) -> None:
        code = reason.code if reason is not None else None
        text = (reason.reason if reason is not None else None) or "connection closed"
        if self._last_error is not None:
            text = f"{self._last_error.code}: {self._last_error.message}"
        self.closed = StreamClosed(code, text)
        now = trio.current_time()
        for frame_id in list(self._frames):
            self._finish(frame_id, LOST, "closed", str(self.closed), now)
        while self._queue:
            self._settle(self._queue.popleft()[1], LOST, "closed", str(self.closed), now)
        self._unadmitted = 0
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()


def stream_url(api: str) -> str:
    """``ws://host:port/v1/stream`` from an API address (``host:port``, ``http://...`` or ``ws://...``)."""
    base = api.rstrip("/")
    for prefix, scheme in (("http://", "ws://"), ("https://", "wss://"), ("ws://", "ws://"), ("wss://", "wss://")):
        if base.startswith(prefix):
            base = scheme + base[len(prefix):]
            break
    else:
        base = "ws://" + base
    return base if base.endswith(PATH) else base + PATH


@asynccontextmanager
async def open_connection(api: str, token: str, *,
                          connect_timeout_s: float = CONNECT_TIMEOUT_S) -> AsyncIterator[WebSocketConnection]:
    """The stream's WebSocket to the node at ``api``, authenticated with ``token``: for tools that
    speak the frames themselves (:func:`open_stream` is the writer on top of it). A refused
    handshake raises :class:`~peerdb.client.NodeRefused` (401 for a wrong token), no answer
    :class:`NodeUnreachable`. The TCP connection is ours and is closed on the way out, also when
    the node closed the WebSocket first."""
    url = stream_url(api)
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80)
    try:
        with trio.fail_after(connect_timeout_s):
            tcp: trio.abc.Stream = (await trio.open_ssl_over_tcp_stream(host, port, https_compatible=True)
                                    if secure else await trio.open_tcp_stream(host, port))
    except (OSError, trio.TooSlowError) as exc:
        raise NodeUnreachable(f"cannot open a stream to {url} ({type(exc).__name__}: {exc})") from None
    try:
        with _single_errors():
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(connect_timeout_s):
                        ws = await wrap_client_stream(
                            nursery, tcp, parts.netloc, parts.path,  # type: ignore[arg-type]
                            extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                            message_queue_size=MESSAGE_QUEUE, max_message_size=MAX_FRAME_BYTES,
                            receive_buffer_size=RECEIVE_BUFFER_BYTES)
                except trio.TooSlowError:
                    raise NodeUnreachable(f"no WebSocket handshake from {url} within {connect_timeout_s} s") from None
                try:
                    yield ws
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()  # the connection's reader task
    except ConnectionRejected as exc:  # raised by the reader task, which reads the handshake's answer
        raise _rejection(url, exc) from None
    except HandshakeError as exc:
        raise NodeUnreachable(f"cannot open a stream to {url} ({type(exc).__name__})") from None
    finally:
        await trio.aclose_forcefully(tcp)


def _rejection(url: str, exc: ConnectionRejected) -> NodeError:
    text = (exc.body or b"").decode("utf-8", "replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = None
    return refused(url, exc.status_code, body, text)


@contextmanager
def _single_errors() -> Iterator[None]:
    """Re-raise an exception group of one exception as that exception (a nursery wraps even the
    body's own error), so that callers see the error they raised or the one task's that failed."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        context = inner.__context__
        try:
            raise inner
        finally:
            inner.__context__ = context


@asynccontextmanager
async def open_stream(api: str, token: str, *, views: tuple[str, ...] | list[str] = (), timeout_s: float = 30.0,
                      signer: TxSigner | None = None, pipeline: int = DEFAULT_PIPELINE,
                      on_final: Callable[[TxOutcome], None] | None = None,
                      on_busy: Callable[[Busy], None] | None = None, frame_txs: int | None = None,
                      drain: bool = True, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> AsyncIterator[StreamWriter]:
    """A write stream to the node at ``api`` (``host:port`` or its URL) with the application
    ``token``. Leaving the block waits until every transaction's outcome is final (unless it is
    left by an exception, or ``drain`` is False), then closes the stream. A refused handshake raises
    :class:`~peerdb.client.NodeRefused` (401 for a wrong token); no answer :class:`NodeUnreachable`."""
    async with open_connection(api, token, connect_timeout_s=connect_timeout_s) as ws:
        async with connect_writer(ws, views=tuple(views), timeout_s=timeout_s, signer=signer, pipeline=pipeline,
                                  on_final=on_final, on_busy=on_busy, frame_txs=frame_txs, drain=drain) as writer:
            yield writer


@asynccontextmanager
async def connect_writer(conn: MessageConnection, *, drain: bool = True, **options: Any) -> AsyncIterator[StreamWriter]:
    """A :class:`StreamWriter` over an open connection (read the hello, run the background
    tasks); leaving drains it (``drain``), unless left by an exception."""
    try:
        hello = parse_server_frame(await conn.get_message())
    except ConnectionClosed as exc:
        raise StreamClosed(exc.reason.code if exc.reason else None,
                           (exc.reason.reason if exc.reason else None) or "closed before its hello") from None
    if not isinstance(hello, Hello):
        raise StreamProtocolError(f"the node's first frame is {type(hello).__name__}, not hello")
    writer = StreamWriter(conn, hello, **options)
    with _single_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            try:
                yield writer
                if drain:
                    await writer.drain()
            finally:
                nursery.cancel_scope.cancel()
