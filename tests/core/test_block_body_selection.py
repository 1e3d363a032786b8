"""Block-body selection: the proposer counts the bytes its block will encode, exactly.

Peers refuse a block over ``max_block_bytes`` or ``max_block_txs``, so a proposer that misjudges
the size builds a block nobody signs. These tests build the block the selection describes and
compare its real encoding with the selection's count, at random sizes and at the boundary.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.blockbody import Admit, block_size, header_size, header_template, select_body
from peerdb.core.consortium import Params
from peerdb.core.keys import SigningKey
from peerdb.core.limits import MAX_EVIDENCE_PER_BLOCK
from peerdb.core.merkle import merkle_root
from peerdb.core.model import OP_PUT, Block, BlockSignature, Evidence, Header, Op, Tx, body_header

CID = bytes(range(32))
CLIENT = SigningKey(b"\x01" * 32)
MEMBER = SigningKey(b"\x02" * 32)


def tx(nonce: int, value_len: int) -> Tx:
    return Tx.create(CLIENT, CID, "firm-a", nonce, 10**12, [Op(OP_PUT, "ns", f"k{nonce}", b"v" * value_len)])


def evidence(height: int) -> Evidence:
    def header(round_: int) -> Header:
        empty = merkle_root([])
        return Header(height, round_, bytes(32), "firm-d", 1000 + height, empty, 0, empty, empty)
    def sign(h: Header) -> bytes:
        return BlockSignature.create(MEMBER, CID, "firm-d", h.hash).signature
    a, b = header(0), header(1)
    return Evidence.from_signatures("firm-d", a, sign(a), b, sign(b))


def build(template: Header, txs: tuple[Tx, ...], evs: tuple[Evidence, ...]) -> Block:
    header = body_header(template.height, template.round, template.prev, template.proposer, template.time_ms,
                         txs, template.state_root, evs)
    return Block(header, txs, evs)


TEMPLATE = header_template(7, 0, bytes(32), "firm-a", 123_456)
EVIDENCE = [evidence(h) for h in range(1, MAX_EVIDENCE_PER_BLOCK + 5)]


@given(sizes=st.lists(st.integers(0, 3000), max_size=60), n_evidence=st.integers(0, 10),
       max_bytes=st.integers(1024, 40_000), max_txs=st.integers(1, 80))
def test_the_counted_size_is_the_encoded_size_and_within_the_limits(
        sizes: list[int], n_evidence: int, max_bytes: int, max_txs: int) -> None:
    candidates = [tx(i, n) for i, n in enumerate(sizes)]
    params = Params(max_block_bytes=max_bytes, max_block_txs=max_txs)
    body = select_body(TEMPLATE, params, candidates, EVIDENCE[:n_evidence], lambda _tx: Admit.TAKE)
    block = build(TEMPLATE, body.txs, body.evidence)
    assert body.size == len(block.raw)
    assert len(block.raw) <= max_bytes and len(body.txs) <= max_txs
    taken = len(body.txs)
    assert body.txs == tuple(candidates[:taken])  # pool order, stopping at the first that does not fit
    if taken < len(candidates) and taken < max_txs:
        bigger = build(TEMPLATE, tuple(candidates[:taken + 1]), body.evidence)
        assert len(bigger.raw) > max_bytes


def test_evidence_is_chosen_first_and_bounded() -> None:
    params = Params(max_block_bytes=1024 * 1024)
    body = select_body(TEMPLATE, params, [tx(1, 10)], EVIDENCE, lambda _tx: Admit.TAKE)
    assert len(body.evidence) == MAX_EVIDENCE_PER_BLOCK
    assert [e.id for e in body.evidence] == sorted(e.id for e in EVIDENCE)[:MAX_EVIDENCE_PER_BLOCK]
    assert len(body.txs) == 1 and body.size == len(build(TEMPLATE, body.txs, body.evidence).raw)


def test_skipped_and_dropped_candidates_are_not_counted() -> None:
    candidates = [tx(i, 100) for i in range(6)]
    verdicts = {candidates[1].txid: Admit.SKIP, candidates[3].txid: Admit.DROP}
    offered: list[bytes] = []

    def admit(t: Tx) -> Admit:
        offered.append(t.txid)
        return verdicts.get(t.txid, Admit.TAKE)
    body = select_body(TEMPLATE, Params(), candidates, [], admit)
    assert [t.txid for t in body.txs] == [candidates[i].txid for i in (0, 2, 4, 5)]
    assert body.dropped == (candidates[3].txid,)
    assert offered == [t.txid for t in candidates]
    assert body.size == len(build(TEMPLATE, body.txs, ()).raw)


def test_a_candidate_that_does_not_fit_is_never_offered() -> None:
    """A stateful check (a block run applying the transaction) must stay in step with the choice."""
    candidates = [tx(i, 2000) for i in range(10)]
    offered: list[Tx] = []

    def admit(t: Tx) -> Admit:
        offered.append(t)
        return Admit.TAKE
    body = select_body(TEMPLATE, Params(max_block_bytes=5000), candidates, [], admit)
    assert offered == list(body.txs) and 0 < len(body.txs) < 10


def test_the_header_size_follows_its_transaction_count() -> None:
    for count in (0, 23, 24, 255, 256, 20_000):
        real = Header(TEMPLATE.height, TEMPLATE.round, TEMPLATE.prev, TEMPLATE.proposer, TEMPLATE.time_ms,
                      TEMPLATE.tx_root, count, TEMPLATE.state_root, TEMPLATE.evidence_root)
        assert header_size(TEMPLATE, count) == len(real.raw)
    assert block_size(100, [], []) == len(build(TEMPLATE, (), ()).raw) - len(TEMPLATE.raw) + 100
