"""`peerdb anchors verify REF`: one block's anchor proof checked by the auditor's own machine —
from an audit bundle or from the node — offline, and (tests/system/test_founding.py) against a
Bitcoin node."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import exitcodes
from cli.context import Ctx
from cli.main import main
from peerdb.anchor.anchortx import parse_tx, txid
from peerdb.anchor.hashes import to_display
from peerdb.audit.bundle import BlockEntry, BtcPart
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.bundles import assemble, build_books, change_block, items_of

BOOKS = build_books()  # best-chain blocks 1..6; blocks 1..4 anchored in one transaction
REGTEST = ["--check-pow", "--network", "regtest"]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("anchors") / "m0.pdbaudit"
    path.write_bytes(BOOKS.bundle())
    return path


def test_a_blocks_anchor_proof_from_a_bundle_checks_out(bundle: Path) -> None:
    result = run("--json", "anchors", "verify", "2", "--bundle", str(bundle), *REGTEST)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    block = BOOKS.main[1]
    assert info["ok"] is True and info["height"] == 2 and info["block"] == block.hash.hex()
    assert info["anchored_by"] is None and info["pow_checked"] is True and info["bitcoin_checked"] is False
    btc = next(i for i in items_of(BOOKS.bundle()) if isinstance(i, BtcPart))
    assert info["bitcoin_txid"] == to_display(txid(parse_tx(btc.bitcoin_tx))) and info["depth"] == len(btc.headers)
    text = run("anchors", "verify", block.hash.hex(), "--bundle", str(bundle), *REGTEST)
    assert text.exit_code == 0 and text.stdout.startswith("OK: block 2 (") and "proof of work" in text.stdout


def test_a_block_not_anchored_exits_4(bundle: Path) -> None:
    result = run("anchors", "verify", "6", "--bundle", str(bundle))
    assert result.exit_code == exitcodes.VERIFY_FAILED and "not anchored" in result.stderr


def test_a_broken_proof_exits_4_naming_the_link(tmp_path: Path) -> None:
    def wrong_path(entry: BlockEntry) -> BlockEntry:
        assert entry.anchor is not None
        left, sibling = entry.anchor.path[0]
        flipped = bytes([sibling[0] ^ 1]) + sibling[1:]
        return dataclasses.replace(entry, anchor=dataclasses.replace(entry.anchor, path=((left, flipped),
                                                                                          *entry.anchor.path[1:])))
    items = items_of(BOOKS.bundle())
    change_block(3, wrong_path)(items)
    forged = tmp_path / "forged.pdbaudit"
    forged.write_bytes(assemble(items))
    result = run("anchors", "verify", "3", "--bundle", str(forged))
    assert result.exit_code == exitcodes.VERIFY_FAILED
    assert "anchor proof of block 3 FAILED" in result.stderr and "Merkle path" in result.stderr


class _Node:
    """The node's /v1/anchors answers for a block with its own proof and one covered by it."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.answers[path.rsplit("/", 1)[1]]


def test_a_proof_from_the_node_and_a_block_covered_by_a_descendants_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    parent, child = BOOKS.main[4], BOOKS.main[5]
    proof = make_anchor([child.hash], witness=True)[0]
    answers = {
        "5": {"block": parent.hash.hex(), "height": 5, "anchored": True, "proof": None, "covered_by": child.hash.hex()},
        child.hash.hex(): {"block": child.hash.hex(), "height": 6, "anchored": True,
                           "proof": base64.b64encode(proof.encode()).decode()},
    }
    monkeypatch.setattr(Ctx, "client", property(lambda self: _Node(answers)))
    result = run("--json", "anchors", "verify", "5", *REGTEST)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["anchored_by"] == {"height": 6, "block": child.hash.hex()} and info["source"] == "node"
    assert info["bitcoin_txid"] == to_display(txid(parse_tx(proof.bitcoin_tx)))  # the txid, not the wtxid
