"""The fast block and transaction decoders against the reference: for any transaction fields,
valid or not, alone or in a block whose header commits to them, and for mutated bytes of a valid
transaction, both accept the same bytes and build equal objects, or both refuse them with the
same error. (Mutated and spliced bytes of valid blocks: tests/test_audit_bundle.py.)"""

from __future__ import annotations

from typing import Any
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from peerdb.core import codec
from peerdb.core.blockdecode import decode_block_fast, decode_tx_fast
from peerdb.core.errors import PeerDBError
from peerdb.core.limits import MAX_OPS_PER_TX
from peerdb.core.merkle import EMPTY_ROOT, merkle_root
from peerdb.core.model import GOV_NAMESPACE, OP_PUT, Block, Header, Op, Tx, block_ns_tx_root
from tests.helpers.chainbuilder import ChainBuilder

CB = ChainBuilder(2)


def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a valid value, about one time in sixteen an odd one, so that many blocks are valid
    and every field is sometimes the one that is wrong (7: a value Hypothesis does not favour)."""
    return st.integers(0, 15).flatmap(lambda i: odd if i == 7 else valid)


NAME_CHARS = st.sampled_from("abcz019_.-")
VALID_NAMES = st.one_of(st.sampled_from(["m0", "books", "a" * 64, "x.y-z_1"]),
                        st.tuples(st.sampled_from("az09"), st.text(NAME_CHARS, max_size=30)).map("".join))
ODD_NAMES = st.one_of(st.sampled_from(["", "Books", "_gov", "a" * 65, "-x", "é"]), st.text(max_size=10))
UINTS = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32]))
ODD_INTS = st.one_of(st.integers(-(2**63), -1), st.just(2**64 - 1), st.binary(max_size=2), st.none())


@st.composite
def ops(draw: st.DrawFn) -> list[Any]:
    kind = draw(mostly(st.sampled_from([0, 1]), st.sampled_from([2, -1, 24, None])))
    namespace = draw(mostly(st.one_of(VALID_NAMES, st.just(GOV_NAMESPACE)) if kind == 0 else VALID_NAMES, ODD_NAMES))
    key = draw(mostly(st.one_of(st.text(min_size=1, max_size=40), st.just("é" * 256)),
                      st.sampled_from(["", "k" * 513, "é" * 257])))
    valid_value = st.binary(max_size=300) if kind == 0 else st.none()
    value = draw(mostly(valid_value, st.one_of(st.none(), st.binary(max_size=3), st.text(max_size=3), st.integers(0, 3))))
    op = [kind, namespace, key, value]
    return draw(mostly(st.just(op), st.sampled_from([op[:3], op + [0]])))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    op_list = draw(mostly(st.lists(ops(), min_size=1, max_size=4),
                          st.sampled_from([[], [[0, "n", "k", b""]] * (MAX_OPS_PER_TX + 1)])))
    items: list[Any] = [draw(mostly(st.just(1), st.sampled_from([0, 2, 24]))),
                        draw(mostly(VALID_NAMES, ODD_NAMES)),
                        draw(mostly(st.binary(min_size=32, max_size=32), st.binary(max_size=40))),
                        draw(mostly(UINTS, ODD_INTS)), draw(mostly(UINTS, ODD_INTS)), op_list]
    return codec.encode(draw(mostly(st.just(items), st.sampled_from([items[:5], items + [b""]]))))


def block_of(tx_raws: list[bytes], tx_ids: list[bytes]) -> bytes:
    """A block whose header commits to exactly these transactions (so the body is what decides)."""
    g = CB.genesis.header
    try:  # the namespace root of the transactions, when they decode (else the body fails first anyway)
        ns_root = block_ns_tx_root([Tx.decode(raw) for raw in tx_raws])
    except PeerDBError:
        ns_root = EMPTY_ROOT
    header = Header(1, 0, g.hash, "m0", g.time_ms + 1000, merkle_root(tx_ids), len(tx_raws), bytes(32), EMPTY_ROOT,
                    ns_root)
    return codec.encode([header.raw, tx_raws, []])


def outcome(fn: Any, data: bytes) -> tuple[object, ...]:
    try:
        b = fn(data)
        return (b.header, b.txs, b.evidence, b.raw)
    except PeerDBError as exc:
        return (type(exc), str(exc))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(bodies(), mostly(st.binary(min_size=64, max_size=64), st.binary(max_size=65))),
                min_size=1, max_size=3))
def test_any_transaction_fields_are_judged_as_the_reference_judges_them(txs: list[tuple[bytes, bytes]]) -> None:
    raws = [codec.encode([body, sig]) for body, sig in txs]
    data = block_of(raws, [codec.tagged_hash("tx", body) for body, _ in txs])
    assert outcome(decode_block_fast, data) == outcome(Block.decode, data)


def test_governance_requests_take_the_fast_path() -> None:
    tx = CB.tx("m0", [Op(OP_PUT, GOV_NAMESPACE, "propose", b"\x01"), ("books", "k", b"v")])
    data = block_of([tx.raw], [tx.txid])
    with mock.patch.object(Block, "decode", side_effect=AssertionError("took the reference path")):
        fast = decode_block_fast(data)
    assert fast.txs == (tx,) and fast.raw == data


def test_known_transactions_are_used_as_they_are() -> None:
    t1, t2 = CB.tx("m0", [("books", "a", b"1")]), CB.tx("m1", [("books", "b", None)])
    data = block_of([t1.raw, t2.raw], [t1.txid, t2.txid])
    known = {t1.raw: t1}
    fast = decode_block_fast(data, known)
    assert fast.txs[0] is t1 and fast.txs[1] == t2
    assert outcome(lambda d: decode_block_fast(d, known), data) == outcome(lambda d: Block.decode(d, known), data)


def test_other_byte_types_are_judged_as_the_reference_judges_them() -> None:
    tx = CB.tx("m0", [("books", "a", b"1")])
    data = block_of([tx.raw], [tx.txid])
    for other in (bytearray(data), memoryview(data)):
        assert outcome(decode_block_fast, other) == outcome(Block.decode, other)  # type: ignore[arg-type]


# --- transactions alone (what a member decodes when it admits one) ------------------------------

def tx_outcome(fn: Any, data: bytes) -> tuple[object, ...]:
    try:
        tx = fn(data)
        return (tx, tx.raw, tx.txid, tx.body)
    except PeerDBError as exc:
        return (type(exc), str(exc))


@settings(max_examples=300, deadline=None)
@given(bodies(), mostly(st.binary(min_size=64, max_size=64), st.binary(max_size=65)))
def test_any_transaction_is_judged_alone_as_the_reference_judges_it(body: bytes, sig: bytes) -> None:
    data = codec.encode([body, sig])
    assert tx_outcome(decode_tx_fast, data) == tx_outcome(Tx.decode, data)


VALID_TX = CB.tx("m0", [("books", "a" * 30, b"v" * 150), ("books", "gone", None)]).raw


@settings(max_examples=500, deadline=None)
@given(st.integers(0, len(VALID_TX) - 1), st.integers(0, 255), st.sampled_from(["replace", "cut", "insert", "append"]))
@example(0, 0x83, "replace")  # a three-item array where the envelope has two
@example(1, 0x58, "replace")  # the body's length head in a longer form than needed
@example(len(VALID_TX) - 65, 0x41, "replace")  # a 1-byte signature head
@example(len(VALID_TX) - 1, 0, "cut")  # the signature one byte short
@example(len(VALID_TX) - 1, 0, "append")  # a trailing byte
@example(3, 0x00, "replace")  # a different body version
def test_mutated_bytes_of_a_valid_transaction_are_judged_as_the_reference_judges_them(
        pos: int, byte: int, how: str) -> None:
    raw = bytearray(VALID_TX)
    if how == "replace":
        raw[pos] = byte
    elif how == "cut":
        del raw[pos:]
    elif how == "insert":
        raw.insert(pos, byte)
    else:
        raw.append(byte)
    data = bytes(raw)
    assert tx_outcome(decode_tx_fast, data) == tx_outcome(Tx.decode, data)


def test_a_valid_transaction_takes_the_fast_path() -> None:
    tx = CB.tx("m1", [("books", "k", b"v"), Op(OP_PUT, GOV_NAMESPACE, "propose", b"\x01")])
    with mock.patch.object(Tx, "decode", side_effect=AssertionError("took the reference path")):
        assert decode_tx_fast(tx.raw) == tx


def test_other_byte_types_are_judged_alone_as_the_reference_judges_them() -> None:
    for other in (bytearray(VALID_TX), memoryview(VALID_TX), "text"):
        assert tx_outcome(decode_tx_fast, other) == tx_outcome(Tx.decode, other)  # type: ignore[arg-type]
