"""A write stream's connection in memory: the node's side as a ``FrameChannel``, the client's as
the trio-websocket connection the client library uses, joined by trio memory channels.

``capacity`` is how many client frames may wait unread (0: a send completes only when the node
reads it, so a test sees exactly when the node stops reading). Closing behaves like a
WebSocket's: frames sent before a close are still delivered, then the other side sees the
close code.
"""

from __future__ import annotations

import math

import trio
from trio_websocket import CloseReason, ConnectionClosed

from peerdb.node.http.stream import ChannelClosed


class MemoryLink:
    def __init__(self, capacity: int = 0) -> None:
        self._up_send, self._up_recv = trio.open_memory_channel[bytes | str](capacity)
        self._down_send, self._down_recv = trio.open_memory_channel[bytes](math.inf)
        self.close_reason: CloseReason | None = None
        """How the connection closed (code and reason), by either side."""
        self.node = _NodeSide(self)
        self.client = _ClientSide(self)


class _NodeSide:
    def __init__(self, link: MemoryLink) -> None:
        self.link = link

    async def receive(self) -> bytes | str | None:
        try:
            return await self.link._up_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def send(self, data: bytes) -> None:
        try:
            await self.link._down_send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ChannelClosed("the client is gone") from None

    async def close(self, code: int, reason: str) -> None:
        if self.link.close_reason is None:
            self.link.close_reason = CloseReason(code, reason)
        await self.link._down_send.aclose()
        await self.link._up_recv.aclose()


class _ClientSide:
    def __init__(self, link: MemoryLink) -> None:
        self.link = link

    async def send_message(self, message: bytes | str) -> None:
        try:
            await self.link._up_send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(self.link.close_reason) from None

    async def get_message(self) -> bytes | str:
        try:
            return await self.link._down_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self.link.close_reason) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self.link.close_reason is None:
            self.link.close_reason = CloseReason(code, reason)
        await self.link._up_send.aclose()
        await self.link._down_recv.aclose()
