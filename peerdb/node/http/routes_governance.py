"""Governance through the client API (docs/api.md, "Governance"; docs/protocol.md §20).

``POST /v1/governance/propose`` turns a JSON description of a change into a proposal, checks it
against the consortium as every passed change leaves it (so a bad proposal is refused here, with
the rule it breaks, instead of failing in a block), and submits it in a transaction signed by the
node's client key. ``POST /v1/governance/vote`` signs a vote with the node's **member key** (a
vote is the firm's own word, protocol §20.3) and carries it in a client-key transaction. The
reads answer from the state at the best tip, which is the store's head.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ...core.consortium import Consortium, Member, NamespaceRule
from ...core.errors import ConfigError, DecodeError, ValidationError
from ...core.governance import (
    PENDING,
    ProposalRecord,
    propose_op,
    read_pending,
    read_proposal,
    read_votes,
    vote_op,
)
from ...core.model import GOV_NAMESPACE
from ...net.certs import check_member_certificate
from ...store import Store
from ...store.queries import SCAN_PAGE_MAX
from ...core.proposals import (
    ADD_MEMBER,
    KINDS,
    PARAM_NAMES,
    REMOVE_MEMBERS,
    ROTATE_KEY,
    SET_NAMESPACE,
    SET_PARAMS,
    UPDATE_MEMBER,
    AddMember,
    Change,
    Proposal,
    RemoveMembers,
    RotateKey,
    SetNamespace,
    SetParams,
    UpdateMember,
    Vote,
    apply_change,
)
from ..engine import Engine
from .context import ApiContext, json_body
from .errors import ApiError, json_endpoint
from .refs import proposal_ref

RECENT_PROPOSALS = 50
"""Decided proposals listed by ``GET /v1/governance`` (newest first): a consortium decides a
few questions a month; older ones stay readable by id."""
GOVERNANCE_NEEDS_KEY = "governance requests travel in transactions signed by the node's client key"
NEEDS_CONFIRMATION = "needs_confirmation"
"""The code of a request the node takes only with ``"confirm": true``: a yes to rotating this
member's own key to one its node does not hold; a proposal of, or a yes to, parameters with a
turn race (:attr:`peerdb.core.consortium.Params.turn_race_problem`)."""
TIMING_PARAMS = frozenset({"clock_skew_ms", "turn_timeout_ms"})


class BadProposal(ValidationError):
    """A proposal described wrongly in the request body (the message names the field)."""


def _field(data: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise BadProposal(f"{name}: required for a {data.get('kind')} proposal")
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadProposal(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _hex_key(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadProposal(f"{where}: expected a hex key")
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise BadProposal(f"{where}: not hex") from None
    if len(key) != 32:
        raise BadProposal(f"{where}: a key is 32 bytes (64 hex digits), got {len(key)}")
    return key


def _cert(data: dict[str, Any]) -> bytes | None:
    text = _field(data, "cert_b64", str, required=False)
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise BadProposal(f"cert_b64: not base64 ({exc})") from None


def _clients(data: dict[str, Any]) -> tuple[bytes, ...]:
    items = _field(data, "clients", list, required=False) or []
    return tuple(sorted({_hex_key(k, f"clients[{i}]") for i, k in enumerate(items)}))


def _names(data: dict[str, Any], name: str, required: bool = True) -> tuple[str, ...]:
    items = _field(data, name, list, required)
    if items is None:
        return ()
    if not all(isinstance(n, str) for n in items):
        raise BadProposal(f"{name}: expected a list of member names")
    return tuple(sorted(set(items)))


def check_certificate(change: Change, latest: Consortium) -> None:
    """A member's node proves its key over TLS with the certificate in the chain: an addition
    or rotation without one, or with one that does not carry the key, would leave that node
    unable to connect once the change takes effect. Refused before anyone votes."""
    if isinstance(change, AddMember):
        name, key, cert = change.member.name, change.member.key, change.member.cert
    elif isinstance(change, RotateKey):
        name, key, cert = change.name, change.key, change.cert
    elif isinstance(change, UpdateMember) and change.cert is not None:
        member = latest.member(change.name)
        if member is None:
            return  # the governance rules name the problem
        name, key, cert = change.name, member.key, change.cert
    else:
        return
    if cert is None:
        raise BadProposal(f"{change.kind}: cert_b64 is required: the member certificate made from the key "
                          f"(`peerdb keygen --name {name}` writes it), or {name}'s node cannot connect")
    try:
        check_member_certificate(cert, key, name, field="cert_b64")
    except ConfigError as exc:
        raise BadProposal(f"{change.kind}: {exc} (it must be {name}'s self-signed certificate for key "
                          f"{key.hex()[:16]}...)") from None


def change_from_json(data: dict[str, Any]) -> Change:
    """The change a request body describes (see docs/api.md for the fields of each kind)."""
    kind = data.get("kind")
    try:
        if kind == ADD_MEMBER:
            return AddMember(Member(_field(data, "name", str), _hex_key(data.get("key"), "key"),
                                    _field(data, "address", str), _clients(data), _cert(data),
                                    _field(data, "api", str, required=False)))
        if kind == REMOVE_MEMBERS:
            names = _names(data, "members")
            if not names:
                raise BadProposal("members: name at least one member to remove")
            return RemoveMembers(names)
        if kind == ROTATE_KEY:
            return RotateKey(_field(data, "name", str), _hex_key(data.get("key"), "key"), _cert(data))
        if kind == UPDATE_MEMBER:
            return UpdateMember(_field(data, "name", str), _field(data, "address", str), _clients(data),
                                _cert(data), _field(data, "api", str, required=False))
        if kind == SET_PARAMS:
            params = _field(data, "params", dict)
            if not params:
                raise BadProposal("params: give at least one parameter")
            for name, value in params.items():
                if name not in PARAM_NAMES:
                    raise BadProposal(f"params.{name}: not a parameter (one of {', '.join(PARAM_NAMES)})")
                if type(value) is not int or value < 0:
                    raise BadProposal(f"params.{name}: expected a non-negative integer, got {value!r}")
            return SetParams(tuple(sorted(params.items())))
        if kind == SET_NAMESPACE:
            private = data.get("private", False)
            if type(private) is not bool:
                raise BadProposal("private: expected true or false")
            return SetNamespace(NamespaceRule(_field(data, "namespace", str), _names(data, "writers"),
                                              _names(data, "readers", required=False), private))
    except ConfigError as exc:  # a Member or NamespaceRule refused its fields
        raise BadProposal(str(exc)) from None
    raise BadProposal(f"kind: {kind!r} is not one of {', '.join(KINDS)}")


class HeadReader:
    """A :class:`peerdb.core.membership.GovReader` of the governance state at the store's head
    (which is the best tip between engine calls): read it under ``service.read``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.store.get(namespace, key)[0]


