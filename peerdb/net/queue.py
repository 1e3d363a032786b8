"""The bounded per-peer outgoing queue behind ``send``/``broadcast``.

Sending must never block the consensus code, so the queue is bounded and, when full, drops its
*oldest* frames. Why drop-oldest rather than disconnecting the slow peer: the consensus protocol
already tolerates lost messages (signatures are gossiped again, a lagging member catches up by
fetching blocks and signatures), and the newest messages (the current height and round) are
the ones worth delivering; disconnecting would throw the whole backlog away as well and make a
merely slow member flap between up and down. A peer that is truly gone is detected by the idle
timeout, not by the queue.

The queue is bounded in frames and in bytes: frames of up to MAX_FRAME_BYTES each would make a
frame count alone a poor bound on memory.
"""

from __future__ import annotations

from collections import deque

import trio

from peerdb.core.errors import LocalError


class OutQueue:
    """A drop-oldest FIFO of encoded frames with one consumer (the connection's writer)."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise LocalError("queue: limits must be positive")
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._nonempty = trio.Event()
        self.dropped_total = 0
        self.dropped_episode = 0
        """Frames dropped since the queue was last empty (to log an overflow once, not per frame)."""

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def put(self, frame: bytes) -> int:
        """Append ``frame``, dropping the oldest frames to make room; returns how many were dropped."""
        if len(frame) > self._max_bytes:
            raise LocalError(f"queue: a frame of {len(frame)} bytes can never fit in {self._max_bytes}")
        dropped = 0
        while self._frames and (len(self._frames) >= self._max_frames or self._bytes + len(frame) > self._max_bytes):
            self._bytes -= len(self._frames.popleft())
            dropped += 1
        self._frames.append(frame)
        self._bytes += len(frame)
        self._nonempty.set()
        self.dropped_total += dropped
        self.dropped_episode += dropped
        return dropped

    async def get(self) -> bytes:
        """Wait for and remove the oldest frame (cancellation never loses a frame)."""
        while not self._frames:
            if self._nonempty.is_set():
                self._nonempty = trio.Event()
            await self._nonempty.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame

    def take_ready(self, max_bytes: int) -> list[bytes]:
        """Remove the oldest frames that are ready now, as many as fit in ``max_bytes`` together."""
        taken: list[bytes] = []
        size = 0
        while self._frames and size + len(self._frames[0]) <= max_bytes:
            frame = self._frames.popleft()
            self._bytes -= len(frame)
            size += len(frame)
            taken.append(frame)
        return taken

    def get_nowait(self) -> bytes:
        if not self._frames:
            raise trio.WouldBlock
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame
