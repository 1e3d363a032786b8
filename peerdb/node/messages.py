"""Member-to-member messages: CBOR maps with a type field ``t``.

Everything a message carries that is signed or hashed is embedded as the canonical bytes of the
core object, so a relayed message can be verified exactly as its author made it. Parsing is
strict: missing or mistyped fields raise :class:`ProtocolError`, and the connection that sent
them is closed by the network layer. A well-formed message of a type this node does not know
raises :class:`UnknownMessageType` instead, which the node skips: a member that upgraded first
may send a type its peers learn later, and barring it for that would turn a rolling upgrade into
an outage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..anchor.proof import MAX_ANCHOR_PROOF_BYTES
from ..core.codec import expect_bytes, expect_int, expect_list
from ..core.errors import DecodeError, ProtocolError
from ..core.limits import HASH_LEN, MAX_BLOCK_BYTES, MAX_BLOCK_TXS, MAX_MEMBERS, MAX_TX_BYTES
from ..core.model import BlockSignature, Evidence, Objection

MAX_SIGS_PER_MESSAGE = 4096
"""Signatures in one ``sigs`` message: a catch-up batch of blocks times the member count."""
MAX_CATCHUP_BLOCKS = 64
"""Blocks per catch-up batch: bounded so one answer stays well under the frame limit."""
MAX_CATCHUP_BYTES = 12 * 1024 * 1024
"""Bytes of blocks per catch-up answer (frames are limited to 16 MiB)."""
STATUS_RECENT = 8
"""Best-chain blocks whose signer sets a status message carries for anti-entropy."""
MAX_ANCHOR_PROOFS_PER_MESSAGE = 4096
"""Anchor proofs in one ``anchor`` message: one per block an anchor covers, and an anchoring
interval rarely covers more than a few thousand blocks (the rest follow in the next message)."""


@dataclass(frozen=True)
class ProposalMsg:
    block: bytes
    signature: BlockSignature


@dataclass(frozen=True)
class SigsMsg:
    sigs: tuple[BlockSignature, ...]


@dataclass(frozen=True)
class EvidenceMsg:
    evidence: Evidence


@dataclass(frozen=True)
class ObjectionMsg:
    objection: Objection


@dataclass(frozen=True)
class TxsMsg:
    txs: tuple[bytes, ...]


@dataclass(frozen=True)
class GetBlocksMsg:
    from_height: int
    to_height: int


@dataclass(frozen=True)
class BlocksMsg:
    items: tuple[tuple[bytes, tuple[BlockSignature, ...]], ...]
    peer_height: int


@dataclass(frozen=True)
class StatusMsg:
    tip: bytes
    height: int
    recent: tuple[tuple[bytes, tuple[str, ...]], ...]


@dataclass(frozen=True)
class AnchorMsg:
    proofs: tuple[bytes, ...]


Message = ProposalMsg | SigsMsg | EvidenceMsg | ObjectionMsg | TxsMsg | GetBlocksMsg | BlocksMsg | StatusMsg | AnchorMsg


def to_wire(msg: Message) -> dict[str, Any]:
    if isinstance(msg, ProposalMsg):
        return {"t": "proposal", "block": msg.block, "sig": msg.signature.to_cbor()}
    if isinstance(msg, SigsMsg):
        return {"t": "sigs", "sigs": [s.to_cbor() for s in msg.sigs]}
    if isinstance(msg, EvidenceMsg):
        return {"t": "evidence", "ev": msg.evidence.to_cbor()}
    if isinstance(msg, ObjectionMsg):
        return {"t": "objection", "obj": msg.objection.to_cbor()}
    if isinstance(msg, TxsMsg):
        return {"t": "txs", "txs": list(msg.txs)}
    if isinstance(msg, GetBlocksMsg):
        return {"t": "get_blocks", "from": msg.from_height, "to": msg.to_height}
    if isinstance(msg, BlocksMsg):
        return {"t": "blocks", "height": msg.peer_height,
                "items": [[raw, [s.to_cbor() for s in sigs]] for raw, sigs in msg.items]}
    if isinstance(msg, StatusMsg):
        return {"t": "status", "tip": msg.tip, "height": msg.height,
                "recent": [[h, list(signers)] for h, signers in msg.recent]}
    if isinstance(msg, AnchorMsg):
        return {"t": "anchor", "proofs": list(msg.proofs)}
    raise TypeError(f"not a message: {msg!r}")


def _sigs(raw: Any, where: str) -> tuple[BlockSignature, ...]:
    items = expect_list(raw, where)
    if len(items) > MAX_SIGS_PER_MESSAGE:
        raise ProtocolError(f"{where}: more than {MAX_SIGS_PER_MESSAGE} signatures")
    return tuple(BlockSignature.from_cbor(s, f"{where}[{i}]") for i, s in enumerate(items))


MAX_KIND_SHOWN = 40
"""Characters of an unknown type name kept for logs (the name is the sender's text)."""


class UnknownMessageType(ProtocolError):
    """A map with a text type field this node does not know; the message is skipped, not fatal."""

    def __init__(self, kind: str) -> None:
        self.kind = kind[:MAX_KIND_SHOWN]
        super().__init__(f"message: unknown type {self.kind!r}")


def from_wire(raw: Any) -> Message:
    """Parse a decoded frame; raises ProtocolError (a RemoteError) on anything unexpected."""
    try:
        return _from_wire(raw)
    except DecodeError as exc:
        raise ProtocolError(f"malformed message: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed message: missing or mistyped field {exc}") from None


def _from_wire(raw: Any) -> Message:
    if type(raw) is not dict or type(raw.get("t")) is not str:
        raise ProtocolError("message: expected a map with a type field 't'")
    kind = raw["t"]
    if kind == "proposal":
        return ProposalMsg(expect_bytes(raw["block"], "proposal.block", max_len=MAX_BLOCK_BYTES),
                        BlockSignature.from_cbor(raw["sig"], "proposal.sig"))
    if kind == "sigs":
        return SigsMsg(_sigs(raw["sigs"], "sigs"))
    if kind == "evidence":
        return EvidenceMsg(Evidence.from_cbor(raw["ev"]))
    if kind == "objection":
        return ObjectionMsg(Objection.from_cbor(raw["obj"]))
    if kind == "txs":
        txs = expect_list(raw["txs"], "txs")
        if len(txs) > MAX_BLOCK_TXS:
            raise ProtocolError(f"txs: more than {MAX_BLOCK_TXS} transactions in one message")
        return TxsMsg(tuple(expect_bytes(t, f"txs[{i}]", max_len=MAX_TX_BYTES) for i, t in enumerate(txs)))
    if kind == "get_blocks":
        return GetBlocksMsg(expect_int(raw["from"], "get_blocks.from"), expect_int(raw["to"], "get_blocks.to"))
    if kind == "blocks":
        items = expect_list(raw["items"], "blocks.items")
        if len(items) > MAX_CATCHUP_BLOCKS:
            raise ProtocolError(f"blocks: more than {MAX_CATCHUP_BLOCKS} blocks in one message")
        parsed = []
        for i, item in enumerate(items):
            pair = expect_list(item, f"blocks.items[{i}]", 2)
            parsed.append((expect_bytes(pair[0], f"blocks.items[{i}].block", max_len=MAX_BLOCK_BYTES),
                           _sigs(pair[1], f"blocks.items[{i}].sigs")))
        return BlocksMsg(tuple(parsed), expect_int(raw["height"], "blocks.height"))
    if kind == "status":
        recent = expect_list(raw["recent"], "status.recent")
        if len(recent) > STATUS_RECENT:
            raise ProtocolError(f"status.recent: more than {STATUS_RECENT} entries")
        out = []
        for i, item in enumerate(recent):
            pair = expect_list(item, f"status.recent[{i}]", 2)
            signers = expect_list(pair[1], f"status.recent[{i}].signers")
            if not all(type(s) is str for s in signers) or len(signers) > MAX_MEMBERS:
                raise ProtocolError(f"status.recent[{i}].signers: expected up to {MAX_MEMBERS} member names")
            out.append((expect_bytes(pair[0], f"status.recent[{i}].hash", HASH_LEN), tuple(signers)))
        return StatusMsg(expect_bytes(raw["tip"], "status.tip", HASH_LEN), expect_int(raw["height"], "status.height"),
                      tuple(out))
    if kind == "anchor":
        proofs = expect_list(raw["proofs"], "anchor.proofs")
        if len(proofs) > MAX_ANCHOR_PROOFS_PER_MESSAGE:
            raise ProtocolError(f"anchor.proofs: more than {MAX_ANCHOR_PROOFS_PER_MESSAGE} proofs in one message")
        return AnchorMsg(tuple(expect_bytes(p, f"anchor.proofs[{i}]", max_len=MAX_ANCHOR_PROOF_BYTES)
                               for i, p in enumerate(proofs)))
    raise UnknownMessageType(kind)
