"""The one way an audit fails: the first item that does not hold, named precisely."""

from __future__ import annotations

from peerdb.core.errors import ValidationError


class AuditFailure(ValidationError):
    """A bundle breaks a rule. ``where`` names the item (``block 57 (3c8e2c3d6e99cb10, by
    firm-b)``, ``trailer``, ``claims``); the message says what failed."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def block_where(height: int, block_hash: bytes, proposer: str) -> str:
    """How every message about a block names it: height, short hash, proposer."""
    return f"block {height} ({block_hash.hex()[:16]}, proposed by {proposer or '-'})"
