"""The consortium: who the members are, the parameters they agreed, and the namespace rules.

The consortium file (TOML, see ``configs/consortium.toml``) is the founding contract. Its
consensus-relevant part (name, genesis time, members' names and keys and client keys,
parameters, namespace rules) is hashed into the genesis block, whose hash is the consortium id:
two members with different files are in different consortia and refuse each other at hello.
Addresses and TLS certificates are operational and stay out of the hash, so a firm can move a
node without refounding the consortium.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .codec import encode, tagged_hash
from .errors import ConfigError
from .limits import (
    KEY_LEN,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    MAX_CLOCK_SKEW_MS,
    MAX_MEMBERS,
    MAX_NAME_LEN,
    MAX_NAMESPACE_LEN,
    MAX_TX_TTL_MS,
    PROTOCOL_VERSION,
)

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
"""Member, consortium and namespace names: lowercase identifiers, safe in logs, paths and URLs."""

EVERYONE = "*"


def check_name(value: Any, field_name: str, max_len: int = MAX_NAME_LEN) -> str:
    if type(value) is not str or not value:
        raise ConfigError(f"{field_name}: must be a non-empty string")
    if len(value) > max_len or not NAME_RE.match(value):
        raise ConfigError(
            f"{field_name}: {value!r} must be at most {max_len} characters of a-z, 0-9, '_', '.', '-'"
        )
    return value


def parse_key(value: Any, field_name: str) -> bytes:
    """A public key as 64 hex characters."""
    if type(value) is not str:
        raise ConfigError(f"{field_name}: must be a hex string of {KEY_LEN} bytes")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{field_name}: not valid hex") from None
    if len(raw) != KEY_LEN:
        raise ConfigError(f"{field_name}: must be {KEY_LEN} bytes ({2 * KEY_LEN} hex characters), got {len(raw)}")
    return raw


def parse_address(value: Any, field_name: str, *, any_port: bool = False) -> tuple[str, int]:
    """``host:port``; with ``any_port`` port 0 is allowed too ("any free port", for a socket
    this process binds itself, never for an address others dial)."""
    if type(value) is not str or value.count(":") != 1:
        raise ConfigError(f"{field_name}: must be 'host:port', got {value!r}")
    host, port_text = value.split(":")
    low = 0 if any_port else 1
    if not host or not port_text.isdigit() or not low <= int(port_text) < 65536:
        raise ConfigError(f"{field_name}: must be 'host:port' with a port in {low}..65535, got {value!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class Member:
    name: str
    key: bytes
    address: str = "127.0.0.1:0"
    clients: tuple[bytes, ...] = ()
    cert: bytes | None = field(default=None, repr=False, compare=False)
    """DER TLS certificate made from ``key`` (operational, not hashed into the id)."""
    api: str | None = field(default=None, compare=False)
    """Address of the member's client API, for convenience tools (operational)."""

    def __post_init__(self) -> None:
        check_name(self.name, "member name")
        if type(self.key) is not bytes or len(self.key) != KEY_LEN:
            raise ConfigError(f"member {self.name}: key must be {KEY_LEN} bytes")
        parse_address(self.address, f"member {self.name}: address")
        for client in self.clients:
            if type(client) is not bytes or len(client) != KEY_LEN:
                raise ConfigError(f"member {self.name}: client keys must be {KEY_LEN} bytes")

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_address(self.address, f"member {self.name}: address")

    def id_fields(self) -> list[Any]:
        return [self.name, self.key, sorted(self.clients)]


