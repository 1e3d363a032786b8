"""Block and transaction decoding that accepts exactly what :meth:`Block.decode` and
:meth:`Tx.decode` accept, about three (blocks) to five (transactions) times faster.

The reference decoder checks each transaction through the hardened decoder twice (the ``[body,
signature]`` envelope, then the body), each time scanning, decoding, walking and re-encoding.
Whoever replays every transaction of a chain pays that per transaction: the auditor, and a
member admitting transactions and receiving blocks (both use this module). A valid
transaction has exactly one encoding, so this module reads that one layout directly from the
bytes:

    block = 83 <bstr header> <array of bstr tx> 80
    tx    = 82 <bstr body> 58 40 <64-byte signature>
    body  = 86 <version> <text member> 58 20 <32-byte client> <uint nonce> <uint expires> <array ops>
    op    = 84 <0|1> <text namespace> <text key> (<bstr value> | f6)

accepting only shortest-form heads, definite lengths and valid UTF-8, so that what it reads is
the canonical encoding of what it builds. Everything it builds goes through the core
constructors: :meth:`Header.decode` for the header, :class:`Op` (which checks every field of an
op), :class:`Tx` (which hashes the body, re-encodes the envelope and bounds its size) and
:class:`Block` (which checks the transaction count, the transaction root and the block size).
What :meth:`Tx.from_parts` checks beyond the :class:`Tx` constructor (protocol version, member
name, client key length, integer ranges, op count) is checked here on the bytes.

Anything this path does not recognise — a deviation of any kind, a field a constructor refuses,
evidence in the block — goes to :meth:`Block.decode`, which raises the precise error or accepts
it. So both accept the same bytes and build equal objects; the tests compare them on valid,
mutated and spliced blocks.
"""

from __future__ import annotations

from collections.abc import Mapping

from .codec import encode
from .consortium import NAME_RE
from .errors import DecodeError, ValidationError
from .limits import (
    KEY_LEN,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    MAX_KEY_BYTES,
    MAX_NAME_LEN,
    MAX_NAMESPACE_LEN,
    MAX_OPS_PER_TX,
    MAX_TX_BYTES,
    MAX_VALUE_BYTES,
    PROTOCOL_VERSION,
    SIG_LEN,
)
from .merkle import EMPTY_ROOT
from .model import Block, Header, Op, Tx

_BODY_START = b"\x86" + encode(PROTOCOL_VERSION)
"""A transaction body: an array of six items, the first the protocol version."""
_CLIENT_HEAD = encode(bytes(KEY_LEN))[:-KEY_LEN]
_SIG_HEAD = encode(bytes(SIG_LEN))[:-SIG_LEN]
_NO_EVIDENCE = encode([])


class _Deviation(Exception):
    """Not the canonical layout of a block this path builds: hand it to the reference decoder."""


def _length(data: bytes, pos: int, major_base: int) -> tuple[int, int]:
    """Argument of a head of major type ``major_base >> 5`` at ``pos``, in shortest form only."""
    head = data[pos] - major_base
    if 0 <= head < 24:
        return head, pos + 1
    if head == 24:
        value = data[pos + 1]
        if value < 24:
            raise _Deviation
        return value, pos + 2
    if head == 25:
        value = int.from_bytes(data[pos + 1:pos + 3], "big")
        if value < 256:
            raise _Deviation
        return value, pos + 3
    if head == 26:
        value = int.from_bytes(data[pos + 1:pos + 5], "big")
        if value < 65536:
            raise _Deviation
        return value, pos + 5
    if head == 27:
        value = int.from_bytes(data[pos + 1:pos + 9], "big")
        if value < 1 << 32:
            raise _Deviation
        return value, pos + 9
    raise _Deviation


