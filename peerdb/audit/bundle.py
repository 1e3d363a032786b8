"""The audit bundle file format (docs/auditor.md): framing, items, running hash, writer, parser.

A bundle is one member's books, self-contained: the consortium file, every block it holds (best
chain and side branches) with the signatures, objections and anchor proof it holds for each, all
the double-sign evidence it knows, and what its node claimed when it wrote the bundle. Nothing
else is needed to verify it but, optionally, a Bitcoin node.

Layout::

    bundle = MAGIC || frame*            frame = length: u32 big-endian || item: canonical CBOR map

Items come in this order: one ``head``; ``btc`` and ``block`` items (blocks strictly ascending
by (height, hash), a ``btc`` item before the first block that refers to it) or, in a
*namespace bundle* (the head names a namespace), ``part`` items in their place; ``evidence`` items
ascending by evidence id; one ``end`` (the trailer); then the file ends. The trailer carries
the item counts and the SHA-256 of every byte before its own frame, so a truncated, extended
or spliced bundle is detected. Every item is decoded through the hardened decoder
(:func:`peerdb.core.codec.decode`) within :data:`MAX_ITEM_BYTES`, so a hostile bundle cannot make
the reader allocate more than one bounded item at a time.

The ``btc`` items carry the Bitcoin part of anchor proofs (transaction, txoutproof, headers,
height) once per anchor transaction; each block's ``anchor`` holds only its own Merkle path and
root and refers to its ``btc`` item by number. Together they are exactly an
:class:`~peerdb.anchor.proof.AnchorProof`, without repeating the same kilobytes per block.

A ``part`` item is a block as a namespace's auditor sees it: the header, signatures, objections,
evidence and anchor of the block, but only the transactions that touch the namespace or the
governance namespace ``_gov`` (whose changes decide who may sign), with the proofs that these are
all of them (their lists under the header's ``ns_tx_root``) and the two namespaces' roots under
its ``state_root`` (docs/auditor.md, "Namespace audits").

Why one module of this size: the writer and the parser are the two halves of one file format;
keeping them side by side is what keeps them agreeing (the round-trip tests pin it).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from peerdb.anchor.proof import MAX_BITCOIN_HEIGHT, MAX_PATH_LEN, MAX_PROOF_HEADERS, AnchorProof
from peerdb.anchor.headers import HEADER_LEN
from peerdb.anchor.txoutproof import MAX_TXOUTPROOF_BYTES
from peerdb.anchor.anchortx import MAX_ANCHOR_TX_BYTES
from peerdb.core import codec
from peerdb.core.consortium import NAME_RE, Consortium, consortium_to_toml_data, parse_consortium
from peerdb.core.errors import ConfigError, DecodeError
from peerdb.core.limits import (HASH_LEN, MAX_FRAME_BYTES, MAX_FRAME_ITEMS, MAX_MEMBERS, MAX_NAME_LEN,
                                 MAX_NAMESPACE_LEN, MAX_REASON_LEN, MAX_TX_BYTES, SIG_LEN)
from peerdb.core.merkle import Path
from peerdb.core.model import GOV_NAMESPACE, Block, Evidence, Header, consortium_id
from peerdb.core.smt import Proof

from .errors import AuditFailure

MAGIC = b"PDBAUDIT"
"""First bytes of every bundle, so a wrong file is refused at once rather than as garbage CBOR."""

FORMAT_VERSION = 2
"""Bundle format version in the head item; a reader refuses versions it does not know. Version 2
(protocol 2): the head names the audited namespace (or null), and ``part`` items exist."""

PART_NAMESPACES = 2
"""A part item proves two namespaces: the audited one, then ``_gov``."""

MAX_PART_TXS = 20_000
"""Transactions per part item: at most a block's (``MAX_BLOCK_TXS``)."""

LENGTH_BYTES = 4
"""Each frame starts with its item's length as a u32, big-endian (as network frames do)."""

MAX_ITEM_BYTES = MAX_FRAME_BYTES
"""Largest item: a block at MAX_BLOCK_BYTES plus its signatures, objections and anchor path
fits, as it fits a network frame; nothing bigger is read into memory."""

