"""Damaged data files and a full disk: refused or reported by name, never a crash, nothing lost.

A ``data.mdb`` cut short used to kill the daemon with SIGBUS and an empty log (LMDB maps the file
and trusts it); it is now refused before LMDB maps it, checked here in a child process so that a
crash would show as a signal. A disk that fills up during a write is reported as a full disk,
the write is rolled back whole, and the store carries on once space returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdb.core.errors import DiskFullError, StorageError
from peerdb.core.model import Block
from peerdb.store import Store
from peerdb.store.datafile import check_data_file
from tests.helpers.chainbuilder import ChainBuilder

REPO = Path(__file__).resolve().parents[2]


def built_store(path: Path, blocks: int = 30, txs: int = 40) -> tuple[ChainBuilder, list[Block]]:
    cb = ChainBuilder()
    chain = cb.chain(blocks, txs_per_block=txs)
    with Store.open(path, cb.consortium, "m0", sync=False) as store:
        for block in chain:
            store.add_block(block, make_head=True)
    return cb, chain


def open_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    script = (
        "import sys\n"
        "from peerdb.core.errors import StorageError\n"
        "from peerdb.store import Store\n"
        "from tests.helpers.chainbuilder import ChainBuilder\n"
        "try:\n"
        f"    Store.open({str(path)!r}, ChainBuilder().consortium, 'm0', sync=False).close()\n"
        "except StorageError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(5)\n"
    )
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_data_file_cut_in_half_is_refused_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s"
    built_store(path)
    data = path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size // 2)
    result = open_in_child(path)
    assert result.returncode == 5, (result.returncode, result.stdout, result.stderr)  # not -SIGBUS
    assert "cut short" in result.stdout and f"{size // 2:,} bytes" in result.stdout
    assert "Restore the data directory from a backup" in result.stdout


def test_a_file_that_is_not_lmdb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"not a database at all" * 1000)
    with pytest.raises(StorageError, match="not an LMDB data file"):
        check_data_file(path)


def test_an_intact_file_passes_and_a_new_directory_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "s"
    check_data_file(path)  # nothing there yet
    built_store(path, blocks=3)
    check_data_file(path)


# --- a full disk ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of the test's own (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_nothing_is_lost_and_writing_resumes(small_disk: Path) -> None:
    path = small_disk / "store"
    cb = ChainBuilder()
    chain = cb.chain(400, txs_per_block=60)
    filler = small_disk / "filler"
    stored = 0
    with Store.open(path, cb.consortium, "m0", sync=True) as store:
        with pytest.raises(DiskFullError) as info:
            with filler.open("wb") as f:  # leave the store a little room, then fill the rest
                f.write(b"\0" * (20 * 1024 * 1024))
            for block in chain:
                store.add_block(block, make_head=True)
                stored += 1
        assert "no space left on the disk" in str(info.value) and "nothing of the failed write" in str(info.value)
        assert 0 < stored < len(chain)
        assert store.head().height == stored  # the failed block left no trace
        filler.unlink()  # space returns
        for block in chain[stored:stored + 5]:
            store.add_block(block, make_head=True)
    with Store.open(path, cb.consortium, "m0", sync=True) as store:
        assert store.head().height == stored + 5
        for block in chain[:stored + 5]:
            assert store.block(block.hash) == block
