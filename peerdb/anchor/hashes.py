"""Bitcoin's double SHA-256 and its two byte orders.

Bitcoin hashes are computed and serialised in *internal* order (the raw digest bytes), but RPC
and block explorers *display* them reversed, as if the digest were a little-endian number. Mixing
the two is the classic bug, so PeerDB keeps hashes as internal-order ``bytes`` everywhere and
converts only at the RPC edge with these two functions.
"""

from __future__ import annotations

import hashlib

from peerdb.core.errors import DecodeError

HASH_LEN = 32


def sha256d(data: bytes) -> bytes:
    """SHA-256 of SHA-256: txids, block hashes and Bitcoin Merkle nodes."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def to_display(internal: bytes) -> str:
    """Internal-order hash → the hex string RPC and explorers show."""
    if len(internal) != HASH_LEN:
        raise ValueError(f"hash must be {HASH_LEN} bytes, got {len(internal)}")
    return internal[::-1].hex()


def from_display(display: str, what: str = "hash") -> bytes:
    """Displayed hex (as RPC returns it) → internal-order bytes; rejects anything else."""
    if not isinstance(display, str) or len(display) != 2 * HASH_LEN:
        raise DecodeError(f"{what}: expected {2 * HASH_LEN} hex digits, got {display!r:.80}")
    try:
        return bytes.fromhex(display)[::-1]
    except ValueError:
        raise DecodeError(f"{what}: not hex: {display!r:.80}") from None
