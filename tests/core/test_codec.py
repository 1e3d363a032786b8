"""The hardened canonical CBOR codec: one value, one encoding; anything else is a DecodeError."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from unittest import mock

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core import codec
from peerdb.core.codec import (
    MAX_UINT,
    MIN_INT,
    SIGNATURE_PREFIX,
    decode,
    encode,
    expect_bytes,
    expect_int,
    expect_list,
    expect_str,
    signing_message,
    tagged_hash,
)
from peerdb.core.errors import (
    DecodeError,
    LimitError,
    NonCanonicalError,
    RemoteError,
    TrailingBytesError,
    TruncatedError,
)
from peerdb.core.limits import MAX_CBOR_DEPTH, MAX_FRAME_ITEMS

from tests.helpers.core import assert_names

# --- strategies ----------------------------------------------------------------------------------

ints = st.integers(min_value=MIN_INT, max_value=MAX_UINT)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
scalars = ints | st.binary(max_size=40) | texts | st.booleans() | st.none()
keys = st.integers(min_value=MIN_INT, max_value=MAX_UINT) | texts
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
"""Every kind of value PeerDB objects are made of (nesting stays far below MAX_CBOR_DEPTH)."""


# --- encode / decode: the good path --------------------------------------------------------------

@pytest.mark.parametrize("value, hex_", [
    (0, "00"), (23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (-1, "20"),
    (MAX_UINT, "1bffffffffffffffff"), (MIN_INT, "3b7fffffffffffffff"),
    (b"", "40"), (b"\x01\x02", "420102"), ("", "60"), ("a", "6161"),
    (False, "f4"), (True, "f5"), (None, "f6"), ([], "80"), ([1, [2]], "82018102"),
    ({"b": 1, "a": 2}, "a2616102616201"),
])
def test_known_encodings(value: Any, hex_: str) -> None:
    assert encode(value).hex() == hex_
    assert decode(bytes.fromhex(hex_)) == value


def test_map_keys_are_ordered_canonically_whatever_the_insertion_order() -> None:
    a = encode({"bb": 1, "a": 2, 10: 3, -1: 4})
    b = encode({-1: 4, 10: 3, "a": 2, "bb": 1})
    assert a == b
    assert decode(a) == {"bb": 1, "a": 2, 10: 3, -1: 4}


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode([1, b"x"])
    assert decode(bytearray(data)) == [1, b"x"]  # type: ignore[arg-type]
    assert decode(memoryview(data)) == [1, b"x"]  # type: ignore[arg-type]


def test_nesting_up_to_the_limit_is_accepted() -> None:
    deepest: Any = 0
    for _ in range(MAX_CBOR_DEPTH):
        deepest = [deepest]
    assert decode(encode(deepest)) == deepest


# --- encode / decode: every way to fail ----------------------------------------------------------

BAD_INPUTS = [
    # (name, hex, error class, reason fragment)
    ("empty", "", TruncatedError, "empty"),
    ("truncated uint8 head", "18", TruncatedError, "truncated"),
    ("truncated uint64 head", "1b0000", TruncatedError, "truncated"),
    ("truncated byte string", "4301", TruncatedError, "truncated"),
    ("truncated text string", "63616263"[:6], TruncatedError, "truncated"),
    ("truncated array", "830102", TruncatedError, "truncated"),
    ("truncated map", "a16161", TruncatedError, "truncated"),
    ("huge byte string claim", "5b7fffffffffffffff", TruncatedError, "truncated"),
    ("huge array claim", "9bffffffffffffffff", TruncatedError, "truncated"),
    ("trailing byte", "0000", TrailingBytesError, "trailing"),
    ("trailing item", "8101f6", TrailingBytesError, "trailing"),
    ("non-shortest int", "1800", NonCanonicalError, "canonical"),
    ("non-shortest int16", "190017", NonCanonicalError, "canonical"),
    ("non-shortest length", "580100", NonCanonicalError, "canonical"),
    ("unsorted map keys", "a2616201616102", NonCanonicalError, "canonical"),
    ("duplicate map keys", "a2616101616102", NonCanonicalError, "canonical"),
    ("indefinite bytes", "5f420102ff", NonCanonicalError, "indefinite"),
    ("indefinite array", "9f01ff", NonCanonicalError, "indefinite"),
    ("indefinite map", "bf616101ff", NonCanonicalError, "indefinite"),
    ("tag: datetime", "c074323031332d30332d32315432303a30343a30305a", DecodeError, "tag"),
    ("tag: bignum", "c24101", DecodeError, "tag"),
    ("tag: shared reference", "d81c81d81d00", DecodeError, "tag"),
    ("tag: string reference namespace", "d90100826161d819 00".replace(" ", ""), DecodeError, "tag"),
    ("half float", "f93c00", DecodeError, "float"),
    ("double float", "fb3ff0000000000000", DecodeError, "float"),
    ("undefined", "f7", DecodeError, "simple"),
    ("simple value 16", "f0", DecodeError, "simple"),
    ("simple value 255", "f8ff", DecodeError, "simple"),
    ("lone break", "ff", DecodeError, "break"),
    ("reserved additional info", "1c", DecodeError, "reserved"),
    ("negative int below -2**63", "3bffffffffffffffff", DecodeError, "64-bit"),
    ("byte string map key", "a1410000", DecodeError, "map key"),
    ("array map key", "a1810000", DecodeError, "map key"),
    ("invalid utf-8", "62c328", DecodeError, "malformed"),
    ("too deep", "81" * (MAX_CBOR_DEPTH + 1) + "00", LimitError, "deeper"),
]


@pytest.mark.parametrize("name, hex_, error, reason", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_every_bad_input_raises_its_own_error_naming_the_object(
        name: str, hex_: str, error: type[DecodeError], reason: str) -> None:
    with pytest.raises(error) as info:
        decode(bytes.fromhex(hex_), what="thing")
    assert type(info.value) is error, f"{name}: got {type(info.value).__name__}"
    assert str(info.value).startswith("thing: ")
    assert_names(info.value, reason)


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(LimitError) as info:
        decode(encode(b"x" * 100), max_size=50, what="frame")
    assert_names(info.value, "frame", "exceeds the limit of 50")


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(DecodeError) as info:
        decode("00", what="frame")  # type: ignore[arg-type]
    assert_names(info.value, "frame", "expected bytes", "str")


def test_shared_reference_bomb_is_refused_before_it_is_expanded() -> None:
    # 6 shareable lists, each holding 30 references to the previous one: about 500 bytes that
    # cbor2 would turn into a structure with 30**5 paths to walk. The tag scan refuses it at once.
    def shareable(body: bytes) -> bytes:
        return b"\xd8\x1c" + body

    def ref(i: int) -> bytes:
        return b"\xd8\x1d" + cbor2.dumps(i)

    items = [shareable(b"\x81\x00")] + [shareable(b"\x98\x1e" + ref(i - 1) * 30) for i in range(1, 6)]
    bomb = b"\x86" + b"".join(items)
    with pytest.raises(DecodeError) as info:
        decode(bomb)
    assert_names(info.value, "tag")


# --- the item limit: decoding work bounded by items, not only bytes --------------------------------

def items_in(value: Any) -> int:
    """CBOR items in the encoding of ``value``: one per head, map keys included."""
    if isinstance(value, list):
        return 1 + sum(items_in(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(items_in(k) + items_in(v) for k, v in value.items())
    return 1


@given(values)
def test_property_item_limit_is_exactly_the_number_of_heads(value: Any) -> None:
    data, n = encode(value), items_in(value)
    assert decode(data, max_items=n) == value
    if n > 1:  # a scalar is one item whatever the limit; containers announce their items
        with pytest.raises(LimitError) as info:
            decode(data, max_items=n - 1, what="thing")
        assert_names(info.value, "thing", f"more than {n - 1} CBOR items")


def _refused_at(error: LimitError) -> int:
    match = re.search(r"refused at byte (\d+)", str(error))
    assert match, error
    return int(match.group(1))


TINY_ITEMS = 16 * 1024 * 1024 - 16
"""A frame-sized run of one-byte items (empty arrays): what cost a node 13-21 s and 1.3 GB."""


def test_a_frame_of_tiny_items_is_refused_at_its_first_head_without_decoding() -> None:
    flat = b"\xa1\x63msg" + b"\x9a" + TINY_ITEMS.to_bytes(4, "big") + b"\x80" * TINY_ITEMS  # {"msg": [[], [], ...]}
    with mock.patch.object(cbor2, "CBORDecoder", side_effect=AssertionError("cbor2 was reached")):
        with pytest.raises(LimitError) as info:
            decode(flat, max_items=MAX_FRAME_ITEMS, what="frame")
    assert_names(info.value, "frame", f"more than {MAX_FRAME_ITEMS} CBOR items")
    assert _refused_at(info.value) == 10  # the array's head announced too many: nothing after it was read


def test_tiny_items_in_small_arrays_are_refused_after_at_most_the_limit_of_heads() -> None:
    # No array announces more than 23 items, so the scan must count them as it goes: a tree of
    # fan-out 23 holding millions of empty arrays.
    level = b"\x80"
    while len(level) * 23 + 1 < TINY_ITEMS:
        level = b"\x97" + level * 23
    assert len(level) > 6_000_000  # 6.7 million one-byte items
    with mock.patch.object(cbor2, "CBORDecoder", side_effect=AssertionError("cbor2 was reached")):
        with pytest.raises(LimitError) as info:
            decode(level, max_items=MAX_FRAME_ITEMS, what="frame")
    # Every item here is one byte, so the byte where the scan stopped counts the heads it read.
    assert _refused_at(info.value) <= MAX_FRAME_ITEMS + 1


def test_item_limit_is_checked_after_truncation_and_depth() -> None:
    with pytest.raises(TruncatedError):
        decode(bytes.fromhex("9bffffffffffffffff"), max_items=4)  # announces more than there is
    with pytest.raises(LimitError) as info:
        decode(bytes.fromhex("81" * (MAX_CBOR_DEPTH + 1) + "00"), max_items=MAX_CBOR_DEPTH + 1)
    assert_names(info.value, "deeper")


def test_tags_are_refused_even_where_they_would_decode_to_an_allowed_value() -> None:
    # tag 2 (positive bignum) 0x01 decodes to the int 1 in cbor2; PeerDB allows no tags at all
    assert cbor2.loads(bytes.fromhex("c24101")) == 1
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("c24101"))
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("82c2410101"))


# --- hashes and signing messages -----------------------------------------------------------------

def test_tagged_hash_is_sha256_over_length_prefixed_tag_and_data() -> None:
    assert tagged_hash("tx", b"abc") == hashlib.sha256(b"\x02tx" + b"abc").digest()


def test_tagged_hashes_of_different_tags_differ() -> None:
    assert tagged_hash("tx", b"") != tagged_hash("header", b"")
    # the length prefix keeps ("ab", "c...") and ("a", "bc...") apart
    assert tagged_hash("ab", b"c") != tagged_hash("a", b"bc")


def test_signing_message_layout() -> None:
    cid, h = bytes(range(32)), bytes(32)
    assert signing_message("block", cid, h) == SIGNATURE_PREFIX + b"block/" + cid + h
    assert signing_message("tx", cid, h) != signing_message("block", cid, h)
    assert codec.signing_prefix("block", cid) + h == signing_message("block", cid, h)


@pytest.mark.parametrize("cid, h", [(b"x" * 31, bytes(32)), (bytes(32), b"x" * 33)])
def test_signing_message_refuses_wrong_lengths(cid: bytes, h: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        signing_message("block", cid, h)


# --- field helpers -------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, fragments", [
    (lambda: expect_list(5, "tx.ops"), DecodeError, ("tx.ops", "expected an array", "int")),
    (lambda: expect_list([1], "header", 10), DecodeError, ("header", "expected 10 elements, got 1")),
    (lambda: expect_int("1", "tx.nonce"), DecodeError, ("tx.nonce", "expected an integer", "str")),
    (lambda: expect_int(True, "tx.nonce"), DecodeError, ("tx.nonce", "expected an integer", "bool")),
    (lambda: expect_int(-1, "tx.nonce"), DecodeError, ("tx.nonce", "-1 outside [0,")),
    (lambda: expect_int(11, "header.round", 0, 10), DecodeError, ("header.round", "11 outside [0, 10]")),
    (lambda: expect_bytes("ab", "header.prev"), DecodeError, ("header.prev", "expected a byte string")),
    (lambda: expect_bytes(bytearray(2), "header.prev"), DecodeError, ("header.prev", "bytearray")),
    (lambda: expect_bytes(b"ab", "header.prev", 32), DecodeError, ("header.prev", "expected 32 bytes, got 2")),
    (lambda: expect_bytes(b"abc", "op.value", max_len=2), LimitError, ("op.value", "exceeds the limit of 2")),
    (lambda: expect_str(b"a", "op.key", 10), DecodeError, ("op.key", "expected a text string")),
    (lambda: expect_str("é" * 6, "op.key", 10), LimitError, ("op.key", "longer than 10 bytes")),
])
def test_field_helpers_name_the_field(call: Any, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error
    assert_names(info.value, *fragments)


def test_field_helpers_return_good_values() -> None:
    assert expect_list([1, 2], "x", 2) == [1, 2]
    assert expect_int(5, "x", 0, 5) == 5
    assert expect_bytes(b"ab", "x", 2) == b"ab"
    assert expect_str("ab", "x", 2) == "ab"


# --- properties ----------------------------------------------------------------------------------

@given(values)
def test_property_round_trip(value: Any) -> None:
    data = encode(value)
    back = decode(data)
    assert back == value
    assert encode(back) == data


def _check_mutant(original: bytes, mutant: bytes) -> None:
    """A mutated encoding either fails with a DecodeError or is itself canonical and different."""
    if mutant == original:
        return
    try:
        value = decode(mutant)
    except DecodeError:
        return
    assert encode(value) == mutant
    assert encode(value) != original


@given(values, st.data())
def test_property_byte_flip_is_rejected_or_decodes_to_another_canonical_value(value: Any, data: st.DataObject) -> None:
    encoded = encode(value)
    index = data.draw(st.integers(0, len(encoded) - 1))
    mask = data.draw(st.integers(1, 255))
    mutant = bytearray(encoded)
    mutant[index] ^= mask
    _check_mutant(encoded, bytes(mutant))


@given(values, st.data())
def test_property_truncation_is_rejected(value: Any, data: st.DataObject) -> None:
    encoded = encode(value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        decode(encoded[:cut])


@given(values, st.binary(min_size=1, max_size=8))
def test_property_appended_bytes_are_rejected(value: Any, extra: bytes) -> None:
    with pytest.raises(TrailingBytesError):
        decode(encode(value) + extra)


@given(values, st.data())
def test_property_inserted_or_deleted_byte_is_rejected_or_canonical(value: Any, data: st.DataObject) -> None:
    encoded = encode(value)
    index = data.draw(st.integers(0, len(encoded)))
    inserted = encoded[:index] + bytes([data.draw(st.integers(0, 255))]) + encoded[index:]
    _check_mutant(encoded, inserted)
    if index < len(encoded):
        _check_mutant(encoded, encoded[:index] + encoded[index + 1:])


@given(st.binary(max_size=64))
def test_property_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        value = decode(data)
    except RemoteError as exc:
        assert isinstance(exc, DecodeError)
        return
    assert encode(value) == data



def _decode_without_prescan(data: bytes) -> Any:
    """decode() as it was before the structural pre-scan: cbor2, type walk, re-encode compare."""
    import io

    stream = io.BytesIO(data)
    value = cbor2.CBORDecoder(stream).decode()
    if stream.tell() != len(data):
        raise ValueError("trailing")
    codec._check_items(value, 0, "x")
    if encode(value) != data:
        raise ValueError("non-canonical")
    return value


@given(values, st.data())
def test_property_prescan_accepts_exactly_what_full_decoding_accepts(value: Any, data: st.DataObject) -> None:
    encoded = encode(value)
    index = data.draw(st.integers(0, len(encoded) - 1))
    mutant = bytearray(encoded)
    mutant[index] = data.draw(st.integers(0, 255))
    for candidate in (encoded, bytes(mutant), encoded[:index]):
        try:
            expected = _decode_without_prescan(candidate)
        except Exception:  # noqa: BLE001 - any failure of the old path counts as a rejection
            expected = _REJECTED
        try:
            got = decode(candidate)
        except DecodeError:
            got = _REJECTED
        if expected is _REJECTED or got is _REJECTED:
            assert got is expected
        else:
            assert encode(got) == encode(expected) == candidate


_REJECTED = object()