MAX_ITEM_CBOR_ITEMS = MAX_FRAME_ITEMS
"""CBOR items (every head) in one bundle item, as in a network frame. The largest legitimate item
is a ``part`` of MAX_PART_TXS transactions (one byte string each) with its proofs, signatures,
objections and evidence, under 24,000; without the bound a 16 MiB item of empty arrays would
cost seconds and gigabytes to decode before its shape is checked."""

MAX_ITEM_SIGS = MAX_MEMBERS
"""Signatures per block item: at most one per member."""

MAX_ITEM_OBJECTIONS = MAX_MEMBERS
"""Objections per block item: a node keeps the first one per (block, member)."""

MAX_OBJECTION_REASON_BYTES = 4 * MAX_REASON_LEN
"""Same bound as :class:`~peerdb.core.model.Objection` applies on decode."""

READ_CHUNK = 1 << 20
"""Bytes read from a file at a time."""

_FRAME = struct.Struct(">I")
_CLAIM_HEADS = ("height", "majority", "unanimous_signed", "unanimous", "anchored")
_COUNT_FIELDS = ("blocks", "btc", "evidence", "signatures", "objections", "anchors")


# --- items -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claims:
    """What the exporting node said about its own chain when it wrote the bundle.

    ``anchored`` and ``unanimous`` may be exceeded by what the bundle proves (a proof can arrive
    while the export runs); everything else must match the verifier's recomputation exactly.
    """

    tip: bytes
    height: int
    majority: int
    unanimous_signed: int
    unanimous: int
    anchored: int
    excluded: tuple[str, ...]

    def to_cbor(self) -> dict[str, Any]:
        return {"tip": self.tip, "height": self.height, "majority": self.majority,
                "unanimous_signed": self.unanimous_signed, "unanimous": self.unanimous,
                "anchored": self.anchored, "excluded": list(self.excluded)}

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "Claims":
        m = _map(raw, where, {"tip", *_CLAIM_HEADS, "excluded"})
        excluded = tuple(_name(x, f"{where}.excluded[{i}]")
                         for i, x in enumerate(codec.expect_list(m["excluded"], f"{where}.excluded")))
        if list(excluded) != sorted(set(excluded)):
            raise DecodeError(f"{where}.excluded: must be sorted and unique")
        heads = {k: codec.expect_int(m[k], f"{where}.{k}") for k in _CLAIM_HEADS}
        return cls(codec.expect_bytes(m["tip"], f"{where}.tip", HASH_LEN), excluded=excluded, **heads)


@dataclass(frozen=True)
class Head:
    version: int
    consortium: Consortium
    cid: bytes
    member: str
    exported_ms: int
    claims: Claims
    namespace: str | None = None
    """The audited namespace of a namespace bundle (whose blocks are ``part`` items); None for a
    full bundle."""

    def to_cbor(self) -> dict[str, Any]:
        return {"t": "head", "v": self.version, "consortium": consortium_to_toml_data(self.consortium),
                "cid": self.cid, "member": self.member, "exported_ms": self.exported_ms,
                "claims": self.claims.to_cbor(), "namespace": self.namespace}


@dataclass(frozen=True)
class BtcPart:
    """The Bitcoin half of anchor proofs, shared by every block anchored by one transaction."""

    n: int
    bitcoin_tx: bytes
    txoutproof: bytes
    headers: tuple[bytes, ...]
    bitcoin_height: int

    def to_cbor(self) -> dict[str, Any]:
        return {"t": "btc", "n": self.n, "bitcoin_tx": self.bitcoin_tx, "txoutproof": self.txoutproof,
                "headers": list(self.headers), "bitcoin_height": self.bitcoin_height}

    def key(self) -> tuple[bytes, bytes, tuple[bytes, ...], int]:
        return (self.bitcoin_tx, self.txoutproof, self.headers, self.bitcoin_height)

    def proof(self, block_hash: bytes, anchor: "AnchorRef") -> AnchorProof:
        return AnchorProof(block_hash=block_hash, path=anchor.path, root=anchor.root, bitcoin_tx=self.bitcoin_tx,
                           txoutproof=self.txoutproof, headers=self.headers, bitcoin_height=self.bitcoin_height)


