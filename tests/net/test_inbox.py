"""The fair inbox: per-peer bounded queues served round-robin, so one peer's backlog cannot
hold up another peer's messages."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peerdb.core.errors import LocalError
from peerdb.net.inbox import FairInbox


async def fill(inbox: FairInbox, peer: str, messages: list[str], size: int = 1) -> None:
    for message in messages:
        await inbox.put(peer, message, size)


async def test_a_message_waits_for_at_most_one_message_of_each_other_peer() -> None:
    inbox = FairInbox(max_messages=1000, max_bytes=10**9)
    await fill(inbox, "flood", [f"f{i}" for i in range(100)])
    await fill(inbox, "quiet", ["q0"])
    await fill(inbox, "other", ["o0", "o1"])
    order = [inbox.receive_nowait() for _ in range(6)]
    assert order == [("flood", "f0"), ("quiet", "q0"), ("other", "o0"), ("flood", "f1"), ("other", "o1"),
                     ("flood", "f2")]
    assert inbox.statistics().current_buffer_used == 97


async def test_a_full_queue_holds_up_only_its_own_peer() -> None:
    inbox = FairInbox(max_messages=2, max_bytes=10**9)
    async with trio.open_nursery() as nursery:
        await fill(inbox, "flood", ["f0", "f1"])
        nursery.start_soon(fill, inbox, "flood", ["f2"], 1)
        await trio.testing.wait_all_tasks_blocked()
        assert inbox.statistics().current_buffer_used == 2  # f2 waits for room
        with trio.fail_after(1):
            await inbox.put("quiet", "q0", 1)  # another peer is not held up
        assert inbox.receive_nowait() == ("flood", "f0")
        await trio.testing.wait_all_tasks_blocked()  # room now: f2 goes in
    assert [inbox.receive_nowait() for _ in range(3)] == [("quiet", "q0"), ("flood", "f1"), ("flood", "f2")]
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_bytes_are_bounded_per_peer_but_one_message_of_any_size_gets_in() -> None:
    inbox = FairInbox(max_messages=100, max_bytes=1000)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(1):
            await inbox.put("big", "huge", 5000)  # over the bound, but the queue was empty
        nursery.start_soon(inbox.put, "big", "small", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert inbox.statistics().current_buffer_bytes == 5000
        assert inbox.receive_nowait() == ("big", "huge")
    assert inbox.receive_nowait() == ("big", "small")


async def test_batches_are_bounded_in_messages_and_bytes_and_never_empty() -> None:
    inbox = FairInbox(max_messages=100, max_bytes=10**9)
    await fill(inbox, "a", ["a0", "a1", "a2"], size=450)
    await fill(inbox, "b", ["b0", "b1"], size=100)
    assert [(p, m) for p, m, _ in await inbox.take_batch(10, 1000)] == [("a", "a0"), ("b", "b0"), ("a", "a1")]
    assert [(p, m) for p, m, _ in await inbox.take_batch(2, 10**6)] == [("b", "b1"), ("a", "a2")]
    await inbox.put("a", "alone", 5000)
    await inbox.put("b", "next", 1)
    assert [m for _, m, _ in await inbox.take_batch(10, 1000)] == ["alone"]  # bigger than the budget alone
    assert [m for _, m, _ in await inbox.take_batch(10, 1000)] == ["next"]


async def test_a_message_put_back_is_next_from_its_peer_after_the_others_turns() -> None:
    inbox = FairInbox(max_messages=100, max_bytes=10**9)
    await fill(inbox, "a", ["a0", "a1"])
    await fill(inbox, "b", ["b0"])
    peer, message = inbox.receive_nowait()
    assert (peer, message) == ("a", "a0")
    inbox.put_back("a", "rest of a0", 7)
    assert [inbox.receive_nowait() for _ in range(3)] == [("b", "b0"), ("a", "rest of a0"), ("a", "a1")]
    inbox.put_back("c", "rest", 1)  # a peer with nothing queued joins the round
    assert inbox.receive_nowait() == ("c", "rest")


async def test_close_fails_waiting_producers_and_ends_consumers_once_drained() -> None:
    inbox = FairInbox(max_messages=1, max_bytes=10**9)
    await inbox.put("a", "last", 1)
    failed: list[type[BaseException]] = []

    async def blocked_put() -> None:
        try:
            await inbox.put("a", "never", 1)
        except trio.ClosedResourceError as exc:
            failed.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_put)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close()
    assert failed == [trio.ClosedResourceError]
    assert [m async for m in inbox] == [("a", "last")]
    with pytest.raises(trio.EndOfChannel):
        await inbox.take_batch(10, 10)
    with pytest.raises(trio.ClosedResourceError):
        await inbox.put("b", "late", 1)


async def test_a_waiting_consumer_wakes_for_the_first_message() -> None:
    inbox = FairInbox(max_messages=10, max_bytes=10)
    got: list[tuple[str, object]] = []

    async def consume() -> None:
        got.append(await inbox.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        await inbox.put("a", "hello", 1)
    assert got == [("a", "hello")]


def test_limits_must_be_positive() -> None:
    with pytest.raises(LocalError):
        FairInbox(0, 10)
    with pytest.raises(LocalError):
        FairInbox(10, 0)
