"""Who this node is on the network and in the chain: its member name and the member keys it holds.

Governance can rotate a member's key, so "our key" is a function of height and branch: every
signature (proposal, co-signature, objection, vote) must use the key the governance state gives
this member at the signed height, and around a rotation a node holds both the old and the new
key. The answers here are pure functions of a :class:`~peerdb.core.membership.ConsortiumState`
and the keyring; the engine, which owns the state, passes it in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..core.errors import PeerDBError
from ..core.keys import SigningKey
from ..core.membership import GOVERNANCE_DELAY, ConsortiumState
from ..core.model import BlockSignature, Objection

log = logging.getLogger("peerdb.node")


class Identity:
    def __init__(self, me: str, keys: SigningKey | Iterable[SigningKey]) -> None:
        ring = [keys] if isinstance(keys, SigningKey) else list(keys)
        if not ring:
            raise ValueError("Identity: at least one member key")
        self.me = me
        self.keyring: dict[bytes, SigningKey] = {k.public: k for k in ring}
        """Every member key this node holds (public -> key): the one in force, and around a
        rotation the next or the previous one."""
        self.first_key = ring[0]
        """The key a node that is not (yet) a member presents."""
        self._missing_logged: set[bytes] = set()

    def key_at(self, state: ConsortiumState, height: int) -> SigningKey | None:
        """Our signing key at ``height`` on the branch ``state`` describes; None if we are not a
        member there or do not hold the key (logged once per key)."""
        public = state.key_at(self.me, height)
        if public is None:
            return None
        key = self.keyring.get(public)
        if key is None and public not in self._missing_logged:
            self._missing_logged.add(public)
            log.error("cannot sign at height %d: the consortium's key for %s there is %s, which this node "
                      "does not hold (configure it in node.key_file or node.extra_key_files)", height, self.me,
                      public.hex()[:16])
        return key

    def transport_key(self, state: ConsortiumState, next_height: int) -> SigningKey:
        """The key this node proves its identity with on the network: its newest member key it
        holds (so a member that rotated keeps being recognised by peers already past the
        rotation), else the one in force, else the first configured key (a joining member)."""
        for consortium in (state.latest(), state.at(next_height)):
            member = consortium.member(self.me)
            if member is not None and member.key in self.keyring:
                return self.keyring[member.key]
        return self.first_key

    def key_problem(self, state: ConsortiumState, next_height: int) -> str | None:
        """Why this node cannot sign for its member at ``next_height`` although it is a member
        there (None: it can, or it is not a member)."""
        public = state.key_at(self.me, next_height)
        if public is None or public in self.keyring:
            return None
        held = ", ".join(k.hex()[:16] for k in self.keyring)
        return (f"none of the configured keys ({held}) is {self.me}'s member key in force at height {next_height} "
                f"({public.hex()[:16]}); configure it in node.key_file or node.extra_key_files")


class MemberRemoved(PeerDBError):
    """This node's member was removed from the consortium: it has nothing left to sign or
    propose, and the others no longer talk to it. The daemon stops with its own exit code
    rather than run on showing a stalled chain and peers down."""


def removed_at(state: ConsortiumState, me: str, next_height: int) -> int | None:
    """The height from which ``me``, once a member, is no longer one on the chain ``state``
    describes, if that is in force by ``next_height`` (None: still a member, never one yet —
    a joining firm —, or a removal that has passed but not yet taken effect)."""
    history = state.key_history(me)
    if len(history) < 2 or history[-1][1] is not None or history[-1][0] > next_height:
        return None
    return history[-1][0]


def removal_settled(state: ConsortiumState, me: str, tip_height: int, majority_height: int) -> int | None:
    """:func:`removed_at` for a node deciding to stop: the removal in force at the next height
    on the best chain (``state`` is its tip's), *and* passed in a block a majority endorses (at
    or below the majority head). A removal passed only on a branch short of a majority may still
    lose to a sibling where this member stays one; a node that stopped for it (exit 9, which the
    service manager does not restart) would leave the consortium a member short for good. A
    majority-endorsed block is given up only if members sign two blocks at one height, which
    excludes them."""
    removed = removed_at(state, me, tip_height + 1)
    if removed is None or removed - GOVERNANCE_DELAY > majority_height:
        return None
    return removed


def network_members(state: ConsortiumState, next_height: int) -> tuple[tuple[str, bytes], ...]:
    """(name, key) of everyone a node's network talks to: the members in force at the next
    height and those after every change passed so far. So a member admitted but not yet in
    force can connect and catch up, and during a rotation both keys are accepted."""
    pairs = {(m.name, m.key) for c in (state.at(next_height), state.latest()) for m in c.members}
    return tuple(sorted(pairs))


def stored_item_check(state: ConsortiumState, cid: bytes) -> Callable[[BlockSignature | Objection], bool]:
    """A check for signed items read back from the store before they are served or exported:
    true when the item verifies with a key the chain ``state`` ever gave its member. Each item
    verified when it was accepted, so one that verifies under none of its member's keys was
    changed by the disk (a flipped byte verifies under no key). Keys are looked up once per
    member; ``state`` is immutable, so the check may run in a worker thread."""
    cache: dict[str, tuple[bytes, ...]] = {}

    def check(item: BlockSignature | Objection) -> bool:
        keys = cache.get(item.member)
        if keys is None:
            keys = cache[item.member] = tuple(sorted({k for _h, k in state.key_history(item.member) if k is not None}))
        return any(item.valid(cid, k) for k in keys)

    return check


def signed_by_some_key(state: ConsortiumState, member: str, check: Callable[[bytes], bool]) -> bool:
    """For objects whose height is not known yet (a signature on a block we lack, an
    objection): any key the chain ``state`` describes ever gave ``member``. A signature on a
    block is checked again with the key at its height once the block arrives."""
    keys = {k for _h, k in state.key_history(member) if k is not None}
    return any(check(k) for k in keys)
