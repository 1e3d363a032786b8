"""The startup check: a damaged store is refused with a message naming the damage, never served;
schema versions and the migration hook."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest

from peerdb.core.errors import StorageError
from peerdb.core.model import Block
from peerdb.core.smt import node_key
from peerdb.store import Store, layout
from peerdb.store import check as store_check
from peerdb.store.tables import Tables
from tests.helpers.chainbuilder import ChainBuilder


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, ChainBuilder, list[Block]]:
    """A closed store with four blocks of 40 transactions each (bigger than an LMDB page)."""
    cb = ChainBuilder()
    blocks = cb.chain(4, txs_per_block=40)
    path = tmp_path / "s"
    with Store.open(path, cb.consortium, "m0", sync=False) as store:
        for blk in blocks:
            store.add_block(blk, make_head=True)
    return path, cb, blocks


@contextmanager
def tamper(path: Path) -> Iterator[tuple[Any, Tables]]:
    """Edit a closed store behind its back, in one committed LMDB transaction."""
    env = lmdb.open(str(path), max_dbs=layout.MAX_DBS, subdir=True)
    try:
        with env.begin(write=True) as txn:
            yield txn, Tables.open(env, txn)
    finally:
        env.close()


def refused(path: Path, cb: ChainBuilder, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        Store.open(path, cb.consortium, "m0", sync=False)


def test_flipped_byte_inside_a_stored_block_is_refused(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    data_file = path / "data.mdb"
    content = bytearray(data_file.read_bytes())
    target = blocks[-2].raw
    assert content.count(target) == 1  # an overflow value: written once, never copied
    at = content.index(target) + len(target) // 2
    content[at] ^= 0x01
    data_file.write_bytes(bytes(content))
    refused(path, cb, f"stored block {blocks[-2].hash.hex()[:16]} is corrupt|tx_root")


Tamper = Callable[[Any, Tables, list[Block]], None]

DAMAGE: list[tuple[str, Tamper, str]] = [
    ("head header gone", lambda txn, t, b: txn.delete(b[-1].hash, db=t.headers),
     "head block recorded in meta is missing"),
    ("head pointer gone", lambda txn, t, b: txn.delete(layout.META_HEAD, db=t.meta), "no head block"),
    ("best-chain gap", lambda txn, t, b: txn.delete(layout.be64(2), db=t.best), "gaps|does not link"),
    ("best chain not ending at head", lambda txn, t, b: txn.delete(layout.be64(4), db=t.best),
     "does not end at the head"),
    ("header swapped", lambda txn, t, b: txn.put(b[-1].hash, b[-2].header.raw, db=t.headers), "hashes to"),
    ("block swapped", lambda txn, t, b: txn.put(b[-1].hash, b[-2].raw, db=t.blocks), "hashes to"),
    ("block missing", lambda txn, t, b: txn.delete(b[-3].hash, db=t.blocks), "is missing"),
    ("undo record missing", lambda txn, t, b: txn.delete(b[-1].hash, db=t.undo), "no undo record"),
    ("tx index entry missing", lambda txn, t, b: txn.delete(b[-1].txs[7].txid, db=t.txindex),
     "transaction index"),
    ("height index entry missing", lambda txn, t, b: txn.delete(layout.be64(3) + b[-2].hash, db=t.heights),
     "height index"),
    ("wrong member", lambda txn, t, b: txn.put(layout.META_MEMBER, b"m2", db=t.meta), "belongs to member 'm2'"),
    ("schema record gone", lambda txn, t, b: txn.delete(layout.META_SCHEMA, db=t.meta), "no schema version"),
    ("identity record gone", lambda txn, t, b: txn.delete(layout.META_IDENTITY, db=t.meta), "no identity"),
    ("newer schema", lambda txn, t, b: txn.put(layout.META_SCHEMA, layout.int_record(99), db=t.meta),
     "schema version 99 is newer"),
    ("older schema without migration", lambda txn, t, b: txn.put(layout.META_SCHEMA, layout.int_record(0), db=t.meta),
     "no migration from store schema version 0"),
]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_store_is_refused(built: tuple[Path, ChainBuilder, list[Block]],
                                  damage: tuple[str, Tamper, str]) -> None:
    path, cb, blocks = built
    _name, edit, match = damage
    with tamper(path) as (txn, t):
        edit(txn, t, blocks)
    refused(path, cb, match)


def test_refusal_changes_nothing_and_releases_the_directory(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    with tamper(path) as (txn, t):
        txn.delete(blocks[-1].hash, db=t.undo)
    refused(path, cb, "no undo record")
    refused(path, cb, "no undo record")  # not "already open": the lock and environment were released
    with tamper(path) as (txn, t):
        txn.put(blocks[-1].hash, layout.undo_record([]), db=t.undo)
    with Store.open(path, cb.consortium, "m0", sync=False) as store:
        assert store.head() == blocks[-1].header


def test_not_an_lmdb_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"this is not a database" * 1000)
    refused(path, ChainBuilder(), "not an LMDB data file")


def test_migration_hook_upgrades_an_old_schema(built: tuple[Path, ChainBuilder, list[Block]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path, cb, blocks = built
    with tamper(path) as (txn, t):
        txn.put(layout.META_SCHEMA, layout.int_record(0), db=t.meta)
    calls: list[int] = []

    def step(version: int) -> Any:
        def migrate(txn: Any, t: Tables) -> None:
            calls.append(version)
            txn.put(b"migrated", b"yes", db=t.meta)
        return migrate

    for version in range(layout.SCHEMA_VERSION):  # one step per version, in order
        monkeypatch.setitem(store_check.MIGRATIONS, version, step(version))
    with Store.open(path, cb.consortium, "m0", sync=False) as store:
        assert store.head() == blocks[-1].header
    assert calls == list(range(layout.SCHEMA_VERSION))
    with tamper(path) as (txn, t):
        assert txn.get(b"migrated", db=t.meta) == b"yes"
        assert layout.parse_int_record(txn.get(layout.META_SCHEMA, db=t.meta), "schema") == layout.SCHEMA_VERSION


def test_a_protocol_1_store_is_refused_with_the_reason(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, _blocks = built
    with tamper(path) as (txn, t):
        txn.put(layout.META_SCHEMA, layout.int_record(1), db=t.meta)
    refused(path, cb, "schema version 1 cannot be opened by this build: it holds a protocol-1 chain")


def test_a_head_without_its_state_tree_is_refused(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    path, cb, blocks = built
    head = blocks[-1].header
    with tamper(path) as (txn, t):
        assert txn.delete(node_key(head.height, head.state_root), db=t.nodes)
    refused(path, cb, "state tree of the head block")


def test_check_is_bounded_to_recent_blocks(built: tuple[Path, ChainBuilder, list[Block]]) -> None:
    """Damage below the checked window is found by reads, not at start (the price of O(1) start)."""
    path, cb, blocks = built
    with tamper(path) as (txn, t):
        txn.put(blocks[0].hash, blocks[1].raw, db=t.blocks)
    with Store.open(path, cb.consortium, "m0", sync=False, check_blocks=2) as store:
        with pytest.raises(StorageError, match="hashes to"):
            store.block(blocks[0].hash)
    refused(path, cb, "hashes to")  # the default window covers it
