"""Governance proposals and votes: what members may change, and how a change applies.

A proposal names one change to the consortium (add, remove or update members, rotate a member
key, change parameters, set a namespace rule) with a note for the people voting and a nonce.
Its id is the tagged hash of its canonical bytes, so a vote signs exactly one proposal. A vote
is signed by a **member key** (domain ``vote``), never by a client key: a firm's applications
can carry votes, but only the firm's own identity can cast them.

:func:`apply_change` is the one place a change meets a consortium. It returns the consortium in
force after the change, or raises a :class:`ValidationError` naming the rule broken (unknown
member, removing every member, a key or name used before, parameters out of bounds), and it is
used both when a proposal is made (for an early, clear error) and when it passes (against the
consortium as every earlier passed change leaves it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .codec import decode, encode, expect_bytes, expect_int, expect_list, expect_str, tagged_hash
from .consortium import EVERYONE, NAME_RE, Consortium, Member, NamespaceRule, Params
from .errors import ConfigError, DecodeError, ValidationError
from .keys import SigningKey, verify
from .limits import HASH_LEN, KEY_LEN, MAX_MEMBERS, MAX_NAME_LEN, MAX_NAMESPACE_LEN, MAX_REASON_LEN, MAX_VALUE_BYTES, SIG_LEN
from .model import DOMAIN_VOTE

MAX_NOTE_LEN = MAX_REASON_LEN
"""Characters of a proposal's note: a sentence or two for the people asked to vote."""
MAX_VOTE_BYTES = 1024
"""An encoded vote: a proposal id, a member name, a yes/no and a signature (under 200 bytes)."""
MAX_CERT_BYTES = 4096
"""A member certificate in a proposal (same bound as ``peerdb.net.certs.MAX_CERT_BYTES``; the
core may not import the network layer)."""
MAX_ADDRESS_LEN = 300
"""Characters of a ``host:port`` address: a DNS name is at most 253 characters."""

ADD_MEMBER = "add_member"
REMOVE_MEMBERS = "remove_members"
ROTATE_KEY = "rotate_key"
UPDATE_MEMBER = "update_member"
SET_PARAMS = "set_params"
SET_NAMESPACE = "set_namespace"
KINDS = (ADD_MEMBER, REMOVE_MEMBERS, ROTATE_KEY, UPDATE_MEMBER, SET_PARAMS, SET_NAMESPACE)

PARAM_NAMES = tuple(f.name for f in fields(Params))


def _name(value: Any, where: str, max_len: int = MAX_NAME_LEN) -> str:
    text = expect_str(value, where, max_len)
    if not NAME_RE.match(text):
        raise DecodeError(f"{where}: {text!r} is not a valid name (a-z, 0-9, '_', '.', '-')")
    return text


def _opt_bytes(value: Any, where: str, max_len: int) -> bytes | None:
    return None if value is None else expect_bytes(value, where, max_len=max_len)


def _opt_str(value: Any, where: str, max_len: int) -> str | None:
    return None if value is None else expect_str(value, where, max_len)


def _keys(value: Any, where: str) -> tuple[bytes, ...]:
    keys = tuple(expect_bytes(k, f"{where}[{i}]", KEY_LEN) for i, k in enumerate(expect_list(value, where)))
    if list(keys) != sorted(set(keys)):
        raise DecodeError(f"{where}: keys must be distinct and sorted bytewise")
    return keys


def _names(value: Any, where: str, allow_everyone: bool = False) -> tuple[str, ...]:
    items = expect_list(value, where)
    names = tuple(v if allow_everyone and v == EVERYONE else _name(v, f"{where}[{i}]") for i, v in enumerate(items))
    if list(names) != sorted(set(names)):
        raise DecodeError(f"{where}: names must be distinct and sorted")
    return names


def _invalid(where: str, exc: ConfigError) -> ValidationError:
    """A consortium rule broken by remote input is the proposer's fault, not ours."""
    return ValidationError(f"{where}: {exc}")


