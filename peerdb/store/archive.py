"""The store as the block tree's archive: what lies below the tree's in-memory root.

The node keeps in memory only the blocks fork choice can still move over (see
:mod:`peerdb.core.chain`); everything older is answered from LMDB through this adapter, each
call one short read transaction. It is safe from any thread (LMDB read transactions are), and
holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from peerdb.core.chain import TreeSnapshot
from peerdb.core.model import Header

from . import layout
from .queries import StoreQueries


class StoreArchive:
    """:class:`peerdb.core.chain.ChainArchive` over a store."""

    def __init__(self, store: StoreQueries) -> None:
        self.store = store

    def best_hash_at(self, height: int) -> bytes | None:
        return self.store.block_hash_at(height)

    def header(self, block_hash: bytes) -> Header | None:
        return self.store.header(block_hash)

    def signers(self, block_hash: bytes) -> frozenset[str]:
        return frozenset(self.store.signers(block_hash))

    def signed_at(self, member: str, height: int) -> list[bytes]:
        return self.store.signed_at(member, height)


@dataclass(frozen=True)
class SavedTree:
    """A tree snapshot as stored, with the evidence settled below its root."""

    snapshot: TreeSnapshot
    settled_evidence: frozenset[bytes]


def load_tree(store: StoreQueries) -> SavedTree | None:
    raw = store.meta(layout.META_TREE)
    if raw is None:
        return None
    root_hash, final_hash, floors, below, anchored, evidence = layout.parse_tree_record(raw)
    root, final = store.header(root_hash), store.header(final_hash)
    if root is None or final is None:
        return None  # a snapshot naming blocks the store lacks is ignored: start from genesis
    return SavedTree(TreeSnapshot(root, final, tuple(sorted(floors.items())), tuple(sorted(below.items())),
                                  anchored), frozenset(evidence))


def tree_record(saved: SavedTree) -> bytes:
    s = saved.snapshot
    return layout.tree_record(s.root.hash, s.final.hash, dict(s.endorse_floor), dict(s.signed_below),
                              s.anchored_floor, list(saved.settled_evidence))


def headers_from(store: StoreQueries, height: int) -> Iterator[Header]:
    """Every stored header at ``height`` and above, all branches, parents before children."""
    return store.headers_iter(start_height=height)


