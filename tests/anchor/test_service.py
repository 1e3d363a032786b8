"""The anchoring service against an in-memory Bitcoin double (virtual time) and the regtest node."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from bitcoin.core import COutPoint, CScript, CTransaction, CTxIn, CTxOut

from peerdb.anchor.anchortx import ANCHOR_PAYLOAD_LEN, OP_RETURN, parse_tx, txid
from peerdb.anchor.errors import BitcoinUnavailable, FeeOverBudget
from peerdb.anchor.hashes import from_display, sha256d, to_display
from peerdb.anchor.planner import AnchorItem, AnchorPolicy, BatchStatus
from peerdb.anchor.proof import AnchorProof, verify_anchor_proof
from peerdb.anchor.regtest import RegtestNode
from peerdb.anchor.rpc import AnchorMaterial, PublishedAnchor, TxStatus
from peerdb.anchor.service import AnchorService, AnchorServiceConfig
from tests.helpers.bitcoin_node import bitcoin_merkle_root, build_txoutproof


def items(lo: int, hi: int, salt: bytes = b"") -> list[AnchorItem]:
    return [AnchorItem(h, hashlib.sha256(salt + b"block%d" % h).digest()) for h in range(lo, hi + 1)]


class Host:
    """Stands in for the node daemon: hands out block hashes, collects proofs."""

    def __init__(self) -> None:
        self.waiting: list[AnchorItem] = []
        self.proofs: dict[bytes, AnchorProof] = {}

    def give(self, new: Sequence[AnchorItem]) -> None:
        self.waiting.extend(new)

    async def new_blocks(self) -> Sequence[AnchorItem]:
        out, self.waiting = self.waiting, []
        return out

    async def on_proof(self, proof: AnchorProof) -> None:
        if proof.block_hash in self.proofs:
            raise AssertionError("a proof was delivered twice")
        self.proofs[proof.block_hash] = proof


async def until(service: AnchorService, predicate: Callable[[], bool], what: str, rounds: int = 600) -> None:
    """Let the service run rounds until ``predicate`` holds (bounded; no sleeping)."""
    for _ in range(rounds):
        if predicate():
            return
        await service.wait_rounds(1)
    raise AssertionError(f"{what}: not reached after {rounds} rounds; status: {service.status().lines()}")


def batches(service: AnchorService) -> tuple[BatchStatus, ...]:
    return service.status().batches


# -- an in-memory Bitcoin ----------------------------------------------------------------------

class FakeBitcoin:
    """Enough of a Bitcoin node for the service: mempool, blocks, reorgs, outages, fees."""

    def __init__(self) -> None:
        self.down = False
        self.fee_sat = 300
        self.mempool: dict[str, bytes] = {}
        self.blocks: list[tuple[bytes, list[bytes], dict[str, bytes]]] = []
        self.published: list[str] = []
        self.abandoned: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise BitcoinUnavailable("bitcoin node fake:8332: getblockcount: [Errno 111] Connection refused")

    def publish_anchor(self, payload: bytes, *, max_fee_sat: int, fee_rate_sat_vb: Decimal | None = None) -> PublishedAnchor:
        self._check()
        if self.fee_sat > max_fee_sat:
            raise FeeOverBudget(self.fee_sat, max_fee_sat)
        script = CScript(bytes([OP_RETURN, ANCHOR_PAYLOAD_LEN]) + payload)
        prevout = COutPoint(sha256d(b"coin%d" % len(self.published)), 0)
        raw: bytes = CTransaction([CTxIn(prevout, CScript(b"\x51"))], [CTxOut(0, script)]).serialize()
        tx_id = to_display(txid(parse_tx(raw)))
        self.mempool[tx_id] = raw
        self.published.append(tx_id)
        return PublishedAnchor(tx_id, raw, self.fee_sat)

    def mine(self, n: int = 1) -> None:
        for _ in range(n):
            txs = {to_display(sha256d(b"coinbase%d" % len(self.blocks))): b""} | self.mempool
            txids = [from_display(t) for t in txs]
            prev = sha256d(self.blocks[-1][0]) if self.blocks else b"\x00" * 32
            header = struct.pack("<i32s32sIII", 1, prev, bitcoin_merkle_root(txids), len(self.blocks), 0x207FFFFF, 0)
            self.blocks.append((header, txids, txs))
            self.mempool = {}

    def reorg_out(self, n: int) -> None:
        """Drop the top ``n`` blocks; their transactions are conflicted, not returned to the mempool."""
        del self.blocks[-n:]

    def _find(self, tx_id: str) -> int | None:
        return next((i for i, (_, _, txs) in enumerate(self.blocks) if tx_id in txs), None)

    def tx_status(self, tx_id: str) -> TxStatus:
        self._check()
        i = self._find(tx_id)
        if i is not None:
            return TxStatus(tx_id, len(self.blocks) - i, to_display(sha256d(self.blocks[i][0])), False)
        return TxStatus(tx_id, 0, None, tx_id in self.mempool)

    def abandon_transaction(self, tx_id: str) -> None:
        self._check()
        self.abandoned.append(tx_id)

    def anchor_material(self, tx_id: str, depth: int) -> AnchorMaterial:
        self._check()
        i = self._find(tx_id)
        if i is None or len(self.blocks) - i < depth:
            raise AssertionError("service asked for material of an unconfirmed tx")
        header, txids, txs = self.blocks[i]
        proof = build_txoutproof(header, txids, [t == from_display(tx_id) for t in txids])
        headers = tuple(b[0] for b in self.blocks[i:i + depth])
        return AnchorMaterial(tx_id, txs[tx_id], proof, headers, to_display(sha256d(header)), i)


async def run_inline(fn: Callable[[], Any]) -> Any:
    return fn()


def fake_service(bitcoin: FakeBitcoin, host: Host, **policy: Any) -> AnchorService:
    settings: dict[str, Any] = dict(interval_ms=60_000, confirmations=2, max_fee_sat=1000,
                                    retry_backoff_ms=1000, max_retry_backoff_ms=8000, drop_grace_ms=5000)
    settings.update(policy)
    config = AnchorServiceConfig(AnchorPolicy(**settings), poll_interval_s=1.0)
    return AnchorService(bitcoin, host, config, run_sync=run_inline)


def check_proofs(host: Host, wanted: Sequence[AnchorItem], depth: int) -> set[str]:
    """All wanted blocks have proofs that verify offline; returns the txids they name."""
    assert set(host.proofs) == {i.block_hash for i in wanted}
    txids = set()
    for item in wanted:
        proof = AnchorProof.decode(host.proofs[item.block_hash].encode())
        verified = verify_anchor_proof(proof, item.block_hash, check_pow=False, min_depth=depth)
        txids.add(verified.txid_hex)
    return txids


async def test_anchors_batch_and_delivers_verified_proofs(autojump_clock: trio.testing.MockClock) -> None:
    bitcoin, host = FakeBitcoin(), Host()
    service = fake_service(bitcoin, host)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        host.give(items(1, 5))
        await until(service, lambda: bool(bitcoin.mempool), "first anchor published")
        host.give(items(6, 9))  # arrive while the first is pending: wait for the next interval
        await service.wait_rounds(3)
        assert len(bitcoin.published) == 1
        bitcoin.mine(2)
        await until(service, lambda: len(host.proofs) == 5, "proofs of the first batch")
        await until(service, lambda: len(bitcoin.published) == 2, "second anchor after the interval")
        bitcoin.mine(2)
        await until(service, lambda: len(host.proofs) == 9, "proofs of the second batch")
        nursery.cancel_scope.cancel()
    assert check_proofs(host, items(1, 9), 2) == set(bitcoin.published)
    assert service.status().state == "idle"


async def test_stopped_node_is_visible_and_recovers(autojump_clock: trio.testing.MockClock) -> None:
    bitcoin, host = FakeBitcoin(), Host()
    service = fake_service(bitcoin, host, interval_ms=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        host.give(items(1, 2))
        await until(service, lambda: bool(bitcoin.published), "published")
        bitcoin.down = True
        host.give(items(3, 3))
        await until(service, lambda: service.status().state == "failed", "failed state")
        status = service.status()
        pending, failed = status.batches
        assert pending.state.value == "pending"
        assert pending.reason is not None and pending.reason.startswith("cannot check anchor tx: bitcoin node")
        assert failed.reason is not None and "Connection refused" in failed.reason
        assert any("anchor for height 3 failed" in line and "retry in" in line for line in status.lines())
        await service.wait_rounds(5)  # rounds keep running while the node is down
        bitcoin.down = False
        await until(service, lambda: len(bitcoin.published) == 2, "re-published after backoff")
        bitcoin.mine(2)
        await until(service, lambda: len(host.proofs) == 3, "all proofs")
        nursery.cancel_scope.cancel()
    check_proofs(host, items(1, 3), 2)


async def test_fee_over_budget_is_a_failed_state(autojump_clock: trio.testing.MockClock) -> None:
    bitcoin, host = FakeBitcoin(), Host()
    bitcoin.fee_sat = 5000
    service = fake_service(bitcoin, host, max_fee_sat=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        host.give(items(1, 1))
        await until(service, lambda: service.status().state == "failed", "failed")
        assert service.status().reason == "fee 5000 sat over budget 1000"
        assert bitcoin.published == []
        bitcoin.fee_sat = 800  # the fee market calms down
        await until(service, lambda: len(bitcoin.published) == 1, "published within budget")
        nursery.cancel_scope.cancel()


async def test_reorg_dropping_the_tx_re_anchors(autojump_clock: trio.testing.MockClock) -> None:
    bitcoin, host = FakeBitcoin(), Host()
    service = fake_service(bitcoin, host, confirmations=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        host.give(items(1, 4))
        await until(service, lambda: bool(bitcoin.published), "published")
        bitcoin.mine(2)
        await until(service, lambda: batches(service)[0].confirmations == 2, "two confirmations")
        bitcoin.reorg_out(2)
        await until(service, lambda: len(bitcoin.published) == 2, "re-anchored")
        assert bitcoin.abandoned == bitcoin.published[:1]
        assert batches(service)[0].attempts == 2
        bitcoin.mine(3)
        await until(service, lambda: len(host.proofs) == 4, "proofs")
        nursery.cancel_scope.cancel()
    assert check_proofs(host, items(1, 4), 3) == {bitcoin.published[1]}


# -- the real regtest node ----------------------------------------------------------------------

def real_service(node: RegtestNode, host: Host, **policy: Any) -> AnchorService:
    settings: dict[str, Any] = dict(interval_ms=0, confirmations=3, max_fee_sat=100_000,
                                    retry_backoff_ms=100, max_retry_backoff_ms=400, drop_grace_ms=300)
    settings.update(policy)
    config = AnchorServiceConfig(AnchorPolicy(**settings), poll_interval_s=0.05)
    return AnchorService(node.rpc(timeout=5.0), host, config)


def tracked_txid(service: AnchorService) -> str | None:
    live = [b for b in batches(service) if b.txid is not None]
    return live[0].txid if live else None


@pytest.mark.slow
@pytest.mark.bitcoin
async def test_real_anchor_confirms_and_verifies_offline_and_online(regtest: RegtestNode) -> None:
    host = Host()
    service = real_service(regtest, host)
    wanted = items(1, 7, b"real")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            host.give(wanted)
            await until(service, lambda: tracked_txid(service) is not None, "published")
            await trio.to_thread.run_sync(regtest.mine, 3)
            await until(service, lambda: len(host.proofs) == 7, "proofs")
            nursery.cancel_scope.cancel()
    (tx_id,) = check_proofs(host, wanted, 3)
    rpc = regtest.rpc()
    for item in wanted:
        verified = verify_anchor_proof(host.proofs[item.block_hash], item.block_hash, check_pow=False)
        rpc.check_anchor_in_best_chain(verified)
    assert rpc.tx_status(tx_id).confirmations == 3
    assert rpc.verify_tx_out_proof(host.proofs[wanted[0].block_hash].txoutproof) == [tx_id]


def conflict_in_new_block(node: RegtestNode, tx_id: str) -> str:
    """Mine a block holding a wallet double-spend of ``tx_id``'s inputs, so the tx can never confirm."""
    rpc = node.rpc()
    tx = rpc.call("decoderawtransaction", rpc.call("getrawtransaction", tx_id))
    inputs = [{"txid": i["txid"], "vout": i["vout"]} for i in tx["vin"]]
    total = sum(Decimal(rpc.call("gettxout", i["txid"], i["vout"], False)["value"]) for i in inputs)
    spend = rpc.call("createrawtransaction", inputs, [{node.mining_address: str(total - Decimal("0.001"))}])
    signed = rpc.call("signrawtransactionwithwallet", spend)
    assert signed["complete"]
    block_hash: str = rpc.call("generateblock", node.mining_address, [signed["hex"]])["hash"]
    return block_hash


