"""What the engine counts as it works: plain integers it bumps where each event happens.

The engine owns these (they change only inside engine calls, under the service's lock) and
knows nothing of Prometheus: :mod:`peerdb.node.metrics` reads them at scrape time, through
``service.read``, and exposes them as ``*_total`` counters. An integer increment is the cheapest
thing the hot path can do; the counts start at zero when the process starts, as Prometheus
counters do.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

RECENT_REORGS = 20
"""Reorganisations the engine remembers in detail (the explorer and ``peerdb forks`` list them)."""


@dataclass(frozen=True)
class Reorg:
    """The best chain moved to another branch: what was rolled back and what replaced it."""

    at_ms: int
    fork_height: int
    """The highest block both chains share."""
    rolled_back: int
    """Blocks of the old best chain rolled back (the reorg's depth)."""
    applied: int
    old_tip: bytes
    new_tip: bytes
    returned_txs: int
    """Transactions of the rolled-back blocks that went back to the pool."""


@dataclass
class EngineCounters:
    blocks_applied: int = 0
    """Blocks applied to the store's head (a block rolled back and applied again counts twice)."""
    txs_applied: int = 0
    """Transactions in those blocks."""
    reorgs: int = 0
    reorg_depths: dict[int, int] = field(default_factory=dict)
    """Depth (blocks rolled back) -> how many reorgs had it."""
    recent_reorgs: deque[Reorg] = field(default_factory=lambda: deque(maxlen=RECENT_REORGS))
    signatures: dict[str, int] = field(default_factory=dict)
    """Member -> block signatures accepted from it (our own included), on any branch."""
    objections: dict[str, int] = field(default_factory=dict)
    """Member -> objections recorded from it (ours included)."""

    def signed(self, member: str) -> None:
        self.signatures[member] = self.signatures.get(member, 0) + 1

    def objected(self, member: str) -> None:
        self.objections[member] = self.objections.get(member, 0) + 1

    def reorganised(self, reorg: Reorg) -> None:
        self.reorgs += 1
        self.reorg_depths[reorg.rolled_back] = self.reorg_depths.get(reorg.rolled_back, 0) + 1
        self.recent_reorgs.append(reorg)
