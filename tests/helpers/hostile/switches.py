"""What a hostile member is told to do (the control file) and what it says it did (the report).

The test writes the control file (JSON, replaced atomically); the hostile member reads it every
:data:`CONTROL_POLL_S` and writes its report (JSON, replaced atomically) after every change, so
a test waits on facts ("it equivocated at height 12") instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROL_POLL_S = 0.1
"""How often the hostile member re-reads its control file and misbehaves again."""


@dataclass(frozen=True)
class Switches:
    """Misbehaviour switches; all off is an honest member."""

    withhold: bool = False
    """Co-sign nothing (blocks of others reach no signature of ours)."""
    silent: bool = False
    """Propose nothing (our turns pass after the turn timeout)."""
    equivocate: bool = False
    """At each of our turns, also send a second, different block at the same height to everyone."""
    sign_two_forks: bool = False
    """Co-sign every block at a height where we already signed another (our signing guard bypassed)."""
    out_of_turn: bool = False
    """Propose at every height in a round that is not ours (and, when ours is far, before it began)."""
    replay: bool = False
    """Send old messages again: our first proposals and signatures, the first client transactions
    forwarded to us (included long since), our first statuses, a catch-up answer from height 1."""
    lie_status: bool = False
    """Advertise a tip that does not exist, 1,000 heights ahead, and false signer sets."""
    forge_anchors: bool = False
    """Send anchor proofs that do not hold: undecodable, Merkle path to another block, and a
    self-consistent proof whose Bitcoin block exists nowhere."""
    flood: bool = False
    """On every connection, send a frame that breaks the framing or the message rules (oversized
    length, zero length, not CBOR, wrong frame shape, message without a type, mistyped field), and
    megabyte frames of junk transactions."""
    endorse: int = 0
    """Each increment: sign our best tip once, even while withholding."""
    finality: bool = True
    """False: follow the seed's fork rule alone (never settle), as the colluders of an attack on a
    settled block must to adopt their own fork."""
    orphan_from: int | None = None
    """Build, with :attr:`colluders`, a fork from our best-chain block at this height: propose it
    when a colluder who has not signed at the next height is due, co-sign it wherever our signing
    guard allows (never twice at one height)."""
    colluders: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Switches":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown switches: {sorted(unknown)}")
        if "colluders" in data:
            data = {**data, "colluders": tuple(data["colluders"])}
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class Report:
    """What the hostile member did, for the test to wait on and to check against the honest side."""

    member: str = ""
    tip: int = 0
    last_signed: int = 0
    """Height of our highest signature."""
    switches: dict[str, Any] = field(default_factory=dict)
    """The switches in force (the control file as last read)."""
    equivocated: list[list[Any]] = field(default_factory=list)
    """[height, first block, second block]"""
    two_forks: list[list[Any]] = field(default_factory=list)
    """[height, block we signed besides the one we had signed]"""
    out_of_turn: list[list[Any]] = field(default_factory=list)
    """[height, round, block, kind]: kind ``not_ours`` (another member's round) or ``early``."""
    replayed: dict[str, int] = field(default_factory=dict)
    lies: int = 0
    asked: dict[str, int] = field(default_factory=dict)
    """Catch-up requests (``get_blocks``) received, by member: what our statuses made them check."""
    forged: dict[str, int] = field(default_factory=dict)
    flood: dict[str, int] = field(default_factory=dict)
    endorsed: list[int] = field(default_factory=list)
    fork: list[list[Any]] = field(default_factory=list)
    """The colluders' fork as we hold it: [height, block, signers]."""
    best_leaves_settled: bool = False
    """Our best chain no longer holds the block that was at height ``orphan_from + 1``."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
