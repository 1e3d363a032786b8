"""The gettxoutproof parser: shapes, every rejection rule, and agreement with the node."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdb.anchor.errors import AnchorProofError, BitcoinRPCError
from peerdb.anchor.hashes import sha256d, to_display
from peerdb.anchor.regtest import RegtestNode
from peerdb.anchor.txoutproof import MAX_TRANSACTIONS, parse_txoutproof
from peerdb.core.errors import DecodeError, LimitError, TrailingBytesError, TruncatedError
from tests.helpers.bitcoin_node import (
    bitcoin_merkle_root,
    build_txoutproof,
    make_block,
    txids_internal,
)


def fake_txids(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(4, "little")).digest() for i in range(n)]


def header_for(root: bytes) -> bytes:
    return struct.pack("<i32s32sIII", 0x20000000, b"\x07" * 32, root, 1_700_000_000, 0x207FFFFF, 42)


def proof_for(n: int, matched: set[int]) -> tuple[bytes, list[bytes]]:
    txids = fake_txids(n)
    proof = build_txoutproof(header_for(bitcoin_merkle_root(txids)), txids, [i in matched for i in range(n)])
    return proof, txids


# -- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("n", "matched"),
    [(1, {0}), (2, {0}), (2, {1}), (2, {0, 1}), (3, {2}), (3, {0, 2}), (7, {6}), (7, {1, 4, 6}),
     (8, {3}), (9, {8}), (17, {0, 16}), (100, {37, 38, 99})],
)
def test_matches_exactly_the_marked_transactions(n: int, matched: set[int]) -> None:
    proof, txids = proof_for(n, matched)
    parsed = parse_txoutproof(proof)
    assert parsed.total_transactions == n
    assert parsed.matches == tuple((txids[i], i) for i in sorted(matched))
    assert parsed.header.merkle_root == bitcoin_merkle_root(txids)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=80).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))))
def test_any_shape_round_trips(case: tuple[int, set[int]]) -> None:
    n, matched = case
    proof, txids = proof_for(n, matched)
    assert parse_txoutproof(proof).txids == tuple(txids[i] for i in sorted(matched))


def test_display_order_is_reversed_internal_order() -> None:
    proof, txids = proof_for(3, {1})
    assert parse_txoutproof(proof).txids_hex == (txids[1][::-1].hex(),)


# -- rejections ---------------------------------------------------------------------------------

def _flip(data: bytes, index: int, mask: int = 1) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


HASHES_AT = 80 + 4 + 1  # header, tx count, one-byte hash count


def test_flipped_hash_breaks_the_root() -> None:
    proof, _ = proof_for(7, {3})
    with pytest.raises(AnchorProofError, match="not the header's merkle root"):
        parse_txoutproof(_flip(proof, HASHES_AT + 5))


def test_flipped_header_root_is_rejected() -> None:
    proof, _ = proof_for(7, {3})
    with pytest.raises(AnchorProofError, match="merkle root"):
        parse_txoutproof(_flip(proof, 4 + 32 + 3))


def test_every_truncation_is_rejected() -> None:
    proof, _ = proof_for(9, {2, 8})
    for cut in range(len(proof)):
        with pytest.raises((TruncatedError, AnchorProofError, DecodeError)):
            parse_txoutproof(proof[:cut])


def test_truncation_names_the_field() -> None:
    proof, _ = proof_for(9, {2})
    with pytest.raises(TruncatedError, match="txoutproof.hashes"):
        parse_txoutproof(proof[: HASHES_AT + 40])
    with pytest.raises(TruncatedError, match="txoutproof.header"):
        parse_txoutproof(proof[:50])


def test_trailing_bytes_are_rejected() -> None:
    proof, _ = proof_for(3, {0})
    with pytest.raises(TrailingBytesError, match="1 trailing bytes"):
        parse_txoutproof(proof + b"\x00")


def test_duplicate_hash_forgery_cve_2012_2459() -> None:
    # A real 3-transaction block: Bitcoin pairs the odd third txid with itself, so [a, b, c, c]
    # has the same root. A proof claiming 4 transactions and a match at index 3 would otherwise
    # "prove" a transaction position that does not exist.
    txids = fake_txids(3)
    header = header_for(bitcoin_merkle_root(txids))
    forged_txids = txids + [txids[2]]
    assert bitcoin_merkle_root(forged_txids) == bitcoin_merkle_root(txids)
    forged = build_txoutproof(header, forged_txids, [False, False, False, True])
    with pytest.raises(AnchorProofError, match="CVE-2012-2459"):
        parse_txoutproof(forged)


def _rebuild(header: bytes, total: int, hashes: list[bytes], flags: bytes, hash_count: int | None = None) -> bytes:
    count = len(hashes) if hash_count is None else hash_count
    return header + struct.pack("<I", total) + bytes([count]) + b"".join(hashes) + bytes([len(flags)]) + flags


def _split(proof: bytes) -> tuple[bytes, int, list[bytes], bytes]:
    header, total, count = proof[:80], struct.unpack("<I", proof[80:84])[0], proof[84]
    hashes = [proof[85 + 32 * i: 85 + 32 * (i + 1)] for i in range(count)]
    rest = proof[85 + 32 * count:]
    return header, total, hashes, rest[1: 1 + rest[0]]


def test_zero_transactions() -> None:
    header, _, hashes, flags = _split(proof_for(1, {0})[0])
    with pytest.raises(AnchorProofError, match="zero transactions"):
        parse_txoutproof(_rebuild(header, 0, hashes, flags))


def test_more_transactions_than_a_block_can_hold() -> None:
    header, _, hashes, flags = _split(proof_for(1, {0})[0])
    with pytest.raises(AnchorProofError, match="exceeds the most a block can hold"):
        parse_txoutproof(_rebuild(header, MAX_TRANSACTIONS + 1, hashes, flags))


def test_more_hashes_than_transactions() -> None:
    header, _, hashes, flags = _split(proof_for(2, {0})[0])
    with pytest.raises(AnchorProofError, match="3 hashes for 2 transactions"):
        parse_txoutproof(_rebuild(header, 2, hashes + [b"\x01" * 32], flags))


def test_fewer_flag_bits_than_hashes() -> None:
    proof, _ = proof_for(16, set(range(16)))
    header, total, hashes, _ = _split(proof)
    with pytest.raises(AnchorProofError, match="flag bits for 16 hashes"):
        parse_txoutproof(_rebuild(header, total, hashes, b"\xff"))


def test_unused_hash_is_rejected() -> None:
    proof, _ = proof_for(4, {0})
    header, total, hashes, flags = _split(proof)
    with pytest.raises(AnchorProofError, match="hashes left unused"):
        parse_txoutproof(_rebuild(header, total, hashes + [b"\x02" * 32], flags))


def test_extra_flag_byte_is_rejected() -> None:
    proof, _ = proof_for(4, {0})
    header, total, hashes, flags = _split(proof)
    with pytest.raises(AnchorProofError, match="flag bits left unused"):
        parse_txoutproof(_rebuild(header, total, hashes, flags + b"\x00"))


def test_flipped_flag_bit_is_rejected() -> None:
    # 8 txs, match at 5: bits are root, inner(0-3), inner(4-7), inner(4-5), leaf 4, leaf 5, inner(6-7).
    proof, txids = proof_for(8, {5})
    header, total, hashes, flags = _split(proof)
    assert flags == bytes([0b0101101])
    for bit in (0, 1, 2, 3, 5, 6):  # inner-node bits change the walk; leaf 5 leaves no match
        with pytest.raises(AnchorProofError):
            parse_txoutproof(_rebuild(header, total, hashes, bytes([flags[0] ^ (1 << bit)])))
    # A leaf's bit only says whether to report that txid: setting it reports leaf 4 as well,
    # which is true (Core behaves the same), so it is not a forgery.
    assert parse_txoutproof(_rebuild(header, total, hashes, bytes([flags[0] | 1 << 4]))).txids == (txids[4], txids[5])


def test_nonzero_padding_bits_are_rejected() -> None:
    proof, _ = proof_for(1, {0})
    header, total, hashes, flags = _split(proof)
    assert flags == b"\x01"
    with pytest.raises(AnchorProofError, match="padding"):
        parse_txoutproof(_rebuild(header, total, hashes, b"\x81"))


def test_no_match_is_rejected() -> None:
    txids = fake_txids(4)
    proof = build_txoutproof(header_for(bitcoin_merkle_root(txids)), txids, [False] * 4)
    with pytest.raises(AnchorProofError, match="proves no transaction"):
        parse_txoutproof(proof)


def test_non_canonical_compact_size() -> None:
    proof, _ = proof_for(1, {0})
    header, total, hashes, flags = _split(proof)
    bad = header + struct.pack("<I", total) + b"\xfd\x01\x00" + hashes[0] + b"\x01" + flags
    with pytest.raises(DecodeError, match="non-canonical CompactSize"):
        parse_txoutproof(bad)


def test_huge_hash_count_is_refused_before_allocating() -> None:
    header = header_for(b"\x00" * 32)
    with pytest.raises(LimitError, match="exceeds"):
        parse_txoutproof(header + struct.pack("<I", 1) + b"\xfe\xff\xff\xff\x7f")
    with pytest.raises(TruncatedError, match="hashes claimed"):
        parse_txoutproof(header + struct.pack("<I", 1) + b"\xfe\x00\x00\x00\x01")


# -- against the node ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blocks(regtest: RegtestNode) -> dict[int, tuple[str, list[str]]]:
    """Blocks with 1, 2, 3 and 9 transactions (coinbase included), keyed by size."""
    return {n: make_block(regtest, n - 1) for n in (1, 2, 3, 9)}


def _subsets(n: int) -> list[list[int]]:
    singles = [[i] for i in range(n)]
    multi = [list(range(n))] + ([[0, n - 1], [1, 2, n - 1]] if n >= 4 else [])
    return singles + (multi if n > 1 else [])


@pytest.mark.slow
@pytest.mark.bitcoin
@pytest.mark.parametrize("size", [1, 2, 3, 9])
def test_parser_agrees_with_verifytxoutproof(
    regtest: RegtestNode, blocks: dict[int, tuple[str, list[str]]], size: int
) -> None:
    rpc = regtest.rpc()
    block_hash, txids = blocks[size]
    header = rpc.get_block_header(block_hash)
    for subset in _subsets(size):
        wanted = [txids[i] for i in subset]
        proof = rpc.get_tx_out_proof(wanted, block_hash)
        node_view = rpc.verify_tx_out_proof(proof)
        parsed = parse_txoutproof(proof)
        assert sorted(parsed.txids_hex) == sorted(node_view) == sorted(wanted)
        assert [i for _, i in parsed.matches] == sorted(subset)
        assert to_display(parsed.header.hash) == block_hash
        # the reference builder reproduces the node's bytes, so the pure tests above are faithful
        assert build_txoutproof(header, txids_internal(txids), [i in subset for i in range(size)]) == proof


def _node_accepts(node: RegtestNode, proof: bytes) -> bool:
    try:
        return bool(node.rpc().verify_tx_out_proof(proof))
    except BitcoinRPCError:
        return False


def _ours_accepts(proof: bytes) -> bool:
    try:
        parse_txoutproof(proof)
    except (AnchorProofError, DecodeError):
        return False
    return True


def _set_count(proof: bytes, total: int) -> bytes:
    return proof[:80] + struct.pack("<I", total) + proof[84:]


MUTATIONS: dict[str, tuple[Callable[[bytes], bytes], bool, bool]] = {
    # name: (mutation of a proof for tx 4 of a 9-tx block, we accept, the node accepts)
    "unchanged": (lambda p: p, True, True),
    "flipped hash": (lambda p: _flip(p, HASHES_AT + 31), False, False),
    "truncated": (lambda p: p[:-1], False, False),
    # Core's verifytxoutproof ignores bytes after the proof; we refuse them (one proof, one encoding)
    "trailing byte": (lambda p: p + b"\x00", False, True),
    "zero tx count": (lambda p: _set_count(p, 0), False, False),
    "tx count 17 (taller tree)": (lambda p: _set_count(p, 17), False, False),
    # the count is not committed by the root: 10 txs give the same tree shape along this path, so
    # the tree checks pass; the node also compares the count with its block index, which needs
    # the chain (an auditor with RPC does it: getblockheader's nTx)
    "tx count 10 (same shape)": (lambda p: _set_count(p, 10), True, False),
    "flipped inner flag": (lambda p: _flip(p, len(p) - len(_split(p)[3]), 0x02), False, False),
}


@pytest.mark.slow
@pytest.mark.bitcoin
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_rejections_agree_with_the_node(
    regtest: RegtestNode, blocks: dict[int, tuple[str, list[str]]], mutation: str
) -> None:
    block_hash, txids = blocks[9]
    mutate, ours, node = MUTATIONS[mutation]
    proof = mutate(regtest.rpc().get_tx_out_proof([txids[4]], block_hash))
    assert _ours_accepts(proof) == ours
    assert _node_accepts(regtest, proof) == node


@pytest.mark.slow
@pytest.mark.bitcoin
def test_nonzero_padding_is_a_documented_difference(
    regtest: RegtestNode, blocks: dict[int, tuple[str, list[str]]]
) -> None:
    block_hash, txids = blocks[9]
    proof = regtest.rpc().get_tx_out_proof([txids[4]], block_hash)
    padded = _flip(proof, len(proof) - 1, 0x80)  # the last flag byte's top bit is padding here
    assert _node_accepts(regtest, padded)
    with pytest.raises(AnchorProofError, match="padding"):
        parse_txoutproof(padded)


@pytest.mark.slow
@pytest.mark.bitcoin
def test_duplicate_hash_forgery_agrees_with_the_node(
    regtest: RegtestNode, blocks: dict[int, tuple[str, list[str]]]
) -> None:
    block_hash, txids_hex = blocks[3]
    txids = txids_internal(txids_hex)
    header = regtest.rpc().get_block_header(block_hash)
    forged = build_txoutproof(header, txids + [txids[2]], [False, False, False, True])
    assert sha256d(header) == bytes.fromhex(block_hash)[::-1]
    assert not _node_accepts(regtest, forged)
    with pytest.raises(AnchorProofError, match="CVE-2012-2459"):
        parse_txoutproof(forged)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 399), st.integers(0, 255))
def test_garbage_and_corruptions_fail_only_with_our_errors(garbage: bytes, index: int, value: int) -> None:
    for data in (garbage, _corrupt(proof_for(13, {2, 11})[0], index, value)):
        try:
            parse_txoutproof(data)
        except (DecodeError, AnchorProofError):
            pass


def _corrupt(proof: bytes, index: int, value: int) -> bytes:
    out = bytearray(proof)
    out[index % len(out)] = value
    return bytes(out)
