"""The node's inbox: messages from every peer, handed out round-robin over the peers.

One shared first-in-first-out channel would let a member that floods us put hundreds of its
messages ahead of every other member's, and make them all wait for its backlog. Here each peer
has its own bounded queue (messages and bytes), and the consumer takes one message per peer per
turn from the peers that have any. So:

- a message at the head of a peer's queue is handed out after at most one message from each
  other peer that has traffic waiting, however much any of them has queued;
- a peer whose queue is full makes only its own connection's reader wait, which stops reading
  that connection, which stalls that peer's TCP flow and fills *its* outgoing queue; the other
  peers' messages keep flowing;
- :meth:`FairInbox.take_batch` bounds the messages and bytes one batch carries (at least one
  message), so the consumer can bound the work it does per batch.

The consumer may hand back the unfinished rest of a message it took (:meth:`FairInbox.put_back`):
it goes to the front of that peer's queue, and the peer waits for its next turn like any other.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from peerdb.core.errors import LocalError


@dataclass(frozen=True)
class InboxStatistics:
    """``current_buffer_used`` messages (and ``current_buffer_bytes`` bytes) are waiting, from
    ``peers_waiting`` peers. (The first name matches trio's memory channel statistics.)"""

    current_buffer_used: int
    current_buffer_bytes: int
    peers_waiting: int


@dataclass
class _PeerQueue:
    items: deque[tuple[Any, int]] = field(default_factory=deque)
    size: int = 0
    space: trio.Event = field(default_factory=trio.Event)


class FairInbox:
    """Per-peer bounded queues of ``(message, size)`` with round-robin consumption.

    ``max_messages`` and ``max_bytes`` bound each peer's queue; an empty queue accepts one
    message of any size, so a maximal frame always gets through. One or more consumers may call
    :meth:`receive` or :meth:`take_batch`; producers (one reader per connection) call :meth:`put`.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise LocalError("inbox: limits must be positive")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._queues: dict[str, _PeerQueue] = {}
        self._ready: deque[str] = deque()
        """Peers with a message waiting, in the order they will be served."""
        self._nonempty = trio.Event()
        self._closed = False

    # -- producers -------------------------------------------------------------------------------

    async def put(self, peer: str, message: Any, size: int) -> None:
        """Queue ``message`` (whose frame was ``size`` bytes) from ``peer``, waiting while that
        peer's queue is full. Raises :class:`trio.ClosedResourceError` once the inbox is closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = _PeerQueue()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("inbox: closed")
            if not queue.items or (len(queue.items) < self._max_messages and queue.size + size <= self._max_bytes):
                break
            if queue.space.is_set():
                queue.space = trio.Event()
            await queue.space.wait()
        if not queue.items:
            self._ready.append(peer)
        queue.items.append((message, size))
        queue.size += size
        self._nonempty.set()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def put_back(self, peer: str, message: Any, size: int) -> None:
        """Return the rest of a message just taken from ``peer`` to the front of its queue (over
        the bounds if need be: it was already admitted). The peer is served again in its turn."""
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = _PeerQueue()
        if not queue.items:
            self._ready.append(peer)
        queue.items.appendleft((message, size))
        queue.size += size
        self._nonempty.set()

    def close(self) -> None:
        """No more messages: waiting producers fail, consumers see the end once it is drained."""
        self._closed = True
        self._nonempty.set()
        for queue in self._queues.values():
            queue.space.set()

    # -- consumers -------------------------------------------------------------------------------

    def _take(self) -> tuple[str, Any, int]:
        peer = self._ready.popleft()
        queue = self._queues[peer]
        message, size = queue.items.popleft()
        queue.size -= size
        if queue.items:
            self._ready.append(peer)  # its next message waits for everybody else's turn
        queue.space.set()
        return peer, message, size

    async def _wait_nonempty(self) -> None:
        while not self._ready:
            if self._closed:
                raise trio.EndOfChannel
            if self._nonempty.is_set():
                self._nonempty = trio.Event()
            await self._nonempty.wait()

    def receive_nowait(self) -> tuple[str, Any]:
        """The next ``(peer, message)`` in round-robin order; :class:`trio.WouldBlock` if none
        is waiting, :class:`trio.EndOfChannel` once closed and drained."""
        if not self._ready:
            if self._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock
        peer, message, _size = self._take()
        return peer, message

    async def receive(self) -> tuple[str, Any]:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._wait_nonempty()
        peer, message, _size = self._take()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return peer, message

    async def take_batch(self, max_messages: int, max_bytes: int) -> list[tuple[str, Any, int]]:
        """Wait for at least one message, then take ``(peer, message, size)`` round-robin while
        the batch stays within ``max_messages`` and ``max_bytes`` (its first message may exceed
        ``max_bytes`` alone). Raises :class:`trio.EndOfChannel` once closed and drained."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._wait_nonempty()
        batch = [self._take()]
        total = batch[0][2]
        while self._ready and len(batch) < max_messages:
            _message, size = self._queues[self._ready[0]].items[0]
            if total + size > max_bytes:
                break
            batch.append(self._take())
            total += size
        await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def statistics(self) -> InboxStatistics:
        waiting = [q for q in self._queues.values() if q.items]
        return InboxStatistics(sum(len(q.items) for q in waiting), sum(q.size for q in waiting), len(waiting))

    def __aiter__(self) -> FairInbox:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
