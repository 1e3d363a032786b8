"""Admission (peerdb/node/mempool.py): what enters the pool, and what a client is told.

A transaction no block could ever include is refused at admission with the reason, never
answered "accepted" and then dropped by every proposer; and a duplicate is a duplicate only if
it is the same transaction, signature included (a txid covers the body, not the signature).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from peerdb.core.consortium import Params
from peerdb.core.errors import SignatureError
from peerdb.core.governance import propose_op
from peerdb.core.model import GOV_NAMESPACE, OP_PUT, Op, Tx
from peerdb.core.proposals import Proposal, SetParams
from peerdb.node.mempool import Mempool, NeverIncluded, SubmitResult
from peerdb.node.verify import TxSignatureChecker
from tests.helpers.consortium import GENESIS_MS, seeded_consortium

SC = seeded_consortium()
NOW = GENESIS_MS + 1000


def tx(ops: list[Op], nonce: int = 1, member: str = "firm-a") -> Tx:
    return Tx.create(SC.client_key(member), SC.cid, member, nonce, NOW + 60_000, ops)


def admit(pool: Mempool, raws: Sequence[bytes], *, on_chain: Iterable[bytes] = (),
          checker: TxSignatureChecker | None = None, params: Params | None = None) -> SubmitResult:
    chain = set(on_chain)
    consortium = SC.consortium if params is None else seeded_consortium(params=params).consortium
    verify = (checker or TxSignatureChecker(SC.cid, threads=1)).verify
    ((result, admitted),) = pool.admit([raws], consortium, NOW, lambda ids: chain & set(ids), verify)
    assert isinstance(result, SubmitResult)
    for t in admitted:
        pool.put(t)
    return result


def mangled(t: Tx) -> Tx:
    """The same body (so the same txid) with other signature bytes."""
    return Tx.from_parts(t.body, bytes([t.signature[0] ^ 1]) + t.signature[1:])


@pytest.mark.parametrize("op", [
    Op(OP_PUT, GOV_NAMESPACE, "books", b"not a request"),
    Op(OP_PUT, GOV_NAMESPACE, "propose", b"\x00 not a proposal"),
    Op(OP_PUT, GOV_NAMESPACE, "vote", b"\x00 not a vote"),
], ids=["other-key", "bad-proposal", "bad-vote"])
def test_a_put_into_gov_that_is_no_governance_request_is_refused_with_the_reason(op: Op) -> None:
    pool = Mempool()
    result = admit(pool, [tx([op]).raw])
    assert result.accepted == [] and len(pool) == 0
    ((index, error),) = result.rejected
    assert index == 0 and isinstance(error, NeverIncluded)
    assert GOV_NAMESPACE in str(error) or op.key in str(error)


def test_a_well_formed_governance_request_is_admitted() -> None:
    pool = Mempool()
    proposal = Proposal(SetParams((("heartbeat_ms", 500),)), "faster", 7)
    result = admit(pool, [tx([propose_op(proposal)]).raw])
    assert len(result.accepted) == 1 and result.rejected == []


def test_a_transaction_larger_than_any_block_is_refused_not_left_to_block_the_pool() -> None:
    params = Params(max_block_bytes=4096)
    big = Tx.create(SC.client_key("firm-a"), SC.cid, "firm-a", 1, NOW + 60_000,
                    [Op(OP_PUT, "books", "big", b"x" * 5000)])
    small = Tx.create(SC.client_key("firm-a"), SC.cid, "firm-a", 2, NOW + 60_000,
                      [Op(OP_PUT, "books", "small", b"x")])
    pool = Mempool()
    result = admit(pool, [big.raw, small.raw], params=params)
    assert result.accepted == [small.txid]
    ((index, error),) = result.rejected
    assert index == 0 and isinstance(error, NeverIncluded) and "max_block_bytes=4096" in str(error)


def test_a_pending_transaction_sent_again_byte_for_byte_is_a_duplicate() -> None:
    pool = Mempool()
    t = tx([Op(OP_PUT, "books", "k", b"v")])
    admit(pool, [t.raw])
    again = admit(pool, [t.raw])
    assert again.duplicates == [t.txid] and again.rejected == [] and again.accepted == []


def test_a_pending_transaction_replayed_with_a_mangled_signature_is_refused_not_a_duplicate() -> None:
    pool = Mempool()
    checker = TxSignatureChecker(SC.cid, threads=1)
    t = tx([Op(OP_PUT, "books", "k", b"v")])
    admit(pool, [t.raw], checker=checker)
    forged = mangled(t)
    assert forged.txid == t.txid
    result = admit(pool, [forged.raw], checker=checker)
    assert result.duplicates == [] and result.accepted == []
    ((index, error),) = result.rejected
    assert index == 0 and isinstance(error, SignatureError)
    assert pool.get(t.txid) is not None and pool.get(t.txid).raw == t.raw  # type: ignore[union-attr]


def test_an_included_transaction_replayed_with_a_mangled_signature_is_refused() -> None:
    t = tx([Op(OP_PUT, "books", "k", b"v")])
    honest = admit(Mempool(), [t.raw], on_chain=[t.txid])
    assert honest.duplicates == [t.txid]
    forged = admit(Mempool(), [mangled(t).raw], on_chain=[t.txid])
    assert forged.duplicates == [] and isinstance(forged.rejected[0][1], SignatureError)


def test_the_signature_cache_does_not_vouch_for_other_signature_bytes() -> None:
    checker = TxSignatureChecker(SC.cid, threads=1)
    t = tx([Op(OP_PUT, "books", "k", b"v")])
    assert checker.verify([t]) == [True] and checker.known(t)
    forged = mangled(t)
    assert not checker.known(forged)
    assert checker.verify([forged]) == [False]