@dataclass(frozen=True)
class Params:
    """Parameters the members agreed; all durations in milliseconds."""

    heartbeat_ms: int = 1000
    """A proposer with nothing to propose still proposes an empty block this long after its
    turn began, so that silence (a crashed member) is visible within a bounded time."""
    turn_timeout_ms: int = 3000
    """If no proposal arrives this long after a round began, the turn passes to the next member."""
    max_block_txs: int = 5000
    max_block_bytes: int = 8 * 1024 * 1024
    clock_skew_ms: int = 5000
    """Tolerated clock difference between members: a block dated further in the future is refused."""
    tx_ttl_ms: int = 3600 * 1000
    """Longest allowed distance between a transaction's expiry and the block including it."""
    anchor_interval_s: int = 60
    """Anchor at most once per this many seconds (one Bitcoin transaction per interval)."""
    anchor_interval_blocks: int = 0
    """If > 0, also anchor as soon as this many blocks are waiting."""
    anchor_confirmations: int = 1
    """Bitcoin confirmations before an anchor counts for the unanimous view."""

    def __post_init__(self) -> None:
        bounds = {
            "heartbeat_ms": (1, 3_600_000),
            "turn_timeout_ms": (1, 3_600_000),
            "max_block_txs": (1, MAX_BLOCK_TXS),
            "max_block_bytes": (1024, MAX_BLOCK_BYTES),
            "clock_skew_ms": (0, MAX_CLOCK_SKEW_MS),
            "tx_ttl_ms": (1000, MAX_TX_TTL_MS),
            "anchor_interval_s": (1, 7 * 24 * 3600),
            "anchor_interval_blocks": (0, 1_000_000),
            "anchor_confirmations": (1, 1000),
        }
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if type(value) is not int or not lo <= value <= hi:
                raise ConfigError(f"params.{name}: must be an integer in [{lo}, {hi}], got {value!r}")
        if self.heartbeat_ms >= self.turn_timeout_ms:
            raise ConfigError("params.heartbeat_ms: must be smaller than turn_timeout_ms, or every turn would time out")

    def id_fields(self) -> list[Any]:
        return [[f.name, getattr(self, f.name)] for f in fields(self)]

    @property
    def turn_race_problem(self) -> str | None:
        """Why these parameters let a member take the turns of those before it, or None.

        A round-``r`` block is valid once ``now >= parent time + r * turn - 2 * skew``
        (protocol.md §8.3), so round ``r - 1`` has ``turn - 2 * skew`` of its round to itself.
        Unless that is at least half the round (``4 * clock_skew_ms <= turn_timeout_ms``), the
        member of the next round may propose while the round's own proposer is still within one
        network round trip or one pipelined block of proposing, and whichever block the others
        see first is the one they sign: a member that always races takes turns that are not its
        own, and nothing convicts it (nobody signed twice). Not a validity rule (existing
        consortia keep their id and their chain): the founding commands write parameters without
        the problem, and a node whose consortium has it says so (the ``turn_race`` alert)."""
        if 4 * self.clock_skew_ms <= self.turn_timeout_ms:
            return None
        safe = safe_clock_skew_ms(self.turn_timeout_ms)
        return (f"params.clock_skew_ms ({self.clock_skew_ms}) is more than a quarter of turn_timeout_ms "
                f"({self.turn_timeout_ms}): the next round's member may propose within the first half of a round "
                "and so take the turns of the members before it (protocol.md §8.3); vote to set "
                f"clock_skew_ms={safe} (`peerdb governance propose params --set clock_skew_ms={safe}`) or a larger "
                "turn_timeout_ms")


FOUNDING_CLOCK_SKEW_MS = 750
"""The largest clock skew a new consortium file gets when its founders do not choose one: NTP
keeps servers within milliseconds, and 750 ms is a quarter of the default turn. (:class:`Params`'
own default stays 5000 so that files without the field keep their consortium id.)"""


