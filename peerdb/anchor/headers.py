"""Bitcoin block headers: parsing, hashing, linkage and (on Bitcoin networks) proof of work.

An anchor proof carries the header of the block that holds the anchor transaction and the
headers built on it up to the confirmation depth. Offline, an auditor can check that they link
and that each meets the target it claims. Proof of work is checked only where it is SHA-256d
(Bitcoin's networks): the tests' regtest ``litecoind`` uses scrypt, whose headers would fail.

What this cannot do offline: tell whether the claimed targets match the network's difficulty
schedule, or whether the headers are in the best chain. Checking each header against the
network's ``pow_limit`` bounds a forger to at least that much work per header; the auditor's
``--bitcoin-rpc`` check (are these headers in the node's best chain?) is the strong one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from peerdb.core.errors import DecodeError

from .errors import AnchorProofError
from .hashes import sha256d, to_display

HEADER_LEN = 80
"""Serialised Bitcoin block header: version, prev hash, merkle root, time, bits, nonce."""

POW_LIMITS: dict[str, int] = {
    "main": 0x00000000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF,
    "test": 0x00000000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF,
    "testnet4": 0x00000000FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF,
    "signet": 0x00000377AE000000000000000000000000000000000000000000000000000000,
    "regtest": 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF,
}
"""Each Bitcoin network's easiest allowed target (``consensus.powLimit``), keyed by the
``chain`` name that ``getblockchaininfo`` reports."""


@dataclass(frozen=True)
class BlockHeader:
    """A parsed header; hashes are in internal byte order (see :mod:`.hashes`)."""

    raw: bytes
    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int
    hash: bytes

    @property
    def hash_hex(self) -> str:
        return to_display(self.hash)


def parse_header(raw: bytes, what: str = "header") -> BlockHeader:
    """Parse exactly 80 bytes."""
    if not isinstance(raw, bytes):
        raise DecodeError(f"{what}: expected bytes, got {type(raw).__name__}")
    if len(raw) != HEADER_LEN:
        raise DecodeError(f"{what}: {len(raw)} bytes, a block header is {HEADER_LEN}")
    version, prev_hash, merkle_root, time, bits, nonce = struct.unpack("<i32s32sIII", raw)
    return BlockHeader(raw, version, prev_hash, merkle_root, time, bits, nonce, sha256d(raw))


def compact_to_target(bits: int) -> int:
    """Bitcoin Core's ``arith_uint256::SetCompact``, refusing negative, zero and overflowing targets."""
    size = bits >> 24
    word = bits & 0x007FFFFF
    target = word >> (8 * (3 - size)) if size <= 3 else word << (8 * (size - 3))
    negative = word != 0 and bits & 0x00800000 != 0
    overflow = word != 0 and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32))
    if negative or overflow or target == 0:
        raise AnchorProofError(f"bits: 0x{bits:08x} is not a valid positive target")
    return target


def check_proof_of_work(header: BlockHeader, pow_limit: int, what: str = "header") -> None:
    """The header's SHA-256d hash meets its own target, and that target is no easier than ``pow_limit``."""
    target = compact_to_target(header.bits)
    if target > pow_limit:
        raise AnchorProofError(f"{what}: target of bits 0x{header.bits:08x} is easier than the network allows")
    if int.from_bytes(header.hash, "little") > target:
        raise AnchorProofError(f"{what}: hash {header.hash_hex} does not meet its target (bits 0x{header.bits:08x})")


def verify_header_chain(
    raws: Sequence[bytes],
    *,
    check_pow: bool,
    pow_limit: int = POW_LIMITS["main"],
    what: str = "headers",
) -> list[BlockHeader]:
    """Parse headers that must each build on the previous one; optionally check proof of work."""
    if not raws:
        raise AnchorProofError(f"{what}: empty header chain")
    headers: list[BlockHeader] = []
    for i, raw in enumerate(raws):
        header = parse_header(raw, f"{what}[{i}]")
        if headers and header.prev_hash != headers[-1].hash:
            raise AnchorProofError(
                f"{what}[{i}]: previous hash {to_display(header.prev_hash)} does not link to "
                f"{what}[{i - 1}] {headers[-1].hash_hex}"
            )
        if check_pow:
            check_proof_of_work(header, pow_limit, f"{what}[{i}]")
        headers.append(header)
    return headers
