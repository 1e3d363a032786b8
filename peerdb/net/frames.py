"""Frames: a 4-byte big-endian length, then one canonical CBOR item.

The decoder is sans-I/O (:class:`FrameDecoder`), so the fuzz tests drive it with arbitrary bytes
and no streams. Everything a peer can get wrong surfaces as a :class:`RemoteError` subclass:
an oversized or empty length is refused from the 4 header bytes alone, before any body is
awaited or buffered, and payloads go through :func:`peerdb.core.codec.decode`, the one hardened
entry point for untrusted bytes, with at most MAX_FRAME_ITEMS items. The connection owner
closes the connection on any of these.

Decoding a frame costs up to tens of milliseconds (MAX_FRAME_ITEMS items, or MAX_FRAME_BYTES of
strings), which the event loop must not pay: :class:`FrameReader` decodes a payload larger than
``offload_bytes`` in a worker thread, so the loop keeps serving the API and the other peers
while it runs (it still competes for the GIL, but only in slices: cbor2's C calls on a bounded
frame hold it for at most a few tens of milliseconds).
"""

from __future__ import annotations

from typing import Any

import trio

from peerdb.core.codec import decode, encode
from peerdb.core.errors import DecodeError, LimitError, LocalError, TruncatedError
from peerdb.core.limits import MAX_FRAME_BYTES, MAX_FRAME_ITEMS

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
        payload = self.next_payload()
        if payload is None:
            return False, None
        return True, self.decode_payload(payload)

    def next_payload(self) -> bytes | None:
        """The next complete frame's payload, not decoded yet; None if more bytes are needed.
        Pass it to :meth:`decode_payload` before asking for the next one."""
        self._raise_if_broken()
        try:
            return self._next()
        except DecodeError as exc:
            self._error = exc
            raise

    def decode_payload(self, payload: bytes) -> Any:
        """Decode a payload from :meth:`next_payload`; a bad one breaks the decoder. Touches no
        buffer, so it may run in a worker thread while the owner awaits it."""
        self._raise_if_broken()
        try:
            return decode(payload, max_size=self._max, what="frame", max_items=MAX_FRAME_ITEMS)
        except DecodeError as exc:
            self._error = exc
            raise

    def _next(self) -> bytes | None:
        if self._body_len is None:
            if len(self._buffer) < HEADER_LEN:
                return None
            length = int.from_bytes(self._buffer[:HEADER_LEN], "big")
            if length == 0:
                raise DecodeError("frame: zero length")
            if length > self._max:
                raise LimitError(f"frame: length {length} exceeds the limit of {self._max}")
            del self._buffer[:HEADER_LEN]
            self._body_len = length
        if len(self._buffer) < self._body_len:
            return None
        payload = bytes(self._buffer[: self._body_len])
        del self._buffer[: self._body_len]
        self._body_len = None
        return payload

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise DecodeError(f"frame: stream unusable after an earlier error ({self._error})")


class FrameReader:
    """Reads messages from a stream through a :class:`FrameDecoder`.

    ``receive`` raises :class:`trio.EndOfChannel` on a clean end of stream (between frames),
    :class:`TruncatedError` when the stream ends inside a frame, and :class:`trio.TooSlowError`
    when no byte at all arrived for ``idle_timeout`` seconds (a dead or silent peer). The idle
    clock is per read, not per frame, so a large frame on a slow link is not mistaken for silence.

    A payload of more than ``offload_bytes`` (None: never) is decoded in a worker thread under
    ``limiter`` (None: trio's default); smaller ones inline, where the thread hop would cost more
    than the decoding. Tests on the autojump clock keep everything inline: while a task waits for
    a thread, the clock would jump ahead.
    """

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        idle_timeout: float | None = None,
        offload_bytes: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_bytes=max_frame_bytes)
        self._idle_timeout = idle_timeout
        self._offload_bytes = offload_bytes
        self._limiter = limiter
        self._eof = False

    async def receive(self) -> Any:
        message, _size = await self.receive_sized()
        return message

    async def receive_sized(self) -> tuple[Any, int]:
        """The next message and its frame's payload size in bytes (what it cost to carry)."""
        while True:
            payload = self._decoder.next_payload()
            if payload is not None:
                return await self._decode(payload), len(payload)
            if self._eof:
                raise trio.EndOfChannel
            data = await self._read()
            if not data:
                self._eof = True
                if self._decoder.mid_frame:
                    raise TruncatedError("frame: stream ended inside a frame")
                raise trio.EndOfChannel
            self._decoder.feed(data)

    async def _decode(self, payload: bytes) -> Any:
        if self._offload_bytes is None or len(payload) <= self._offload_bytes:
            return self._decoder.decode_payload(payload)
        # Not abandoned on cancellation: the thread finishes within the decode bound anyway, and
        # the decoder must not be used again while it runs.
        return await trio.to_thread.run_sync(self._decoder.decode_payload, payload, limiter=self._limiter)

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
