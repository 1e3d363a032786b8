"""``peerdb node check --deep``: every stored item checked against what commits to it.

Each test damages one kind of item in a closed store, as a disk or a hand could, in a way the
bounded start-up check does not look at (an old block, a transaction signature, a block
signature, a served value), and checks that the deep check names it and the CLI exits 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from cli.main import main as cli
from peerdb.core.consortium import consortium_to_toml_data
from peerdb.core.model import Block
from peerdb.keyfile import write_key
from peerdb.store import Store, layout
from peerdb.store.deepcheck import deep_check
from tests.helpers.chainbuilder import ChainBuilder
from tests.store.test_startup_check import tamper


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, ChainBuilder, list[Block]]:
    """A closed store of 60 blocks (3 transactions each), signed by every member."""
    cb = ChainBuilder()
    blocks = cb.chain(60, txs_per_block=3)
    path = tmp_path / "s"
    with Store.open(path, cb.consortium, "m0", sync=False) as store:
        for block in blocks:
            store.add_block(block, cb.sign_all(block), make_head=True)
    return path, cb, blocks


def check(path: Path, cb: ChainBuilder) -> list[str]:
    with Store.open(path, cb.consortium, "m0", sync=False) as store:  # the start-up check still passes
        return deep_check(store, cb.consortium).problems


def test_a_sound_store_passes_with_everything_counted(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    with Store.open(path, cb.consortium, "m0", sync=False) as store:
        report = deep_check(store, cb.consortium)
    assert report.ok and report.blocks == 60 and report.transactions == 180
    assert report.signatures == 60 * len(cb.members) and report.keys == 180


def test_a_flipped_byte_in_an_old_block_is_named(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    old = blocks[4]
    value = old.txs[0].ops[0].value
    assert value
    with tamper(path) as (txn, t):
        raw = bytearray(txn.get(old.hash, db=t.blocks))
        at = bytes(raw).index(old.txs[0].raw) + old.txs[0].raw.index(value)
        raw[at] ^= 0x01  # inside a transaction's value: its id, and the block's tx_root, no longer match
        txn.put(old.hash, bytes(raw), db=t.blocks)
    problems = check(path, cb)
    assert problems == [f"height 5: stored block {old.hash.hex()[:16]}: transactions do not match the header's "
                        "tx_root"], problems


def test_a_flipped_transaction_signature_is_named(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    """A transaction's id covers its body, not its signature: only verifying it finds this."""
    path, cb, blocks = built
    old = blocks[7]
    tx = old.txs[0]
    with tamper(path) as (txn, t):
        raw = txn.get(old.hash, db=t.blocks)
        at = raw.index(tx.signature)
        damaged = raw[:at] + bytes([raw[at] ^ 0x80]) + raw[at + 1:]
        txn.put(old.hash, damaged, db=t.blocks)
    problems = check(path, cb)
    assert problems == [f"block 8: transaction {tx.txid.hex()[:16]}: its client signature does not verify"]


def test_a_flipped_block_signature_is_named(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    old = blocks[2]
    with tamper(path) as (txn, t):
        key = old.hash + b"m1"
        sig = bytearray(txn.get(key, db=t.signatures))
        sig[0] ^= 0x01
        txn.put(key, bytes(sig), db=t.signatures)
    problems = check(path, cb)
    assert problems == [f"block 3 {old.hash.hex()[:16]}: m1's stored signature does not verify"]


def test_a_value_changed_in_the_served_state_is_named(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    op = blocks[10].txs[1].ops[0]
    with tamper(path) as (txn, t):
        skey = layout.state_key(op.namespace, op.key)
        height, value = layout.parse_state_record(txn.get(skey, db=t.state))
        txn.put(skey, layout.state_record(height, b"forged" + value, op.namespace, op.key, skey), db=t.state)
    problems = check(path, cb)
    assert problems == [f"state {op.namespace}/{op.key}: the stored value differs from the one the chain gives"]


def test_the_cli_exits_4_naming_the_damage(built: tuple[Path, ChainBuilder, list[Block]], tmp_path: Path) -> None:
    path, cb, blocks = built
    consortium_file = tmp_path / "consortium.toml"
    consortium_file.write_text(tomli_w.dumps(consortium_to_toml_data(cb.consortium)))
    config = tmp_path / "node.toml"
    key = tmp_path / "m0.key"
    write_key(key, cb.keys["m0"], "member")
    config.write_text(f'[node]\nmember = "m0"\nconsortium = "{consortium_file}"\nkey_file = "{key}"\n'
                      f'data_dir = "{path}"\n[api]\nlisten = "127.0.0.1:18080"\ntoken = "{"t" * 32}"\n')
    config.chmod(0o600)
    runner = CliRunner()
    ok = runner.invoke(cli, ["node", "check", "--config", str(config), "--deep", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    with tamper(path) as (txn, t):
        txn.put(blocks[1].hash + b"m2", bytes(64), db=t.signatures)
    bad = runner.invoke(cli, ["node", "check", "--config", str(config), "--deep"])
    assert bad.exit_code == 4 and "m2's stored signature does not verify" in bad.output
