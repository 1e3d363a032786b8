"""TLS certificates that *are* member keys.

A member's TLS identity is its Ed25519 consensus key: the certificate is self-signed by that key
and carries it as its subject key, so a completed TLS handshake proves possession of the member
key itself, and no certificate authority (ours or anyone's) can vouch for somebody else.

The certificate is a pure function of (seed, name): fixed serial derived from the public key,
fixed validity, and deterministic Ed25519 signatures, so every member and every auditor can
regenerate the exact bytes the consortium file carries.

It is deliberately *not* a CA certificate (BasicConstraints CA=False): a member key can then not
issue certificates for other keys that OpenSSL would chain to it. Tested with OpenSSL 3.0 (also
under ``VERIFY_X509_STRICT``), which accepts a trusted self-signed leaf as its own anchor.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peerdb.core.errors import ConfigError, DecodeError, SignatureError
from peerdb.core.limits import KEY_LEN, MAX_NAME_LEN

SEED_LEN = 32
"""Ed25519 private keys are stored as their 32-byte seed (PyNaCl's ``SigningKey`` bytes)."""

NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
"""RFC 5280 4.1.2.5's "no well-defined expiration date". Membership, not a clock, decides who
may connect: a member leaves by being removed from the consortium file, and a certificate that
expired on its own would silently cut a member off. Fixed dates also keep the bytes reproducible."""

SERIAL_TAG = b"peerdb/cert-serial/1"
"""Domain tag for the serial number hash, so it is not a hash of the bare public key."""

MAX_CERT_BYTES = 4096
"""A member certificate is ~350 bytes; refusing anything far bigger bounds parsing work."""


def _private_key(seed: bytes) -> Ed25519PrivateKey:
    if type(seed) is not bytes or len(seed) != SEED_LEN:
        raise ConfigError(f"seed: expected {SEED_LEN} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _check_name(name: str) -> None:
    if type(name) is not str or not name or len(name.encode("utf-8")) > MAX_NAME_LEN:
        raise ConfigError(f"name: must be 1..{MAX_NAME_LEN} bytes of UTF-8 text")


def public_key_from_seed(seed: bytes) -> bytes:
    """Raw 32-byte Ed25519 public key for ``seed`` (same as PyNaCl's ``verify_key``)."""
    return _raw_public(_private_key(seed).public_key())


def certificate_serial(public_key: bytes) -> int:
    """Positive 127-bit serial fixed by the key: unique per member, reproducible by anyone."""
    digest = hashlib.sha256(SERIAL_TAG + public_key).digest()
    return (int.from_bytes(digest[:16], "big") >> 1) | 1


def member_certificate(seed: bytes, name: str) -> bytes:
    """DER of the member's self-signed certificate (subject CN = ``name``, key = the member key).

    Regenerating it from the same seed and name yields the same bytes.
    """
    _check_name(name)
    key = _private_key(seed)
    public = key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(certificate_serial(_raw_public(public)))
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    cert = builder.sign(key, None)
    return cert.public_bytes(serialization.Encoding.DER)


def _load(der: bytes) -> x509.Certificate:
    if type(der) is not bytes:
        raise DecodeError(f"certificate: expected bytes, got {type(der).__name__}")
    if len(der) > MAX_CERT_BYTES:
        raise DecodeError(f"certificate: {len(der)} bytes exceeds the limit of {MAX_CERT_BYTES}")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise DecodeError(f"certificate: not a DER X.509 certificate ({exc})") from None


def certificate_public_key(der: bytes) -> bytes:
    """Raw 32-byte Ed25519 key a certificate carries; :class:`DecodeError` if it is anything else."""
    cert = _load(der)
    try:
        key = cert.public_key()
    except ValueError as exc:
        raise DecodeError(f"certificate: unreadable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DecodeError(f"certificate: key is {type(key).__name__}, not Ed25519")
    return _raw_public(key)


def certificate_name(der: bytes) -> str:
    """The subject common name (the member name the certificate was made for)."""
    names = _load(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise DecodeError("certificate: subject must have exactly one text common name")
    return names[0].value


def verify_self_signed(der: bytes, public_key: bytes) -> None:
    """Check that the certificate carries ``public_key`` and is signed by it (issuer = subject).

    Raises :class:`DecodeError` for a malformed certificate and :class:`SignatureError` when it
    is well-formed but carries another key or a signature that does not verify.
    """
    if type(public_key) is not bytes or len(public_key) != KEY_LEN:
        raise DecodeError(f"public_key: expected {KEY_LEN} bytes")
    if certificate_public_key(der) != public_key:
        raise SignatureError("certificate: carries a different key than the member key")
    cert = _load(der)
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SignatureError(f"certificate: not self-signed by the member key ({exc or 'bad signature'})") from None


def check_member_certificate(der: bytes, public_key: bytes, name: str | None = None, *, field: str = "certificate") -> None:
    """The consortium loader's check: this certificate is this member's own, self-signed.

    ``field`` names the offending entry in the :class:`ConfigError` (e.g. ``members[2].certificate``).
    When ``name`` is given, the subject CN must equal it too (it is only a label: peers are
    identified by key, but a mismatch means the file was assembled wrongly).
    """
    try:
        verify_self_signed(der, public_key)
        if name is not None and certificate_name(der) != name:
            raise ConfigError(f"{field}: common name does not match member name {name!r}")
    except (DecodeError, SignatureError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
