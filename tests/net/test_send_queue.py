"""The outgoing queue drops its oldest frames when full, bounded in frames and in bytes."""

from __future__ import annotations

import pytest
import trio

from peerdb.core.errors import LocalError
from peerdb.net.queue import OutQueue


def test_drop_oldest_by_count() -> None:
    queue = OutQueue(max_frames=3, max_bytes=1000)
    dropped = [queue.put(bytes([i])) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [queue.get_nowait() for _ in range(3)] == [b"\x02", b"\x03", b"\x04"]
    assert queue.dropped_total == 2 and queue.queued_bytes == 0


def test_drop_oldest_by_bytes() -> None:
    queue = OutQueue(max_frames=100, max_bytes=10)
    queue.put(b"aaaa")
    queue.put(b"bbbb")
    assert queue.put(b"cccccc") == 1
    assert len(queue) == 2 and queue.queued_bytes == 10


def test_frame_bigger_than_the_queue_is_our_bug() -> None:
    with pytest.raises(LocalError):
        OutQueue(max_frames=2, max_bytes=3).put(b"four")


async def test_get_waits_and_cancellation_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    queue = OutQueue(max_frames=4, max_bytes=100)
    with trio.move_on_after(1):
        await queue.get()
    queue.put(b"x")
    assert await queue.get() == b"x"

    async def later() -> None:
        await trio.sleep(5)
        queue.put(b"y")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await queue.get() == b"y"


def test_take_ready_respects_the_byte_budget_and_order() -> None:
    queue = OutQueue(max_frames=10, max_bytes=100)
    for frame in (b"aa", b"bbb", b"cccc", b"d"):
        queue.put(frame)
    assert queue.take_ready(5) == [b"aa", b"bbb"]
    assert queue.take_ready(3) == []  # b"cccc" does not fit; never split or reordered
    assert queue.take_ready(10) == [b"cccc", b"d"]
    assert len(queue) == 0 and queue.queued_bytes == 0
