"""Generate tests/data/vectors.json: PeerDB protocol test vectors (valid and invalid objects).

Deterministic: keys come from fixed seeds, Ed25519 signatures are deterministic, and every time
is a constant, so running this twice gives byte-identical JSON (tests/core/test_vectors.py checks
that against the committed file). Only the consensus core is used, so the vectors say what the
protocol is, not what some node happened to do.

    .venv/bin/python tests/data/make_vectors.py          # rewrite vectors.json
    .venv/bin/python tests/data/make_vectors.py --check  # exit 1 if the file is stale

A second implementation should: decode every vector's ``hex`` with the decoder for its ``kind``,
compare the hashes given, run the ``stage: verify`` checks in the ``context`` given (replaying
the ``valid`` blocks in order to get each parent's state), and raise the named error class (or
its equivalent) for each ``invalid`` vector. ``checks`` in the JSON spells out each step.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peerdb.core.chain import BlockTree
from peerdb.core.codec import encode, signing_message
from peerdb.core.consortium import Consortium, parse_consortium
from peerdb.core.keys import SigningKey
from peerdb.core.limits import PROTOCOL_VERSION
from peerdb.core.merkle import merkle_path, merkle_root
from peerdb.core.smt import EMPTY, leaf_hash, node_hash
from peerdb.core.model import (
    DOMAIN_BLOCK,
    DOMAIN_OBJECTION,
    DOMAIN_TX,
    OP_DELETE,
    OP_PUT,
    ZERO_HASH,
    Block,
    BlockSignature,
    Evidence,
    Header,
    Objection,
    Op,
    Tx,
    body_header,
    consortium_id,
    genesis_header,
    tx_namespaces,
)
from peerdb.core.state import MemoryState, apply_txs
from peerdb.core.statetree import (
    EMPTY_STATE_ROOT,
    key_path,
    namespace_root,
    ns_path,
    ns_tx_lists,
    prove_key,
    prove_ns_txs,
    value_hash,
)

OUT = Path(__file__).with_name("vectors.json")
NAMES = ("firm-a", "firm-b", "firm-c", "firm-d")
GENESIS_MS = 1_700_000_000_000
NOW_MS = GENESIS_MS + 60_000
"""The verifier's clock for every ``verify`` vector."""


def key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"peerdb-test-vectors/" + label.encode()).digest())


MEMBER = {n: key("member/" + n) for n in NAMES}
CLIENT = {n: key("client/" + n) for n in NAMES}
OUTSIDER = key("outsider")

TOML = "\n".join([
    "[consortium]",
    'name = "vector-consortium"',
    f"genesis_time_ms = {GENESIS_MS}",
    "open_namespaces = true",
    "",
    "[params]",
    "heartbeat_ms = 1000",
    "turn_timeout_ms = 3000",
    "clock_skew_ms = 5000",
    "tx_ttl_ms = 3600000",
    "",
    *[line for i, n in enumerate(NAMES) for line in (
        "[[members]]",
        f'name = "{n}"',
        f'key = "{MEMBER[n].public.hex()}"',
        f'address = "127.0.0.1:{7001 + i}"',
        f'clients = ["{CLIENT[n].public.hex()}"]',
        "",
    )],
    "[[namespaces]]",
    'name = "books"',
    'writers = ["firm-a", "firm-b"]',
    'readers = ["*"]',
    "",
])


def load() -> Consortium:
    return parse_consortium(tomllib.loads(TOML))


def tx(c: bytes, member: str, nonce: int, ops: list[Op], expires: int = GENESIS_MS + 3_600_000,
       signer: SigningKey | None = None) -> Tx:
    return Tx.create(signer or CLIENT[member], c, member, nonce, expires, ops)


def header_for(parent: Header, round_: int, proposer: str, time_ms: int, txs: Sequence[Tx], state_root: bytes,
               evidence: Sequence[Evidence] = (), height: int | None = None, prev: bytes | None = None) -> Header:
    return body_header(parent.height + 1 if height is None else height, round_, parent.hash if prev is None else prev,
                       proposer, time_ms, txs, state_root, evidence)


def sig_hex(s: BlockSignature) -> str:
    return encode(s.to_cbor()).hex()