@dataclass(frozen=True)
class AnchorRef:
    """A block's own part of its anchor proof; ``btc`` numbers a :class:`BtcPart` item."""

    btc: int
    path: Path
    root: bytes

    def to_cbor(self) -> dict[str, Any]:
        return {"btc": self.btc, "path": [[left, sibling] for left, sibling in self.path], "root": self.root}


@dataclass(frozen=True)
class BlockEntry:
    """A block as its member holds it. ``header`` is read from ``raw`` without decoding the
    transactions (the verifier decodes the whole block once, later)."""

    raw: bytes
    header: Header
    best: bool
    sigs: tuple[tuple[str, bytes], ...]
    objections: tuple[tuple[str, str, bytes], ...] = ()
    anchor: AnchorRef | None = None

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def to_cbor(self) -> dict[str, Any]:
        return {"t": "block", "block": self.raw, "best": self.best, "sigs": [list(s) for s in self.sigs],
                "objections": [list(o) for o in self.objections],
                "anchor": None if self.anchor is None else self.anchor.to_cbor()}


@dataclass(frozen=True)
class PartEntry:
    """A block of a namespace bundle: its header, its signatures, objections, evidence and anchor,
    and of its transactions only those touching the namespace or ``_gov`` (block order), with
    the proofs that they are exactly those (``ns_txs``: the two namespaces' transaction lists
    under ``ns_tx_root``) and of the two namespaces' roots after it (``ns_roots``: under
    ``state_root``). Both pairs are (audited namespace, ``_gov``)."""

    header_raw: bytes
    header: Header
    best: bool
    sigs: tuple[tuple[str, bytes], ...]
    objections: tuple[tuple[str, str, bytes], ...]
    anchor: AnchorRef | None
    txs: tuple[bytes, ...]
    evidence: tuple[Evidence, ...]
    ns_txs: tuple[Proof, Proof]
    ns_roots: tuple[Proof, Proof]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def to_cbor(self) -> dict[str, Any]:
        return {"t": "part", "header": self.header_raw, "best": self.best, "sigs": [list(s) for s in self.sigs],
                "objections": [list(o) for o in self.objections],
                "anchor": None if self.anchor is None else self.anchor.to_cbor(), "txs": list(self.txs),
                "evidence": [e.to_cbor() for e in self.evidence],
                "ns_txs": [p.to_cbor() for p in self.ns_txs], "ns_roots": [p.to_cbor() for p in self.ns_roots]}


AnyBlockEntry = BlockEntry | PartEntry


@dataclass(frozen=True)
class EvidenceEntry:
    evidence: Evidence

    def to_cbor(self) -> dict[str, Any]:
        return {"t": "evidence", "ev": self.evidence.to_cbor()}


@dataclass
class Counts:
    blocks: int = 0
    btc: int = 0
    evidence: int = 0
    signatures: int = 0
    objections: int = 0
    anchors: int = 0

    def to_cbor(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in _COUNT_FIELDS}

    def add(self, item: "Item") -> None:
        if isinstance(item, (BlockEntry, PartEntry)):
            self.blocks += 1
            self.signatures += len(item.sigs)
            self.objections += len(item.objections)
            self.anchors += item.anchor is not None
        elif isinstance(item, BtcPart):
            self.btc += 1
        elif isinstance(item, EvidenceEntry):
            self.evidence += 1


@dataclass(frozen=True)
class Trailer:
    counts: Counts
    sha256: bytes

    def to_cbor(self) -> dict[str, Any]:
        return {"t": "end", "counts": self.counts.to_cbor(), "sha256": self.sha256}


Item = Head | BtcPart | BlockEntry | PartEntry | EvidenceEntry | Trailer


# --- decoding items ----------------------------------------------------------------------------

def _map(raw: Any, where: str, keys: set[str]) -> Mapping[str, Any]:
    if type(raw) is not dict:
        raise DecodeError(f"{where}: expected a map, got {type(raw).__name__}")
    missing = sorted(keys - set(raw))
    if missing:
        raise DecodeError(f"{where}.{missing[0]}: missing")
    extra = sorted(str(k) for k in raw if k not in keys)
    if extra:
        raise DecodeError(f"{where}.{extra[0]}: unknown field")
    return raw


