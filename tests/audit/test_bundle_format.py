"""The bundle format and the auditor's building blocks: framing and order rules, the fast block
decoder (which must accept exactly what ``Block.decode`` accepts), the signature pool and the
replay state's views of side branches."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdb.audit.bundle import (
    MAGIC,
    MAX_ITEM_BYTES,
    MAX_ITEM_CBOR_ITEMS,
    BlockEntry,
    BundleParser,
    BundleWriter,
    Claims,
    Head,
    Trailer,
    peek_header,
    read_items,
)
from peerdb.audit.errors import AuditFailure
from peerdb.audit.export import MemorySource
from peerdb.audit.replay import ChainState
from peerdb.audit.sigpool import SignaturePool
from peerdb.core import codec
from peerdb.core.blockdecode import decode_block_fast
from peerdb.core.errors import PeerDBError
from peerdb.core.keys import SigningKey
from peerdb.core.model import OP_DELETE, OP_PUT, Block, Op, Tx
from peerdb.core.state import apply_txs
from tests.helpers.chainbuilder import ChainBuilder

CB = ChainBuilder(3)


def _decode_both(data: bytes) -> tuple[object, object]:
    """(reference outcome, fast outcome): the decoded (header, txs, evidence) or the error."""
    outcomes: list[tuple[object, ...]] = []
    for fn in (Block.decode, decode_block_fast):
        try:
            b = fn(data)
            outcomes.append((b.header, b.txs, b.evidence, b.raw))
        except PeerDBError as exc:
            outcomes.append((type(exc), str(exc)))
    return outcomes[0], outcomes[1]


def _varied_block() -> Block:
    """Transactions exercising every length form the fast path reads and some it hands back."""
    txs = [
        CB.tx("m0", [("books", "k", b"v")]),
        CB.tx("m1", [("books", "k" * 23, b"x" * 23), ("books", "k" * 24, b"y" * 24)]),
        CB.tx("m2", [("a" * 64, "é" * 200, b"z" * 300), ("books", "gone", None)]),
        CB.tx("m0", [("books", f"key-{i}", bytes([i])) for i in range(30)], nonce=2**40),
        CB.tx("m1", [("books", "big", b"\x00" * 65_536)], nonce=0),
        CB.tx("m2", [("n", "k", b"")], nonce=23),
        CB.tx("m2", [("n", "k", b"")], nonce=24),
        CB.tx("m2", [("n", "k", b"")], nonce=2**64 - 1),
    ]
    return CB.block(CB.genesis, txs, check=False)


VARIED = _varied_block()


def test_the_fast_decoder_builds_what_the_reference_builds() -> None:
    ref, fast = _decode_both(VARIED.raw)
    assert ref == fast
    with mock.patch.object(Block, "decode", side_effect=AssertionError("took the reference path")):
        assert decode_block_fast(VARIED.raw).raw == VARIED.raw


def test_blocks_with_evidence_take_the_reference_path() -> None:
    b1 = CB.block(CB.genesis)
    _, _, ev = CB.double_sign("m1", b1)
    block = CB.block(b1, evidence=[ev])
    decoded = decode_block_fast(block.raw)
    assert isinstance(decoded, Block) and decoded.evidence == (ev,)


def test_single_byte_changes_are_judged_as_the_reference_judges_them() -> None:
    small = CB.block(CB.genesis, [tx for tx in VARIED.txs if len(tx.raw) < 2000], check=False)
    rng = random.Random(5)
    data = small.raw
    changes = [(pos, 1) for pos in range(min(len(data), 400))]
    changes += [(rng.randrange(len(data)), rng.randrange(1, 256)) for _ in range(150)]
    for pos, delta in changes:
        mutated = bytearray(data)
        mutated[pos] = (mutated[pos] + delta) % 256
        ref, fast = _decode_both(bytes(mutated))
        assert ref == fast, (pos, delta)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 2000), st.integers(0, 8))
def test_spliced_bytes_are_judged_as_the_reference_judges_them(junk: bytes, pos: int, cut: int) -> None:
    data = VARIED.raw
    pos = min(pos, len(data))
    mutated = data[:pos] + junk + data[pos + cut:]
    ref, fast = _decode_both(mutated)
    assert ref == fast


def _tx_with_body(body: bytes, key: SigningKey) -> bytes:
    txid = codec.tagged_hash("tx", body)
    return codec.encode([body, key.sign("tx", CB.cid, txid)])


@pytest.mark.parametrize("body", [
    # non-canonical forms the reference refuses, the fast path must hand back
    bytes.fromhex("86") + bytes.fromhex("1801"),                       # non-shortest version
    codec.encode([1, "m0", b"\x00" * 32, 1, 2, []]),                    # no ops
    codec.encode([1, "M0", b"\x00" * 32, 1, 2, [[0, "books", "k", b"v"]]]),  # bad member name
    codec.encode([1, "m0", b"\x00" * 31, 1, 2, [[0, "books", "k", b"v"]]]),  # short client key
    codec.encode([1, "m0", b"\x00" * 32, -1, 2, [[0, "books", "k", b"v"]]]),  # negative nonce
    codec.encode([1, "m0", b"\x00" * 32, 1, 2, [[1, "books", "k", b"v"]]]),   # delete with a value
    codec.encode([1, "m0", b"\x00" * 32, 1, 2, [[0, "books", "", b"v"]]]),    # empty key
    codec.encode([1, "m0", b"\x00" * 32, 1, 2, [[0, "Books", "k", b"v"]]]),   # bad namespace
    codec.encode([1, "m0", b"\x00" * 32, 1, 2, [[2, "books", "k", b"v"]]]),   # bad kind
    codec.encode([2, "m0", b"\x00" * 32, 1, 2, [[0, "books", "k", b"v"]]]),   # wrong version
    codec.encode([1, "m0", b"\x00" * 32, 1, 2, [[0, "books", "k", b"v"]], 7]),  # extra field
    bytes.fromhex("8601626d30 5820") + b"\x00" * 32 + bytes.fromhex("1a00000001 02 81 8400 65626f6f6b73 616b 4176"),
])
def test_odd_transaction_bodies_are_judged_as_the_reference_judges_them(body: bytes) -> None:
    raw = _tx_with_body(body, CB.client_keys["m0"])
    block = codec.encode([VARIED.header.raw, [raw], []])
    ref, fast = _decode_both(block)
    assert ref == fast
    assert isinstance(ref, tuple) and isinstance(ref[0], type) and issubclass(ref[0], PeerDBError)


def test_a_tx_root_mismatch_is_named_like_the_reference() -> None:
    items = codec.decode(VARIED.raw)
    items[1] = items[1][:-1]
    ref, fast = _decode_both(codec.encode(items))
    assert ref == fast and "header says 8 txs, body has 7" in str(ref)


# --- the format ---------------------------------------------------------------------------------

def _small_bundle() -> bytes:
    src = MemorySource(CB.consortium)
    for block in CB.chain(3, txs_per_block=2):
        src.add_block(block, CB.sign_all(block))
    return src.bundle("m0")


SMALL = _small_bundle()


def test_items_come_back_as_written_and_in_order() -> None:
    items = list(read_items(io.BytesIO(SMALL)))
    assert isinstance(items[0], Head) and isinstance(items[-1], Trailer)
    blocks = [it for it in items if isinstance(it, BlockEntry)]
    assert [b.header.height for b in blocks] == [1, 2, 3]
    assert items[-1].counts.blocks == 3 and items[-1].counts.signatures == 9
    head = items[0]
    assert head.consortium == CB.consortium and head.cid == CB.cid


def test_feeding_byte_by_byte_gives_the_same_items() -> None:
    parser = BundleParser()
    items = []
    for i in range(len(SMALL)):
        items.extend(parser.feed(SMALL[i:i + 1]))
    parser.finish()
    assert [type(i) for i in items] == [type(i) for i in read_items(io.BytesIO(SMALL))]


def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    parser = BundleParser()
    with pytest.raises(AuditFailure, match=r"frame length .* outside"):
        parser.feed(MAGIC + (MAX_ITEM_BYTES + 1).to_bytes(4, "big"))


def test_an_item_of_too_many_cbor_items_is_refused_before_its_shape_is_read() -> None:
    """A few hundred kilobytes of one-byte items would otherwise cost seconds and gigabytes."""
    count = 8 * MAX_ITEM_CBOR_ITEMS
    bad = b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count  # an array of `count` empty arrays
    assert len(bad) < MAX_ITEM_BYTES
    with pytest.raises(AuditFailure, match=r"item 0: .*items"):
        BundleParser().feed(MAGIC + len(bad).to_bytes(4, "big") + bad)


def test_a_frame_that_is_not_canonical_cbor_is_refused() -> None:
    head_len = int.from_bytes(SMALL[8:12], "big")
    head = codec.decode(SMALL[12:12 + head_len])
    bad = b"\xbf" + b"".join(codec.encode(k) + codec.encode(v) for k, v in sorted(head.items())) + b"\xff"
    with pytest.raises(AuditFailure, match=r"item 0: .*indefinite"):
        BundleParser().feed(MAGIC + len(bad).to_bytes(4, "big") + bad)


def test_the_writer_refuses_to_write_a_bundle_out_of_order() -> None:
    writer = BundleWriter()
    b1, b2 = CB.chain(2)
    head = Head(1, CB.consortium, CB.cid, "m0", 0, Claims(b2.hash, 2, 0, 0, 0, 0, ()))
    writer.start(head)
    writer.block(BlockEntry(b2.raw, b2.header, True, ()))
    with pytest.raises(ValueError, match="out of"):
        writer.block(BlockEntry(b1.raw, b1.header, True, ()))


def test_peek_header_names_a_broken_block() -> None:
    with pytest.raises(AuditFailure, match=r"item 7: block does not decode"):
        peek_header(b"\x83\x41", "item 7")


# --- signatures in threads ------------------------------------------------------------------------

def test_the_pool_reports_exactly_the_bad_signatures_across_chunks() -> None:
    key = SigningKey(b"\x05" * 32)
    prefix = codec.signing_prefix("block", CB.cid)
    bad = {3, 4, 10, 11, 12, 29}
    with SignaturePool(threads=2, chunk=4) as pool:
        for i in range(31):
            h = bytes([i]) * 32
            sig = key.sign("block", CB.cid, h)
            if i in bad:
                sig = bytes(64) if i % 2 else sig[:-1] + bytes([sig[-1] ^ 1])
            assert pool.add(sig, prefix + h, key.public) == i
        assert pool.failed(0, 10) == [3, 4]
        assert pool.failed(10, 20) == [10, 11, 12]
        assert pool.failed(20, 31) == [29]
        assert pool.checked == 31
        signed = [key.sign("block", CB.cid, bytes([i]) * 32) + prefix + bytes([i]) * 32 for i in range(10)]
        signed[7] = bytes(64) + signed[7][64:]
        assert pool.extend(signed, [key.public] * 10) == 31
        assert pool.failed(31, 41) == [38]


# --- replay: the state as of any fork point ----------------------------------------------------------

def test_branch_readers_see_the_state_at_the_fork_point() -> None:
    cb = ChainBuilder(2)
    t1 = cb.tx("m0", [("books", "a", b"1")])
    t2 = cb.tx("m0", [("books", "a", b"2"), ("books", "b", b"x")])
    t3 = cb.tx("m1", [("books", "a", b"side")])
    b1 = cb.block(cb.genesis, [t1])
    b2 = cb.block(b1, [t2])
    side = cb.block(b1, [t3], round=1)
    chain = ChainState(cb.genesis.header)
    for block in (b1, b2):
        chain.apply_main(block.header, cb.effects(block), [])
    reader = chain.reader_for(b1.hash)
    assert reader.get("books", "a") == b"1" and reader.get("books", "b") is None
    assert reader.tx_seen(t1.txid) and not reader.tx_seen(t2.txid)
    assert chain.get("books", "a") == b"2" and chain.tx_seen(t2.txid)
    chain.add_side(side.header, cb.effects(side), [])
    on_side = chain.reader_for(side.hash)
    assert on_side.get("books", "a") == b"side" and on_side.tx_seen(t3.txid) and not on_side.tx_seen(t2.txid)
    # the state machine replays a transaction of the other branch on the side branch, not on main
    effects = apply_txs(on_side, [t2], cb.consortium, cb.cid, side.header.time_ms + 1, side.header.state_root)
    assert effects.txids == (t2.txid,)
    assert chain.reader_for(b2.hash) is chain


def test_the_transaction_fields_built_directly_equal_the_constructors() -> None:
    for tx in VARIED.txs:
        fast = decode_block_fast(VARIED.raw).txs[VARIED.txs.index(tx)]
        rebuilt = Tx(tx.member, tx.client, tx.nonce, tx.expires_ms,
                     tuple(Op(o.kind, o.namespace, o.key, o.value) for o in tx.ops), tx.signature, tx.body)
        assert fast == rebuilt and fast.txid == rebuilt.txid and fast.raw == rebuilt.raw
        assert hash(fast.ops) == hash(rebuilt.ops)
    assert {o.kind for tx in VARIED.txs for o in tx.ops} == {OP_PUT, OP_DELETE}


@pytest.mark.parametrize("change", [
    lambda c: c.update({5: 1, "x": 2}),
    lambda c: c["params"].update(heartbeat_ms=b"\x01"),
    lambda c: c["members"][0].update(key=b"\x00" * 32),
    lambda c: c.update(members=[]),
    lambda c: c["consortium"].update(genesis_time_ms=-5),
])
def test_a_head_with_a_broken_consortium_file_is_refused(change: Callable[[dict[str, Any]], None]) -> None:
    head_len = int.from_bytes(SMALL[8:12], "big")
    head = codec.decode(SMALL[12:12 + head_len])
    change(head["consortium"])
    data = codec.encode(head)
    with pytest.raises(AuditFailure, match=r"item 0.consortium"):
        BundleParser().feed(MAGIC + len(data).to_bytes(4, "big") + data)


def _long_head(raw: bytes) -> bytes:
    """The same byte string with a non-shortest (two-byte) length head."""
    assert raw[0] == 0x58
    return b"\x59" + len(raw[2:]).to_bytes(2, "big") + raw[2:]


@pytest.mark.parametrize("name", ["trailing byte", "long tx head", "long header head", "tx count off",
                                  "indefinite txs", "evidence not a list", "two blocks"])
def test_odd_block_envelopes_are_judged_as_the_reference_judges_them(name: str) -> None:
    block = CB.block(CB.genesis, [CB.tx("m0", [("books", "k", b"v")]), CB.tx("m1", [("books", "j", b"w")])])
    raw = block.raw
    txs = [codec.encode(t.raw) for t in block.txs]
    header = codec.encode(block.header.raw)
    variants = {
        "trailing byte": raw + b"\x00",
        "long tx head": b"\x83" + header + b"\x82" + _long_head(txs[0]) + txs[1] + b"\x80",
        "long header head": b"\x83" + _long_head(header) + b"\x82" + txs[0] + txs[1] + b"\x80",
        "tx count off": b"\x83" + header + b"\x81" + txs[0] + b"\x80",
        "indefinite txs": b"\x83" + header + b"\x9f" + txs[0] + txs[1] + b"\xff\x80",
        "evidence not a list": b"\x83" + header + b"\x82" + txs[0] + txs[1] + b"\x00",
        "two blocks": raw + raw,
    }
    ref, fast = _decode_both(variants[name])
    assert ref == fast
    assert isinstance(ref, tuple) and isinstance(ref[0], type) and issubclass(ref[0], PeerDBError)
