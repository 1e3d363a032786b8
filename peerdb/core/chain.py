"""The block tree, fork choice, finality, views and block statuses.

Fork rule (seed 001, step 3.1): the best chain is the one whose blocks carry the most
signatures, not counting any signature from a member against whom valid double-sign evidence
exists anywhere. Ties go to the lower height, then the lower block hash, so every member that
holds the same blocks, signatures and evidence picks the same tip whatever the order in which
they arrived.

Finality (docs/protocol.md §11.3): a tree built with ``settle=True`` (every node's) never leaves
its *final* block, the highest best-chain block that was ``unanimous`` — endorsed by every
non-excluded member and anchored — in this tree's view. Fork choice is the rule above among the
final block's descendants; a block whose ancestry leaves the final block out is refused with
:class:`SettledConflict`. An auditor's tree is built without it (its verdict must not depend on
the order of a bundle) and checks settled blocks on the whole data instead.

Endorsement: a member who signed block B endorses B and all its ancestors. A member's
*endorsement height* is the height of the highest best-chain block it endorses.

Views:
* ``tentative``: the best tip;
* ``majority``: the highest best-chain block endorsed by more than half of the non-excluded members;
* ``unanimous_signed``: endorsed by every non-excluded member;
* ``unanimous``: unanimous_signed and anchored in Bitcoin at the required depth (seed 001 step 1).

Costs do not grow with the chain's age. The tree holds in memory only the blocks at and above
its *root*, a best-chain block that never rises above the final block; what lies below lives in
a :class:`ChainArchive` (the node's store) and is summarised by a :class:`TreeSnapshot`
(endorsement and anchoring floors, signature counts), so that start-up reads the snapshot and
the blocks above the root. Weights along the best chain are a Fenwick tree (a signature on a
best-chain block costs O(log n)); side branches keep their weight relative to their fork point;
views are maintained per member and recomputed only on a reorg or a new culprit.

Why one module of this size: fork choice, finality, views and pruning are one data structure's
invariants (weights, heads cache and root move together on every insert and prune), and a
reviewer of the consensus rule should find all of them in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from .errors import ValidationError
from .model import Header


class View(str, Enum):
    TENTATIVE = "tentative"
    MAJORITY = "majority"
    UNANIMOUS_SIGNED = "unanimous_signed"
    UNANIMOUS = "unanimous"

    @classmethod
    def parse(cls, text: str) -> "View":
        try:
            return cls(text.replace("-", "_"))
        except ValueError:
            raise ValidationError(
                f"view: {text!r} is not one of tentative, majority, unanimous_signed, unanimous") from None


class Status(str, Enum):
    ORPHANED = "orphaned"  # not on the best chain
    TENTATIVE = "tentative"
    MAJORITY = "majority"
    UNANIMOUS_SIGNED = "unanimous_signed"
    UNANIMOUS = "unanimous"


class SettledConflict(ValidationError):
    """A block whose ancestry leaves out this member's final (settled) block: refused."""

    def __init__(self, message: str, final: Header, block: Header) -> None:
        super().__init__(message)
        self.final = final
        self.block = block


@dataclass(frozen=True)
class ViewHeads:
    tentative: int
    majority: int
    unanimous_signed: int
    unanimous: int
    anchored: int

    def height(self, view: View) -> int:
        return {
            View.TENTATIVE: self.tentative,
            View.MAJORITY: self.majority,
            View.UNANIMOUS_SIGNED: self.unanimous_signed,
            View.UNANIMOUS: self.unanimous,
        }[view]


class MemberSchedule(Protocol):
    """The member list in force at each height of the best chain (governance);
    :class:`peerdb.core.membership.ConsortiumState` of the best tip is one."""

    def members_at(self, height: int) -> tuple[str, ...]: ...

    def member_epochs(self) -> Sequence[tuple[int, tuple[str, ...]]]:
        """``(first height, members)`` ascending, the first starting at 0."""
        ...


