"""Canonical CBOR, tagged hashes and domain-separated signing messages.

Every hashed or signed PeerDB object is CBOR in RFC 8949 core deterministic form (what cbor2
calls ``canonical``): shortest integer and length forms, definite lengths, map keys sorted by
their encoded bytes. :func:`decode` is the *only* way untrusted bytes become Python values: it
bounds size and depth, allows only the item types PeerDB uses, rejects trailing bytes, and
rejects any encoding that does not re-encode to the very same bytes (so one value has exactly
one encoding, and one hash).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import cbor2

from .errors import DecodeError, LimitError, NonCanonicalError, TrailingBytesError, TruncatedError
from .limits import HASH_LEN, MAX_CBOR_DEPTH, MAX_FRAME_BYTES

MAX_UINT = 2**64 - 1
MIN_INT = -(2**63)

SIGNATURE_PREFIX = b"PEERDB-SIG/1/"
"""Every signing message starts with this, so no PeerDB signature can be mistaken for a
signature made by some other protocol that uses the same key (keys should not be shared, but
a firm's HSM may hold them)."""


def encode(value: Any) -> bytes:
    """Canonical CBOR of ``value`` (ints, bytes, str, bool, None, lists, str/int-keyed maps)."""
    return cbor2.dumps(value, canonical=True)


def item_head_size(n: int) -> int:
    """Bytes of a CBOR item head carrying ``n`` (an unsigned integer's value, or the length of a
    byte string, text or array) in the canonical shortest form: what a length field costs."""
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


def decode(data: bytes, *, max_size: int = MAX_FRAME_BYTES, what: str = "object", max_items: int | None = None) -> Any:
    """Hardened decode of one canonical CBOR item; raises a :class:`DecodeError` subclass.

    ``max_items`` bounds the CBOR items (every head: scalars, strings, arrays, map keys and
    values) the input may hold. Decoding costs about a microsecond per item and an item can be a
    single byte, so for large inputs the byte bound alone allows seconds of work; callers that
    decode untrusted objects of a known shape pass the most items that shape can have
    (``MAX_FRAME_ITEMS``, ``MAX_TX_ITEMS``, ...). None: bounded by ``max_size`` only.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise LimitError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    if not data:
        raise TruncatedError(f"{what}: empty input")
    _scan_structure(data, what, max_items)
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(stream).decode()
    except cbor2.CBORDecodeEOF as exc:
        raise TruncatedError(f"{what}: truncated CBOR ({exc})") from None
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        if "premature end" in str(exc) or "truncated" in str(exc).lower():
            raise TruncatedError(f"{what}: truncated CBOR ({exc})") from None
        raise DecodeError(f"{what}: malformed CBOR ({exc})") from None
    if stream.tell() != len(data):
        raise TrailingBytesError(f"{what}: {len(data) - stream.tell()} trailing bytes after the item")
    _check_items(value, 0, what)
    if encode(value) != data:
        raise NonCanonicalError(f"{what}: not in canonical CBOR form")
    return value


def _scan_structure(data: bytes, what: str, max_items: int | None = None) -> None:
    """Walk the item heads before cbor2 builds anything: one item, definite lengths, no tags,
    at most ``max_items`` items.

    cbor2 resolves semantic tags while decoding, and two of them (shared references, 28/29, and
    string references, 256/25) let a few hundred bytes decode into a structure that points at
    itself thousands of times, which the later checks would walk, and re-encoding would expand,
    for hours. No PeerDB object uses any tag, so a tag is refused here, before decoding. Of major
    type 7 only false, true and null (20, 21, 22) are allowed: PeerDB uses no floats or undefined.

    The item count is checked against what arrays and maps *announce*: every announced item must
    follow (lengths are definite), so the input holds at least ``announced`` items, and the walk
    never visits more heads than were announced. An input over the limit is refused at the first
    head that takes the announced total past it, so refusing costs at most ``max_items`` steps
    of this loop, whatever the input's size, and cbor2 never sees it.
    """
    pos, end = 0, len(data)
    announced = 1  # items announced so far: the top-level item, plus each array's and map's count
    enclosing: list[int] = []  # items still to read in each enclosing array or map
    remaining = 1  # items still to read at the current level; the top level holds one
    while True:
        if not remaining:
            if not enclosing:
                break
            remaining = enclosing.pop()
            continue
        remaining -= 1
        if pos >= end:
            raise TruncatedError(f"{what}: truncated CBOR (item head missing at byte {pos})")
        head = data[pos]
        pos += 1
        major, argument = head >> 5, head & 0x1F
        if argument >= 24:
            if argument >= 28:
                if argument == 31 and 2 <= major <= 5:
                    raise NonCanonicalError(f"{what}: indefinite-length item at byte {pos - 1}")
                raise DecodeError(f"{what}: malformed CBOR (reserved or break item at byte {pos - 1})")
            if major == 7:
                raise DecodeError(f"{what}: CBOR float or simple value at byte {pos - 1} is not allowed")
            width = 1 << (argument - 24)
            if pos + width > end:
                raise TruncatedError(f"{what}: truncated CBOR (item head cut at byte {pos})")
            argument = int.from_bytes(data[pos:pos + width], "big")
            pos += width
        if major < 2:
            continue
        if major < 4:
            if argument > end - pos:
                raise TruncatedError(f"{what}: truncated CBOR (string of {argument} bytes at byte {pos})")
            pos += argument
        elif major < 6:
            if major == 5:
                argument *= 2
            if argument:
                if argument > end - pos:
                    raise TruncatedError(f"{what}: truncated CBOR ({argument} items announced at byte {pos})")
                if len(enclosing) >= MAX_CBOR_DEPTH:
                    raise LimitError(f"{what}: nesting deeper than {MAX_CBOR_DEPTH}")
                announced += argument
                if max_items is not None and announced > max_items:
                    raise LimitError(f"{what}: more than {max_items} CBOR items (refused at byte {pos})")
                enclosing.append(remaining)
                remaining = argument
        elif major == 6:
            raise DecodeError(f"{what}: CBOR tag at byte {pos - 1} is not allowed")
        elif argument not in (20, 21, 22):
            raise DecodeError(f"{what}: CBOR float or simple value at byte {pos - 1} is not allowed")
    if pos != end:
        raise TrailingBytesError(f"{what}: {end - pos} trailing bytes after the item")


def _check_items(value: Any, depth: int, what: str) -> None:
    if depth > MAX_CBOR_DEPTH:
        raise LimitError(f"{what}: nesting deeper than {MAX_CBOR_DEPTH}")
    kind = type(value)
    if kind is int:
        if not MIN_INT <= value <= MAX_UINT:
            raise DecodeError(f"{what}: integer out of 64-bit range")
    elif kind is bytes or kind is str or kind is bool or value is None:
        return
    elif kind is list:
        for item in value:
            _check_items(item, depth + 1, what)
    elif kind is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise DecodeError(f"{what}: map key of type {type(key).__name__}")
            _check_items(item, depth + 1, what)
    else:
        raise DecodeError(f"{what}: CBOR item of type {kind.__name__} is not allowed")


def tagged_hash(tag: str, data: bytes) -> bytes:
    """SHA-256 over a tag and the data, so that hashes of different kinds never collide in meaning."""
    tag_bytes = tag.encode("ascii")
    return hashlib.sha256(len(tag_bytes).to_bytes(1, "big") + tag_bytes + data).digest()


def signing_prefix(domain: str, consortium_id: bytes) -> bytes:
    """The constant start of every signing message of ``domain`` in one consortium: prefix,
    domain, ``/``, consortium id. The whole message is this plus the 32-byte object hash
    (:func:`signing_message`); checkers of many signatures build it once and append each hash."""
    if len(consortium_id) != HASH_LEN:
        raise ValueError("consortium id must be 32 bytes")
    return SIGNATURE_PREFIX + domain.encode("ascii") + b"/" + consortium_id


def signing_message(domain: str, consortium_id: bytes, object_hash: bytes) -> bytes:
    """The exact bytes an Ed25519 key signs: prefix, domain, consortium, object hash.

    The domain ("block", "tx", "objection", "vote", "hello", ...) makes a signature on one kind of
    object useless as a signature on any other; the consortium id makes it useless in any other
    consortium.
    """
    if len(consortium_id) != HASH_LEN or len(object_hash) != HASH_LEN:
        raise ValueError("consortium id and object hash must be 32 bytes")
    return signing_prefix(domain, consortium_id) + object_hash


# Type checks for decoded structures: each raises DecodeError naming the field.

def expect_list(value: Any, field: str, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise DecodeError(f"{field}: expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DecodeError(f"{field}: expected {length} elements, got {len(value)}")
    return value


def expect_int(value: Any, field: str, lo: int = 0, hi: int = MAX_UINT) -> int:
    if type(value) is not int:
        raise DecodeError(f"{field}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise DecodeError(f"{field}: {value} outside [{lo}, {hi}]")
    return value


def expect_bytes(value: Any, field: str, length: int | None = None, max_len: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(f"{field}: expected a byte string, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DecodeError(f"{field}: expected {length} bytes, got {len(value)}")
    if max_len is not None and len(value) > max_len:
        raise LimitError(f"{field}: {len(value)} bytes exceeds the limit of {max_len}")
    return value


def expect_str(value: Any, field: str, max_len: int) -> str:
    if type(value) is not str:
        raise DecodeError(f"{field}: expected a text string, got {type(value).__name__}")
    if len(value.encode("utf-8")) > max_len:
        raise LimitError(f"{field}: longer than {max_len} bytes")
    return value
