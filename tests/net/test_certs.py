"""Member certificates: deterministic, carry the member key, self-signed by it, checkable."""

from __future__ import annotations

import datetime

import nacl.signing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from peerdb.core.errors import ConfigError, DecodeError, SignatureError
from peerdb.net.certs import (
    certificate_name,
    certificate_public_key,
    check_member_certificate,
    member_certificate,
    public_key_from_seed,
    verify_self_signed,
)

SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))


def test_certificate_is_deterministic_and_distinct_per_member() -> None:
    first = member_certificate(SEED_A, "firm-a")
    assert member_certificate(SEED_A, "firm-a") == first
    assert member_certificate(SEED_B, "firm-b") != first
    assert member_certificate(SEED_A, "firm-a2") != first


def test_certificate_carries_the_pynacl_member_key() -> None:
    verify_key = bytes(nacl.signing.SigningKey(SEED_A).verify_key)
    der = member_certificate(SEED_A, "firm-a")
    assert certificate_public_key(der) == verify_key == public_key_from_seed(SEED_A)
    assert certificate_name(der) == "firm-a"
    verify_self_signed(der, verify_key)
    check_member_certificate(der, verify_key, "firm-a")


def test_certificate_shape() -> None:
    cert = x509.load_der_x509_certificate(member_certificate(SEED_A, "firm-a"))
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc.year == 9999
    assert cert.not_valid_before_utc == datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.serial_number > 0


def test_wrong_key_is_a_signature_error_and_a_config_error_for_the_loader() -> None:
    der = member_certificate(SEED_A, "firm-a")
    other = public_key_from_seed(SEED_B)
    with pytest.raises(SignatureError, match="different key"):
        verify_self_signed(der, other)
    with pytest.raises(ConfigError, match=r"members\[1\]\.certificate"):
        check_member_certificate(der, other, field="members[1].certificate")
    with pytest.raises(ConfigError, match="common name"):
        check_member_certificate(der, public_key_from_seed(SEED_A), "firm-z")


def test_certificate_with_member_key_but_signed_by_another_key_is_refused() -> None:
    member = Ed25519PrivateKey.from_private_bytes(SEED_A)
    forger = Ed25519PrivateKey.from_private_bytes(SEED_B)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "firm-a")])
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(member.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc))
        .sign(forger, None)
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(SignatureError, match="not self-signed"):
        verify_self_signed(forged, public_key_from_seed(SEED_A))


@pytest.mark.parametrize("junk", [b"", b"\x30\x03abc", b"x" * 5000])
def test_malformed_certificate_is_a_decode_error(junk: bytes) -> None:
    with pytest.raises(DecodeError):
        certificate_public_key(junk)


@pytest.mark.parametrize("seed, name", [(b"short", "firm-a"), (SEED_A, ""), (SEED_A, "x" * 65)])
def test_bad_inputs_are_config_errors(seed: bytes, name: str) -> None:
    with pytest.raises(ConfigError):
        member_certificate(seed, name)
