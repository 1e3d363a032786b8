"""Check every protocol test vector in tests/data/vectors.json, and that regenerating it is byte-exact."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import peerdb.core.errors as errors
from peerdb.core.chain import BlockTree
from peerdb.core.codec import decode, encode, signing_message
from peerdb.core.consortium import Consortium, parse_consortium
from peerdb.core.keys import SigningKey
from peerdb.core.merkle import merkle_root, verify_path
from peerdb.core.model import (
    Block,
    BlockSignature,
    Evidence,
    Header,
    Objection,
    Tx,
    consortium_id,
    genesis_header,
)
from peerdb.core.smt import EMPTY, Proof, leaf_hash, node_hash
from peerdb.core.state import MemoryState, apply_txs
from peerdb.core.statetree import (
    EMPTY_STATE_ROOT,
    StateProof,
    key_path,
    ns_path,
    value_hash,
    verify_key,
    verify_namespace,
    verify_ns_txs,
)
from peerdb.core.validate import check_block, check_evidence, check_header, check_proposer_signature

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
VECTORS_PATH = DATA_DIR / "vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="ascii"))
CONSORTIUM: Consortium = parse_consortium(tomllib.loads(VECTORS["consortium"]["toml"]))
CID = consortium_id(CONSORTIUM)
GENESIS = genesis_header(CONSORTIUM)

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "tx": Tx.decode,
    "header": Header.decode,
    "block": Block.decode,
    "evidence": Evidence.decode,
    "block_signature": lambda data: BlockSignature.from_cbor(decode(data, what="signature")),
    "objection": lambda data: Objection.from_cbor(decode(data, what="objection")),
}
ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "tx": lambda o: o.raw, "header": lambda o: o.raw, "block": lambda o: o.raw,
    "evidence": lambda o: o.encode(),
    "block_signature": lambda o: encode(o.to_cbor()), "objection": lambda o: encode(o.to_cbor()),
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", DATA_DIR / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Replay:
    """The valid blocks applied in order, so each verify vector gets its parent's header and state."""

    def __init__(self) -> None:
        self.headers: dict[bytes, Header] = {GENESIS.hash: GENESIS}
        self.states: dict[bytes, MemoryState] = {GENESIS.hash: MemoryState()}
        self.blocks: dict[bytes, Block] = {}
        for vector in VECTORS["valid"]:
            if vector["kind"] != "block":
                continue
            block = Block.decode(bytes.fromhex(vector["hex"]))
            parent = bytes.fromhex(vector["context"]["parent"])
            effects = check_block(block, self.headers[parent], self.headers[parent].state_root, self.states[parent],
                                  CONSORTIUM, CID, vector["context"]["now_ms"])
            state = MemoryState(self.states[parent].nodes)
            state.values = dict(self.states[parent].values)
            state.seen = set(self.states[parent].seen)
            state.apply(effects)
            self.headers[block.hash] = block.header
            self.states[block.hash] = state
            self.blocks[block.hash] = block


REPLAY = Replay()


def member_key(name: str) -> bytes | None:
    member = CONSORTIUM.member(name)
    return member.key if member else None


def verify(kind: str, obj: Any, context: dict[str, Any]) -> None:
    """The verify stage of the vectors (see the "checks" entry of vectors.json)."""
    if kind == "tx":
        apply_txs(MemoryState(), [obj], CONSORTIUM, CID, context["block_time_ms"], EMPTY_STATE_ROOT)
    elif kind == "header" and "parent" not in context:
        if obj != GENESIS:  # a header without a parent can only be the consortium's genesis
            raise errors.ValidationError("header: no parent and not the genesis header")
    elif kind == "header":
        check_header(obj, REPLAY.headers[bytes.fromhex(context["parent"])], CONSORTIUM, context["now_ms"])
    elif kind == "block":
        parent = bytes.fromhex(context["parent"])
        check_block(obj, REPLAY.headers[parent], REPLAY.headers[parent].state_root, REPLAY.states[parent],
                    CONSORTIUM, CID, context["now_ms"])
        if "proposer_signature" in context:
            sig = DECODERS["block_signature"](bytes.fromhex(context["proposer_signature"]))
            check_proposer_signature(obj.header, sig, CONSORTIUM, CID)
    elif kind in ("block_signature", "objection"):
        key = member_key(obj.member)
        if key is None or not obj.valid(CID, key):
            raise errors.SignatureError(f"{kind}: not {obj.member}'s signature")
        if "proposer_of" in context:
            check_proposer_signature(REPLAY.blocks[bytes.fromhex(context["proposer_of"])].header, obj, CONSORTIUM, CID)
    elif kind == "evidence":
        check_evidence(obj, CONSORTIUM, CID)
    else:  # pragma: no cover - a vector kind this test does not know
        raise AssertionError(f"unknown vector kind {kind}")


