"""Round trips and reads of the LMDB store, against a real environment in tmp_path."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from peerdb.core.errors import StorageError, ValidationError
from peerdb.core.model import Objection
from peerdb.store import ReorgResult, Store, TxLocation
from tests.helpers.chainbuilder import ChainBuilder


@pytest.fixture
def cb() -> ChainBuilder:
    return ChainBuilder(n_members=4)


def open_store(path: Path, cb: ChainBuilder, member: str = "m0") -> Store:
    return Store.open(path, cb.consortium, member, sync=False)


def test_new_store_starts_at_genesis(tmp_path: Path, cb: ChainBuilder) -> None:
    with open_store(tmp_path / "s", cb) as store:
        assert store.head() == cb.genesis.header
        assert store.head().hash == cb.cid == store.consortium_id
        assert store.block_hash_at(0) == cb.genesis.hash
        assert store.block(cb.genesis.hash) == cb.genesis
        assert [h.hash for h in store.headers_iter()] == [cb.genesis.hash]
        assert store.get("books", "nothing") == (None, None)


def test_blocks_signatures_evidence_objections_anchors_round_trip(tmp_path: Path, cb: ChainBuilder) -> None:
    b1 = cb.block(cb.genesis, [cb.tx("m1", [("books", "a", b"1")])])
    a, b, ev = cb.double_sign("m3", b1)
    side = cb.block(b1, [cb.tx("m2", [("books", "z", b"9")])], round=1)
    objection = Objection.create(cb.keys["m2"], cb.cid, "m2", a.hash, "price feed looks stale")
    path = tmp_path / "s"
    with open_store(path, cb) as store:
        assert store.add_block(b1, cb.sign_all(b1, ["m0", "m1"]), make_head=True) == ReorgResult(applied=[b1.hash])
        assert store.add_block(a, [cb.sign(a, "m3")]) is None
        assert store.add_block(b, [cb.sign(b, "m3")]) is None
        assert store.add_block(side) is None
        assert store.add_block(side) is None  # idempotent
        assert store.add_signatures(cb.sign_all(b1)) == 2  # m0, m1 were already there
        assert store.add_evidence(ev) is True
        assert store.add_evidence(ev) is False
        assert store.add_objection(objection) is True
        store.record_anchor(b1.hash, b"proof-bytes")
    with open_store(path, cb) as store:
        assert store.head() == b1.header
        for blk in (b1, a, b, side):
            got = store.block(blk.hash)
            assert got is not None and got.raw == blk.raw
            assert store.header(blk.hash) == blk.header
        assert store.block(b"\x00" * 32) is None
        assert sorted(s.member for s in store.signatures(b1.hash)) == list(cb.members)
        assert all(s.valid(cb.cid, cb.keys[s.member].public) for s in store.all_signatures_iter())
        assert len(list(store.all_signatures_iter())) == 6
        assert [e.id for e in store.evidence_list()] == [ev.id]
        assert store.objections(a.hash) == [objection]
        assert store.objections(b.hash) == []
        assert store.anchor(b1.hash) == b"proof-bytes"
        assert list(store.anchors()) == [(b1.hash, b"proof-bytes")]
        heights = [h.height for h in store.headers_iter()]
        assert heights == sorted(heights) and len(heights) == 5
        assert store.state_root_at(b1.hash) == b1.header.state_root


def test_evidence_inside_a_block_is_recorded(tmp_path: Path, cb: ChainBuilder) -> None:
    b1 = cb.block(cb.genesis)
    _a, _b, ev = cb.double_sign("m2", b1)
    b2 = cb.block(b1, evidence=[ev])
    with open_store(tmp_path / "s", cb) as store:
        store.add_block(b1, make_head=True)
        store.add_block(b2, make_head=True)
        assert [e.id for e in store.evidence_list()] == [ev.id]


def test_parent_must_be_stored_first(tmp_path: Path, cb: ChainBuilder) -> None:
    b1, b2 = cb.chain(2)
    with open_store(tmp_path / "s", cb) as store:
        with pytest.raises(StorageError, match="parent .* is not stored"):
            store.add_block(b2)
        assert not store.has_block(b2.hash)


def test_state_history_and_as_of_reads(tmp_path: Path, cb: ChainBuilder) -> None:
    t1 = cb.tx("m0", [("books", "a", b"1"), ("books", "b", b"x")])
    b1 = cb.block(cb.genesis, [t1])
    t2 = cb.tx("m1", [("books", "a", b"2"), ("books", "a", b"3")])  # last write in a block wins
    b2 = cb.block(b1, [t2])
    t3 = cb.tx("m2", [("books", "a", None)])
    b3 = cb.block(b2, [t3])
    b4 = cb.block(b3, [cb.tx("m3", [("books", "a", b"4")])])
    with open_store(tmp_path / "s", cb) as store:
        for blk in (b1, b2, b3, b4):
            store.add_block(blk, make_head=True)
        assert store.get("books", "a") == (b"4", 4)
        assert store.get("books", "a", at_height=0) == (None, None)
        assert store.get("books", "a", at_height=1) == (b"1", 1)
        assert store.get("books", "a", at_height=2) == (b"3", 2)
        assert store.get("books", "a", at_height=3) == (None, 3)
        assert store.get("books", "b", at_height=3) == (b"x", 1)
        assert store.get("other", "a") == (None, None)
        with pytest.raises(ValidationError, match="at_height"):
            store.get("books", "a", at_height=5)
        assert store.history("books", "a") == [(1, b1.hash, b"1"), (2, b2.hash, b"3"), (3, b3.hash, None),
                                               (4, b4.hash, b"4")]
        assert store.history("books", "a") == cb.history_of(b4, "books", "a")
        assert store.history("books", "a", start_height=2, limit=2) == [(2, b2.hash, b"3"), (3, b3.hash, None)]
        assert store.tx_location(t2.txid) == TxLocation(2, b2.hash, 0)
        assert store.tx_location(b"\x07" * 32) is None
        store.add_block(cb.block(b4, [cb.tx("m0", [("books", "b", None)])]), make_head=True)
        assert store.get("books", "b") == (None, 5)  # deleted at the head: the delete's height


def test_long_keys_and_scan(tmp_path: Path, cb: ChainBuilder) -> None:
    long_a = "k" * 500
    long_b = "k" * 450 + "é" * 25  # 500 bytes, same 351-byte prefix as long_a
    short = ["k", "k1", "k2", "ka", "x"]
    ops = [("ns", k, k.encode()[:8]) for k in short] + [("ns", long_a, b"A"), ("ns", long_b, b"B"),
                                                       ("ns2", "k", b"other")]
    b1 = cb.block(cb.genesis, [cb.tx("m0", ops)])
    with open_store(tmp_path / "s", cb) as store:
        store.add_block(b1, make_head=True)
        assert store.get("ns", long_a) == (b"A", 1)
        assert store.get("ns", long_b) == (b"B", 1)
        assert store.history("ns", long_b) == [(1, b1.hash, b"B")]
        everything = [k for k, _v, _h in store.scan("ns")]
        assert everything[:5] == short and sorted(everything[5:]) == sorted([long_a, long_b])
        assert [k for k, _v, _h in store.scan("ns", "k")] == short[:4] + everything[5:]
        page1 = store.scan("ns", "k", limit=3)
        page2 = store.scan("ns", "k", start_after=page1[-1][0], limit=3)
        page3 = store.scan("ns", "k", start_after=page2[-1][0], limit=3)
        assert [k for k, _v, _h in page1 + page2 + page3] == short[:4] + everything[5:]
        assert store.scan("ns", "k" * 460) == [(long_a, b"A", 1)]  # long_b has "é" after 450 bytes
        assert {k for k, _v, _h in store.scan("ns", "k" * 400)} == {long_a, long_b}
        assert store.scan("ns2") == [("k", b"other", 1)]


def test_mempool_persists_and_follows_the_chain(tmp_path: Path, cb: ChainBuilder) -> None:
    t1, t2, t3 = (cb.tx("m1", [("books", f"k{i}", b"v")]) for i in range(3))
    path = tmp_path / "s"
    with open_store(path, cb) as store:
        assert store.mempool_add([t1, t2, t3]) == 3
        assert store.mempool_add([t1]) == 0
        b1 = cb.block(cb.genesis, [t1])
        store.add_block(b1, make_head=True)  # applying a block clears its transactions
        assert store.mempool_add([t1]) == 0  # already on the best chain
        assert store.mempool_remove([t3.txid, b"\x01" * 32]) == 1
    with open_store(path, cb) as store:
        assert [t.raw for t in store.mempool_items()] == [t2.raw]


def test_make_head_on_a_side_branch_reorgs_in_one_call(tmp_path: Path, cb: ChainBuilder) -> None:
    shared = cb.tx("m0", [("books", "s", b"shared")])
    lost = cb.tx("m1", [("books", "l", b"lost")])
    b1 = cb.block(cb.genesis, [shared, lost])
    c1 = cb.block(cb.genesis, [shared], round=1)
    c2 = cb.block(c1, [cb.tx("m2", [("books", "c", b"c")])])
    with open_store(tmp_path / "s", cb) as store:
        store.add_block(b1, make_head=True)
        store.add_block(c1)
        result = store.add_block(c2, effects=cb.effects(c2), make_head=True)
        assert result is not None
        assert result.rolled_back == [b1.hash] and result.applied == [c1.hash, c2.hash]
        assert [t.txid for t in result.returned_txs] == [lost.txid]
        assert store.head() == c2.header
        assert store.get("books", "l") == (None, None)
        assert store.get("books", "s") == (b"shared", 1)
        assert store.tx_location(shared.txid) == TxLocation(1, c1.hash, 0)
        assert store.tx_location(lost.txid) is None
        assert [t.txid for t in store.mempool_items()] == [lost.txid]
        back = store.set_head(b1.hash)  # and back: "lost" is included again, c2's transaction returns
        assert back.rolled_back == [c2.hash, c1.hash] and back.applied == [b1.hash]
        assert [t.txid for t in back.returned_txs] == [c2.txs[0].txid]
        assert [t.txid for t in store.mempool_items()] == [c2.txs[0].txid]
        assert store.set_head(b1.hash) == ReorgResult()


def test_state_reader_at_side_branch_and_ancestors(tmp_path: Path, cb: ChainBuilder) -> None:
    t1 = cb.tx("m0", [("books", "a", b"1")])
    b1 = cb.block(cb.genesis, [t1])
    t2 = cb.tx("m1", [("books", "a", b"2"), ("books", "b", b"2")])
    b2 = cb.block(b1, [t2])
    t2x = cb.tx("m2", [("books", "a", None), ("books", "c", b"x")])
    b2x = cb.block(b1, [t2x], round=1)
    b3x = cb.block(b2x, [cb.tx("m3", [("books", "c", b"y")])])
    with open_store(tmp_path / "s", cb) as store:
        for blk in (b1, b2, b2x, b3x):
            store.add_block(blk, make_head=blk is b2)
        for blk in (cb.genesis, b1, b2, b2x, b3x):
            expected = cb.state_at(blk)
            with store.state_reader_at(blk.hash) as reader:
                for key in ("a", "b", "c"):
                    assert reader.get("books", key) == expected.get("books", key), (blk.height, key)
                for txid in (t1.txid, t2.txid, t2x.txid):
                    assert reader.tx_seen(txid) == (txid in expected.seen)
        reader = store.state_reader_at(b3x.hash)
        reader.close()
        with pytest.raises(StorageError, match="after close"):
            reader.get("books", "a")
        with pytest.raises(StorageError, match="not in the store"):
            store.state_reader_at(b"\x05" * 32)
        orphaned = store.state_reader_at(b2.hash)
    with pytest.raises(StorageError):  # the store closed under it: a StorageError, not an LMDB one
        orphaned.get("books", "a")
    orphaned.close()


def test_recomputed_effects_must_match_the_header(tmp_path: Path, cb: ChainBuilder) -> None:
    b1 = cb.block(cb.genesis, [cb.tx("m0", [("books", "a", b"1")])])
    wrong = cb.effects(cb.block(cb.genesis, [cb.tx("m0", [("books", "a", b"2")])], round=2))
    with open_store(tmp_path / "s", cb) as store:
        with pytest.raises(StorageError, match="effects passed in are not this block's"):
            store.add_block(b1, effects=wrong, make_head=True)
        assert store.head() == cb.genesis.header and not store.has_block(b1.hash)  # nothing half-done


def test_open_refuses_wrong_member_wrong_consortium_and_second_open(tmp_path: Path, cb: ChainBuilder) -> None:
    path = tmp_path / "s"
    open_store(path, cb, "m0").close()
    with pytest.raises(StorageError, match="belongs to member 'm0', not 'm1'"):
        open_store(path, cb, "m1")
    other = ChainBuilder(seed=b"another consortium")
    with pytest.raises(StorageError, match="belongs to consortium"):
        open_store(path, other, "m0")
    with pytest.raises(StorageError, match="not a member"):
        open_store(path, cb, "mallory")
    with open_store(path, cb) as store:
        with pytest.raises(StorageError, match="already open"):
            open_store(path, cb)
        assert store.head() == cb.genesis.header
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.block_hash_at(0)


def test_stats_count_entries_and_bytes(tmp_path: Path, cb: ChainBuilder) -> None:
    with open_store(tmp_path / "s", cb) as store:
        blocks = cb.chain(3, txs_per_block=5)
        for blk in blocks:
            store.add_block(blk, make_head=True)
        stats = store.stats()
        assert stats["head_height"] == 3
        assert stats["entries"]["txindex"] == 15 and stats["entries"]["blocks"] == 4
        assert stats["entries"]["undo"] == 3 and stats["entries"]["best"] == 4
        assert 0 < stats["used_bytes"] <= stats["file_bytes"]


async def test_writes_in_worker_threads_reads_inline(tmp_path: Path, cb: ChainBuilder) -> None:
    """The documented calling convention: writes through trio.to_thread, reads inline."""
    blocks = cb.chain(6, txs_per_block=3)
    store = open_store(tmp_path / "s", cb)
    try:
        async with trio.open_nursery() as nursery:
            for blk in blocks:
                await trio.to_thread.run_sync(functools.partial(store.add_block, blk, make_head=True))
                assert store.head() == blk.header
                nursery.start_soon(trio.to_thread.run_sync, store.add_signatures, cb.sign_all(blk))
        assert store.get("data", next(iter(cb.state_at(blocks[-1]).values))[1])[0] == b"v"
        assert all(len(store.signatures(b.hash)) == 4 for b in blocks)
    finally:
        store.close()
