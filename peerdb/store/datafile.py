"""Checks of the LMDB data file made before LMDB maps it.

LMDB maps ``data.mdb`` into memory and trusts it: a file cut short (a failed copy, a full disk
during a backup, a truncated restore) makes the first read past its end kill the process with
SIGBUS, with nothing in the log. So before opening, the two meta pages LMDB keeps at the head of
the file are read with plain file I/O: the newer one names the last page in use, and a file
shorter than that page's end is refused with a message that says what is wrong and what to do.

The layout read here is LMDB's on-disk format (``lmdb.h``/``mdb.c``, format version 1, 64-bit
builds): each meta page is a 16-byte page header followed by ``MDB_meta``::

    uint32 magic (0xBEEFC0DE), uint32 version, void *address, size_t mapsize,
    MDB_db dbs[2] (48 bytes each; dbs[0].md_pad holds the page size), pgno_t last_pg, txnid_t txnid
"""

from __future__ import annotations

import struct
from pathlib import Path

from peerdb.core.errors import StorageError

from .identity import DATA_FILE

MDB_MAGIC = 0xBEEFC0DE
PAGE_HEADER = 16
DB_RECORD = 48
_META = struct.Struct("<IIQQ")  # magic, version, address, mapsize
_PAGE_SIZE_AT = PAGE_HEADER + _META.size  # dbs[0].md_pad
_LAST_PAGE_AT = PAGE_HEADER + _META.size + 2 * DB_RECORD
_TAIL = struct.Struct("<QQ")  # last_pg, txnid
MIN_PAGE = 512
MAX_PAGE = 65536


def _meta(raw: bytes, offset: int) -> tuple[int, int, int] | None:
    """(page size, last page, txnid) of the meta page at ``offset``, or None if it is not one."""
    if len(raw) < offset + _LAST_PAGE_AT + _TAIL.size:
        return None
    magic, _version, _address, _mapsize = _META.unpack_from(raw, offset + PAGE_HEADER)
    if magic != MDB_MAGIC:
        return None
    page_size = struct.unpack_from("<I", raw, offset + _PAGE_SIZE_AT)[0]
    last_page, txnid = _TAIL.unpack_from(raw, offset + _LAST_PAGE_AT)
    return page_size, last_page, txnid


def check_data_file(directory: Path) -> None:
    """Refuse a ``data.mdb`` that LMDB would crash on (cut short, or not an LMDB file at all).
    A missing or empty file is fine: LMDB creates a new store."""
    path = directory / DATA_FILE
    try:
        size = path.stat().st_size
        if size == 0:
            return
        with path.open("rb") as f:
            head = f.read(2 * MAX_PAGE)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"{path}: cannot read the data file ({exc})") from None
    first = _meta(head, 0)
    if first is None:
        raise StorageError(f"{path}: not an LMDB data file (no LMDB meta page at its start); "
                           "restore the data directory from a backup, or move it away to resync from peers")
    page_size = first[0]
    if not (MIN_PAGE <= page_size <= MAX_PAGE and page_size & (page_size - 1) == 0):
        raise StorageError(f"{path}: its LMDB meta page names a page size of {page_size}; the file is damaged")
    second = _meta(head, page_size)
    metas = [m for m in (first, second) if m is not None]
    last_page = max(metas, key=lambda m: m[2])[1]
    needed = (last_page + 1) * page_size
    if size < needed:
        raise StorageError(
            f"{path}: the data file is cut short: {size:,} bytes, but the store's last page ({last_page:,}) "
            f"ends at {needed:,}; it was truncated (a failed copy or restore, or a full disk while it was "
            "copied). Restore the data directory from a backup (docs/operations-restore.md), or move it "
            "away and let the node resync from its peers")