def test_regenerating_gives_byte_identical_json() -> None:
    assert load_generator().build() == VECTORS_PATH.read_text(encoding="ascii")


def test_the_vectors_cover_every_kind_and_stage() -> None:
    assert {v["kind"] for v in VECTORS["valid"]} == set(DECODERS)
    assert {v["kind"] for v in VECTORS["invalid"]} == set(DECODERS)
    assert {(v["stage"]) for v in VECTORS["invalid"]} == {"decode", "verify"}
    names = [v["name"] for v in VECTORS["valid"] + VECTORS["invalid"]]
    assert len(names) == len(set(names))
    expected_errors = {v["error"] for v in VECTORS["invalid"]}
    assert {"SignatureError", "ValidationError", "AccessError", "ReplayError", "NonCanonicalError",
            "TrailingBytesError", "TruncatedError", "DecodeError"} <= expected_errors


def test_consortium_vector() -> None:
    c = VECTORS["consortium"]
    assert CONSORTIUM.definition_hash.hex() == c["definition_hash"]
    assert CID.hex() == c["id"]
    assert GENESIS.raw.hex() == c["genesis_header"]
    assert Header.decode(bytes.fromhex(c["genesis_header"])).hash == CID


def test_key_vectors() -> None:
    keys = VECTORS["keys"]
    for group in ("members", "clients"):
        for name, k in keys[group].items():
            assert SigningKey(bytes.fromhex(k["seed"])).public.hex() == k["public"]
            registered = CONSORTIUM.member_of_client(bytes.fromhex(k["public"]))
            assert registered == name
    assert CONSORTIUM.member_of_client(bytes.fromhex(keys["outsider"]["public"])) is None


def test_signing_message_vectors() -> None:
    for m in VECTORS["signing_messages"]:
        msg = signing_message(m["domain"], bytes.fromhex(m["consortium_id"]), bytes.fromhex(m["hash"]))
        assert msg.hex() == m["message"]


def test_merkle_vectors() -> None:
    for case in VECTORS["merkle"]:
        leaves = [bytes.fromhex(x) for x in case["leaves"]]
        root = bytes.fromhex(case["root"])
        assert merkle_root(leaves) == root
        for leaf, path in zip(leaves, case["paths"], strict=True):
            steps = tuple((left, bytes.fromhex(sibling)) for left, sibling in path)
            assert verify_path(leaf, steps, root)


def test_state_tree_primitive_vectors() -> None:
    v = VECTORS["smt"]
    p0, p1 = bytes.fromhex(v["p0"]), bytes.fromhex(v["p1"])
    assert EMPTY.hex() == v["empty"] == EMPTY_STATE_ROOT.hex()
    assert leaf_hash(p0, p1).hex() == v["leaf(p0, p1)"] and node_hash(p0, p1).hex() == v["node(p0, p1)"]
    assert ns_path("books").hex() == v["ns_path(books)"] and key_path("invoice/1").hex() == v["key_path(invoice/1)"]
    assert value_hash(b"100 EUR").hex() == v["value_hash(100 EUR)"]


def test_state_tree_vectors() -> None:
    assert [t["state_root"] for t in VECTORS["state_trees"]] == \
        [REPLAY.headers[bytes.fromhex(t["block"])].state_root.hex() for t in VECTORS["state_trees"]]
    for tree in VECTORS["state_trees"]:
        root = bytes.fromhex(tree["state_root"])
        state = REPLAY.states[bytes.fromhex(tree["block"])]
        for case in tree["proofs"]:
            proof = StateProof.from_cbor(decode(bytes.fromhex(case["proof"])), "proof")
            value = None if case["value"] is None else bytes.fromhex(case["value"])
            assert value == state.get(case["namespace"], case["key"])
            verify_key(root, case["namespace"], case["key"], value, proof)
            with pytest.raises(errors.ValidationError):
                verify_key(root, case["namespace"], case["key"], b"other" if value is None else None, proof)
        for ns, ns_root in tree["namespace_roots"].items():
            ns_proof = StateProof.from_cbor(decode(bytes.fromhex(next(
                c["proof"] for c in tree["proofs"] if c["namespace"] == ns))), "proof").namespace
            assert verify_namespace(root, ns, ns_proof, "ns").hex() == ns_root


