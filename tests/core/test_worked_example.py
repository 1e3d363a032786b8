"""The values docs/protocol.md §15 prints (the four-member `example` consortium, block 1 and its
state tree) are what the code computes."""

from __future__ import annotations

from peerdb.core.codec import encode
from peerdb.core.consortium import Consortium, Member
from peerdb.core.keys import SigningKey
from peerdb.core.model import OP_PUT, Block, BlockSignature, Op, Tx, body_header, consortium_id, genesis_header
from peerdb.core.smt import EMPTY
from peerdb.core.state import MemoryState, apply_txs
from peerdb.core.statetree import key_path, ns_path, prove_key, value_hash, verify_key

KEYS = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
CONSORTIUM = Consortium("example", 1700000000000, tuple(
    Member(f"firm-{c}", k.public, f"127.0.0.1:{7001 + i}") for i, (c, k) in enumerate(zip("abcd", KEYS))))


def test_section_15_values() -> None:
    cid = consortium_id(CONSORTIUM)
    assert CONSORTIUM.definition_hash.hex() == "85180fad30bdd1e04afaf915804b112da9f6c296fd61c8ea12eb53cebafb5150"
    assert cid.hex() == "c564b3ac69a2928d3032ed90b8db9c042249365d71404dbaec0494748dd80c29"
    genesis = genesis_header(CONSORTIUM)
    assert len(genesis.raw) == 185 and genesis.state_root == EMPTY == genesis.ns_tx_root
    assert EMPTY.hex() == "176adb0ff8687c17ca3e6cac0bd2201ec00ffede66953cd4cefd8a2bde8f59ce"
    assert ns_path("books").hex() == "c6f065535f74daf0b2a766b1a2c4509a808173b3b50933093e65ee6cc1baa3bb"
    assert key_path("k1").hex() == "b11752c30d2718c8c0f7754eb151b5546ee7b0a0c4d75c7278f2cfec9bae9412"
    assert value_hash(b"v1").hex() == "84968914df195daa6893f2c23e6a2f56f234135e943e6dcf61fe7033987ade55"
    tx = Tx.create(KEYS[0], cid, "firm-a", 1, 1700003600000, [Op(OP_PUT, "books", "k1", b"v1")])
    assert tx.txid.hex() == "bdb27d04f103ee1e98f72a2966991958a503fd75fb4f33eaa92dc735391f1ee4"
    state = MemoryState()
    effects = apply_txs(state, [tx], CONSORTIUM, cid, 1700000001000, genesis.state_root, height=1)
    assert effects.state_root.hex() == "d84ef8cfd19f7a1022880627ed67dfa9bf4cad6729af4f60db8a644332988c3b"
    block = Block(body_header(1, 0, genesis.hash, "firm-a", 1700000001000, [tx], effects.state_root), (tx,))
    assert block.header.ns_tx_root.hex() == "d544ec90a560a8bad24c0cee0ac53aebf842ad93d76ce35efd7fab65da78f722"
    assert block.hash.hex() == "2e14a3b6607902027871031885b4deff374232d70dd2d74c2de03c2cef4a57a3"
    assert len(block.raw) == 335
    assert BlockSignature.create(KEYS[0], cid, "firm-a", block.hash).signature.hex().startswith("75e33f895077c9dd")
    state.apply(effects)
    proof = prove_key(state, effects.state_root, 1, "books", "k1")
    assert encode(proof.to_cbor()) == encode(prove_key(state, effects.state_root, 1, "books", "k2").to_cbor())
    verify_key(effects.state_root, "books", "k1", b"v1", proof)
    verify_key(effects.state_root, "books", "k2", None, proof)
