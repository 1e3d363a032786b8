"""Value objects: canonical bytes in, the same bytes out; anything malformed is refused by field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.codec import decode, encode, tagged_hash
from peerdb.core.errors import (
    DecodeError,
    LimitError,
    NonCanonicalError,
    SignatureError,
    TrailingBytesError,
    TruncatedError,
    ValidationError,
)
from peerdb.core.limits import (
    MAX_BLOCK_ITEMS,
    MAX_BLOCK_TXS,
    MAX_EVIDENCE_PER_BLOCK,
    MAX_KEY_BYTES,
    MAX_OPS_PER_TX,
    MAX_REASON_LEN,
    MAX_ROUND,
    MAX_TX_ITEMS,
    MAX_VALUE_BYTES,
    PROTOCOL_VERSION,
)
from peerdb.core.merkle import merkle_root
from peerdb.core.model import (
    DOMAIN_BLOCK,
    DOMAIN_TX,
    OP_DELETE,
    OP_PUT,
    ZERO_HASH,
    Block,
    BlockSignature,
    Evidence,
    Header,
    Objection,
    Op,
    Tx,
    body_header,
    consortium_id,
    genesis_header,
)
from peerdb.core.smt import build as smt_build
from peerdb.core.statetree import EMPTY_STATE_ROOT, ns_path

from tests.helpers.core import (
    CID,
    CONSORTIUM,
    GENESIS,
    MEMBER_NAMES,
    assert_names,
    bare_header,
    client_key,
    delete,
    double_sign_evidence,
    make_tx,
    member_key,
    put,
    sign_block,
)

SIG = bytes(64)
CLIENT = client_key("firm-a").public
H = bytes(range(32))


def body(*, version: Any = PROTOCOL_VERSION, member: Any = "firm-a", client: Any = CLIENT, nonce: Any = 1,
         expires: Any = 10, ops: Any = None) -> bytes:
    ops = [[OP_PUT, "books", "k", b"v"]] if ops is None else ops
    return encode([version, member, client, nonce, expires, ops])


def tx_bytes(body_bytes: bytes, sig: Any = SIG) -> bytes:
    return encode([body_bytes, sig])


def header_items(**changes: Any) -> list[Any]:
    fields = {"version": PROTOCOL_VERSION, "height": 1, "round": 0, "prev": H, "proposer": "firm-a",
              "time": 5, "tx_root": merkle_root([]), "tx_count": 0, "state_root": ZERO_HASH,
              "evidence_root": merkle_root([]), "ns_tx_root": EMPTY_STATE_ROOT}
    fields.update(changes)
    return list(fields.values())


# --- genesis and the consortium id ---------------------------------------------------------------

def test_genesis_commits_to_the_consortium_definition() -> None:
    g = genesis_header(CONSORTIUM)
    assert g.height == 0 and g.round == 0 and g.proposer == ""
    assert g.prev == CONSORTIUM.definition_hash
    assert g.time_ms == CONSORTIUM.genesis_time_ms
    assert g.tx_root == merkle_root([]) == g.evidence_root
    assert g.state_root == EMPTY_STATE_ROOT == g.ns_tx_root  # the empty state tree and namespace map
    assert consortium_id(CONSORTIUM) == g.hash == tagged_hash("header", g.raw)
    assert Header.decode(g.raw) == g


# --- ops and transactions ------------------------------------------------------------------------

@pytest.mark.parametrize("build, error, fragments", [
    (lambda: Op(2, "books", "k", b""), DecodeError, ("op.kind", "neither put (0) nor delete (1)")),
    (lambda: Op(OP_PUT, "", "k", b""), DecodeError, ("op.namespace", "not a valid namespace")),
    (lambda: Op(OP_PUT, "Books", "k", b""), DecodeError, ("op.namespace", "not a valid namespace")),
    (lambda: Op(OP_PUT, 5, "k", b""), DecodeError, ("op.namespace", "expected a text string")),  # type: ignore[arg-type]
    (lambda: Op(OP_PUT, "n" * 65, "k", b""), LimitError, ("op.namespace", "longer than 64")),
    (lambda: Op(OP_PUT, "books", "", b""), DecodeError, ("op.key", "must not be empty")),
    (lambda: Op(OP_PUT, "books", b"k", b""), DecodeError, ("op.key", "expected a text string")),  # type: ignore[arg-type]
    (lambda: Op(OP_PUT, "books", "k" * (MAX_KEY_BYTES + 1), b""), LimitError, ("op.key", f"longer than {MAX_KEY_BYTES}")),
    (lambda: Op(OP_PUT, "books", "k", None), DecodeError, ("op.value", "expected a byte string")),
    (lambda: Op(OP_PUT, "books", "k", "v"), DecodeError, ("op.value", "expected a byte string")),  # type: ignore[arg-type]
    (lambda: Op(OP_PUT, "books", "k", b"v" * (MAX_VALUE_BYTES + 1)), LimitError, ("op.value", "exceeds the limit")),
    (lambda: Op(OP_DELETE, "books", "k", b"v"), DecodeError, ("op.value", "a delete carries no value")),
])
def test_bad_ops(build: Callable[[], Op], error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        build()
    assert type(info.value) is error
    assert_names(info.value, *fragments)


def test_tx_create_and_decode() -> None:
    tx = make_tx("firm-a", 7, [put("books", "a", b"1"), delete("books", "b")])
    assert tx.txid == tagged_hash("tx", tx.body)
    assert tx.raw == encode([tx.body, tx.signature])
    assert tx.client == CLIENT and tx.nonce == 7
    assert decode(tx.body) == [PROTOCOL_VERSION, "firm-a", CLIENT, 7, tx.expires_ms,
                               [[0, "books", "a", b"1"], [1, "books", "b", None]]]
    assert tx.signature_valid(CID)
    assert not tx.signature_valid(bytes(32))
    assert Tx.decode(tx.raw) == tx


def test_tx_signature_is_over_the_tx_domain() -> None:
    tx = make_tx()
    assert tx.signature == client_key("firm-a").sign(DOMAIN_TX, CID, tx.txid)


@pytest.mark.parametrize("n_ops", [0, MAX_OPS_PER_TX + 1])
def test_tx_create_refuses_bad_op_counts(n_ops: int) -> None:
    with pytest.raises(DecodeError) as info:
        make_tx(ops=[put("books", f"k{i}", b"") for i in range(n_ops)])
    assert_names(info.value, "tx.ops", f"need 1..{MAX_OPS_PER_TX}")


def test_tx_too_big_is_refused_on_create() -> None:
    ops = [put("books", f"k{i}", b"x" * MAX_VALUE_BYTES) for i in range(5)]
    with pytest.raises(LimitError) as info:
        make_tx(ops=ops)
    assert_names(info.value, "tx", "exceeds the limit")


def _op(**changes: Any) -> list[Any]:
    op: dict[str, Any] = {"kind": OP_PUT, "ns": "books", "key": "k", "value": b"v"}
    op.update(changes)
    return list(op.values())


BAD_TXS: list[tuple[str, bytes, type[Exception], tuple[str, ...]]] = [
    ("not an array", encode(5), DecodeError, ("tx", "expected an array")),
    ("three elements", encode([body(), SIG, 1]), DecodeError, ("tx", "expected 2 elements")),
    ("body not bytes", encode([[1], SIG]), DecodeError, ("tx.body", "expected a byte string")),
    ("signature short", tx_bytes(body(), b"s" * 63), DecodeError, ("tx.signature", "expected 64 bytes")),
    ("signature text", tx_bytes(body(), "s" * 64), DecodeError, ("tx.signature", "expected a byte string")),
    ("body non-canonical", tx_bytes(b"\x98\x06" + body()[1:]), NonCanonicalError, ("tx.body", "canonical")),
    ("body with trailing bytes", tx_bytes(body() + b"\x00"), TrailingBytesError, ("tx.body", "trailing")),
    ("body truncated", tx_bytes(body()[:-1]), TruncatedError, ("tx.body", "truncated")),
    ("body not an array", tx_bytes(encode({"a": 1})), DecodeError, ("tx.body", "expected an array")),
    ("body five fields", tx_bytes(encode([1, "firm-a", CLIENT, 1, 10])), DecodeError, ("tx.body", "expected 6 elements")),
    ("version 3", tx_bytes(body(version=3)), DecodeError, ("tx.version", "3 is not 2")),
    ("version 1", tx_bytes(body(version=1)), DecodeError, ("tx.version", "1 is not 2")),
    ("version text", tx_bytes(body(version="1")), DecodeError, ("tx.version", "expected an integer")),
    ("member bad name", tx_bytes(body(member="Firm A")), DecodeError, ("tx.member", "not a valid member name")),
    ("member empty", tx_bytes(body(member="")), DecodeError, ("tx.member", "not a valid member name")),
    ("member not text", tx_bytes(body(member=b"firm-a")), DecodeError, ("tx.member", "expected a text string")),
    ("member too long", tx_bytes(body(member="m" * 65)), LimitError, ("tx.member", "longer than 64")),
    ("client short", tx_bytes(body(client=CLIENT[:31])), DecodeError, ("tx.client", "expected 32 bytes")),
    ("nonce negative", tx_bytes(body(nonce=-1)), DecodeError, ("tx.nonce", "outside")),
    ("nonce bool", tx_bytes(body(nonce=True)), DecodeError, ("tx.nonce", "expected an integer")),
    ("expiry text", tx_bytes(body(expires="later")), DecodeError, ("tx.expires_ms", "expected an integer")),
    ("ops not an array", tx_bytes(body(ops={"a": 1})), DecodeError, ("tx.ops", "expected an array")),
    ("no ops", tx_bytes(body(ops=[])), DecodeError, ("tx.ops", "need 1..64")),
    ("too many ops", tx_bytes(body(ops=[_op(key=f"k{i}") for i in range(65)])), DecodeError, ("tx.ops", "need 1..64")),
    ("op not an array", tx_bytes(body(ops=[5])), DecodeError, ("tx.ops[0]", "expected an array")),
    ("op three fields", tx_bytes(body(ops=[[0, "books", "k"]])), DecodeError, ("tx.ops[0]", "expected 4 elements")),
    ("second op bad kind", tx_bytes(body(ops=[_op(), _op(kind=2)])), DecodeError, ("tx.ops[1].kind", "outside [0, 1]")),
    ("op kind text", tx_bytes(body(ops=[_op(kind="put")])), DecodeError, ("tx.ops[0].kind", "expected an integer")),
    ("op bad namespace", tx_bytes(body(ops=[_op(ns="no spaces")])), DecodeError, ("op.namespace", "not a valid namespace")),
    ("op empty key", tx_bytes(body(ops=[_op(key="")])), DecodeError, ("op.key", "must not be empty")),
    ("put without value", tx_bytes(body(ops=[_op(value=None)])), DecodeError, ("op.value", "expected a byte string")),
    ("delete with value", tx_bytes(body(ops=[_op(kind=OP_DELETE)])), DecodeError, ("op.value", "a delete carries no value")),
    ("too big", tx_bytes(body(ops=[_op(key=f"k{i}", value=b"x" * MAX_VALUE_BYTES) for i in range(5)])),
     LimitError, ("tx", "exceeds the limit")),
    ("trailing bytes", tx_bytes(body()) + b"\x00", TrailingBytesError, ("tx", "trailing")),
    ("outer non-canonical", b"\x98\x02" + tx_bytes(body())[1:], NonCanonicalError, ("tx", "canonical")),
    ("body of tiny items", tx_bytes(body(ops=[[]] * (MAX_TX_ITEMS - 6))), LimitError,
     ("tx.body", f"more than {MAX_TX_ITEMS} CBOR items")),
    ("envelope of tiny items", encode([body(), SIG, [[]] * MAX_TX_ITEMS]), LimitError,
     ("tx", f"more than {MAX_TX_ITEMS} CBOR items")),
]


@pytest.mark.parametrize("name, data, error, fragments", BAD_TXS, ids=[c[0] for c in BAD_TXS])
def test_bad_tx_bytes(name: str, data: bytes, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        Tx.decode(data)
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert_names(info.value, *fragments)


def test_a_good_hand_made_tx_decodes() -> None:
    # the helpers above build valid bytes unless told otherwise
    tx = Tx.decode(tx_bytes(body()))
    assert tx.member == "firm-a" and tx.ops == (Op(OP_PUT, "books", "k", b"v"),)
    assert not tx.signature_valid(CID)  # the zero signature


# --- headers -------------------------------------------------------------------------------------

def test_header_round_trip_and_hash() -> None:
    h = Header.decode(encode(header_items()))
    assert h.raw == encode(header_items())
    assert h.hash == tagged_hash("header", h.raw)
    assert Header.decode(h.raw) == h


BAD_HEADERS: list[tuple[str, bytes, type[Exception], tuple[str, ...]]] = [
    ("not an array", encode(b"h"), DecodeError, ("header", "expected an array")),
    ("ten fields", encode(header_items()[:10]), DecodeError, ("header", "expected 11 elements")),
    ("version 3", encode(header_items(version=3)), DecodeError, ("header.version", "3 is not 2")),
    ("a version 1 header", encode(header_items(version=1)[:10]), DecodeError, ("header.version", "1 is not 2")),
    ("version text", encode(header_items(version="1")), DecodeError, ("header.version", "expected an integer")),
    ("height negative", encode(header_items(height=-1)), DecodeError, ("header.height", "outside")),
    ("height text", encode(header_items(height="1")), DecodeError, ("header.height", "expected an integer")),
    ("round too big", encode(header_items(round=MAX_ROUND + 1)), DecodeError, ("header.round", "outside")),
    ("prev short", encode(header_items(prev=H[:31])), DecodeError, ("header.prev", "expected 32 bytes")),
    ("prev text", encode(header_items(prev="00" * 32)), DecodeError, ("header.prev", "expected a byte string")),
    ("proposer not text", encode(header_items(proposer=1)), DecodeError, ("header.proposer", "expected a text string")),
    ("proposer bad name", encode(header_items(proposer="FIRM")), DecodeError, ("header.proposer", "not a valid member name")),
    ("proposer empty above genesis", encode(header_items(proposer="")), DecodeError, ("header.proposer", "not a valid")),
    ("proposer too long", encode(header_items(proposer="p" * 65)), LimitError, ("header.proposer", "longer than 64")),
    ("time negative", encode(header_items(time=-5)), DecodeError, ("header.time_ms", "outside")),
    ("tx_root short", encode(header_items(tx_root=b"r")), DecodeError, ("header.tx_root", "expected 32 bytes")),
    ("tx_count too big", encode(header_items(tx_count=MAX_BLOCK_TXS + 1)), DecodeError, ("header.tx_count", "outside")),
    ("state_root none", encode(header_items(state_root=None)), DecodeError, ("header.state_root", "byte string")),
    ("evidence_root long", encode(header_items(evidence_root=H + b"x")), DecodeError, ("header.evidence_root", "expected 32")),
    ("too big", encode(header_items(prev=b"x" * 1100)), LimitError, ("header", "exceeds the limit of 1024")),
    ("trailing bytes", encode(header_items()) + b"\xf6", TrailingBytesError, ("header", "trailing")),
    ("non-canonical", b"\x98\x0b" + encode(header_items())[1:], NonCanonicalError, ("header", "canonical")),
    ("truncated", encode(header_items())[:-3], TruncatedError, ("header", "truncated")),
]


@pytest.mark.parametrize("name, data, error, fragments", BAD_HEADERS, ids=[c[0] for c in BAD_HEADERS])
def test_bad_header_bytes(name: str, data: bytes, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        Header.decode(data)
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert_names(info.value, *fragments)


# --- block signatures and objections -------------------------------------------------------------

def test_block_signature() -> None:
    s = sign_block("firm-b", H)
    assert s.signature == member_key("firm-b").sign(DOMAIN_BLOCK, CID, H)
    assert s.valid(CID, member_key("firm-b").public)
    assert not s.valid(CID, member_key("firm-a").public)
    assert not s.valid(bytes(32), member_key("firm-b").public)
    assert BlockSignature.from_cbor(decode(encode(s.to_cbor()))) == s


@pytest.mark.parametrize("raw, fragments", [
    ("x", ("signature", "expected an array")),
    ([H, "firm-a"], ("signature", "expected 3 elements")),
    ([H[:31], "firm-a", SIG], ("signature.block", "expected 32 bytes")),
    ([H, "Firm", SIG], ("signature.member", "not a valid member name")),
    ([H, 7, SIG], ("signature.member", "expected a text string")),
    ([H, "firm-a", SIG[:63]], ("signature.sig", "expected 64 bytes")),
])
def test_bad_block_signatures(raw: Any, fragments: tuple[str, ...]) -> None:
    with pytest.raises(DecodeError) as info:
        BlockSignature.from_cbor(raw)
    assert_names(info.value, *fragments)


def test_objection() -> None:
    o = Objection.create(member_key("firm-c"), CID, "firm-c", H, "state root is wrong")
    assert o.valid(CID, member_key("firm-c").public)
    assert not o.valid(CID, member_key("firm-a").public)
    assert Objection.from_cbor(decode(encode(o.to_cbor()))) == o
    forged = Objection(o.block_hash, o.member, "another reason", o.signature)
    assert not forged.valid(CID, member_key("firm-c").public)
    as_block_sig = BlockSignature(H, "firm-c", o.signature)
    assert not as_block_sig.valid(CID, member_key("firm-c").public)


def test_objection_reason_is_cut_to_the_limit_on_create() -> None:
    o = Objection.create(member_key("firm-c"), CID, "firm-c", H, "é" * (MAX_REASON_LEN + 50))
    assert o.reason == "é" * MAX_REASON_LEN
    assert o.valid(CID, member_key("firm-c").public)


@pytest.mark.parametrize("raw, error, fragments", [
    (5, DecodeError, ("objection", "expected an array")),
    ([H, "firm-a", "why"], DecodeError, ("objection", "expected 4 elements")),
    ([b"h", "firm-a", "why", SIG], DecodeError, ("objection.block", "expected 32 bytes")),
    ([H, "", "why", SIG], DecodeError, ("objection.member", "not a valid member name")),
    ([H, "firm-a", b"why", SIG], DecodeError, ("objection.reason", "expected a text string")),
    ([H, "firm-a", "x" * (4 * MAX_REASON_LEN + 1), SIG], LimitError, ("objection.reason", "longer than")),
    ([H, "firm-a", "why", None], DecodeError, ("objection.sig", "expected a byte string")),
])
def test_bad_objections(raw: Any, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        Objection.from_cbor(raw)
    assert type(info.value) is error
    assert_names(info.value, *fragments)


# --- evidence ------------------------------------------------------------------------------------

def test_evidence_is_ordered_and_checks_out() -> None:
    ev = double_sign_evidence("firm-b")
    assert ev.header_a.hash < ev.header_b.hash
    assert ev.id == tagged_hash("evidence", encode(["firm-b", ev.header_a.hash, ev.header_b.hash]))
    ev.check(CID, member_key("firm-b").public)
    swapped = Evidence.from_signatures("firm-b", ev.header_b, ev.sig_b, ev.header_a, ev.sig_a)
    assert swapped == ev and swapped.id == ev.id
    assert Evidence.decode(ev.encode()) == ev


def test_evidence_with_another_members_key_is_a_signature_error() -> None:
    ev = double_sign_evidence("firm-b")
    with pytest.raises(SignatureError) as info:
        ev.check(CID, member_key("firm-c").public)
    assert_names(info.value, "evidence.sig_a", "firm-b")
    half = Evidence("firm-b", ev.header_a, ev.sig_a, ev.header_b, ev.sig_a)
    with pytest.raises(SignatureError) as info:
        half.check(CID, member_key("firm-b").public)
    assert_names(info.value, "evidence.sig_b")
    with pytest.raises(SignatureError):
        ev.check(bytes(32), member_key("firm-b").public)


def _ev_items(**changes: Any) -> list[Any]:
    ev = double_sign_evidence("firm-b")
    items = dict(zip(("member", "a", "sig_a", "b", "sig_b"), ev.to_cbor()))
    items.update(changes)
    return list(items.values())


_EV = double_sign_evidence("firm-b")
_OTHER_HEIGHT = bare_header(_EV.header_a)
BAD_EVIDENCE: list[tuple[str, Any, type[Exception], tuple[str, ...]]] = [
    ("not an array", encode("ev"), DecodeError, ("evidence", "expected an array")),
    ("four fields", encode(_ev_items()[:4]), DecodeError, ("evidence", "expected 5 elements")),
    ("bad member", encode(_ev_items(member="B")), DecodeError, ("evidence.member", "not a valid member name")),
    ("header_a not bytes", encode(_ev_items(a=[1])), DecodeError, ("evidence.header_a", "expected a byte string")),
    ("header_b too big", encode(_ev_items(b=b"x" * 1025)), LimitError, ("evidence.header_b", "exceeds the limit")),
    ("header_a garbage", encode(_ev_items(a=b"\x00\x00")), TrailingBytesError, ("header", "trailing")),
    ("sig_a short", encode(_ev_items(sig_a=SIG[:10])), DecodeError, ("evidence.sig_a", "expected 64 bytes")),
    ("sig_b text", encode(_ev_items(sig_b="s")), DecodeError, ("evidence.sig_b", "expected a byte string")),
    ("different heights", encode(_ev_items(b=_OTHER_HEIGHT.raw) if _EV.header_a.hash < _OTHER_HEIGHT.hash
                                 else _ev_items(a=_OTHER_HEIGHT.raw)),
     DecodeError, ("evidence", "different heights")),
    ("same header twice", encode(_ev_items(b=_EV.header_a.raw)), DecodeError, ("evidence", "must differ")),
    ("wrong order", encode(_ev_items(a=_EV.header_b.raw, b=_EV.header_a.raw)), DecodeError, ("evidence", "ordered by hash")),
    ("too big", encode(_ev_items(member="m" * 4000)), LimitError, ("evidence", "exceeds the limit of 4096")),
    ("trailing", _EV.encode() + b"\x00", TrailingBytesError, ("evidence", "trailing")),
]


@pytest.mark.parametrize("name, data, error, fragments", BAD_EVIDENCE, ids=[c[0] for c in BAD_EVIDENCE])
def test_bad_evidence(name: str, data: bytes, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        Evidence.decode(data)
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert_names(info.value, *fragments)


# --- blocks --------------------------------------------------------------------------------------

def _block(txs: tuple[Tx, ...] = (), evidence: tuple[Evidence, ...] = ()) -> Block:
    header = body_header(1, 0, GENESIS.hash, "firm-a", GENESIS.time_ms + 1, txs, ZERO_HASH, evidence)
    return Block(header, txs, evidence)


def test_block_round_trip() -> None:
    block = _block((make_tx(nonce=1), make_tx("firm-b", nonce=2)), (double_sign_evidence("firm-c"),))
    assert block.hash == block.header.hash and block.height == 1
    assert block.raw == encode([block.header.raw, [t.raw for t in block.txs], [e.to_cbor() for e in block.evidence]])
    again = Block.decode(block.raw)
    assert again == block and again.raw == block.raw


def test_block_contents_must_match_the_header() -> None:
    tx = make_tx()
    good = _block((tx,))
    with pytest.raises(ValidationError) as info:
        Block(good.header, ())
    assert_names(info.value, "block 1", "header says 1 txs, body has 0")
    with pytest.raises(ValidationError) as info:
        Block(good.header, (make_tx(nonce=99),))
    assert_names(info.value, "block 1", "tx_root does not match")
    with pytest.raises(ValidationError) as info:
        Block(good.header, (tx,), (double_sign_evidence("firm-c"),))
    assert_names(info.value, "block 1", "evidence_root does not match")
    with pytest.raises(ValidationError) as info:
        Block(replace(good.header, ns_tx_root=EMPTY_STATE_ROOT), (tx,))
    assert_names(info.value, "block 1", "ns_tx_root does not match")


def test_the_namespace_transaction_root_lists_each_namespaces_transactions() -> None:
    a = make_tx(nonce=1, ops=[put("books", "k", b"1")])
    b = make_tx(nonce=2, ops=[put("notes", "k", b"2"), put("books", "j", b"3")])
    c = make_tx(nonce=3, ops=[put("notes", "x", b"4")])
    block = _block((a, b, c))
    expected = smt_build({ns_path("books"): merkle_root([a.txid, b.txid]),
                          ns_path("notes"): merkle_root([b.txid, c.txid])})[0]
    assert block.header.ns_tx_root == expected != _block((a, c, b)).header.ns_tx_root


def test_too_much_evidence_is_refused() -> None:
    evidence = tuple(double_sign_evidence(MEMBER_NAMES[i % 4], bare_header(GENESIS, salt=i))
                     for i in range(MAX_EVIDENCE_PER_BLOCK + 1))
    with pytest.raises(LimitError) as info:
        _block((), evidence)
    assert_names(info.value, "block.evidence", f"more than {MAX_EVIDENCE_PER_BLOCK}")


_GOOD_BLOCK = _block((make_tx(),), (double_sign_evidence("firm-c"),))


def _block_items(**changes: Any) -> list[Any]:
    items = dict(zip(("header", "txs", "evidence"), decode(_GOOD_BLOCK.raw)))
    items.update(changes)
    return list(items.values())


BAD_BLOCKS: list[tuple[str, bytes, type[Exception], tuple[str, ...]]] = [
    ("not an array", encode(1), DecodeError, ("block", "expected an array")),
    ("two fields", encode(_block_items()[:2]), DecodeError, ("block", "expected 3 elements")),
    ("header not bytes", encode(_block_items(header=header_items())), DecodeError, ("block.header", "byte string")),
    ("header bad", encode(_block_items(header=encode(header_items(version=9)))), DecodeError, ("header.version",)),
    ("txs not an array", encode(_block_items(txs=b"")), DecodeError, ("block.txs", "expected an array")),
    ("tx not bytes", encode(_block_items(txs=[[1, 2]])), DecodeError, ("block.txs[0]", "expected a byte string")),
    ("tx outer wrong", encode(_block_items(txs=[encode([1])])), DecodeError, ("block.txs[0]", "expected 2 elements")),
    ("tx with trailing bytes", encode(_block_items(txs=[make_tx().raw + b"\x00"])), TrailingBytesError,
     ("block.txs[0]", "trailing")),
    ("tx signature short", encode(_block_items(txs=[encode([make_tx().body, SIG[:5]])])), DecodeError,
     ("block.txs[0].signature", "expected 64 bytes")),
    ("tx body bad", encode(_block_items(txs=[tx_bytes(body(member="X"))])), DecodeError, ("tx.member",)),
    ("tx count mismatch", encode(_block_items(txs=[])), ValidationError, ("block 1", "header says 1 txs")),
    ("tx root mismatch", encode(_block_items(txs=[make_tx(nonce=5).raw])), ValidationError, ("tx_root does not match",)),
    ("evidence not an array", encode(_block_items(evidence=None)), DecodeError, ("block.evidence", "expected an array")),
    ("evidence item bad", encode(_block_items(evidence=[[1]])), DecodeError, ("block.evidence[0]", "expected 5")),
    ("evidence root mismatch", encode(_block_items(evidence=[])), ValidationError, ("evidence_root does not match",)),
    ("trailing bytes", _GOOD_BLOCK.raw + b"\x00", TrailingBytesError, ("block", "trailing")),
    ("truncated", _GOOD_BLOCK.raw[:-1], TruncatedError, ("block", "truncated")),
    ("envelope of tiny items", encode(_block_items(evidence=[[]] * MAX_BLOCK_ITEMS)), LimitError,
     ("block", f"more than {MAX_BLOCK_ITEMS} CBOR items")),
    ("transaction of tiny items", encode(_block_items(txs=[tx_bytes(body(ops=[[]] * MAX_TX_ITEMS))])), LimitError,
     ("tx.body", f"more than {MAX_TX_ITEMS} CBOR items")),
]


def test_the_largest_valid_body_and_block_envelope_are_within_the_item_limits() -> None:
    """The reasons given for MAX_TX_ITEMS and MAX_BLOCK_ITEMS: 327 and 20,388 items at most."""
    tx = make_tx(ops=[put("books", f"k{i}", b"") for i in range(MAX_OPS_PER_TX)])
    assert decode(tx.body, max_items=327) and 327 <= MAX_TX_ITEMS
    envelope = [b"h", [b"t"] * MAX_BLOCK_TXS, [[b"m", b"a", b"s", b"b", b"s"]] * MAX_EVIDENCE_PER_BLOCK]
    assert decode(encode(envelope), max_items=20_388) and 20_388 <= MAX_BLOCK_ITEMS


@pytest.mark.parametrize("name, data, error, fragments", BAD_BLOCKS, ids=[c[0] for c in BAD_BLOCKS])
def test_bad_block_bytes(name: str, data: bytes, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        Block.decode(data)
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert_names(info.value, *fragments)


# --- properties ----------------------------------------------------------------------------------

names = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z")
op_keys = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30)
ops = st.builds(lambda ns, k, v: Op(OP_PUT, ns, k, v) if v is not None else Op(OP_DELETE, ns, k),
                names, op_keys, st.none() | st.binary(max_size=50))
u64 = st.integers(0, 2**64 - 1)
txs = st.builds(lambda member, nonce, expires, op_list: make_tx(member, nonce, op_list, expires),
                st.sampled_from(MEMBER_NAMES), u64, u64, st.lists(ops, min_size=1, max_size=4))
hashes = st.binary(min_size=32, max_size=32)
headers = st.builds(Header, st.integers(1, 2**64 - 1), st.integers(0, MAX_ROUND), hashes,
                    st.sampled_from(MEMBER_NAMES) | names, u64, hashes, st.integers(0, MAX_BLOCK_TXS), hashes, hashes)


@st.composite
def evidences(draw: st.DrawFn) -> Evidence:
    member = draw(st.sampled_from(MEMBER_NAMES))
    a = draw(headers)
    b = draw(headers.map(lambda h: Header(a.height, h.round, h.prev, h.proposer, h.time_ms, h.tx_root,
                                          h.tx_count, h.state_root, h.evidence_root)))
    if a.hash == b.hash:
        b = Header(a.height, a.round, a.prev, a.proposer, a.time_ms + 1 if a.time_ms < 2**64 - 1 else 0,
                   a.tx_root, a.tx_count, a.state_root, a.evidence_root)
    key = member_key(member)
    return Evidence.from_signatures(member, a, key.sign(DOMAIN_BLOCK, CID, a.hash), b, key.sign(DOMAIN_BLOCK, CID, b.hash))


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    tx_list = tuple(draw(st.lists(txs, max_size=3, unique_by=lambda t: t.txid)))
    ev_list = tuple(draw(st.lists(evidences(), max_size=2)))
    h = draw(headers)
    header = body_header(h.height, h.round, h.prev, h.proposer, h.time_ms, tx_list, h.state_root, ev_list)
    return Block(header, tx_list, ev_list)


def _mutants(data: bytes, source: st.DataObject) -> list[bytes]:
    draw = source.draw
    i = draw(st.integers(0, len(data) - 1))
    flipped = bytearray(data)
    flipped[i] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(data) - 1))
    return [bytes(flipped), data[:cut], data + draw(st.binary(min_size=1, max_size=4)),
            data[:i] + bytes([draw(st.integers(0, 255))]) + data[i:]]


@given(txs)
def test_property_tx_round_trip(tx: Tx) -> None:
    again = Tx.decode(tx.raw)
    assert again == tx and again.raw == tx.raw and again.txid == tx.txid
    assert again.signature_valid(CID)


@given(txs, st.data())
def test_property_mutated_tx_is_refused_or_no_longer_signed(tx: Tx, data: st.DataObject) -> None:
    for mutant in _mutants(tx.raw, data):
        try:
            again = Tx.decode(mutant)
        except DecodeError:
            continue
        assert again.raw == mutant != tx.raw
        assert not again.signature_valid(CID)


@given(headers)
def test_property_header_round_trip(header: Header) -> None:
    again = Header.decode(header.raw)
    assert again == header and again.hash == header.hash


@given(headers, st.data())
def test_property_mutated_header_is_refused_or_hashes_differently(header: Header, data: st.DataObject) -> None:
    for mutant in _mutants(header.raw, data):
        try:
            again = Header.decode(mutant)
        except DecodeError:
            continue
        assert again.raw == mutant and again.hash != header.hash


@given(blocks())
def test_property_block_round_trip(block: Block) -> None:
    again = Block.decode(block.raw)
    assert again == block and again.raw == block.raw and again.hash == block.hash


@given(blocks(), st.data())
def test_property_mutated_block_is_refused_or_different(block: Block, data: st.DataObject) -> None:
    for mutant in _mutants(block.raw, data):
        try:
            again = Block.decode(mutant)
        except (DecodeError, ValidationError):
            continue
        assert again.raw == mutant != block.raw
        # same header means same txids and evidence ids; then a signature must have changed
        if again.hash == block.hash:
            assert any(not t.signature_valid(CID) for t in again.txs) or any(
                _evidence_broken(e) for e in again.evidence)


def _evidence_broken(ev: Evidence) -> bool:
    try:
        ev.check(CID, member_key(ev.member).public)
    except SignatureError:
        return True
    return False


@given(evidences())
def test_property_evidence_round_trip(ev: Evidence) -> None:
    again = Evidence.decode(ev.encode())
    assert again == ev and again.id == ev.id
    again.check(CID, member_key(ev.member).public)


@given(evidences(), st.data())
def test_property_mutated_evidence_is_refused_or_no_longer_convicts(ev: Evidence, data: st.DataObject) -> None:
    for mutant in _mutants(ev.encode(), data):
        try:
            again = Evidence.decode(mutant)
        except DecodeError:
            continue
        assert again.encode() == mutant
        if again.member in MEMBER_NAMES:
            assert _evidence_broken(again)


signed_things = st.sampled_from(["signature", "objection"])


@given(signed_things, st.sampled_from(MEMBER_NAMES), hashes, st.text(max_size=40),
       st.data())
def test_property_signature_and_objection_round_trip_and_mutation(
        kind: str, member: str, block_hash: bytes, reason: str, data: st.DataObject) -> None:
    key = member_key(member)
    obj: BlockSignature | Objection
    if kind == "signature":
        obj = BlockSignature.create(key, CID, member, block_hash)
        from_cbor: Callable[[Any], BlockSignature | Objection] = BlockSignature.from_cbor
    else:
        obj = Objection.create(key, CID, member, block_hash, reason)
        from_cbor = Objection.from_cbor
    raw = encode(obj.to_cbor())
    assert from_cbor(decode(raw)) == obj
    assert obj.valid(CID, key.public)
    for mutant in _mutants(raw, data):
        try:
            again = from_cbor(decode(mutant))
        except DecodeError:
            continue
        assert encode(again.to_cbor()) == mutant
        if again.member in MEMBER_NAMES:
            assert not again.valid(CID, member_key(again.member).public)


# --- property: any field replaced by any CBOR value is refused by the error tree, never a crash ---

cbor_scalars = (st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20)
                | st.booleans() | st.none())
cbor_values = st.recursive(cbor_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)


def _replace_somewhere(value: Any, data: st.DataObject) -> Any:
    """``value`` with one element (at any depth of its arrays) replaced by an arbitrary value."""
    if isinstance(value, list) and value and data.draw(st.integers(0, 3)) > 0:
        i = data.draw(st.integers(0, len(value) - 1))
        return value[:i] + [_replace_somewhere(value[i], data)] + value[i + 1:]
    return data.draw(cbor_values)


@given(blocks(), st.sampled_from(["block", "tx body", "header", "evidence"]), st.data())
def test_property_structurally_mutated_objects_fail_with_a_remote_error(
        block: Block, target: str, data: st.DataObject) -> None:
    items = decode(block.raw)
    if target == "tx body" and block.txs:
        tx = block.txs[0]
        mutated_tx = encode([encode(_replace_somewhere(decode(tx.body), data)), tx.signature])
        items[1] = [mutated_tx] + items[1][1:]
    elif target == "header":
        items[0] = encode(_replace_somewhere(decode(items[0]), data))
    elif target == "evidence" and block.evidence:
        items[2] = [_replace_somewhere(items[2][0], data)] + items[2][1:]
    else:
        items = _replace_somewhere(items, data)
    mutant = encode(items)
    try:
        again = Block.decode(mutant)
    except (DecodeError, ValidationError):
        return
    assert again.raw == mutant
