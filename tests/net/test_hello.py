"""The hello check: version first, then consortium, then the claimed name against the key."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import trio
import trio.testing

from peerdb.core.errors import ProtocolError
from peerdb.core.limits import PROTOCOL_VERSION
from peerdb.net.frames import FrameReader, send_frame
from peerdb.net.hello import RefusedByPeer, check_hello, make_hello, receive_hello, send_refusal

CID = hashlib.sha256(b"genesis").digest()
OTHER = hashlib.sha256(b"another genesis").digest()


def test_good_hello_passes() -> None:
    check_hello(make_hello(CID, "firm-b"), CID, "firm-b")


@pytest.mark.parametrize(
    "message, match",
    [
        ({"v": PROTOCOL_VERSION + 1, "cid": OTHER, "member": 5}, rf"hello\.v: protocol version {PROTOCOL_VERSION + 1}"),
        ({"v": "1", "cid": CID, "member": "firm-b"}, r"hello\.v"),
        ({"v": PROTOCOL_VERSION, "cid": OTHER, "member": "firm-b"}, r"hello\.cid: different consortium"),
        ({"v": PROTOCOL_VERSION, "cid": CID[:31], "member": "firm-b"}, r"hello\.cid: expected 32 bytes"),
        ({"v": PROTOCOL_VERSION, "cid": CID, "member": "firm-c"}, r"hello\.member: claims 'firm-c'.*'firm-b'"),
        ({"v": PROTOCOL_VERSION, "cid": CID, "member": ""}, r"hello\.member"),
        ({"v": PROTOCOL_VERSION, "cid": CID, "member": "firm-b", "x": 1}, r"hello: fields"),
        ([PROTOCOL_VERSION, CID, "firm-b"], r"hello: expected a map"),
    ],
)
def test_bad_hellos_name_the_field(message: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        check_hello(message, CID, "firm-b")


async def test_error_frame_instead_of_hello_is_a_refusal() -> None:
    left, right = trio.testing.memory_stream_pair()
    await send_refusal(left, "hello.cid: different consortium")
    with pytest.raises(RefusedByPeer, match="refused by firm-a: hello.cid") as info:
        await receive_hello(FrameReader(right), CID, "firm-a")
    assert info.value.reason == "hello.cid: different consortium"


async def test_hello_exchange_works_over_an_unbuffered_stream() -> None:
    """The dialler speaks first, so even a lockstep stream (no buffering) cannot deadlock."""
    dialler, acceptor = trio.testing.lockstep_stream_pair()

    async def accept() -> None:
        await receive_hello(FrameReader(acceptor), CID, "firm-a")
        await send_frame(acceptor, make_hello(CID, "firm-b"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            await send_frame(dialler, make_hello(CID, "firm-a"))
            await receive_hello(FrameReader(dialler), CID, "firm-b")
