"""Which data directory is this? Restored-backup detection and the one-process lock.

The signing guard is only as good as its memory: a data directory restored from a backup (or
copied to a second machine) has forgotten every signature made after the copy, and signing from
it can double-sign. LMDB cannot tell a copy from the original, so the store records the identity
of its data file in the ``meta`` table: ``(st_dev, st_ino, generation)``. A copy or a restore
creates a new file, with a new inode or on another device, which no longer matches, and
:class:`Store.open` refuses it until the operator says, with ``accept_restored``, that it knows.

The inode *generation* (``FS_IOC_GETVERSION``) matters because file systems reuse inode numbers
at once: on ext4, ``rm -r data; cp -r backup data`` can give the restored ``data.mdb`` the very
inode number of the deleted one, but never the same generation. Where the file system does not
report a generation (tmpfs, some network file systems), it is recorded as None and the check
rests on device and inode number alone.

Known blind spot: overwriting ``data.mdb`` in place with ``cp`` onto the existing file keeps its
inode. ``docs/operations-restore.md`` tells operators to restore into a fresh directory, and the
guard also refuses to sign at a height where the store holds this member's own signature on
another block (which catching up from peers brings back).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from peerdb.core.errors import StorageError

DATA_FILE = "data.mdb"
DIR_LOCK_FILE = "peerdb-store.lock"

FS_IOC_GETVERSION = 0x80087601
"""Linux ``_IOR('v', 1, long)``: the inode's generation number (the kernel writes 32 bits)."""

Identity = tuple[int, int, int | None]
"""(st_dev, st_ino, inode generation or None where the file system has none)."""


def _generation(fd: int) -> int | None:
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, FS_IOC_GETVERSION, buf, True)
    except OSError:
        return None
    value: int = struct.unpack("=I", bytes(buf[:4]))[0]
    return value


def data_file_identity(path: Path) -> Identity:
    try:
        fd = os.open(path / DATA_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"{path}: cannot open the data file ({exc})") from None
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino, _generation(fd)
    finally:
        os.close(fd)


def restored_message(path: Path, recorded: object, found: Identity) -> str:
    return (
        f"{path}: this data directory was copied or restored from a backup (its data file is not the one "
        f"the store was created in: device/inode/generation {recorded} recorded, {list(found)} found). Signing from it could double-sign, because a backup does not remember what this member "
        "signed after it was taken. Make sure no other node runs with this member's key, then start once "
        "with --accept-restored: the node will not sign anything until it has caught up with the network, "
        "and then never at a height at or below the network's height at that moment. "
        "See docs/operations-restore.md."
    )


class DirLock:
    """An exclusive ``flock`` on a file in the data directory: one process per store.

    LMDB itself allows several processes on one environment, but two nodes sharing one member's
    store would both sign, and each would cache a head the other moves. The kernel drops the lock
    when the process dies, so a crash never leaves a stale lock behind.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, directory: Path) -> "DirLock":
        path = directory / DIR_LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"{directory}: cannot open the store lock file ({exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(f"{directory}: the store is already open in another process (or another "
                                   "Store in this one); one node per data directory") from None
            raise StorageError(f"{directory}: cannot lock the store ({exc})") from None
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