def test_namespace_transaction_vectors() -> None:
    v = VECTORS["ns_transactions"]
    block = REPLAY.blocks[bytes.fromhex(v["block"])]
    assert block.header.ns_tx_root.hex() == v["ns_tx_root"]
    for ns, proof_hex in v["proofs"].items():
        proof = Proof.from_cbor(decode(bytes.fromhex(proof_hex)), "proof")
        txids = [bytes.fromhex(t) for t in v["lists"].get(ns, [])]
        assert txids == [t.txid for t in block.txs if ns in {op.namespace for op in t.ops}]
        verify_ns_txs(block.header.ns_tx_root, ns, txids, proof, "ns")
        with pytest.raises(errors.ValidationError):
            verify_ns_txs(block.header.ns_tx_root, ns, txids[:-1] if txids else [block.txs[0].txid], proof, "ns")


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=[v["name"] for v in VECTORS["valid"]])
def test_valid_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    obj = DECODERS[vector["kind"]](data)
    assert ENCODERS[vector["kind"]](obj) == data
    for field, attr in (("txid", "txid"), ("hash", "hash"), ("id", "id")):
        if field in vector:
            assert getattr(obj, attr).hex() == vector[field]
    verify(vector["kind"], obj, vector.get("context", {}))
    for sig_hex in vector.get("signatures", []):
        sig = DECODERS["block_signature"](bytes.fromhex(sig_hex))
        key = member_key(sig.member)
        assert sig.block_hash == obj.hash and key is not None and sig.valid(CID, key)


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=[v["name"] for v in VECTORS["invalid"]])
def test_invalid_vector(vector: dict[str, Any]) -> None:
    error = getattr(errors, vector["error"])
    data = bytes.fromhex(vector["hex"])
    if vector["stage"] == "decode":
        with pytest.raises(error) as info:
            DECODERS[vector["kind"]](data)
    else:
        obj = DECODERS[vector["kind"]](data)
        assert ENCODERS[vector["kind"]](obj) == data
        with pytest.raises(error) as info:
            verify(vector["kind"], obj, vector.get("context", {}))
    assert type(info.value) is error, f"got {type(info.value).__name__}: {info.value}"
    assert ":" in str(info.value)  # every message names what it is about before the reason


def _play(events: list[list[str]]) -> BlockTree:
    tree = BlockTree(GENESIS, CONSORTIUM.member_names)
    for event in events:
        if event[0] == "header":
            tree.add_header(Header.decode(bytes.fromhex(event[1])))
        elif event[0] == "signature":
            tree.add_signature(bytes.fromhex(event[1]), event[2])
        elif event[0] == "culprit":
            tree.add_culprit(event[1])
        else:
            tree.set_anchored(bytes.fromhex(event[1]))
    return tree


def _summary(tree: BlockTree, hashes: list[str]) -> dict[str, Any]:
    heads = tree.heads()
    return {
        "best_tip": tree.best_tip.hash.hex(),
        "weights": {h: tree.weight(bytes.fromhex(h)) for h in hashes},
        "heads": {"tentative": heads.tentative, "majority": heads.majority, "unanimous_signed": heads.unanimous_signed,
                  "unanimous": heads.unanimous, "anchored": heads.anchored},
        "statuses": {h: tree.status(bytes.fromhex(h)).value for h in hashes},
    }


def test_fork_choice_vector_in_given_and_other_orders() -> None:
    fc = VECTORS["fork_choice"]
    expected = fc["expected"]
    hashes = list(expected["weights"])
    events = fc["events"]
    assert _summary(_play(events), hashes) == expected
    # evidence and signatures first, headers last (parents before children): same answer
    reordered = [e for e in events if e[0] != "header"][::-1] + [e for e in events if e[0] == "header"]
    assert _summary(_play(reordered), hashes) == expected
    before = _play([e for e in events if e[0] in ("header", "signature")])
    assert before.best_tip.hash.hex() == fc["before_culprit"]["best_tip"]
    assert {h: before.weight(bytes.fromhex(h)) for h in hashes} == fc["before_culprit"]["weights"]
