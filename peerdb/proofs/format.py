"""The read proof: everything a client needs to check one key's value at one height.

A proof is one canonical CBOR map (docs/verified-reads.md gives the layout):

* ``ns``, ``key``, ``value`` — what it claims (``value`` null: the key is absent);
* ``chain`` — the header at the read height and as many of its descendants on the best chain
  as its endorsement needs, with the members' signatures on them (a signature endorses the
  signed block and its ancestry);
* ``state`` — the state tree path from the first header's ``state_root`` to the key;
* ``evidence`` — double-sign evidence against members at that height (they do not count);
* ``anchor`` — an anchor proof of one of the chain's headers (for the ``unanimous`` view);
* ``gov`` — the governance path: every governance change in force by the last header, each
  attested by a checkpoint signed under the member set before it, so that the client derives
  the members and keys at every height from the consortium file alone.

The anchor part is an :class:`~peerdb.anchor.proof.AnchorProof` without its ``bitcoin_height``,
which only a Bitcoin node can check: a proof carries nothing its verifier cannot check.
Decoding goes through the hardened decoder (:func:`peerdb.core.codec.decode`) and refuses any
unknown, missing or out-of-bounds field, naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peerdb.anchor.anchortx import MAX_ANCHOR_TX_BYTES
from peerdb.anchor.headers import HEADER_LEN
from peerdb.anchor.proof import MAX_PATH_LEN, MAX_PROOF_HEADERS, AnchorProof
from peerdb.anchor.txoutproof import MAX_TXOUTPROOF_BYTES
from peerdb.core import codec
from peerdb.core.consortium import NAME_RE
from peerdb.core.errors import DecodeError
from peerdb.core.limits import (
    HASH_LEN,
    MAX_HEADER_BYTES,
    MAX_KEY_BYTES,
    MAX_MEMBERS,
    MAX_NAME_LEN,
    MAX_NAMESPACE_LEN,
    MAX_VALUE_BYTES,
    SIG_LEN,
)

from peerdb.core.merkle import Path
from peerdb.core.model import Evidence, Header
from peerdb.core.statetree import StateProof

PROOF_VERSION = 1
"""Read proof format version (``v``); a verifier refuses versions it does not know."""

MAX_CHAIN_HEADERS = 512
"""Headers in one endorsement chain: blocks are signed by their successors' signers too, so a
handful is the norm; 512 covers an anchor interval of blocks at one per heartbeat with room."""

MAX_GOV_CHANGES = 4096
"""Governance changes a proof can carry: decades of a consortium's membership and key changes."""

MAX_EVIDENCE = MAX_MEMBERS
"""Evidence objects per proof: one per member is all a verifier needs to exclude it."""

MAX_PROOF_BYTES = 16 * 1024 * 1024
"""Largest encoded proof: the chain, the governance path (certificates in added members), an
anchor proof of up to 2016 Bitcoin headers; far below what reading it could cost."""


@dataclass(frozen=True)
class SignedChain:
    """Consecutive best-chain headers (each the parent of the next), and signatures on them:
    ``(index of the header, member, signature)``, one per member."""

    headers: tuple[Header, ...]
    sigs: tuple[tuple[int, str, bytes], ...]

    def to_cbor(self) -> dict[str, Any]:
        return {"headers": [h.raw for h in self.headers], "sigs": [list(s) for s in self.sigs]}

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "SignedChain":
        m = fields(raw, where, {"headers", "sigs"})
        headers_raw = codec.expect_list(m["headers"], f"{where}.headers")
        if not 1 <= len(headers_raw) <= MAX_CHAIN_HEADERS:
            raise DecodeError(f"{where}.headers: {len(headers_raw)} headers, expected 1..{MAX_CHAIN_HEADERS}")
        headers = tuple(Header.decode(codec.expect_bytes(h, f"{where}.headers[{i}]", max_len=MAX_HEADER_BYTES))
                        for i, h in enumerate(headers_raw))
        sigs_raw = codec.expect_list(m["sigs"], f"{where}.sigs")
        if len(sigs_raw) > MAX_MEMBERS * 2:
            raise DecodeError(f"{where}.sigs: {len(sigs_raw)} signatures, more than {MAX_MEMBERS * 2}")
        sigs = []
        for i, s in enumerate(sigs_raw):
            triple = codec.expect_list(s, f"{where}.sigs[{i}]", 3)
            sigs.append((codec.expect_int(triple[0], f"{where}.sigs[{i}].header", 0, len(headers) - 1),
                         name(triple[1], f"{where}.sigs[{i}].member"),
                         codec.expect_bytes(triple[2], f"{where}.sigs[{i}].sig", SIG_LEN)))
        members = [s[1] for s in sigs]
        if members != sorted(set(members)):
            raise DecodeError(f"{where}.sigs: must be sorted by member, one per member")
        return cls(headers, tuple(sigs))