def waiting_for(record: ProposalRecord, members: Sequence[str], votes: Mapping[str, Vote]) -> list[str]:
    """The members (of ``members``, in their order) whose vote a proposal still waits for:
    those it does not remove that have not voted, other than its proposer (proposing is
    approving)."""
    excluded = record.proposal.excluded_voters()
    return [m for m in members if m not in excluded and m not in votes and m != record.proposer]


def pending_proposals(engine: Engine, now_ms: int) -> list[dict[str, Any]]:
    """Open proposals at the head, each with the members whose vote it still waits for
    (``GET /v1/status``)."""
    reader = HeadReader(engine.store)
    members = engine.current.member_names
    out = []
    for pid in read_pending(reader):
        record = read_proposal(reader, pid)
        if record is None or record.status_at(now_ms) != PENDING:
            continue
        out.append({"id": pid.hex(), "kind": record.proposal.kind, "proposer": record.proposer,
                    "note": record.proposal.note, "expires_ms": record.expires_ms,
                    "waiting_for": waiting_for(record, members, read_votes(reader, pid, members))})
    return out


def routes(ctx: ApiContext) -> list[Route]:
    engine = ctx.engine
    service = ctx.service
    head = HeadReader(engine.store)

    async def submit(ops: list[Any], data: dict[str, Any]) -> dict[str, Any]:
        submitted = await ctx.submit_and_wait([ctx.sign(ops, GOVERNANCE_NEEDS_KEY).raw], data)
        if submitted.first_refusal is not None:
            raise submitted.first_refusal  # the pool's error object: its type gives the status
        return submitted.answer

    def check_new(proposal: Proposal) -> Consortium:
        """The early check of protocol §20.4 (propose, rule 3), plus a fresh id; the consortium
        after the change (against the changes passed so far)."""
        state = engine.gov
        try:
            after = apply_change(state.latest(), proposal.change, state.used_names, state.used_keys)
        except ValidationError as exc:
            raise BadProposal(str(exc)) from None
        if engine.store.get(GOV_NAMESPACE, f"proposal/{proposal.id.hex()}")[0] is not None:
            raise BadProposal(f"proposal {proposal.id.hex()[:16]} was already made; give another nonce")
        return after

    def after_passed(change: Any) -> Consortium | None:
        """The consortium after ``change`` against the changes passed so far (None: it cannot
        apply, which is refused elsewhere with its reason)."""
        state = engine.gov
        try:
            return apply_change(state.latest(), change, state.used_names, state.used_keys)
        except ValidationError:
            return None

    def confirm_race(change: Any, after: Consortium | None, data: dict[str, Any], doing: str) -> None:
        """A parameter change of the skew or the turn that leaves a turn race in force needs
        ``"confirm": true`` (node policy, not validity: see Params.turn_race_problem)."""
        if after is None or not isinstance(change, SetParams) or not TIMING_PARAMS & {n for n, _ in change.values}:
            return
        race = after.params.turn_race_problem
        if race is not None and data.get("confirm") is not True:
            raise ApiError(409, NEEDS_CONFIRMATION, f"{doing} would leave {race[0].lower()}{race[1:]}; send it again "
                           "with \"confirm\": true to go ahead anyway")

    async def propose(request: Request) -> Any:
        data = await json_body(request)
        note = data.get("note", "")
        if not isinstance(note, str):
            raise BadProposal("note: expected text")
        nonce = data.get("nonce", secrets.randbits(63))
        if type(nonce) is not int or nonce < 0:
            raise BadProposal("nonce: expected a non-negative integer")
        try:
            proposal = Proposal(change_from_json(data), note, nonce)
            Proposal.decode(proposal.raw)  # canonical (sorted, bounded) exactly as peers will check
        except DecodeError as exc:
            raise BadProposal(str(exc)) from None
        after = await service.read(check_new, proposal)
        change = proposal.change
        confirm_race(change, after, data, "this proposal")
        check_certificate(change, service.view.gov.latest())
        if isinstance(change, RotateKey) and change.name == engine.me and change.key not in engine.keyring:
            # Once in force, this node could sign nothing: refuse before the others vote.
            raise BadProposal(f"rotate_key: this node does not hold {engine.me}'s new key {change.key.hex()[:16]}; "
                              "add its key file to node.extra_key_files and restart the node, then propose")
        answer = await submit([propose_op(proposal)], data)
        return {"proposal": proposal.id.hex(), "kind": proposal.kind, **answer}

    def record_of(pid: bytes) -> ProposalRecord:
        record = read_proposal(head, pid)
        if record is None:
            raise ApiError(404, "not_found", f"no proposal {pid.hex()} on the best chain")
        return record

    async def vote(request: Request) -> Any:
        data = await json_body(request)
        pid = await service.read(proposal_ref, engine, str(data.get("proposal", "")))
        approve = data.get("approve")
        if type(approve) is not bool:
            raise BadProposal("approve: expected true (yes) or false (no)")
        record = await service.read(record_of, pid)
        status = record.status_at(ctx.now_ms())
        if status != PENDING:
            raise BadProposal(f"proposal {pid.hex()[:16]} is {status}; votes are only taken on pending proposals")
        if engine.me in record.proposal.excluded_voters():
            raise BadProposal(f"{engine.me} does not vote on its own removal")
        change = record.proposal.change
        if approve and isinstance(change, RotateKey) and change.name == engine.me \
                and change.key not in engine.keyring and data.get("confirm") is not True:
            raise ApiError(409, NEEDS_CONFIRMATION, (
                f"this vote would rotate {engine.me}'s member key to {change.key.hex()[:16]}..., which this node does "
                "not hold: once in force, this node could sign nothing. Add the new key's file to "
                "node.extra_key_files and restart the node first; vote again with \"confirm\": true to approve "
                "anyway"))
        if approve:
            confirm_race(change, await service.read(after_passed, change), data, "a yes to this proposal")
        key = await service.read(lambda: engine.key)  # the key in force depends on the chain: its lock
        ballot = Vote.create(key, engine.cid, pid, engine.me, approve)
        answer = await submit([vote_op(ballot)], data)
        return {"proposal": pid.hex(), "member": engine.me, "approve": approve, **answer}

    def listing() -> dict[str, Any]:
        now = ctx.now_ms()
        pending = [r for r in (read_proposal(head, pid) for pid in read_pending(head)) if r is not None]
        everything = [ProposalRecord.decode(v) for _k, v, _h in
                      engine.store.scan(GOV_NAMESPACE, "proposal/", limit=SCAN_PAGE_MAX)]
        decided = sorted((r for r in everything if r.status != PENDING), key=lambda r: (r.decided_height or 0),
                         reverse=True)[:RECENT_PROPOSALS]
        return {"height": engine.tree.best_tip.height,
                "pending": [r.to_json(now) for r in pending],
                "recent": [r.to_json(now) for r in decided]}

    async def list_all(request: Request) -> Any:
        return await service.read(listing)

    def detail(ref: str) -> dict[str, Any]:
        pid = proposal_ref(engine, ref)
        record = record_of(pid)
        votes = read_votes(head, pid, tuple(sorted(engine.gov.used_names)))
        return {**record.to_json(ctx.now_ms()),
                "votes": [{"member": v.member, "approve": v.approve} for v in votes.values()],
                "waiting_for": waiting_for(record, engine.current.member_names, votes)
                if record.status == PENDING else []}

    async def show(request: Request) -> Any:
        return await service.read(detail, request.path_params["pid"])

    return [Route("/v1/governance", json_endpoint(list_all)),
            Route("/v1/governance/propose", json_endpoint(propose), methods=["POST"]),
            Route("/v1/governance/vote", json_endpoint(vote), methods=["POST"]),
            Route("/v1/governance/{pid}", json_endpoint(show))]