# --- the changes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AddMember:
    """A new member, appended to the end of the turn order."""

    member: Member
    kind = ADD_MEMBER

    def body(self) -> list[Any]:
        m = self.member
        return [m.name, m.key, m.address, sorted(m.clients), m.cert, m.api]

    @classmethod
    def from_body(cls, body: Any) -> "AddMember":
        items = expect_list(body, "proposal.add_member", 6)
        name = _name(items[0], "proposal.add_member.name")
        try:
            member = Member(name, expect_bytes(items[1], "proposal.add_member.key", KEY_LEN),
                            expect_str(items[2], "proposal.add_member.address", MAX_ADDRESS_LEN),
                            _keys(items[3], "proposal.add_member.clients"),
                            _opt_bytes(items[4], "proposal.add_member.cert", MAX_CERT_BYTES),
                            _opt_str(items[5], "proposal.add_member.api", MAX_ADDRESS_LEN))
        except ConfigError as exc:
            raise DecodeError(f"proposal.add_member: {exc}") from None
        return cls(member)


@dataclass(frozen=True)
class RemoveMembers:
    """Members leaving together. Several at once, so that two members who block each other's
    removal (each needs the other's vote) can still be removed by everyone else."""

    names: tuple[str, ...]
    kind = REMOVE_MEMBERS

    def body(self) -> list[Any]:
        return list(self.names)

    @classmethod
    def from_body(cls, body: Any) -> "RemoveMembers":
        names = _names(body, "proposal.remove_members")
        if not 1 <= len(names) <= MAX_MEMBERS:
            raise DecodeError(f"proposal.remove_members: need 1..{MAX_MEMBERS} names, got {len(names)}")
        return cls(names)


@dataclass(frozen=True)
class RotateKey:
    """A new member key (and the certificate made from it). The old key keeps verifying the
    member's signatures at heights before the change takes effect, and nothing after."""

    name: str
    key: bytes
    cert: bytes | None = None
    kind = ROTATE_KEY

    def body(self) -> list[Any]:
        return [self.name, self.key, self.cert]

    @classmethod
    def from_body(cls, body: Any) -> "RotateKey":
        items = expect_list(body, "proposal.rotate_key", 3)
        return cls(_name(items[0], "proposal.rotate_key.name"), expect_bytes(items[1], "proposal.rotate_key.key", KEY_LEN),
                   _opt_bytes(items[2], "proposal.rotate_key.cert", MAX_CERT_BYTES))


@dataclass(frozen=True)
class UpdateMember:
    """Operational details of a member: address, client keys, certificate, API address."""

    name: str
    address: str
    clients: tuple[bytes, ...] = ()
    cert: bytes | None = None
    api: str | None = None
    kind = UPDATE_MEMBER

    def body(self) -> list[Any]:
        return [self.name, self.address, sorted(self.clients), self.cert, self.api]

    @classmethod
    def from_body(cls, body: Any) -> "UpdateMember":
        items = expect_list(body, "proposal.update_member", 5)
        return cls(_name(items[0], "proposal.update_member.name"),
                   expect_str(items[1], "proposal.update_member.address", MAX_ADDRESS_LEN),
                   _keys(items[2], "proposal.update_member.clients"),
                   _opt_bytes(items[3], "proposal.update_member.cert", MAX_CERT_BYTES),
                   _opt_str(items[4], "proposal.update_member.api", MAX_ADDRESS_LEN))


@dataclass(frozen=True)
class SetParams:
    """New values for some parameters (the others keep theirs)."""

    values: tuple[tuple[str, int], ...]
    kind = SET_PARAMS

    def body(self) -> list[Any]:
        return [[name, value] for name, value in self.values]

    @classmethod
    def from_body(cls, body: Any) -> "SetParams":
        items = expect_list(body, "proposal.set_params")
        if not 1 <= len(items) <= len(PARAM_NAMES):
            raise DecodeError(f"proposal.set_params: need 1..{len(PARAM_NAMES)} parameters, got {len(items)}")
        values = []
        for i, item in enumerate(items):
            pair = expect_list(item, f"proposal.set_params[{i}]", 2)
            name = expect_str(pair[0], f"proposal.set_params[{i}].name", MAX_NAME_LEN)
            if name not in PARAM_NAMES:
                raise DecodeError(f"proposal.set_params[{i}].name: {name!r} is not a parameter "
                                  f"(one of {', '.join(PARAM_NAMES)})")
            values.append((name, expect_int(pair[1], f"proposal.set_params.{name}")))
        names = [n for n, _ in values]
        if names != sorted(set(names)):
            raise DecodeError("proposal.set_params: parameter names must be distinct and sorted")
        return cls(tuple(values))


