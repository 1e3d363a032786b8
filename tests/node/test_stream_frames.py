"""The write stream's frame codec: every frame round-trips byte for byte, and no input makes the
parsers fail any other way than with their documented error — a client frame the node cannot
attribute closes the connection (with the close code of its kind), one it can attribute is
refused by id and the connection stays.
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from peerdb.core.codec import encode
from peerdb.core.limits import MAX_TX_BYTES
from peerdb.stream_frames import (BAD_FRAME, BAD_REQUEST, CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG,
                                  CLOSE_UNSUPPORTED_DATA, DEFAULT_TIMEOUT_MS, MAX_FRAME_BYTES, MAX_FRAME_TXS,
                                  MAX_ID, MAX_TIMEOUT_MS, SUBMIT_OVERHEAD_BYTES, TEXT_FRAME, TOO_LARGE, UNKNOWN_OP,
                                  VIEWS, Admitted, Busy, ErrorFrame, FrameError, Hello, Limits, Reached, Refusal,
                                  StreamProtocolError, SubmitFrame, TimedOut, encode_server_frame,
                                  parse_client_frame, parse_server_frame, tx_cost_bytes)

CLOSING = {BAD_FRAME: CLOSE_INVALID_PAYLOAD, TEXT_FRAME: CLOSE_UNSUPPORTED_DATA, TOO_LARGE: CLOSE_MESSAGE_TOO_BIG}
"""Codes that close the connection, with their WebSocket close codes (docs/stream.md)."""
KEEPING = {BAD_REQUEST, UNKNOWN_OP}
"""Codes that refuse one identified frame and keep the connection."""

frame_ids = st.integers(0, MAX_ID)
txs = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20)
views = st.lists(st.sampled_from(VIEWS), unique=True)
timeouts = st.integers(1, MAX_TIMEOUT_MS)


def check_refusal(exc: FrameError) -> None:
    """The documented shape of a refusal: a closing code closes with its close code and may lack
    an id; a keeping code names the frame and closes nothing."""
    if exc.code in CLOSING:
        assert exc.close == CLOSING[exc.code], exc.code
    else:
        assert exc.code in KEEPING and exc.close is None and exc.frame_id is not None, (exc.code, exc.close)
    assert exc.message


@given(frame_ids, txs, views, timeouts)
@example(0, [b"\x00"], [], DEFAULT_TIMEOUT_MS)
@example(MAX_ID, [b"x" * MAX_TX_BYTES], list(VIEWS), MAX_TIMEOUT_MS)
def test_submit_frames_round_trip(frame_id: int, raws: list[bytes], asked: list[str], timeout: int) -> None:
    frame = SubmitFrame(frame_id, tuple(raws), tuple(v for v in VIEWS if v in asked), timeout)
    data = frame.encode()
    assert parse_client_frame(data) == frame
    assert len(data) <= SUBMIT_OVERHEAD_BYTES + sum(tx_cost_bytes(t) for t in raws)


def test_views_are_acknowledged_weakest_first_whatever_order_they_are_asked_in() -> None:
    data = encode({"op": "submit", "id": 1, "txs": [b"t"], "views": ["unanimous_signed", "tentative"]})
    assert parse_client_frame(data).views == ("tentative", "unanimous_signed")


@given(st.binary(max_size=400))
@example(b"")
@example(b"\xff")
@example(b"\xa0")  # an empty map: no id
@example(cbor2.dumps({"op": "submit", "id": 1, "txs": [b"t"]}))  # not canonical: keys out of order
@example(encode([1, 2]))
@example(encode({"op": "submit", "id": -1, "txs": [b"t"]}))
@example(encode({"op": "submit", "id": 2**63, "txs": [b"t"]}))
@example(encode({"op": "submit", "id": True, "txs": [b"t"]}))
@example(encode({"op": "cancel", "id": 3}))
@example(encode({"id": 3}))
@example(encode({"op": "submit", "id": 4, "txs": []}))
@example(encode({"op": "submit", "id": 4, "txs": ["text"]}))
@example(encode({"op": "submit", "id": 4, "txs": [b""]}))
@example(encode({"op": "submit", "id": 4, "txs": b"t"}))
@example(encode({"op": "submit", "id": 5, "txs": [b"t"], "views": ["final"]}))
@example(encode({"op": "submit", "id": 5, "txs": [b"t"], "views": ["majority", "majority"]}))
@example(encode({"op": "submit", "id": 5, "txs": [b"t"], "views": "majority"}))
@example(encode({"op": "submit", "id": 6, "txs": [b"t"], "timeout_ms": 0}))
@example(encode({"op": "submit", "id": 6, "txs": [b"t"], "timeout_ms": MAX_TIMEOUT_MS + 1}))
@example(encode({"op": "submit", "id": 7, "txs": [b"t"], "wait": "majority"}))
def test_no_bytes_break_the_client_frame_parser(data: bytes) -> None:
    try:
        frame = parse_client_frame(data)
    except FrameError as exc:
        check_refusal(exc)
        return
    assert frame.encode() == data  # only the canonical encoding of a valid frame gets through


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.sampled_from(["op", "id", "txs", "views", "timeout_ms", "extra"]), cbor_values))
@example({"op": "submit", "id": 9, "txs": [b"t"], "extra": None})
@example({"op": "submit", "id": 9, "txs": [b"t", 1]})
def test_maps_with_wrong_fields_are_refused_by_id_when_it_can_be_read(fields: dict[str, Any]) -> None:
    try:
        parse_client_frame(encode(fields))
    except FrameError as exc:
        check_refusal(exc)
        frame_id = fields.get("id")
        readable = type(frame_id) is int and 0 <= frame_id <= MAX_ID
        assert (exc.frame_id == frame_id and exc.close is None) if readable else exc.close is not None


def test_text_and_oversized_frames_close_with_their_own_codes() -> None:
    with pytest.raises(FrameError) as text:
        parse_client_frame('{"op": "submit"}')
    assert (text.value.code, text.value.close) == (TEXT_FRAME, CLOSE_UNSUPPORTED_DATA)
    big = SubmitFrame(1, tuple(b"x" * (MAX_TX_BYTES - 16) for _ in range(5))).encode()
    assert len(big) > MAX_FRAME_BYTES
    with pytest.raises(FrameError) as large:
        parse_client_frame(big)
    assert (large.value.code, large.value.close) == (TOO_LARGE, CLOSE_MESSAGE_TOO_BIG)


def test_a_frame_a_little_over_the_transaction_limit_is_refused_by_id() -> None:
    data = SubmitFrame(11, tuple(b"t" for _ in range(MAX_FRAME_TXS + 1))).encode()
    with pytest.raises(FrameError) as over:
        parse_client_frame(data)
    assert (over.value.code, over.value.frame_id, over.value.close) == (BAD_REQUEST, 11, None)
    assert f"limit of {MAX_FRAME_TXS}" in over.value.message
    items = SubmitFrame(12, tuple(b"t" for _ in range(3 * MAX_FRAME_TXS))).encode()
    with pytest.raises(FrameError) as way_over:
        parse_client_frame(items)
    assert (way_over.value.code, way_over.value.close) == (TOO_LARGE, CLOSE_MESSAGE_TOO_BIG)


txids = st.lists(st.binary(min_size=32, max_size=32), max_size=6).map(tuple)
texts = st.text(max_size=60)
server_frames = st.one_of(
    st.builds(Hello, st.text(min_size=1, max_size=20),
              st.builds(Limits, *(st.integers(1, 2**40) for _ in range(5))), st.integers(1, 9)),
    st.builds(Admitted, frame_ids, txids, txids,
              st.lists(st.builds(Refusal, st.integers(0, MAX_FRAME_TXS), st.text(min_size=1, max_size=20), texts),
                       max_size=4).map(tuple)),
    st.builds(Busy, frame_ids, st.integers(0, 2**32), st.integers(0, 2**32), texts),
    st.builds(Reached, st.sampled_from(VIEWS), st.lists(frame_ids, max_size=6).map(tuple)),
    st.builds(TimedOut, frame_ids, st.sampled_from(VIEWS), texts),
    st.builds(ErrorFrame, st.none() | frame_ids, st.text(min_size=1, max_size=20), texts),
)


@given(server_frames)
@example(ErrorFrame(None, BAD_FRAME, "frame: must be a map"))
@example(Admitted(0, (), (), ()))
def test_node_frames_round_trip(frame: Any) -> None:
    assert parse_server_frame(encode_server_frame(frame)) == frame


def test_long_messages_are_cut_to_a_bounded_reason() -> None:
    frame = parse_server_frame(encode_server_frame(ErrorFrame(1, "rejected", "x" * 5000)))
    assert isinstance(frame, ErrorFrame) and len(frame.message) <= 1000 and frame.message.endswith("...")


@given(st.binary(max_size=300) | st.builds(encode, st.dictionaries(st.sampled_from(["t", "id", "view", "ids"]),
                                                                     cbor_values)))
@example(encode({"t": "view", "view": "sideways", "ids": [1]}))
@example(encode({"t": "admitted", "id": 1, "accepted": [b"short"], "duplicates": [], "refused": []}))
@example(encode({"t": "hello"}))
@example(encode({"t": "admitted", "id": 1, "accepted": [], "duplicates": [], "refused": [[0]]}))
@example(encode({"t": "gossip", "id": 1}))
def test_no_bytes_break_the_node_frame_parser(data: bytes) -> None:
    try:
        parse_server_frame(data)
    except StreamProtocolError:
        pass
