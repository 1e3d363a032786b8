"""Frozen value objects for everything members sign, send and store.

Each object keeps the exact canonical bytes it was decoded from (or built into) and derives its
hash from them, so hashing never re-encodes and what is verified is what was sent. Objects that
are signed embed their signed part as a CBOR byte string (``[body_bytes, signature]``): the body
is hashed as received, then decoded through the hardened decoder on its own.

Construction validates structure (types, sizes, internal consistency such as a block's roots);
whether an object is *acceptable* (signatures, turns, rules) is decided in
:mod:`peerdb.core.validate` and :mod:`peerdb.core.state`, which need the consortium and context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codec import decode, encode, expect_bytes, expect_int, expect_list, expect_str, tagged_hash
from .consortium import NAME_RE, Consortium
from .errors import DecodeError, LimitError, SignatureError, ValidationError
from .keys import SigningKey, verify
from .limits import (
    HASH_LEN,
    KEY_LEN,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_ITEMS,
    MAX_BLOCK_TXS,
    MAX_EVIDENCE_BYTES,
    MAX_EVIDENCE_PER_BLOCK,
    MAX_HEADER_BYTES,
    MAX_KEY_BYTES,
    MAX_NAME_LEN,
    MAX_NAMESPACE_LEN,
    MAX_OPS_PER_TX,
    MAX_REASON_LEN,
    MAX_ROUND,
    MAX_TX_BYTES,
    MAX_TX_ITEMS,
    MAX_VALUE_BYTES,
    PROTOCOL_VERSION,
    SIG_LEN,
)
from .merkle import merkle_root
from .statetree import EMPTY_STATE_ROOT, ns_tx_root

ZERO_HASH = bytes(HASH_LEN)

# Signing domains: one per kind of signed object (see codec.signing_message).
DOMAIN_BLOCK = "block"
DOMAIN_TX = "tx"
DOMAIN_OBJECTION = "objection"
DOMAIN_VOTE = "vote"
"""Governance votes (:mod:`peerdb.core.proposals`): signed by member keys, never by client keys."""

GOV_NAMESPACE = "_gov"
"""The reserved system namespace of governance. ``NAME_RE`` refuses a leading ``_``, so no rule,
member or ordinary write can name it; the only ops allowed on it are governance requests (a put
whose key is ``propose`` or ``vote``), which the state machine interprets rather than stores
(:mod:`peerdb.core.governance`): its contents are written by the protocol alone."""

OP_PUT = 0
OP_DELETE = 1


def _member_name(value: Any, field_name: str) -> str:
    name = expect_str(value, field_name, MAX_NAME_LEN)
    if not NAME_RE.match(name):
        raise DecodeError(f"{field_name}: {name!r} is not a valid member name")
    return name


# --- transactions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One write: put a value under (namespace, key), or delete it."""

    kind: int
    namespace: str
    key: str
    value: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in (OP_PUT, OP_DELETE):
            raise DecodeError(f"op.kind: {self.kind!r} is neither put (0) nor delete (1)")
        ns = expect_str(self.namespace, "op.namespace", MAX_NAMESPACE_LEN)
        if ns == GOV_NAMESPACE:
            if self.kind != OP_PUT:
                raise DecodeError(f"op.kind: an op on {GOV_NAMESPACE} must be a put (a governance request)")
        elif not ns or not NAME_RE.match(ns):
            raise DecodeError(f"op.namespace: {ns!r} is not a valid namespace name")
        key = expect_str(self.key, "op.key", MAX_KEY_BYTES)
        if not key:
            raise DecodeError("op.key: must not be empty")
        if self.kind == OP_PUT:
            expect_bytes(self.value, "op.value", max_len=MAX_VALUE_BYTES)
        elif self.value is not None:
            raise DecodeError("op.value: a delete carries no value")

    def to_cbor(self) -> list[Any]:
        return [self.kind, self.namespace, self.key, self.value]

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "Op":
        items = expect_list(raw, where, 4)
        return cls(expect_int(items[0], f"{where}.kind", 0, 1), items[1], items[2], items[3])