@dataclass(frozen=True)
class SetNamespace:
    """Create or replace the rule of one namespace."""

    rule: NamespaceRule
    kind = SET_NAMESPACE

    def body(self) -> list[Any]:
        r = self.rule
        return [r.name, sorted(r.writers), sorted(r.readers), r.private]

    @classmethod
    def from_body(cls, body: Any) -> "SetNamespace":
        items = expect_list(body, "proposal.set_namespace", 4)
        name = _name(items[0], "proposal.set_namespace.name", MAX_NAMESPACE_LEN)
        private = items[3]
        if type(private) is not bool:
            raise DecodeError("proposal.set_namespace.private: expected true or false")
        return cls(NamespaceRule(name, _names(items[1], "proposal.set_namespace.writers", True),
                                 _names(items[2], "proposal.set_namespace.readers", True), private))


Change = AddMember | RemoveMembers | RotateKey | UpdateMember | SetParams | SetNamespace
_DECODERS: dict[str, Any] = {c.kind: c.from_body for c in (AddMember, RemoveMembers, RotateKey, UpdateMember,
                                                             SetParams, SetNamespace)}


# --- proposals and votes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Proposal:
    """``[kind, body, note, nonce]``; its id is ``H("proposal", bytes)``. The nonce lets a
    proposal that expired or was rejected be made again with a new id."""

    change: Change
    note: str = ""
    nonce: int = 0
    raw: bytes = field(init=False, repr=False, compare=False)
    id: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.note) > MAX_NOTE_LEN:
            raise DecodeError(f"proposal.note: longer than {MAX_NOTE_LEN} characters")
        expect_int(self.nonce, "proposal.nonce")
        raw = encode([self.change.kind, self.change.body(), self.note, self.nonce])
        if len(raw) > MAX_VALUE_BYTES:
            raise DecodeError(f"proposal: {len(raw)} bytes exceeds the limit of {MAX_VALUE_BYTES}")
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "id", tagged_hash("proposal", raw))

    @property
    def kind(self) -> str:
        return self.change.kind

    def excluded_voters(self) -> frozenset[str]:
        """Members whose vote is not asked: those the proposal removes."""
        return frozenset(self.change.names) if isinstance(self.change, RemoveMembers) else frozenset()

    @classmethod
    def decode(cls, data: bytes) -> "Proposal":
        items = expect_list(decode(data, max_size=MAX_VALUE_BYTES, what="proposal"), "proposal", 4)
        kind = expect_str(items[0], "proposal.kind", MAX_NAME_LEN)
        decoder = _DECODERS.get(kind)
        if decoder is None:
            raise DecodeError(f"proposal.kind: {kind!r} is not one of {', '.join(KINDS)}")
        note = expect_str(items[2], "proposal.note", 4 * MAX_NOTE_LEN)
        proposal = cls(decoder(items[1]), note, expect_int(items[3], "proposal.nonce"))
        if proposal.raw != data:
            raise DecodeError("proposal: body is not in canonical form (keys, names or parameters out of order)")
        return proposal


def vote_hash(proposal_id: bytes, member: str, approve: bool) -> bytes:
    return tagged_hash("vote", encode([proposal_id, member, approve]))


