"""``peerdb audit diff``: the same books agree (one member may be ahead); two sets of books diverge
at the first height where their best chains differ, and the command says so with exit 4; a
forged bundle (a best-chain block left out, a transaction changed, trailer recomputed) is never
found in agreement."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import exitcodes
from cli.main import main
from peerdb.audit.bundle import BlockEntry, Item
from peerdb.audit.diff import DiffResult, diff_bundles
from peerdb.audit.errors import AuditFailure
from peerdb.audit.export import MemorySource
from peerdb.core import codec
from peerdb.core.model import OP_PUT, Block, Op, Tx
from tests.helpers.chainbuilder import ChainBuilder
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.bundles import assemble, block_item, items_of


def _books(cb: ChainBuilder, blocks: list[Block], signers: dict[bytes, list[str]] | None = None) -> MemorySource:
    src = MemorySource(cb.consortium)
    for block in blocks:
        src.add_block(block, cb.sign_all(block, (signers or {}).get(block.hash)))
    return src


def _diff(a: bytes, b: bytes) -> DiffResult:
    return diff_bundles(io.BytesIO(a), io.BytesIO(b))


CB = ChainBuilder(4)
CHAIN = CB.chain(6, txs_per_block=2)


def test_the_same_books_agree() -> None:
    data = _books(CB, CHAIN).bundle("m0")
    result = _diff(data, data)
    assert not result.diverged and result.agreed_height == 6 and result.differences == []
    assert result.text().startswith("AGREE")


def test_a_member_that_is_behind_agrees_on_the_common_prefix() -> None:
    a = _books(CB, CHAIN).bundle("m0")
    b = _books(CB, CHAIN[:4]).bundle("m1")
    result = _diff(a, b)
    assert not result.diverged and result.agreed_height == 4
    assert [d.kind for d in result.differences] == ["missing"]
    assert "B lacks best-chain heights 5..6" in result.differences[0].message


def test_two_sets_of_books_diverge_at_the_first_different_block() -> None:
    other = CB.block(CHAIN[2], [CB.tx("m3", [("books", "secret", b"other books")])], round=1)
    a = _books(CB, CHAIN).bundle("m0")
    b = _books(CB, CHAIN[:3] + [other]).bundle("m3")
    result = _diff(a, b)
    assert result.diverged and result.agreed_height == 3
    assert result.divergence is not None and result.divergence.height == 4
    message = result.divergence.message
    assert CHAIN[3].hash.hex()[:16] in message and other.hash.hex()[:16] in message
    assert f"proposed by {CHAIN[3].header.proposer}" in message and "proposed by m0" in message


def test_books_of_different_consortia_diverge() -> None:
    other_cb = ChainBuilder(4, name="elsewhere")
    result = _diff(_books(CB, CHAIN).bundle("m0"), _books(other_cb, other_cb.chain(2)).bundle("m0"))
    assert result.divergence is not None and result.divergence.kind == "consortium"


def test_signature_and_anchor_differences_are_reported_not_fatal() -> None:
    a_src = _books(CB, CHAIN)
    b_src = _books(CB, CHAIN, {CHAIN[5].hash: ["m0", "m1", "m2"]})
    proof = make_anchor([CHAIN[0].hash])[0]
    a_src.anchors[CHAIN[0].hash] = proof.encode()
    result = _diff(a_src.bundle("m0"), b_src.bundle("m1"))
    assert not result.diverged
    kinds = {d.kind: d for d in result.differences}
    assert kinds["signatures"].height == 6 and "m3" in kinds["signatures"].message
    assert kinds["anchor"].height == 1 and "none" in kinds["anchor"].message


def test_the_command_exits_4_on_divergence_and_with_strict_on_any_difference(tmp_path: Path) -> None:
    other = CB.block(CHAIN[1], round=1)
    paths = {}
    for name, src in (("a", _books(CB, CHAIN)), ("b", _books(CB, CHAIN[:2] + [other])),
                      ("c", _books(CB, CHAIN, {CHAIN[0].hash: ["m0", "m1"]}))):
        paths[name] = tmp_path / f"{name}.pdbaudit"
        paths[name].write_bytes(src.bundle("m0"))
    runner = CliRunner()
    same = runner.invoke(main, ["audit", "diff", str(paths["a"]), str(paths["a"])])
    assert same.exit_code == exitcodes.OK, same.output
    diverged = runner.invoke(main, ["--json", "audit", "diff", str(paths["a"]), str(paths["b"])])
    assert diverged.exit_code == exitcodes.VERIFY_FAILED
    answer = json.loads(diverged.output)
    assert answer["agree"] is False and answer["divergence"]["height"] == 3 and answer["agreed_height"] == 2
    lenient = runner.invoke(main, ["audit", "diff", str(paths["a"]), str(paths["c"])])
    strict = runner.invoke(main, ["audit", "diff", "--strict", str(paths["a"]), str(paths["c"])])
    assert lenient.exit_code == exitcodes.OK and "signatures" in lenient.output
    assert strict.exit_code == exitcodes.VERIFY_FAILED


def test_a_broken_bundle_cannot_be_compared(tmp_path: Path) -> None:
    good = tmp_path / "good.pdbaudit"
    cut = tmp_path / "cut.pdbaudit"
    data = _books(CB, CHAIN).bundle("m0")
    good.write_bytes(data)
    cut.write_bytes(data[:-10])
    result = CliRunner().invoke(main, ["audit", "diff", str(good), str(cut)])
    assert result.exit_code == exitcodes.VERIFY_FAILED and "truncated" in result.output


def _forged(data: bytes, change: Callable[[list[Item]], None]) -> bytes:
    """The bundle with ``change`` applied to its items and a trailer recomputed to match, as a
    forger would write it."""
    items = items_of(data)
    change(items)
    return assemble(items)


def _drop_best_block(height: int) -> Callable[[list[Item]], None]:
    def change(items: list[Item]) -> None:
        del items[block_item(items, height)]
    return change


def _tx_bytes(fn: Callable[[Tx], Tx]) -> Callable[[list[Item]], None]:
    """Change the first transaction of block 2 by ``fn``, keeping the block's header bytes."""
    def change(items: list[Item]) -> None:
        i = block_item(items, 2)
        entry = items[i]
        assert isinstance(entry, BlockEntry)
        block = Block.decode(entry.raw)
        txs = [fn(block.txs[0]).raw, *(tx.raw for tx in block.txs[1:])]
        items[i] = dataclasses.replace(entry, raw=codec.encode([block.header.raw, txs, []]))
    return change


