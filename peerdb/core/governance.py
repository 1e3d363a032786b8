"""Governance in the state machine: proposals and votes become writes in the system namespace.

A governance request is an ordinary transaction op, ``put("_gov", "propose" | "vote", bytes)``,
signed by a client of a member like any other write; the state machine interprets it instead of
storing it (``_gov`` is unreachable for data: see :data:`peerdb.core.model.GOV_NAMESPACE`). Its
effects are ordinary writes into ``_gov``, so the store persists, undoes, reorgs and keeps
history of governance exactly as it does of data, and the state root covers it.

State layout (namespace ``_gov``, every value canonical CBOR):

========================  =====================================================================
``proposal/<id hex>``     :class:`ProposalRecord`: the proposal, who made it, when, its status
``vote/<id hex>/<name>``  the signed :class:`peerdb.core.proposals.Vote` as included
``pending``               ids of open proposals, oldest first
``changes``               ``[count, running digest]`` of the passed changes
``change/<n, 10 digits>`` ``[effective_height, proposal bytes]`` (:mod:`peerdb.core.membership`)
========================  =====================================================================

Rules, at a block of height ``h`` and time ``t``:

* **Propose**: any member (``tx.member``) may propose; the change must apply to the consortium as
  every change passed so far leaves it (early, clear errors); at most
  :data:`MAX_PENDING_PER_MEMBER` open proposals per member.
* **Vote**: by a member at ``h``, signed with its member key at ``h``; once per member and
  proposal; only while the proposal is open and younger than :data:`PROPOSAL_TTL_MS`.
* **Decide**: the required voters are the members at ``h`` minus those the proposal removes.
  Making a proposal is its proposer's "yes" (it may still vote, and a "no" withdraws it).
  A "no" from one of them rejects the proposal; when all of them approved, it passes in block
  ``h`` and takes effect at ``h + GOVERNANCE_DELAY``. When the member set changes at a height,
  open proposals are tallied again there (a removed member's missing vote no longer blocks).
  A passing change is applied once more against every earlier passed change: if it no longer
  applies (two proposals added the same name), it is recorded as ``failed`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .codec import decode, encode, expect_bytes, expect_int, expect_list, expect_str
from .errors import DecodeError, LocalError, SignatureError, ValidationError
from .limits import HASH_LEN, MAX_NAME_LEN, MAX_REASON_LEN, MAX_VALUE_BYTES
from .membership import (
    CHANGES_KEY,
    GOVERNANCE_DELAY,
    ConsortiumState,
    GovReader,
    ScheduledChange,
    change_key,
    next_digest,
    parse_counter,
)
from .model import GOV_NAMESPACE, Op
from .proposals import Proposal, Vote, apply_change

PROPOSAL_TTL_MS = 7 * 24 * 3600 * 1000
"""An open proposal expires this long (by block time) after the block that included it. Votes
are cast by people at firms: a week spans a weekend and a holiday; a question still open after
that is better asked again. Block time, not a block count, because the block rate follows the
load (from one per heartbeat to many per second) while a deadline for people should not."""
MAX_PENDING_PER_MEMBER = 4
"""Open proposals per proposing member: a firm rarely has more than a couple of open questions,
and the cap stops one member from flooding the list that every member-set change re-examines."""

PROPOSE = "propose"
VOTE = "vote"
PENDING_KEY = "pending"

PENDING = "pending"
PASSED = "passed"
REJECTED = "rejected"
FAILED = "failed"
EXPIRED = "expired"
"""Not stored: an open proposal whose deadline has passed (see :meth:`ProposalRecord.status_at`)."""
STATUSES = (PENDING, PASSED, REJECTED, FAILED)

Write = tuple[str, str, bytes | None]


def proposal_key(proposal_id: bytes) -> str:
    return f"proposal/{proposal_id.hex()}"


def vote_key(proposal_id: bytes, member: str) -> str:
    return f"vote/{proposal_id.hex()}/{member}"


def propose_op(proposal: Proposal) -> Op:
    """The op that carries a proposal in a transaction."""
    return Op(0, GOV_NAMESPACE, PROPOSE, proposal.raw)


def vote_op(vote: Vote) -> Op:
    """The op that carries a signed vote (any member's client may carry any member's vote)."""
    return Op(0, GOV_NAMESPACE, VOTE, vote.encode())


@dataclass(frozen=True)
class ProposalRecord:
    """``[proposal bytes, proposer, height, time_ms, status, decided_height, effective_height, reason]``."""

    proposal: Proposal
    proposer: str
    height: int
    time_ms: int
    status: str = PENDING
    decided_height: int | None = None
    effective_height: int | None = None
    reason: str = ""

    @property
    def expires_ms(self) -> int:
        return self.time_ms + PROPOSAL_TTL_MS

    def status_at(self, time_ms: int) -> str:
        """The status as of a block (or clock) time: open proposals past their deadline are expired."""
        return EXPIRED if self.status == PENDING and time_ms > self.expires_ms else self.status

    def encode(self) -> bytes:
        return encode([self.proposal.raw, self.proposer, self.height, self.time_ms, self.status,
                       self.decided_height, self.effective_height, self.reason])

    @classmethod
    def decode(cls, data: bytes) -> "ProposalRecord":
        items = expect_list(decode(data, max_size=2 * MAX_VALUE_BYTES, what="proposal record"), "proposal record", 8)
        status = expect_str(items[4], "proposal record.status", 16)
        if status not in STATUSES:
            raise DecodeError(f"proposal record.status: {status!r} is not one of {', '.join(STATUSES)}")
        return cls(Proposal.decode(expect_bytes(items[0], "proposal record.proposal", max_len=MAX_VALUE_BYTES)),
                   expect_str(items[1], "proposal record.proposer", MAX_NAME_LEN),
                   expect_int(items[2], "proposal record.height"), expect_int(items[3], "proposal record.time_ms"),
                   status, _opt_int(items[5], "proposal record.decided_height"),
                   _opt_int(items[6], "proposal record.effective_height"),
                   expect_str(items[7], "proposal record.reason", 4 * MAX_REASON_LEN))

    def to_json(self, time_ms: int | None = None) -> dict[str, Any]:
        """For the API and the CLI (``time_ms``: the time to judge expiry at)."""
        p = self.proposal
        return {"id": p.id.hex(), "kind": p.kind, "change": _jsonable(p.change.body()), "note": p.note,
                "nonce": p.nonce, "proposer": self.proposer, "height": self.height, "time_ms": self.time_ms,
                "expires_ms": self.expires_ms,
                "status": self.status if time_ms is None else self.status_at(time_ms),
                "decided_height": self.decided_height, "effective_height": self.effective_height,
                "reason": self.reason}


def _opt_int(value: Any, where: str) -> int | None:
    return None if value is None else expect_int(value, where)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def read_pending(reader: GovReader) -> tuple[bytes, ...]:
    """Ids of the open proposals, oldest first (some may have expired since)."""
    return _parse_pending(reader.get(GOV_NAMESPACE, PENDING_KEY))


def _parse_pending(raw: bytes | None) -> tuple[bytes, ...]:
    if raw is None:
        return ()
    ids = expect_list(decode(raw, max_size=2 * MAX_VALUE_BYTES, what="pending"), "pending")
    return tuple(expect_bytes(i, "pending[]", HASH_LEN) for i in ids)


def read_proposal(reader: GovReader, proposal_id: bytes) -> ProposalRecord | None:
    raw = reader.get(GOV_NAMESPACE, proposal_key(proposal_id))
    return None if raw is None else ProposalRecord.decode(raw)


def read_votes(reader: GovReader, proposal_id: bytes, members: tuple[str, ...]) -> dict[str, Vote]:
    """The votes of ``members`` on a proposal (those who voted)."""
    votes = {}
    for m in members:
        raw = reader.get(GOV_NAMESPACE, vote_key(proposal_id, m))
        if raw is not None:
            votes[m] = Vote.decode(raw)
    return votes


def parse_request(op: Op, where: str) -> Proposal | Vote:
    """The proposal or vote a governance op carries, whatever the chain's state: a
    ValidationError names why it is not one (a key other than ``propose``/``vote``, no value,
    bytes that do not decode). Such an op is refused in every block, so a pool refuses it too."""
    if op.key not in (PROPOSE, VOTE) or op.value is None:
        raise ValidationError(f"{where}: {GOV_NAMESPACE} takes only '{PROPOSE}' and '{VOTE}' requests, "
                              f"not {op.key[:40]!r}")
    try:
        return Proposal.decode(op.value) if op.key == PROPOSE else Vote.decode(op.value)
    except DecodeError as exc:
        raise ValidationError(f"{where}: {op.key}: {exc}") from None


class GovernanceBlock:
    """Governance requests of one block, applied in order on top of the parent's state.

    Reads go through an overlay of this block's own governance writes; every write is appended
    to ``writes`` (the block's write list, shared with data ops so the order is the op order).
    """

    def __init__(self, reader: GovReader, state: ConsortiumState, cid: bytes, height: int, time_ms: int,
                 writes: list[Write]) -> None:
        self.reader = reader
        self.state = state
        self.cid = cid
        self.height = height
        self.time_ms = time_ms
        self.writes = writes
        self.overlay: dict[str, bytes | None] = {}

    # --- plumbing ------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        if key in self.overlay:
            return self.overlay[key]
        return self.reader.get(GOV_NAMESPACE, key)

    def _put(self, key: str, value: bytes) -> None:
        self.overlay[key] = value
        self.writes.append((GOV_NAMESPACE, key, value))

    def mark(self) -> tuple[dict[str, bytes | None], ConsortiumState]:
        """What :meth:`reset` needs to undo the requests of one transaction that turned out invalid."""
        return dict(self.overlay), self.state

    def reset(self, mark: tuple[dict[str, bytes | None], ConsortiumState]) -> None:
        self.overlay, self.state = dict(mark[0]), mark[1]

    # --- the block ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Before the block's transactions: if the member set changes at this height, the open
        proposals are tallied against the new set."""
        if self.height == 0 or self.state.members_at(self.height) == self.state.members_at(self.height - 1):
            return
        for pid in _parse_pending(self.get(PENDING_KEY)):
            record = self._record(pid)
            if record is not None and record.status_at(self.time_ms) == PENDING:
                self._tally(record)

    def apply(self, member: str, op: Op, where: str) -> None:
        """One request of ``member``'s transaction; raises a ValidationError naming the rule."""
        request = parse_request(op, where)
        try:
            if isinstance(request, Proposal):
                self._propose(member, request)
            else:
                self._vote(member, request)
        except DecodeError as exc:
            raise ValidationError(f"{where}: {op.key}: {exc}") from None
        except ValidationError as exc:
            raise type(exc)(f"{where}: {op.key}: {exc}") from None

    # --- requests ------------------------------------------------------------------------------

    def _record(self, pid: bytes) -> ProposalRecord | None:
        raw = self.get(proposal_key(pid))
        return None if raw is None else ProposalRecord.decode(raw)

    def _open(self) -> list[ProposalRecord]:
        records = (self._record(pid) for pid in _parse_pending(self.get(PENDING_KEY)))
        return [r for r in records if r is not None and r.status_at(self.time_ms) == PENDING]

    def _set_open(self, records: list[ProposalRecord]) -> None:
        self._put(PENDING_KEY, encode([r.proposal.id for r in records]))

    def _propose(self, member: str, proposal: Proposal) -> None:
        pid = proposal.id
        if self.get(proposal_key(pid)) is not None:
            raise ValidationError(f"proposal {pid.hex()[:16]} was already made (change the nonce to ask again)")
        apply_change(self.state.latest(), proposal.change, self.state.used_names, self.state.used_keys)
        still_open = self._open()
        mine = sum(1 for r in still_open if r.proposer == member)
        if mine >= MAX_PENDING_PER_MEMBER:
            raise ValidationError(f"{member} already has {mine} open proposals, the limit is "
                                  f"{MAX_PENDING_PER_MEMBER}; wait for them to be decided or expire")
        record = ProposalRecord(proposal, member, self.height, self.time_ms)
        self._put(proposal_key(pid), record.encode())
        self._set_open(still_open + [record])
        self._tally(record)  # the proposer's own "yes" may be the last one needed

    def _vote(self, _carrier: str, vote: Vote) -> None:
        pid = vote.proposal_id
        record = self._record(pid)
        if record is None:
            raise ValidationError(f"proposal {pid.hex()[:16]} is unknown on this chain")
        status = record.status_at(self.time_ms)
        if status == EXPIRED:
            raise ValidationError(f"proposal {pid.hex()[:16]} expired at {record.expires_ms} "
                                  f"(block time {self.time_ms})")
        if status != PENDING:
            raise ValidationError(f"proposal {pid.hex()[:16]} is already {status} "
                                  f"(at height {record.decided_height})")
        key = self.state.key_at(vote.member, self.height)
        if key is None:
            raise ValidationError(f"{vote.member} is not a member at height {self.height}")
        if vote.member in record.proposal.excluded_voters():
            raise ValidationError(f"{vote.member} does not vote on its own removal")
        if self.get(vote_key(pid, vote.member)) is not None:
            raise ValidationError(f"{vote.member} already voted on proposal {pid.hex()[:16]}")
        if not vote.valid(self.cid, key):
            raise SignatureError(f"{vote.member}'s vote on {pid.hex()[:16]} is not signed by its "
                                 f"member key at height {self.height}")
        self._put(vote_key(pid, vote.member), vote.encode())
        if vote.approve:
            self._tally(record)
        else:
            self._decide(record, REJECTED, f"{vote.member} voted against")

    # --- decisions -------------------------------------------------------------------------------

    def _tally(self, record: ProposalRecord) -> None:
        pid = record.proposal.id
        required = [m for m in self.state.members_at(self.height) if m not in record.proposal.excluded_voters()]
        if not required:
            return  # everyone in force is being removed: wait for the members being added
        for m in required:
            raw = self.get(vote_key(pid, m))
            if raw is None and m == record.proposer:
                continue  # proposing is approving
            if raw is None or not Vote.decode(raw).approve:
                return
        effective = self.height + GOVERNANCE_DELAY
        scheduled = ScheduledChange(effective, record.proposal)
        try:
            after = self.state.with_changes([scheduled])
        except ValidationError as exc:
            self._decide(record, FAILED, str(exc)[:MAX_REASON_LEN])
            return
        count, digest = parse_counter(self.get(CHANGES_KEY))
        if digest != self.state.digest or count != len(self.state.changes):
            raise LocalError("governance: the consortium state in use does not belong to the state being read")
        entry = scheduled.encode()
        self._put(change_key(count), entry)
        self._put(CHANGES_KEY, encode([count + 1, next_digest(digest, entry)]))
        self.state = after
        self._decide(record, PASSED, "", effective)

    def _decide(self, record: ProposalRecord, status: str, reason: str, effective: int | None = None) -> None:
        done = replace(record, status=status, decided_height=self.height, effective_height=effective, reason=reason)
        self._put(proposal_key(record.proposal.id), done.encode())
        self._set_open([r for r in self._open() if r.proposal.id != record.proposal.id])
