"""Ed25519 identities: member keys sign blocks, client keys sign transactions.

Signing always goes through :func:`peerdb.core.codec.signing_message`, so a key can only ever
produce domain-separated, consortium-bound signatures from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .codec import signing_message
from .errors import ConfigError
from .limits import KEY_LEN, SIG_LEN


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key, held as its 32-byte seed."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if type(self.seed) is not bytes or len(self.seed) != 32:
            raise ConfigError("key seed: must be 32 bytes")
        object.__setattr__(self, "_key", nacl.signing.SigningKey(self.seed))

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def public(self) -> bytes:
        return bytes(self._key.verify_key)  # type: ignore[attr-defined]

    def sign(self, domain: str, consortium_id: bytes, object_hash: bytes) -> bytes:
        message = signing_message(domain, consortium_id, object_hash)
        return bytes(self._key.sign(message).signature)  # type: ignore[attr-defined]


def verify(public: bytes, signature: bytes, domain: str, consortium_id: bytes, object_hash: bytes) -> bool:
    """True iff ``signature`` is ``public``'s signature of that domain/consortium/hash.

    Calls libsodium directly: PyNaCl's cffi call releases the GIL, so verification in worker
    threads uses every core.
    """
    if len(public) != KEY_LEN or len(signature) != SIG_LEN:
        return False
    message = signing_message(domain, consortium_id, object_hash)
    try:
        nacl.bindings.crypto_sign_open(signature + message, public)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True
