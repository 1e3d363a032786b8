"""Anchor proofs: evidence, checkable offline, that a PeerDB block hash is anchored in Bitcoin.

CONSENSUS-CRITICAL for auditors: members and auditors must accept and reject the same proofs, so
the encoding is canonical CBOR through :mod:`peerdb.core.codec` and verification depends only on
the proof's bytes and the block hash it is checked against.

The chain of evidence, each link checked by :func:`verify_anchor_proof`:

1. block hash --Merkle path (:mod:`peerdb.core.merkle`)--> root;
2. root is in the transaction's OP_RETURN output, after the tag ``PDB1``;
3. the transaction's txid is matched in the txoutproof (a partial Merkle tree of a block);
4. the txoutproof's header is the first header of the chain;
5. the headers link (and, on Bitcoin networks, carry proof of work).

``bitcoin_height`` is a claim: no header states its height. An auditor with RPC access checks it,
that the headers are in the best chain, and that the txoutproof's transaction count is the
block's (``getblockheader`` gives ``height``, ``confirmations`` and ``nTx``) against a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peerdb.core import codec
from peerdb.core.errors import DecodeError
from peerdb.core.merkle import Path, leaf_hash, merkle_root, node_hash, root_from_path

from .anchortx import MAX_ANCHOR_TX_BYTES, anchored_roots, parse_tx, txid
from .errors import AnchorProofError
from .hashes import HASH_LEN, to_display
from .headers import HEADER_LEN, POW_LIMITS, verify_header_chain
from .txoutproof import MAX_TXOUTPROOF_BYTES, parse_txoutproof

PROOF_VERSION = 1
"""Encoding version inside the proof map, so a future format is told apart, not misparsed."""

MAX_PATH_LEN = 32
"""Steps in a Merkle path: a batch of 2**32 block hashes is far beyond any anchor interval."""

MAX_PROOF_HEADERS = 2016
"""Headers carried for depth: one difficulty period. Confirmation depths in practice are 1-100;
the bound keeps a proof small enough to decode without a second thought."""

MAX_BITCOIN_HEIGHT = 2**31 - 1
"""Bitcoin Core stores heights as a signed 32-bit int."""

MAX_ANCHOR_PROOF_BYTES = 2 * MAX_ANCHOR_TX_BYTES + MAX_TXOUTPROOF_BYTES + MAX_PROOF_HEADERS * (HEADER_LEN + 2) + 4096
"""Upper bound of an encoded proof: its parts at their limits plus CBOR overhead, generously."""

MAX_ANCHOR_PROOF_ITEMS = 4096
"""CBOR items in an encoded proof. A valid proof has at most 17 + 3 * MAX_PATH_LEN +
MAX_PROOF_HEADERS = 2,129 (the map with its eight keys and values, three items per path step,
one byte string per header); this is the next power of two. Members decode every proof an
``anchor`` message carries, so without it each could be 1.5 MB of one-byte items, about a
second of decoding apiece."""

INNER_NODE_LEN = 64
"""Bytes hashed for a Bitcoin Merkle inner node (two hashes)."""

_FIELDS = ("v", "block_hash", "path", "root", "bitcoin_tx", "txoutproof", "headers", "bitcoin_height")


@dataclass(frozen=True)
class AnchorProof:
    """Everything needed to check offline that ``block_hash`` is anchored, at ``len(headers)`` depth."""

    block_hash: bytes
    path: Path
    root: bytes
    bitcoin_tx: bytes
    txoutproof: bytes
    headers: tuple[bytes, ...]
    bitcoin_height: int

    def __post_init__(self) -> None:
        _check_shape(self)

    def encode(self) -> bytes:
        return codec.encode(
            {
                "v": PROOF_VERSION,
                "block_hash": self.block_hash,
                "path": [[left, sibling] for left, sibling in self.path],
                "root": self.root,
                "bitcoin_tx": self.bitcoin_tx,
                "txoutproof": self.txoutproof,
                "headers": list(self.headers),
                "bitcoin_height": self.bitcoin_height,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> AnchorProof:
        """Hardened decode; every error names the field at fault."""
        value = codec.decode(data, max_size=MAX_ANCHOR_PROOF_BYTES, what="anchor_proof",
                             max_items=MAX_ANCHOR_PROOF_ITEMS)
        return cls.from_value(value)

    @classmethod
    def from_value(cls, value: Any, what: str = "anchor_proof") -> AnchorProof:
        """Build from an already-decoded CBOR value (e.g. a proof nested in a bundle)."""
        if type(value) is not dict:
            raise DecodeError(f"{what}: expected a map, got {type(value).__name__}")
        missing = [f for f in _FIELDS if f not in value]
        if missing:
            raise DecodeError(f"{what}.{missing[0]}: missing")
        extra = sorted(str(k) for k in value if k not in _FIELDS)
        if extra:
            raise DecodeError(f"{what}.{extra[0]}: unknown field")
        version = codec.expect_int(value["v"], f"{what}.v")
        if version != PROOF_VERSION:
            raise DecodeError(f"{what}.v: unsupported version {version}")
        raw_path = codec.expect_list(value["path"], f"{what}.path")
        if len(raw_path) > MAX_PATH_LEN:
            raise DecodeError(f"{what}.path: {len(raw_path)} steps exceeds {MAX_PATH_LEN}")
        path: list[tuple[bool, bytes]] = []
        for i, step in enumerate(raw_path):
            pair = codec.expect_list(step, f"{what}.path[{i}]", 2)
            if type(pair[0]) is not bool:
                raise DecodeError(f"{what}.path[{i}][0]: expected a boolean (sibling is left)")
            path.append((pair[0], codec.expect_bytes(pair[1], f"{what}.path[{i}][1]", HASH_LEN)))
        raw_headers = codec.expect_list(value["headers"], f"{what}.headers")
        if not 1 <= len(raw_headers) <= MAX_PROOF_HEADERS:
            raise DecodeError(f"{what}.headers: {len(raw_headers)} headers, expected 1..{MAX_PROOF_HEADERS}")
        headers = tuple(
            codec.expect_bytes(h, f"{what}.headers[{i}]", HEADER_LEN) for i, h in enumerate(raw_headers)
        )
        return cls(
            block_hash=codec.expect_bytes(value["block_hash"], f"{what}.block_hash", HASH_LEN),
            path=tuple(path),
            root=codec.expect_bytes(value["root"], f"{what}.root", HASH_LEN),
            bitcoin_tx=codec.expect_bytes(value["bitcoin_tx"], f"{what}.bitcoin_tx", max_len=MAX_ANCHOR_TX_BYTES),
            txoutproof=codec.expect_bytes(value["txoutproof"], f"{what}.txoutproof", max_len=MAX_TXOUTPROOF_BYTES),
            headers=headers,
            bitcoin_height=codec.expect_int(value["bitcoin_height"], f"{what}.bitcoin_height", 0, MAX_BITCOIN_HEIGHT),
        )


def _check_shape(proof: AnchorProof) -> None:
    """Field types and sizes, so that an AnchorProof cannot even be built malformed."""
    if type(proof.block_hash) is not bytes or len(proof.block_hash) != HASH_LEN:
        raise DecodeError(f"anchor_proof.block_hash: expected {HASH_LEN} bytes")
    if type(proof.root) is not bytes or len(proof.root) != HASH_LEN:
        raise DecodeError(f"anchor_proof.root: expected {HASH_LEN} bytes")
    if type(proof.path) is not tuple or len(proof.path) > MAX_PATH_LEN:
        raise DecodeError(f"anchor_proof.path: expected a tuple of at most {MAX_PATH_LEN} steps")
    for i, step in enumerate(proof.path):
        if (type(step) is not tuple or len(step) != 2 or type(step[0]) is not bool
                or type(step[1]) is not bytes or len(step[1]) != HASH_LEN):
            raise DecodeError(f"anchor_proof.path[{i}]: expected (bool, {HASH_LEN} bytes)")
    if type(proof.bitcoin_tx) is not bytes or not 0 < len(proof.bitcoin_tx) <= MAX_ANCHOR_TX_BYTES:
        raise DecodeError(f"anchor_proof.bitcoin_tx: expected 1..{MAX_ANCHOR_TX_BYTES} bytes")
    if type(proof.txoutproof) is not bytes or not 0 < len(proof.txoutproof) <= MAX_TXOUTPROOF_BYTES:
        raise DecodeError(f"anchor_proof.txoutproof: expected 1..{MAX_TXOUTPROOF_BYTES} bytes")
    if type(proof.headers) is not tuple or not 1 <= len(proof.headers) <= MAX_PROOF_HEADERS:
        raise DecodeError(f"anchor_proof.headers: expected a tuple of 1..{MAX_PROOF_HEADERS} headers")
    for i, header in enumerate(proof.headers):
        if type(header) is not bytes or len(header) != HEADER_LEN:
            raise DecodeError(f"anchor_proof.headers[{i}]: expected {HEADER_LEN} bytes")
    if type(proof.bitcoin_height) is not int or not 0 <= proof.bitcoin_height <= MAX_BITCOIN_HEIGHT:
        raise DecodeError(f"anchor_proof.bitcoin_height: expected an integer in 0..{MAX_BITCOIN_HEIGHT}")


@dataclass(frozen=True)
class VerifiedAnchor:
    """What a verified proof establishes (hashes in internal byte order; ``*_hex`` for display)."""

    block_hash: bytes
    root: bytes
    txid: bytes
    bitcoin_block_hash: bytes
    bitcoin_height: int
    depth: int
    header_hashes: tuple[bytes, ...]
    block_tx_count: int
    """Transactions the txoutproof says the Bitcoin block has (checkable only against a node)."""

    @property
    def txid_hex(self) -> str:
        return to_display(self.txid)

    @property
    def bitcoin_block_hash_hex(self) -> str:
        return to_display(self.bitcoin_block_hash)


def verify_anchor_proof(
    proof: AnchorProof,
    block_hash: bytes,
    *,
    check_pow: bool,
    pow_limit: int = POW_LIMITS["main"],
    min_depth: int = 1,
) -> VerifiedAnchor:
    """Check every link from ``block_hash`` to the Bitcoin header chain, offline.

    Raises :class:`AnchorProofError` (or a :class:`DecodeError` for malformed parts) naming the
    first link that fails. ``check_pow`` must be False for the tests' scrypt-mined litecoind
    regtest, True for Bitcoin networks (with that network's ``pow_limit``).
    """
    if block_hash != proof.block_hash:
        raise AnchorProofError(
            f"anchor_proof.block_hash: proof is for {proof.block_hash.hex()}, not {block_hash.hex()}"
        )
    if root_from_path(block_hash, proof.path) != proof.root:
        raise AnchorProofError("anchor_proof.path: Merkle path from the block hash does not lead to the anchored root")
    tx = parse_tx(proof.bitcoin_tx, "anchor_proof.bitcoin_tx")
    if len(tx.serialize(params={"include_witness": False})) == INNER_NODE_LEN:
        # A 64-byte transaction could double as an inner Merkle node (two 32-byte hashes), the
        # ambiguity behind Bitcoin's 64-byte-transaction rule. Ours can never be 64 bytes.
        raise AnchorProofError("anchor_proof.bitcoin_tx: 64-byte transactions are ambiguous with Merkle nodes")
    roots = anchored_roots(tx)
    if len(roots) != 1:
        raise AnchorProofError(f"anchor_proof.bitcoin_tx: {len(roots)} PeerDB anchor outputs, expected exactly 1")
    if roots[0] != proof.root:
        raise AnchorProofError("anchor_proof.bitcoin_tx: its OP_RETURN commits to another root")
    tx_id = txid(tx)
    merkle_block = parse_txoutproof(proof.txoutproof, "anchor_proof.txoutproof")
    if tx_id not in merkle_block.txids:
        raise AnchorProofError(f"anchor_proof.txoutproof: does not prove transaction {to_display(tx_id)}")
    if merkle_block.header.raw != proof.headers[0]:
        raise AnchorProofError("anchor_proof.headers[0]: is not the header of the block in the txoutproof")
    chain = verify_header_chain(proof.headers, check_pow=check_pow, pow_limit=pow_limit, what="anchor_proof.headers")
    if len(chain) < min_depth:
        raise AnchorProofError(f"anchor_proof.headers: depth {len(chain)} below the required {min_depth}")
    return VerifiedAnchor(
        block_hash=block_hash,
        root=proof.root,
        txid=tx_id,
        bitcoin_block_hash=chain[0].hash,
        bitcoin_height=proof.bitcoin_height,
        depth=len(chain),
        header_hashes=tuple(h.hash for h in chain),
        block_tx_count=merkle_block.total_transactions,
    )


def batch_root(block_hashes: Sequence[bytes]) -> bytes:
    """The root one anchor commits to for an ordered batch of PeerDB block hashes."""
    _check_batch(block_hashes)
    return merkle_root(block_hashes)


def _check_batch(block_hashes: Sequence[bytes]) -> None:
    if not block_hashes:
        raise ValueError("an anchor batch needs at least one block hash")
    if any(type(h) is not bytes or len(h) != HASH_LEN for h in block_hashes):
        raise ValueError(f"block hashes must be {HASH_LEN} bytes")
    if len(set(block_hashes)) != len(block_hashes):
        raise ValueError("an anchor batch must not repeat a block hash")


def batch_paths(block_hashes: Sequence[bytes]) -> list[Path]:
    """Every leaf's audit path in one pass over the tree: O(n log n) for the whole batch.

    Same tree shape as :func:`peerdb.core.merkle.merkle_path` (an odd last node is promoted),
    which would cost O(n) per leaf and make a busy interval's batch quadratic.
    """
    level = [leaf_hash(h) for h in block_hashes]
    positions = list(range(len(level)))
    paths: list[list[tuple[bool, bytes]]] = [[] for _ in level]
    while len(level) > 1:
        for leaf, pos in enumerate(positions):
            sibling = pos ^ 1
            if sibling < len(level):
                paths[leaf].append((sibling < pos, level[sibling]))
            positions[leaf] = pos // 2
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return [tuple(p) for p in paths]


def build_anchor_proofs(
    block_hashes: Sequence[bytes],
    *,
    bitcoin_tx: bytes,
    txoutproof: bytes,
    headers: Sequence[bytes],
    bitcoin_height: int,
    check_pow: bool = False,
    pow_limit: int = POW_LIMITS["main"],
) -> list[AnchorProof]:
    """One proof per block hash of a published batch, checked before they are returned.

    ``block_hashes`` must be in the order that produced the anchored root (:func:`batch_root`).
    The first proof is verified in full; the others share its Bitcoin part, so only their
    Merkle paths need checking.
    """
    _check_batch(block_hashes)
    root = merkle_root(block_hashes)
    headers = tuple(headers)
    proofs = [
        AnchorProof(
            block_hash=h,
            path=path,
            root=root,
            bitcoin_tx=bitcoin_tx,
            txoutproof=txoutproof,
            headers=headers,
            bitcoin_height=bitcoin_height,
        )
        for h, path in zip(block_hashes, batch_paths(block_hashes), strict=True)
    ]
    verify_anchor_proof(proofs[0], proofs[0].block_hash, check_pow=check_pow, pow_limit=pow_limit)
    for proof in proofs[1:]:
        if root_from_path(proof.block_hash, proof.path) != root:
            raise AnchorProofError(f"anchor_proof.path: built path for {proof.block_hash.hex()} misses the root")
    return proofs
