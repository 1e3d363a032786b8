"""The signing guard: never two blocks at one height, across restarts, kills, copies and restores."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peerdb.core.errors import DoubleSignRefused, StorageError
from peerdb.core.model import BlockSignature
from peerdb.store import Store
from tests.helpers.chainbuilder import ChainBuilder
from tests.helpers.store_worker import crash_builder

REPO = Path(__file__).resolve().parents[2]
A = b"\xaa" * 32
B = b"\xbb" * 32


def open_store(path: Path, cb: ChainBuilder, *, accept_restored: bool = False) -> Store:
    return Store.open(path, cb.consortium, "m0", sync=False, accept_restored=accept_restored)


def test_guard_refuses_a_second_block_at_a_height(tmp_path: Path) -> None:
    cb = ChainBuilder()
    with open_store(tmp_path / "s", cb) as store:
        store.guard_sign(5, 0, A)
        store.guard_sign(5, 0, A)  # the same block again is fine (a resend)
        with pytest.raises(DoubleSignRefused, match="already signed block aaaa.* at height 5"):
            store.guard_sign(5, 0, B)
        with pytest.raises(DoubleSignRefused):
            store.guard_sign(5, 3, B)  # a later round does not make a second block at 5 safe
        store.guard_sign(6, 0, B)
        assert store.guard_record(5) == (0, A)
        assert store.guard_record(6) == (0, B)
        assert store.guard_record(7) is None
    with open_store(tmp_path / "s", cb) as store:  # and after a clean restart
        with pytest.raises(DoubleSignRefused):
            store.guard_sign(5, 1, B)
        assert store.guard_record(6) == (0, B)


def test_guard_refuses_when_the_store_holds_our_signature_on_another_block(tmp_path: Path) -> None:
    """A signature we made before a restore comes back from peers: it alone blocks a conflict."""
    cb = ChainBuilder()
    b1 = cb.block(cb.genesis)
    a, b, _ev = cb.double_sign("m1", b1)
    with open_store(tmp_path / "s", cb) as store:
        store.add_block(b1, make_head=True)
        store.add_block(a, [cb.sign(a, "m0")])
        store.add_block(b, [cb.sign(b, "m1")])
        with pytest.raises(DoubleSignRefused, match="holds m0's signature on block"):
            store.guard_sign(2, 0, b.hash)
        store.guard_sign(2, 0, a.hash)


def test_guard_arguments_are_checked(tmp_path: Path) -> None:
    cb = ChainBuilder()
    with open_store(tmp_path / "s", cb) as store:
        with pytest.raises(StorageError, match="bad arguments"):
            store.guard_sign(0, 0, A)
        with pytest.raises(StorageError, match="bad arguments"):
            store.guard_sign(3, 0, b"short")
        with pytest.raises(StorageError, match="not m0's on this block"):
            store.guard_sign(3, 0, A, BlockSignature.create(cb.keys["m1"], cb.cid, "m1", A))
        assert store.guard_record(3) is None


def test_guard_can_store_our_signature_in_the_same_commit(tmp_path: Path) -> None:
    cb = ChainBuilder()
    b1 = cb.block(cb.genesis)
    with open_store(tmp_path / "s", cb) as store:
        store.add_block(b1, make_head=True)
        store.guard_sign(1, 0, b1.hash, cb.sign(b1, "m0"))
        assert store.guard_record(1) == (0, b1.hash)
        assert store.signatures(b1.hash) == [cb.sign(b1, "m0")]
        store.guard_sign(1, 0, b1.hash, cb.sign(b1, "m0"))  # again: still one signature
        assert len(store.signatures(b1.hash)) == 1


def guard_in_subprocess(path: Path, height: int, round_: int, block_hash: bytes) -> tuple[int, str]:
    """Run the guard worker; if it reports GUARDED, SIGKILL it (no clean shutdown)."""
    with subprocess.Popen([sys.executable, "-m", "tests.helpers.store_worker", "guard", str(path), str(height),
                           str(round_), block_hash.hex()], cwd=REPO, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line == "GUARDED":
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
    return proc.returncode, line


@pytest.mark.slow
def test_guard_survives_sigkill_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "s"
    code, line = guard_in_subprocess(path, 5, 0, A)
    assert (code, line) == (-signal.SIGKILL, "GUARDED")
    code, line = guard_in_subprocess(path, 5, 2, B)  # a new process, a conflicting block
    assert code == 3 and line.startswith("REFUSED signing guard: already signed block aaaa")
    with Store.open(path, crash_builder().consortium, "m0") as store:
        assert store.guard_record(5) == (0, A)
        with pytest.raises(DoubleSignRefused):
            store.guard_sign(5, 1, B)
        store.guard_sign(5, 0, A)


def test_copied_data_directory_is_refused_until_accepted(tmp_path: Path) -> None:
    cb = ChainBuilder()
    original, copy = tmp_path / "original", tmp_path / "copy"
    with open_store(original, cb) as store:
        for blk in cb.chain(3):
            store.add_block(blk, make_head=True)
        store.guard_sign(4, 0, A)
    shutil.copytree(original, copy)
    with pytest.raises(StorageError, match="copied or restored from a backup.*--accept-restored"):
        open_store(copy, cb)
    with open_store(copy, cb, accept_restored=True) as store:
        assert store.guard_locked()
        assert store.stats()["guard_locked"] is True
        with pytest.raises(DoubleSignRefused, match="restored from a backup"):
            store.guard_sign(9, 0, B)  # nothing until caught up, not even a fresh height
        store.set_guard_floor(8)  # caught up: the network is at height 8
        assert not store.guard_locked() and store.guard_floor() == 8
        with pytest.raises(DoubleSignRefused, match="guard floor 8"):
            store.guard_sign(8, 0, B)
        store.guard_sign(9, 0, B)
        with pytest.raises(StorageError, match="cannot lower"):
            store.set_guard_floor(7)
        copy_instance = store.instance_id
    with open_store(copy, cb) as store:  # accepted once: the copy is now a store of its own
        assert store.guard_floor() == 8 and store.guard_record(9) == (0, B)
        assert store.instance_id == copy_instance
    with open_store(original, cb) as store:  # the original is untouched
        assert store.guard_floor() is None and not store.guard_locked()
        assert store.instance_id != copy_instance
        assert store.head().height == 3


def test_restore_into_the_same_path_is_refused(tmp_path: Path) -> None:
    """rm -r + copy back can reuse the inode number; the inode generation still differs."""
    cb = ChainBuilder()
    live, backup = tmp_path / "live", tmp_path / "backup"
    with open_store(live, cb) as store:
        store.guard_sign(1, 0, A)
    shutil.copytree(live, backup)
    with open_store(live, cb) as store:
        store.guard_sign(2, 0, A)  # signed after the backup was taken
    shutil.rmtree(live)
    shutil.copytree(backup, live)
    with pytest.raises(StorageError, match="copied or restored"):
        open_store(live, cb)
    with open_store(live, cb, accept_restored=True) as store:
        assert store.guard_record(2) is None  # the backup forgot it: exactly why signing is locked
        with pytest.raises(DoubleSignRefused):
            store.guard_sign(2, 0, B)


def test_accept_restored_locks_signing_even_when_no_copy_is_detected(tmp_path: Path) -> None:
    """The operator's switch for restores the store cannot see (VM snapshot rollback, an empty
    directory for a member that signed before)."""
    cb = ChainBuilder()
    fresh = tmp_path / "fresh"
    with open_store(fresh, cb, accept_restored=True) as store:
        assert store.guard_locked()
        with pytest.raises(DoubleSignRefused):
            store.guard_sign(1, 0, A)
    with open_store(fresh, cb) as store:  # the lock is persisted until the floor is set
        assert store.guard_locked()
        store.set_guard_floor(0)
        store.guard_sign(1, 0, A)
    with open_store(fresh, cb, accept_restored=True) as store:
        assert store.guard_locked() and store.guard_floor() == 0
        with pytest.raises(DoubleSignRefused):
            store.guard_sign(2, 0, A)
