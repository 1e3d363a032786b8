"""PeerNetwork over the in-memory hub, on the autojump clock: deterministic and instant.

Covers the behaviours that do not depend on TLS: one connection per pair (also under
simultaneous dial), partitions and healing, restarts, hostile peers (wrong consortium, wrong
version, wrong name, non-member, malformed and oversized frames, silence), queues and backoff.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from peerdb.core.errors import LocalError
from peerdb.core.limits import MAX_FRAME_ITEMS, PROTOCOL_VERSION
from peerdb.net.frames import FrameReader, send_frame
from peerdb.net.hello import make_hello
from peerdb.net.memory import MemoryHub
from peerdb.net.config import NetConfig
from peerdb.net.peers import PeerEvent, PeerNetwork, keep_existing
from peerdb.net.transport import AuthenticatedStream, Transport

CID = hashlib.sha256(b"consortium").digest()
OTHER_CID = hashlib.sha256(b"another consortium").digest()
NAMES = ["firm-a", "firm-b", "firm-c", "firm-d"]
CONFIG = NetConfig(backoff_initial=0.5, backoff_max=8.0, idle_timeout=20.0, ping_interval=5.0,
                   decode_offload_bytes=None)  # the autojump clock: decode inline, never wait on a thread


@pytest.fixture(autouse=True)
def _net_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="peerdb.net")


def net_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "peerdb.net" and r.getMessage().startswith(event + " ")]


async def wait_until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll with a deadline (virtual time under the autojump clock)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


class Cluster:
    """Members on one hub, each startable and stoppable on its own."""

    def __init__(self, nursery: trio.Nursery, hub: MemoryHub, names: list[str], config: NetConfig = CONFIG) -> None:
        self.nursery = nursery
        self.hub = hub
        self.names = names
        self.config = config
        self.nets: dict[str, PeerNetwork] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, name: str, *, cid: bytes = CID, transport: Transport | None = None) -> PeerNetwork:
        net = PeerNetwork(
            name, self.names, cid, transport or self.hub.transport(name), config=self.config, rng=random.Random(name)
        )
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await net.run(task_status=task_status)

        await self.nursery.start(run)
        self.nets[name], self.scopes[name] = net, scope
        return net

    def stop(self, name: str) -> None:
        self.scopes[name].cancel()

    def fully_connected(self, names: list[str] | None = None) -> bool:
        names = names or self.names
        return all(set(self.nets[n].connected_peers()) >= set(names) - {n} for n in names)


@asynccontextmanager
async def cluster(names: list[str] = NAMES, config: NetConfig = CONFIG) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, MemoryHub(), names, config)
        yield c
        nursery.cancel_scope.cancel()


async def receive(net: PeerNetwork, timeout: float = 60.0) -> tuple[str, Any]:
    with trio.fail_after(timeout):
        return await net.incoming.receive()


# -- normal operation ----------------------------------------------------------------------------


async def test_four_members_connect_once_per_pair_and_exchange_messages(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c:
        for name in NAMES:
            await c.start(name)
        await wait_until(c.fully_connected)
        for a in NAMES:
            for b in NAMES:
                if a < b:
                    assert c.hub.open_links(a, b) == 1
                    ends = {c.nets[a].peer_state(b).direction, c.nets[b].peer_state(a).direction}
                    assert ends == {"in", "out"}
        c.nets["firm-a"].broadcast({"kind": "block", "height": 1})
        c.nets["firm-c"].send("firm-a", [b"\x00", 7])
        for name in ["firm-b", "firm-c", "firm-d"]:
            assert await receive(c.nets[name]) == ("firm-a", {"kind": "block", "height": 1})
        assert await receive(c.nets["firm-a"]) == ("firm-c", [b"\x00", 7])


async def test_messages_on_one_connection_arrive_in_order(autojump_clock: trio.testing.MockClock) -> None:
    """Queued frames are written in batches; order and boundaries must survive that."""
    async with cluster(NAMES[:2], NetConfig(write_batch_bytes=1000)) as c:
        a = await c.start("firm-a")
        b = await c.start("firm-b")
        await wait_until(c.fully_connected)
        sizes = [1, 700, 5, 2000, 0, 999, 3]
        for i in range(300):
            a.send("firm-b", [i, b"z" * sizes[i % len(sizes)]])
        for i in range(300):
            assert await receive(b) == ("firm-a", [i, b"z" * sizes[i % len(sizes)]])


async def test_events_report_up_and_down_with_reason(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        await c.start("firm-b")
        with trio.fail_after(60):
            up = await a.events.receive()
        assert (up.peer, up.up, up.direction) == ("firm-b", True, "out")
        c.hub.disconnect("firm-b")
        with trio.fail_after(60):
            down = await a.events.receive()
        assert (down.peer, down.up) == ("firm-b", False) and "link broken" in down.reason
        state = a.peer_state("firm-b")
        assert not state.connected and state.last_error is not None and "link broken" in state.last_error
        await wait_until(lambda: a.peer_state("firm-b").connected)
        assert a.peer_state("firm-b").connects == 2


async def test_send_checks_its_arguments(autojump_clock: trio.testing.MockClock) -> None:
    net = PeerNetwork("firm-a", NAMES, CID, MemoryHub().transport("firm-a"))
    with pytest.raises(LocalError, match="not another member"):
        net.send("firm-a", 1)
    net.send("mallory", 1)  # a name that is not (or no longer) a member: skipped, nothing queued
    assert "mallory" not in net.peers and all(net.peer_state(p).queued == 0 for p in net.peers)
    with pytest.raises(LocalError, match="exceeds the limit"):
        PeerNetwork("firm-a", NAMES, CID, MemoryHub().transport("firm-a"), config=NetConfig(max_frame_bytes=100)).broadcast(
            b"x" * 200
        )
    with pytest.raises(LocalError):
        PeerNetwork("firm-z", NAMES, CID, MemoryHub().transport("firm-z"))
    with pytest.raises(LocalError):
        PeerNetwork("firm-a", NAMES, CID[:5], MemoryHub().transport("firm-a"))


async def test_channels_close_when_the_network_stops(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        c.stop("firm-a")
        with trio.fail_after(10):
            assert [m async for m in a.incoming] == []


# -- one connection per pair -------------------------------------------------------------------


def test_tie_rule_is_the_same_on_both_ends() -> None:
    a, b = "firm-a", "firm-b"
    for existing in (a, b):
        for new in (a, b):
            # the end that sees (existing, new) and the end that sees (new, existing) agree on the survivor
            keep_here = keep_existing(existing, new, a, b)
            keep_there = keep_existing(new, existing, b, a)
            survivor_here = existing if keep_here else new
            survivor_there = new if keep_there else existing
            if existing != new:
                assert survivor_here == survivor_there == a


@pytest.mark.parametrize("seed", range(5))
async def test_simultaneous_dial_converges_to_one_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    config = NetConfig(stagger_dial=False, backoff_initial=0.5, backoff_max=8.0)
    async with cluster(config=config) as c:
        order = NAMES[:]
        random.Random(seed).shuffle(order)
        async with trio.open_nursery() as starter:  # everyone starts, and dials, in the same instant
            for name in order:
                starter.start_soon(c.start, name)
        await wait_until(c.fully_connected)
        await trio.sleep(30)  # virtual time: let any duplicate resolution finish
        assert c.fully_connected()
        for a in NAMES:
            for b in NAMES:
                if a < b:
                    assert c.hub.open_links(a, b) == 1
                    assert c.nets[a].peer_state(b).direction == "out", (a, b)
                    assert c.nets[b].peer_state(a).direction == "in", (a, b)
        assert net_lines(caplog, "duplicate_refused") or net_lines(caplog, "connection_replaced")
        c.nets["firm-d"].broadcast("after the race")
        for name in ["firm-a", "firm-b", "firm-c"]:
            assert await receive(c.nets[name]) == ("firm-d", "after the race")


@pytest.mark.parametrize("seed", range(8))
async def test_no_message_lost_or_duplicated_while_duplicates_are_sorted_out(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """Frames queued during the start-up race all arrive exactly once (acceptors wait for the
    dialler's confirmation; replaced connections are drained, not cut)."""
    config = NetConfig(stagger_dial=False)
    per_peer = 40
    async with cluster(config=config) as c:
        order = NAMES[:]
        random.Random(seed).shuffle(order)

        async def start_and_talk(name: str) -> None:
            net = await c.start(name)
            for i in range(per_peer):
                net.broadcast([name, i])

        async with trio.open_nursery() as starter:
            for name in order:
                starter.start_soon(start_and_talk, name)
        got: dict[str, list[Any]] = {name: [] for name in NAMES}
        for name in NAMES:
            for _ in range((len(NAMES) - 1) * per_peer):
                sender, message = await receive(c.nets[name])
                assert message[0] == sender
                got[name].append(tuple(message))
        for name in NAMES:
            expected = {(other, i) for other in NAMES if other != name for i in range(per_peer)}
            assert len(got[name]) == len(expected) and set(got[name]) == expected
        await trio.sleep(60)  # virtual time: nothing more may arrive (no duplicates)
        assert all(c.nets[name].incoming.statistics().current_buffer_used == 0 for name in NAMES)
        assert c.fully_connected()
        races = net_lines(caplog, "duplicate_refused") + net_lines(caplog, "connection_replaced")
        assert races, "the start-up race did not happen; the test proves nothing"


async def test_restarted_peer_replaces_its_stale_connection(autojump_clock: trio.testing.MockClock) -> None:
    """A second connection from the same dialler wins: the first one is stale (peer restarted).

    Here the "restarted" firm-a is a raw stream; the real firm-a sees its connection retired,
    waits in vain for the newer one, reconnects, and in turn retires the raw one.
    """
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        b = await c.start("firm-b")
        await wait_until(c.fully_connected)
        stream = await c.hub.connect_raw("firm-a", "firm-b")
        await send_frame(stream, make_hello(CID, "firm-a"))
        reader = FrameReader(stream)
        with trio.fail_after(30):
            assert await reader.receive() == make_hello(CID, "firm-b")
        await send_frame(stream, {"msg": "from the new connection"})
        assert await receive(b) == ("firm-a", "from the new connection")
        with trio.fail_after(60):
            frame = await reader.receive()
            while frame == {"ping": 0}:
                frame = await reader.receive()
        assert frame == {"error": "replaced by a newer connection"}
        await stream.aclose()
        await wait_until(lambda: c.hub.open_links("firm-a", "firm-b") == 1 and c.fully_connected())
        a.send("firm-b", "real firm-a again")
        assert await receive(b) == ("firm-a", "real firm-a again")


# -- partitions, restarts, backoff -----------------------------------------------------------------


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c:
        for name in NAMES:
            await c.start(name)
        await wait_until(c.fully_connected)
        c.hub.partition(["firm-a", "firm-b"], ["firm-c", "firm-d"])
        await wait_until(lambda: c.nets["firm-a"].connected_peers() == ["firm-b"])
        await wait_until(lambda: c.nets["firm-d"].connected_peers() == ["firm-c"])
        c.nets["firm-a"].broadcast("during the partition")
        assert await receive(c.nets["firm-b"]) == ("firm-a", "during the partition")
        await trio.sleep(60)  # virtual time: the cut holds, dials keep failing with backoff
        assert c.nets["firm-a"].connected_peers() == ["firm-b"]
        assert c.nets["firm-c"].incoming.statistics().current_buffer_used == 0
        c.hub.heal()
        await wait_until(c.fully_connected)
        # queued while cut, delivered after the heal
        assert await receive(c.nets["firm-c"]) == ("firm-a", "during the partition")
        assert await receive(c.nets["firm-d"]) == ("firm-a", "during the partition")
        assert all(c.hub.open_links(a, b) == 1 for a in NAMES for b in NAMES if a < b)


async def test_isolated_member_comes_back(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster() as c:
        for name in NAMES:
            await c.start(name)
        await wait_until(c.fully_connected)
        c.hub.isolate("firm-c")
        await wait_until(lambda: c.nets["firm-c"].connected_peers() == [])
        assert c.fully_connected(["firm-a", "firm-b", "firm-d"])
        assert not c.nets["firm-a"].peer_state("firm-c").connected
        c.hub.heal()
        await wait_until(c.fully_connected)


async def test_reconnect_after_peer_restart(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        await c.start("firm-b")
        await wait_until(c.fully_connected)
        c.stop("firm-b")
        await wait_until(lambda: not a.peer_state("firm-b").connected)
        assert not c.hub.is_listening("firm-b")
        b2 = await c.start("firm-b")
        await wait_until(c.fully_connected)
        a.send("firm-b", "welcome back")
        assert await receive(b2) == ("firm-a", "welcome back")


class RecordingTransport(Transport):
    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.dials: list[float] = []

    async def connect(self, peer: str, attempt: int = 0) -> AuthenticatedStream:
        self.dials.append(trio.current_time())
        return await self.inner.connect(peer)

    async def serve(self, handler: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.inner.serve(handler, task_status=task_status)


async def test_backoff_grows_with_jitter_up_to_the_cap(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        recorder = RecordingTransport(c.hub.transport("firm-a"))
        await c.start("firm-a", transport=recorder)
        await wait_until(lambda: len(recorder.dials) >= 10, timeout=600)
        gaps = [later - earlier for earlier, later in zip(recorder.dials, recorder.dials[1:])]
        for attempt, gap in enumerate(gaps, start=1):
            nominal = min(CONFIG.backoff_max, CONFIG.backoff_initial * 2 ** (attempt - 1))
            assert nominal / 2 <= gap <= nominal + 1e-9, (attempt, gap)
        assert max(gaps) <= CONFIG.backoff_max
        assert "not listening" in net_lines(caplog, "dial_failed")[0]
        await c.start("firm-b")
        await wait_until(c.fully_connected, timeout=CONFIG.backoff_max + 5)


async def test_full_queue_drops_oldest_and_says_so(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = NetConfig(queue_frames=3)
    async with cluster(NAMES[:2], config) as c:
        a = await c.start("firm-a")
        for i in range(10):
            a.send("firm-b", i)
        state = a.peer_state("firm-b")
        assert (state.queued, state.dropped) == (3, 7)
        assert len(net_lines(caplog, "queue_full")) == 1
        b = await c.start("firm-b")
        assert [await receive(b) for _ in range(3)] == [("firm-a", 7), ("firm-a", 8), ("firm-a", 9)]
        await wait_until(lambda: bool(net_lines(caplog, "queue_drained")))
        assert "dropped=7" in net_lines(caplog, "queue_drained")[0]


# -- hostile and broken peers ----------------------------------------------------------------------


async def raw_hello(hub: MemoryHub, identity: str, target: str, hello: Any) -> tuple[trio.abc.Stream, FrameReader]:
    stream = await hub.connect_raw(identity, target)
    await send_frame(stream, hello)
    return stream, FrameReader(stream)


async def expect_refusal(reader: FrameReader, match: str) -> None:
    with trio.fail_after(30):
        answer = await reader.receive()
        assert set(answer) == {"error"} and match in answer["error"], answer
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await reader.receive()


async def test_other_consortium_is_refused_and_logged_on_both_sides(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        await c.start("firm-b", cid=OTHER_CID)
        await wait_until(lambda: len(net_lines(caplog, "refused")) >= 2 and len(net_lines(caplog, "refused_by_peer")) >= 2)
        refused = net_lines(caplog, "refused")
        assert any("node=firm-a" in line and "different consortium" in line for line in refused)
        assert any("node=firm-b" in line and "different consortium" in line for line in refused)
        assert any("different consortium" in line for line in net_lines(caplog, "refused_by_peer"))
        assert not a.peer_state("firm-b").connected
        assert "different consortium" in (a.peer_state("firm-b").last_error or "")


@pytest.mark.parametrize(
    "identity, hello, match",
    [
        ("firm-b", {"v": PROTOCOL_VERSION + 1, "cid": CID, "member": "firm-b"}, "hello.v: protocol version"),
        ("firm-b", make_hello(CID, "firm-c"), "hello.member: claims 'firm-c'"),
        ("mallory", make_hello(CID, "mallory"), "'mallory' is not a member"),
        ("firm-a", make_hello(CID, "firm-a"), "'firm-a' is ourselves"),
    ],
)
async def test_bad_hello_refused_with_reason_and_listener_keeps_serving(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, identity: str, hello: Any, match: str
) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        _stream, reader = await raw_hello(c.hub, identity, "firm-a", hello)
        await expect_refusal(reader, match)
        assert any(match in line for line in net_lines(caplog, "refused"))
        await c.start("firm-b")
        await wait_until(lambda: a.peer_state("firm-b").connected)


@pytest.mark.parametrize(
    "garbage, match",
    [
        (b"\x00\x00\x00\x03\xff\xff\xff", "frame: malformed CBOR"),
        (b"\x00\x00\x00\x00", "frame: zero length"),
        ((2**32 - 1).to_bytes(4, "big"), "exceeds the limit"),
        (b"\x00\x00\x00\x02\xa0\x00", "trailing"),
        (b"\x00\x00\x00\x01\x01", "frame: expected a map with one key"),
    ],
)
async def test_bad_frame_closes_only_that_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, garbage: bytes, match: str
) -> None:
    async with cluster(NAMES[:3]) as c:
        a = await c.start("firm-a")
        await c.start("firm-c")
        await wait_until(lambda: a.peer_state("firm-c").connected)
        stream, reader = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
        with trio.fail_after(30):
            assert await reader.receive() == make_hello(CID, "firm-a")
        await send_frame(stream, {"msg": "fine"})
        assert await receive(a) == ("firm-b", "fine")
        await stream.send_all(garbage)
        await expect_refusal(reader, match)
        down = [line for line in net_lines(caplog, "peer_down") if "peer=firm-b" in line]
        assert len(down) == 1 and match in down[0]
        assert a.peer_state("firm-c").connected  # the other connection never noticed
        a.send("firm-c", "still here")
        assert await receive(c.nets["firm-c"]) == ("firm-a", "still here")
        await c.start("firm-b")  # the real firm-b connects after the impostor
        await wait_until(lambda: a.peer_state("firm-b").connected)


async def test_silent_peer_is_dropped_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        stream, reader = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
        with trio.fail_after(30):
            assert await reader.receive() == make_hello(CID, "firm-a")
        await send_frame(stream, {"ping": 0})  # the dialler's confirmation, then silence
        start = trio.current_time()
        pings = 0
        with trio.fail_after(CONFIG.idle_timeout + 5):
            async for frame in reader:  # we read but never write: firm-a pings us, then gives up
                assert frame == {"ping": 0}
                pings += 1
        assert trio.current_time() - start == pytest.approx(CONFIG.idle_timeout)
        assert pings == int(CONFIG.idle_timeout // CONFIG.ping_interval) - (CONFIG.idle_timeout % CONFIG.ping_interval == 0)
        assert any("idle" in line for line in net_lines(caplog, "peer_down"))
        assert not a.peer_state("firm-b").connected
        del stream


async def test_hello_timeout(autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async with cluster(NAMES[:2]) as c:
        await c.start("firm-a")
        stream = await c.hub.connect_raw("firm-b", "firm-a")  # connects, never says hello
        with trio.fail_after(CONFIG.handshake_timeout + 5):
            assert await stream.receive_some() == b""
        assert any("hello: timed out" in line for line in net_lines(caplog, "hello_failed"))


async def test_events_are_peer_events(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        await c.start("firm-b")
        with trio.fail_after(60):
            event = await a.events.receive()
        assert isinstance(event, PeerEvent) and event.at == pytest.approx(trio.current_time(), abs=60)


# -- a peer that breaks the protocol is barred, in both directions ---------------------------------


async def test_peer_that_sends_a_bad_frame_is_barred_and_its_connections_refused_meanwhile(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        recorder = RecordingTransport(c.hub.transport("firm-a"))
        a = await c.start("firm-a", transport=recorder)
        for fault, bar in enumerate((CONFIG.backoff_initial, 2 * CONFIG.backoff_initial), start=1):
            stream, reader = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
            with trio.fail_after(30):
                assert await reader.receive() == make_hello(CID, "firm-a")
            await send_frame(stream, {"ping": 0})
            await wait_until(lambda: a.peer_state("firm-b").connected)
            await stream.send_all(b"\x00\x00\x00\x03\xff\xff\xff")
            await expect_refusal(reader, "malformed CBOR")
            barred_at = trio.current_time()
            [line] = [line for line in net_lines(caplog, "peer_barred")][fault - 1:]
            assert f"seconds={bar}" in line and f"faults={fault}" in line and "malformed CBOR" in line
            # Coming straight back is refused, with the reason, for as long as the bar lasts.
            _stream, again = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
            await expect_refusal(again, "barred for")
            assert any("malformed CBOR" in line for line in net_lines(caplog, "refused_barred"))
            await trio.sleep(bar)
        # Nor does firm-a dial firm-b while it is barred.
        assert not [t for t in recorder.dials if barred_at < t < barred_at + bar]
        # Once the bar is over, firm-b is welcome again.
        stream, reader = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
        with trio.fail_after(30):
            assert await reader.receive() == make_hello(CID, "firm-a")


async def test_member_disconnected_for_a_malformed_message_reconnects_only_after_the_bar(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        await c.start("firm-b")
        await wait_until(c.fully_connected)
        a.disconnect("firm-b", "malformed message: sigs: expected an array")
        await wait_until(lambda: not a.peer_state("firm-b").connected)
        down = trio.current_time()
        assert any("malformed message" in line for line in net_lines(caplog, "peer_barred"))
        await wait_until(c.fully_connected)
        assert trio.current_time() - down >= CONFIG.backoff_initial
        a.send("firm-b", "welcome back")
        assert await receive(c.nets["firm-b"]) == ("firm-a", "welcome back")


async def test_a_flooding_peer_does_not_hold_up_another_peers_messages(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster(NAMES[:3]) as c:
        a = await c.start("firm-a")
        b = await c.start("firm-b")
        quiet = await c.start("firm-c")
        await wait_until(c.fully_connected)
        for i in range(3 * CONFIG.incoming_buffer):
            b.send("firm-a", f"flood {i}")
        await wait_until(lambda: a.incoming.statistics().current_buffer_used == CONFIG.incoming_buffer)
        quiet.send("firm-a", "urgent")
        await wait_until(lambda: a.incoming.statistics().peers_waiting == 2)
        # firm-b's queue is full and its reader waits; firm-c's message is next but one.
        first_two = [await receive(a), await receive(a)]
        assert ("firm-c", "urgent") in first_two
        rest = [await receive(a) for _ in range(3 * CONFIG.incoming_buffer - 1)]
        assert [m for _, m in [x for x in first_two if x[0] == "firm-b"] + rest] == \
            [f"flood {i}" for i in range(3 * CONFIG.incoming_buffer)]


async def test_malformed_message_from_a_peer_already_gone_still_bars_it_and_a_non_member_is_ignored(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        a = await c.start("firm-a")
        a.disconnect("firm-b", "malformed message: late")  # firm-b is not connected (never started)
        assert any("malformed message: late" in line for line in net_lines(caplog, "peer_barred"))
        _stream, reader = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
        await expect_refusal(reader, "barred for")
        a.disconnect("mallory", "malformed message: from a member that left")
        assert any("peer=mallory" in line for line in net_lines(caplog, "not_disconnected"))


async def test_a_member_whose_hello_breaks_the_frame_limits_is_barred_too(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(NAMES[:2]) as c:
        await c.start("firm-a")
        stream = await c.hub.connect_raw("firm-b", "firm-a")
        await send_frame(stream, {"v": [[]] * (MAX_FRAME_ITEMS + 1)})
        await expect_refusal(FrameReader(stream), "CBOR items")
        assert any("hello: frame: more than" in line for line in net_lines(caplog, "peer_barred"))
        _stream, reader = await raw_hello(c.hub, "firm-b", "firm-a", make_hello(CID, "firm-b"))
        await expect_refusal(reader, "barred for")
