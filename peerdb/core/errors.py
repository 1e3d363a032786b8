"""One error tree for all of PeerDB.

The split that matters at the edges is *who* broke it: a :class:`RemoteError` (a peer, a client,
a file we were handed) gets logged and rejected, the connection maybe closed, our state untouched;
a :class:`LocalError` is our own bug or environment and must stop us loudly. The CLI and the HTTP
API translate these classes into exit codes and statuses in one place each.
"""

from __future__ import annotations


class PeerDBError(Exception):
    """Root of every error PeerDB raises on purpose."""


class LocalError(PeerDBError):
    """We broke it (bug, misconfiguration, broken disk); not the peer's fault."""


class RemoteError(PeerDBError):
    """Input from outside broke a rule: reject it, log it, change nothing."""


class DecodeError(RemoteError):
    """Bytes that are not a well-formed canonical encoding of the expected object."""


class TruncatedError(DecodeError):
    """The bytes end before the object does."""


class TrailingBytesError(DecodeError):
    """Bytes remain after one complete object."""


class NonCanonicalError(DecodeError):
    """A valid CBOR item, but not in the one canonical form that hashes are taken over."""


class LimitError(DecodeError):
    """Too big, too deep or too many: a named limit in :mod:`peerdb.core.limits` was exceeded."""


class ValidationError(RemoteError):
    """Well-formed, but breaks a protocol rule (bad signature, wrong turn, bad parent, ...)."""


class SignatureError(ValidationError):
    """A signature does not verify under the key it claims."""


class AccessError(ValidationError):
    """A namespace rule forbids this member the operation."""


class ReplayError(ValidationError):
    """A transaction that was already included, or has expired."""


class ConfigError(LocalError):
    """A consortium file, node config or key file is missing a field or has a bad one."""


class StorageError(LocalError):
    """The durable store is corrupt, of an unknown format, or refused an operation."""


class CorruptionError(StorageError):
    """Bytes read from the store no longer match the hash or signature that commits to them:
    the read is refused (never served as good), the item is named so it can be alerted on and
    repaired from a peer."""

    def __init__(self, message: str, item: str = "", key: bytes = b"") -> None:
        super().__init__(message)
        self.item = item
        """What kind of item: ``block``, ``signature``, ``value``, ``header``."""
        self.key = key
        """Its identity (a block hash, a state key)."""


class DiskFullError(StorageError):
    """The disk holding the store has no space left: nothing was written, nothing is lost; the
    node stops cleanly and can be restarted once space is freed."""


class RestoredDataDir(StorageError):
    """The data directory was copied or restored from a backup and was opened without saying so
    (``--accept-restored``): signing from it could double-sign. Starting again the same way
    can only fail again, so it has its own exit code, which a service manager must not restart."""


class DoubleSignRefused(LocalError):
    """The signing guard stopped us from signing a second block at a height: never bypass it."""


class ProtocolError(RemoteError):
    """A peer broke the wire protocol (unexpected message, wrong consortium or version)."""


def field_error(cls: type[PeerDBError], field: str, reason: str) -> PeerDBError:
    """Build an error whose message always starts with the offending field."""
    return cls(f"{field}: {reason}")
