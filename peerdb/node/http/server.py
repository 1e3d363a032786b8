"""The node's HTTP/1.1 server: its ASGI apps (the client API, the monitoring endpoints) served
on trio by h11, with a loop of our own around it.

Why not hypercorn, which served them before: measured on the project's machine with the same
Starlette app, hypercorn spent about 460 us of CPU per small request (a task, memory channels
and cancel scopes per request, two writes per answer), this server about 220 us; at the member
a client writes to, the HTTP server was the largest single cost of a transaction
(docs/performance.md). h11 still does all
of HTTP/1.1 (parsing, framing, keep-alive, chunked bodies, what may follow what); this module
only moves bytes and ASGI messages between it and the app.

What it serves is what the node's apps use, no more: HTTP/1.1 and 1.0 with keep-alive, request
bodies handed to the app as they arrive, responses with a length or chunked (the audit bundle
streams), ``HEAD``, ``Expect: 100-continue``. No TLS (the API binds to loopback; a proxy
terminates TLS), no HTTP/2, no websockets, no lifespan events (the apps have no startup work).
Bounds: request heads of :data:`MAX_HEAD_BYTES`, an idle connection closed after
``keep_alive_s``, a write that makes no progress for :data:`WRITE_TIMEOUT_S` abandoned. A
malformed request gets ``400`` and the connection is closed; an app that fails before it
answered gets ``500``; a failure inside one connection never reaches the others or the node.
"""

from __future__ import annotations

import functools
import logging
from http import HTTPStatus
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import h11
import trio

from ...core.consortium import parse_address

log = logging.getLogger("peerdb.api.server")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

MAX_HEAD_BYTES = 16 * 1024
"""Largest request target plus headers accepted (the usual servers' limit); a larger one is
refused with 431 before the app sees it."""
DRAIN_BYTES = 1024 * 1024
"""Request body an app left unread that is read and dropped to keep the connection; beyond
this the connection is closed instead (reading it all would be work for nothing)."""
RECEIVE_BYTES = 64 * 1024
"""Bytes read from the socket at a time."""
WRITE_TIMEOUT_S = 60.0
"""A client that reads nothing of our answer for this long is dropped (a stalled download)."""
ASGI = {"version": "3.0", "spec_version": "2.3"}
NO_BODY_STATUSES = frozenset({204, 304})


def _plain(status: int, reason: bytes) -> bytes:
    """A complete answer written without h11, for when h11's state no longer allows one."""
    body = b'{"error": {"code": "bad_request", "message": "' + reason + b'"}}'
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body)) + body)


class _Closed(Exception):
    """The client went away, or the connection must end (its state allows nothing more)."""


