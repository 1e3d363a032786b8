"""Bitcoin header parsing, linkage and proof of work, on Bitcoin mainnet's first three blocks."""

from __future__ import annotations

import struct

import pytest

from peerdb.anchor.errors import AnchorProofError
from peerdb.anchor.hashes import from_display, sha256d, to_display
from peerdb.anchor.headers import (
    POW_LIMITS,
    check_proof_of_work,
    compact_to_target,
    parse_header,
    verify_header_chain,
)
from peerdb.anchor.regtest import RegtestNode
from peerdb.core.errors import DecodeError

# Bitcoin mainnet blocks 0, 1, 2 (raw headers) and their well-known hashes.
MAINNET = [
    bytes.fromhex(
        "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27a"
        "c72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c"
    ),
    bytes.fromhex(
        "010000006fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000982051fd1e4ba744bb"
        "be680e1fee14677ba1a3c3540bf7b1cdb606e857233e0e61bc6649ffff001d01e36299"
    ),
    bytes.fromhex(
        "010000004860eb18bf1b1620e37e9490fc8a427514416fd75159ab86688e9a8300000000d5fdcc541e25de1c7a"
        "5addedf24858b8bb665c9f36ef744ee42c316022c90f9bb0bc6649ffff001d08d2bd61"
    ),
]
MAINNET_HASHES = [
    "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048",
    "000000006a625f06636b8bb6ac7b960a8d03705d1ace08b1a19da3fdcc99ddbd",
]


def test_parses_fields_and_hash_in_both_byte_orders() -> None:
    genesis = parse_header(MAINNET[0])
    assert genesis.hash_hex == MAINNET_HASHES[0]
    assert genesis.hash == from_display(MAINNET_HASHES[0]) == sha256d(MAINNET[0])
    assert to_display(genesis.merkle_root) == "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    assert (genesis.version, genesis.time, genesis.bits, genesis.nonce) == (1, 1231006505, 0x1D00FFFF, 2083236893)
    assert genesis.prev_hash == b"\x00" * 32


def test_mainnet_chain_links_and_has_work() -> None:
    chain = verify_header_chain(MAINNET, check_pow=True, pow_limit=POW_LIMITS["main"])
    assert [h.hash_hex for h in chain] == MAINNET_HASHES


def test_broken_link_names_the_header() -> None:
    with pytest.raises(AnchorProofError, match=r"headers\[2\]: previous hash .* does not link"):
        verify_header_chain([MAINNET[0], MAINNET[1], MAINNET[1]], check_pow=False)
    with pytest.raises(AnchorProofError, match=r"headers\[1\]"):
        verify_header_chain([MAINNET[0], MAINNET[2]], check_pow=False)


def test_forged_nonce_fails_proof_of_work_only_when_checked() -> None:
    forged = MAINNET[1][:76] + struct.pack("<I", 12345)
    with pytest.raises(AnchorProofError, match=r"headers\[0\]: hash .* does not meet its target"):
        verify_header_chain([forged], check_pow=True)
    assert verify_header_chain([forged], check_pow=False)[0].nonce == 12345


def test_target_easier_than_the_network_allows() -> None:
    # A regtest-difficulty header (bits 0x207fffff) is easy to forge; mainnet's limit refuses it.
    easy = struct.pack("<i32s32sIII", 1, b"\x00" * 32, b"\x01" * 32, 0, 0x207FFFFF, 0)
    nonce = 0
    while int.from_bytes(sha256d(easy[:76] + struct.pack("<I", nonce)), "little") > compact_to_target(0x207FFFFF):
        nonce += 1  # half of all hashes qualify; terminates within a few tries
    header = parse_header(easy[:76] + struct.pack("<I", nonce))
    check_proof_of_work(header, POW_LIMITS["regtest"])
    with pytest.raises(AnchorProofError, match="easier than the network allows"):
        check_proof_of_work(header, POW_LIMITS["main"])


@pytest.mark.parametrize(
    ("bits", "target"),
    [(0x1D00FFFF, 0xFFFF << 208), (0x207FFFFF, 0x7FFFFF << 232), (0x03123456, 0x123456), (0x02123456, 0x1234),
     (0x01123456, 0x12)],
)
def test_compact_targets(bits: int, target: int) -> None:
    assert compact_to_target(bits) == target


@pytest.mark.parametrize("bits", [0x04923456, 0x01003456, 0x00000000, 0xFF123456, 0x21010000, 0x22000100])
def test_negative_zero_and_overflowing_targets_are_refused(bits: int) -> None:
    with pytest.raises(AnchorProofError, match="not a valid positive target"):
        compact_to_target(bits)


@pytest.mark.parametrize("raw", [b"", MAINNET[0][:79], MAINNET[0] + b"\x00"])
def test_wrong_length_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="a block header is 80"):
        parse_header(raw)


def test_empty_chain_is_refused() -> None:
    with pytest.raises(AnchorProofError, match="empty header chain"):
        verify_header_chain([], check_pow=False)


@pytest.mark.slow
@pytest.mark.bitcoin
def test_regtest_headers_link_like_the_node_says(regtest: RegtestNode) -> None:
    rpc = regtest.rpc()
    tip = rpc.get_block_count()
    hashes = [rpc.get_block_hash(h) for h in range(tip - 5, tip + 1)]
    chain = verify_header_chain([rpc.get_block_header(h) for h in hashes], check_pow=False)
    assert [h.hash_hex for h in chain] == hashes
