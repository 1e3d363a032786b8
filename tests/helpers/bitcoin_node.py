"""Test support for anchoring: the session's regtest node and a reference txoutproof builder.

``tests/conftest.py`` registers this module as a plugin, so any test may take the ``regtest``
fixture as an argument. The node is started on first use only, gets a fresh datadir under pytest's
temporary directory and free ports on 127.0.0.1, and is stopped (by RPC, then by PID if needed)
when the session ends.

:func:`build_txoutproof` is Bitcoin Core's ``CPartialMerkleTree`` constructor transcribed
(``TraverseAndBuild``); tests check it byte for byte against the node's ``gettxoutproof`` and
then use it to make proofs of any shape (and forged ones) without a node.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence

import pytest

from peerdb.anchor.hashes import from_display, sha256d
from peerdb.anchor.regtest import LITECOIND, RegtestNode


@pytest.fixture(scope="session")
def regtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegtestNode]:
    """One regtest node for the whole session, wallet funded (101 blocks mined)."""
    if not os.access(LITECOIND, os.X_OK):
        pytest.fail(f"{LITECOIND} is missing: run scripts/bootstrap (installs Debian's litecoind)")
    node = RegtestNode(tmp_path_factory.mktemp("regtest"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def make_block(node: RegtestNode, extra_txs: int) -> tuple[str, list[str]]:
    """Mine a block holding ``extra_txs`` wallet payments besides the coinbase.

    Returns the block hash and its txids (display hex, block order).
    """
    rpc = node.rpc()
    node.mine(1)  # empty the mempool so the next block holds exactly our payments
    address = rpc.call("getnewaddress", "", "legacy")
    for _ in range(extra_txs):
        rpc.call("sendtoaddress", address, "0.01")
    (block_hash,) = node.mine(1)
    txids = [str(t) for t in rpc.call("getblock", block_hash)["tx"]]
    if len(txids) != extra_txs + 1:
        raise RuntimeError(f"block has {len(txids)} txs, expected {extra_txs + 1}")
    return block_hash, txids


def _width(total: int, height: int) -> int:
    return (total + (1 << height) - 1) >> height


def _compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def bitcoin_merkle_root(txids: Sequence[bytes]) -> bytes:
    """Bitcoin's block Merkle root over internal-order txids (odd node paired with itself)."""
    level = list(txids)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def build_txoutproof(header: bytes, txids: Sequence[bytes], matched: Sequence[bool]) -> bytes:
    """Serialized CMerkleBlock for a block with ``txids`` (internal order), matching where True."""
    total = len(txids)
    bits: list[bool] = []
    hashes: list[bytes] = []

    def calc(height: int, pos: int) -> bytes:
        if height == 0:
            return txids[pos]
        left = calc(height - 1, pos * 2)
        right = calc(height - 1, pos * 2 + 1) if pos * 2 + 1 < _width(total, height - 1) else left
        return sha256d(left + right)

    def build(height: int, pos: int) -> None:
        parent = any(matched[p] for p in range(pos << height, min((pos + 1) << height, total)))
        bits.append(parent)
        if height == 0 or not parent:
            hashes.append(calc(height, pos))
        else:
            build(height - 1, pos * 2)
            if pos * 2 + 1 < _width(total, height - 1):
                build(height - 1, pos * 2 + 1)

    height = 0
    while _width(total, height) > 1:
        height += 1
    build(height, 0)
    flags = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        flags[i // 8] |= bit << (i % 8)
    return (
        header
        + struct.pack("<I", total)
        + _compact_size(len(hashes))
        + b"".join(hashes)
        + _compact_size(len(flags))
        + bytes(flags)
    )


def txids_internal(txids_hex: Sequence[str]) -> list[bytes]:
    return [from_display(t) for t in txids_hex]