@pytest.mark.slow
@pytest.mark.bitcoin
async def test_real_reorg_dropping_the_anchor_re_anchors(regtest: RegtestNode) -> None:
    host = Host()
    service = real_service(regtest, host)
    wanted = items(1, 3, b"reorg")
    rpc = regtest.rpc()
    with trio.fail_after(60):
        await trio.to_thread.run_sync(regtest.mine, 1)  # confirm every wallet coin first
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            host.give(wanted)
            await until(service, lambda: tracked_txid(service) is not None, "published")
            first = tracked_txid(service)
            assert first is not None
            (block,) = await trio.to_thread.run_sync(regtest.mine, 1)
            await until(service, lambda: batches(service)[0].confirmations == 1, "one confirmation")
            # Reorg: the block goes, the anchor returns to the mempool, and a conflicting spend
            # mined in the replacement block evicts it for good.
            rpc.call("invalidateblock", block)
            assert rpc.tx_status(first).in_mempool
            await trio.to_thread.run_sync(conflict_in_new_block, regtest, first)
            assert rpc.tx_status(first).dropped
            await until(service, lambda: tracked_txid(service) not in (None, first), "re-anchored")
            assert batches(service)[0].attempts == 2
            await trio.to_thread.run_sync(regtest.mine, 3)
            await until(service, lambda: len(host.proofs) == 3, "proofs")
            nursery.cancel_scope.cancel()
    (second,) = check_proofs(host, wanted, 3)
    assert second != first
    assert rpc.tx_status(second).confirmations == 3