@dataclass(frozen=True)
class Tx:
    """A client-signed, atomic batch of writes on behalf of one member.

    Replay protection: a transaction id may appear once in a chain, and only in a block dated at
    or before ``expires_ms`` and at most ``tx_ttl_ms`` before it, so members need to remember ids
    only until they expire. ``nonce`` makes otherwise identical writes distinct.
    """

    member: str
    client: bytes
    nonce: int
    expires_ms: int
    ops: tuple[Op, ...]
    signature: bytes
    body: bytes = field(repr=False)
    txid: bytes = field(init=False, repr=False)
    raw: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.signature) != SIG_LEN:
            raise DecodeError("tx.signature: must be 64 bytes")
        object.__setattr__(self, "txid", tagged_hash("tx", self.body))
        raw = encode([self.body, self.signature])
        if len(raw) > MAX_TX_BYTES:
            raise LimitError(f"tx: {len(raw)} bytes exceeds the limit of {MAX_TX_BYTES}")
        object.__setattr__(self, "raw", raw)

    @staticmethod
    def body_bytes(member: str, client: bytes, nonce: int, expires_ms: int, ops: Sequence[Op]) -> bytes:
        return encode([PROTOCOL_VERSION, member, client, nonce, expires_ms, [op.to_cbor() for op in ops]])

    @classmethod
    def create(cls, key: SigningKey, consortium_id: bytes, member: str, nonce: int,
               expires_ms: int, ops: Sequence[Op]) -> "Tx":
        if not 1 <= len(ops) <= MAX_OPS_PER_TX:
            raise DecodeError(f"tx.ops: need 1..{MAX_OPS_PER_TX} operations, got {len(ops)}")
        body = cls.body_bytes(member, key.public, nonce, expires_ms, ops)
        sig = key.sign(DOMAIN_TX, consortium_id, tagged_hash("tx", body))
        return cls(member, key.public, nonce, expires_ms, tuple(ops), sig, body)

    @classmethod
    def decode(cls, data: bytes) -> "Tx":
        outer = expect_list(decode(data, max_size=MAX_TX_BYTES, what="tx", max_items=MAX_TX_ITEMS), "tx", 2)
        body = expect_bytes(outer[0], "tx.body", max_len=MAX_TX_BYTES)
        signature = expect_bytes(outer[1], "tx.signature", SIG_LEN)
        return cls.from_parts(body, signature)

    @classmethod
    def from_parts(cls, body: bytes, signature: bytes) -> "Tx":
        items = expect_list(decode(body, max_size=MAX_TX_BYTES, what="tx.body", max_items=MAX_TX_ITEMS), "tx.body", 6)
        version = expect_int(items[0], "tx.version")
        if version != PROTOCOL_VERSION:
            raise DecodeError(f"tx.version: {version} is not {PROTOCOL_VERSION}")
        member = _member_name(items[1], "tx.member")
        client = expect_bytes(items[2], "tx.client", KEY_LEN)
        nonce = expect_int(items[3], "tx.nonce")
        expires = expect_int(items[4], "tx.expires_ms")
        ops_raw = expect_list(items[5], "tx.ops")
        if not 1 <= len(ops_raw) <= MAX_OPS_PER_TX:
            raise DecodeError(f"tx.ops: need 1..{MAX_OPS_PER_TX} operations, got {len(ops_raw)}")
        ops = tuple(Op.from_cbor(op, f"tx.ops[{i}]") for i, op in enumerate(ops_raw))
        return cls(member, client, nonce, expires, ops, signature, body)

    def signature_valid(self, consortium_id: bytes) -> bool:
        return verify(self.client, self.signature, DOMAIN_TX, consortium_id, self.txid)


