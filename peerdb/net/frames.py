"""Frames: a 4-byte big-endian length, then one canonical CBOR item.

The decoder is sans-I/O (:class:`FrameDecoder`), so the fuzz tests drive it with arbitrary bytes
and no streams. Everything a peer can get wrong surfaces as a :class:`RemoteError` subclass:
an oversized or empty length is refused from the 4 header bytes alone, before any body is
awaited or buffered, and payloads go through :func:`peerdb.core.codec.decode`, the one hardened
entry point for untrusted bytes. The connection owner closes the connection on any of these.
"""

from __future__ import annotations

from typing import Any

import trio

from peerdb.core.codec import decode, encode
from peerdb.core.errors import DecodeError, LimitError, LocalError, TruncatedError
from peerdb.core.limits import MAX_FRAME_BYTES

HEADER_LEN = 4
"""A u32 length covers every legal frame (MAX_FRAME_BYTES is 16 MiB) with room to refuse more."""

RECEIVE_CHUNK = 64 * 1024
"""Bytes asked of the stream per read: a TLS record is at most 16 KiB, so this drains a few
records per call without letting one read grow the buffer far past the frame being assembled."""


def encode_frame(message: Any, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Header plus canonical CBOR of ``message``; a message we cannot send is our bug."""
    return frame_payload(encode(message), max_frame_bytes=max_frame_bytes)


def frame_payload(payload: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Frame already-encoded canonical CBOR (lets a broadcast encode once for all peers)."""
    if not payload:
        raise LocalError("frame: refusing to send an empty payload")
    if len(payload) > max_frame_bytes:
        raise LocalError(f"frame: payload of {len(payload)} bytes exceeds the limit of {max_frame_bytes}")
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


async def send_frame(stream: trio.abc.SendStream, message: Any, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
    """Encode and write one frame (no concurrent writers: trio streams forbid them anyway)."""
    await stream.send_all(encode_frame(message, max_frame_bytes=max_frame_bytes))


class FrameDecoder:
    """Turns a byte stream into decoded messages, refusing bad frames as early as possible.

    After it has raised once the decoder stays broken: a frame boundary can no longer be
    trusted, so the only sane thing is to close the connection.
    """

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self._body_len: int | None = None
        self._error: DecodeError | None = None

    @property
    def mid_frame(self) -> bool:
        """True when bytes of an unfinished frame were received (an EOF now is a truncation)."""
        return bool(self._buffer) or self._body_len is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._raise_if_broken()
        self._buffer += data

    def next_message(self) -> tuple[bool, Any]:
        """``(True, message)`` for the next complete frame, ``(False, None)`` if more bytes are needed."""
        self._raise_if_broken()
        try:
            return self._next()
        except DecodeError as exc:
            self._error = exc
            raise

    def _next(self) -> tuple[bool, Any]:
        if self._body_len is None:
            if len(self._buffer) < HEADER_LEN:
                return False, None
            length = int.from_bytes(self._buffer[:HEADER_LEN], "big")
            if length == 0:
                raise DecodeError("frame: zero length")
            if length > self._max:
                raise LimitError(f"frame: length {length} exceeds the limit of {self._max}")
            del self._buffer[:HEADER_LEN]
            self._body_len = length
        if len(self._buffer) < self._body_len:
            return False, None
        payload = bytes(self._buffer[: self._body_len])
        del self._buffer[: self._body_len]
        self._body_len = None
        return True, decode(payload, max_size=self._max, what="frame")

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise DecodeError(f"frame: stream unusable after an earlier error ({self._error})")


class FrameReader:
    """Reads messages from a stream through a :class:`FrameDecoder`.

    ``receive`` raises :class:`trio.EndOfChannel` on a clean end of stream (between frames),
    :class:`TruncatedError` when the stream ends inside a frame, and :class:`trio.TooSlowError`
    when no byte at all arrived for ``idle_timeout`` seconds (a dead or silent peer). The idle
    clock is per read, not per frame, so a large frame on a slow link is not mistaken for silence.
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        idle_timeout: float | None = None,
    ) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
        self._idle_timeout = idle_timeout
        self._eof = False

    async def receive(self) -> Any:
        while True:
            ready, message = self._decoder.next_message()
            if ready:
                return message
            if self._eof:
                raise trio.EndOfChannel
            data = await self._read()
            if not data:
                self._eof = True
                if self._decoder.mid_frame:
                    raise TruncatedError("frame: stream ended inside a frame")
                raise trio.EndOfChannel
            self._decoder.feed(data)

    async def _read(self) -> bytes | bytearray:
        if self._idle_timeout is None:
            return await self._stream.receive_some(RECEIVE_CHUNK)
        with trio.fail_after(self._idle_timeout):
            return await self._stream.receive_some(RECEIVE_CHUNK)

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