def build() -> str:
    c = load()
    cid = consortium_id(c)
    genesis = genesis_header(c)
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []

    # --- a valid chain: genesis <- b1 <- b2, and b1x, a sibling of b1 --------------------------
    t1 = tx(cid, "firm-a", 1, [Op(OP_PUT, "books", "invoice/1", b"100 EUR")])
    t2 = tx(cid, "firm-b", 1, [Op(OP_PUT, "books", "invoice/2", b"250 EUR"), Op(OP_DELETE, "books", "invoice/0")])
    t3 = tx(cid, "firm-c", 7, [Op(OP_PUT, "notes", "greeting", "grüße".encode())])
    t_member_signed = tx(cid, "firm-d", 1, [Op(OP_PUT, "notes", "by-member-key", b"")], signer=MEMBER["firm-d"])
    state = MemoryState()
    b1_time = GENESIS_MS + 1000
    b1_txs = [t1, t2, t3, t_member_signed]
    e1 = apply_txs(state, b1_txs, c, cid, b1_time, genesis.state_root)
    b1 = Block(header_for(genesis, 0, "firm-a", b1_time, b1_txs, e1.state_root), tuple(b1_txs))
    state_b1 = MemoryState()
    state_b1.apply(e1)

    t4 = tx(cid, "firm-a", 2, [Op(OP_PUT, "books", "invoice/3", b"")])
    b1x_time = GENESIS_MS + 3000 + 10  # round 1 starts one turn timeout after genesis
    e1x = apply_txs(MemoryState(), [t4], c, cid, b1x_time, genesis.state_root)
    b1x = Block(header_for(genesis, 1, "firm-b", b1x_time, [t4], e1x.state_root), (t4,))

    # firm-d signed both b1 and b1x: double-sign evidence, carried in b2
    ev = Evidence.from_signatures("firm-d", b1.header, MEMBER["firm-d"].sign(DOMAIN_BLOCK, cid, b1.hash),
                                  b1x.header, MEMBER["firm-d"].sign(DOMAIN_BLOCK, cid, b1x.hash))
    t5 = tx(cid, "firm-a", 3, [Op(OP_DELETE, "books", "invoice/1")])
    b2_time = b1_time + 3000 + 500
    e2 = apply_txs(state_b1, [t5], c, cid, b2_time, b1.header.state_root)
    b2 = Block(header_for(b1.header, 1, "firm-c", b2_time, [t5], e2.state_root, [ev]), (t5,), (ev,))

    def signatures(block: Block, members: list[str]) -> list[str]:
        return [sig_hex(BlockSignature.create(MEMBER[m], cid, m, block.hash)) for m in members]

    for t, name in ((t1, "put by firm-a's client key"), (t2, "put and delete by firm-b"),
                    (t3, "non-ASCII value in an open namespace"), (t_member_signed, "signed with a member key")):
        valid.append({"name": f"tx: {name}", "kind": "tx", "hex": t.raw.hex(), "txid": t.txid.hex(),
                      "context": {"block_time_ms": b1_time}})
    valid.append({"name": "header: genesis", "kind": "header", "hex": genesis.raw.hex(), "hash": genesis.hash.hex()})
    for blk, parent, name, signers in ((b1, genesis, "b1: four transactions, firm-a's turn", ["firm-a", "firm-c", "firm-d"]),
                                       (b1x, genesis, "b1x: a sibling of b1 in round 1 (firm-b's turn)", ["firm-b", "firm-d"]),
                                       (b2, b1.header, "b2: round 1 on b1 (firm-c's turn), carries evidence",
                                        ["firm-c", "firm-a", "firm-b"])):
        valid.append({"name": f"header: {name}", "kind": "header", "hex": blk.header.raw.hex(),
                      "hash": blk.hash.hex(), "context": {"parent": parent.hash.hex(), "now_ms": NOW_MS}})
        valid.append({"name": f"block: {name}", "kind": "block", "hex": blk.raw.hex(), "hash": blk.hash.hex(),
                      "context": {"parent": parent.hash.hex(), "now_ms": NOW_MS,
                                  "proposer_signature": signatures(blk, [blk.header.proposer])[0]},
                      "signatures": signatures(blk, signers)})
    for m in NAMES:
        valid.append({"name": f"block signature on b1 by {m}", "kind": "block_signature",
                      "hex": signatures(b1, [m])[0], "context": {"proposer_of": b1.hash.hex()} if m == "firm-a" else {}})
    valid.append({"name": "evidence: firm-d signed b1 and b1x", "kind": "evidence", "hex": ev.encode().hex(),
                  "id": ev.id.hex()})
    objection = Objection.create(MEMBER["firm-b"], cid, "firm-b", b1.hash, "state_root does not match my replay")
    valid.append({"name": "objection by firm-b to b1", "kind": "objection", "hex": encode(objection.to_cbor()).hex()})

    # --- invalid objects -----------------------------------------------------------------------
    def bad(name: str, kind: str, data: bytes, error: str, stage: str, **context: Any) -> None:
        entry: dict[str, Any] = {"name": name, "kind": kind, "hex": data.hex(), "error": error, "stage": stage}
        if context:
            entry["context"] = context
        invalid.append(entry)

    flipped_sig = bytearray(t1.signature)
    flipped_sig[10] ^= 0x01
    t1_bad_sig = Tx.from_parts(t1.body, bytes(flipped_sig))
    ctx_tx = {"block_time_ms": b1_time}
    bad("tx: signature with one bit flipped", "tx", t1_bad_sig.raw, "SignatureError", "verify", **ctx_tx)
    bad("tx: client key not registered to any member", "tx",
        tx(cid, "firm-a", 9, [Op(OP_PUT, "books", "k", b"")], signer=OUTSIDER).raw, "ValidationError", "verify", **ctx_tx)
    bad("tx: firm-c may not write namespace books", "tx",
        tx(cid, "firm-c", 9, [Op(OP_PUT, "books", "k", b"")]).raw, "AccessError", "verify", **ctx_tx)
    bad("tx: expired before the block", "tx",
        tx(cid, "firm-a", 9, [Op(OP_PUT, "books", "k", b"")], expires=b1_time - 1).raw, "ReplayError", "verify", **ctx_tx)
    bad("tx: signed for another consortium", "tx",
        tx(hashlib.sha256(b"other consortium").digest(), "firm-a", 9, [Op(OP_PUT, "books", "k", b"")]).raw,
        "SignatureError", "verify", **ctx_tx)
    bad("tx: non-canonical outer array length", "tx", b"\x98\x02" + t1.raw[1:], "NonCanonicalError", "decode")
    bad("tx: non-canonical integer in the body", "tx",
        encode([encode([PROTOCOL_VERSION, "firm-a", CLIENT["firm-a"].public, 1, 5, [[0, "books", "k", b""]]])
                .replace(bytes([PROTOCOL_VERSION]) + b"\x66firm-a", b"\x18" + bytes([PROTOCOL_VERSION]) + b"\x66firm-a"),
                bytes(64)]),
        "NonCanonicalError", "decode")
    bad("tx: trailing bytes", "tx", t1.raw + b"\x00", "TrailingBytesError", "decode")
    bad("tx: truncated", "tx", t1.raw[:-1], "TruncatedError", "decode")
    bad("tx: CBOR tag around the body", "tx", encode([b"", b""])[:1] + b"\xd8\x18" + encode(t1.body) + encode(t1.signature),
        "DecodeError", "decode")
    bad("tx: protocol version 1", "tx",
        encode([encode([1, "firm-a", CLIENT["firm-a"].public, 1, 5, [[0, "books", "k", b""]]]), bytes(64)]),
        "DecodeError", "decode")

    ctx_g = {"parent": genesis.hash.hex(), "now_ms": NOW_MS}
    wrong_turn = header_for(genesis, 0, "firm-b", b1_time, [], genesis.state_root)
    bad("header: firm-b proposes in firm-a's turn", "header", wrong_turn.raw, "ValidationError", "verify", **ctx_g)
    bad("header: prev is not the parent", "header",
        header_for(b1.header, 1, "firm-c", b2_time, [], ZERO_HASH, prev=b1x.hash).raw, "ValidationError", "verify",
        parent=b1.hash.hex(), now_ms=NOW_MS)
    bad("header: height skips one", "header",
        header_for(genesis, 0, "firm-b", b1_time, [], ZERO_HASH, height=2).raw, "ValidationError", "verify", **ctx_g)
    bad("header: dated beyond the clock skew", "header",
        header_for(genesis, 0, "firm-a", NOW_MS + 5001, [], ZERO_HASH).raw, "ValidationError", "verify", **ctx_g)
    bad("header: dated before its round began", "header",
        header_for(genesis, 3, "firm-d", GENESIS_MS + 3 * 3000 - 5000 - 1, [], ZERO_HASH).raw,
        "ValidationError", "verify", **ctx_g)
    bad("header: trailing bytes", "header", b1.header.raw + b"\xf6", "TrailingBytesError", "decode")
    bad("header: version 1 (before the state tree)", "header", encode([1] + list(_items(b1.header))[1:10]),
        "DecodeError", "decode")
    bad("header: version 2 without ns_tx_root", "header", encode(list(_items(b1.header))[:10]),
        "DecodeError", "decode")

    wrong_turn_block = Block(wrong_turn, ())
    bad("block: wrong turn", "block", wrong_turn_block.raw, "ValidationError", "verify", **ctx_g)
    bad("block: tx_root does not match the transactions", "block",
        encode([b1.header.raw, [t.raw for t in (t2, t1, t3, t_member_signed)], []]), "ValidationError", "decode")
    bad("block: tx_count does not match", "block", encode([b1.header.raw, [t.raw for t in b1_txs[:3]], []]),
        "ValidationError", "decode")
    bad("block: evidence_root does not match", "block", encode([b2.header.raw, [t5.raw], []]), "ValidationError", "decode")
    wrong_ns = Header(1, 0, genesis.hash, "firm-a", b1_time, b1.header.tx_root, len(b1_txs), e1.state_root,
                      b1.header.evidence_root, EMPTY_STATE_ROOT)
    bad("block: ns_tx_root does not match the transactions", "block", encode([wrong_ns.raw, [t.raw for t in b1_txs], []]),
        "ValidationError", "decode")
    bad_root = Block(header_for(b1.header, 1, "firm-c", b2_time, [t5], ZERO_HASH), (t5,))
    bad("block: state_root does not match the effects", "block", bad_root.raw, "ValidationError", "verify",
        parent=b1.hash.hex(), now_ms=NOW_MS)
    replay = Block(header_for(b1.header, 1, "firm-c", b2_time, [t1], e2.state_root), (t1,))
    bad("block: replays a transaction of its parent", "block", replay.raw, "ReplayError", "verify",
        parent=b1.hash.hex(), now_ms=NOW_MS)
    forged_tx_block = Block(header_for(genesis, 0, "firm-a", b1_time, [t1_bad_sig],
                                       apply_txs(MemoryState(), [t1], c, cid, b1_time, EMPTY_STATE_ROOT).state_root),
                            (t1_bad_sig,))
    bad("block: carries a transaction with a bad signature", "block", forged_tx_block.raw, "SignatureError", "verify",
        **ctx_g)
    bad("block: trailing bytes", "block", b1.raw + b"\x00", "TrailingBytesError", "decode")
    bad("block: non-canonical outer array", "block", b"\x98\x03" + b1.raw[1:], "NonCanonicalError", "decode")

    bad("block signature: firm-b's key signing as firm-a", "block_signature",
        encode([b1.hash, "firm-a", MEMBER["firm-b"].sign(DOMAIN_BLOCK, cid, b1.hash)]), "SignatureError", "verify")
    bad("block signature: another member's valid signature offered as the proposer's", "block_signature",
        bytes.fromhex(signatures(b1, ["firm-c"])[0]), "SignatureError", "verify", proposer_of=b1.hash.hex())
    bad("block signature: signature made in the tx domain over the block hash", "block_signature",
        encode([b1.hash, "firm-a", MEMBER["firm-a"].sign(DOMAIN_TX, cid, b1.hash)]), "SignatureError", "verify",
        proposer_of=b1.hash.hex())
    bad("block signature: a member-signed transaction's signature replayed as a block signature", "block_signature",
        encode([t_member_signed.txid, "firm-d", t_member_signed.signature]), "SignatureError", "verify")
    bad("block signature: an objection's signature replayed as a block signature", "block_signature",
        encode([b1.hash, "firm-b", objection.signature]), "SignatureError", "verify")
    bad("block signature: bound to another consortium", "block_signature",
        encode([b1.hash, "firm-a", MEMBER["firm-a"].sign(DOMAIN_BLOCK, hashlib.sha256(b"x").digest(), b1.hash)]),
        "SignatureError", "verify")

    bad("evidence: second signature is firm-c's", "evidence",
        Evidence("firm-d", ev.header_a, ev.sig_a, ev.header_b, MEMBER["firm-c"].sign(DOMAIN_BLOCK, cid, ev.header_b.hash)).encode(),
        "SignatureError", "verify")
    bad("evidence: signatures in the objection domain", "evidence",
        Evidence("firm-d", ev.header_a, MEMBER["firm-d"].sign(DOMAIN_OBJECTION, cid, ev.header_a.hash),
                 ev.header_b, MEMBER["firm-d"].sign(DOMAIN_OBJECTION, cid, ev.header_b.hash)).encode(),
        "SignatureError", "verify")
    bad("evidence: against a non-member", "evidence",
        Evidence("firm-x", ev.header_a, ev.sig_a, ev.header_b, ev.sig_b).encode(), "ValidationError", "verify")
    bad("evidence: headers at different heights", "evidence",
        encode(["firm-d", b1.header.raw, ev.sig_a, b2.header.raw, ev.sig_b]), "DecodeError", "decode")
    bad("evidence: the same header twice", "evidence",
        encode(["firm-d", b1.header.raw, ev.sig_a, b1.header.raw, ev.sig_a]), "DecodeError", "decode")
    bad("evidence: headers not ordered by hash", "evidence",
        encode(["firm-d", ev.header_b.raw, ev.sig_b, ev.header_a.raw, ev.sig_a]), "DecodeError", "decode")

    bad("objection: reason changed after signing", "objection",
        encode([b1.hash, "firm-b", "something else", objection.signature]), "SignatureError", "verify")
    bad("objection: a block signature replayed as an objection", "objection",
        encode([b1.hash, "firm-a", "", BlockSignature.create(MEMBER["firm-a"], cid, "firm-a", b1.hash).signature]),
        "SignatureError", "verify")

    # --- fork choice over these blocks -----------------------------------------------------------
    tree = BlockTree(genesis, c.member_names)
    fork_events: list[list[str]] = []
    for h in (b1.header, b1x.header, b2.header):
        tree.add_header(h)
        fork_events.append(["header", h.raw.hex()])
    fork_sigs = [(b1, ["firm-a", "firm-c", "firm-d"]), (b1x, ["firm-b", "firm-d"]), (b2, ["firm-c", "firm-a", "firm-b"])]
    for blk, members in fork_sigs:
        for m in members:
            tree.add_signature(blk.hash, m)
            fork_events.append(["signature", blk.hash.hex(), m])
    before = {"best_tip": tree.best_tip.hash.hex(), "weights": {b.hash.hex(): tree.weight(b.hash) for b in (b1, b1x, b2)}}
    tree.add_culprit("firm-d")
    fork_events.append(["culprit", "firm-d"])
    tree.set_anchored(b1.hash)
    fork_events.append(["anchored", b1.hash.hex()])
    heads = tree.heads()
    fork_choice = {
        "events": fork_events,
        "before_culprit": before,
        "expected": {
            "best_tip": tree.best_tip.hash.hex(),
            "weights": {b.hash.hex(): tree.weight(b.hash) for b in (b1, b1x, b2)},
            "heads": {"tentative": heads.tentative, "majority": heads.majority,
                      "unanimous_signed": heads.unanimous_signed, "unanimous": heads.unanimous,
                      "anchored": heads.anchored},
            "statuses": {b.hash.hex(): tree.status(b.hash).value for b in (b1, b1x, b2)},
        },
    }

    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(8)]
    merkle = [{"leaves": [x.hex() for x in leaves[:n]], "root": merkle_root(leaves[:n]).hex(),
               "paths": [[[left, sib.hex()] for left, sib in merkle_path(leaves[:n], i)] for i in range(n)]}
              for n in (0, 1, 2, 3, 5, 8)]
    # --- the state tree: roots, key proofs, namespace transaction lists ---------------------------
    state_b2 = MemoryState(state_b1.nodes)
    state_b2.values = dict(state_b1.values)
    state_b2.apply(e2)
    trees = []
    for blk, st in ((b1, state_b1), (b2, state_b2)):
        root = blk.header.state_root
        proofs = []
        for ns, k in (("books", "invoice/1"), ("books", "invoice/2"), ("books", "invoice/0"),
                      ("notes", "greeting"), ("nowhere", "x")):
            value = st.values.get((ns, k))
            proof = prove_key(st, root, blk.height, ns, k)
            proofs.append({"namespace": ns, "key": k, "value": None if value is None else value.hex(),
                           "proof": encode(proof.to_cbor()).hex()})
        namespaces = sorted({ns for ns, _ in st.values})
        trees.append({"block": blk.hash.hex(), "state_root": root.hex(),
                      "namespace_roots": {ns: namespace_root(st, root, blk.height, ns)[0].hex() for ns in namespaces},
                      "proofs": proofs})
    lists = ns_tx_lists((t.txid, tx_namespaces(t)) for t in b1_txs)
    ns_txs = {"block": b1.hash.hex(), "ns_tx_root": b1.header.ns_tx_root.hex(),
              "lists": {ns: [t.hex() for t in ids] for ns, ids in sorted(lists.items())},
              "proofs": {ns: encode(prove_ns_txs([(t.txid, tx_namespaces(t)) for t in b1_txs], ns).to_cbor()).hex()
                         for ns in ("books", "notes", "nowhere")}}
    p0, p1 = hashlib.sha256(b"p0").digest(), hashlib.sha256(b"p1").digest()
    smt_primitives = {"empty": EMPTY.hex(), "leaf(p0, p1)": leaf_hash(p0, p1).hex(),
                      "node(p0, p1)": node_hash(p0, p1).hex(), "p0": p0.hex(), "p1": p1.hex(),
                      "ns_path(books)": ns_path("books").hex(), "key_path(invoice/1)": key_path("invoice/1").hex(),
                      "value_hash(100 EUR)": value_hash(b"100 EUR").hex()}

    messages = [{"domain": d, "consortium_id": cid.hex(), "hash": b1.hash.hex(),
                 "message": signing_message(d, cid, b1.hash).hex()} for d in (DOMAIN_BLOCK, DOMAIN_TX, DOMAIN_OBJECTION)]

    doc = {
        "about": "PeerDB protocol test vectors, generated by tests/data/make_vectors.py; do not edit by hand.",
        "protocol_version": PROTOCOL_VERSION,
        "checks": {
            "decode": "tx: Tx.decode; header: Header.decode; block: Block.decode; evidence: Evidence.decode; "
                      "block_signature / objection: hardened decode, then from_cbor.",
            "valid": "decodes, re-encodes to the same bytes, hashes (txid, hash, id) as given, and passes verify.",
            "verify": "tx: apply_txs on an empty state at context.block_time_ms; header: check_header against "
                      "context.parent at context.now_ms (without a parent: equal to the genesis header); block: check_header, check_block against the parent's "
                      "state (replay the valid blocks), and check_proposer_signature with "
                      "context.proposer_signature; block_signature: valid under the member's key, and if "
                      "context.proposer_of, check_proposer_signature on that block; evidence: check_evidence; "
                      "objection: valid under the member's key. A failed signature check is a SignatureError.",
            "invalid": "raises the named class of peerdb.core.errors at the named stage (decode or verify), "
                       "and passes every earlier stage.",
            "state_trees": "after each block, every proof (StateProof CBOR) verifies the value given (null: "
                           "absent) under state_root with statetree.verify_key, and each namespace root is "
                           "the one the state root proves.",
            "ns_transactions": "each namespace's txids hash (merkle_root) to the value its proof shows under "
                               "ns_tx_root; a namespace no transaction touches is proven absent.",
        },
        "keys": {"members": {n: {"seed": MEMBER[n].seed.hex(), "public": MEMBER[n].public.hex()} for n in NAMES},
                 "clients": {n: {"seed": CLIENT[n].seed.hex(), "public": CLIENT[n].public.hex()} for n in NAMES},
                 "outsider": {"seed": OUTSIDER.seed.hex(), "public": OUTSIDER.public.hex()}},
        "consortium": {"toml": TOML, "definition_hash": c.definition_hash.hex(), "id": cid.hex(),
                       "genesis_header": genesis.raw.hex()},
        "signing_messages": messages,
        "merkle": merkle,
        "smt": smt_primitives,
        "state_trees": trees,
        "ns_transactions": ns_txs,
        "valid": valid,
        "invalid": invalid,
        "fork_choice": fork_choice,
    }
    return json.dumps(doc, indent=1, ensure_ascii=True) + "\n"


def _items(h: Header) -> list[Any]:
    return [h.version, h.height, h.round, h.prev, h.proposer, h.time_ms, h.tx_root, h.tx_count, h.state_root,
            h.evidence_root, h.ns_tx_root]


def main(argv: list[str]) -> int:
    text = build()
    if "--check" in argv:
        if OUT.read_text(encoding="ascii") != text:
            print(f"{OUT} is stale: run {Path(__file__).name} to regenerate it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="ascii")
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