def _name(raw: Any, where: str) -> str:
    name = codec.expect_str(raw, where, MAX_NAME_LEN)
    if not NAME_RE.match(name):
        raise DecodeError(f"{where}: {name!r} is not a valid member name")
    return name


def _bool(raw: Any, where: str) -> bool:
    if type(raw) is not bool:
        raise DecodeError(f"{where}: expected true or false, got {type(raw).__name__}")
    return raw


def peek_header(raw: bytes, where: str) -> Header:
    """The header of an encoded block without decoding its transactions.

    A canonical block starts with ``83`` (array of 3) and the header's byte-string head; the
    header then goes through the hardened decoder. Anything else is left to
    :meth:`Block.peek_header`, which decodes the whole block and names the fault.
    """
    if len(raw) > 3 and raw[0] == 0x83:
        h = raw[1]
        if 0x40 <= h <= 0x57:
            start, length = 2, h - 0x40
        elif h == 0x58:
            start, length = 3, raw[2]
        elif h == 0x59:
            start, length = 4, int.from_bytes(raw[2:4], "big")
        else:
            start, length = 0, -1
        if 0 <= length <= 1024 and start + length <= len(raw):
            try:
                return Header.decode(raw[start:start + length])
            except DecodeError:
                pass
    try:
        return Block.peek_header(raw)
    except DecodeError as exc:
        raise AuditFailure(where, f"block does not decode: {exc}") from None


def _block_entry(m: Mapping[str, Any], where: str) -> BlockEntry:
    raw = codec.expect_bytes(m["block"], f"{where}.block")
    header = peek_header(raw, where)
    sigs, objections, anchor = _block_extras(m, where)
    return BlockEntry(raw, header, _bool(m["best"], f"{where}.best"), sigs, objections, anchor)


def _part_entry(m: Mapping[str, Any], where: str) -> PartEntry:
    raw = codec.expect_bytes(m["header"], f"{where}.header", max_len=1024)
    try:
        header = Header.decode(raw)
    except DecodeError as exc:
        raise AuditFailure(where, f"header does not decode: {exc}") from None
    sigs, objections, anchor = _block_extras(m, where)
    txs = codec.expect_list(m["txs"], f"{where}.txs")
    if len(txs) > MAX_PART_TXS:
        raise DecodeError(f"{where}.txs: more than {MAX_PART_TXS}")
    evidence = codec.expect_list(m["evidence"], f"{where}.evidence")
    if len(evidence) > MAX_MEMBERS:
        raise DecodeError(f"{where}.evidence: more than {MAX_MEMBERS}")
    pairs = []
    for field_name in ("ns_txs", "ns_roots"):
        items = codec.expect_list(m[field_name], f"{where}.{field_name}", PART_NAMESPACES)
        pairs.append((Proof.from_cbor(items[0], f"{where}.{field_name}[0]"),
                      Proof.from_cbor(items[1], f"{where}.{field_name}[1]")))
    return PartEntry(raw, header, _bool(m["best"], f"{where}.best"), sigs, objections, anchor,
                     tuple(codec.expect_bytes(t, f"{where}.txs[{i}]", max_len=MAX_TX_BYTES) for i, t in enumerate(txs)),
                     tuple(Evidence.from_cbor(e, f"{where}.evidence[{i}]") for i, e in enumerate(evidence)),
                     pairs[0], pairs[1])


