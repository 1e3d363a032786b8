"""The state the auditor replays: the claimed best chain, and a view of it at any fork point.

Blocks arrive by height, best chain and side branches interleaved. The state of the claimed
best chain is kept as one key/value map (like :class:`peerdb.core.state.MemoryState`), with each
included transaction id and evidence id mapped to the height that included it. A block is
validated against its parent's state:

* a child of the best chain's current tip: the map itself;
* anything else: a :class:`BranchReader` over the best chain as of the fork point (a txid counts
  as seen if it was included at or below the fork height) plus the side blocks between the fork
  point and the parent.

The state machine (:func:`peerdb.core.state.apply_txs`) asks a reader whether a txid was
already included, and for the parent's state tree records (to compute the block's state root);
values themselves never decide validity (writes are blind), so values as of a fork point are
computed, on request, by walking back the best chain's writes instead of keeping an undo log
for every block.

State tree records are kept by hash in one :class:`~peerdb.core.smt.MemoryNodes` shared by every
branch. What a later block can still build on is kept: the trees of the last
:data:`KEEP_BEST_ROOTS` best-chain blocks (a side branch's first block arrives when the best
chain has been replayed to about its height, since blocks come by height) and of the side
blocks that may still get children (those at most one height below the newest block). The
rest is collected once the records have doubled since the last collection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peerdb.core.model import Header
from peerdb.core.smt import MemoryNodes
from peerdb.core.state import Effects, Write

_NEVER = 1 << 64

KEEP_BEST_ROOTS = 8
"""Best-chain state trees kept for side branches that fork from them (see the module docstring)."""

COLLECT_MIN_NODES = 200_000
"""No collection below this many records: a small state is cheaper to keep than to sweep."""


@dataclass(frozen=True)
class SideBlock:
    """What a side-branch block contributes to its descendants' state."""

    header: Header
    writes: tuple[Write, ...]
    txids: frozenset[bytes]
    evidence_ids: frozenset[bytes]


class ChainState:
    """State after the best chain's current tip; implements :class:`peerdb.core.state.StateReader`."""

    def __init__(self, genesis: Header) -> None:
        self.values: dict[tuple[str, str], bytes] = {}
        self.tx_height: dict[bytes, int] = {}
        self.evidence_height: dict[bytes, int] = {}
        self.main: list[Header] = [genesis]
        self._writes: list[tuple[Write, ...]] = [()]
        self.side: dict[bytes, SideBlock] = {}
        self._main_hashes: dict[bytes, int] = {genesis.hash: 0}
        self.nodes = MemoryNodes()
        self._open_sides: dict[bytes, tuple[int, bytes]] = {}
        """Side blocks that may still get children: hash -> (height, state root)."""
        self._kept_after_collect = 0

    # --- StateReader for the tip --------------------------------------------------------------

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.values.get((namespace, key))

    def tx_seen(self, txid: bytes) -> bool:
        return txid in self.tx_height

    def evidence_included(self, ev_id: bytes) -> bool:
        return ev_id in self.evidence_height

    def tree_node(self, key: bytes) -> bytes | None:
        return self.nodes.tree_node(key)

    def tree_getter(self) -> Callable[[bytes], bytes | None]:
        return self.nodes.tree_getter()

    # --- structure ----------------------------------------------------------------------------

    @property
    def tip(self) -> Header:
        return self.main[-1]

    def main_height(self, block_hash: bytes) -> int | None:
        return self._main_hashes.get(block_hash)

    def header(self, block_hash: bytes) -> Header | None:
        height = self._main_hashes.get(block_hash)
        if height is not None:
            return self.main[height]
        side = self.side.get(block_hash)
        return None if side is None else side.header

    def apply_main(self, header: Header, effects: Effects, evidence_ids: Sequence[bytes]) -> None:
        """Extend the best chain by a block whose parent is the current tip."""
        height = header.height
        values = self.values
        for namespace, key, value in effects.writes:
            if value is None:
                values.pop((namespace, key), None)
            else:
                values[(namespace, key)] = value
        tx_height = self.tx_height
        for txid in effects.txids:
            tx_height[txid] = height
        for ev_id in evidence_ids:
            self.evidence_height.setdefault(ev_id, height)
        self.main.append(header)
        self._writes.append(effects.writes)
        self._main_hashes[header.hash] = height
        self._keep(header, effects)

    def add_side(self, header: Header, effects: Effects, evidence_ids: Sequence[bytes]) -> None:
        self.side[header.hash] = SideBlock(header, effects.writes, frozenset(effects.txids), frozenset(evidence_ids))
        self._open_sides[header.hash] = (header.height, header.state_root)
        self._keep(header, effects)

    def _keep(self, header: Header, effects: Effects) -> None:
        self.nodes.add(effects.nodes)
        if len(self.nodes) <= max(COLLECT_MIN_NODES, 2 * self._kept_after_collect):
            return
        newest = header.height
        for block_hash, (height, _root) in list(self._open_sides.items()):
            if height < newest - 1:
                del self._open_sides[block_hash]
        roots = [h.state_root for h in self.main[-KEEP_BEST_ROOTS:]]
        roots += [root for _height, root in self._open_sides.values()]
        self.nodes.collect(roots)
        self._kept_after_collect = len(self.nodes)

    def reader_for(self, parent: bytes) -> "ChainState | BranchReader":
        """The state after block ``parent`` (which must be known)."""
        if parent == self.main[-1].hash:
            return self
        branch: list[SideBlock] = []
        h = parent
        while h not in self._main_hashes:
            side = self.side[h]
            branch.append(side)
            h = side.header.prev
        return BranchReader(self, self._main_hashes[h], branch)

    def value_at(self, namespace: str, key: str, height: int) -> bytes | None:
        """The value as of best-chain height ``height`` (off the hot path: only a reader's
        ``get`` calls it, and the state machine never reads values)."""
        if not any(ns == namespace and k == key for writes in self._writes[height + 1:] for ns, k, _ in writes):
            return self.values.get((namespace, key))
        value: bytes | None = None
        for writes in self._writes[1:height + 1]:
            for ns, k, v in writes:
                if ns == namespace and k == key:
                    value = v
        return value


class BranchReader:
    """The state after a block that is not the best chain's tip (a side branch, or a best-chain
    block below the tip): the best chain as of ``fork_height``, then ``branch`` (newest first)."""

    def __init__(self, chain: ChainState, fork_height: int, branch: list[SideBlock]) -> None:
        self.chain = chain
        self.fork_height = fork_height
        self.branch = branch

    def get(self, namespace: str, key: str) -> bytes | None:
        for side in self.branch:
            for ns, k, value in reversed(side.writes):
                if ns == namespace and k == key:
                    return value
        return self.chain.value_at(namespace, key, self.fork_height)

    def tx_seen(self, txid: bytes) -> bool:
        if any(txid in side.txids for side in self.branch):
            return True
        return self.chain.tx_height.get(txid, _NEVER) <= self.fork_height

    def evidence_included(self, ev_id: bytes) -> bool:
        if any(ev_id in side.evidence_ids for side in self.branch):
            return True
        return self.chain.evidence_height.get(ev_id, _NEVER) <= self.fork_height

    def tree_node(self, key: bytes) -> bytes | None:
        return self.chain.nodes.tree_node(key)

    def tree_getter(self) -> Callable[[bytes], bytes | None]:
        return self.chain.nodes.tree_getter()
