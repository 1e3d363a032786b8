"""Clients following their transactions through the views: who is told what, and when.

A *follower* is one client's interest in a set of transactions: it is told (``on_view``) each
view all of them reached, weakest first, up to the view it waits for, and then it is done. The
HTTP write route waits for one view; a streaming connection follows each transaction through
every view. Both register here (through :meth:`peerdb.node.service.NodeService.follow`).

The registry is built so that thousands of followers cost little per engine change:

* where a transaction landed is learned from the blocks the engine applied (the engine's
  :class:`~peerdb.node.engine.AppliedFeed`): a dict lookup per applied transaction, no store
  read; only a reorganisation makes every follower look its transactions up again;
* once all of a follower's transactions are in blocks, it waits in a heap per view, keyed by the
  highest of their heights, so a head that moves wakes exactly the followers it passes: a pass
  costs ``O(followers that move × log followers)``, not ``O(followers)``.

Ownership: the registry belongs to the trio thread and is used under the service lock (it
reads the store and the engine's heads); ``on_view`` runs there, inside the engine's flush, so
it must only record or hand over (``send_nowait``, an append), never block.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core.chain import View, ViewHeads

LEVELS = (View.TENTATIVE, View.MAJORITY, View.UNANIMOUS_SIGNED, View.UNANIMOUS)
"""The views a follower passes through, weakest first (tentative: in a block of the best chain)."""


STALE_COMPACT_MIN = 1024
"""Heap entries left by finished followers before the heaps are rebuilt without them (and only
once they outnumber the live followers): bounded memory at amortised O(1) per follower."""


def head_heights(heads: ViewHeads) -> tuple[int, int, int, int]:
    """The head height of each of :data:`LEVELS`."""
    return heads.tentative, heads.majority, heads.unanimous_signed, heads.unanimous


@dataclass(eq=False)
class Follower:
    """One client's interest in ``txids`` until they are all in ``LEVELS[goal]``."""

    txids: tuple[bytes, ...]
    goal: int
    on_view: Callable[["Follower", View, int], None] | None = None
    """Called with (this follower, a view all its transactions just reached, the height of the
    highest of them), once per view, weakest first, on the trio thread under the service lock."""
    done: trio.Event = field(default_factory=trio.Event)
    """Set once every transaction is in the goal view (or the follower was cancelled)."""
    reached: list[View] = field(default_factory=list)
    """The views reached so far, in order."""
    located: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    """Txid -> (height, block hash) of its block on the best chain."""
    next_level: int = 0
    cancelled: bool = False
    queued: bool = False
    """Whether it has an entry in a view heap (at most one at a time)."""

    @property
    def top(self) -> int | None:
        """The highest height of its transactions, once all are in blocks."""
        if len(self.located) < len(self.txids):
            return None
        return max(height for height, _ in self.located.values())


class FollowerBook:
    """Every follower of one node (see the module doc)."""

    def __init__(self) -> None:
        self._live: set[Follower] = set()
        self._unlocated: dict[bytes, set[Follower]] = {}
        """Txid -> the followers whose transaction it is, while it is in no block of the best chain."""
        self._waiting: list[list[tuple[int, int, Follower]]] = [[] for _ in LEVELS]
        """Per view: heap of (top height, sequence, follower) of located followers waiting for it."""
        self._seq = itertools.count()
        self._heights: tuple[int, int, int, int] | None = None
        self._stale = 0
        """Heap entries of followers no longer followed (compacted past :data:`STALE_COMPACT_MIN`)."""

    def __len__(self) -> int:
        return len(self._live)

    def queued(self) -> int:
        """Entries held in the view heaps, stale ones included (bounded by compaction)."""
        return sum(len(heap) for heap in self._waiting)

    def idle(self) -> bool:
        """Nothing followed and nothing left behind (for tests)."""
        return not self._live and not self._unlocated

    def add(self, follower: Follower, store: Any, heads: ViewHeads) -> None:
        """Start following (under the lock, so no applied block is missed): look its
        transactions up in the store, and tell it at once the views they are already in."""
        self._live.add(follower)
        self._locate(follower, store)
        self._place(follower, head_heights(heads))

    def cancel(self, follower: Follower) -> None:
        """Stop following (a client that gave up); harmless if it is done already."""
        if follower in self._live:
            follower.cancelled = True
            self._drop(follower)

    def update(self, blocks: Sequence[Any], rolled_back: bool, store: Any, heads: ViewHeads) -> None:
        """After an engine change: ``blocks`` were applied to the best chain (``rolled_back``:
        some block left it); move every follower the change concerns."""
        if not self._live:
            self._heights = None
            return
        heights = head_heights(heads)
        if rolled_back:
            # Any location may have moved: start every follower over from the store. Views
            # already told stay told (a client heard them); the goal needs the new chain.
            self._unlocated.clear()
            self._waiting = [[] for _ in LEVELS]
            self._stale = 0
            for follower in list(self._live):
                follower.located.clear()
                follower.next_level = 0
                follower.queued = False
                self._locate(follower, store)
                self._place(follower, heights)
            self._heights = heights
            return
        for block in blocks:
            for tx in block.txs:
                found = self._unlocated.pop(tx.txid, None)
                if found:
                    for follower in found:
                        follower.located[tx.txid] = (block.height, block.hash)
                        if follower.top is not None:
                            self._place(follower, heights)
        if heights != self._heights:
            self._heights = heights
            for level, heap in enumerate(self._waiting):
                while heap and heap[0][0] <= heights[level]:
                    _top, _seq, follower = heapq.heappop(heap)
                    follower.queued = False
                    if follower not in self._live:
                        self._stale -= 1  # the entry of a follower that finished or gave up
                        continue
                    self._place(follower, heights)

    # --- internals -------------------------------------------------------------------------------

    def _locate(self, follower: Follower, store: Any) -> None:
        for txid in follower.txids:
            location = store.tx_location(txid)
            if location is None:
                self._unlocated.setdefault(txid, set()).add(follower)
            else:
                follower.located[txid] = (location.height, location.block_hash)

    def _place(self, follower: Follower, heights: Sequence[int]) -> None:
        """Tell the follower every view its transactions are in now; then either it is done, or
        it waits in the heap of the next view."""
        top = follower.top
        if top is None:
            return
        while follower.next_level < len(LEVELS) and heights[follower.next_level] >= top:
            view = LEVELS[follower.next_level]
            follower.next_level += 1
            if view not in follower.reached:
                follower.reached.append(view)
                if follower.on_view is not None:
                    follower.on_view(follower, view, top)
            if follower.next_level > follower.goal:
                self._drop(follower)
                return
        if follower.next_level < len(LEVELS):
            heapq.heappush(self._waiting[follower.next_level], (top, next(self._seq), follower))
            follower.queued = True

    def _drop(self, follower: Follower) -> None:
        self._live.discard(follower)
        for txid in follower.txids:
            others = self._unlocated.get(txid)
            if others is not None:
                others.discard(follower)
                if not others:
                    del self._unlocated[txid]
        follower.done.set()
        # Its heap entries are skipped when they surface; followers that gave up on a view that
        # never comes (unanimous without anchoring) would stay there, so compact now and then.
        if follower.queued:
            self._stale += 1
        if self._stale > STALE_COMPACT_MIN and self._stale > len(self._live):
            self._compact()

    def _compact(self) -> None:
        self._waiting = [[(top, seq, f) for top, seq, f in heap if f in self._live and f.next_level == level]
                         for level, heap in enumerate(self._waiting)]
        for heap in self._waiting:
            heapq.heapify(heap)
        self._stale = 0