def _other_value(tx: Tx) -> Tx:
    return Tx.create(CB.client_keys[tx.member], CB.cid, tx.member, tx.nonce, tx.expires_ms,
                     [Op(OP_PUT, "books", "rewritten", b"other books")])


def _other_signature(tx: Tx) -> Tx:
    return Tx.from_parts(tx.body, bytes([tx.signature[0] ^ 1]) + tx.signature[1:])


@pytest.mark.parametrize("verify_first", [True, False], ids=["verified", "structure-only"])
@pytest.mark.parametrize("change, fragment", [
    (_drop_best_block(3), "best chain is broken"),
    (_tx_bytes(_other_value), "tx_root does not match"),
], ids=["best-block-removed", "transaction-changed"])
def test_a_forged_bundle_is_never_found_in_agreement(change: Callable[[list[Item]], None], fragment: str,
                                                      verify_first: bool) -> None:
    good = _books(CB, CHAIN).bundle("m0")
    forged = _forged(good, change)
    with pytest.raises(AuditFailure) as info:
        diff_bundles(io.BytesIO(good), io.BytesIO(forged), "a.pdbaudit", "b.pdbaudit", verify_first=verify_first)
    assert info.value.where.startswith("b.pdbaudit: block ") and fragment in info.value.reason, info.value


def test_a_transaction_signature_changed_is_caught_by_the_verification_first(tmp_path: Path) -> None:
    """The block hash commits to the transactions' ids, not their signature bytes: only
    verifying the bundle tells such a forgery, and the command does so before it compares."""
    good = _books(CB, CHAIN).bundle("m0")
    forged = _forged(good, _tx_bytes(_other_signature))
    paths = {}
    for name, data in (("good", good), ("forged", forged)):
        paths[name] = tmp_path / f"{name}.pdbaudit"
        paths[name].write_bytes(data)
    result = CliRunner().invoke(main, ["audit", "diff", str(paths["good"]), str(paths["forged"])])
    assert result.exit_code == exitcodes.VERIFY_FAILED, result.output
    assert "cannot compare" in result.output and "block 2 (" in result.output and "signature" in result.output
    unverified = CliRunner().invoke(main, ["audit", "diff", "--no-verify", str(paths["good"]), str(paths["forged"])])
    assert "NOT VERIFIED" in unverified.output
    verified = CliRunner().invoke(main, ["--json", "audit", "diff", str(paths["good"]), str(paths["good"])])
    assert verified.exit_code == exitcodes.OK and json.loads(verified.output)["verified"] is True