@pytest.mark.slow
@pytest.mark.bitcoin
async def test_real_stopped_node_is_visible_and_recovers(tmp_path: Path) -> None:
    node = RegtestNode(tmp_path / "bitcoin")
    host = Host()
    try:
        with trio.fail_after(90):
            await trio.to_thread.run_sync(node.start)
            service = real_service(node, host, confirmations=1)
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                host.give(items(1, 2, b"stop"))
                await until(service, lambda: tracked_txid(service) is not None, "published")
                await trio.to_thread.run_sync(node.stop)
                host.give(items(3, 3, b"stop"))
                await until(service, lambda: service.status().state == "failed", "failed while stopped")
                pending, failed = service.status().batches
                assert pending.state.value == "pending" and pending.reason is not None
                assert "cannot check anchor tx: bitcoin node 127.0.0.1" in pending.reason
                assert failed.reason is not None and failed.reason.startswith("cannot publish anchor: bitcoin node")
                assert not node.running
                await service.wait_rounds(3)  # still alive and polling
                await trio.to_thread.run_sync(node.start)
                await until(service, lambda: all(b.txid for b in batches(service)), "re-published")
                await trio.to_thread.run_sync(node.mine, 1)
                await until(service, lambda: len(host.proofs) == 3, "proofs")
                nursery.cancel_scope.cancel()
        check_proofs(host, items(1, 3, b"stop"), 1)
    finally:
        await trio.to_thread.run_sync(node.stop)
