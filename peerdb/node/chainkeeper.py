"""The block tree's life on a node: built from the store's snapshot at start, pruned as the
chain grows, re-rooted for a deep fork, and the evidence bookkeeping that goes with it.

The tree itself (:mod:`peerdb.core.chain`) is pure; this keeper is its I/O: it reads the blocks
above the root from the store at start (O(blocks held), never O(chain)), moves the root up in
steps and persists the snapshot of what lies below (one small commit per step), and reloads the
tree from a lower root when a fork from below the root must be weighed. It belongs to the
engine and is used only under the service lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..core.chain import BlockTree, TreeSnapshot
from ..core.consortium import Consortium
from ..core.errors import ValidationError
from ..core.membership import ConsortiumState
from ..core.merkle import merkle_root
from ..core.model import genesis_header
from ..store import Store
from ..store.archive import SavedTree, StoreArchive, load_tree, tree_record
from ..store.layout import META_TREE

log = logging.getLogger("peerdb.node")

TREE_KEEP = 4096
"""Best-chain blocks below the tip the block tree keeps in memory while the final block lags
further behind (a member down, Bitcoin slow, no anchoring at all): ~6 MB of headers and
signatures. A fork deeper than this is still settled by the fork rule: the tree is re-rooted at
the fork point from the store (:meth:`ChainKeeper.reroot`)."""
TREE_PRUNE_STEP = 1024
"""The root moves up in steps of at least this many blocks, so pruning (O(blocks held)) and the
snapshot commit it writes cost O(1) per block."""

_EMPTY_ROOT = merkle_root([])


class ChainKeeper:
    def __init__(self, consortium: Consortium, store: Store, keep: int = TREE_KEEP,
                 prune_step: int = TREE_PRUNE_STEP) -> None:
        self.consortium = consortium
        self.store = store
        self.archive = StoreArchive(store)
        self.keep = keep
        self.prune_step = prune_step
        self.tree = BlockTree(genesis_header(consortium), consortium.member_names, settle=True)
        self.evidence_in_block: dict[bytes, list[bytes]] = {}
        """Evidence id -> held blocks that include it."""
        self.settled_evidence: set[bytes] = set()
        """Evidence included in best-chain blocks below the tree's root (so in every chain we follow)."""

    def sign(self, block_hash: bytes, member: str, tree: BlockTree | None = None) -> bool:
        """Count a verified signature (one by a member only another branch's governance added
        is not counted)."""
        try:
            return (tree or self.tree).add_signature(block_hash, member)
        except ValidationError:
            log.debug("signature of %s on %s not counted: not a member on the best chain", member,
                      block_hash.hex()[:16])
            return False

    def load(self, gov: ConsortiumState, culprits: Iterable[str]) -> None:
        """Build the tree from the stored snapshot plus the blocks above its root."""
        saved = load_tree(self.store)
        self.settled_evidence = set(saved.settled_evidence) if saved is not None else set()
        self.evidence_in_block = {}
        self.tree = self._build(saved.snapshot if saved is not None else None, gov, culprits)

    def _build(self, snapshot: TreeSnapshot | None, gov: ConsortiumState, culprits: Iterable[str]) -> BlockTree:
        tree = BlockTree(genesis_header(self.consortium), self.consortium.member_names, settle=True,
                         archive=self.archive, snapshot=snapshot)
        tree.set_schedule(gov if gov.changes else None)
        for culprit in culprits:
            tree.add_culprit(culprit)
        root = tree.root
        for member in self.store.signers(root.hash):
            self.sign(root.hash, member, tree)
        pruned = False
        for header in self.store.headers_iter(start_height=root.height + 1):
            if tree.best_tip.height - tree.root.height > self.keep + self.prune_step:
                # A store without a recent snapshot (an upgrade, a crash before the first
                # step): prune as we go, so that even this start holds O(keep) blocks.
                pruned |= tree.prune(self.keep) is not None
            try:
                tree.add_header(header)
            except ValidationError:
                continue  # a fork below the root or leaving out the final block: out of reach
            for member in self.store.signers(header.hash):
                self.sign(header.hash, member, tree)
            if self.store.anchor(header.hash) is not None:
                tree.set_anchored(header.hash)
            if header.evidence_root != _EMPTY_ROOT:
                block = self.store.block(header.hash)
                if block is not None:
                    for ev in block.evidence:
                        self.evidence_in_block.setdefault(ev.id, []).append(header.hash)
        if pruned:
            self._settle_evidence(tree)
            self._save(tree)
        return tree

    def reroot(self, height: int, gov: ConsortiumState) -> None:
        """Hold the tree from the best-chain block at ``height`` again (a fork from below the
        root that fork choice must weigh): floors and counts carried over, blocks reloaded."""
        tree = self.tree
        current = tree.snapshot()
        root_hash = tree.best_chain_hash(height)
        if root_hash is None or height >= current.root.height:
            return
        reloaded: dict[str, int] = {}
        for h in range(height, current.root.height):
            at = tree.best_chain_hash(h)
            for member in self.store.signers(at) if at is not None else ():
                reloaded[member] = reloaded.get(member, 0) + 1
        # Any floor at or above the new root comes from a block that is reloaded now, so
        # clipping it to the new root loses nothing (see TreeSnapshot).
        snapshot = TreeSnapshot(
            tree.header(root_hash), current.final,
            tuple((m, min(f, height)) for m, f in current.endorse_floor),
            tuple((m, max(0, n - reloaded.get(m, 0))) for m, n in current.signed_below),
            min(current.anchored_floor, height))
        log.warning("a fork from height %d (below the tree's root at %d): reloading the tree from there",
                    height, current.root.height)
        self.evidence_in_block = {}
        self.tree = self._build(snapshot, gov, tree.culprits)

    def maybe_prune(self) -> bool:
        """Move the root up if it lags a step behind; persist the snapshot. True if it moved."""
        tree = self.tree
        if tree.best_tip.height - tree.root.height <= self.keep + self.prune_step \
                and tree.final.height - tree.root.height <= self.prune_step:
            return False
        if tree.prune(self.keep) is None:
            return False
        self._settle_evidence(tree)
        self._save(tree)
        return True

    def _settle_evidence(self, tree: BlockTree) -> None:
        """Evidence whose including blocks were pruned: settled if one of them is on the best chain."""
        for ev_id, blocks in list(self.evidence_in_block.items()):
            kept = [b for b in blocks if tree.held(b)]
            if len(kept) < len(blocks) and any(tree.on_best_chain(b) for b in blocks if not tree.held(b)):
                self.settled_evidence.add(ev_id)
            if kept:
                self.evidence_in_block[ev_id] = kept
            else:
                del self.evidence_in_block[ev_id]

    def _save(self, tree: BlockTree) -> None:
        snapshot = tree.snapshot()
        self.store.save_meta(META_TREE, tree_record(SavedTree(snapshot, frozenset(self.settled_evidence))))
        log.info("block tree root moved to height %d (final %d, tip %d)", snapshot.root.height,
                 snapshot.final.height, tree.best_tip.height)

    def record_evidence_in(self, block_hash: bytes, evidence_ids: Iterable[bytes]) -> None:
        for ev_id in evidence_ids:
            self.evidence_in_block.setdefault(ev_id, []).append(block_hash)

    def is_ancestor(self, ancestor: bytes, block_hash: bytes) -> bool:
        tree = self.tree
        if ancestor not in tree or block_hash not in tree:
            return False
        target = tree.header(ancestor).height
        h = block_hash
        while True:
            header = tree.header(h)
            if header.height <= target:
                return h == ancestor
            h = header.prev

    def evidence_included(self, ev_id: bytes, parent: bytes) -> bool:
        """Is this evidence already in a block of ``parent``'s chain?"""
        if ev_id in self.settled_evidence:
            return True
        return any(self.is_ancestor(b, parent) for b in self.evidence_in_block.get(ev_id, ()))