def safe_clock_skew_ms(turn_timeout_ms: int) -> int:
    """The largest skew up to :data:`FOUNDING_CLOCK_SKEW_MS` without a turn race at this turn."""
    return max(0, min(FOUNDING_CLOCK_SKEW_MS, turn_timeout_ms // 4))


def founding_params(params: Mapping[str, int] | None) -> Params:
    """The parameters of a new consortium: the founders' choices, and where they did not choose
    a clock skew, one without a turn race (:attr:`Params.turn_race_problem`)."""
    chosen = dict(params or {})
    if "clock_skew_ms" not in chosen:
        turn = chosen.get("turn_timeout_ms", Params.turn_timeout_ms)
        if type(turn) is int:  # anything else is refused, with its name, by Params itself
            chosen["clock_skew_ms"] = safe_clock_skew_ms(turn)
    return Params(**chosen)


@dataclass(frozen=True)
class NamespaceRule:
    """Who may write and who may read one namespace ("*" = every member)."""

    name: str
    writers: tuple[str, ...] = (EVERYONE,)
    readers: tuple[str, ...] = (EVERYONE,)
    private: bool = False
    """Values are encrypted for the readers (:mod:`peerdb.core.privacy`): in the consortium file
    (``private = true``) or by a ``set_namespace`` vote. Part of the consortium id only when
    true, so the ids of files without private namespaces are what they always were."""

    def __post_init__(self) -> None:
        check_name(self.name, "namespace name", MAX_NAMESPACE_LEN)

    def may_write(self, member: str) -> bool:
        return EVERYONE in self.writers or member in self.writers

    def may_read(self, member: str) -> bool:
        return EVERYONE in self.readers or member in self.readers

    def id_fields(self) -> list[Any]:
        fields_ = [self.name, sorted(self.writers), sorted(self.readers)]
        return [*fields_, True] if self.private else fields_


OPEN_RULE_WRITERS = (EVERYONE,)


@dataclass(frozen=True)
class Consortium:
    name: str
    genesis_time_ms: int
    members: tuple[Member, ...]
    params: Params = Params()
    namespaces: tuple[NamespaceRule, ...] = ()
    open_namespaces: bool = True
    """Whether a namespace with no rule is open to every member (True) or closed to all (False)."""
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_name(self.name, "consortium name")
        if type(self.protocol) is not int or self.protocol != PROTOCOL_VERSION:
            older = type(self.protocol) is int and self.protocol < PROTOCOL_VERSION
            hint = (": a consortium founded on an older protocol cannot be continued by this build; keep using the "
                    "peerdb version that founded it, or found a new consortium (docs/protocol.md §21)") if older else ""
            raise ConfigError(f"consortium.protocol: this build speaks protocol {PROTOCOL_VERSION}, file says "
                              f"{self.protocol}{hint}")
        if type(self.genesis_time_ms) is not int or self.genesis_time_ms < 0:
            raise ConfigError("consortium.genesis_time_ms: must be a non-negative integer (ms since the epoch)")
        if not 1 <= len(self.members) <= MAX_MEMBERS:
            raise ConfigError(f"members: need 1..{MAX_MEMBERS} members, got {len(self.members)}")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ConfigError(f"members: duplicate member name in {names}")
        keys = [m.key for m in self.members] + [c for m in self.members for c in m.clients]
        if len(set(keys)) != len(keys):
            raise ConfigError("members: a key appears twice (member and client keys must all differ)")
        ns_names = [r.name for r in self.namespaces]
        if len(set(ns_names)) != len(ns_names):
            raise ConfigError(f"namespaces: duplicate namespace in {ns_names}")
        for rule in self.namespaces:
            for who in rule.writers + rule.readers:
                if who != EVERYONE and who not in names:
                    raise ConfigError(f"namespace {rule.name}: unknown member {who!r}")
        client_map: dict[bytes, str] = {}
        for m in self.members:
            client_map[m.key] = m.name
            for c in m.clients:
                client_map[c] = m.name
        object.__setattr__(self, "_clients", client_map)
        object.__setattr__(self, "_by_name", {m.name: m for m in self.members})
        object.__setattr__(self, "_rules", {r.name: r for r in self.namespaces})
        definition = encode([
            self.protocol, self.name, self.genesis_time_ms,
            [m.id_fields() for m in self.members], self.params.id_fields(),
            [r.id_fields() for r in sorted(self.namespaces, key=lambda r: r.name)], self.open_namespaces,
        ])
        object.__setattr__(self, "definition_hash", tagged_hash("consortium", definition))

    definition_hash: bytes = field(init=False, repr=False, compare=False)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def member(self, name: str) -> Member | None:
        by_name: dict[str, Member] = self._by_name  # type: ignore[attr-defined]
        return by_name.get(name)

    def member_of_client(self, client_key: bytes) -> str | None:
        clients: dict[bytes, str] = self._clients  # type: ignore[attr-defined]
        return clients.get(client_key)

    def rule(self, namespace: str) -> NamespaceRule | None:
        rules: dict[str, NamespaceRule] = self._rules  # type: ignore[attr-defined]
        rule = rules.get(namespace)
        if rule is None and not self.open_namespaces:
            return NamespaceRule(namespace, writers=(), readers=())
        return rule

    def may_write(self, member: str, namespace: str) -> bool:
        rule = self.rule(namespace)
        return True if rule is None else rule.may_write(member)

    def may_read(self, member: str, namespace: str) -> bool:
        rule = self.rule(namespace)
        return True if rule is None else rule.may_read(member)


# --- the consortium file -----------------------------------------------------------------------

def parse_consortium_toml(text: str, source: str) -> Consortium:
    """Check a consortium file's text (TOML); every problem is a ConfigError naming ``source``
    (the file, for a reader) and the field. Reading the file is the caller's business
    (:func:`peerdb.consortium_file.load_consortium`): the core touches no file system."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    try:
        return parse_consortium(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _table(data: Mapping[str, Any], key: str, required: bool = True) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}]: missing or not a table")
    return value


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(table) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {sorted(extra)} (allowed: {sorted(allowed)})")


MEMBER_FIELDS = ("name", "key", "address", "clients", "cert", "api")
"""The fields of a ``[[members]]`` table (and of a member card's ``[member]`` table)."""


def parse_member(entry: Any, where: str) -> Member:
    """One ``[[members]]`` table; errors name ``where`` until the name is known, then the member."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table")
    _unknown(entry, set(MEMBER_FIELDS), where)
    name = check_name(entry.get("name"), f"{where}.name")
    where = f"member {name}"
    key = parse_key(entry.get("key"), f"{where}.key")
    address = entry.get("address")
    parse_address(address, f"{where}.address")
    address = str(address)  # parse_address checked it is a str
    clients_raw = entry.get("clients", [])
    if not isinstance(clients_raw, list):
        raise ConfigError(f"{where}.clients: must be a list of hex keys")
    clients = tuple(parse_key(c, f"{where}.clients[{j}]") for j, c in enumerate(clients_raw))
    cert = None
    if "cert" in entry:
        try:
            cert = base64.b64decode(entry["cert"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ConfigError(f"{where}.cert: not valid base64") from None
    api = entry.get("api")
    if api is not None:
        parse_address(api, f"{where}.api")
    return Member(name, key, address, clients, cert, api)


def member_to_toml_data(m: Member) -> dict[str, Any]:
    """The inverse of :func:`parse_member`."""
    entry: dict[str, Any] = {"name": m.name, "key": m.key.hex(), "address": m.address,
                             "clients": [k.hex() for k in m.clients]}
    if m.api:
        entry["api"] = m.api
    if m.cert is not None:
        entry["cert"] = base64.b64encode(m.cert).decode("ascii")
    return entry


def parse_consortium(data: Mapping[str, Any]) -> Consortium:
    _unknown(data, {"consortium", "params", "members", "namespaces"}, "top level")
    head = _table(data, "consortium")
    _unknown(head, {"name", "protocol", "genesis_time_ms", "open_namespaces"}, "[consortium]")
    if "genesis_time_ms" not in head:
        raise ConfigError("consortium.genesis_time_ms: missing")
    params_table = _table(data, "params", required=False)
    known = {f.name for f in fields(Params)}
    _unknown(params_table, known, "[params]")
    params = Params(**dict(params_table))
    members_list = data.get("members")
    if not isinstance(members_list, list) or not members_list:
        raise ConfigError("[[members]]: at least one member is required")
    members = [parse_member(entry, f"members[{i}]") for i, entry in enumerate(members_list)]
    rules = []
    ns_list = data.get("namespaces", [])
    if not isinstance(ns_list, list):
        raise ConfigError("[[namespaces]]: must be an array of tables")
    for i, entry in enumerate(ns_list):
        where = f"namespaces[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a table")
        _unknown(entry, {"name", "writers", "readers", "private"}, where)
        name = check_name(entry.get("name"), f"{where}.name", MAX_NAMESPACE_LEN)
        lists = {}
        for role in ("writers", "readers"):
            value = entry.get(role, [EVERYONE])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"namespace {name}.{role}: must be a list of member names or \"*\"")
            lists[role] = tuple(value)
        private = entry.get("private", False)
        if type(private) is not bool:
            raise ConfigError(f"namespace {name}.private: must be true or false")
        rules.append(NamespaceRule(name, lists["writers"], lists["readers"], private))
    open_ns = head.get("open_namespaces", True)
    if type(open_ns) is not bool:
        raise ConfigError("consortium.open_namespaces: must be true or false")
    protocol = head.get("protocol", PROTOCOL_VERSION)
    return Consortium(
        name=check_name(head.get("name"), "consortium.name"),
        genesis_time_ms=head["genesis_time_ms"],
        members=tuple(members),
        params=params,
        namespaces=tuple(rules),
        open_namespaces=open_ns,
        protocol=protocol,
    )


def consortium_to_toml_data(c: Consortium) -> dict[str, Any]:
    """The inverse of :func:`parse_consortium`, for writing files (tomli_w) and bundles."""
    members = [member_to_toml_data(m) for m in c.members]
    data: dict[str, Any] = {
        "consortium": {"name": c.name, "protocol": c.protocol, "genesis_time_ms": c.genesis_time_ms,
                       "open_namespaces": c.open_namespaces},
        "params": {f.name: getattr(c.params, f.name) for f in fields(Params)},
        "members": members,
    }
    if c.namespaces:
        data["namespaces"] = [{"name": r.name, "writers": list(r.writers), "readers": list(r.readers),
                               **({"private": True} if r.private else {})} for r in c.namespaces]
    return data
