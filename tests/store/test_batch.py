"""Store.batch: several writes as one durable transaction (what catch-up uses)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from peerdb.store import Store
from tests.helpers.chainbuilder import ChainBuilder


def test_batch_commits_all_blocks_at_once_and_reads_its_own_writes(tmp_path: Path) -> None:
    cb = ChainBuilder(n_members=4)
    blocks = cb.chain(4, txs_per_block=2)
    store = Store.open(tmp_path / "s", cb.consortium, cb.members[0], sync=True)
    seen_elsewhere: list[bool] = []
    with store.batch():
        for b in blocks:
            store.add_block(b, cb.sign_all(b), make_head=True)
            with store.state_reader_at(b.hash):  # the batch's own, uncommitted block
                pass
        assert store.head().hash == blocks[-1].hash
        other = threading.Thread(target=lambda: seen_elsewhere.append(store.header(blocks[0].hash) is not None))
        other.start()
        other.join()
    assert seen_elsewhere == [False]  # another thread saw nothing before the commit
    store.close()
    reopened = Store.open(tmp_path / "s", cb.consortium, cb.members[0])
    assert reopened.head().hash == blocks[-1].hash
    assert all(reopened.has_block(b.hash) for b in blocks)
    reopened.close()


def test_a_failing_batch_leaves_nothing(tmp_path: Path) -> None:
    cb = ChainBuilder(n_members=4)
    first, *rest = cb.chain(3, txs_per_block=1)
    store = Store.open(tmp_path / "s", cb.consortium, cb.members[0], sync=True)
    store.add_block(first, cb.sign_all(first), make_head=True)
    with pytest.raises(RuntimeError):
        with store.batch():
            for b in rest:
                store.add_block(b, cb.sign_all(b), make_head=True)
            raise RuntimeError("crash in the middle of a catch-up batch")
    assert store.head().hash == first.hash
    assert not any(store.has_block(b.hash) for b in rest)
    store.close()


def test_a_batch_that_writes_nothing_commits_nothing_and_holds_no_writer_lock(tmp_path: Path) -> None:
    cb = ChainBuilder(n_members=4)
    [block] = cb.chain(1, txs_per_block=1)
    store = Store.open(tmp_path / "s", cb.consortium, cb.members[0], sync=True)
    commits: list[float] = []
    store.on_commit = commits.append
    written_meanwhile: list[bool] = []
    with store.batch():
        assert store.in_batch()
        store.head()  # reads only
        # Another thread may write while this batch has not written: no writer lock is held yet.
        other = threading.Thread(target=lambda: written_meanwhile.append(
            store.add_block(block, cb.sign_all(block), make_head=True) is not None))
        other.start()
        other.join()
    assert not store.in_batch()
    assert written_meanwhile == [True]
    assert len(commits) == 1  # the other thread's write; the empty batch committed nothing
    store.close()


def test_a_batch_is_per_thread(tmp_path: Path) -> None:
    """A batch open in one thread does not capture another thread's writes."""
    cb = ChainBuilder(n_members=4)
    first, second = cb.chain(2, txs_per_block=1)
    store = Store.open(tmp_path / "s", cb.consortium, cb.members[0], sync=True)
    with store.batch():
        store.add_block(first, cb.sign_all(first), make_head=True)
        seen: list[bool] = []
        other = threading.Thread(target=lambda: seen.append(store.in_batch()))
        other.start()
        other.join()
        assert seen == [False]
    store.add_block(second, cb.sign_all(second), make_head=True)
    assert store.head().hash == second.hash
    store.close()
