"""AnchorProof: encoding, offline verification, and each tampering rejected with its reason."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdb.anchor.anchortx import (
    ANCHOR_PAYLOAD_LEN,
    MAX_STANDARD_OP_RETURN_DATA,
    anchor_payload,
    parse_tx,
    txid,
)
from peerdb.anchor.errors import AnchorProofError
from peerdb.anchor.hashes import sha256d
from peerdb.anchor.headers import POW_LIMITS, compact_to_target
from peerdb.anchor.proof import (
    MAX_ANCHOR_PROOF_ITEMS,
    AnchorProof,
    batch_paths,
    batch_root,
    build_anchor_proofs,
    verify_anchor_proof,
)
from peerdb.core import codec
from peerdb.core.errors import DecodeError, NonCanonicalError, TrailingBytesError
from peerdb.core.merkle import merkle_path, merkle_root
from tests.helpers.anchor_proofs import REGTEST_BITS, anchor_tx, mined_header
from tests.helpers.bitcoin_node import bitcoin_merkle_root, build_txoutproof

def block_hashes(n: int, salt: bytes = b"blk") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(n)]


@dataclasses.dataclass
class Setup:
    hashes: list[bytes]
    raw_tx: bytes
    txoutproof: bytes
    headers: list[bytes]
    proofs: list[AnchorProof]


def make_setup(n_blocks: int = 5, depth: int = 3) -> Setup:
    hashes = block_hashes(n_blocks)
    raw_tx = anchor_tx(batch_root(hashes))
    txids = [sha256d(b"coinbase"), txid(parse_tx(raw_tx)), sha256d(b"other")]
    headers = [mined_header(b"\x09" * 32, bitcoin_merkle_root(txids), 1_700_000_000)]
    for i in range(1, depth):
        headers.append(mined_header(sha256d(headers[-1]), sha256d(b"root%d" % i), 1_700_000_000 + i))
    txoutproof = build_txoutproof(headers[0], txids, [False, True, False])
    proofs = build_anchor_proofs(
        hashes, bitcoin_tx=raw_tx, txoutproof=txoutproof, headers=headers, bitcoin_height=500,
        check_pow=True, pow_limit=POW_LIMITS["regtest"],
    )
    return Setup(hashes, raw_tx, txoutproof, headers, proofs)


SETUP = make_setup()


def verify(proof: AnchorProof, block_hash: bytes | None = None) -> None:
    verify_anchor_proof(proof, proof.block_hash if block_hash is None else block_hash,
                        check_pow=True, pow_limit=POW_LIMITS["regtest"])


# -- valid proofs -------------------------------------------------------------------------------

def test_payload_fits_the_standard_op_return_limit() -> None:
    assert len(anchor_payload(b"\x00" * 32)) == ANCHOR_PAYLOAD_LEN == 36 <= MAX_STANDARD_OP_RETURN_DATA


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 33])
def test_every_block_of_a_batch_gets_a_verifying_proof(n: int) -> None:
    setup = make_setup(n_blocks=n, depth=1)
    assert [p.block_hash for p in setup.proofs] == setup.hashes
    for proof in setup.proofs:
        v = verify_anchor_proof(proof, proof.block_hash, check_pow=True, pow_limit=POW_LIMITS["regtest"])
        assert v.root == merkle_root(setup.hashes)
        assert v.txid == txid(parse_tx(setup.raw_tx))
        assert v.bitcoin_block_hash == sha256d(setup.headers[0])
        assert (v.bitcoin_height, v.depth, v.block_tx_count) == (500, 1, 3)


def test_batch_paths_equal_the_core_merkle_paths() -> None:
    for n in range(1, 70):
        hashes = block_hashes(n)
        assert batch_paths(hashes) == [merkle_path(hashes, i) for i in range(n)]


def test_verified_anchor_reports_depth_and_header_hashes() -> None:
    v = verify_anchor_proof(SETUP.proofs[2], SETUP.hashes[2], check_pow=False, min_depth=3)
    assert v.depth == 3
    assert v.header_hashes == tuple(sha256d(h) for h in SETUP.headers)
    assert v.txid_hex == v.txid[::-1].hex()


def test_encoding_round_trips_canonically() -> None:
    for proof in SETUP.proofs:
        data = proof.encode()
        assert AnchorProof.decode(data) == proof
        assert codec.encode(codec.decode(data)) == data


@settings(max_examples=50, deadline=None)
@given(
    block_hash=st.binary(min_size=32, max_size=32),
    path=st.lists(st.tuples(st.booleans(), st.binary(min_size=32, max_size=32)), max_size=32),
    root=st.binary(min_size=32, max_size=32),
    tx=st.binary(min_size=1, max_size=300),
    txoutproof=st.binary(min_size=1, max_size=300),
    headers=st.lists(st.binary(min_size=80, max_size=80), min_size=1, max_size=8),
    height=st.integers(0, 2**31 - 1),
)
def test_any_well_shaped_proof_round_trips(
    block_hash: bytes, path: list[tuple[bool, bytes]], root: bytes, tx: bytes, txoutproof: bytes,
    headers: list[bytes], height: int,
) -> None:
    proof = AnchorProof(block_hash, tuple(path), root, tx, txoutproof, tuple(headers), height)
    assert AnchorProof.decode(proof.encode()) == proof


# -- tampering ----------------------------------------------------------------------------------

def _replace(proof: AnchorProof, **changes: object) -> AnchorProof:
    return dataclasses.replace(proof, **changes)  # type: ignore[arg-type]


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1
    return bytes(out)


P = SETUP.proofs[1]
OTHER = block_hashes(3, b"other")
OTHER_ROOT = batch_root(OTHER)
TAMPER: dict[str, tuple[Callable[[], AnchorProof], str]] = {
    "wrong merkle path (sibling)": (
        lambda: _replace(P, path=((P.path[0][0], _flip(P.path[0][1], 0)),) + P.path[1:]),
        r"anchor_proof\.path: Merkle path",
    ),
    "wrong merkle path (side)": (
        lambda: _replace(P, path=((not P.path[0][0], P.path[0][1]),) + P.path[1:]),
        r"anchor_proof\.path: Merkle path",
    ),
    "wrong merkle path (dropped step)": (lambda: _replace(P, path=P.path[:-1]), r"anchor_proof\.path"),
    "valid path to a root the tx does not carry": (
        lambda: _replace(P, block_hash=OTHER[0], path=merkle_path(OTHER, 0), root=OTHER_ROOT),
        r"anchor_proof\.bitcoin_tx: its OP_RETURN commits to another root",
    ),
    "swapped tx (other root)": (
        lambda: _replace(P, bitcoin_tx=anchor_tx(OTHER_ROOT)),
        r"anchor_proof\.bitcoin_tx: its OP_RETURN commits to another root",
    ),
    "swapped tx (same root, not in the block)": (
        lambda: _replace(P, bitcoin_tx=anchor_tx(P.root, prevout=b"\x02" * 32)),
        r"anchor_proof\.txoutproof: does not prove transaction",
    ),
    "tx with two anchor outputs": (
        lambda: _replace(P, bitcoin_tx=anchor_tx(P.root, extra_anchor=OTHER_ROOT)),
        r"2 PeerDB anchor outputs",
    ),
    "tx bytes corrupted": (lambda: _replace(P, bitcoin_tx=P.bitcoin_tx[:-3]), r"anchor_proof\.bitcoin_tx"),
    "forged header (differs from the txoutproof)": (
        lambda: _replace(P, headers=(_flip(P.headers[0], 79),) + P.headers[1:]),
        r"anchor_proof\.headers\[0\]: is not the header of the block in the txoutproof",
    ),
    "forged header (in both places)": (
        lambda: _forged_block(P),
        r"anchor_proof\.headers\[1\]: previous hash .* does not link",
    ),
    "broken header chain": (
        lambda: _replace(P, headers=P.headers[:2] + (SETUP.headers[1],)),
        r"anchor_proof\.headers\[2\]: previous hash .* does not link",
    ),
    "header without proof of work": (
        lambda: _replace(P, headers=P.headers[:2] + (_no_work_header(P.headers[1]),)),
        r"anchor_proof\.headers\[2\]: hash .* does not meet its target",
    ),
    "txoutproof flipped": (lambda: _replace(P, txoutproof=_flip(P.txoutproof, 90)), r"anchor_proof\.txoutproof"),
}


def _forged_block(proof: AnchorProof) -> AnchorProof:
    """The tx really is in this (forged, but well-mined) block; the block is not in the chain."""
    txids = [sha256d(b"coinbase"), txid(parse_tx(proof.bitcoin_tx)), sha256d(b"other")]
    header = mined_header(b"\x08" * 32, bitcoin_merkle_root(txids), 1)
    return _replace(proof, headers=(header,) + proof.headers[1:],
                    txoutproof=build_txoutproof(header, txids, [False, True, False]))


def _no_work_header(prev_raw: bytes) -> bytes:
    for nonce in range(1000):
        raw = struct.pack("<i32s32sIII", 0x20000000, sha256d(prev_raw), b"\x05" * 32, 1, REGTEST_BITS, nonce)
        if int.from_bytes(sha256d(raw), "little") > compact_to_target(REGTEST_BITS):
            return raw
    raise RuntimeError("no failing nonce in 1000 tries")


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_is_rejected_with_its_reason(case: str) -> None:
    make, reason = TAMPER[case]
    with pytest.raises((AnchorProofError, DecodeError), match=reason):
        verify(make())


def test_proof_for_another_block_hash() -> None:
    with pytest.raises(AnchorProofError, match=r"anchor_proof\.block_hash: proof is for"):
        verify(SETUP.proofs[0], SETUP.hashes[1])


def test_depth_below_the_required_minimum() -> None:
    with pytest.raises(AnchorProofError, match="depth 3 below the required 6"):
        verify_anchor_proof(P, P.block_hash, check_pow=False, min_depth=6)


def test_builder_refuses_bad_batches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_anchor_proofs([], bitcoin_tx=SETUP.raw_tx, txoutproof=SETUP.txoutproof,
                            headers=SETUP.headers, bitcoin_height=1)
    with pytest.raises(ValueError, match="must not repeat"):
        batch_root([SETUP.hashes[0], SETUP.hashes[0]])
    with pytest.raises(AnchorProofError, match="another root"):  # hashes in another order
        build_anchor_proofs(SETUP.hashes[::-1], bitcoin_tx=SETUP.raw_tx, txoutproof=SETUP.txoutproof,
                            headers=SETUP.headers, bitcoin_height=1)


# -- decoding -----------------------------------------------------------------------------------

def _value() -> dict[str, object]:
    value: dict[str, object] = codec.decode(P.encode())
    return value


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda v: v.pop("root"), r"anchor_proof\.root: missing"),
        (lambda v: v.update(extra=1), r"anchor_proof\.extra: unknown field"),
        (lambda v: v.update(v=2), r"anchor_proof\.v: unsupported version 2"),
        (lambda v: v.update(block_hash=b"\x00" * 31), r"anchor_proof\.block_hash: expected 32 bytes"),
        (lambda v: v.update(path=[[1, b"\x00" * 32]]), r"anchor_proof\.path\[0\]\[0\]: expected a boolean"),
        (lambda v: v.update(path=[[True]]), r"anchor_proof\.path\[0\]: expected 2 elements"),
        (lambda v: v.update(path=[[True, b"\x00" * 32]] * 33), r"anchor_proof\.path: 33 steps exceeds 32"),
        (lambda v: v.update(headers=[]), r"anchor_proof\.headers: 0 headers"),
        (lambda v: v.update(headers=[b"\x00" * 79]), r"anchor_proof\.headers\[0\]: expected 80 bytes"),
        (lambda v: v.update(bitcoin_height=-1), r"anchor_proof\.bitcoin_height"),
        (lambda v: v.update(bitcoin_tx="00"), r"anchor_proof\.bitcoin_tx: expected a byte string"),
        (lambda v: v.update(txoutproof=b""), r"anchor_proof\.txoutproof"),
        (lambda v: v.update(headers=[b""] * MAX_ANCHOR_PROOF_ITEMS), r"anchor_proof: more than 4096 CBOR items"),
    ],
)
def test_decode_rejects_malformed_fields(change: Callable[[dict[str, object]], object], reason: str) -> None:
    value = _value()
    change(value)
    with pytest.raises(DecodeError, match=reason):
        AnchorProof.decode(codec.encode(value))


def test_decode_rejects_trailing_and_non_canonical_bytes() -> None:
    data = P.encode()
    with pytest.raises(TrailingBytesError):
        AnchorProof.decode(data + b"\x00")
    with pytest.raises(NonCanonicalError):
        AnchorProof.decode(_non_canonical(data))
    with pytest.raises(DecodeError, match="expected a map"):
        AnchorProof.decode(codec.encode([1, 2]))


def _non_canonical(data: bytes) -> bytes:
    # Re-encode the top-level map header (8 entries) in the long form 0xb8 0x08.
    if data[0] != 0xA8:
        raise RuntimeError("unexpected map header")
    return b"\xb8\x08" + data[1:]


def test_cannot_build_a_malformed_proof() -> None:
    with pytest.raises(DecodeError, match=r"anchor_proof\.headers\[0\]"):
        _replace(P, headers=(b"\x00" * 81,))
    with pytest.raises(DecodeError, match=r"anchor_proof\.path\[0\]"):
        _replace(P, path=((True, b"\x00"),))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_corrupted_encodings_fail_only_with_decode_or_proof_errors(index: int, value: int) -> None:
    data = bytearray(P.encode())
    data[index % len(data)] = value
    try:
        proof = AnchorProof.decode(bytes(data))
        verified = verify_anchor_proof(proof, proof.block_hash, check_pow=True, pow_limit=POW_LIMITS["regtest"])
    except (DecodeError, AnchorProofError):
        return
    # Still valid: the byte was unchanged, or it sits in a header above the anchor's block whose
    # content only its own proof of work constrains. What the proof attests cannot have changed.
    original = verify_anchor_proof(P, P.block_hash, check_pow=True, pow_limit=POW_LIMITS["regtest"])
    assert (verified.block_hash, verified.root, verified.txid, verified.bitcoin_block_hash) == (
        original.block_hash, original.root, original.txid, original.bitcoin_block_hash)
    assert proof.headers[:-1] == P.headers[:-1]