def _block_extras(m: Mapping[str, Any], where: str) -> tuple[tuple[tuple[str, bytes], ...],
                                                               tuple[tuple[str, str, bytes], ...], AnchorRef | None]:
    """Signatures, objections and anchor of a block or part item."""
    sigs_raw = codec.expect_list(m["sigs"], f"{where}.sigs")
    if len(sigs_raw) > MAX_ITEM_SIGS:
        raise DecodeError(f"{where}.sigs: {len(sigs_raw)} signatures, more than {MAX_ITEM_SIGS}")
    sigs = []
    for i, s in enumerate(sigs_raw):
        pair = codec.expect_list(s, f"{where}.sigs[{i}]", 2)
        sigs.append((_name(pair[0], f"{where}.sigs[{i}].member"),
                     codec.expect_bytes(pair[1], f"{where}.sigs[{i}].sig", SIG_LEN)))
    names = [s[0] for s in sigs]
    if names != sorted(set(names)):
        raise DecodeError(f"{where}.sigs: must be sorted by member, one per member")
    obj_raw = codec.expect_list(m["objections"], f"{where}.objections")
    if len(obj_raw) > MAX_ITEM_OBJECTIONS:
        raise DecodeError(f"{where}.objections: more than {MAX_ITEM_OBJECTIONS}")
    objections = []
    for i, o in enumerate(obj_raw):
        triple = codec.expect_list(o, f"{where}.objections[{i}]", 3)
        objections.append((_name(triple[0], f"{where}.objections[{i}].member"),
                           codec.expect_str(triple[1], f"{where}.objections[{i}].reason", MAX_OBJECTION_REASON_BYTES),
                           codec.expect_bytes(triple[2], f"{where}.objections[{i}].sig", SIG_LEN)))
    onames = [o[0] for o in objections]
    if onames != sorted(set(onames)):
        raise DecodeError(f"{where}.objections: must be sorted by member, one per member")
    anchor = None
    if m["anchor"] is not None:
        a = _map(m["anchor"], f"{where}.anchor", {"btc", "path", "root"})
        steps = codec.expect_list(a["path"], f"{where}.anchor.path")
        if len(steps) > MAX_PATH_LEN:
            raise DecodeError(f"{where}.anchor.path: {len(steps)} steps exceeds {MAX_PATH_LEN}")
        path = []
        for i, step in enumerate(steps):
            pair = codec.expect_list(step, f"{where}.anchor.path[{i}]", 2)
            path.append((_bool(pair[0], f"{where}.anchor.path[{i}][0]"),
                         codec.expect_bytes(pair[1], f"{where}.anchor.path[{i}][1]", HASH_LEN)))
        anchor = AnchorRef(codec.expect_int(a["btc"], f"{where}.anchor.btc"), tuple(path),
                           codec.expect_bytes(a["root"], f"{where}.anchor.root", HASH_LEN))
    return tuple(sigs), tuple(objections), anchor


def _btc_part(m: Mapping[str, Any], where: str) -> BtcPart:
    headers_raw = codec.expect_list(m["headers"], f"{where}.headers")
    if not 1 <= len(headers_raw) <= MAX_PROOF_HEADERS:
        raise DecodeError(f"{where}.headers: {len(headers_raw)} headers, expected 1..{MAX_PROOF_HEADERS}")
    tx = codec.expect_bytes(m["bitcoin_tx"], f"{where}.bitcoin_tx", max_len=MAX_ANCHOR_TX_BYTES)
    proof = codec.expect_bytes(m["txoutproof"], f"{where}.txoutproof", max_len=MAX_TXOUTPROOF_BYTES)
    if not tx or not proof:
        raise DecodeError(f"{where}: bitcoin_tx and txoutproof must not be empty")
    return BtcPart(codec.expect_int(m["n"], f"{where}.n"), tx, proof,
                   tuple(codec.expect_bytes(h, f"{where}.headers[{i}]", HEADER_LEN) for i, h in enumerate(headers_raw)),
                   codec.expect_int(m["bitcoin_height"], f"{where}.bitcoin_height", 0, MAX_BITCOIN_HEIGHT))


