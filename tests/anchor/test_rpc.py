"""The Bitcoin RPC client: publishing, fees, statuses, and errors that say what went wrong."""

from __future__ import annotations

from decimal import Decimal

import pytest

from peerdb.anchor.anchortx import ANCHOR_TAG, anchor_payload, anchored_roots, parse_tx
from peerdb.anchor.errors import BitcoinRPCError, BitcoinUnavailable, FeeOverBudget
from peerdb.anchor.regtest import RegtestNode, free_port
from peerdb.anchor.rpc import BitcoinRPC, sats
from peerdb.core.errors import ConfigError, DecodeError

ROOT = bytes(range(32))


def test_url_must_be_plain_http() -> None:
    with pytest.raises(ConfigError, match="bitcoin rpc url"):
        BitcoinRPC("https://u:p@127.0.0.1:8332")


def test_unreachable_node_is_unavailable_and_the_password_stays_secret() -> None:
    rpc = BitcoinRPC(f"http://user:s3cret@127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(BitcoinUnavailable, match=r"bitcoin node 127\.0\.0\.1:\d+: getblockcount: .*refused") as info:
        rpc.get_block_count()
    assert "s3cret" not in str(info.value)


def test_amounts_convert_to_exact_satoshis() -> None:
    assert sats(Decimal("0.00002350"), "fee") == 2350
    assert sats(Decimal("21000000"), "fee") == 21_000_000 * 100_000_000
    with pytest.raises(DecodeError, match="fee: .* not a whole number of satoshis"):
        sats(Decimal("0.000000001"), "fee")
    with pytest.raises(DecodeError, match="fee: expected an amount"):
        sats("1", "fee")


@pytest.mark.slow
@pytest.mark.bitcoin
def test_wrong_password_is_unavailable_with_a_reason(regtest: RegtestNode) -> None:
    rpc = BitcoinRPC(f"http://{regtest.rpc_user}:wrong@127.0.0.1:{regtest.rpc_port}", timeout=5)
    with pytest.raises(BitcoinUnavailable, match="wrong credentials"):
        rpc.get_block_count()


@pytest.mark.slow
@pytest.mark.bitcoin
def test_publish_at_a_fixed_fee_rate(regtest: RegtestNode) -> None:
    rpc = regtest.rpc()
    published = rpc.publish_anchor(anchor_payload(ROOT), max_fee_sat=100_000, fee_rate_sat_vb=Decimal(7))
    tx = parse_tx(published.raw_tx)
    assert anchored_roots(tx) == [ROOT]
    entry = rpc.call("getmempoolentry", published.txid)
    assert sats(entry["fees"]["base"], "fee") == published.fee_sat
    assert published.fee_sat == pytest.approx(7 * entry["vsize"], abs=7)
    status = rpc.tx_status(published.txid)
    assert (status.confirmations, status.in_mempool, status.dropped) == (0, True, False)
    regtest.mine(1)
    status = rpc.tx_status(published.txid)
    assert status.confirmations == 1 and status.block_hash is not None and not status.in_mempool
    raw = rpc.get_raw_transaction(published.txid, status.block_hash)
    assert raw == published.raw_tx
    assert ANCHOR_TAG + ROOT in raw


@pytest.mark.slow
@pytest.mark.bitcoin
def test_over_budget_anchor_never_leaves_the_node(regtest: RegtestNode) -> None:
    rpc = regtest.rpc()
    before = rpc.call("getmempoolinfo")["size"]
    with pytest.raises(FeeOverBudget, match=r"^fee \d+ sat over budget 10$") as info:
        rpc.publish_anchor(anchor_payload(ROOT), max_fee_sat=10)
    assert info.value.fee_sat > 10 and info.value.budget_sat == 10
    assert rpc.call("getmempoolinfo")["size"] == before


@pytest.mark.slow
@pytest.mark.bitcoin
def test_unknown_transaction_is_dropped_and_node_errors_carry_their_code(regtest: RegtestNode) -> None:
    rpc = regtest.rpc()
    assert rpc.tx_status("ab" * 32).dropped
    with pytest.raises(BitcoinRPCError, match=r"getblockhash: .*\(code -8\)") as info:
        rpc.get_block_hash(10**6)
    assert info.value.code == -8
    assert not rpc.in_best_chain("cd" * 32)
    assert rpc.in_best_chain(rpc.get_best_block_hash())
    assert rpc.chain() == "regtest"
