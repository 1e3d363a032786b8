"""Settled blocks in a bundle: what an auditor holds final, whatever order the bundle is in.

A node never leaves a block that was *settled* — anchored, and endorsed by every non-excluded
member — in its own view (docs/protocol.md §11.3). An auditor has the whole bundle at once, so it
judges settledness on all of it: a block (on any branch) is settled if the bundle holds a
verified anchor proof for it and, for every member eligible at its height on its branch, a
signature on it or on a descendant. Then:

* two settled blocks on different branches are a **conflict**: members rewrote settled history
  (the members whose signatures endorse both are named);
* a best chain that leaves out a settled block is refused, naming the block and its anchor;
* the fork rule is the seed's among the descendants of the highest settled block, as on a node.

Pure functions over the verifier's tree and records; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from peerdb.core.chain import BlockTree
from peerdb.core.model import Header

from .errors import AuditFailure


@dataclass(frozen=True)
class Settled:
    header: Header
    anchor: str
    """How the anchor is named in messages (Bitcoin txid and height)."""
    endorsers: tuple[str, ...]


def descends(tree: BlockTree, block: bytes, ancestor: Header) -> bool:
    h = tree.header(block)
    while h.height > ancestor.height:
        h = tree.header(h.prev)
    return h.hash == ancestor.hash


def settled_blocks(tree: BlockTree, anchored: Mapping[bytes, str], signed_by: Mapping[str, Sequence[bytes]],
                   eligible: Callable[[Header], Collection[str]]) -> list[Settled]:
    """Every settled block that is not on ``tree``'s best chain (those on it are the tree's
    ``unanimous`` view already), highest first."""
    out = []
    for block_hash, anchor in anchored.items():
        if block_hash not in tree or tree.on_best_chain(block_hash):
            continue
        header = tree.header(block_hash)
        members = eligible(header)
        endorsers = tuple(sorted(m for m in members
                                 if any(tree.header(x).height >= header.height and descends(tree, x, header)
                                        for x in signed_by.get(m, ()))))
        if members and len(endorsers) == len(members):
            out.append(Settled(header, anchor, endorsers))
    return sorted(out, key=lambda s: (-s.header.height, s.header.hash))


def both_sides(tree: BlockTree, settled: Header, other_tip: Header, signed_by: Mapping[str, Sequence[bytes]],
               fork_height: int) -> list[str]:
    """Members with a signature on the chain to ``other_tip`` above the fork point, and one on
    ``settled`` or a descendant."""
    other_side = set()
    h: Header | None = other_tip
    while h is not None and h.height > fork_height:
        other_side.add(h.hash)
        h = tree.header(h.prev) if h.height > 0 else None
    return sorted(m for m, blocks in signed_by.items()
                  if any(b in other_side for b in blocks)
                  and any(tree.header(b).height >= settled.height and descends(tree, b, settled) for b in blocks))


def check_settled(tree: BlockTree, main: Sequence[Header], anchored: Mapping[bytes, str],
                  signed_by: Mapping[str, Sequence[bytes]], eligible: Callable[[Header], Collection[str]],
                  rebuild: Callable[[Iterable[bytes]], BlockTree]) -> BlockTree:
    """Refuse a bundle whose best chain (``main``, as marked by the exporter) leaves out a
    settled block, or that holds two conflicting settled blocks; return the tree whose fork
    choice the marked chain must match (``rebuild`` makes one from a subset of the blocks)."""
    off_chain = settled_blocks(tree, anchored, signed_by, eligible)
    if not off_chain:
        return tree
    unanimous = tree.heads().unanimous
    on_chain = tree.header(tree.best_chain_hash(unanimous) or tree.genesis.hash)
    top = off_chain[0]
    for other in [*off_chain[1:], *([Settled(on_chain, "", ())] if unanimous > 0 else [])]:
        if not descends(tree, top.header.hash, other.header):
            fork = tree.fork_point(top.header.hash).height if other.header is on_chain else 0
            names = both_sides(tree, top.header, other.header, signed_by, fork)
            raise AuditFailure(
                "settled history",
                f"blocks {top.header.height} {top.header.hash.hex()[:16]} ({top.anchor}) and {other.header.height} "
                f"{other.header.hash.hex()[:16]} are both settled — anchored and endorsed by every member — but on "
                f"different branches: settled history was rewritten"
                + (f"; signatures on both sides: {', '.join(names)}" if names else ""))
    s = top.header
    marked = main[s.height] if s.height < len(main) else None
    if marked is None or marked.hash != s.hash:
        fork = tree.fork_point(s.hash).height
        names = both_sides(tree, s, main[-1], signed_by, fork)
        raise AuditFailure(
            "settled history",
            f"the bundle's best chain leaves out block {s.height} {s.hash.hex()[:16]}, which is settled: anchored "
            f"({top.anchor}) and endorsed by every member ({', '.join(top.endorsers)})"
            + (f"; {', '.join(names)} signed both it (or a descendant) and the chain that leaves it out" if names
               else ""))
    keep = set()
    h: Header = s
    while True:
        keep.add(h.hash)
        if h.height == 0:
            break
        h = tree.header(h.prev)
    for header in sorted(tree.headers(), key=lambda x: x.height):
        if header.prev in keep and header.height > s.height or header.hash == s.hash:
            keep.add(header.hash)
    return rebuild(keep)
