"""A minimal HTTP/1.1 keep-alive client on trio streams, for the load generator's hot path.

Why not httpx: measured on the two-core benchmark machine, httpx's AsyncClient under trio spent
about 1.3 ms of CPU per small POST, so the generator process saturated its core near 700
requests/s and became the bottleneck it is meant never to be. This client writes a prebuilt
request head and parses just enough of the response (status, Content-Length or chunked body) to
cost tens of microseconds; it supports nothing else (no redirects, TLS, proxies, compression).
Health checks and everything outside the hot path still use httpx.

Systems whose API is HTTP (etcd's gateway, and PeerDB's API when the lead wires it) can share it.
"""

from __future__ import annotations

import trio

from bench.errors import BenchError

MAX_HEAD_BYTES = 64 * 1024
"""Largest response head accepted: real ones here are a few hundred bytes."""

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest response body accepted: a put's answer is under a kilobyte."""

RECEIVE_CHUNK_BYTES = 64 * 1024


class HTTPError(BenchError):
    """The server's answer was not HTTP/1.1 this client understands, or the connection broke."""


class Connection:
    """One keep-alive connection; one request at a time (callers lend it out from a pool)."""

    def __init__(self, host: str, port: int, extra_headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (extra_headers or {}).items())
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()
        self._host_header = f"{host}:{port}".encode()

    async def connect(self) -> None:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._buffer.clear()

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def request(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """Send one request and return (status, body). On any failure the connection is closed
        (the next request reconnects) and ``HTTPError`` is raised."""
        await self.connect()
        if self._stream is None:
            raise HTTPError("connection: not open")
        head = (
            f"{method} {path} HTTP/1.1\r\nContent-Type: {content_type}\r\n{self._extra}"
            f"Content-Length: {len(body)}\r\nHost: "
        ).encode()
        try:
            await self._stream.send_all(head + self._host_header + b"\r\n\r\n" + body)
            status, close, response = await self._read_response()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, HTTPError) as e:
            await self.close()
            if isinstance(e, HTTPError):
                raise
            raise HTTPError(f"connection to {self.host}:{self.port}: {type(e).__name__}: {e}") from None
        if close:
            await self.close()
        return status, response

    async def _read_response(self) -> tuple[int, bool, bytes]:
        head_end = await self._fill_until(b"\r\n\r\n", MAX_HEAD_BYTES)
        head = bytes(self._buffer[:head_end]).decode("latin-1")
        del self._buffer[: head_end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HTTPError(f"status line: not HTTP/1.x: {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPError(f"header line: no colon: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, close, await self._read_chunked()
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise HTTPError(f"content-length: not a number: {length_text[:40]!r}")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise HTTPError(f"content-length: {length} exceeds {MAX_BODY_BYTES}")
        await self._fill_to(length)
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return status, close, body

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        # Each pass consumes one chunk; the body limit bounds the number of passes.
        while True:
            line_end = await self._fill_until(b"\r\n", MAX_HEAD_BYTES)
            size_text = bytes(self._buffer[:line_end]).split(b";", 1)[0].strip()
            del self._buffer[: line_end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPError(f"chunk size: not hex: {size_text[:40]!r}") from None
            if size == 0:
                await self._fill_until(b"\r\n", MAX_HEAD_BYTES)  # no trailers expected
                end = self._buffer.find(b"\r\n")
                del self._buffer[: end + 2]
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise HTTPError(f"chunked body: exceeds {MAX_BODY_BYTES} bytes")
            await self._fill_to(size + 2)
            body += self._buffer[:size]
            del self._buffer[: size + 2]

    async def _fill_until(self, marker: bytes, limit: int) -> int:
        # Each pass reads at least one byte or fails; ``limit`` bounds the passes.
        while (index := self._buffer.find(marker)) < 0:
            if len(self._buffer) > limit:
                raise HTTPError(f"response: no {marker!r} within {limit} bytes")
            await self._receive()
        return index

    async def _fill_to(self, size: int) -> None:
        while len(self._buffer) < size:
            await self._receive()

    async def _receive(self) -> None:
        if self._stream is None:
            raise HTTPError("connection: closed while reading")
        chunk = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
        if not chunk:
            raise HTTPError("connection: closed by the server mid-response")
        self._buffer += chunk