@dataclass(frozen=True)
class Checkpoint:
    """A signed block whose state records the governance changes passed by then: the counter
    ``_gov/changes`` (``counter``, CBOR ``[count, digest]``) proven under ``chain.headers[0]``."""

    chain: SignedChain
    counter: bytes
    proof: StateProof

    def to_cbor(self) -> dict[str, Any]:
        return {"chain": self.chain.to_cbor(), "counter": self.counter, "proof": self.proof.to_cbor()}

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "Checkpoint":
        m = fields(raw, where, {"chain", "counter", "proof"})
        return cls(SignedChain.from_cbor(m["chain"], f"{where}.chain"),
                   codec.expect_bytes(m["counter"], f"{where}.counter", max_len=64),
                   StateProof.from_cbor(m["proof"], f"{where}.proof"))


@dataclass(frozen=True)
class GovPath:
    """Every governance change entry (``_gov/change/N`` values) of the read chain's last block,
    the checkpoints that attest them, and that block's own counter (None: no change ever)."""

    entries: tuple[bytes, ...]
    checkpoints: tuple[Checkpoint, ...]
    counter: bytes | None
    proof: StateProof

    def to_cbor(self) -> dict[str, Any]:
        return {"entries": list(self.entries), "checkpoints": [c.to_cbor() for c in self.checkpoints],
                "counter": self.counter, "proof": self.proof.to_cbor()}

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "GovPath":
        m = fields(raw, where, {"entries", "checkpoints", "counter", "proof"})
        entries_raw = codec.expect_list(m["entries"], f"{where}.entries")
        if len(entries_raw) > MAX_GOV_CHANGES:
            raise DecodeError(f"{where}.entries: more than {MAX_GOV_CHANGES}")
        cps = codec.expect_list(m["checkpoints"], f"{where}.checkpoints")
        if len(cps) > MAX_GOV_CHANGES:
            raise DecodeError(f"{where}.checkpoints: more than {MAX_GOV_CHANGES}")
        counter = None if m["counter"] is None else codec.expect_bytes(m["counter"], f"{where}.counter", max_len=64)
        return cls(tuple(codec.expect_bytes(e, f"{where}.entries[{i}]", max_len=2 * MAX_VALUE_BYTES)
                         for i, e in enumerate(entries_raw)),
                   tuple(Checkpoint.from_cbor(c, f"{where}.checkpoints[{i}]") for i, c in enumerate(cps)),
                   counter, StateProof.from_cbor(m["proof"], f"{where}.proof"))


@dataclass(frozen=True)
class AnchorPart:
    """An anchor proof of ``chain.headers[index]``, without the Bitcoin height."""

    index: int
    path: Path
    root: bytes
    bitcoin_tx: bytes
    txoutproof: bytes
    headers: tuple[bytes, ...]

    def to_cbor(self) -> dict[str, Any]:
        return {"index": self.index, "path": [[left, s] for left, s in self.path], "root": self.root,
                "bitcoin_tx": self.bitcoin_tx, "txoutproof": self.txoutproof, "headers": list(self.headers)}

    def anchor_proof(self, block_hash: bytes) -> AnchorProof:
        return AnchorProof(block_hash, self.path, self.root, self.bitcoin_tx, self.txoutproof, self.headers, 0)

    @classmethod
    def of(cls, index: int, proof: AnchorProof) -> "AnchorPart":
        return cls(index, proof.path, proof.root, proof.bitcoin_tx, proof.txoutproof, proof.headers)

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "AnchorPart":
        m = fields(raw, where, {"index", "path", "root", "bitcoin_tx", "txoutproof", "headers"})
        steps = codec.expect_list(m["path"], f"{where}.path")
        if len(steps) > MAX_PATH_LEN:
            raise DecodeError(f"{where}.path: {len(steps)} steps, more than {MAX_PATH_LEN}")
        path = []
        for i, step in enumerate(steps):
            pair = codec.expect_list(step, f"{where}.path[{i}]", 2)
            if type(pair[0]) is not bool:
                raise DecodeError(f"{where}.path[{i}][0]: expected a boolean (sibling is left)")
            path.append((pair[0], codec.expect_bytes(pair[1], f"{where}.path[{i}][1]", HASH_LEN)))
        headers = codec.expect_list(m["headers"], f"{where}.headers")
        if not 1 <= len(headers) <= MAX_PROOF_HEADERS:
            raise DecodeError(f"{where}.headers: {len(headers)} headers, expected 1..{MAX_PROOF_HEADERS}")
        return cls(codec.expect_int(m["index"], f"{where}.index", 0, MAX_CHAIN_HEADERS - 1), tuple(path),
                   codec.expect_bytes(m["root"], f"{where}.root", HASH_LEN),
                   codec.expect_bytes(m["bitcoin_tx"], f"{where}.bitcoin_tx", max_len=MAX_ANCHOR_TX_BYTES),
                   codec.expect_bytes(m["txoutproof"], f"{where}.txoutproof", max_len=MAX_TXOUTPROOF_BYTES),
                   tuple(codec.expect_bytes(h, f"{where}.headers[{i}]", HEADER_LEN) for i, h in enumerate(headers)))


