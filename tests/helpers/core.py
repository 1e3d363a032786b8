"""Small builders for the core tests: the seeded four-member consortium, transactions, blocks on
a parent, signatures and evidence.

Keys come from :mod:`tests.helpers.consortium` (fixed seeds, so failures reproduce); nothing
here reads the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from peerdb.core.consortium import Consortium, NamespaceRule
from peerdb.core.keys import SigningKey
from peerdb.core.merkle import merkle_root
from peerdb.core.model import (
    OP_DELETE,
    OP_PUT,
    ZERO_HASH,
    Block,
    BlockSignature,
    Evidence,
    Header,
    Op,
    Tx,
    body_header,
    consortium_id,
    genesis_header,
)
from peerdb.core.smt import build as smt_build
from peerdb.core.state import Effects, MemoryState, StateReader, apply_txs
from peerdb.core.statetree import key_path, ns_path, value_hash
from peerdb.core.validate import proposer_for

from tests.helpers.consortium import GENESIS_MS as GENESIS_MS
from tests.helpers.consortium import MEMBER_NAMES as MEMBER_NAMES
from tests.helpers.consortium import seed_key as seed_key
from tests.helpers.consortium import seeded_consortium

BOOKS_RULE = NamespaceRule("books", writers=("firm-a", "firm-b"), readers=("*",))
PRIVATE_RULE = NamespaceRule("private", writers=("firm-a",), readers=("firm-a",))


def make_consortium(names: Sequence[str] = MEMBER_NAMES, **overrides: Any) -> Consortium:
    """The seeded test consortium with two namespace rules (``books``: firm-a and firm-b write;
    ``private``: firm-a only), then any field replaced by ``overrides``."""
    namespaces = (BOOKS_RULE, PRIVATE_RULE) if set(names) >= {"firm-a", "firm-b"} else ()
    base = seeded_consortium(names, namespaces=namespaces).consortium
    return replace(base, **overrides) if overrides else base


def member_key(name: str) -> SigningKey:
    return seed_key("member/" + name)


def client_key(name: str) -> SigningKey:
    return seed_key("client/" + name)


OUTSIDER_KEY = seed_key("outsider")


CONSORTIUM = make_consortium()
CID = consortium_id(CONSORTIUM)
GENESIS = genesis_header(CONSORTIUM)


def put(namespace: str, key: str, value: bytes) -> Op:
    return Op(OP_PUT, namespace, key, value)


def delete(namespace: str, key: str) -> Op:
    return Op(OP_DELETE, namespace, key)


def make_tx(member: str = "firm-a", nonce: int = 1, ops: Sequence[Op] | None = None,
            expires_ms: int = GENESIS_MS + 600_000, cid: bytes = CID,
            key: SigningKey | None = None) -> Tx:
    ops = ops if ops is not None else [put("books", f"k{nonce}", b"v%d" % nonce)]
    return Tx.create(key or client_key(member), cid, member, nonce, expires_ms, ops)


def make_block(parent: Header, txs: Sequence[Tx] = (), *, consortium: Consortium = CONSORTIUM,
               cid: bytes | None = None, reader: StateReader | None = None,
               parent_state_root: bytes | None = None, round_: int = 0, time_ms: int | None = None,
               evidence: Sequence[Evidence] = (), proposer: str | None = None,
               state_root: bytes | None = None) -> tuple[Block, Effects]:
    """A block at parent.height + 1 whose roots match its contents (unless overridden)."""
    cid = cid if cid is not None else consortium_id(consortium)
    reader = reader if reader is not None else MemoryState()
    prev_root = parent_state_root if parent_state_root is not None else parent.state_root
    height = parent.height + 1
    if time_ms is None:
        time_ms = parent.time_ms + round_ * consortium.params.turn_timeout_ms + 1
    effects = apply_txs(reader, txs, consortium, cid, time_ms, prev_root)
    header = body_header(height, round_, parent.hash, proposer or proposer_for(consortium.member_names, height, round_),
                         time_ms, txs, state_root if state_root is not None else effects.state_root, evidence)
    return Block(header, tuple(txs), tuple(evidence)), effects


def expected_state_root(values: dict[tuple[str, str], bytes]) -> bytes:
    """The state root of a state, built from scratch by the definition (docs/protocol.md §7.3):
    the tree of namespace roots, each the tree of its keys' value hashes."""
    by_ns: dict[str, dict[bytes, bytes]] = {}
    for (ns, key), value in values.items():
        by_ns.setdefault(ns, {})[key_path(key)] = value_hash(value)
    return smt_build({ns_path(ns): smt_build(keys)[0] for ns, keys in by_ns.items()})[0]


def sign_block(member: str, block_hash: bytes, cid: bytes = CID) -> BlockSignature:
    return BlockSignature.create(member_key(member), cid, member, block_hash)


def bare_header(parent: Header, round_: int = 0, proposer: str = "firm-a", time_ms: int | None = None,
                salt: int = 0) -> Header:
    """A header for tree tests (the tree does not check turns or roots); ``salt`` makes siblings differ."""
    return Header(parent.height + 1, round_, parent.hash, proposer,
                  parent.time_ms + 1 + salt if time_ms is None else time_ms,
                  merkle_root([]), 0, ZERO_HASH, merkle_root([]))


def double_sign_evidence(member: str, parent: Header = GENESIS, cid: bytes = CID) -> Evidence:
    """Evidence that ``member`` signed two sibling headers at parent.height + 1."""
    h1 = bare_header(parent, salt=1)
    h2 = bare_header(parent, salt=2)
    key = member_key(member)
    return Evidence.from_signatures(member, h1, key.sign("block", cid, h1.hash),
                                    h2, key.sign("block", cid, h2.hash))


def assert_names(exc: BaseException, *fragments: str) -> None:
    """The error message names the field (and whatever else the caller expects)."""
    message = str(exc)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message {message!r}"
