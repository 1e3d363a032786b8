"""Frames: round trips, early refusal of bad lengths, and a fuzz target for the decoder."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdb.core.codec import encode
from peerdb.core.errors import DecodeError, LimitError, LocalError, NonCanonicalError, RemoteError, TruncatedError
from peerdb.core.limits import MAX_FRAME_BYTES
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
