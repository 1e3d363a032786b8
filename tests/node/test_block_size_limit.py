"""A proposer's block is never over the size its peers accept, even with evidence in it.

The proposer fills a block from its pool up to ``max_block_bytes``; peers check the encoded
block against that parameter and refuse a block over it, so a proposer that under-counts (for
instance by forgetting the evidence it carries) makes a block nobody signs, at every turn.
"""

from __future__ import annotations

from pathlib import Path

from peerdb.core.blockbody import evidence_size
from peerdb.core.consortium import Params
from peerdb.core.merkle import merkle_root
from peerdb.core.model import OP_PUT, Block, BlockSignature, Evidence, Header, Op, Tx
from tests.helpers.engine_net import NAMES, Net, run_until

LIMIT = 64 * 1024
PARAMS = Params(heartbeat_ms=200, turn_timeout_ms=1000, clock_skew_ms=1000, max_block_bytes=LIMIT)


def double_sign(net: Net, member: str, height: int) -> Evidence:
    def header(round_: int) -> Header:
        empty = merkle_root([])
        return Header(height, round_, bytes(32), member, 1000 + height, empty, 0, empty, empty)
    a, b = header(0), header(1)
    key = net.keys[member]
    return Evidence.from_signatures(member, a, BlockSignature.create(key, net.cid, member, a.hash).signature,
                                    b, BlockSignature.create(key, net.cid, member, b.hash).signature)


def test_a_full_block_with_pending_evidence_stays_within_max_block_bytes(tmp_path: Path) -> None:
    net = Net(tmp_path, mempool_max=1000, params=PARAMS)
    try:
        a = net.engines["firm-a"]
        # 399 transactions of 200-byte values and 8 evidence items against firm-d: together well
        # over 64 KiB, so the block must stop short, counting the evidence too.
        txs = [Tx.create(net.clients["firm-a"], net.cid, "firm-a", i, net.now + 600_000,
                         [Op(OP_PUT, "ns", f"key-{i:04d}", bytes([i % 256]) * 200)]) for i in range(399)]
        result = a.submit([t.raw for t in txs], None, net.now)
        assert len(result.accepted) == 399
        evidence = [double_sign(net, "firm-d", h) for h in range(1, 9)]
        for ev in evidence:
            a._accept_evidence(ev, None, net.now)
        assert len(a.evidence) == 8 and sum(evidence_size(e) for e in evidence) > 3000
        net.deliver()  # the pool and the evidence reach everyone: whoever proposes next carries both

        def blocks() -> list[Block]:
            return [b for h in a.tree.headers() if h.height > 0 and (b := a.store.block(h.hash)) is not None]
        run_until(net, lambda: any(b.evidence for b in blocks()))
        first = next(b for b in blocks() if b.evidence)
        assert len(first.evidence) == 8
        assert len(first.raw) <= LIMIT
        # Every member accepted and signed it: it reaches the majority and then everyone's chain.
        run_until(net, lambda: a.heads().majority >= first.height)
        for name in NAMES:
            assert net.engines[name].tree.on_best_chain(first.hash)
        # Nothing is lost: every transaction lands in a block of at most the limit.
        run_until(net, lambda: all(net.stores["firm-a"].tx_location(t.txid) is not None for t in txs))
        assert all(len(b.raw) <= LIMIT for b in blocks())
    finally:
        net.close()
