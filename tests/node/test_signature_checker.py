"""The client-signature checker (peerdb/node/verify.py): checks started ahead for a whole
catch-up answer give the same verdicts as checking block by block, are used once, and never
vouch for other signature bytes under the same txid."""

from __future__ import annotations

from peerdb.core.model import OP_PUT, Op, Tx
from peerdb.node.verify import PREFETCH_CHUNK, TxSignatureChecker
from tests.helpers.consortium import GENESIS_MS, seeded_consortium

SC = seeded_consortium()


def txs(count: int, start: int = 0) -> list[Tx]:
    return [Tx.create(SC.client_key("firm-b"), SC.cid, "firm-b", start + i, GENESIS_MS + 60_000,
                      [Op(OP_PUT, "books", f"k{start + i}", b"v")]) for i in range(count)]


def mangled(t: Tx) -> Tx:
    return Tx.from_parts(t.body, bytes([t.signature[0] ^ 1]) + t.signature[1:])


def test_checks_started_ahead_give_the_verdicts_block_by_block() -> None:
    good = txs(2 * PREFETCH_CHUNK + 7)
    forged = [mangled(t) for t in txs(5, start=10_000)]
    batch = good[:100] + forged[:2] + good[100:] + forged[2:]
    checker = TxSignatureChecker(SC.cid, threads=2)
    try:
        checker.prefetch(batch)
        blocks = [batch[i:i + 37] for i in range(0, len(batch), 37)]
        verdicts = [ok for block in blocks for ok in checker.verify(block)]
        assert verdicts == [t in good for t in batch]
        assert checker.checked == len(batch)  # each checked once, ahead
        assert all(checker.known(t) for t in good) and not any(checker.known(t) for t in forged)
    finally:
        checker.close()


def test_a_check_started_ahead_does_not_vouch_for_other_signature_bytes() -> None:
    [t] = txs(1)
    checker = TxSignatureChecker(SC.cid, threads=2)
    try:
        checker.prefetch([t])
        assert checker.verify([mangled(t)]) == [False]  # same txid, other bytes: checked afresh
        assert checker.verify([t]) == [True]
    finally:
        checker.close()


def test_checks_started_ahead_and_not_used_are_dropped() -> None:
    batch = txs(3 * PREFETCH_CHUNK)
    checker = TxSignatureChecker(SC.cid, threads=2)
    try:
        checker.prefetch(batch)
        checker.drop_prefetched()
        assert checker.verify(batch[:10]) == [True] * 10
        assert checker.checked == 10
    finally:
        checker.close()


def test_without_a_pool_nothing_is_started_ahead() -> None:
    batch = txs(5)
    checker = TxSignatureChecker(SC.cid, threads=1)
    checker.prefetch(batch)
    assert checker.checked == 0
    assert checker.verify(batch) == [True] * 5 and checker.checked == 5