class ChainArchive(Protocol):
    """The blocks below the tree's root, as the store holds them (read only)."""

    def best_hash_at(self, height: int) -> bytes | None: ...
    def header(self, block_hash: bytes) -> Header | None: ...
    def signers(self, block_hash: bytes) -> frozenset[str]: ...
    def signed_at(self, member: str, height: int) -> list[bytes]: ...


@dataclass(frozen=True)
class TreeSnapshot:
    """What the tree needs to know of the blocks below its root (all on the best chain there,
    or on side branches that forked below it and can never win again)."""

    root: Header
    final: Header
    endorse_floor: tuple[tuple[str, int], ...] = ()
    """Per member: the highest best-chain height at or below the root it endorses by signatures
    on blocks below the root."""
    signed_below: tuple[tuple[str, int], ...] = ()
    """Per member: its signatures on best-chain blocks below the root (their weight)."""
    anchored_floor: int = 0
    """The highest best-chain height anchored by an anchor below the root."""


@dataclass(eq=False)
class _Node:
    header: Header
    signers: set[str] = field(default_factory=set)
    children: list["_Node"] = field(default_factory=list)
    counted: int = 0
    index: int = -1
    """Position on the best chain (height - root height), or -1 on a side branch."""
    fork: int = -1
    """For a side node: the best-chain index of its fork point (highest best-chain ancestor)."""
    rel: int = 0
    """For a side node: counted signatures from its fork point (exclusive) to itself."""


class _Fenwick:
    """Prefix sums of counted signatures along the best chain, by index."""

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._t: list[int] = []
        for v in values:
            self.append(v)

    def __len__(self) -> int:
        return len(self._t)

    def append(self, value: int) -> None:
        i = len(self._t) + 1  # 1-based position of the new entry
        total = value
        low = i - (i & -i)
        j = i - 1
        while j > low:
            total += self._t[j - 1]
            j -= j & -j
        self._t.append(total)

    def add(self, index: int, delta: int) -> None:
        i = index + 1
        while i <= len(self._t):
            self._t[i - 1] += delta
            i += i & -i

    def prefix(self, index: int) -> int:
        """Sum of entries 0..index inclusive."""
        total, i = 0, index + 1
        while i > 0:
            total += self._t[i - 1]
            i -= i & -i
        return total

    def truncate(self, length: int) -> None:
        del self._t[length:]