def _head(m: Mapping[str, Any], where: str) -> Head:
    version = codec.expect_int(m["v"], f"{where}.v")
    if version != FORMAT_VERSION:
        raise DecodeError(f"{where}.v: bundle format {version} is not supported (this reader knows {FORMAT_VERSION})")
    if type(m["consortium"]) is not dict:
        raise DecodeError(f"{where}.consortium: expected a map (the consortium file's tables)")
    try:
        consortium = parse_consortium(m["consortium"])
    except ConfigError as exc:
        raise AuditFailure(f"{where}.consortium", str(exc)) from None
    except (TypeError, ValueError) as exc:
        # The loader expects TOML's types; CBOR can also carry integer map keys and byte strings.
        raise AuditFailure(f"{where}.consortium", f"not a consortium file ({exc})") from None
    cid = codec.expect_bytes(m["cid"], f"{where}.cid", HASH_LEN)
    if consortium_id(consortium) != cid:
        raise AuditFailure(f"{where}.cid", f"{cid.hex()} is not the id of the consortium file in the bundle "
                           f"({consortium_id(consortium).hex()})")
    member = _name(m["member"], f"{where}.member")
    if consortium.member(member) is None:
        raise AuditFailure(f"{where}.member", f"{member!r} is not a member of consortium {consortium.name}")
    namespace = None
    if m["namespace"] is not None:
        namespace = codec.expect_str(m["namespace"], f"{where}.namespace", MAX_NAMESPACE_LEN)
        if not NAME_RE.match(namespace) or namespace == GOV_NAMESPACE:
            raise DecodeError(f"{where}.namespace: {namespace!r} is not a namespace that can be audited alone")
    return Head(version, consortium, cid, member, codec.expect_int(m["exported_ms"], f"{where}.exported_ms"),
                Claims.from_cbor(m["claims"], f"{where}.claims"), namespace)


def _trailer(m: Mapping[str, Any], where: str) -> Trailer:
    c = _map(m["counts"], f"{where}.counts", set(_COUNT_FIELDS))
    counts = Counts(**{f: codec.expect_int(c[f], f"{where}.counts.{f}") for f in _COUNT_FIELDS})
    return Trailer(counts, codec.expect_bytes(m["sha256"], f"{where}.sha256", HASH_LEN))


_ITEM_FIELDS: dict[str, set[str]] = {
    "head": {"t", "v", "consortium", "cid", "member", "exported_ms", "claims", "namespace"},
    "btc": {"t", "n", "bitcoin_tx", "txoutproof", "headers", "bitcoin_height"},
    "block": {"t", "block", "best", "sigs", "objections", "anchor"},
    "part": {"t", "header", "best", "sigs", "objections", "anchor", "txs", "evidence", "ns_txs", "ns_roots"},
    "evidence": {"t", "ev"},
    "end": {"t", "counts", "sha256"},
}


def parse_item(value: Any, where: str) -> Item:
    """A decoded CBOR item as a typed item; every error names the item and the field."""
    if type(value) is not dict or type(value.get("t")) is not str or value["t"] not in _ITEM_FIELDS:
        raise DecodeError(f"{where}: not a bundle item (a map with t = head, btc, block, part, evidence or end)")
    kind = value["t"]
    m = _map(value, where, _ITEM_FIELDS[kind])
    if kind == "block":
        return _block_entry(m, where)
    if kind == "part":
        return _part_entry(m, where)
    if kind == "btc":
        return _btc_part(m, where)
    if kind == "evidence":
        return EvidenceEntry(Evidence.from_cbor(m["ev"], f"{where}.ev"))
    if kind == "head":
        return _head(m, where)
    return _trailer(m, where)


# --- writing -----------------------------------------------------------------------------------

@dataclass
class BundleWriter:
    """Turns items into frames, in order, keeping the running hash and counts for the trailer.

    Each method returns the bytes to append; the caller writes or streams them. The writer
    refuses to produce a bundle its own parser would refuse (our bug, not the reader's).
    """

    counts: Counts = field(default_factory=Counts)
    _hash: Any = field(default_factory=lambda: hashlib.sha256(MAGIC))
    _stage: int = 0
    _last_block: tuple[int, bytes] = (0, b"")
    _last_evidence: bytes = b""

    def start(self, head: Head) -> bytes:
        if self._stage != 0:
            raise ValueError("bundle: the head must come first, once")
        self._stage = 1
        return MAGIC + self._frame(head.to_cbor())

    def btc(self, part: BtcPart) -> bytes:
        if self._stage != 1 or part.n != self.counts.btc:
            raise ValueError("bundle: btc items are numbered in order and come before the evidence")
        self.counts.add(part)
        return self._frame(part.to_cbor())

    def block(self, entry: AnyBlockEntry) -> bytes:
        key = (entry.header.height, entry.hash)
        if self._stage != 1 or key <= self._last_block:
            raise ValueError(f"bundle: block {key[0]} is out of (height, hash) order or after the evidence")
        if entry.anchor is not None and entry.anchor.btc >= self.counts.btc:
            raise ValueError("bundle: a block refers to a btc item not yet written")
        self._last_block = key
        self.counts.add(entry)
        return self._frame(entry.to_cbor())

    def evidence(self, ev: Evidence) -> bytes:
        if self._stage not in (1, 2) or ev.id <= self._last_evidence:
            raise ValueError("bundle: evidence comes after the blocks, ascending by id")
        self._stage = 2
        self._last_evidence = ev.id
        entry = EvidenceEntry(ev)
        self.counts.add(entry)
        return self._frame(entry.to_cbor())

    def end(self) -> bytes:
        if self._stage not in (1, 2):
            raise ValueError("bundle: the trailer ends a started bundle, once")
        self._stage = 3
        trailer = Trailer(self.counts, self._hash.digest())
        return self._frame(trailer.to_cbor(), hashed=False)

    def _frame(self, value: dict[str, Any], hashed: bool = True) -> bytes:
        data = codec.encode(value)
        if len(data) > MAX_ITEM_BYTES:
            raise ValueError(f"bundle: a {value.get('t')} item of {len(data)} bytes exceeds {MAX_ITEM_BYTES}")
        frame = _FRAME.pack(len(data)) + data
        if hashed:
            self._hash.update(frame)
        return frame