# --- blocks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """What a block signature covers. ``prev`` chains it to its parent, and through the parent to
    the whole ancestry: signing a header endorses every block before it."""

    height: int
    round: int
    prev: bytes
    proposer: str
    time_ms: int
    tx_root: bytes
    tx_count: int
    state_root: bytes
    evidence_root: bytes
    ns_tx_root: bytes = EMPTY_STATE_ROOT
    """Root of the block's namespace transaction map (:func:`peerdb.core.statetree.ns_tx_root`);
    the default is that of a block without transactions."""
    version: int = PROTOCOL_VERSION
    raw: bytes = field(init=False, repr=False, compare=False)
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expect_int(self.height, "header.height")
        expect_int(self.round, "header.round", 0, MAX_ROUND)
        expect_bytes(self.prev, "header.prev", HASH_LEN)
        if self.height > 0:
            _member_name(self.proposer, "header.proposer")
        expect_int(self.time_ms, "header.time_ms")
        expect_bytes(self.tx_root, "header.tx_root", HASH_LEN)
        expect_int(self.tx_count, "header.tx_count", 0, MAX_BLOCK_TXS)
        expect_bytes(self.state_root, "header.state_root", HASH_LEN)
        expect_bytes(self.evidence_root, "header.evidence_root", HASH_LEN)
        expect_bytes(self.ns_tx_root, "header.ns_tx_root", HASH_LEN)
        if self.version != PROTOCOL_VERSION:
            raise DecodeError(f"header.version: {self.version} is not {PROTOCOL_VERSION}")
        raw = encode([self.version, self.height, self.round, self.prev, self.proposer, self.time_ms,
                      self.tx_root, self.tx_count, self.state_root, self.evidence_root, self.ns_tx_root])
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "hash", tagged_hash("header", raw))

    @classmethod
    def decode(cls, data: bytes) -> "Header":
        items = expect_list(decode(data, max_size=MAX_HEADER_BYTES, what="header"), "header")
        version = expect_int(items[0], "header.version") if items else None
        if version != PROTOCOL_VERSION:
            raise DecodeError(f"header.version: {version} is not {PROTOCOL_VERSION}")
        expect_list(items, "header", 11)
        header = cls(expect_int(items[1], "header.height"), expect_int(items[2], "header.round"),
                     items[3], expect_str(items[4], "header.proposer", MAX_NAME_LEN), items[5],
                     items[6], items[7], items[8], items[9], items[10], version)
        if header.raw != data:  # pragma: no cover - decode() already enforces canonical bytes
            raise DecodeError("header: not canonical")
        return header


def genesis_header(consortium: Consortium) -> Header:
    """Height 0: commits to the consortium definition; its hash is the consortium id. Its state
    is empty, and so is its namespace transaction map."""
    return Header(0, 0, consortium.definition_hash, "", consortium.genesis_time_ms,
                  merkle_root([]), 0, EMPTY_STATE_ROOT, merkle_root([]), EMPTY_STATE_ROOT)


def consortium_id(consortium: Consortium) -> bytes:
    return genesis_header(consortium).hash


@dataclass(frozen=True)
class BlockSignature:
    """A member's endorsement of a block hash (and so of its ancestry)."""

    block_hash: bytes
    member: str
    signature: bytes

    def __post_init__(self) -> None:
        expect_bytes(self.block_hash, "signature.block", HASH_LEN)
        _member_name(self.member, "signature.member")
        expect_bytes(self.signature, "signature.sig", SIG_LEN)

    @classmethod
    def create(cls, key: SigningKey, cid: bytes, member: str, block_hash: bytes) -> "BlockSignature":
        return cls(block_hash, member, key.sign(DOMAIN_BLOCK, cid, block_hash))

    def valid(self, cid: bytes, member_key: bytes) -> bool:
        return verify(member_key, self.signature, DOMAIN_BLOCK, cid, self.block_hash)

    def to_cbor(self) -> list[Any]:
        return [self.block_hash, self.member, self.signature]

    @classmethod
    def from_cbor(cls, raw: Any, where: str = "signature") -> "BlockSignature":
        items = expect_list(raw, where, 3)
        return cls(items[0], items[1], items[2])