class BlockTree:
    def __init__(self, genesis: Header, members: Sequence[str], schedule: MemberSchedule | None = None, *,
                 settle: bool = False, archive: ChainArchive | None = None,
                 snapshot: TreeSnapshot | None = None) -> None:
        if genesis.height != 0:
            raise ValueError("the tree must start at a height-0 genesis header")
        self.genesis = genesis
        self.members: tuple[str, ...] = tuple(members)
        """The genesis member list; with a schedule, :meth:`members_at` is the list at a height."""
        self.schedule: MemberSchedule | None = None
        self.settle = settle
        self.archive = archive
        root = snapshot.root if snapshot is not None else genesis
        if root.height > 0 and archive is None:
            raise ValueError("a tree rooted above genesis needs the archive of the blocks below")
        self._root = _Node(root, index=0)
        self._nodes: dict[bytes, _Node] = {root.hash: self._root}
        self._chain: list[_Node] = [self._root]
        self._weights = _Fenwick([0])
        self._side: set[_Node] = set()
        self._pending_sigs: dict[bytes, set[str]] = {}
        self.culprits: set[str] = set()
        self._signed_at: dict[str, dict[int, list[bytes]]] = {}
        self._latest: dict[str, tuple[int, bytes]] = {}
        self._endorse: dict[str, int] = {}
        self._floor: dict[str, int] = dict(snapshot.endorse_floor) if snapshot else {}
        self._below: dict[str, int] = dict(snapshot.signed_below) if snapshot else {}
        self._anchored: set[bytes] = set()
        self._pending_anchors: set[bytes] = set()
        self._anchored_floor = snapshot.anchored_floor if snapshot else 0
        self._anchored_height = self._anchored_floor
        self._final: _Node | Header = snapshot.final if snapshot is not None else genesis
        self._best: _Node = self._root
        self._version = 0
        self._heads: tuple[int, ViewHeads] | None = None
        for name in self.members:
            self._signed_at.setdefault(name, {})
        for name, height in self._floor.items():
            self._endorse[name] = height
        if schedule is not None:
            self.set_schedule(schedule)

    def set_schedule(self, schedule: MemberSchedule | None) -> None:
        """Follow a member list that varies by height: eligibility and the view denominators at
        height ``h`` become ``schedule.members_at(h)``. Weights need no schedule: the caller adds
        only signatures it verified with the signer's key at the block's height (on the block's
        branch), so every recorded signer was a member there. Call again whenever the best
        chain's governance state changes (a new best tip that passed or undid a change)."""
        self.schedule = schedule
        if schedule is not None:
            for _start, names in schedule.member_epochs():
                for name in names:
                    self._signed_at.setdefault(name, {})
        self._changed()

    def members_at(self, height: int) -> tuple[str, ...]:
        return self.members if self.schedule is None else self.schedule.members_at(height)

    # --- lookups (memory, then the archive) ---------------------------------------------------

    def __contains__(self, block_hash: bytes) -> bool:
        """Known blocks: held in memory, or below the root in the archive."""
        if block_hash in self._nodes:
            return True
        return self.archive is not None and self._archived(block_hash) is not None

    def held(self, block_hash: bytes) -> bool:
        """In memory (at or above the root): fork choice can still move over it."""
        return block_hash in self._nodes

    def _archived(self, block_hash: bytes) -> Header | None:
        """A known block not held in memory: below the root, or on a side branch that was
        dropped (it forks below the root or below the final block)."""
        if self.archive is None or block_hash in self._nodes:
            return None
        return self.archive.header(block_hash)

    def header(self, block_hash: bytes) -> Header:
        node = self._nodes.get(block_hash)
        if node is not None:
            return node.header
        header = self._archived(block_hash)
        if header is None:
            raise KeyError(block_hash)
        return header

    def signers(self, block_hash: bytes) -> frozenset[str]:
        node = self._nodes.get(block_hash)
        if node is not None:
            return frozenset(node.signers)
        if self._archived(block_hash) is not None:
            assert self.archive is not None
            return self.archive.signers(block_hash)
        return frozenset(self._pending_sigs.get(block_hash, ()))

    @property
    def root(self) -> Header:
        """The lowest block held in memory (genesis until the tree is pruned)."""
        return self._root.header

    @property
    def final(self) -> Header:
        """The highest block that was unanimous in this tree's view (genesis at first)."""
        if self.settle:
            self.heads()  # the views move it (cached: free when nothing changed)
        return self._final_header()

    def _final_header(self) -> Header:
        return self._final.header if isinstance(self._final, _Node) else self._final

    # --- updates -------------------------------------------------------------------------------

    def add_header(self, header: Header) -> bool:
        """Add a (validated) header whose parent is held. Returns False if already present.

        Raises :class:`SettledConflict` (with ``settle``) for a block that does not descend
        from the final block, and :class:`ValidationError` if the parent is unknown."""
        if header.hash in self._nodes:
            return False
        if self.settle:
            self.heads()  # moves the final block first (it may forget dead branches)
        parent = self._nodes.get(header.prev)
        if parent is None:
            known = self._archived(header.prev)
            if known is not None:
                final = self._final_header()
                if self.settle and self._archive_fork_height(known) < final.height:
                    raise SettledConflict(
                        f"block at height {header.height} ({header.hash.hex()[:16]}) leaves out the settled block "
                        f"{final.hash.hex()[:16]} at height {final.height}", final, header)
                raise ValidationError(f"block at height {header.height}: parent {header.prev.hex()[:16]} lies "
                                      f"below the tree's root (height {self._root.header.height})")
            raise ValidationError(f"block at height {header.height}: parent {header.prev.hex()[:16]} is unknown")
        if header.height != parent.header.height + 1:
            raise ValidationError(f"block at height {header.height}: parent is at height {parent.header.height}")
        if self.settle:
            self._check_settled(parent, header)
        node = _Node(header)
        self._nodes[header.hash] = node
        parent.children.append(node)
        for member in sorted(self._pending_sigs.pop(header.hash, set())):
            self._record_signer(node, member)
        node.counted = self._counted(node.signers)
        self._changed()
        if parent.index >= 0:
            node.fork, node.rel = parent.index, node.counted
        else:
            node.fork, node.rel = parent.fork, parent.rel + node.counted
        self._side.add(node)
        self._consider(node)
        if node.header.hash in self._nodes:
            for member in node.signers:
                self._endorse_at(member, self._fork_height(node))
            if header.hash in self._pending_anchors:
                self._pending_anchors.discard(header.hash)
                self.set_anchored(header.hash)
        return True

    def check_settled(self, header: Header) -> None:
        """Raise :class:`SettledConflict` if a block on a held parent would leave out the final
        block (what :meth:`add_header` would refuse), before anyone spends work on it."""
        if not self.settle:
            return
        self.heads()  # moves the final block first (it may forget dead branches)
        parent = self._nodes.get(header.prev)
        if parent is not None:
            self._check_settled(parent, header)

    def add_signature(self, block_hash: bytes, member: str) -> bool:
        """Record a (verified) signature. Signatures on unknown blocks wait for the header; on a
        block below the root they raise the signer's endorsement floor (its weight no longer
        matters to fork choice: everything below the root is settled or out of reach)."""
        if member not in self._signed_at:
            raise ValidationError(f"signature: {member!r} is not a member")
        node = self._nodes.get(block_hash)
        if node is None:
            header = self._archived(block_hash)
            if header is not None:
                assert self.archive is not None
                if self.archive.best_hash_at(header.height) == block_hash:
                    self._floor[member] = max(self._floor.get(member, 0), header.height)
                    self._endorse_at(member, header.height)
                    self._changed()
                return False
            pending = self._pending_sigs.setdefault(block_hash, set())
            new = member not in pending
            pending.add(member)
            return new
        if member in node.signers:
            return False
        self._record_signer(node, member)
        self._changed()
        if member in self.culprits:  # endorses, but weighs nothing
            self._endorse_at(member, self._fork_height(node))
            return True
        node.counted += 1
        if node.index >= 0:
            self._weights.add(node.index, 1)  # the best tip only gains: fork choice cannot change
            self._endorse_at(member, node.header.height)
            return True
        self._endorse_at(member, self._chain[node.fork].header.height)
        best = node
        stack = [node]
        while stack:
            n = stack.pop()
            n.rel += 1
            if self._key(n) < self._key(best):
                best = n
            stack.extend(n.children)
        self._consider(best)
        return True

    def add_culprit(self, member: str) -> bool:
        """Exclude every signature of ``member`` (valid evidence was seen). Never undone."""
        if member in self.culprits:
            return False
        self.culprits.add(member)
        self._rebuild()
        return True

    def set_anchored(self, block_hash: bytes) -> None:
        """This block (and so its ancestry) is anchored deep enough."""
        node = self._nodes.get(block_hash)
        if node is None:
            header = self._archived(block_hash)
            if header is not None and self.archive is not None:
                fork = self._archive_fork_height(header)
                self._anchored_floor = max(self._anchored_floor, fork)
                self._anchored_height = max(self._anchored_height, fork)
                self._changed()
            elif header is None:
                self._pending_anchors.add(block_hash)  # counted once the block arrives
            return
        self._anchored.add(block_hash)
        self._anchored_height = max(self._anchored_height, self._fork_height(node))
        self._changed()

    # --- internal bookkeeping ------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1

    def _record_signer(self, node: _Node, member: str) -> None:
        node.signers.add(member)
        height = node.header.height
        self._signed_at.setdefault(member, {}).setdefault(height, []).append(node.header.hash)
        latest = self._latest.get(member)
        if latest is None or height >= latest[0]:
            self._latest[member] = (height, node.header.hash)

    def _endorse_at(self, member: str, height: int) -> None:
        if height > self._endorse.get(member, 0):
            self._endorse[member] = height

    def _counted(self, signers: Iterable[str]) -> int:
        return sum(1 for s in signers if s not in self.culprits)

    def _weight(self, node: _Node) -> int:
        """Counted signatures from the root to ``node`` (inclusive)."""
        if node.index >= 0:
            return self._weights.prefix(node.index)
        return self._weights.prefix(node.fork) + node.rel

    def _key(self, node: _Node) -> tuple[int, int, bytes]:
        return (-self._weight(node), node.header.height, node.header.hash)

    def _fork_height(self, node: _Node) -> int:
        return node.header.height if node.index >= 0 else self._chain[node.fork].header.height

    def _consider(self, node: _Node) -> None:
        """``node`` may now beat the best tip: extend the best chain, or reorganise."""
        if self._key(node) >= self._key(self._best):
            return
        if node.header.prev == self._best.header.hash:
            # The common case: a child of the best tip. Other children of the tip keep their
            # fork point and relative weight, so nothing else moves.
            self._side.discard(node)
            lifted = node.rel
            node.index, node.fork, node.rel = len(self._chain), -1, 0
            stack = list(node.children)  # its side descendants now fork at it
            while stack:
                d = stack.pop()
                d.fork, d.rel = node.index, d.rel - lifted
                for member in d.signers:  # which endorse the new best block now
                    self._endorse_at(member, node.header.height)
                if d.header.hash in self._anchored:
                    self._anchored_height = max(self._anchored_height, node.header.height)
                stack.extend(d.children)
            self._chain.append(node)
            self._weights.append(node.counted)
            self._best = node
            for member in node.signers:  # they now endorse a best-chain block at its own height
                self._endorse_at(member, node.header.height)
            if node.header.hash in self._anchored:
                self._anchored_height = max(self._anchored_height, node.header.height)
            return
        self._rebuild()

    def _rebuild(self) -> None:
        """Recompute weights, the best chain, side branches and endorsement heights from the
        nodes held (after a reorg or a new culprit): O(blocks held)."""
        absolute: dict[_Node, int] = {}
        order = [self._root]
        self._root.counted = self._counted(self._root.signers)
        absolute[self._root] = self._root.counted
        best = self._root
        best_key = (-absolute[self._root], self._root.header.height, self._root.header.hash)
        final = self._final_header()
        to_final: set[bytes] = set()
        if self.settle and final.height > self._root.header.height and final.hash in self._nodes:
            walk: _Node | None = self._nodes[final.hash]
            while walk is not None and walk is not self._root:
                to_final.add(walk.header.hash)
                walk = self._nodes.get(walk.header.prev)
        i = 0
        while i < len(order):
            parent = order[i]
            i += 1
            for c in parent.children:
                c.counted = self._counted(c.signers)
                absolute[c] = absolute[parent] + c.counted
                if to_final and c.header.hash not in to_final and parent.header.height < final.height:
                    continue  # forks below the final block: never best, never counted (dead)
                order.append(c)
                key = (-absolute[c], c.header.height, c.header.hash)
                if key < best_key:
                    best, best_key = c, key
        path = []
        step: _Node | None = best
        while step is not None:
            path.append(step)
            step = self._nodes.get(step.header.prev) if step is not self._root else None
        path.reverse()
        for node in self._chain:
            node.index = -1
        self._chain = path
        for index, node in enumerate(path):
            node.index, node.fork, node.rel = index, -1, 0
        self._weights = _Fenwick(node.counted for node in path)
        self._side = set()
        for node in order:
            if node.index >= 0:
                continue
            parent = self._nodes[node.header.prev]
            if parent.index >= 0:
                node.fork, node.rel = parent.index, node.counted
            else:
                node.fork, node.rel = parent.fork, parent.rel + node.counted
            self._side.add(node)
        self._best = best
        self._endorse = dict(self._floor)
        self._anchored_height = self._anchored_floor
        for node in order:
            fork = self._fork_height(node)
            for member in node.signers:
                if fork > self._endorse.get(member, 0):
                    self._endorse[member] = fork
            if node.header.hash in self._anchored:
                self._anchored_height = max(self._anchored_height, fork)
        self._changed()

    def _descends_from_final(self, node: _Node) -> bool:
        final = self._final_header()
        if final.height <= self._root.header.height:
            return True  # the root descends from the final block (it never rises above it)
        n = node
        while n.header.height > final.height:
            parent = self._nodes.get(n.header.prev)
            if parent is None:  # pragma: no cover - every held node descends from the root
                return False
            n = parent
        return n.header.hash == final.hash

    def _check_settled(self, parent: _Node, header: Header) -> None:
        final = self._final_header()
        if final.height <= self._root.header.height:
            return
        if parent.index >= 0 and parent.header.height >= final.height:
            return
        n = parent
        while n.header.height > final.height:
            n = self._nodes[n.header.prev]
        if n.header.hash != final.hash:
            raise SettledConflict(
                f"block at height {header.height} ({header.hash.hex()[:16]}) leaves out the settled block "
                f"{final.hash.hex()[:16]} at height {final.height}", final, header)

    def _archive_fork_height(self, header: Header) -> int:
        """The highest best-chain ancestor-or-self of an archived block (walks the archive)."""
        assert self.archive is not None
        h: Header | None = header
        while h is not None and h.height > 0 and self.archive.best_hash_at(h.height) != h.hash:
            h = self.archive.header(h.prev)
        return h.height if h is not None else 0

    def _update_final(self, unanimous: int) -> None:
        """The final block follows the unanimous head up the best chain, never down. Side
        branches forking below it can never be best again: they are forgotten."""
        if unanimous <= self._final_header().height:
            return
        root = self._root.header.height
        if unanimous < root:
            at = self.best_chain_hash(unanimous)
            if at is not None:
                self._final = self.header(at)
            return
        node = self._chain[unanimous - root]
        self._final = node
        dead = [s for s in self._side if s.fork < node.index]
        if dead:
            self._drop_dead(dead)

    def _drop_dead(self, dead: Sequence[_Node]) -> None:
        """Forget side branches (views do not depend on them: they fork below the final block,
        which every eligible member endorses and which is anchored)."""
        for node in dead:
            parent = self._nodes.get(node.header.prev)
            if parent is not None and node in parent.children:
                parent.children.remove(node)
        for node in self._subtrees(dead):
            self._forget(node)

    @staticmethod
    def _subtrees(tops: Sequence[_Node]) -> list[_Node]:
        out: list[_Node] = []
        seen: set[int] = set()
        stack = list(tops)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            out.append(n)
            stack.extend(n.children)
        return out

    def _forget(self, node: _Node) -> None:
        if self._nodes.pop(node.header.hash, None) is None:
            return
        self._side.discard(node)
        self._anchored.discard(node.header.hash)
        height = node.header.height
        for member in node.signers:
            by_height = self._signed_at.get(member, {})
            hashes = by_height.get(height)
            if hashes and node.header.hash in hashes:
                hashes.remove(node.header.hash)
                if not hashes:
                    del by_height[height]
            latest = self._latest.get(member)
            if latest is not None and latest[1] == node.header.hash:
                del self._latest[member]
                if by_height:
                    top = max(by_height)
                    self._latest[member] = (top, by_height[top][-1])

    # --- pruning (with an archive) -----------------------------------------------------------

    def prune(self, keep: int) -> TreeSnapshot | None:
        """Move the root up to ``max(final, tip - keep)`` (never above the final block), dropping
        what lies below from memory; returns the new snapshot to persist, or None if the root
        did not move. Needs the archive: dropped blocks are read from it from now on."""
        if self.archive is None:
            raise ValueError("pruning needs the archive of the blocks below the root")
        self.heads()  # the final block first: the root may rise to it
        target = max(self.final.height, self.best_tip.height - keep)
        root_height = self._root.header.height
        if target <= root_height:
            return None
        cut = target - root_height
        new_root = self._chain[cut]
        # Everything below the new root: best-chain blocks and side branches forking under it.
        dropped_best = self._chain[:cut]
        for node in dropped_best:
            for member in node.signers:
                self._floor[member] = max(self._floor.get(member, 0), node.header.height)
                self._below[member] = self._below.get(member, 0) + 1
            if node.header.hash in self._anchored:
                self._anchored_floor = max(self._anchored_floor, node.header.height)
        doomed_side = [s for s in self._side if s.fork < cut]
        for node in doomed_side:
            fork = self._chain[node.fork].header.height
            for member in node.signers:
                self._floor[member] = max(self._floor.get(member, 0), fork)
            if node.header.hash in self._anchored:
                self._anchored_floor = max(self._anchored_floor, fork)
        for node in dropped_best + self._subtrees(doomed_side):
            self._forget(node)
        new_root.children = [c for c in new_root.children if c.header.hash in self._nodes]
        self._root = new_root
        self._chain = self._chain[cut:]
        for index, node in enumerate(self._chain):
            node.index = index
        for node in self._side:
            node.fork -= cut
        self._weights = _Fenwick(node.counted for node in self._chain)
        self._changed()
        return self.snapshot()

    def snapshot(self) -> TreeSnapshot:
        return TreeSnapshot(self._root.header, self.final, tuple(sorted(self._floor.items())),
                            tuple(sorted(self._below.items())), self._anchored_floor)

    # --- queries ---------------------------------------------------------------------------

    @property
    def best_tip(self) -> Header:
        return self._best.header

    def weight(self, block_hash: bytes) -> int:
        """Counted signatures from genesis to a held block."""
        below = sum(n for m, n in self._below.items() if m not in self.culprits)
        return below + self._weight(self._nodes[block_hash])

    def best_chain_hash(self, height: int) -> bytes | None:
        root = self._root.header.height
        if height >= root:
            index = height - root
            return self._chain[index].header.hash if index < len(self._chain) else None
        if height < 0 or self.archive is None:
            return None
        return self.archive.best_hash_at(height)

    def on_best_chain(self, block_hash: bytes) -> bool:
        node = self._nodes.get(block_hash)
        if node is not None:
            return node.index >= 0
        header = self._archived(block_hash)
        return header is not None and self.best_chain_hash(header.height) == block_hash

    def fork_point(self, block_hash: bytes) -> Header:
        """The highest best-chain ancestor-or-self of a known block."""
        node = self._nodes.get(block_hash)
        if node is not None:
            return node.header if node.index >= 0 else self._chain[node.fork].header
        header = self.header(block_hash)
        height = self._archive_fork_height(header)
        at = self.best_chain_hash(height)
        return self.header(at) if at is not None else self.genesis

    def eligible(self, height: int | None = None) -> tuple[str, ...]:
        """Members at ``height`` (default: the best tip's) who are not culprits."""
        members = self.members_at(self.best_tip.height if height is None else height)
        return tuple(m for m in members if m not in self.culprits)

    def endorsement_height(self, member: str) -> int:
        return self._endorse.get(member, 0)

    def endorsers(self, block_hash: bytes) -> tuple[str, ...]:
        """Non-excluded members endorsing a best-chain block (signed it or a descendant)."""
        height = self.header(block_hash).height
        return tuple(m for m in self.eligible(height) if self.endorsement_height(m) >= height)

    def anchored_height(self) -> int:
        return self._anchored_height

    def heads(self) -> ViewHeads:
        cached = self._heads
        if cached is not None and cached[0] == self._version:
            return cached[1]
        if self.schedule is None:
            eligible = self.eligible()
            heights = sorted((self.endorsement_height(m) for m in eligible), reverse=True)
            need = len(eligible) // 2 + 1
            majority = heights[need - 1] if len(heights) >= need else 0
            unanimous_signed = heights[-1] if heights else 0
        else:
            majority, unanimous_signed = self._scheduled_heads(self.schedule)
        tip = self.best_tip.height
        majority, unanimous_signed = min(majority, tip), min(unanimous_signed, tip)
        anchored = min(self.anchored_height(), tip)
        heads = ViewHeads(
            tentative=tip,
            majority=majority,
            unanimous_signed=unanimous_signed,
            unanimous=min(unanimous_signed, anchored),
            anchored=anchored,
        )
        self._heads = (self._version, heads)
        if self.settle:
            self._update_final(heads.unanimous)
        return heads

    def _scheduled_heads(self, schedule: MemberSchedule) -> tuple[int, int]:
        """Majority and unanimous_signed heads when the member list varies by height.

        Height ``h`` is majority-endorsed when more than half of ``E_h`` (members at ``h`` less
        culprits) endorse it, unanimous when all of ``E_h`` do; the head is the highest such
        height. Within a stretch of heights with one list the count of endorsers only falls as
        ``h`` rises, so each stretch is answered by the one-list rule clipped to the stretch,
        from the top stretch down.
        """
        tip = self.best_tip.height
        epochs = list(schedule.member_epochs())
        majority = unanimous = None
        for i in range(len(epochs) - 1, -1, -1):
            start = epochs[i][0]
            end = min(tip, epochs[i + 1][0] - 1) if i + 1 < len(epochs) else tip
            if start > end:
                continue
            eligible = [m for m in epochs[i][1] if m not in self.culprits]
            if not eligible:
                continue
            heights = sorted((self.endorsement_height(m) for m in eligible), reverse=True)
            top = heights[len(eligible) // 2]
            if majority is None and top >= start:
                majority = min(top, end)
            if unanimous is None and heights[-1] >= start:
                unanimous = min(heights[-1], end)
            if majority is not None and unanimous is not None:
                break
        return majority or 0, unanimous or 0

    def head(self, view: View) -> Header:
        h = self.best_chain_hash(self.heads().height(view))
        assert h is not None  # heads are always heights on the best chain
        return self.header(h)

    def status(self, block_hash: bytes, heads: ViewHeads | None = None) -> Status:
        if not self.on_best_chain(block_hash):
            return Status.ORPHANED
        heads = heads or self.heads()
        height = self.header(block_hash).height
        if height <= heads.unanimous:
            return Status.UNANIMOUS
        if height <= heads.unanimous_signed:
            return Status.UNANIMOUS_SIGNED
        if height <= heads.majority:
            return Status.MAJORITY
        return Status.TENTATIVE

    def signed_at(self, member: str, height: int) -> list[bytes]:
        """Blocks at ``height`` carrying ``member``'s signature: held ones, and with an archive
        also those it holds (below the root, or on dropped side branches)."""
        held = list(self._signed_at.get(member, {}).get(height, ()))
        if self.archive is None:
            return held
        return held + [h for h in self.archive.signed_at(member, height) if h not in held]

    def stranded(self) -> tuple[str, ...]:
        """Eligible members whose highest signature is on a block beside the best chain, at or
        above the best tip's height. Such a member cannot sign the best chain's block at that
        height (it would be its second signature there), so its endorsement of the tip can only
        come from a later block: a chain that rests now leaves the tip short of
        ``unanimous_signed`` until the next block."""
        tip = self.best_tip.height
        return tuple(m for m in self.eligible()
                     if (latest := self._latest.get(m)) is not None and latest[0] >= tip
                     and not self.on_best_chain(latest[1]))

    def latest_signed(self, member: str) -> bytes | None:
        """The block of ``member``'s highest signature held in memory."""
        latest = self._latest.get(member)
        return latest[1] if latest is not None else None

    def headers(self) -> Iterable[Header]:
        """The headers held in memory (at and above the root)."""
        return (n.header for n in self._nodes.values())

    def leaves(self) -> list[Header]:
        return [n.header for n in self._nodes.values() if not n.children]

    def side_tips(self) -> list[Header]:
        """Leaves of side branches (not on the best chain)."""
        return [n.header for n in self._side if not n.children]
