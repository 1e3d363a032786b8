"""Read proofs built from a member's store verify with the consortium file alone: present,
absent, deleted and private keys; the view each reaches (by signatures on the block or its
descendants, and an anchor); across key rotation and membership changes; and every single-field
change to a proof is refused, naming the item."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peerdb.core.chain import View
from peerdb.core.codec import decode, encode
from peerdb.core.consortium import Member, NamespaceRule
from peerdb.core.privacy import open_value, seal_value
from peerdb.core.proposals import AddMember, RemoveMembers, RotateKey, SetNamespace
from peerdb.core.smt import ProofError
from peerdb.proofs.build import ProofBuilder
from peerdb.proofs.format import ReadProof
from peerdb.proofs.verify import verify_read_proof
from tests.helpers.consortium import seed_key
from tests.helpers.proofs import StoredChain


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[StoredChain]:
    c = StoredChain(tmp_path)
    yield c
    c.close()


def prove(chain: StoredChain, ns: str, key: str, height: int | None = None, want: View = View.UNANIMOUS) -> bytes:
    return ProofBuilder(chain.store).read_proof(ns, key, chain.height if height is None else height, want).encode()


def test_present_absent_and_deleted_keys_round_trip(chain: StoredChain) -> None:
    cb = chain.cb
    chain.grow([chain.tx("m0", [("books", "a", b"1"), ("books", "b", b"2"), ("notes", "n", b"3")])])
    written = chain.height
    chain.grow([chain.tx("m1", [("books", "a", None), ("books", "c", b"4")])])
    for ns, key, expected in (("books", "b", b"2"), ("books", "c", b"4"), ("books", "a", None),
                              ("books", "never", None), ("elsewhere", "x", None)):
        result = verify_read_proof(cb.consortium, prove(chain, ns, key))
        assert (result.namespace, result.key, result.value) == (ns, key, expected)
        assert result.height == chain.height and result.block_hash == chain.tip.hash
        assert result.view is View.UNANIMOUS_SIGNED and result.endorsers == chain.members
    # at an earlier height, the deleted key still had its value
    earlier = verify_read_proof(cb.consortium, prove(chain, "books", "a", written))
    assert earlier.value == b"1" and earlier.height == written


def test_a_proof_claiming_another_value_is_refused_naming_the_value(chain: StoredChain) -> None:
    chain.grow([chain.tx("m0", [("books", "a", b"1")])])
    proof = ReadProof.decode(prove(chain, "books", "a"))
    for value in (b"2", None):
        forged = ReadProof(proof.namespace, proof.key, value, proof.chain, proof.state, proof.evidence,
                           proof.anchor, proof.gov)
        with pytest.raises(ProofError) as info:
            verify_read_proof(chain.cb.consortium, forged.encode())
        assert info.value.item == "value"


def test_a_wrong_path_header_signature_or_anchor_is_refused_naming_it(chain: StoredChain) -> None:
    chain.grow([chain.tx("m0", [("books", f"k{i}", b"%d" % i) for i in range(8)])])
    chain.anchor([chain.tip])
    doc = decode(prove(chain, "books", "k3"))
    assert verify_read_proof(chain.cb.consortium, encode(doc)).view is View.UNANIMOUS

    def refused(path: tuple[Any, ...], new: Any) -> str:
        with pytest.raises(ProofError) as info:
            verify_read_proof(chain.cb.consortium, encode(_replace(doc, path, new)))
        return info.value.item

    sibling = doc["state"][1][0][0]
    assert refused(("state", 1, 0, 0), bytes(32)) == "state.key.siblings"
    assert refused(("state", 1, 0, 0), sibling[::-1]) == "state.key.siblings"
    header = doc["chain"]["headers"][0]
    assert refused(("chain", "headers", 0), header[:-1] + bytes([header[-1] ^ 1])).startswith("chain.sigs[")
    sig = doc["chain"]["sigs"][1][2]
    assert refused(("chain", "sigs", 1, 2), sig[:-1] + bytes([sig[-1] ^ 1])) == "chain.sigs[m1]"
    tx = doc["anchor"]["bitcoin_tx"]
    assert refused(("anchor", "bitcoin_tx"), tx[:-1] + bytes([tx[-1] ^ 1])) == "anchor"
    assert refused(("anchor", "index"), 1) == "anchor.index"


def test_the_view_follows_the_signatures_on_the_block_and_its_descendants(chain: StoredChain) -> None:
    cb = chain.cb
    chain.grow([chain.tx("m0", [("books", "a", b"1")])], signers=["m0"])
    read = chain.height
    assert verify_read_proof(cb.consortium, prove(chain, "books", "a", read)).view is View.TENTATIVE
    chain.grow(signers=["m1", "m2"])  # a descendant's signatures endorse the ancestry
    result = verify_read_proof(cb.consortium, prove(chain, "books", "a", read))
    assert result.view is View.MAJORITY and result.endorsers == ("m0", "m1", "m2") and result.missing == ("m3",)
    assert result.chain_headers == 2
    chain.grow(signers=["m3"])
    assert verify_read_proof(cb.consortium, prove(chain, "books", "a", read)).view is View.UNANIMOUS_SIGNED
    # a majority proof stops as soon as a majority endorses (the shortest chain that shows it)
    assert verify_read_proof(cb.consortium, prove(chain, "books", "a", read, View.MAJORITY)).chain_headers == 2


def test_an_anchored_block_signed_by_all_reaches_unanimous(chain: StoredChain) -> None:
    chain.grow([chain.tx("m0", [("books", "a", b"1")])])
    block = chain.tip
    chain.anchor([block])
    result = verify_read_proof(chain.cb.consortium, prove(chain, "books", "a"))
    assert result.view is View.UNANIMOUS and result.anchor is not None
    assert result.anchor["block_height"] == block.height and result.anchor["depth"] == 1
    # without the anchor part, the same signatures reach unanimous_signed only
    proof = ReadProof.decode(prove(chain, "books", "a"))
    bare = ReadProof(proof.namespace, proof.key, proof.value, proof.chain, proof.state, proof.evidence, None, proof.gov)
    assert verify_read_proof(chain.cb.consortium, bare.encode()).view is View.UNANIMOUS_SIGNED


def test_evidence_excludes_a_double_signer_from_the_view(chain: StoredChain) -> None:
    cb = chain.cb
    a, b, ev = cb.double_sign("m3", cb.genesis)
    chain.store.add_evidence(ev)
    chain.grow([chain.tx("m0", [("books", "a", b"1")])], signers=["m0", "m1", "m2"])
    result = verify_read_proof(cb.consortium, prove(chain, "books", "a"))
    assert result.excluded == ("m3",) and result.eligible == ("m0", "m1", "m2")
    assert result.view is View.UNANIMOUS_SIGNED


def test_a_private_key_is_proven_as_its_envelope_and_opens_for_a_reader(chain: StoredChain) -> None:
    cb = chain.cb
    chain.change(SetNamespace(NamespaceRule("secret", ("m0",), ("m0", "m1"), private=True)))
    readers = {m: [cb.consortium.member(m).key] for m in ("m0", "m1")}  # type: ignore[union-attr]
    envelope = seal_value("secret", "salary", b"42", readers)
    chain.grow([chain.tx("m0", [("secret", "salary", envelope)])])
    result = verify_read_proof(cb.consortium, prove(chain, "secret", "salary"))
    assert result.private and result.value == envelope and result.governance_changes == 1
    assert result.value is not None and open_value(result.value, "secret", "salary", "m1", cb.keys["m1"]) == b"42"


def test_proofs_stay_valid_across_a_key_rotation(chain: StoredChain) -> None:
    cb = chain.cb
    chain.grow([chain.tx("m0", [("books", "before", b"1")])])
    before_height = chain.height
    before = prove(chain, "books", "before")
    new_key = seed_key("member/m1/rotated")
    effective = chain.change(RotateKey("m1", new_key.public))
    chain.keys["m1"] = new_key
    chain.grow([chain.tx("m0", [("books", "after", b"2")])])
    # the proof made before the rotation, and one made now for the same height, still verify
    assert verify_read_proof(cb.consortium, before).view is View.UNANIMOUS_SIGNED
    old = verify_read_proof(cb.consortium, prove(chain, "books", "before", before_height))
    assert old.view is View.UNANIMOUS_SIGNED and old.value == b"1"
    # a block after the rotation, signed with m1's new key, proves through the governance path
    after = verify_read_proof(cb.consortium, prove(chain, "books", "after"))
    assert after.view is View.UNANIMOUS_SIGNED and after.governance_changes == 1 and after.checkpoints == 1
    assert after.height >= effective


def test_proofs_stay_valid_across_membership_changes(chain: StoredChain) -> None:
    cb = chain.cb
    e_key, e_client = seed_key("member/m4"), seed_key("client/m4")
    chain.keys["m4"] = e_key
    chain.change(AddMember(Member("m4", e_key.public, "127.0.0.1:47199", (e_client.public,))))
    chain.change(RemoveMembers(("m3",)), voters=["m0", "m1", "m2", "m4"])
    chain.grow([chain.tx("m0", [("books", "k", b"v")])])
    result = verify_read_proof(cb.consortium, prove(chain, "books", "k"))
    assert result.eligible == ("m0", "m1", "m2", "m4") and result.view is View.UNANIMOUS_SIGNED
    assert result.governance_changes == 2 and result.checkpoints == 2


def test_a_governance_path_without_its_checkpoint_is_refused(chain: StoredChain) -> None:
    new_key = seed_key("member/m1/rotated")
    chain.change(RotateKey("m1", new_key.public))
    chain.keys["m1"] = new_key
    chain.grow([chain.tx("m0", [("books", "k", b"v")])])
    proof = ReadProof.decode(prove(chain, "books", "k"))
    gov = type(proof.gov)(proof.gov.entries, (), proof.gov.counter, proof.gov.proof)
    stripped = ReadProof(proof.namespace, proof.key, proof.value, proof.chain, proof.state, proof.evidence,
                         proof.anchor, gov)
    with pytest.raises(ProofError) as info:
        verify_read_proof(chain.cb.consortium, stripped.encode())
    assert info.value.item == "gov.checkpoints"


def test_a_proof_of_another_consortium_is_refused(chain: StoredChain, tmp_path: Path) -> None:
    chain.grow([chain.tx("m0", [("books", "k", b"v")])])
    other = StoredChain(tmp_path / "other", name="othernet")
    try:
        with pytest.raises(ProofError, match="signature"):
            verify_read_proof(other.cb.consortium, prove(chain, "books", "k"))
    finally:
        other.close()


# --- every single-field change is refused --------------------------------------------------------

def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for k in sorted(value):
            yield from _leaves(value[k], path + (k,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, path + (i,))
    else:
        yield path, value


def _mutated(value: Any, bit: int) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, bytes):
        if not value:
            return b"\x00"
        i = (bit // 8) % len(value)
        return value[:i] + bytes([value[i] ^ (1 << (bit % 8))]) + value[i + 1:]
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return b""  # None


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], new)
    return copy


_PROOFS: dict[str, tuple[Any, bytes, StoredChain]] = {}


def _rich_proofs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, bytes, StoredChain]]:
    """A chain with a key rotation, evidence, an anchor and a two-header endorsement; proofs of a
    present and an absent key on it (built once: the property below draws fields of them)."""
    if not _PROOFS:
        c = StoredChain(tmp_path_factory.mktemp("rich"))
        cb = c.cb
        c.store.add_evidence(cb.double_sign("m3", cb.genesis)[2])
        c.grow([c.tx("m0", [("books", f"k{i}", b"v%d" % i) for i in range(12)] + [("notes", "n", b"x")])])
        new_key = seed_key("member/m1/rotated")
        c.change(RotateKey("m1", new_key.public))
        c.keys["m1"] = new_key
        c.grow([c.tx("m0", [("books", "k3", b"changed")])], signers=["m0"])
        c.grow(signers=["m1", "m2", "m3"])
        c.anchor([c.tip])
        for name, key in (("present", "k3"), ("absent", "k99")):
            raw = ProofBuilder(c.store).read_proof("books", key, c.height - 1, View.UNANIMOUS).encode()
            _PROOFS[name] = (decode(raw, max_size=1 << 24), raw, c)
    return _PROOFS


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.sampled_from(["present", "absent"]), pick=st.integers(0, 10_000), bit=st.integers(0, 10_000))
@example(which="present", pick=0, bit=0)
def test_every_single_field_change_to_a_proof_is_refused(tmp_path_factory: pytest.TempPathFactory, which: str,
                                                         pick: int, bit: int) -> None:
    doc, raw, c = _rich_proofs(tmp_path_factory)[which]
    original = verify_read_proof(c.cb.consortium, raw)
    assert original.view is View.UNANIMOUS and original.checkpoints == 1 and original.excluded == ("m3",)
    leaves = list(_leaves(doc))
    path, value = leaves[pick % len(leaves)]
    tampered = encode(_replace(doc, path, _mutated(value, bit)))
    try:
        result = verify_read_proof(c.cb.consortium, tampered)
    except ProofError as exc:
        assert exc.item and exc.reason
        return
    # Accepted only if it proves something true about the same block, the same way (a key whose
    # absence the same tree path also shows).
    truth, _ = c.store.get(result.namespace, result.key, result.height)
    assert result.value == truth and result.block_hash == original.block_hash and result.view is original.view, \
        f"tampering {path} was not refused"