@dataclass(frozen=True)
class Evidence:
    """Proof that ``member`` signed two different blocks at one height.

    Self-contained: both headers and both signatures, so anyone holding the member's key can
    check it without the blocks. Canonical order (``header_a.hash < header_b.hash``) gives each
    double-sign exactly one evidence id.
    """

    member: str
    header_a: Header
    sig_a: bytes
    header_b: Header
    sig_b: bytes
    id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _member_name(self.member, "evidence.member")
        expect_bytes(self.sig_a, "evidence.sig_a", SIG_LEN)
        expect_bytes(self.sig_b, "evidence.sig_b", SIG_LEN)
        if self.header_a.height != self.header_b.height:
            raise DecodeError("evidence: the two headers are at different heights")
        if not self.header_a.hash < self.header_b.hash:
            raise DecodeError("evidence: headers must differ and be ordered by hash")
        object.__setattr__(self, "id", tagged_hash("evidence", encode(
            [self.member, self.header_a.hash, self.header_b.hash])))

    @classmethod
    def from_signatures(cls, member: str, h1: Header, s1: bytes, h2: Header, s2: bytes) -> "Evidence":
        if h1.hash > h2.hash:
            h1, s1, h2, s2 = h2, s2, h1, s1
        return cls(member, h1, s1, h2, s2)

    def check(self, cid: bytes, member_key: bytes) -> None:
        """Raise unless both signatures are the member's: then the evidence convicts it."""
        for header, sig, which in ((self.header_a, self.sig_a, "a"), (self.header_b, self.sig_b, "b")):
            if not verify(member_key, sig, DOMAIN_BLOCK, cid, header.hash):
                raise SignatureError(f"evidence.sig_{which}: not {self.member}'s signature of the header")

    def to_cbor(self) -> list[Any]:
        return [self.member, self.header_a.raw, self.sig_a, self.header_b.raw, self.sig_b]

    @classmethod
    def from_cbor(cls, raw: Any, where: str = "evidence") -> "Evidence":
        items = expect_list(raw, where, 5)
        return cls(items[0], Header.decode(expect_bytes(items[1], f"{where}.header_a", max_len=MAX_HEADER_BYTES)),
                   items[2], Header.decode(expect_bytes(items[3], f"{where}.header_b", max_len=MAX_HEADER_BYTES)),
                   items[4])

    def encode(self) -> bytes:
        return encode(self.to_cbor())

    @classmethod
    def decode(cls, data: bytes) -> "Evidence":
        return cls.from_cbor(decode(data, max_size=MAX_EVIDENCE_BYTES, what="evidence"))


@dataclass(frozen=True)
class Objection:
    """A member's signed refusal to co-sign a block, with the reason (objection, not silence)."""

    block_hash: bytes
    member: str
    reason: str
    signature: bytes

    def __post_init__(self) -> None:
        expect_bytes(self.block_hash, "objection.block", HASH_LEN)
        _member_name(self.member, "objection.member")
        expect_str(self.reason, "objection.reason", MAX_REASON_LEN * 4)
        expect_bytes(self.signature, "objection.sig", SIG_LEN)

    @staticmethod
    def _hash(block_hash: bytes, member: str, reason: str) -> bytes:
        return tagged_hash("objection", encode([block_hash, member, reason]))

    @classmethod
    def create(cls, key: SigningKey, cid: bytes, member: str, block_hash: bytes, reason: str) -> "Objection":
        reason = reason[:MAX_REASON_LEN]
        return cls(block_hash, member, reason,
                   key.sign(DOMAIN_OBJECTION, cid, cls._hash(block_hash, member, reason)))

    def valid(self, cid: bytes, member_key: bytes) -> bool:
        return verify(member_key, self.signature, DOMAIN_OBJECTION, cid,
                      self._hash(self.block_hash, self.member, self.reason))

    def to_cbor(self) -> list[Any]:
        return [self.block_hash, self.member, self.reason, self.signature]

    @classmethod
    def from_cbor(cls, raw: Any, where: str = "objection") -> "Objection":
        items = expect_list(raw, where, 4)
        return cls(items[0], items[1], items[2], items[3])


