"""Ed25519 keys: signatures are bound to a domain, a consortium and an object hash."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.errors import ConfigError
from peerdb.core.keys import SigningKey, verify

from tests.helpers.core import assert_names, seed_key

CID = hashlib.sha256(b"consortium").digest()
OTHER_CID = hashlib.sha256(b"another consortium").digest()
OBJ = hashlib.sha256(b"object").digest()


@pytest.mark.parametrize("seed", [b"", b"x" * 31, b"x" * 33, "x" * 32, bytearray(32), None])
def test_seed_must_be_32_bytes(seed: object) -> None:
    with pytest.raises(ConfigError) as info:
        SigningKey(seed)  # type: ignore[arg-type]
    assert_names(info.value, "key seed", "32 bytes")


def test_public_key_is_a_function_of_the_seed() -> None:
    a1, a2, b = seed_key("a"), seed_key("a"), seed_key("b")
    assert a1.public == a2.public and len(a1.public) == 32
    assert a1.public != b.public
    assert a1 == a2


def test_generated_keys_differ_and_round_trip_through_their_seed() -> None:
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    assert k1.seed != k2.seed
    assert SigningKey(k1.seed).public == k1.public


def test_repr_does_not_leak_the_seed() -> None:
    key = seed_key("secret")
    assert key.seed.hex() not in repr(key)
    assert repr(key.seed) not in repr(key)


def test_signatures_are_deterministic_and_verify() -> None:
    key = seed_key("a")
    sig = key.sign("block", CID, OBJ)
    assert sig == key.sign("block", CID, OBJ) and len(sig) == 64
    assert verify(key.public, sig, "block", CID, OBJ)


def test_signature_fails_under_any_other_domain_consortium_object_or_key() -> None:
    key = seed_key("a")
    sig = key.sign("block", CID, OBJ)
    assert not verify(key.public, sig, "tx", CID, OBJ)
    assert not verify(key.public, sig, "objection", CID, OBJ)
    assert not verify(key.public, sig, "block", OTHER_CID, OBJ)
    assert not verify(key.public, sig, "block", CID, bytes(32))
    assert not verify(seed_key("b").public, sig, "block", CID, OBJ)


@pytest.mark.parametrize("public, sig", [
    (b"\x00" * 31, b"\x00" * 64), (b"\x00" * 33, b"\x00" * 64),
    (b"\x00" * 32, b"\x00" * 63), (b"\x00" * 32, b"\x00" * 65),
    (b"\x00" * 32, b"\x00" * 64),  # small-order key with a garbage signature
    (b"\xff" * 32, b"\xff" * 64),  # not a curve point, S out of range
])
def test_malformed_keys_and_signatures_are_false_not_exceptions(public: bytes, sig: bytes) -> None:
    assert verify(public, sig, "block", CID, OBJ) is False


def test_signature_with_s_above_the_group_order_is_refused() -> None:
    # Ed25519 malleability: S + L verifies in lax implementations; libsodium must refuse it
    order = 2**252 + 27742317777372353535851937790883648493
    key = seed_key("a")
    sig = key.sign("block", CID, OBJ)
    s = int.from_bytes(sig[32:], "little") + order
    assert s < 2**256
    malleated = sig[:32] + s.to_bytes(32, "little")
    assert not verify(key.public, malleated, "block", CID, OBJ)


@given(st.binary(min_size=32, max_size=32), st.sampled_from(["block", "tx", "objection"]),
       st.integers(0, 63), st.integers(0, 7))
def test_property_any_bit_flip_in_a_signature_breaks_it(obj: bytes, domain: str, byte: int, bit: int) -> None:
    key = seed_key("a")
    sig = bytearray(key.sign(domain, CID, obj))
    assert verify(key.public, bytes(sig), domain, CID, obj)
    sig[byte] ^= 1 << bit
    assert not verify(key.public, bytes(sig), domain, CID, obj)
