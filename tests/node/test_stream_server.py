"""The write stream's node side in process: two members on the memory hub, the stream joined to
the client library (or to raw frames) by memory channels, under the autojump clock.

Every transaction is acknowledged with its txid and each view asked for; refusals carry the
pool's typed reason; frames reach the pool in the order sent; a full pool holds the frame
(``busy``) and stops the reading; a spent window stops the reading; bad frames are refused
with the documented code, closing only when the frame cannot be attributed; whatever was
admitted is durable when a frame times out or the client goes away; and only the application
token opens the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peerdb.client.stream import ACCEPTED, ADMITTED, DUPLICATE, REFUSED, connect_writer
from peerdb.core.codec import encode
from peerdb.core.consortium import NamespaceRule
from peerdb.core.model import Tx
from peerdb.node.http import Api
from peerdb.node.http.stream import BUSY_HOLD_S, StreamConnection
from peerdb.stream_frames import (BAD_FRAME, BAD_REQUEST, CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG,
                                  CLOSE_UNSUPPORTED_DATA, DUPLICATE_ID, MAX_FRAME_BYTES, TEXT_FRAME, TOO_LARGE,
                                  UNKNOWN_OP, Admitted, Busy, ErrorFrame, Hello, Limits, Reached, SubmitFrame,
                                  TimedOut, parse_server_frame)
from tests.helpers.node_harness import Cluster
from tests.helpers.stream_link import MemoryLink

TOKEN = "t" * 32
READ_TOKEN = "r" * 32
AUDIT_TOKEN = "a" * 32
VIEWS3 = ("tentative", "majority", "unanimous_signed")


@dataclass
class NodeStream:
    cluster: Cluster
    link: MemoryLink
    conn: StreamConnection
    ended: trio.Event

    async def send(self, frame: SubmitFrame | bytes | str) -> None:
        await self.link.client.send_message(frame.encode() if isinstance(frame, SubmitFrame) else frame)

    async def receive(self) -> Any:
        return parse_server_frame(await self.link.client.get_message())

    def pool(self) -> list[bytes]:
        return list(self.cluster.nodes["firm-a"].engine.mempool)

    def stop_blocks(self) -> None:
        for node in self.cluster.nodes.values():
            setattr(node.engine, "proposal_due", lambda now_ms: False)  # the pool only fills

    def resume_blocks(self) -> None:
        for node in self.cluster.nodes.values():
            delattr(node.engine, "proposal_due")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path, names=("firm-a", "firm-b"), namespaces=(NamespaceRule("locked", writers=("firm-b",)),))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        yield cluster
        await cluster.close()
        nursery.cancel_scope.cancel()


async def open_node_stream(cluster: Cluster, nursery: trio.Nursery, *, limits: Limits = Limits(),
                           capacity: int = 0) -> NodeStream:
    node = cluster.nodes["firm-a"]
    api = Api(node.service, TOKEN, cluster.client_keys["firm-a"])
    link = MemoryLink(capacity)
    conn = StreamConnection(api.context, link.node, limits=limits)
    ended = trio.Event()

    async def run() -> None:
        try:
            await conn.run()
        finally:
            ended.set()
    nursery.start_soon(run)
    return NodeStream(cluster, link, conn, ended)


def forged(tx: Tx) -> Tx:
    """The same transaction with a signature that does not verify."""
    return Tx(tx.member, tx.client, tx.nonce, tx.expires_ms, tx.ops, bytes(64), tx.body)


async def test_every_transaction_is_acknowledged_with_its_txid_and_each_view_asked(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery)
        good = [cluster.tx("firm-a", f"k{i}") for i in range(30)]
        async with connect_writer(stream.link.client, views=VIEWS3, timeout_s=120) as writer:
            assert writer.member == "firm-a"
            pendings = [await writer.submit(tx) for tx in good]
            again = await writer.submit(good[0])
            bad_signature = await writer.submit(forged(cluster.tx("firm-a", "forged")))
            not_ours = await writer.submit(cluster.tx("firm-a", "x", namespace="locked"))
        outcomes = [await p.wait() for p in pendings]
        assert [o.txid for o in outcomes] == [t.txid for t in good]
        for o in outcomes:
            assert o.ok and o.status == ACCEPTED, o
            steps = [o.reached_s[k] for k in (ADMITTED, *VIEWS3)]
            assert steps == sorted(steps), o
        assert (await again.wait()).status == DUPLICATE and (await again.wait()).ok
        refused = await bad_signature.wait()
        assert (refused.status, refused.code) == (REFUSED, "bad_signature") and "signature" in (refused.message or "")
        forbidden = await not_ours.wait()
        assert (forbidden.status, forbidden.code) == (REFUSED, "forbidden") and not forbidden.ok
        assert cluster.included("firm-b", good, "unanimous_signed")
        nursery.cancel_scope.cancel()


async def test_frames_enter_the_pool_in_the_order_they_were_sent(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery, capacity=8)
        stream.stop_blocks()
        frames = [[cluster.tx("firm-a", f"f{f}t{i}") for i in range(3)] for f in range(6)]
        for f, txs in enumerate(frames):  # all queued before the node reads the first
            await stream.send(SubmitFrame(f, tuple(t.raw for t in txs)))
        assert isinstance(await stream.receive(), Hello)
        answers = [await stream.receive() for _ in frames]
        assert sorted(a.id for a in answers) == list(range(6))
        assert all(isinstance(a, Admitted) and len(a.accepted) == 3 for a in answers)
        assert stream.pool() == [t.txid for txs in frames for t in txs]
        nursery.cancel_scope.cancel()


async def test_a_full_pool_holds_the_frame_says_busy_and_stops_reading(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery)
        stream.stop_blocks()
        cluster.nodes["firm-a"].engine.mempool_max = 10
        first = [cluster.tx("firm-a", f"a{i}") for i in range(8)]
        held = [cluster.tx("firm-a", f"b{i}") for i in range(8)]
        behind = [cluster.tx("firm-a", f"c{i}") for i in range(2)]
        assert isinstance(await stream.receive(), Hello)
        await stream.send(SubmitFrame(1, tuple(t.raw for t in first), ("majority",)))
        assert isinstance(await stream.receive(), Admitted)
        await stream.send(SubmitFrame(2, tuple(t.raw for t in held), ("majority",)))
        busy = await stream.receive()
        assert isinstance(busy, Busy) and (busy.id, busy.pool, busy.limit) == (2, 8, 10)
        assert "limit 10" in busy.message
        # The node had already asked for frame 3 when frame 2 came back busy: it reads it but
        # does not admit it, and reads nothing more while frame 2 is held.
        await stream.send(SubmitFrame(3, tuple(t.raw for t in behind), ("majority",)))
        with trio.move_on_after(5):
            await stream.send(SubmitFrame(4, (cluster.tx("firm-a", "d").raw,), ("majority",)))
            pytest.fail("the node read a frame while another was held")
        assert stream.pool() == [t.txid for t in first]
        stream.resume_blocks()
        admitted: list[int] = []
        reached: set[int] = set()
        while reached != {1, 2, 3}:
            frame = await stream.receive()
            if isinstance(frame, Admitted):
                assert not frame.refused and len(frame.accepted) == {2: 8, 3: 2}[frame.id], frame
                admitted.append(frame.id)
            else:
                assert isinstance(frame, Reached) and frame.view == "majority", frame
                reached.update(frame.ids)
        assert admitted == [2, 3]  # the held frame first, then the one read behind it
        assert stream.conn.stats.busy == 1
        nursery.cancel_scope.cancel()


async def test_a_frame_held_past_the_hold_time_is_refused_mempool_full(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery)
        stream.stop_blocks()
        cluster.nodes["firm-a"].engine.mempool_max = 4
        assert isinstance(await stream.receive(), Hello)
        await stream.send(SubmitFrame(1, tuple(cluster.tx("firm-a", f"a{i}").raw for i in range(4))))
        assert isinstance(await stream.receive(), Admitted)
        await stream.send(SubmitFrame(2, tuple(cluster.tx("firm-a", f"b{i}").raw for i in range(2))))
        assert isinstance(await stream.receive(), Busy)
        started = trio.current_time()
        refused = await stream.receive()
        assert trio.current_time() - started >= BUSY_HOLD_S
        assert isinstance(refused, Admitted) and refused.id == 2 and not refused.accepted
        assert [(r.index, r.code) for r in refused.refused] == [(0, "mempool_full"), (1, "mempool_full")]
        # Reading resumed: a frame larger than the whole pool is refused at once, without a hold.
        await stream.send(SubmitFrame(3, tuple(cluster.tx("firm-a", f"c{i}").raw for i in range(5))))
        larger = await stream.receive()
        assert isinstance(larger, Admitted) and {r.code for r in larger.refused} == {"mempool_full"}
        assert "larger than the whole pool" in larger.refused[0].message
        assert stream.conn.stats.busy == 1
        nursery.cancel_scope.cancel()


async def test_a_spent_window_stops_the_reading_until_frames_finish(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery, limits=Limits(max_in_flight_frames=2))
        stream.stop_blocks()
        hello = await stream.receive()
        assert isinstance(hello, Hello) and hello.limits.max_in_flight_frames == 2
        txs = [cluster.tx("firm-a", f"w{i}") for i in range(4)]
        for i in range(2):
            await stream.send(SubmitFrame(i, (txs[i].raw,), ("majority",)))
            assert isinstance(await stream.receive(), Admitted)
        await stream.send(SubmitFrame(2, (txs[2].raw,), ("majority",)))  # read, then waits for room
        with trio.move_on_after(5):
            await stream.send(SubmitFrame(3, (txs[3].raw,), ("majority",)))
            pytest.fail("the node read past its window")
        assert stream.pool() == [t.txid for t in txs[:2]]
        stream.resume_blocks()
        reached: set[int] = set()
        while reached != {0, 1, 2}:
            frame = await stream.receive()
            if isinstance(frame, Reached):
                reached.update(frame.ids)
        nursery.cancel_scope.cancel()


async def test_the_client_waits_when_the_window_is_full(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery, limits=Limits(max_in_flight_txs=4))
        stream.stop_blocks()
        async with connect_writer(stream.link.client, views=("majority",), timeout_s=120) as writer:
            pendings = [await writer.submit(cluster.tx("firm-a", f"q{i}")) for i in range(4)]
            fifth = cluster.tx("firm-a", "q4")
            with trio.move_on_after(5):
                await writer.submit(fifth)
                pytest.fail("submit returned while the window was full")
            assert writer.stats.window_waits == 1 and writer.outstanding == 4
            stream.resume_blocks()
            pendings.append(await writer.submit(fifth))
        assert all([(await p.wait()).ok for p in pendings])
        nursery.cancel_scope.cancel()


BAD_FRAMES = [
    pytest.param("not binary", TEXT_FRAME, CLOSE_UNSUPPORTED_DATA, id="text"),
    pytest.param(b"\xff\x00garbage", BAD_FRAME, CLOSE_INVALID_PAYLOAD, id="not-cbor"),
    pytest.param(encode([1, 2, 3]), BAD_FRAME, CLOSE_INVALID_PAYLOAD, id="not-a-map"),
    pytest.param(encode({"op": "submit", "txs": [b"t"]}), BAD_FRAME, CLOSE_INVALID_PAYLOAD, id="no-id"),
    pytest.param(b"\x00" * (MAX_FRAME_BYTES + 1), TOO_LARGE, CLOSE_MESSAGE_TOO_BIG, id="oversize"),
    pytest.param(encode({"op": "fetch", "id": 7}), UNKNOWN_OP, None, id="unknown-op"),
    pytest.param(encode({"op": "submit", "id": 7, "txs": []}), BAD_REQUEST, None, id="no-txs"),
    pytest.param(encode({"op": "submit", "id": 7, "txs": [b"t"], "views": ["final"]}), BAD_REQUEST, None,
                 id="unknown-view"),
]


@pytest.mark.parametrize(("data", "code", "close"), BAD_FRAMES)
async def test_bad_frames_are_refused_with_their_code_closing_only_unattributable_ones(
        cluster: Cluster, autojump_clock: trio.testing.MockClock, data: bytes | str, code: str,
        close: int | None) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery, capacity=4)
        assert isinstance(await stream.receive(), Hello)
        await stream.send(data)
        error = await stream.receive()
        assert isinstance(error, ErrorFrame) and error.code == code and error.message
        if close is not None:
            await stream.ended.wait()
            assert stream.link.close_reason is not None and stream.link.close_reason.code == close
        else:
            assert error.id == 7
            ok = cluster.tx("firm-a", "after")
            await stream.send(SubmitFrame(8, (ok.raw,)))  # the connection still serves
            admitted = await stream.receive()
            assert isinstance(admitted, Admitted) and admitted.accepted == (ok.txid,)
        assert stream.conn.stats.frames == (0 if close is not None else 1)  # the bad frame started nothing
        nursery.cancel_scope.cancel()


async def test_a_frame_id_still_in_flight_is_refused_and_the_first_frame_is_kept(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery, capacity=4)
        stream.stop_blocks()
        assert isinstance(await stream.receive(), Hello)
        first, second = cluster.tx("firm-a", "one"), cluster.tx("firm-a", "two")
        await stream.send(SubmitFrame(5, (first.raw,), ("majority",)))
        assert isinstance(await stream.receive(), Admitted)
        await stream.send(SubmitFrame(5, (second.raw,), ("majority",)))
        error = await stream.receive()
        assert isinstance(error, ErrorFrame) and (error.id, error.code) == (5, DUPLICATE_ID)
        assert stream.pool() == [first.txid]
        nursery.cancel_scope.cancel()


async def test_what_was_admitted_is_durable_when_a_frame_times_out_or_the_client_leaves(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    store = cluster.nodes["firm-a"].store
    async with trio.open_nursery() as nursery:
        stream = await open_node_stream(cluster, nursery, capacity=4)
        stream.stop_blocks()
        assert isinstance(await stream.receive(), Hello)
        timed = [cluster.tx("firm-a", f"t{i}") for i in range(2)]
        await stream.send(SubmitFrame(1, tuple(t.raw for t in timed), ("majority",), timeout_ms=2000))
        assert isinstance(await stream.receive(), Admitted)
        assert store.mempool_items() == []  # a frame that waits for views is not fsynced on admission
        timeout = await stream.receive()
        assert isinstance(timeout, TimedOut) and (timeout.id, timeout.view) == (1, "majority")
        assert {t.txid for t in store.mempool_items()} == {t.txid for t in timed}
        left = [cluster.tx("firm-a", f"l{i}") for i in range(3)]
        await stream.send(SubmitFrame(2, tuple(t.raw for t in left), ("majority",)))
        assert isinstance(await stream.receive(), Admitted)
        await stream.link.client.aclose()
        await stream.ended.wait()
        assert {t.txid for t in store.mempool_items()} == {t.txid for t in timed + left}
        nursery.cancel_scope.cancel()


async def test_only_the_application_token_opens_the_stream(
        cluster: Cluster, autojump_clock: trio.testing.MockClock) -> None:
    node = cluster.nodes["firm-a"]
    app = Api(node.service, TOKEN, cluster.client_keys["firm-a"], read_token=READ_TOKEN, audit_token=AUDIT_TOKEN)

    async def handshake(token: str | None) -> tuple[int, str]:
        sent: list[dict[str, Any]] = []
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        scope = {"type": "websocket", "path": "/v1/stream", "headers": headers, "query_string": b"",
                 "extensions": {"websocket.http.response": {}}}

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"} if not sent else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
        with trio.move_on_after(5):
            await app(scope, receive, send)
        first = sent[0]
        if first["type"] == "websocket.accept":
            return 101, ""
        assert first["type"] == "websocket.http.response.start"
        return first["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()

    for token, status, words in ((None, 401, "bearer token"), ("wrong" * 4, 401, "bearer token"),
                                 (READ_TOKEN, 401, "read token only reads"), (AUDIT_TOKEN, 403, "auditor token")):
        got, body = await handshake(token)
        assert got == status and words in body, (token, got, body)
    assert (await handshake(TOKEN))[0] == 101
