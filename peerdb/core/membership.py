"""The consortium in force at each height: genesis plus the governance changes that passed.

Governance writes every passed change into the system namespace as a numbered entry
``change/NNNNNNNNNN = cbor([effective_height, proposal bytes])`` plus a counter ``changes =
cbor([count, running digest])`` (:mod:`peerdb.core.governance`). :class:`ConsortiumState` folds
them, in order, over the genesis consortium: a pure function of the genesis file and those
entries, hence of the ordered block sequence. Everything that used to read "the member list"
reads it *at a height* here: the proposer schedule, the keys that verify block signatures,
evidence and votes, the parameters and the namespace rules.

A state loaded from the state after block ``B`` is exact for every height up to
``B.height + GOVERNANCE_DELAY``: a change passed in a later block takes effect later still.
Entries are only ever appended along a chain, and the store undoes them with everything else on
a reorg, so each branch has its own, consistent answer.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .codec import decode, encode, expect_bytes, expect_int, expect_list, tagged_hash
from .consortium import Consortium, Params
from .errors import DecodeError, ValidationError
from .limits import HASH_LEN, MAX_VALUE_BYTES
from .model import GOV_NAMESPACE, BlockSignature, Evidence, KeyLookup
from .proposals import Proposal, apply_change

GOVERNANCE_DELAY = 2
"""A change whose last required approval is in block ``H`` takes effect at height ``H + 2``.
At least 1, so that no block changes the rules it is itself checked under (its proposer, its
signers and its parameters are fixed by its parent's state). One more so that every member has
a full block of notice: when the member set changes at ``H + 2``, the proposer of ``H + 1``
already held ``H``, and members can open connections to a new member (trust store, certificate)
before it is asked to propose or sign."""

CHANGES_KEY = "changes"
ZERO_DIGEST = bytes(HASH_LEN)
STATE_CACHE = 64
"""Loaded states a :class:`StateCache` keeps: one per branch tip in practice, a handful at a time."""


class GovReader(Protocol):
    """What governance reads from a state (a :class:`peerdb.core.state.StateReader` fits)."""

    def get(self, namespace: str, key: str) -> bytes | None: ...


def change_key(index: int) -> str:
    return f"change/{index:010d}"


def next_digest(digest: bytes, record: bytes) -> bytes:
    """Running hash over the change entries, so that a loaded state is cached by one read."""
    return tagged_hash("governance", digest + tagged_hash("change", record))


@dataclass(frozen=True)
class ScheduledChange:
    """A passed proposal and the height from which its change is in force."""

    effective_height: int
    proposal: Proposal

    def encode(self) -> bytes:
        return encode([self.effective_height, self.proposal.raw])

    @classmethod
    def decode(cls, data: bytes) -> "ScheduledChange":
        items = expect_list(decode(data, max_size=2 * MAX_VALUE_BYTES, what="change"), "change", 2)
        return cls(expect_int(items[0], "change.effective_height", 1),
                   Proposal.decode(expect_bytes(items[1], "change.proposal", max_len=MAX_VALUE_BYTES)))


def parse_counter(raw: bytes | None) -> tuple[int, bytes]:
    if raw is None:
        return 0, ZERO_DIGEST
    items = expect_list(decode(raw, max_size=64, what="changes"), "changes", 2)
    return expect_int(items[0], "changes.count"), expect_bytes(items[1], "changes.digest", HASH_LEN)


class ConsortiumState:
    """Members, keys, parameters and rules at every height. Immutable; cheap to query."""

    def __init__(self, genesis: Consortium, changes: Sequence[ScheduledChange] = (), digest: bytes = ZERO_DIGEST) -> None:
        self.genesis = genesis
        self.changes: tuple[ScheduledChange, ...] = tuple(changes)
        self.digest = digest
        self._starts: list[int] = [0]
        self._epochs: list[Consortium] = [genesis]
        names = set(genesis.member_names)
        keys = {m.key for m in genesis.members} | {k for m in genesis.members for k in m.clients}
        current = genesis
        for i, change in enumerate(self.changes):
            if change.effective_height < self._starts[-1]:
                raise ValidationError(f"governance change {i}: effective height {change.effective_height} is "
                                      f"before the previous change's ({self._starts[-1]})")
            current = apply_change(current, change.proposal.change, frozenset(names), frozenset(keys))
            names.update(current.member_names)
            keys.update({m.key for m in current.members} | {k for m in current.members for k in m.clients})
            if change.effective_height == self._starts[-1]:
                self._epochs[-1] = current
            else:
                self._starts.append(change.effective_height)
                self._epochs.append(current)
        self.used_names: frozenset[str] = frozenset(names)
        self.used_keys: frozenset[bytes] = frozenset(keys)

    # --- loading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, genesis: Consortium, reader: GovReader, cache: StateCache | None = None) -> "ConsortiumState":
        """The state as ``reader`` (the state after some block) records it.

        With ``cache`` (made for this ``genesis``), a state whose digest was loaded before costs
        one read and no fold, and a chain without governance always costs one read; without it,
        every call folds the entries again (fine for a one-off, not per block)."""
        if cache is not None and cache.genesis is not genesis:
            raise ValueError("ConsortiumState.load: the state cache belongs to another consortium")
        count, digest = parse_counter(reader.get(GOV_NAMESPACE, CHANGES_KEY))
        if count == 0:
            return cache.genesis_state if cache is not None else cls(genesis)
        if cache is not None:
            cached = cache.get(digest)
            if cached is not None:
                return cached
        changes = []
        check = ZERO_DIGEST
        for i in range(count):
            raw = reader.get(GOV_NAMESPACE, change_key(i))
            if raw is None:
                raise DecodeError(f"governance state: change {i} of {count} is missing")
            check = next_digest(check, raw)
            changes.append(ScheduledChange.decode(raw))
        if check != digest:
            raise DecodeError("governance state: the change entries do not match their digest")
        state = cls(genesis, changes, digest)
        if cache is not None:
            cache.put(state)
        return state

    def with_changes(self, new: Iterable[ScheduledChange]) -> "ConsortiumState":
        """This state with more changes appended (as a block that passed them leaves it)."""
        digest = self.digest
        added = []
        for change in new:
            digest = next_digest(digest, change.encode())
            added.append(change)
        return ConsortiumState(self.genesis, self.changes + tuple(added), digest) if added else self

    def after_writes(self, writes: Iterable[tuple[str, str, bytes | None]]) -> "ConsortiumState":
        """The state after a block whose effects are ``writes`` (on top of this state's block):
        lets a node follow its best chain without reading the store again."""
        return self.with_changes(ScheduledChange.decode(value) for ns, key, value in writes
                                 if ns == GOV_NAMESPACE and key.startswith("change/") and value is not None)

    # --- queries ---------------------------------------------------------------------------------

    def at(self, height: int) -> Consortium:
        """The consortium in force at ``height``: pass it wherever a Consortium is expected."""
        return self._epochs[bisect.bisect_right(self._starts, height) - 1]

    def latest(self) -> Consortium:
        """After every change passed so far, including those not yet in force."""
        return self._epochs[-1]

    def members_at(self, height: int) -> tuple[str, ...]:
        """Names in turn order: ``proposer_for(members_at(h), h, r)`` is the schedule."""
        return self.at(height).member_names

    def key_at(self, member: str, height: int) -> bytes | None:
        """The key that signs for ``member`` at ``height``; None if it is not a member then."""
        m = self.at(height).member(member)
        return None if m is None else m.key

    def key_lookup(self, height: int) -> KeyLookup:
        consortium = self.at(height)

        def lookup(name: str) -> bytes | None:
            m = consortium.member(name)
            return None if m is None else m.key
        return lookup

    def params_at(self, height: int) -> Params:
        return self.at(height).params

    def member_epochs(self) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """``(first height, member names)`` for every stretch of heights with one member list,
        ascending; the first starts at 0. What :class:`peerdb.core.chain.BlockTree` needs."""
        return tuple((start, c.member_names) for start, c in zip(self._starts, self._epochs))

    def epochs(self) -> tuple[tuple[int, Consortium], ...]:
        return tuple(zip(self._starts, self._epochs))

    def key_history(self, member: str) -> tuple[tuple[int, bytes | None], ...]:
        """``(from height, key or None when not a member)`` from height 0, one entry per change
        of ``member``'s key: what an auditor needs to check its signatures at every height."""
        out: list[tuple[int, bytes | None]] = []
        for start, c in zip(self._starts, self._epochs):
            m = c.member(member)
            key = None if m is None else m.key
            if not out or out[-1][1] != key:
                out.append((start, key))
        return tuple(out)

    def signature_valid(self, sig: BlockSignature, height: int, cid: bytes) -> bool:
        """A block signature on a block at ``height`` (whose branch this state describes)."""
        key = self.key_at(sig.member, height)
        return key is not None and sig.valid(cid, key)

    def check_evidence(self, ev: Evidence, cid: bytes) -> None:
        """Evidence is checked with the key the member held at the evidenced height, so a key
        rotation never erases a double-sign made with the old key."""
        height = ev.header_a.height
        key = self.key_at(ev.member, height)
        if key is None:
            raise ValidationError(f"evidence: {ev.member} is not a member at height {height}")
        ev.check(cid, key)


class StateCache:
    """Governance states of one consortium's chains, by the running digest of their change
    entries, so that :meth:`ConsortiumState.load` folds each set of entries once.

    Its owner holds it for as long as it loads states from stored blocks: the engine (whose
    calls the service serialises with one lock) and the store (which recomputes the effects of
    side-branch blocks inside its writes and its snapshots, and those may run in different
    worker threads) each hold one. The lock guards the dictionary only, so that an owner used
    from several threads stays consistent; a miss folds outside it (two threads missing the same
    digest at once both fold, to equal states). Bounded by :data:`STATE_CACHE`, least recently
    used first out; the genesis state, which chains without governance use at every height, is
    kept apart and never evicted.
    """

    def __init__(self, genesis: Consortium, size: int = STATE_CACHE) -> None:
        self.genesis = genesis
        self.size = size
        self.genesis_state = ConsortiumState(genesis)
        self._states: OrderedDict[bytes, ConsortiumState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> ConsortiumState | None:
        with self._lock:
            state = self._states.get(digest)
            if state is not None:
                self._states.move_to_end(digest)
            return state

    def put(self, state: ConsortiumState) -> None:
        if state.genesis is not self.genesis:
            raise ValueError("StateCache.put: a state of another consortium")
        with self._lock:
            self._states[state.digest] = state
            self._states.move_to_end(state.digest)
            while len(self._states) > self.size:
                self._states.popitem(last=False)

    def __len__(self) -> int:
        return len(self._states)