def _text(data: bytes, pos: int, max_bytes: int) -> tuple[str, int]:
    """A text string of at most ``max_bytes`` UTF-8 bytes at ``pos``."""
    head = data[pos]
    if 0x60 <= head < 0x78:  # the common case, inline: up to 23 bytes, a one-byte head
        length, pos = head - 0x60, pos + 1
    else:
        length, pos = _length(data, pos, 0x60)
    end = pos + length
    if length > max_bytes or end > len(data):
        raise _Deviation
    try:
        return data[pos:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise _Deviation from None


def _tx(raw: bytes) -> Tx:
    """One transaction from its canonical bytes, or :class:`_Deviation` (or a constructor's error)."""
    n = len(raw)
    if n > MAX_TX_BYTES or n < 3 or raw[0] != 0x82:
        raise _Deviation
    blen, p = _length(raw, 1, 0x40)
    q = p + blen
    if q + len(_SIG_HEAD) + SIG_LEN != n or raw[q:q + len(_SIG_HEAD)] != _SIG_HEAD:
        raise _Deviation
    body = raw[p:q]
    # body = [version, member, client, nonce, expires_ms, ops]
    if not body.startswith(_BODY_START):
        raise _Deviation
    member, pos = _text(body, len(_BODY_START), MAX_NAME_LEN)
    if not NAME_RE.match(member):
        raise _Deviation
    end = pos + len(_CLIENT_HEAD) + KEY_LEN
    if end > blen or body[pos:pos + len(_CLIENT_HEAD)] != _CLIENT_HEAD:
        raise _Deviation
    client = body[end - KEY_LEN:end]
    head = body[end]
    if head < 24:
        nonce, pos = head, end + 1
    else:
        nonce, pos = _length(body, end, 0x00)
    expires, pos = _length(body, pos, 0x00)
    n_ops, pos = _length(body, pos, 0x80)
    if not 1 <= n_ops <= MAX_OPS_PER_TX:
        raise _Deviation
    ops = []
    for _ in range(n_ops):
        if body[pos] != 0x84:
            raise _Deviation
        kind = body[pos + 1]
        if kind > 1:
            raise _Deviation
        namespace, pos = _text(body, pos + 2, MAX_NAMESPACE_LEN)
        key, pos = _text(body, pos, MAX_KEY_BYTES)
        value: bytes | None
        if body[pos] == 0xF6:
            value = None
            pos += 1
        else:
            head = body[pos]
            if 0x40 <= head < 0x58:
                vlen, pos = head - 0x40, pos + 1
            else:
                vlen, pos = _length(body, pos, 0x40)
            if vlen > MAX_VALUE_BYTES or pos + vlen > blen:
                raise _Deviation
            value = body[pos:pos + vlen]
            pos += vlen
        ops.append(Op(kind, namespace, key, value))
    if pos != blen:
        raise _Deviation
    tx = Tx(member, client, nonce, expires, tuple(ops), raw[q + len(_SIG_HEAD):], body)
    if tx.raw != raw:  # pragma: no cover - the layout read above is the canonical encoding
        raise _Deviation
    return tx


def _envelope(data: bytes) -> tuple[bytes, list[bytes]]:
    """``[header bytes, [tx bytes, ...], []]`` read from a canonical block, or :class:`_Deviation`."""
    n = len(data)
    if n > MAX_BLOCK_BYTES or n < 4 or data[0] != 0x83:
        raise _Deviation
    hlen, pos = _length(data, 1, 0x40)
    header = data[pos:pos + hlen]
    pos += hlen
    count, pos = _length(data, pos, 0x80)
    if count > MAX_BLOCK_TXS:
        raise _Deviation
    txs: list[bytes] = []
    append = txs.append
    for _ in range(count):
        length, pos = _length(data, pos, 0x40)
        end = pos + length
        if end > n:
            raise _Deviation
        append(data[pos:end])
        pos = end
    if data[pos:] != _NO_EVIDENCE:  # blocks carrying evidence take the reference path
        raise _Deviation
    return header, txs


def peek_header_fast(data: bytes) -> Header:
    """Only the header of an encoded block, reading nothing of the body but its envelope's
    first head (``Block.peek_header`` also checks the body's structure; whoever decodes the
    block checks everything). Falls back to ``Block.peek_header`` for any other layout."""
    if type(data) is bytes:
        try:
            n = len(data)
            if n > MAX_BLOCK_BYTES or n < 4 or data[0] != 0x83:
                raise _Deviation
            hlen, pos = _length(data, 1, 0x40)
            if pos + hlen > n:
                raise _Deviation
            return Header.decode(data[pos:pos + hlen])
        except (_Deviation, IndexError, DecodeError, ValidationError):
            pass
    return Block.peek_header(data)


def decode_tx_fast(data: bytes) -> Tx:
    """Decode an encoded transaction: the same :class:`Tx`, or the same error, as
    ``Tx.decode(data)``, reading the canonical layout directly (about five times faster). A
    member decodes every transaction it admits with this (once: a block body reuses the pool's
    objects)."""
    if type(data) is not bytes:
        return Tx.decode(data)
    try:
        return _tx(data)
    except (_Deviation, IndexError, DecodeError, ValidationError):
        return Tx.decode(data)  # not the canonical layout: the reference names the fault


def decode_block_fast(data: bytes, known_txs: Mapping[bytes, Tx] | None = None) -> Block:
    """Decode an encoded block: the same :class:`Block`, or the same error, as
    ``Block.decode(data, known_txs)``. ``known_txs`` maps encoded transactions already decoded
    (a mempool) to their objects, which are used as they are."""
    if type(data) is not bytes:  # a bytearray or memoryview: the reference converts it
        return Block.decode(data, known_txs)
    try:
        header_raw, txs_raw = _envelope(data)
        header = Header.decode(header_raw)
        if len(txs_raw) != header.tx_count or header.evidence_root != EMPTY_ROOT:
            raise _Deviation
        if known_txs:
            txs = tuple([known if (known := known_txs.get(t)) is not None else _tx(t) for t in txs_raw])
        else:
            txs = tuple([_tx(t) for t in txs_raw])
        block = Block(header, txs)
        if block.raw != data:  # pragma: no cover - the layout read above is the canonical encoding
            raise _Deviation
    except (_Deviation, IndexError, DecodeError, ValidationError):
        # Not the canonical layout, or a core constructor refused a field: the reference decoder
        # names the fault (or accepts what this path does not read).
        return Block.decode(data, known_txs)
    return block