@dataclass(frozen=True)
class Block:
    """A header with the transactions and evidence it commits to."""

    header: Header
    txs: tuple[Tx, ...]
    evidence: tuple[Evidence, ...] = ()
    raw: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.txs) != self.header.tx_count:
            raise ValidationError(f"block {self.header.height}: header says {self.header.tx_count} txs, body has {len(self.txs)}")
        if len(self.evidence) > MAX_EVIDENCE_PER_BLOCK:
            raise LimitError(f"block.evidence: more than {MAX_EVIDENCE_PER_BLOCK} items")
        if merkle_root([tx.txid for tx in self.txs]) != self.header.tx_root:
            raise ValidationError(f"block {self.header.height}: tx_root does not match the transactions")
        if merkle_root([e.id for e in self.evidence]) != self.header.evidence_root:
            raise ValidationError(f"block {self.header.height}: evidence_root does not match the evidence")
        if block_ns_tx_root(self.txs, self.header.tx_root) != self.header.ns_tx_root:
            raise ValidationError(f"block {self.header.height}: ns_tx_root does not match the transactions' namespaces")
        raw = encode([self.header.raw, [tx.raw for tx in self.txs], [e.to_cbor() for e in self.evidence]])
        if len(raw) > MAX_BLOCK_BYTES:
            raise LimitError(f"block: {len(raw)} bytes exceeds the limit of {MAX_BLOCK_BYTES}")
        object.__setattr__(self, "raw", raw)

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @staticmethod
    def peek_header(data: bytes) -> Header:
        """Only the header of an encoded block: enough to attribute a block whose body is bad."""
        items = expect_list(decode(data, max_size=MAX_BLOCK_BYTES, what="block", max_items=MAX_BLOCK_ITEMS), "block", 3)
        return Header.decode(expect_bytes(items[0], "block.header", max_len=MAX_HEADER_BYTES))

    @classmethod
    def decode(cls, data: bytes, known: Mapping[bytes, Tx] | None = None) -> "Block":
        """Decode a block; ``known`` maps encoded transactions already decoded (the mempool) to
        their objects, so a member does not parse the same transaction twice."""
        items = expect_list(decode(data, max_size=MAX_BLOCK_BYTES, what="block", max_items=MAX_BLOCK_ITEMS), "block", 3)
        header = Header.decode(expect_bytes(items[0], "block.header", max_len=MAX_HEADER_BYTES))
        txs_raw = expect_list(items[1], "block.txs")
        if len(txs_raw) > MAX_BLOCK_TXS:
            raise LimitError(f"block.txs: more than {MAX_BLOCK_TXS} transactions")
        txs = []
        for i, t in enumerate(txs_raw):
            cached = known.get(t) if known is not None and type(t) is bytes else None
            if cached is not None:
                txs.append(cached)
                continue
            outer = expect_list(decode(expect_bytes(t, f"block.txs[{i}]", max_len=MAX_TX_BYTES),
                                       max_size=MAX_TX_BYTES, what=f"block.txs[{i}]", max_items=MAX_TX_ITEMS),
                                f"block.txs[{i}]", 2)
            txs.append(Tx.from_parts(expect_bytes(outer[0], f"block.txs[{i}].body", max_len=MAX_TX_BYTES),
                                     expect_bytes(outer[1], f"block.txs[{i}].signature", SIG_LEN)))
        ev_raw = expect_list(items[2], "block.evidence")
        evidence = tuple(Evidence.from_cbor(e, f"block.evidence[{i}]") for i, e in enumerate(ev_raw))
        return cls(header, tuple(txs), evidence)


def tx_namespaces(tx: Tx) -> frozenset[str]:
    """The namespaces a transaction's ops touch (``_gov`` for governance requests)."""
    return frozenset(op.namespace for op in tx.ops)


def block_ns_tx_root(txs: Sequence[Tx], tx_root: bytes | None = None) -> bytes:
    """The ``ns_tx_root`` a header must carry for these transactions (docs/protocol.md §7.1).
    ``tx_root``, if the caller has it, is reused for a namespace every transaction touches."""
    return ns_tx_root(((tx.txid, tx_namespaces(tx)) for tx in txs), tx_root, len(txs))


def body_header(height: int, round_: int, prev: bytes, proposer: str, time_ms: int, txs: Sequence[Tx],
                state_root: bytes, evidence: Sequence[Evidence] = ()) -> Header:
    """A header whose transaction, namespace and evidence roots are those of ``txs`` and
    ``evidence`` (the state root is the caller's: it needs the parent's state)."""
    tx_root = merkle_root([tx.txid for tx in txs])
    return Header(height, round_, prev, proposer, time_ms, tx_root, len(txs), state_root,
                  merkle_root([e.id for e in evidence]), block_ns_tx_root(txs, tx_root))


KeyLookup = Callable[[str], bytes | None]
"""Maps a member name to the key it signs with (at the height in question)."""