class _Connection:
    """One client connection: requests one after the other (HTTP/1.1 has no more)."""

    def __init__(self, app: ASGIApp, stream: trio.SocketStream, keep_alive_s: float) -> None:
        self.app = app
        self.stream = stream
        self.keep_alive_s = keep_alive_s
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.client = _address(stream, peer=True)
        self.server = _address(stream, peer=False)

    async def run(self) -> None:
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                await self._write(_plain(status, b"request head too large" if status == 431 else b"malformed request"))
                return
            if not isinstance(event, h11.Request):
                return  # closed, or idle too long
            if len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers) > MAX_HEAD_BYTES:
                await self._write(_plain(431, b"request head too large"))  # it came whole in one read
                return
            await _Exchange(self, event).run()
            if self.h11.our_state is not h11.DONE or not await self._drain():
                return  # must close, or the app left too much of the request body unread
            self.h11.start_next_cycle()

    async def _drain(self) -> bool:
        """Read what is left of the request (a GET's empty body ends with an event of its own
        that an app not reading the body never asks for); False if the connection must close
        (the client closed, or more than :data:`DRAIN_BYTES` were left unread)."""
        left = DRAIN_BYTES
        while self.h11.their_state is h11.SEND_BODY:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                left -= len(event.data)
                if left < 0:
                    return False
            elif not isinstance(event, h11.EndOfMessage):
                return False
        return self.h11.their_state is h11.DONE

    async def _next_event(self) -> Any:
        """The next h11 event, reading as needed; None if the client stayed silent too long."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_after(self.keep_alive_s):
                data = await self.stream.receive_some(RECEIVE_BYTES)
                self.h11.receive_data(data)  # b"": the client closed its side
                continue
            return None

    async def _write(self, data: bytes) -> None:
        with trio.fail_after(WRITE_TIMEOUT_S):
            await self.stream.send_all(data)


class _Exchange:
    """One request and its answer: the ASGI ``receive`` and ``send`` of one app call."""

    def __init__(self, conn: _Connection, request: h11.Request) -> None:
        self.conn = conn
        self.request = request
        self.head = request.method == b"HEAD"
        self.body_done = False
        self.started: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.responded = trio.Event()
        """Set once the whole answer was written (``receive`` then says the client is gone)."""
        self.expect_continue = any(name == b"expect" and value.lower() == b"100-continue"
                                   for name, value in request.headers)

    def scope(self) -> dict[str, Any]:
        target = self.request.target
        raw_path, _, query = target.partition(b"?")
        return {"type": "http", "asgi": ASGI, "http_version": self.request.http_version.decode("ascii"),
                "method": self.request.method.decode("ascii"), "scheme": "http",
                "path": unquote(raw_path.decode("latin-1")), "raw_path": raw_path, "query_string": query,
                "root_path": "", "headers": [(name, value) for name, value in self.request.headers],
                "client": self.conn.client, "server": self.conn.server}

    async def run(self) -> None:
        try:
            await self.conn.app(self.scope(), self.receive, self.send)
        except _Closed:
            raise
        except Exception:
            log.exception("API: %s %s failed", self.request.method.decode("ascii", "replace"),
                          self.request.target[:200].decode("latin-1"))
            if self.started is not None:
                raise _Closed from None  # half an answer went out: only closing can say so
        if not self.responded.is_set():
            await self._answer_error()

    async def _answer_error(self) -> None:
        if self.started is not None:
            raise _Closed  # started and never finished: the client cannot tell where the body ends
        body = b'{"error": {"code": "internal", "message": "internal error; see the node log"}}'
        self.started = (500, [(b"content-type", b"application/json")])
        await self.send({"type": "http.response.body", "body": body})

    async def receive(self) -> dict[str, Any]:
        if self.body_done:
            await self.responded.wait()
            return {"type": "http.disconnect"}
        conn = self.conn
        if self.expect_continue:
            self.expect_continue = False
            await conn._write(conn.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        while True:
            event = conn.h11.next_event()
            if event is h11.NEED_DATA:
                if chunks:
                    break
                with trio.move_on_after(conn.keep_alive_s) as idle:
                    data = await conn.stream.receive_some(RECEIVE_BYTES)
                if idle.cancelled_caught:
                    raise _Closed  # the body stopped coming
                try:
                    conn.h11.receive_data(data)
                except h11.RemoteProtocolError:
                    raise _Closed from None
                continue
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
                continue
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                break
            raise _Closed  # the client closed, or broke the framing
        return {"type": "http.request", "body": b"".join(chunks), "more_body": not self.body_done}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started is not None:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = (int(message["status"]), [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])])
            return
        if kind != "http.response.body":
            return  # nothing else is HTTP/1.1 (trailers, pathsend: not used by the node's apps)
        if self.started is None:
            raise RuntimeError("ASGI: a response body before http.response.start")
        if self.responded.is_set():
            return
        conn = self.conn
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out = b""
        if conn.h11.our_state is h11.SEND_RESPONSE:
            status, headers = self.started
            if not more and status not in NO_BODY_STATUSES and all(k != b"content-length" for k, _ in headers):
                headers = [*headers, (b"content-length", str(len(body)).encode())]
            try:
                out += conn.h11.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            except h11.LocalProtocolError:
                raise _Closed from None
        if body and not self.head and self.started[0] not in NO_BODY_STATUSES:
            out += conn.h11.send(h11.Data(data=body))
        if not more:
            out += conn.h11.send(h11.EndOfMessage())
        if out:
            await conn._write(out)  # head, body and end in one write when the body comes whole
        if not more:
            self.responded.set()


@functools.cache
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _address(stream: trio.SocketStream, *, peer: bool) -> tuple[str, int] | None:
    try:
        name = stream.socket.getpeername() if peer else stream.socket.getsockname()
    except OSError:
        return None
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


async def _serve_one(app: ASGIApp, keep_alive_s: float, stream: trio.SocketStream) -> None:
    try:
        await _Connection(app, stream, keep_alive_s).run()
    except (_Closed, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away or stalled: nothing to answer
    except Exception:
        log.exception("API: connection from %s failed", _address(stream, peer=True))
    finally:
        with trio.move_on_after(1):
            await stream.aclose()


async def serve_http(app: ASGIApp, listen: str, *, backlog: int, keep_alive_s: float,
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``listen`` (``host:port``; port 0: any free port) until cancelled.
    ``task_status.started`` gets the bound addresses as ``http://host:port``."""
    host, port = parse_address(listen, "listen", any_port=True)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    bound = []
    for listener in listeners:
        name = listener.socket.getsockname()
        bound.append(f"http://{name[0]}:{name[1]}" if ":" not in name[0] else f"http://[{name[0]}]:{name[1]}")
    task_status.started(bound)
    await trio.serve_listeners(functools.partial(_serve_one, app, keep_alive_s), listeners)
