"""Encrypted values for private namespaces: every member stores them, only the readers can open them.

A value written to a namespace whose rule is ``private`` is an **envelope**: the value,
encrypted once under a fresh random content key (XSalsa20-Poly1305, NaCl ``secretbox``), and
that content key sealed (NaCl ``crypto_box_seal``: X25519 with an ephemeral key, anonymous
sender) to each reader's X25519 key, which is derived from the reader's Ed25519 member key. No
new keys to distribute: the consortium state already holds every member key at every height.

Non-readers still hold the envelope, so they validate signatures, ordering and state roots as
usual; they cannot read it. The state machine checks (consensus) that an envelope in a private
namespace is well formed and names every reader in force at the block's height, with the key it
holds there: after a key rotation or a membership change, writes must be re-wrapped for the new
reader set, or their block is invalid. It cannot check that a sealed key really opens (sealed
boxes are anonymous by design); a writer who seals garbage harms only its own data.

The plaintext inside is ``cbor([namespace, key, value])``, so an envelope copied under another
key or namespace fails to open instead of passing for the other record.

Envelope (canonical CBOR)::

    [1, nonce: bstr(24), ciphertext: bstr, [[member, ed25519 key: bstr(32), sealed key: bstr(80)], ...]]
    recipients sorted by (member, key), no duplicates
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.utils

from .codec import decode, encode, expect_bytes, expect_int, expect_list, expect_str
from .consortium import EVERYONE, NAME_RE, Consortium
from .errors import DecodeError, LimitError, ValidationError
from .keys import SigningKey
from .limits import KEY_LEN, MAX_KEY_BYTES, MAX_MEMBERS, MAX_NAME_LEN, MAX_NAMESPACE_LEN, MAX_VALUE_BYTES

ENVELOPE_VERSION = 1
NONCE_LEN = nacl.secret.SecretBox.NONCE_SIZE  # 24
CONTENT_KEY_LEN = nacl.secret.SecretBox.KEY_SIZE  # 32
SEALED_KEY_LEN = CONTENT_KEY_LEN + 48
"""A sealed content key: ephemeral X25519 public key (32) + Poly1305 tag (16) + the key (32)."""
MAX_RECIPIENTS = 2 * MAX_MEMBERS
"""Readers of a write: every member, and during a change both the old and the new key of
each (see :func:`recipients_for_write`)."""

Recipients = Mapping[str, Iterable[bytes]]
"""Member name -> the Ed25519 member keys to seal the content key to."""


def _curve_public(ed25519_public: bytes) -> bytes:
    try:
        return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError, TypeError) as exc:
        raise ValidationError(f"envelope: key {ed25519_public.hex()[:16]} is not a usable Ed25519 public key ({exc})") from None


def _curve_private(key: SigningKey) -> bytes:
    return bytes(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(key.seed + key.public))


@dataclass(frozen=True)
class Envelope:
    nonce: bytes
    ciphertext: bytes
    recipients: tuple[tuple[str, bytes, bytes], ...]
    """(member, Ed25519 member key, sealed content key), sorted, no duplicate (member, key)."""

    def __post_init__(self) -> None:
        expect_bytes(self.nonce, "envelope.nonce", NONCE_LEN)
        expect_bytes(self.ciphertext, "envelope.ciphertext", max_len=MAX_VALUE_BYTES)
        if not 1 <= len(self.recipients) <= MAX_RECIPIENTS:
            raise DecodeError(f"envelope.recipients: need 1..{MAX_RECIPIENTS}, got {len(self.recipients)}")
        for i, (member, key, sealed) in enumerate(self.recipients):
            name = expect_str(member, f"envelope.recipients[{i}].member", MAX_NAME_LEN)
            if not NAME_RE.match(name):
                raise DecodeError(f"envelope.recipients[{i}].member: {name!r} is not a valid member name")
            expect_bytes(key, f"envelope.recipients[{i}].key", KEY_LEN)
            expect_bytes(sealed, f"envelope.recipients[{i}].sealed", SEALED_KEY_LEN)
        order = [(m, k) for m, k, _ in self.recipients]
        if order != sorted(set(order)):
            raise DecodeError("envelope.recipients: must be sorted by (member, key) without duplicates")

    def encode(self) -> bytes:
        return encode([ENVELOPE_VERSION, self.nonce, self.ciphertext, [list(r) for r in self.recipients]])

    @classmethod
    def decode(cls, data: bytes) -> "Envelope":
        items = expect_list(decode(data, max_size=MAX_VALUE_BYTES, what="envelope"), "envelope", 4)
        version = expect_int(items[0], "envelope.version")
        if version != ENVELOPE_VERSION:
            raise DecodeError(f"envelope.version: {version} is not {ENVELOPE_VERSION}")
        recipients = []
        for i, r in enumerate(expect_list(items[3], "envelope.recipients")):
            entry = expect_list(r, f"envelope.recipients[{i}]", 3)
            recipients.append((entry[0], entry[1], entry[2]))
        return cls(items[1], items[2], tuple(recipients))

    def addressed_to(self) -> frozenset[tuple[str, bytes]]:
        return frozenset((m, k) for m, k, _ in self.recipients)


def seal_value(namespace: str, key: str, value: bytes, recipients: Recipients) -> bytes:
    """An encoded envelope of ``value`` for ``(namespace, key)`` that each recipient can open."""
    content_key = nacl.utils.random(CONTENT_KEY_LEN)
    nonce = nacl.utils.random(NONCE_LEN)
    plaintext = encode([namespace, key, value])
    ciphertext = nacl.secret.SecretBox(content_key).encrypt(plaintext, nonce).ciphertext
    entries = []
    for member in recipients:
        for public in recipients[member]:
            box = nacl.public.SealedBox(nacl.public.PublicKey(_curve_public(public)))
            entries.append((member, public, bytes(box.encrypt(content_key))))
    data = Envelope(nonce, bytes(ciphertext), tuple(sorted(entries, key=lambda e: (e[0], e[1])))).encode()
    if len(data) > MAX_VALUE_BYTES:
        raise LimitError(f"envelope: {len(data)} bytes for {len(entries)} readers exceeds the value limit of "
                         f"{MAX_VALUE_BYTES}; store the data elsewhere and its digest here")
    return data


def open_value(data: bytes, namespace: str, key: str, member: str, signing_key: SigningKey) -> bytes:
    """The value inside an envelope, for ``member`` holding ``signing_key`` (its member key when
    the value was written). Raises ValidationError if it is not addressed to that key or does
    not open, DecodeError if it is not an envelope."""
    envelope = Envelope.decode(data)
    sealed = next((s for m, k, s in envelope.recipients if m == member and k == signing_key.public), None)
    if sealed is None:
        raise ValidationError(f"envelope: not addressed to {member} with key {signing_key.public.hex()[:16]}")
    try:
        content_key = nacl.public.SealedBox(nacl.public.PrivateKey(_curve_private(signing_key))).decrypt(sealed)
        plaintext = nacl.secret.SecretBox(content_key).decrypt(envelope.ciphertext, envelope.nonce)
    except nacl.exceptions.CryptoError:
        raise ValidationError(f"envelope: {member}'s sealed key or the ciphertext does not open") from None
    items = expect_list(decode(plaintext, max_size=MAX_VALUE_BYTES, what="envelope plaintext"), "envelope plaintext", 3)
    inner_ns = expect_str(items[0], "envelope plaintext.namespace", MAX_NAMESPACE_LEN)
    inner_key = expect_str(items[1], "envelope plaintext.key", MAX_KEY_BYTES)
    if (inner_ns, inner_key) != (namespace, key):
        raise ValidationError(f"envelope: sealed for {inner_ns}/{inner_key[:40]}, found under {namespace}/{key[:40]}")
    return expect_bytes(items[2], "envelope plaintext.value", max_len=MAX_VALUE_BYTES)


def readers_at(consortium: Consortium, namespace: str) -> dict[str, bytes]:
    """Reader name -> member key, for the consortium in force at some height (``"*"``: everyone)."""
    rule = consortium.rule(namespace)
    names = consortium.member_names if rule is None or EVERYONE in rule.readers else rule.readers
    return {m.name: m.key for m in consortium.members if m.name in names}


def recipients_for_write(consortia: Iterable[Consortium], namespace: str) -> dict[str, tuple[bytes, ...]]:
    """The readers to seal a new write to when its block height is not known yet: the union over
    the consortia that may be in force when it is included (``ConsortiumState.at(tip + 1)``
    and ``ConsortiumState.latest()``), so a change taking effect meanwhile does not make the
    write invalid."""
    out: dict[str, set[bytes]] = {}
    for consortium in consortia:
        for name, public in readers_at(consortium, namespace).items():
            out.setdefault(name, set()).add(public)
    return {name: tuple(sorted(keys)) for name, keys in out.items()}


def check_envelope(data: bytes, consortium: Consortium, namespace: str) -> None:
    """Consensus rule for a put into a private namespace: a well-formed envelope addressed to
    every reader in force (``consortium`` is the one at the block's height), each with the key
    it holds there. Extra recipients are allowed: the writer could disclose the value anyway."""
    try:
        envelope = Envelope.decode(data)
    except DecodeError as exc:
        raise ValidationError(f"namespace {namespace!r} is private: the value must be an envelope ({exc})") from None
    missing = sorted(name for name, public in readers_at(consortium, namespace).items()
                     if (name, public) not in envelope.addressed_to())
    if missing:
        raise ValidationError(f"namespace {namespace!r} is private: the envelope is not sealed to "
                              f"{', '.join(missing)} with the key in force")
