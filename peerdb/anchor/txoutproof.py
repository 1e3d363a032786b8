"""Parse and check ``gettxoutproof`` output: does a Bitcoin block commit to these txids?

CONSENSUS-CRITICAL for auditors: this mirrors Bitcoin Core's ``CMerkleBlock`` deserialisation and
``CPartialMerkleTree::ExtractMatches`` (src/merkleblock.cpp) check for check, because an auditor
must accept exactly the proofs a Bitcoin node would. Any change needs the tests against the
node's ``verifytxoutproof`` to keep passing.

Wire format: 80-byte block header, then the partial Merkle tree: u32 total transaction count,
CompactSize count of hashes, the hashes (32 bytes each, internal order), CompactSize count of
flag bytes, the flag bytes (bits read least significant first). The tree is walked depth first;
each node consumes one flag bit ("a matched txid is below me"); a node with bit 0, or a leaf,
consumes one hash. Where Bitcoin pairs an odd last node with itself, a proof could otherwise
present a forged subtree whose two halves are equal (CVE-2012-2459), so equal left and right
children are refused, as Core does.

What needs the chain is left to the caller: Core's ``verifytxoutproof`` also checks that the
block is in its best chain and that the proof's transaction count equals the block's (the count
is not committed by the Merkle root; ``getblockheader``'s ``nTx`` gives it).

Two deliberate differences, both refusing what Core tolerates but never writes, so that one proof
has exactly one encoding: Core ignores the padding bits after the last used flag bit (we require
zeros) and ``verifytxoutproof`` ignores bytes after the proof (we refuse them). Proofs produced
by ``gettxoutproof`` are accepted either way; the tests check both differences against the node.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from peerdb.core.errors import DecodeError, LimitError, TrailingBytesError, TruncatedError

from .errors import AnchorProofError
from .hashes import HASH_LEN, sha256d, to_display
from .headers import HEADER_LEN, BlockHeader, parse_header

MAX_BLOCK_WEIGHT = 4_000_000
"""Bitcoin's consensus block weight limit."""

MIN_TRANSACTION_WEIGHT = 4 * 60
"""Weight of the smallest possible transaction (60 bytes without witness), as in Core."""

MAX_TRANSACTIONS = MAX_BLOCK_WEIGHT // MIN_TRANSACTION_WEIGHT
"""Core's bound on the claimed transaction count (16,666): no block can hold more."""

MAX_COMPACT_SIZE = 0x02000000
"""Core's MAX_SIZE: ReadCompactSize refuses larger counts."""

MAX_TXOUTPROOF_BYTES = HEADER_LEN + 4 + 9 + MAX_TRANSACTIONS * HASH_LEN + 9 + (2 * MAX_TRANSACTIONS + 7) // 8
"""No valid proof is larger: at most one hash per transaction, and the tree (at most about twice
as many nodes as leaves) needs one flag bit per node visited."""


