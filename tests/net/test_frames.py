"""Frames: round trips, early refusal of bad lengths, and a fuzz target for the decoder."""

from __future__ import annotations

import threading
from typing import Any
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdb.core.codec import encode
from peerdb.core.errors import DecodeError, LimitError, LocalError, NonCanonicalError, RemoteError, TruncatedError
from peerdb.core.limits import MAX_FRAME_BYTES, MAX_FRAME_ITEMS
from peerdb.net.frames import HEADER_LEN, FrameDecoder, FrameReader, encode_frame, send_frame

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


def drain(decoder: FrameDecoder) -> list[Any]:
    out: list[Any] = []
    for _ in range(10_000):
        ready, message = decoder.next_message()
        if not ready:
            return out
        out.append(message)
    raise AssertionError("decoder produced too many messages")


@given(st.lists(cbor_values, min_size=1, max_size=5), st.integers(min_value=1, max_value=7))
def test_round_trip_in_arbitrary_chunks(values: list[Any], chunk: int) -> None:
    wire = b"".join(encode_frame(value) for value in values)
    decoder = FrameDecoder()
    got: list[Any] = []
    for start in range(0, len(wire), chunk):
        decoder.feed(wire[start : start + chunk])
        got.extend(drain(decoder))
    assert got == values
    assert not decoder.mid_frame


@settings(max_examples=500)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes_only_raise_remote_errors(data: bytes, chunk: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=4096)
    try:
        for start in range(0, len(data), chunk):
            decoder.feed(data[start : start + chunk])
            drain(decoder)
    except RemoteError:
        pass


@settings(max_examples=1000)
@given(st.binary(min_size=1, max_size=512))
def test_fuzz_well_framed_random_payloads_only_raise_remote_errors(body: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(len(body).to_bytes(HEADER_LEN, "big") + body)
    try:
        ready, _ = decoder.next_message()
    except RemoteError:
        return
    assert ready


def test_oversized_length_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder()
    decoder.feed((MAX_FRAME_BYTES + 1).to_bytes(HEADER_LEN, "big"))
    with pytest.raises(LimitError, match="exceeds the limit"):
        decoder.next_message()


def test_zero_length_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(DecodeError, match="zero length"):
        decoder.next_message()


def test_non_canonical_payload_refused() -> None:
    body = b"\x19\x00\x01"  # the integer 1 in a needlessly long form
    decoder = FrameDecoder()
    decoder.feed(len(body).to_bytes(HEADER_LEN, "big") + body)
    with pytest.raises(NonCanonicalError):
        decoder.next_message()


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(DecodeError):
        decoder.next_message()
    with pytest.raises(DecodeError, match="unusable"):
        decoder.feed(encode_frame(1))


def test_frame_of_tiny_items_is_refused_by_count_and_breaks_the_decoder() -> None:
    count = MAX_FRAME_BYTES - 16
    payload = b"\xa1\x63msg" + b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count  # {"msg": [[], [], ...]}
    decoder = FrameDecoder()
    decoder.feed(len(payload).to_bytes(HEADER_LEN, "big") + payload)
    with pytest.raises(LimitError, match=f"frame: more than {MAX_FRAME_ITEMS} CBOR items"):
        decoder.next_message()
    with pytest.raises(DecodeError, match="unusable"):
        decoder.next_message()


def test_sending_an_oversized_message_is_our_bug() -> None:
    with pytest.raises(LocalError):
        encode_frame(b"x" * 100, max_frame_bytes=50)


async def test_reader_over_a_stream_clean_eof_and_truncation() -> None:
    left, right = trio.testing.memory_stream_pair()
    await send_frame(left, {"a": 1})
    await send_frame(left, [1, 2])
    await left.send_all(encode_frame("cut")[:-1])
    await left.aclose()
    reader = FrameReader(right)
    assert await reader.receive() == {"a": 1}
    assert await reader.receive() == [1, 2]
    with pytest.raises(TruncatedError):
        await reader.receive()


async def test_reader_iterates_until_clean_eof() -> None:
    left, right = trio.testing.memory_stream_pair()
    for value in range(3):
        await send_frame(left, value)
    await left.aclose()
    assert [message async for message in FrameReader(right)] == [0, 1, 2]


async def test_reader_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    _left, right = trio.testing.memory_stream_pair()
    reader = FrameReader(right, idle_timeout=7.0)
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await reader.receive()
    assert trio.current_time() - start == pytest.approx(7.0)


async def test_reader_refuses_oversize_before_the_body_arrives() -> None:
    left, right = trio.testing.memory_stream_pair()
    reader = FrameReader(right, max_frame_bytes=1000)
    await left.send_all((1001).to_bytes(HEADER_LEN, "big"))  # no body will ever follow
    with trio.fail_after(5), pytest.raises(LimitError):
        await reader.receive()


async def test_reader_decodes_large_payloads_in_a_worker_thread_small_ones_inline() -> None:
    left, right = trio.testing.memory_stream_pair()
    threads: list[int] = []
    decode_payload = FrameDecoder.decode_payload

    def recording(self: FrameDecoder, payload: bytes) -> Any:
        threads.append(threading.get_ident())
        return decode_payload(self, payload)

    big, small = [b"x" * 100] * 10, [1, 2]
    await send_frame(left, big)
    await send_frame(left, small)
    await send_frame(left, {"msg": [[]] * (MAX_FRAME_ITEMS + 1)})
    reader = FrameReader(right, offload_bytes=len(encode(small)), limiter=trio.CapacityLimiter(1))
    with mock.patch.object(FrameDecoder, "decode_payload", recording), trio.fail_after(30):
        assert await reader.receive_sized() == (big, len(encode(big)))
        assert await reader.receive_sized() == (small, len(encode(small)))
        with pytest.raises(LimitError, match="CBOR items"):  # refused in the thread, raised here
            await reader.receive()
        with pytest.raises(DecodeError, match="unusable"):
            await reader.receive()
    loop = threading.get_ident()
    assert threads[0] != loop and threads[1] == loop and threads[2] != loop


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_reader_over_a_stream(data: bytes) -> None:
    async def main() -> None:
        left, right = trio.testing.memory_stream_pair()
        await left.send_all(data)
        await left.aclose()
        reader = FrameReader(right, max_frame_bytes=512)
        try:
            for _ in range(len(data) + 1):
                await reader.receive()
        except (RemoteError, trio.EndOfChannel):
            return
        raise AssertionError("more messages than bytes")

    trio.run(main)


def test_frame_bytes_are_length_plus_canonical_cbor() -> None:
    assert encode_frame({"b": 1, "a": 2}) == len(encode({"a": 2, "b": 1})).to_bytes(4, "big") + encode({"a": 2, "b": 1})
