"""The anchor transaction: one OP_RETURN output carrying ``b"PDB1" + root``.

Bitcoin's standardness rules relay OP_RETURN outputs of up to 80 data bytes; our 36-byte payload
(4-byte protocol tag, 32-byte Merkle root) fits with room to spare. The tag lets anyone scanning
the chain tell PeerDB anchors from other OP_RETURN users, and its digit names the payload format.
"""

from __future__ import annotations

from bitcoin.core import CTransaction
from bitcoin.core.serialize import SerializationError, SerializationTruncationError

from peerdb.core.errors import DecodeError, LimitError, NonCanonicalError, TruncatedError

from .hashes import HASH_LEN, sha256d

ANCHOR_TAG = b"PDB1"
"""Protocol tag in front of the root; a new payload format gets a new tag."""

ANCHOR_PAYLOAD_LEN = len(ANCHOR_TAG) + HASH_LEN

MAX_STANDARD_OP_RETURN_DATA = 80
"""Bitcoin Core's default ``-datacarriersize`` payload limit; larger outputs are not relayed."""

MAX_ANCHOR_TX_BYTES = 400_000
"""Bitcoin Core's MAX_STANDARD_TX_WEIGHT is 400,000 weight units, and a serialised transaction
cannot have more bytes than weight units, so any relayable transaction fits."""

OP_RETURN = 0x6A


def anchor_payload(root: bytes) -> bytes:
    """The OP_RETURN data for ``root``."""
    if len(root) != HASH_LEN:
        raise ValueError(f"anchor root must be {HASH_LEN} bytes, got {len(root)}")
    return ANCHOR_TAG + root


def anchor_script(root: bytes) -> bytes:
    """The exact scriptPubKey Bitcoin Core writes for a ``data`` output: OP_RETURN, direct push."""
    return bytes([OP_RETURN, ANCHOR_PAYLOAD_LEN]) + anchor_payload(root)


def parse_tx(raw: bytes, what: str = "bitcoin_tx") -> CTransaction:
    """Decode a raw transaction, insisting that it re-serialises to the very same bytes.

    python-bitcoinlib accepts non-minimal length prefixes and re-serialises them minimally, so
    without the round-trip check the txid we compute (over the re-serialisation) could differ
    from the txid of the bytes we were handed.
    """
    if len(raw) > MAX_ANCHOR_TX_BYTES:
        raise LimitError(f"{what}: {len(raw)} bytes exceeds the limit of {MAX_ANCHOR_TX_BYTES}")
    try:
        tx = CTransaction.deserialize(raw)
    except SerializationTruncationError as exc:
        raise TruncatedError(f"{what}: truncated transaction ({exc})") from None
    except (SerializationError, ValueError, IndexError) as exc:
        raise DecodeError(f"{what}: malformed transaction ({exc})") from None
    if tx.serialize() != raw:
        raise NonCanonicalError(f"{what}: transaction does not re-serialise to the same bytes")
    return tx


def txid(tx: CTransaction) -> bytes:
    """Internal-order txid: double SHA-256 of the serialisation without witness data."""
    return sha256d(tx.serialize(params={"include_witness": False}))


def anchored_roots(tx: CTransaction) -> list[bytes]:
    """Roots of every PeerDB anchor output in ``tx``, in output order."""
    wanted_prefix = bytes([OP_RETURN, ANCHOR_PAYLOAD_LEN]) + ANCHOR_TAG
    roots = []
    for out in tx.vout:
        script = bytes(out.scriptPubKey)
        if len(script) == len(wanted_prefix) + HASH_LEN and script.startswith(wanted_prefix):
            roots.append(script[len(wanted_prefix):])
    return roots
