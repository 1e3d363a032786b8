"""Turns, header rules, proposer signatures, evidence and whole-block checks."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.consortium import Params
from peerdb.core.errors import DecodeError, ReplayError, SignatureError, ValidationError
from peerdb.core.limits import MAX_ROUND
from peerdb.core.model import Block, BlockSignature, Header, Objection, body_header, consortium_id, genesis_header
from peerdb.core.state import MemoryState
from peerdb.core.validate import check_block, check_evidence, check_header, check_proposer_signature, proposer_for, round_at

from tests.helpers.core import (
    CID,
    CONSORTIUM,
    GENESIS,
    MEMBER_NAMES,
    assert_names,
    double_sign_evidence,
    make_block,
    make_consortium,
    make_tx,
    member_key,
    put,
    sign_block,
)

PARAMS = CONSORTIUM.params
NOW = GENESIS.time_ms + 10_000


# --- the proposer schedule -----------------------------------------------------------------------

def test_schedule_examples() -> None:
    m = MEMBER_NAMES
    assert [proposer_for(m, h, 0) for h in range(1, 6)] == ["firm-a", "firm-b", "firm-c", "firm-d", "firm-a"]
    assert [proposer_for(m, 1, r) for r in range(5)] == ["firm-a", "firm-b", "firm-c", "firm-d", "firm-a"]
    assert proposer_for(m, 3, 2) == "firm-a"


def test_schedule_needs_members() -> None:
    with pytest.raises(ValidationError, match="no members"):
        proposer_for((), 1, 0)


member_lists = st.lists(st.from_regex(r"\A[a-z][a-z0-9-]{0,8}\Z"), min_size=1, max_size=12, unique=True)
heights = st.integers(1, 2**40)
rounds = st.integers(0, MAX_ROUND)


@given(member_lists, heights, rounds)
def test_property_schedule_is_a_pure_function(members: list[str], height: int, round_: int) -> None:
    frozen = tuple(members)
    first = proposer_for(members, height, round_)
    assert proposer_for(frozen, height, round_) == first
    assert proposer_for(list(members), height, round_) == first
    assert members == list(frozen)  # the argument is not modified
    assert first in members


@given(member_lists, heights, rounds)
def test_property_every_member_gets_one_of_every_n_consecutive_heights_and_rounds(
        members: list[str], height: int, round_: int) -> None:
    n = len(members)
    assert sorted(proposer_for(members, height + i, round_) for i in range(n)) == sorted(members)
    assert sorted(proposer_for(members, height, round_ + i) for i in range(n)) == sorted(members)
    # a timed-out round hands the turn to whoever has the next height's first round
    assert proposer_for(members, height, round_ + 1) == proposer_for(members, height + 1, round_)


@pytest.mark.parametrize("elapsed, expected", [(-5, 0), (0, 0), (2999, 0), (3000, 1), (9001, 3)])
def test_round_at(elapsed: int, expected: int) -> None:
    assert round_at(elapsed, 3000) == expected


def test_round_at_is_capped() -> None:
    assert round_at(10**18, 1) == MAX_ROUND


# --- header rules --------------------------------------------------------------------------------

def header(round_: int = 0, *, height: int | None = None, prev: bytes | None = None, proposer: str | None = None,
           time_ms: int | None = None, tx_count: int = 0) -> Header:
    h = GENESIS.height + 1 if height is None else height
    return Header(h, round_, GENESIS.hash if prev is None else prev,
                  proposer or proposer_for(MEMBER_NAMES, h, round_),
                  GENESIS.time_ms + round_ * PARAMS.turn_timeout_ms + 1 if time_ms is None else time_ms,
                  GENESIS.tx_root, tx_count, GENESIS.state_root, GENESIS.evidence_root)


def test_good_headers_pass() -> None:
    check_header(header(), GENESIS, CONSORTIUM, NOW)
    check_header(header(2), GENESIS, CONSORTIUM, NOW)
    # the earliest time a round may start, allowing for clock skew
    check_header(header(2, time_ms=GENESIS.time_ms + 2 * PARAMS.turn_timeout_ms - PARAMS.clock_skew_ms),
                 GENESIS, CONSORTIUM, NOW)
    check_header(header(time_ms=NOW + PARAMS.clock_skew_ms), GENESIS, CONSORTIUM, NOW)


@pytest.mark.parametrize("bad, error, fragments", [
    (lambda: header(height=2), ValidationError, ("height 2", "not parent height 0 + 1")),
    (lambda: header(prev=bytes(32)), ValidationError, ("prev does not match",)),
    (lambda: header(proposer="firm-b"), ValidationError, ("proposed by firm-b", "turn belongs to firm-a")),
    (lambda: header(1, proposer="firm-a"), ValidationError, ("round 1", "turn belongs to firm-b")),
    (lambda: header(time_ms=GENESIS.time_ms - 1), ValidationError, ("time", "before its round could start")),
    (lambda: header(3, time_ms=GENESIS.time_ms + 3 * 3000 - 5000 - 1), ValidationError,
     ("round 3", "before its round could start")),
    (lambda: header(time_ms=NOW + 5001), ValidationError, ("more than clock_skew_ms in the future",)),
    (lambda: header(tx_count=PARAMS.max_block_txs + 1), ValidationError, ("more than max_block_txs",)),
])
def test_bad_headers(bad: object, error: type[Exception], fragments: tuple[str, ...]) -> None:
    with pytest.raises(error) as info:
        check_header(bad(), GENESIS, CONSORTIUM, NOW)  # type: ignore[operator]
    assert type(info.value) is error
    assert_names(info.value, *fragments)


# --- proposer signatures and evidence ------------------------------------------------------------

def test_proposer_signature() -> None:
    block, _ = make_block(GENESIS)
    check_proposer_signature(block.header, sign_block("firm-a", block.hash), CONSORTIUM, CID)


@pytest.mark.parametrize("make_sig, fragments", [
    (lambda b: sign_block("firm-b", b.hash), ("not signed by its proposer",)),
    (lambda b: sign_block("firm-a", bytes(32)), ("not signed by its proposer",)),
    (lambda b: BlockSignature(b.hash, "firm-a", member_key("firm-b").sign("block", CID, b.hash)),
     ("proposer signature of firm-a does not verify",)),
    (lambda b: sign_block("firm-a", b.hash, cid=bytes(32)), ("does not verify",)),
    # a signature made for another domain (a transaction, an objection) is useless as a block signature
    (lambda b: BlockSignature(b.hash, "firm-a", member_key("firm-a").sign("tx", CID, b.hash)), ("does not verify",)),
    (lambda b: BlockSignature(b.hash, "firm-a", Objection.create(member_key("firm-a"), CID, "firm-a", b.hash, "").signature),
     ("does not verify",)),
])
def test_bad_proposer_signatures(make_sig: object, fragments: tuple[str, ...]) -> None:
    block, _ = make_block(GENESIS)
    with pytest.raises(SignatureError) as info:
        check_proposer_signature(block.header, make_sig(block), CONSORTIUM, CID)  # type: ignore[operator]
    assert_names(info.value, "block at height 1", *fragments)


def test_proposer_not_in_the_consortium() -> None:
    block, _ = make_block(GENESIS, proposer="firm-x")
    with pytest.raises(SignatureError) as info:
        check_proposer_signature(block.header, sign_block("firm-x", block.hash), CONSORTIUM, CID)
    assert_names(info.value, "firm-x", "does not verify")


def test_evidence_checks() -> None:
    check_evidence(double_sign_evidence("firm-b"), CONSORTIUM, CID)
    with pytest.raises(ValidationError) as info:
        check_evidence(double_sign_evidence("firm-x"), CONSORTIUM, CID)
    assert_names(info.value, "evidence", "firm-x is not a member")
    with pytest.raises(SignatureError):
        check_evidence(double_sign_evidence("firm-b", cid=bytes(32)), CONSORTIUM, CID)


# --- whole blocks --------------------------------------------------------------------------------

def test_good_block_returns_its_effects_and_changes_nothing() -> None:
    state = MemoryState()
    txs = [make_tx("firm-a", 1), make_tx("firm-b", 2)]
    block, expected = make_block(GENESIS, txs, evidence=[double_sign_evidence("firm-d")])
    effects = check_block(block, GENESIS, GENESIS.state_root, state, CONSORTIUM, CID, NOW)
    assert effects == expected
    assert state.values == {} and state.seen == set()


def test_block_bigger_than_the_consortium_allows() -> None:
    small = make_consortium(params=Params(max_block_bytes=1024))
    cid, genesis = consortium_id(small), genesis_header(small)
    tx = make_tx(ops=[put("books", "k", b"x" * 2000)], cid=cid)
    block, _ = make_block(genesis, [tx], consortium=small)
    with pytest.raises(ValidationError) as info:
        check_block(block, genesis, genesis.state_root, MemoryState(), small, cid, NOW)
    assert not isinstance(info.value, DecodeError)  # well-formed, but over the consortium's rule
    assert_names(info.value, "block at height 1", "more than max_block_bytes")


def test_evidence_in_blocks() -> None:
    ev = double_sign_evidence("firm-d")
    twice, _ = make_block(GENESIS, evidence=[ev, ev])
    with pytest.raises(ValidationError) as info:
        check_block(twice, GENESIS, GENESIS.state_root, MemoryState(), CONSORTIUM, CID, NOW)
    assert_names(info.value, "evidence against firm-d is already recorded")
    once, _ = make_block(GENESIS, evidence=[ev])
    with pytest.raises(ValidationError):
        check_block(once, GENESIS, GENESIS.state_root, MemoryState(), CONSORTIUM, CID, NOW,
                    evidence_known=lambda i: i == ev.id)
    forged, _ = make_block(GENESIS, evidence=[double_sign_evidence("firm-d", cid=bytes(32))])
    with pytest.raises(SignatureError):
        check_block(forged, GENESIS, GENESIS.state_root, MemoryState(), CONSORTIUM, CID, NOW)


def test_state_root_must_match_the_effects() -> None:
    block, _ = make_block(GENESIS, [make_tx()], state_root=bytes(32))
    with pytest.raises(ValidationError) as info:
        check_block(block, GENESIS, GENESIS.state_root, MemoryState(), CONSORTIUM, CID, NOW)
    assert_names(info.value, "block at height 1", "state_root does not match")


def test_bad_transaction_fails_the_block_and_changes_nothing() -> None:
    state = MemoryState()
    first, _ = make_block(GENESIS, [make_tx("firm-a", 1)])
    state.apply(check_block(first, GENESIS, GENESIS.state_root, state, CONSORTIUM, CID, NOW))
    snapshot = (copy.deepcopy(state.values), set(state.seen))
    parent = first.header
    txs = (make_tx("firm-b", 3), make_tx("firm-a", 1))  # the second one is a replay
    h = body_header(2, 0, parent.hash, "firm-b", parent.time_ms + 1, txs, bytes(32))
    with pytest.raises(ReplayError, match="already included"):
        check_block(Block(h, txs), parent, parent.state_root, state, CONSORTIUM, CID, NOW)
    assert (state.values, state.seen) == snapshot
