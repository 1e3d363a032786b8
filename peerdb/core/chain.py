"""The block tree, fork choice, views and block statuses (the alerts built on them: :mod:`peerdb.node.alerts`).

Fork rule (seed 001, step 3.1): the best chain is the one whose blocks carry the most
signatures, not counting any signature from a member against whom valid double-sign evidence
exists anywhere. Ties go to the lower height, then the lower block hash, so every member that
holds the same blocks, signatures and evidence picks the same tip whatever the order in which
they arrived.

Endorsement: a member who signed block B endorses B and all its ancestors. A member's
*endorsement height* is the height of the highest best-chain block it endorses.

Views:
* ``tentative``: the best tip;
* ``majority``: the highest best-chain block endorsed by more than half of the non-excluded members;
* ``unanimous_signed``: endorsed by every non-excluded member;
* ``unanimous``: unanimous_signed and anchored in Bitcoin at the required depth (seed 001 step 1).

The tree holds headers only (bodies live in the store). It is an in-memory structure updated by
``add_*`` methods, and every answer is a deterministic function of the set of headers,
signatures, culprits and anchors it holds.
"""

from __future__ import annotations

import bisect
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


@dataclass
class _Node:
    header: Header
    signers: set[str] = field(default_factory=set)
    children: list[bytes] = field(default_factory=list)
    weight: int = 0  # cumulative counted signatures from genesis to here


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
    """The member list in force at each height of the best chain (governance, issue 8);
    :class:`peerdb.core.membership.ConsortiumState` of the best tip is one."""

    def members_at(self, height: int) -> tuple[str, ...]: ...

    def member_epochs(self) -> Sequence[tuple[int, tuple[str, ...]]]:
        """``(first height, members)`` ascending, the first starting at 0."""
        ...