@dataclass(frozen=True)
class TxOutProof:
    """A checked proof: the block header and the txids it proves, with their positions."""

    header: BlockHeader
    total_transactions: int
    matches: tuple[tuple[bytes, int], ...]
    """(txid in internal order, index in the block) for each matched transaction, in block order."""

    @property
    def txids(self) -> tuple[bytes, ...]:
        return tuple(txid for txid, _ in self.matches)

    @property
    def txids_hex(self) -> tuple[str, ...]:
        return tuple(to_display(txid) for txid, _ in self.matches)


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedError(f"{self.what}.{field}: needs {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def compact_size(self, field: str) -> int:
        """Core's ReadCompactSize: minimal encoding only, at most MAX_COMPACT_SIZE."""
        first = self.take(1, field)[0]
        if first < 0xFD:
            value, minimum = first, 0
        elif first == 0xFD:
            value, minimum = struct.unpack("<H", self.take(2, field))[0], 0xFD
        elif first == 0xFE:
            value, minimum = struct.unpack("<I", self.take(4, field))[0], 0x10000
        else:
            value, minimum = struct.unpack("<Q", self.take(8, field))[0], 0x100000000
        if value < minimum:
            raise DecodeError(f"{self.what}.{field}: non-canonical CompactSize")
        if value > MAX_COMPACT_SIZE:
            raise LimitError(f"{self.what}.{field}: CompactSize {value} exceeds {MAX_COMPACT_SIZE}")
        return value


def _tree_width(total: int, height: int) -> int:
    return (total + (1 << height) - 1) >> height


def parse_txoutproof(data: bytes, what: str = "txoutproof") -> TxOutProof:
    """Decode a proof and check it the way Core's ``verifytxoutproof`` does (minus the chain lookup).

    Raises :class:`DecodeError` subclasses for malformed bytes and :class:`AnchorProofError` for
    a tree that does not hold; every message names the part of the proof at fault.
    """
    if not isinstance(data, bytes):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_TXOUTPROOF_BYTES:
        raise LimitError(f"{what}: {len(data)} bytes exceeds the limit of {MAX_TXOUTPROOF_BYTES}")
    reader = _Reader(data, what)
    header = parse_header(reader.take(HEADER_LEN, "header"), f"{what}.header")
    total = struct.unpack("<I", reader.take(4, "total_transactions"))[0]
    n_hashes = reader.compact_size("hashes")
    if n_hashes * HASH_LEN > len(data) - reader.pos:
        raise TruncatedError(f"{what}.hashes: {n_hashes} hashes claimed, {len(data) - reader.pos} bytes left")
    hashes = [reader.take(HASH_LEN, "hashes") for _ in range(n_hashes)]
    n_flag_bytes = reader.compact_size("flags")
    flag_bytes = reader.take(n_flag_bytes, "flags")
    if reader.pos != len(data):
        raise TrailingBytesError(f"{what}: {len(data) - reader.pos} trailing bytes after the flags")
    bits = [bool(flag_bytes[i // 8] >> (i % 8) & 1) for i in range(8 * n_flag_bytes)]

    # The checks of CPartialMerkleTree::ExtractMatches, in Core's order.
    if total == 0:
        raise AnchorProofError(f"{what}.total_transactions: zero transactions")
    if total > MAX_TRANSACTIONS:
        raise AnchorProofError(f"{what}.total_transactions: {total} exceeds the most a block can hold ({MAX_TRANSACTIONS})")
    if n_hashes > total:
        raise AnchorProofError(f"{what}.hashes: {n_hashes} hashes for {total} transactions")
    if len(bits) < n_hashes:
        raise AnchorProofError(f"{what}.flags: {len(bits)} flag bits for {n_hashes} hashes")
    height = 0
    while _tree_width(total, height) > 1:
        height += 1

    walker = _Walker(total, hashes, bits, what)
    root = walker.walk(height, 0)
    if (walker.bits_used + 7) // 8 != (len(bits) + 7) // 8:
        raise AnchorProofError(f"{what}.flags: {len(bits) - walker.bits_used} flag bits left unused beyond padding")
    if any(bits[walker.bits_used:]):
        raise AnchorProofError(f"{what}.flags: non-zero padding bits after the last used flag bit")
    if walker.hashes_used != len(hashes):
        raise AnchorProofError(f"{what}.hashes: {len(hashes) - walker.hashes_used} hashes left unused")
    if root != header.merkle_root:
        raise AnchorProofError(
            f"{what}: tree root {to_display(root)} is not the header's merkle root {to_display(header.merkle_root)}"
        )
    if not walker.matches:
        raise AnchorProofError(f"{what}: proves no transaction")
    return TxOutProof(header, total, tuple(walker.matches))


class _Walker:
    """CPartialMerkleTree::TraverseAndExtract, raising where Core sets ``fBad``.

    Recursion depth is the tree height, at most 15 for MAX_TRANSACTIONS leaves.
    """

    def __init__(self, total: int, hashes: list[bytes], bits: list[bool], what: str) -> None:
        self.total = total
        self.hashes = hashes
        self.bits = bits
        self.what = what
        self.bits_used = 0
        self.hashes_used = 0
        self.matches: list[tuple[bytes, int]] = []

    def walk(self, height: int, pos: int) -> bytes:
        if self.bits_used >= len(self.bits):
            raise AnchorProofError(f"{self.what}.flags: ran out of flag bits at height {height}, position {pos}")
        parent_of_match = self.bits[self.bits_used]
        self.bits_used += 1
        if height == 0 or not parent_of_match:
            if self.hashes_used >= len(self.hashes):
                raise AnchorProofError(f"{self.what}.hashes: ran out of hashes at height {height}, position {pos}")
            node = self.hashes[self.hashes_used]
            self.hashes_used += 1
            if height == 0 and parent_of_match:
                self.matches.append((node, pos))
            return node
        left = self.walk(height - 1, pos * 2)
        if pos * 2 + 1 < _tree_width(self.total, height - 1):
            right = self.walk(height - 1, pos * 2 + 1)
            if right == left:
                raise AnchorProofError(
                    f"{self.what}: identical left and right subtrees at height {height}, position {pos} "
                    "(duplicate-hash forgery, CVE-2012-2459)"
                )
        else:
            right = left
        return sha256d(left + right)