@dataclass(frozen=True)
class ReadProof:
    namespace: str
    key: str
    value: bytes | None
    chain: SignedChain
    state: StateProof
    evidence: tuple[Evidence, ...]
    anchor: AnchorPart | None
    gov: GovPath

    @property
    def height(self) -> int:
        return self.chain.headers[0].height

    def to_cbor(self) -> dict[str, Any]:
        return {"v": PROOF_VERSION, "ns": self.namespace, "key": self.key, "value": self.value,
                "chain": self.chain.to_cbor(), "state": self.state.to_cbor(),
                "evidence": [e.to_cbor() for e in self.evidence],
                "anchor": None if self.anchor is None else self.anchor.to_cbor(), "gov": self.gov.to_cbor()}

    def encode(self) -> bytes:
        return codec.encode(self.to_cbor())

    @classmethod
    def decode(cls, data: bytes) -> "ReadProof":
        return cls.from_cbor(codec.decode(data, max_size=MAX_PROOF_BYTES, what="proof"), "proof")

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "ReadProof":
        m = fields(raw, where, {"v", "ns", "key", "value", "chain", "state", "evidence", "anchor", "gov"})
        version = codec.expect_int(m["v"], f"{where}.v")
        if version != PROOF_VERSION:
            raise DecodeError(f"{where}.v: proof format {version} is not supported (this verifier knows "
                              f"{PROOF_VERSION})")
        ns = codec.expect_str(m["ns"], f"{where}.ns", MAX_NAMESPACE_LEN)
        key = codec.expect_str(m["key"], f"{where}.key", MAX_KEY_BYTES)
        if not key:
            raise DecodeError(f"{where}.key: must not be empty")
        value = None if m["value"] is None else codec.expect_bytes(m["value"], f"{where}.value",
                                                                  max_len=2 * MAX_VALUE_BYTES)
        evidence_raw = codec.expect_list(m["evidence"], f"{where}.evidence")
        if len(evidence_raw) > MAX_EVIDENCE:
            raise DecodeError(f"{where}.evidence: more than {MAX_EVIDENCE}")
        evidence = tuple(Evidence.from_cbor(e, f"{where}.evidence[{i}]") for i, e in enumerate(evidence_raw))
        anchor = None if m["anchor"] is None else AnchorPart.from_cbor(m["anchor"], f"{where}.anchor")
        return cls(ns, key, value, SignedChain.from_cbor(m["chain"], f"{where}.chain"),
                   StateProof.from_cbor(m["state"], f"{where}.state"), evidence, anchor,
                   GovPath.from_cbor(m["gov"], f"{where}.gov"))


def fields(raw: Any, where: str, keys: set[str]) -> Mapping[str, Any]:
    """``raw`` as a map with exactly ``keys``."""
    if type(raw) is not dict:
        raise DecodeError(f"{where}: expected a map, got {type(raw).__name__}")
    missing = sorted(keys - set(raw))
    if missing:
        raise DecodeError(f"{where}.{missing[0]}: missing")
    extra = sorted(str(k) for k in raw if k not in keys)
    if extra:
        raise DecodeError(f"{where}.{extra[0]}: unknown field")
    return raw


def name(raw: Any, where: str) -> str:
    text = codec.expect_str(raw, where, MAX_NAME_LEN)
    if not NAME_RE.match(text):
        raise DecodeError(f"{where}: {text!r} is not a valid member name")
    return text
