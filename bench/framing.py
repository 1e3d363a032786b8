"""The tiny length-prefixed protocol between the load generator and the pysyncobj nodes' fronts.

pysyncobj is a library, not a server: someone has to carry writes into the node's process. This
frame format is the cheapest honest way: one byte of kind, four bytes of big-endian length, the
payload. Requests: ``P`` put (2-byte key length, key, value) and ``S`` status (empty). Replies:
``0`` ok (payload empty for a put, JSON for a status) or ``1`` error (UTF-8 reason).
"""

from __future__ import annotations

import struct

import trio

from bench.errors import BenchError

HEADER = struct.Struct(">cI")

MAX_FRAME_BYTES = 1024 * 1024
"""Largest payload either side accepts: values are ~150 bytes, a status a few hundred; a bigger
length can only be a bug or garbage, and bounding it bounds what a peer makes us buffer."""

RECEIVE_CHUNK_BYTES = 64 * 1024
"""Read size per receive_some call: many small frames per system call under load."""

PUT = b"P"
STATUS = b"S"
OK = b"0"
ERROR = b"1"


class FrameError(BenchError):
    """The other side sent something that is not a frame of this protocol."""


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"frame payload: {len(payload)} bytes exceeds {MAX_FRAME_BYTES}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_put(key: bytes, value: bytes) -> bytes:
    if len(key) > 0xFFFF:
        raise FrameError(f"put key: {len(key)} bytes exceeds 65535")
    return encode(PUT, struct.pack(">H", len(key)) + key + value)


def decode_put(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) < 2:
        raise FrameError("put payload: shorter than its 2-byte key length")
    (key_len,) = struct.unpack_from(">H", payload)
    if len(payload) < 2 + key_len:
        raise FrameError(f"put payload: key length {key_len} runs past the payload")
    return payload[2 : 2 + key_len], payload[2 + key_len :]


class FrameReader:
    """Reads whole frames from a trio stream, buffering partial reads."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def read(self) -> tuple[bytes, bytes] | None:
        """The next (kind, payload), or None on a clean end of stream between frames."""
        if not await self._fill(HEADER.size):
            if self._buffer:
                raise FrameError("stream: ended inside a frame header")
            return None
        kind, length = HEADER.unpack_from(self._buffer)
        if length > MAX_FRAME_BYTES:
            raise FrameError(f"frame length: {length} exceeds {MAX_FRAME_BYTES}")
        if not await self._fill(HEADER.size + length):
            raise FrameError("stream: ended inside a frame payload")
        payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
        del self._buffer[: HEADER.size + length]
        return kind, payload

    async def _fill(self, size: int) -> bool:
        # Each pass adds at least one byte or returns, and size <= header + MAX_FRAME_BYTES.
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(RECEIVE_CHUNK_BYTES)
            if not chunk:
                return False
            self._buffer += chunk
        return True