# --- reading -----------------------------------------------------------------------------------

TRAILER = "trailer"
"""How a failure of the trailer's checks (hash, counts) names where it is."""

_STAGE_OF = {Head: 0, BtcPart: 1, BlockEntry: 1, PartEntry: 1, EvidenceEntry: 2, Trailer: 3}
_KIND = {Head: "head", BtcPart: "btc", BlockEntry: "block", PartEntry: "part", EvidenceEntry: "evidence",
         Trailer: "trailer"}


class BundleParser:
    """Push parser: feed bytes as they arrive (a download, a file), get items back in order.

    Checks the framing, the order of item kinds, block and evidence order, btc numbering, and
    at the end the trailer's counts and hash. Integrity is only known at :meth:`finish`: a
    caller that acts on items before then must be ready to be told the bundle was cut or spliced.

    A trailer that does not match is raised only after every item before it was handed out:
    :meth:`feed` returns those items and raises on the next call (or :meth:`finish`), so a
    verifier checks them first and can name the first one whose own checks fail (a changed
    byte in a block is that block's fault, not only a trailer mismatch). Every other failure
    is raised at once: it names its item itself.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._magic = False
        self._stage = -1
        self.index = 0
        """Items parsed so far (the next item's number)."""
        self.offset = 0
        """Bytes consumed so far."""
        self.counts = Counts()
        self.trailer: Trailer | None = None
        self._last_block: tuple[int, bytes] = (0, b"")
        self._last_evidence = b""
        self._failure: AuditFailure | None = None
        self._consumed = 0
        self._block_kind: type | None = None
        """BlockEntry for a full bundle, PartEntry for a namespace bundle (set by the head)."""

    def feed(self, data: bytes) -> list[Item]:
        if self._failure is not None:
            raise self._failure
        out: list[Item] = []
        try:
            self._parse(data, out)
        except AuditFailure as exc:
            if not out or exc.where != TRAILER:
                raise
            self._failure = exc  # raised on the next call, once the items before it were handed out
        return out

    def _parse(self, data: bytes, out: list[Item]) -> None:
        self._buf += data
        pos = 0
        buf = self._buf
        if not self._magic:
            if len(buf) < len(MAGIC):
                return
            if bytes(buf[:len(MAGIC)]) != MAGIC:
                raise AuditFailure("bundle", "not a PeerDB audit bundle (wrong magic bytes)")
            self._hash.update(MAGIC)
            self._magic = True
            pos = len(MAGIC)
        try:
            self._frames(buf, pos, out)
        finally:
            consumed = self._consumed
            del buf[:consumed]  # what was handed out (a failure in the next item leaves it out)
            self.offset += consumed

    def _frames(self, buf: bytearray, pos: int, out: list[Item]) -> None:
        self._consumed = pos
        while len(buf) - pos >= LENGTH_BYTES:
            (length,) = _FRAME.unpack_from(buf, pos)
            where = f"item {self.index}"
            if self.trailer is not None:
                raise AuditFailure("bundle", f"{len(buf) - pos} bytes after the trailer")
            if not 0 < length <= MAX_ITEM_BYTES:
                raise AuditFailure(where, f"frame length {length} outside 1..{MAX_ITEM_BYTES}")
            end = pos + LENGTH_BYTES + length
            if len(buf) < end:
                break
            frame = bytes(buf[pos:end])
            try:
                item = parse_item(codec.decode(frame[LENGTH_BYTES:], max_size=MAX_ITEM_BYTES, what=where,
                                               max_items=MAX_ITEM_CBOR_ITEMS), where)
            except DecodeError as exc:
                raise AuditFailure(where, str(exc)) from None
            self._check_order(item, where)
            if isinstance(item, Trailer):
                self._check_trailer(item)
            else:
                self._hash.update(frame)
                self.counts.add(item)
            out.append(item)
            self.index += 1
            pos = self._consumed = end

    def finish(self) -> Trailer:
        """Call at end of input: the bundle must have ended exactly with its trailer."""
        if self._failure is not None:
            raise self._failure
        if not self._magic:
            raise AuditFailure("bundle", "empty or not a PeerDB audit bundle")
        if self.trailer is None:
            left = f" (and {len(self._buf)} bytes of an incomplete item)" if self._buf else ""
            raise AuditFailure("bundle", f"truncated after {self.index} items, {self.offset} bytes{left}: "
                               "the trailer is missing")
        if self._buf:
            raise AuditFailure("bundle", f"{len(self._buf)} bytes after the trailer")
        return self.trailer

    def _check_order(self, item: Item, where: str) -> None:
        stage = _STAGE_OF[type(item)]
        if self._stage == -1 and stage != 0:
            raise AuditFailure(where, "the bundle must start with its head item")
        if stage < self._stage or (stage == 0 and self._stage == 0):
            raise AuditFailure(where, f"a {_KIND[type(item)]} item out of order")
        self._stage = max(self._stage, stage)
        if isinstance(item, Head):
            self._block_kind = BlockEntry if item.namespace is None else PartEntry
        if isinstance(item, (BlockEntry, PartEntry)):
            if type(item) is not self._block_kind:
                raise AuditFailure(where, f"a {_KIND[type(item)]} item in a "
                                   f"{'full' if self._block_kind is BlockEntry else 'namespace'} bundle")
            key = (item.header.height, item.hash)
            if item.header.height < 1 or key <= self._last_block:
                raise AuditFailure(where, f"block {item.header.height} ({item.hash.hex()[:16]}) is out of order: "
                                   "blocks must ascend by (height, hash), from height 1")
            self._last_block = key
            if item.anchor is not None and item.anchor.btc >= self.counts.btc:
                raise AuditFailure(where, f"block {item.header.height}: anchor refers to btc item "
                                   f"{item.anchor.btc}, which does not precede it")
        elif isinstance(item, BtcPart):
            if item.n != self.counts.btc:
                raise AuditFailure(where, f"btc item numbered {item.n}, expected {self.counts.btc}")
        elif isinstance(item, EvidenceEntry):
            if item.evidence.id <= self._last_evidence:
                raise AuditFailure(where, "evidence items must ascend by evidence id, without repeats")
            self._last_evidence = item.evidence.id

    def _check_trailer(self, trailer: Trailer) -> None:
        if trailer.sha256 != self._hash.digest():
            raise AuditFailure(TRAILER, "the SHA-256 over the bundle does not match: items were changed, "
                               "removed, inserted or spliced")
        if trailer.counts != self.counts:
            raise AuditFailure(TRAILER, f"counts {trailer.counts.to_cbor()} do not match the items read "
                               f"{self.counts.to_cbor()}")
        self.trailer = trailer


def read_items(stream: BinaryIO, progress: Any = None) -> Iterator[Item]:
    """Parse a bundle from a binary stream; ``progress(n_bytes)`` is called as bytes are read.
    The generator raises :class:`AuditFailure` at the first bad item, or at the end if the
    bundle was cut short."""
    parser = BundleParser()
    while True:
        data = stream.read(READ_CHUNK)
        if not data:
            break
        if progress is not None:
            progress(len(data))
        yield from parser.feed(data)
    parser.finish()
