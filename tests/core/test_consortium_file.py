"""The consortium file: every bad field is a ConfigError naming the file, the field and the reason."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from peerdb.consortium_file import load_consortium
from peerdb.core.consortium import (
    Consortium,
    Member,
    NamespaceRule,
    Params,
    consortium_to_toml_data,
    parse_consortium,
    parse_consortium_toml,
)
from peerdb.core.errors import ConfigError
from peerdb.core.limits import MAX_MEMBERS
from peerdb.core.model import consortium_id

from tests.helpers.core import CONSORTIUM, GENESIS_MS, MEMBER_NAMES, assert_names, client_key, make_consortium, member_key, seed_key


def valid_data() -> dict[str, Any]:
    """The TOML data of tests.helpers.core.CONSORTIUM."""
    return {
        "consortium": {"name": "test-consortium", "genesis_time_ms": GENESIS_MS},
        "params": {"heartbeat_ms": 1000, "turn_timeout_ms": 3000},
        "members": [
            {"name": n, "key": member_key(n).public.hex(), "address": f"127.0.0.1:{7000 + i}",
             "clients": [client_key(n).public.hex()]}
            for i, n in enumerate(MEMBER_NAMES)
        ],
        "namespaces": [
            {"name": "books", "writers": ["firm-a", "firm-b"], "readers": ["*"]},
            {"name": "private", "writers": ["firm-a"], "readers": ["firm-a"]},
        ],
    }


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "consortium.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def test_valid_file_loads_to_the_expected_consortium(tmp_path: Path) -> None:
    c = load_consortium(write(tmp_path, valid_data()))
    assert c.name == "test-consortium"
    assert c.member_names == MEMBER_NAMES
    assert c.members[1].key == member_key("firm-b").public
    assert c.members[1].host_port == ("127.0.0.1", 7001)
    assert c.params == Params()
    assert c.definition_hash == CONSORTIUM.definition_hash
    assert consortium_id(c) == consortium_id(CONSORTIUM)


Mutator = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutator:
    """Set a dotted path; integer parts index lists."""
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return mutate


def _del(path: str) -> Mutator:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[last]
    return mutate


def _copy_field(src: str, dst: str) -> Mutator:
    def mutate(data: dict[str, Any]) -> None:
        a_member, a_field = src.split(".")
        b_member, b_field = dst.split(".")
        value = data["members"][int(a_member)][a_field]
        data["members"][int(b_member)][b_field] = copy.deepcopy(value)
    return mutate


def _many_members(count: int) -> Mutator:
    def mutate(data: dict[str, Any]) -> None:
        data["members"] = [
            {"name": f"m{i}", "key": seed_key(f"many/{i}").public.hex(), "address": f"127.0.0.1:{8000 + i}"}
            for i in range(count)
        ]
        data["namespaces"] = []
    return mutate


A = "member firm-a"
BAD_FILES: list[tuple[str, Mutator, tuple[str, ...]]] = [
    ("unknown top-level field", _set("extra", 1), ("top level", "unknown field", "extra")),
    ("missing [consortium]", _del("consortium"), ("[consortium]", "missing")),
    ("[consortium] not a table", _set("consortium", 5), ("[consortium]", "not a table")),
    ("unknown consortium field", _set("consortium.colour", "red"), ("[consortium]", "unknown field", "colour")),
    ("missing name", _del("consortium.name"), ("consortium.name", "non-empty string")),
    ("name not a string", _set("consortium.name", 7), ("consortium.name", "non-empty string")),
    ("name with capitals", _set("consortium.name", "Test"), ("consortium.name", "a-z")),
    ("name too long", _set("consortium.name", "x" * 65), ("consortium.name", "at most 64")),
    ("missing genesis time", _del("consortium.genesis_time_ms"), ("consortium.genesis_time_ms", "missing")),
    ("genesis time a string", _set("consortium.genesis_time_ms", "soon"), ("consortium.genesis_time_ms", "non-negative integer")),
    ("genesis time negative", _set("consortium.genesis_time_ms", -1), ("consortium.genesis_time_ms", "non-negative integer")),
    ("genesis time a bool", _set("consortium.genesis_time_ms", True), ("consortium.genesis_time_ms", "non-negative integer")),
    ("genesis time a float", _set("consortium.genesis_time_ms", 1.5), ("consortium.genesis_time_ms", "non-negative integer")),
    ("other protocol", _set("consortium.protocol", 3), ("consortium.protocol", "file says 3")),
    ("protocol 1", _set("consortium.protocol", 1), ("consortium.protocol", "file says 1")),
    ("protocol true", _set("consortium.protocol", True), ("consortium.protocol",)),
    ("protocol 1.0", _set("consortium.protocol", 1.0), ("consortium.protocol",)),
    ("open_namespaces not a bool", _set("consortium.open_namespaces", "yes"), ("consortium.open_namespaces", "true or false")),
    ("unknown params field", _set("params.speed", 3), ("[params]", "unknown field", "speed")),
    ("params not a table", _set("params", "fast"), ("[params]", "not a table")),
    ("heartbeat equals timeout", _set("params.heartbeat_ms", 3000), ("params.heartbeat_ms", "smaller than turn_timeout_ms")),
    ("heartbeat above timeout", _set("params.turn_timeout_ms", 500), ("params.heartbeat_ms", "smaller than turn_timeout_ms")),
    ("missing members", _del("members"), ("[[members]]", "at least one member")),
    ("no members", _set("members", []), ("[[members]]", "at least one member")),
    ("members a string", _set("members", "firm-a"), ("[[members]]", "at least one member")),
    ("member not a table", _set("members", [1]), ("members[0]", "must be a table")),
    ("unknown member field", _set("members.0.phone", "555"), ("members[0]", "unknown field", "phone")),
    ("member name missing", _del("members.0.name"), ("members[0].name", "non-empty string")),
    ("member name bad", _set("members.0.name", "Firm A"), ("members[0].name", "a-z")),
    ("member key missing", _del("members.0.key"), (f"{A}.key", "hex string of 32 bytes")),
    ("member key an int", _set("members.0.key", 5), (f"{A}.key", "hex string of 32 bytes")),
    ("member key bad hex", _set("members.0.key", "zz" * 32), (f"{A}.key", "not valid hex")),
    ("member key odd hex", _set("members.0.key", "a" * 63), (f"{A}.key", "not valid hex")),
    ("member key 31 bytes", _set("members.0.key", "ab" * 31), (f"{A}.key", "must be 32 bytes", "got 31")),
    ("member key 33 bytes", _set("members.0.key", "ab" * 33), (f"{A}.key", "must be 32 bytes", "got 33")),
    ("address missing", _del("members.0.address"), (f"{A}.address", "host:port")),
    ("address an int", _set("members.0.address", 7000), (f"{A}.address", "host:port")),
    ("address without port", _set("members.0.address", "localhost"), (f"{A}.address", "host:port")),
    ("address with two colons", _set("members.0.address", "::1:7000"), (f"{A}.address", "host:port")),
    ("address without host", _set("members.0.address", ":7000"), (f"{A}.address", "port in 1..65535")),
    ("address port 0", _set("members.0.address", "127.0.0.1:0"), (f"{A}.address", "port in 1..65535")),
    ("address port too big", _set("members.0.address", "127.0.0.1:65536"), (f"{A}.address", "port in 1..65535")),
    ("address port not a number", _set("members.0.address", "127.0.0.1:http"), (f"{A}.address", "port in 1..65535")),
    ("clients not a list", _set("members.0.clients", "ab" * 32), (f"{A}.clients", "list of hex keys")),
    ("client bad hex", _set("members.0.clients", ["xy" * 32]), (f"{A}.clients[0]", "not valid hex")),
    ("client wrong length", _set("members.0.clients", ["ab" * 16]), (f"{A}.clients[0]", "must be 32 bytes")),
    ("client not a string", _set("members.0.clients", [1]), (f"{A}.clients[0]", "hex string")),
    ("cert not base64", _set("members.0.cert", "not base64!"), (f"{A}.cert", "not valid base64")),
    ("cert not a string", _set("members.0.cert", 12), (f"{A}.cert", "not valid base64")),
    ("api address bad", _set("members.0.api", "nowhere"), (f"{A}.api", "host:port")),
    ("duplicate member names", _set("members.1.name", "firm-a"), ("members", "duplicate member name")),
    ("duplicate member keys", _copy_field("0.key", "1.key"), ("members", "a key appears twice")),
    ("client key is another member's key", _set("members.1.clients", [member_key("firm-a").public.hex()]),
     ("members", "a key appears twice")),
    ("client key shared by two members", _copy_field("0.clients", "1.clients"), ("members", "a key appears twice")),
    ("too many members", _many_members(MAX_MEMBERS + 1), ("members", f"need 1..{MAX_MEMBERS}", "got 65")),
    ("namespaces not a list", _set("namespaces", "books"), ("[[namespaces]]", "array of tables")),
    ("namespace not a table", _set("namespaces", ["books"]), ("namespaces[0]", "must be a table")),
    ("unknown namespace field", _set("namespaces.0.owner", "firm-a"), ("namespaces[0]", "unknown field", "owner")),
    ("namespace name missing", _del("namespaces.0.name"), ("namespaces[0].name", "non-empty string")),
    ("namespace name bad", _set("namespaces.0.name", "Books!"), ("namespaces[0].name", "a-z")),
    ("namespace name too long", _set("namespaces.0.name", "n" * 65), ("namespaces[0].name", "at most 64")),
    ("writers not a list", _set("namespaces.0.writers", "firm-a"), ("namespace books.writers", "list of member names")),
    ("readers with a number", _set("namespaces.0.readers", ["firm-a", 3]), ("namespace books.readers", "list of member names")),
    ("unknown writer", _set("namespaces.0.writers", ["firm-z"]), ("namespace books", "unknown member", "firm-z")),
    ("unknown reader", _set("namespaces.1.readers", ["firm-a", "firm-y"]), ("namespace private", "unknown member", "firm-y")),
    ("duplicate namespace", _set("namespaces.1.name", "books"), ("namespaces", "duplicate namespace")),
]

PARAM_BOUNDS = {
    "heartbeat_ms": (1, 3_600_000),
    "turn_timeout_ms": (1, 3_600_000),
    "max_block_txs": (1, 20_000),
    "max_block_bytes": (1024, 12 * 1024 * 1024),
    "clock_skew_ms": (0, 60_000),
    "tx_ttl_ms": (1000, 7 * 24 * 3600 * 1000),
    "anchor_interval_s": (1, 7 * 24 * 3600),
    "anchor_interval_blocks": (0, 1_000_000),
    "anchor_confirmations": (1, 1000),
}


def _param_cases() -> list[tuple[str, Mutator, tuple[str, ...]]]:
    cases: list[tuple[str, Mutator, tuple[str, ...]]] = []
    for name, (lo, hi) in PARAM_BOUNDS.items():
        for label, value in (("below", lo - 1), ("above", hi + 1), ("a string", "10"), ("a bool", True), ("a float", 10.0)):
            mutators = [_set(f"params.{name}", value)]
            if name == "turn_timeout_ms" and label == "below":
                mutators.append(_set("params.heartbeat_ms", 1))
            if name == "heartbeat_ms" and label == "above":
                mutators.append(_set("params.turn_timeout_ms", 3_600_000))

            def mutate(data: dict[str, Any], ms: list[Mutator] = mutators) -> None:
                for m in ms:
                    m(data)
            cases.append((f"params.{name} {label}", mutate, (f"params.{name}", f"integer in [{lo}, {hi}]")))
    return cases


ALL_BAD = BAD_FILES + _param_cases()


def test_every_params_field_is_covered() -> None:
    assert set(PARAM_BOUNDS) == {f.name for f in fields(Params)}


@pytest.mark.parametrize("name, mutate, fragments", ALL_BAD, ids=[c[0] for c in ALL_BAD])
def test_bad_field_is_a_config_error_naming_file_field_and_reason(
        tmp_path: Path, name: str, mutate: Mutator, fragments: tuple[str, ...]) -> None:
    data = valid_data()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert str(info.value).startswith(f"{path}: ")
    assert_names(info.value, *fragments)


REACHABLE_BOUNDS = [(n, v) for n, (lo, hi) in PARAM_BOUNDS.items() for v in (lo, hi)
                    # heartbeat must stay below the timeout, so these two bounds cannot both be met
                    if (n, v) not in (("heartbeat_ms", 3_600_000), ("turn_timeout_ms", 1))]


@pytest.mark.parametrize("name, value", REACHABLE_BOUNDS)
def test_params_bounds_are_inclusive(name: str, value: int) -> None:
    data = valid_data()
    data["params"] = {name: value}
    if name == "heartbeat_ms":
        data["params"]["turn_timeout_ms"] = 3_600_000
    if name == "turn_timeout_ms":
        data["params"]["heartbeat_ms"] = 1
    c = parse_consortium(data)
    assert getattr(c.params, name) == value


def test_the_core_checks_the_text_and_names_its_source() -> None:
    assert parse_consortium_toml(tomli_w.dumps(valid_data()), "shared/c.toml") == CONSORTIUM
    with pytest.raises(ConfigError) as info:
        parse_consortium_toml("[consortium\nname = ", "shared/c.toml")
    assert str(info.value).startswith("shared/c.toml: not valid TOML")
    data = valid_data()
    data["params"]["heartbeat_ms"] = 0
    with pytest.raises(ConfigError) as info:
        parse_consortium_toml(tomli_w.dumps(data), "shared/c.toml")
    assert str(info.value).startswith("shared/c.toml: params.heartbeat_ms")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_consortium(tmp_path / "nope.toml")
    assert_names(info.value, "nope.toml", "not found")


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[consortium\nname = ", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert_names(info.value, str(path), "not valid TOML")


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert_names(info.value, str(path), "cannot read")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_consortium(tmp_path)
    assert_names(info.value, str(tmp_path), "cannot read")


def test_defaults_for_optional_fields() -> None:
    data = valid_data()
    del data["params"]
    del data["namespaces"]
    for m in data["members"]:
        del m["clients"]
    c = parse_consortium(data)
    assert c.params == Params() and c.namespaces == () and c.open_namespaces is True
    assert all(m.clients == () and m.cert is None and m.api is None for m in c.members)


def test_toml_round_trip_keeps_everything(tmp_path: Path) -> None:
    data = valid_data()
    data["members"][0]["cert"] = base64.b64encode(b"DER bytes").decode()
    data["members"][0]["api"] = "127.0.0.1:9000"
    data["consortium"]["open_namespaces"] = False
    data["params"]["anchor_interval_blocks"] = 7
    c = parse_consortium(data)
    again = load_consortium(write(tmp_path, consortium_to_toml_data(c)))
    assert again == c
    assert again.definition_hash == c.definition_hash
    assert again.members[0].cert == b"DER bytes" and again.members[0].api == "127.0.0.1:9000"


# --- the consortium id ---------------------------------------------------------------------------

OPERATIONAL_CHANGES: list[tuple[str, Mutator]] = [
    ("address", _set("members.0.address", "10.0.0.1:9999")),
    ("api", _set("members.0.api", "127.0.0.1:9001")),
    ("cert", _set("members.0.cert", base64.b64encode(b"other cert").decode())),
    ("namespace order", lambda d: d["namespaces"].reverse()),
    ("writers order", _set("namespaces.0.writers", ["firm-b", "firm-a"])),
    ("client order", _set("members.0.clients", [seed_key("c2").public.hex(), client_key("firm-a").public.hex()])),
]
CONSENSUS_CHANGES: list[tuple[str, Mutator]] = [
    ("name", _set("consortium.name", "other")),
    ("genesis time", _set("consortium.genesis_time_ms", GENESIS_MS + 1)),
    ("member order", lambda d: d["members"].reverse()),
    ("member name", _set("members.3.name", "firm-z")),
    ("member key", _set("members.0.key", seed_key("new").public.hex())),
    ("client keys", _set("members.0.clients", [])),
    ("a parameter", _set("params.tx_ttl_ms", 7200 * 1000)),
    ("a namespace rule", _set("namespaces.0.writers", ["firm-a"])),
    ("a new namespace", lambda d: d["namespaces"].append({"name": "extra"})),
    ("open_namespaces", _set("consortium.open_namespaces", False)),
]


@pytest.mark.parametrize("name, mutate", OPERATIONAL_CHANGES, ids=[c[0] for c in OPERATIONAL_CHANGES])
def test_operational_fields_stay_out_of_the_id(name: str, mutate: Mutator) -> None:
    data = valid_data()
    if name == "client order":
        data["members"][0]["clients"] = [client_key("firm-a").public.hex(), seed_key("c2").public.hex()]
    before = parse_consortium(copy.deepcopy(data))
    mutate(data)
    assert parse_consortium(data).definition_hash == before.definition_hash


@pytest.mark.parametrize("name, mutate", CONSENSUS_CHANGES, ids=[c[0] for c in CONSENSUS_CHANGES])
def test_consensus_fields_change_the_id(name: str, mutate: Mutator) -> None:
    data = valid_data()
    before = parse_consortium(copy.deepcopy(data))
    mutate(data)
    after = parse_consortium(data)
    assert after.definition_hash != before.definition_hash
    assert consortium_id(after) != consortium_id(before)


# --- access rules and lookups --------------------------------------------------------------------

def test_namespace_rules() -> None:
    c = CONSORTIUM
    assert c.may_write("firm-a", "books") and c.may_write("firm-b", "books")
    assert not c.may_write("firm-c", "books")
    assert c.may_read("firm-d", "books")
    assert c.may_write("firm-a", "private") and not c.may_write("firm-b", "private")
    assert c.may_read("firm-a", "private") and not c.may_read("firm-c", "private")
    assert c.may_write("firm-d", "anything-else") and c.may_read("firm-d", "anything-else")


def test_closed_consortium_refuses_namespaces_without_a_rule() -> None:
    c = make_consortium(open_namespaces=False)
    assert not c.may_write("firm-a", "anything-else")
    assert not c.may_read("firm-a", "anything-else")
    assert c.may_write("firm-a", "books")


def test_star_rule_is_everyone() -> None:
    rule = NamespaceRule("open")
    assert rule.may_write("anyone") and rule.may_read("anyone")


def test_lookups() -> None:
    c = CONSORTIUM
    assert c.member("firm-c") is c.members[2]
    assert c.member("nobody") is None
    assert c.member_of_client(client_key("firm-b").public) == "firm-b"
    assert c.member_of_client(member_key("firm-b").public) == "firm-b"  # a member key may sign txs
    assert c.member_of_client(seed_key("stranger").public) is None


@pytest.mark.parametrize("build, fragments", [
    (lambda: Member("firm-a", b"short"), ("member firm-a", "key must be 32 bytes")),
    (lambda: Member("firm-a", bytes(32), "127.0.0.1:1", clients=(b"short",)), ("member firm-a", "client keys must be 32 bytes")),
    (lambda: Member("Firm", bytes(32)), ("member name",)),
    (lambda: Member("firm-a", bytes(32), address="nowhere"), ("member firm-a: address", "host:port")),
    (lambda: NamespaceRule("Bad Name"), ("namespace name",)),
    (lambda: replace(CONSORTIUM, members=()), ("members", "need 1..64", "got 0")),
    (lambda: replace(CONSORTIUM, name=""), ("consortium name", "non-empty")),
    (lambda: Params(heartbeat_ms=0), ("params.heartbeat_ms", "integer in [1, 3600000]")),
])
def test_direct_construction_checks_too(build: Callable[[], object], fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert_names(info.value, *fragments)


def test_consortium_is_frozen() -> None:
    with pytest.raises(AttributeError):
        CONSORTIUM.name = "x"  # type: ignore[misc]
    assert isinstance(CONSORTIUM, Consortium)


# --- property: any data tomllib can produce either parses or is a ConfigError -------------------

toml_scalars = (st.integers(-(2**63), 2**63 - 1) | st.text(max_size=70) | st.booleans()
                | st.floats(allow_nan=False) | st.datetimes() | st.dates() | st.times())
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@given(st.data())
def test_property_any_toml_data_parses_or_is_a_config_error(data: st.DataObject) -> None:
    doc = valid_data()
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(toml_values)
    try:
        c = parse_consortium(doc)
    except ConfigError as exc:
        assert str(exc)
        return
    assert len(c.definition_hash) == 32


def test_a_private_namespace_in_the_file_is_private_and_changes_the_id(tmp_path: Path) -> None:
    """docs/api.md: a namespace can be private "in the consortium file"; two files that differ in
    it must not share a consortium id (the members would disagree on which puts are valid)."""
    data = valid_data()
    plain = parse_consortium(copy.deepcopy(data))
    data["namespaces"][1]["private"] = True
    private = parse_consortium(copy.deepcopy(data))
    rule = private.rule("private")
    assert rule is not None and rule.private is True
    assert private.definition_hash != plain.definition_hash
    again = load_consortium(write(tmp_path, consortium_to_toml_data(private)))
    assert again == private and again.definition_hash == private.definition_hash


def test_private_must_be_true_or_false() -> None:
    data = valid_data()
    data["namespaces"][0]["private"] = "yes"
    with pytest.raises(ConfigError, match="namespace books.private: must be true or false"):
        parse_consortium(data)