@dataclass(frozen=True)
class Vote:
    """``[proposal_id, member, approve, sig]``, signed by the member key in force at the height
    of the block that includes it, over ``H("vote", cbor([proposal_id, member, approve]))``."""

    proposal_id: bytes
    member: str
    approve: bool
    signature: bytes

    def __post_init__(self) -> None:
        expect_bytes(self.proposal_id, "vote.proposal", HASH_LEN)
        _name(self.member, "vote.member")
        if type(self.approve) is not bool:
            raise DecodeError("vote.approve: expected true or false")
        expect_bytes(self.signature, "vote.sig", SIG_LEN)

    @classmethod
    def create(cls, key: SigningKey, cid: bytes, proposal_id: bytes, member: str, approve: bool) -> "Vote":
        return cls(proposal_id, member, approve,
                   key.sign(DOMAIN_VOTE, cid, vote_hash(proposal_id, member, approve)))

    def valid(self, cid: bytes, member_key: bytes) -> bool:
        return verify(member_key, self.signature, DOMAIN_VOTE, cid,
                      vote_hash(self.proposal_id, self.member, self.approve))

    def encode(self) -> bytes:
        return encode([self.proposal_id, self.member, self.approve, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> "Vote":
        items = expect_list(decode(data, max_size=MAX_VOTE_BYTES, what="vote"), "vote", 4)
        return cls(items[0], items[1], items[2], items[3])


# --- applying a change -----------------------------------------------------------------------------

def _fresh_keys(keys: Iterable[bytes], used_keys: frozenset[bytes], where: str) -> None:
    seen: set[bytes] = set()
    for key in keys:
        if key in used_keys or key in seen:
            raise ValidationError(f"{where}: key {key.hex()[:16]} is or was already used by a member or client; "
                                  "every key must be new")
        seen.add(key)


def _rebuild(c: Consortium, where: str, **changes: Any) -> Consortium:
    try:
        return replace(c, **changes)
    except ConfigError as exc:
        raise _invalid(where, exc) from None


def apply_change(c: Consortium, change: Change, used_names: frozenset[str] = frozenset(),
                 used_keys: frozenset[bytes] = frozenset()) -> Consortium:
    """The consortium after ``change``. ``used_names`` and ``used_keys`` are every member name and
    every member or client key the consortium ever had: none may be reused, so a name or key in
    an old signature, vote or evidence object always means the one member it meant then."""
    used_names = used_names | set(c.member_names)
    used_keys = used_keys | {m.key for m in c.members} | {k for m in c.members for k in m.clients}
    where = f"proposal.{change.kind}"
    if isinstance(change, AddMember):
        m = change.member
        if m.name in used_names:
            raise ValidationError(f"{where}: {m.name!r} is or was already a member; choose another name")
        if len(c.members) >= MAX_MEMBERS:
            raise ValidationError(f"{where}: the consortium already has {MAX_MEMBERS} members, the maximum")
        _fresh_keys((m.key, *m.clients), used_keys, where)
        return _rebuild(c, where, members=c.members + (m,))
    if isinstance(change, RemoveMembers):
        unknown = [n for n in change.names if c.member(n) is None]
        if unknown:
            raise ValidationError(f"{where}: {', '.join(unknown)} is not a member")
        if len(change.names) >= len(c.members):
            raise ValidationError(f"{where}: would remove every member; a consortium keeps at least one")
        gone = set(change.names)
        rules = tuple(replace(r, writers=tuple(w for w in r.writers if w not in gone),
                              readers=tuple(w for w in r.readers if w not in gone)) for r in c.namespaces)
        return _rebuild(c, where, members=tuple(m for m in c.members if m.name not in gone), namespaces=rules)
    if isinstance(change, (RotateKey, UpdateMember)):
        old = c.member(change.name)
        if old is None:
            raise ValidationError(f"{where}: {change.name!r} is not a member")
        if isinstance(change, RotateKey):
            _fresh_keys((change.key,), used_keys, where)
            new = replace(old, key=change.key, cert=change.cert)
        else:
            _fresh_keys((k for k in change.clients if k not in old.clients), used_keys, where)
            try:
                # No certificate in the update: the member keeps the one it has (its node must
                # stay reachable over TLS); a rotation always brings the new key's certificate.
                new = Member(old.name, old.key, change.address, change.clients,
                             old.cert if change.cert is None else change.cert, change.api)
            except ConfigError as exc:
                raise _invalid(where, exc) from None
        return _rebuild(c, where, members=tuple(new if m.name == old.name else m for m in c.members))
    if isinstance(change, SetParams):
        try:
            params = replace(c.params, **dict(change.values))
        except ConfigError as exc:
            raise _invalid(where, exc) from None
        return _rebuild(c, where, params=params)
    rule = change.rule
    unknown = [n for n in rule.writers + rule.readers if n != EVERYONE and c.member(n) is None]
    if unknown:
        raise ValidationError(f"{where}: {', '.join(sorted(set(unknown)))} is not a member")
    rules = tuple(r for r in c.namespaces if r.name != rule.name) + (rule,)
    return _rebuild(c, where, namespaces=tuple(sorted(rules, key=lambda r: r.name)))
