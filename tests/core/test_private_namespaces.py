"""Private namespaces: values sealed to the readers in force, opened only with a reader's member key,
and refused by consensus when a reader in force is missing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerdb.core.codec import decode, encode
from peerdb.core.consortium import NamespaceRule
from peerdb.core.errors import DecodeError, LimitError, ValidationError
from peerdb.core.model import Op
from peerdb.core.privacy import (
    SEALED_KEY_LEN,
    Envelope,
    check_envelope,
    open_value,
    readers_at,
    recipients_for_write,
    seal_value,
)
from peerdb.core.proposals import RemoveMembers, RotateKey, SetNamespace

from tests.helpers.core import CONSORTIUM, assert_names, member_key, put, seed_key
from tests.helpers.governance import Chain

ALL = ("firm-a", "firm-b", "firm-c", "firm-d")
READERS = {m: (member_key(m).public,) for m in ("firm-a", "firm-b")}


def test_readers_open_and_others_cannot() -> None:
    data = seal_value("deals", "d1", b"price 42", READERS)
    for m in READERS:
        assert open_value(data, "deals", "d1", m, member_key(m)) == b"price 42"
    with pytest.raises(ValidationError) as info:
        open_value(data, "deals", "d1", "firm-c", member_key("firm-c"))
    assert_names(info.value, "envelope", "not addressed to firm-c")
    # claiming to be a reader without its key does not help
    with pytest.raises(ValidationError):
        open_value(data, "deals", "d1", "firm-a", member_key("firm-c"))
    assert b"price 42" not in data


def test_envelope_shape_and_fresh_keys_each_time() -> None:
    one, two = seal_value("deals", "d1", b"x", READERS), seal_value("deals", "d1", b"x", READERS)
    assert one != two  # a fresh content key and nonce per write
    envelope = Envelope.decode(one)
    assert envelope.encode() == one
    assert [(m, k) for m, k, _ in envelope.recipients] == sorted((m, k[0]) for m, k in READERS.items())
    assert all(len(s) == SEALED_KEY_LEN for _, _, s in envelope.recipients)


def test_an_envelope_moved_to_another_key_does_not_open() -> None:
    data = seal_value("deals", "d1", b"x", READERS)
    with pytest.raises(ValidationError) as info:
        open_value(data, "deals", "d2", "firm-a", member_key("firm-a"))
    assert_names(info.value, "sealed for deals/d1, found under deals/d2")


def test_tampering_is_detected() -> None:
    envelope = Envelope.decode(seal_value("deals", "d1", b"secret", READERS))
    flipped = bytearray(envelope.ciphertext)
    flipped[0] ^= 1
    bad = replace(envelope, ciphertext=bytes(flipped)).encode()
    with pytest.raises(ValidationError) as info:
        open_value(bad, "deals", "d1", "firm-a", member_key("firm-a"))
    assert_names(info.value, "does not open")


@pytest.mark.parametrize("data, fragments", [
    (encode([2, b"n" * 24, b"c", [["firm-a", b"k" * 32, b"s" * 80]]]), ("envelope.version", "2 is not 1")),
    (encode([1, b"n" * 23, b"c", [["firm-a", b"k" * 32, b"s" * 80]]]), ("envelope.nonce", "24 bytes")),
    (encode([1, b"n" * 24, b"c", []]), ("envelope.recipients", "need 1..")),
    (encode([1, b"n" * 24, b"c", [["firm-b", b"k" * 32, b"s" * 80], ["firm-a", b"k" * 32, b"s" * 80]]]),
     ("envelope.recipients", "sorted")),
    (encode([1, b"n" * 24, b"c", [["firm-a", b"k" * 32, b"s" * 79]]]), ("envelope.recipients[0].sealed", "80 bytes")),
    (b"plain text", ("envelope",)),
])
def test_malformed_envelopes(data: bytes, fragments: tuple[str, ...]) -> None:
    with pytest.raises(DecodeError) as info:
        Envelope.decode(data)
    assert_names(info.value, *fragments)


def test_too_many_readers_for_a_large_value() -> None:
    many = {f"m{i}": (seed_key(f"member/m{i}").public,) for i in range(64)}
    with pytest.raises(LimitError) as info:
        seal_value("deals", "d", b"x" * 60_000, many)
    assert_names(info.value, "envelope", "exceeds the value limit")


def test_readers_resolve_everyone_and_named_readers() -> None:
    c = replace(CONSORTIUM, namespaces=(NamespaceRule("deals", ("firm-a",), ("firm-a", "firm-c"), True),))
    assert readers_at(c, "deals") == {"firm-a": member_key("firm-a").public, "firm-c": member_key("firm-c").public}
    assert set(readers_at(c, "open-ns")) == set(ALL)
    check_envelope(seal_value("deals", "k", b"v", {m: (k,) for m, k in readers_at(c, "deals").items()}), c, "deals")
    with pytest.raises(ValidationError) as info:
        check_envelope(seal_value("deals", "k", b"v", {"firm-a": (member_key("firm-a").public,)}), c, "deals")
    assert_names(info.value, "namespace 'deals' is private", "not sealed to firm-c")


# --- through the chain -----------------------------------------------------------------------------

def private_chain() -> tuple[Chain, int]:
    chain = Chain()
    rule = NamespaceRule("deals", ("firm-a", "firm-b"), ("firm-a", "firm-b", "firm-c"), private=True)
    proposal = chain.propose("firm-a", SetNamespace(rule))
    chain.step([chain.vote_tx(v, proposal, carrier="firm-a") for v in ALL])
    effective = chain.record(proposal).effective_height
    assert effective is not None
    while chain.height + 1 < effective:
        chain.step()
    return chain, effective


def sealed_for_next_block(chain: Chain, key: str, value: bytes) -> bytes:
    cs = chain.cs()
    recipients = recipients_for_write([cs.at(chain.height + 1), cs.latest()], "deals")
    return seal_value("deals", key, value, recipients)


def test_private_namespace_holds_only_ciphertext_that_readers_open() -> None:
    chain, _ = private_chain()
    data = sealed_for_next_block(chain, "d1", b"terms")
    chain.step([chain.tx("firm-a", [put("deals", "d1", data)])])
    stored = chain.state.get("deals", "d1")
    assert stored == data and b"terms" not in stored
    assert open_value(stored, "deals", "d1", "firm-c", member_key("firm-c")) == b"terms"
    with pytest.raises(ValidationError):
        open_value(stored, "deals", "d1", "firm-d", member_key("firm-d"))
    plain = chain.tx("firm-a", [put("deals", "d2", b"terms in clear")])
    with pytest.raises(ValidationError) as info:
        chain.step([plain])
    assert_names(info.value, f"tx {plain.txid.hex()[:16]}", "namespace 'deals' is private", "must be an envelope")
    short = seal_value("deals", "d3", b"x", {"firm-a": (member_key("firm-a").public,)})
    with pytest.raises(ValidationError) as info:
        chain.step([chain.tx("firm-a", [put("deals", "d3", short)])])
    assert_names(info.value, "not sealed to firm-b, firm-c")
    chain.step([chain.tx("firm-a", [Op(1, "deals", "d1")])])  # deletes carry nothing to seal
    assert chain.state.get("deals", "d1") is None


def test_key_rotation_rewraps_future_writes() -> None:
    chain, _ = private_chain()
    new_c = seed_key("member/firm-c/2")
    rotation = chain.propose("firm-c", RotateKey("firm-c", new_c.public))
    chain.step([chain.vote_tx(v, rotation, carrier="firm-a") for v in ALL])
    rotated = chain.record(rotation).effective_height
    assert rotated is not None
    # in the blocks before the rotation, the writer seals to both keys of firm-c
    before = sealed_for_next_block(chain, "before", b"old")
    assert {k for m, k in Envelope.decode(before).addressed_to() if m == "firm-c"} == {member_key("firm-c").public,
                                                                                        new_c.public}
    chain.step([chain.tx("firm-a", [put("deals", "before", before)])])
    while chain.height + 1 < rotated:
        chain.step()
    stale = seal_value("deals", "stale", b"x", {m: (member_key(m).public,) for m in ("firm-a", "firm-b", "firm-c")})
    with pytest.raises(ValidationError) as info:
        chain.step([chain.tx("firm-a", [put("deals", "stale", stale)])])
    assert_names(info.value, "not sealed to firm-c with the key in force")
    after = sealed_for_next_block(chain, "after", b"new")
    chain.step([chain.tx("firm-b", [put("deals", "after", after)])])
    assert open_value(chain.state.get("deals", "after"), "deals", "after", "firm-c", new_c) == b"new"  # type: ignore[arg-type]
    # what was written before stays readable with the key of its time
    assert open_value(chain.state.get("deals", "before"), "deals", "before", "firm-c", member_key("firm-c")) == b"old"  # type: ignore[arg-type]


def test_a_removed_reader_is_not_needed_for_later_writes() -> None:
    chain, _ = private_chain()
    removal = chain.propose("firm-a", RemoveMembers(("firm-c",)))
    chain.step([chain.vote_tx(v, removal, carrier="firm-a") for v in ("firm-a", "firm-b", "firm-d")])
    removed = chain.record(removal).effective_height
    assert removed is not None
    while chain.height + 1 < removed:
        chain.step()
    readers = {m: (member_key(m).public,) for m in ("firm-a", "firm-b")}
    chain.step([chain.tx("firm-a", [put("deals", "later", seal_value("deals", "later", b"v", readers))])])
    assert decode(chain.state.get("deals", "later"))[0] == 1  # type: ignore[arg-type]
    assert set(readers_at(chain.cs().at(chain.height), "deals")) == {"firm-a", "firm-b"}


def test_an_unreadable_key_is_refused_when_sealing() -> None:
    with pytest.raises(ValidationError) as info:
        seal_value("deals", "k", b"v", {"firm-a": (b"\x00" * 31 + b"\x80",)})
    assert_names(info.value, "envelope", "not a usable Ed25519 public key")