class BlockTree:
    def __init__(self, genesis: Header, members: Sequence[str], schedule: MemberSchedule | None = None) -> None:
        if genesis.height != 0:
            raise ValueError("the tree must start at a height-0 genesis header")
        self.genesis = genesis
        self.members: tuple[str, ...] = tuple(members)
        """The genesis member list; with a schedule, :meth:`members_at` is the list at a height."""
        self.schedule: MemberSchedule | None = None
        self._nodes: dict[bytes, _Node] = {genesis.hash: _Node(genesis)}
        self._pending_sigs: dict[bytes, set[str]] = {}
        self.culprits: set[str] = set()
        self._signed: dict[str, list[tuple[int, bytes]]] = {m: [] for m in self.members}
        self._anchored: set[bytes] = set()
        self._best: bytes = genesis.hash
        self._chain: list[bytes] = [genesis.hash]  # best chain by height
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
                    self._signed.setdefault(name, [])

    def members_at(self, height: int) -> tuple[str, ...]:
        return self.members if self.schedule is None else self.schedule.members_at(height)

    # --- updates ---------------------------------------------------------------------------

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self._nodes

    def header(self, block_hash: bytes) -> Header:
        return self._nodes[block_hash].header

    def signers(self, block_hash: bytes) -> frozenset[str]:
        node = self._nodes.get(block_hash)
        return frozenset(node.signers) if node else frozenset(self._pending_sigs.get(block_hash, ()))

    def add_header(self, header: Header) -> bool:
        """Add a (validated) header whose parent is known. Returns False if already present."""
        if header.hash in self._nodes:
            return False
        parent = self._nodes.get(header.prev)
        if parent is None:
            raise ValidationError(f"block at height {header.height}: parent {header.prev.hex()[:16]} is unknown")
        if header.height != parent.header.height + 1:
            raise ValidationError(f"block at height {header.height}: parent is at height {parent.header.height}")
        node = _Node(header, weight=parent.weight)
        self._nodes[header.hash] = node
        parent.children.append(header.hash)
        for member in self._pending_sigs.pop(header.hash, set()):
            self._record_signer(node, member)
        node.weight = parent.weight + self._counted(node.signers)
        self._consider(header.hash)
        return True

    def add_signature(self, block_hash: bytes, member: str) -> bool:
        """Record a (verified) signature. Signatures on unknown blocks wait for the header."""
        if member not in self._signed:
            raise ValidationError(f"signature: {member!r} is not a member")
        node = self._nodes.get(block_hash)
        if node is None:
            pending = self._pending_sigs.setdefault(block_hash, set())
            new = member not in pending
            pending.add(member)
            return new
        if member in node.signers:
            return False
        self._record_signer(node, member)
        if member not in self.culprits:
            for h in self._subtree(block_hash):
                self._nodes[h].weight += 1
                self._consider(h)
        return True

    def add_culprit(self, member: str) -> bool:
        """Exclude every signature of ``member`` (valid evidence was seen). Never undone."""
        if member in self.culprits:
            return False
        self.culprits.add(member)
        self._recompute()
        return True

    def set_anchored(self, block_hash: bytes) -> None:
        """Hook for the anchoring layer: this block (and so its ancestry) is anchored deep enough."""
        self._anchored.add(block_hash)

    def _record_signer(self, node: _Node, member: str) -> None:
        node.signers.add(member)
        bisect.insort(self._signed[member], (node.header.height, node.header.hash))

    def _counted(self, signers: Iterable[str]) -> int:
        return sum(1 for s in signers if s not in self.culprits)

    def _subtree(self, root: bytes) -> list[bytes]:
        out, stack = [], [root]
        while stack:
            h = stack.pop()
            out.append(h)
            stack.extend(self._nodes[h].children)
        return out

    def _key(self, h: bytes) -> tuple[int, int, bytes]:
        node = self._nodes[h]
        return (-node.weight, node.header.height, h)

    def _consider(self, h: bytes) -> None:
        if self._key(h) < self._key(self._best):
            self._set_best(h)

    def _set_best(self, tip: bytes) -> None:
        self._best = tip
        path = []
        h = tip
        height = self._nodes[tip].header.height
        while height >= len(self._chain) or self._chain[height] != h:
            path.append(h)
            h = self._nodes[h].header.prev
            height -= 1
        del self._chain[height + 1:]
        self._chain.extend(reversed(path))

    def _recompute(self) -> None:
        order = [self.genesis.hash]
        self._nodes[self.genesis.hash].weight = self._counted(self._nodes[self.genesis.hash].signers)
        i = 0
        while i < len(order):
            node = self._nodes[order[i]]
            for c in node.children:
                child = self._nodes[c]
                child.weight = node.weight + self._counted(child.signers)
                order.append(c)
            i += 1
        best = min(order, key=self._key)
        self._chain = [self.genesis.hash]
        self._set_best(best)

    # --- queries ---------------------------------------------------------------------------

    @property
    def best_tip(self) -> Header:
        return self._nodes[self._best].header

    def weight(self, block_hash: bytes) -> int:
        return self._nodes[block_hash].weight

    def best_chain_hash(self, height: int) -> bytes | None:
        return self._chain[height] if 0 <= height < len(self._chain) else None

    def on_best_chain(self, block_hash: bytes) -> bool:
        node = self._nodes.get(block_hash)
        return node is not None and self.best_chain_hash(node.header.height) == block_hash

    def fork_point(self, block_hash: bytes) -> Header:
        """The highest best-chain ancestor-or-self of a known block."""
        h = block_hash
        while not self.on_best_chain(h):
            h = self._nodes[h].header.prev
        return self._nodes[h].header

    def eligible(self, height: int | None = None) -> tuple[str, ...]:
        """Members at ``height`` (default: the best tip's) who are not culprits."""
        members = self.members_at(self.best_tip.height if height is None else height)
        return tuple(m for m in members if m not in self.culprits)

    def endorsement_height(self, member: str) -> int:
        best = 0
        for height, h in reversed(self._signed.get(member, ())):
            if height <= best:
                break
            best = max(best, self.fork_point(h).height)
        return best

    def endorsers(self, block_hash: bytes) -> tuple[str, ...]:
        """Non-excluded members endorsing a best-chain block (signed it or a descendant)."""
        height = self._nodes[block_hash].header.height
        return tuple(m for m in self.eligible(height) if self.endorsement_height(m) >= height)

    def anchored_height(self) -> int:
        return max((self.fork_point(h).height for h in self._anchored if h in self._nodes), default=0)

    def heads(self) -> ViewHeads:
        if self.schedule is None:
            eligible = self.eligible()
            heights = sorted((self.endorsement_height(m) for m in eligible), reverse=True)
            need = len(eligible) // 2 + 1
            majority = heights[need - 1] if len(heights) >= need else 0
            unanimous_signed = heights[-1] if heights else 0
        else:
            majority, unanimous_signed = self._scheduled_heads(self.schedule)
        anchored = self.anchored_height()
        return ViewHeads(
            tentative=self.best_tip.height,
            majority=majority,
            unanimous_signed=unanimous_signed,
            unanimous=min(unanimous_signed, anchored),
            anchored=anchored,
        )

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
        heights_of: dict[str, int] = {}
        majority = unanimous = None
        for i in range(len(epochs) - 1, -1, -1):
            start = epochs[i][0]
            end = min(tip, epochs[i + 1][0] - 1) if i + 1 < len(epochs) else tip
            if start > end:
                continue
            eligible = [m for m in epochs[i][1] if m not in self.culprits]
            if not eligible:
                continue
            for m in eligible:
                if m not in heights_of:
                    heights_of[m] = self.endorsement_height(m)
            heights = sorted((heights_of[m] for m in eligible), reverse=True)
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
        return self._nodes[h].header

    def status(self, block_hash: bytes, heads: ViewHeads | None = None) -> Status:
        if not self.on_best_chain(block_hash):
            return Status.ORPHANED
        heads = heads or self.heads()
        height = self._nodes[block_hash].header.height
        if height <= heads.unanimous:
            return Status.UNANIMOUS
        if height <= heads.unanimous_signed:
            return Status.UNANIMOUS_SIGNED
        if height <= heads.majority:
            return Status.MAJORITY
        return Status.TENTATIVE

    def signed_at(self, member: str, height: int) -> list[bytes]:
        return [h for hh, h in self._signed.get(member, ()) if hh == height]

    def latest_signed(self, member: str) -> bytes | None:
        signed = self._signed.get(member)
        return signed[-1][1] if signed else None

    def headers(self) -> Iterable[Header]:
        return (n.header for n in self._nodes.values())

    def leaves(self) -> list[Header]:
        return [n.header for n in self._nodes.values() if not n.children]
