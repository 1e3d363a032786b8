"""``peerdb`` argument handling and bad input, without a node (docs/cli.md is the contract).

Every error must reach the user as one line on stderr that says what to do, with the exit code
docs/cli.md documents for it: 2 usage, 3 node unreachable, 5 config or key problem. The commands
that talk to a running node are in tests/cli/test_node_commands.py.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from cli import exitcodes
from cli.main import main
from cli.params import AddressType
from peerdb.consortium_file import load_consortium
from peerdb.keyfile import read_key
from peerdb.localnet import free_ports
from peerdb.node.config import load_node_config

CLEAN_ENV: dict[str, str | None] = {"PEERDB_CONFIG": None, "PEERDB_API": None, "PEERDB_TOKEN": None}
"""The tests choose the node themselves; a PEERDB_* variable in the caller's shell must not leak in."""

TOKEN = "t" * 24
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def invoke(args: list[str], **kwargs: Any) -> Result:
    return CliRunner(env=CLEAN_ENV).invoke(main, args, prog_name="peerdb", **kwargs)


def unreachable_api() -> list[str]:
    """Global options pointing at a port nothing listens on (free a moment ago)."""
    return ["--api", f"127.0.0.1:{free_ports(1)[0]}", "--token", TOKEN]


def assert_error(result: Result, code: int, *fragments: str) -> None:
    """Exit ``code``, nothing on stdout (scripts parse it), a message on stderr with every fragment."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.stdout == "", result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`node run` points the root logger at its stderr (CliRunner's, closed afterwards): undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --- --help, version, completion ---------------------------------------------------------------

def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, path + (name,))
        else:
            yield path + (name,)


def _groups(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield path + (name,)
            yield from _groups(command, path + (name,))


WITHOUT_EXAMPLE: set[tuple[str, ...]] = set()
"""Commands whose --help has no example command line, although docs/cli.md says every one has."""

LEAVES = sorted(_leaf_commands(main))


def test_the_command_list_is_the_documented_one() -> None:
    assert {" ".join(p) for p in LEAVES} == {
        "demo", "keygen", "member init", "consortium init", "consortium show", "node init", "node run", "node check",
        "put", "delete", "get", "history", "propose", "load", "status",
        "blocks list", "blocks show", "evidence list", "evidence show", "anchors list", "anchors show",
        "anchors verify", "forks", "objections", "tx",
        "audit export", "audit verify", "audit diff",
        "governance propose", "governance vote", "governance list", "governance show"}


@pytest.mark.parametrize("path", [
    pytest.param(p, id=" ".join(p), marks=[pytest.mark.xfail(
        strict=True, reason="docs/cli.md: 'every command has --help with an example'; this one has none")]
        if p in WITHOUT_EXAMPLE else []) for p in LEAVES])
def test_every_command_help_exits_0_and_shows_an_example(path: tuple[str, ...]) -> None:
    result = invoke([*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: peerdb {' '.join(path)} ")
    example = re.compile(rf"^\s*(\$ )?peerdb\b.*\b{re.escape(path[-1])}\b")
    assert any(example.match(line) for line in result.output.splitlines()), result.output


@pytest.mark.parametrize("path", [pytest.param(p, id=" ".join(p)) for p in _groups(main)])
def test_every_group_help_lists_its_commands(path: tuple[str, ...]) -> None:
    group: click.Group = main
    for name in path:
        command = group.commands[name]
        assert isinstance(command, click.Group)
        group = command
    result = invoke([*path, "-h"])
    assert result.exit_code == 0, result.output
    for name in group.commands:
        assert re.search(rf"^\s+{re.escape(name)}\b", result.output, re.M), (name, result.output)


def test_main_help_lists_the_exit_codes_and_completion() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert ("Exit codes: 0 ok, 1 error, 2 usage, 3 node unreachable, 4 verification failed, "
            "5 config/key problem, 6 refused by the node, 7 --wait timed out.") in text
    assert "_PEERDB_COMPLETE=bash_source peerdb" in text
    for option in ("--config", "--api", "--token", "--json", "--version"):
        assert option in result.output


def test_exit_code_constants_match_the_documented_table() -> None:
    assert (exitcodes.OK, exitcodes.ERROR, exitcodes.USAGE, exitcodes.UNREACHABLE, exitcodes.VERIFY_FAILED,
            exitcodes.CONFIG, exitcodes.REJECTED, exitcodes.TIMEOUT) == (0, 1, 2, 3, 4, 5, 6, 7)


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0 and re.fullmatch(r"peerdb, version \d+\.\d+\.\d+\S*\n", result.output)


@pytest.mark.parametrize("shell, marker", [("bash_source", "complete -o nosort -F _peerdb_completion peerdb"),
                                           ("zsh_source", "compdef _peerdb_completion peerdb")])
def test_shell_completion_as_documented(shell: str, marker: str) -> None:
    result = CliRunner(env={**CLEAN_ENV, "_PEERDB_COMPLETE": shell}).invoke(main, [], prog_name="peerdb")
    assert result.exit_code == 0 and marker in result.output, result.output


def test_unknown_option_is_a_usage_error() -> None:
    result = invoke(["status", "--frobnicate"])
    assert result.exit_code == exitcodes.USAGE and "--frobnicate" in result.stderr


# --- keygen --------------------------------------------------------------------------------------

def test_keygen_writes_a_private_file_and_prints_its_public_key(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "deep" / "firm-a.key"  # parent directories are created
    result = invoke(["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    public = result.stdout.strip()
    assert HEX64.match(public) and result.stdout == public + "\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key, kind = read_key(out)
    assert kind == "member" and key.public.hex() == public


def test_keygen_json_shape_and_client_kind(tmp_path: Path) -> None:
    out = tmp_path / "app.key"
    result = invoke(["keygen", "--kind", "client", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert set(answer) == {"file", "kind", "public"}
    assert answer["file"] == str(out) and answer["kind"] == "client" and HEX64.match(answer["public"])
    key, kind = read_key(out)
    assert kind == "client" and key.public.hex() == answer["public"]
    as_global = invoke(["--json", "keygen", "--out", str(tmp_path / "b.key")])  # --json before the command too
    assert as_global.exit_code == 0 and json.loads(as_global.stdout)["kind"] == "member"


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "firm-a.key"
    assert invoke(["keygen", "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    refused = invoke(["keygen", "--out", str(out)])
    assert_error(refused, exitcodes.CONFIG, str(out), "already exists", "--force")
    assert out.read_bytes() == before
    forced = invoke(["keygen", "--out", str(out), "--force"])
    assert forced.exit_code == 0 and out.read_bytes() != before
    assert read_key(out)[0].public.hex() == forced.stdout.strip()


def test_keygen_usage_errors(tmp_path: Path) -> None:
    assert invoke(["keygen"]).exit_code == exitcodes.USAGE  # --out is required
    bad_kind = invoke(["keygen", "--out", str(tmp_path / "k"), "--kind", "admin"])
    assert bad_kind.exit_code == exitcodes.USAGE and "'admin' is not one of 'member', 'client'" in bad_kind.stderr
    assert not (tmp_path / "k").exists()


# --- consortium init ------------------------------------------------------------------------------

def test_consortium_init_writes_everything_a_node_needs(tmp_path: Path) -> None:
    target = tmp_path / "ci"
    result = invoke(["consortium", "init", "--dir", str(target), "--names", "bank-a,regulator", "--name", "pilot",
                     "--base-port", "7300", "--api-base-port", "8300", "--heartbeat-ms", "200",
                     "--turn-timeout-ms", "1000", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert set(answer) == {"configs", "consortium_file", "consortium_id", "members", "turn_race"}
    assert answer["turn_race"] is None  # the founding commands write a skew without a turn race
    assert answer["members"] == ["bank-a", "regulator"] and HEX64.match(answer["consortium_id"])
    assert answer["consortium_file"] == str(target / "consortium.toml")
    assert answer["configs"] == {m: str(target / f"{m}.toml") for m in ("bank-a", "regulator")}
    consortium = load_consortium(target / "consortium.toml")
    assert consortium.name == "pilot" and list(consortium.member_names) == ["bank-a", "regulator"]
    assert consortium.params.heartbeat_ms == 200 and consortium.params.turn_timeout_ms == 1000
    for i, member in enumerate(("bank-a", "regulator")):
        config_path = target / f"{member}.toml"
        assert stat.S_IMODE(config_path.stat().st_mode) == 0o600  # it holds the API token
        cfg = load_node_config(config_path)
        assert cfg.member == member and cfg.api_listen == f"127.0.0.1:{8300 + i}"
        assert cfg.load_key(consortium).public == consortium.members[i].key
        assert cfg.client_key_file is not None
        assert read_key(cfg.client_key_file)[0].public in consortium.members[i].clients
        for key_file in (cfg.key_file, cfg.client_key_file):
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert consortium.members[i].address == f"127.0.0.1:{7300 + i}"


def test_consortium_init_text_says_how_to_run_each_node(tmp_path: Path) -> None:
    target = tmp_path / "c"
    result = invoke(["consortium", "init", "--dir", str(target), "--members", "3"])
    assert result.exit_code == 0, result.output
    assert f"consortium example (3 members) written to {target}" in result.stdout
    for member in ("firm-a", "firm-b", "firm-c"):
        assert f"{member}: peerdb node run --config {target / member}.toml" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--heartbeat-ms", "5000"], "params.heartbeat_ms"),           # not below turn_timeout_ms (3000)
    (["--turn-timeout-ms", "0"], "params.turn_timeout_ms"),
    (["--anchor-interval-s", "0"], "params.anchor_interval_s"),
    (["--names", "Bank A,bank-b"], "member name: 'Bank A'"),
    (["--names", "bank-a,bank-a"], "member names must differ"),
    (["--name", "My Consortium"], "consortium name"),
])
def test_consortium_init_refuses_bad_params_and_writes_nothing(tmp_path: Path, args: list[str],
                                                              fragment: str) -> None:
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for target in (fresh, existing):
        result = invoke(["consortium", "init", "--dir", str(target), *args])
        assert_error(result, exitcodes.CONFIG, fragment)
    assert not fresh.exists() or not any(fresh.iterdir())
    assert list(existing.iterdir()) == []


@pytest.mark.parametrize("args", [["--members", "0"], ["--members", "65"], ["--base-port", "0"],
                                  ["--heartbeat-ms", "soon"]])
def test_consortium_init_option_types_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    result = invoke(["consortium", "init", "--dir", str(tmp_path / "c"), *args])
    assert result.exit_code == exitcodes.USAGE and "Invalid value" in result.stderr, result.output
    assert not (tmp_path / "c").exists()


def test_consortium_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "c"
    assert invoke(["consortium", "init", "--dir", str(target), "--members", "1"]).exit_code == 0
    before = (target / "consortium.toml").read_bytes()
    refused = invoke(["consortium", "init", "--dir", str(target), "--members", "1"])
    assert_error(refused, exitcodes.CONFIG, "consortium.toml", "already exists", "--force")
    assert (target / "consortium.toml").read_bytes() == before
    forced = invoke(["consortium", "init", "--dir", str(target), "--members", "1", "--force"])
    assert forced.exit_code == 0 and (target / "consortium.toml").read_bytes() != before


# --- node run: config and key problems (all caught before the node listens) -------------------------

@pytest.fixture
def one_member(tmp_path: Path) -> Path:
    """A freshly initialised one-member consortium directory; returns its node config."""
    result = invoke(["consortium", "init", "--dir", str(tmp_path / "c"), "--members", "1"])
    assert result.exit_code == 0, result.output
    return tmp_path / "c" / "firm-a.toml"


def test_node_run_missing_config_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "firm-a.toml"
    assert_error(invoke(["node", "run", "--config", str(missing)]), exitcodes.CONFIG,
                 str(missing), "node config not found", "peerdb consortium init")


def test_node_run_needs_a_config() -> None:
    result = invoke(["node", "run"])
    assert result.exit_code == exitcodes.USAGE and "--config" in result.stderr


def test_node_run_member_key_readable_by_others_says_chmod_600(one_member: Path) -> None:
    key_file = one_member.parent / "keys" / "firm-a.key"
    key_file.chmod(0o644)
    assert_error(invoke(["node", "run", "--config", str(one_member)]), exitcodes.CONFIG,
                 str(key_file), "mode 644", f"chmod 600 {key_file}")
    assert not (one_member.parent / "data").exists()  # refused before anything was opened


def test_node_run_client_key_readable_by_group_says_chmod_600(one_member: Path) -> None:
    key_file = one_member.parent / "keys" / "firm-a-client.key"
    key_file.chmod(0o640)
    assert_error(invoke(["node", "run", "--config", str(one_member)]), exitcodes.CONFIG,
                 str(key_file), "mode 640", f"chmod 600 {key_file}")


def test_node_run_missing_key_file_says_how_to_make_one(one_member: Path) -> None:
    key_file = one_member.parent / "keys" / "firm-a.key"
    key_file.unlink()
    assert_error(invoke(["node", "run", "--config", str(one_member)]), exitcodes.CONFIG,
                 str(key_file), "not found", "peerdb keygen")


def test_node_run_from_a_restored_data_directory_exits_8_saying_what_to_do(one_member: Path) -> None:
    """Its own exit code, so a service manager can be told not to restart it (the systemd unit's
    RestartPreventExitStatus): started the same way again, it can only be refused again."""
    from peerdb.store import Store

    consortium = load_consortium(one_member.parent / "consortium.toml")
    data = one_member.parent / "data" / "firm-a"
    Store.open(data, consortium, "firm-a", sync=False).close()
    backup = one_member.parent / "backup"
    shutil.copytree(data, backup)
    shutil.rmtree(data)
    backup.rename(data)  # a restore: a new data file where the old one was
    assert_error(invoke(["node", "run", "--config", str(one_member)]), exitcodes.RESTORED,
                 "copied or restored from a backup", "--accept-restored")


def test_node_run_unknown_config_field_is_named(one_member: Path) -> None:
    text = one_member.read_text().replace("[node]\n", "[node]\nmemebr = \"firm-a\"\n")
    one_member.write_text(text)
    assert_error(invoke(["node", "run", "--config", str(one_member)]), exitcodes.CONFIG,
                 str(one_member), "[node] unknown field(s) ['memebr']")


def test_node_run_missing_consortium_file_is_named(one_member: Path) -> None:
    (one_member.parent / "consortium.toml").unlink()
    assert_error(invoke(["node", "run", "--config", str(one_member)]), exitcodes.CONFIG,
                 str(one_member.parent / "consortium.toml"), "not found")


def test_node_run_config_that_is_not_toml(tmp_path: Path) -> None:
    config = tmp_path / "firm-a.toml"
    config.write_text("[node\nmember = ")
    assert_error(invoke(["node", "run", "--config", str(config)]), exitcodes.CONFIG,
                 str(config), "cannot read node config")


# --- choosing a node -------------------------------------------------------------------------------

def test_no_node_given_is_a_usage_error_saying_how_to_give_one() -> None:
    assert_error(invoke(["status"]), exitcodes.USAGE, "--config", "--api HOST:PORT", "--token", "PEERDB_CONFIG")
    assert_error(invoke(["--api", "127.0.0.1:8101", "status"]), exitcodes.USAGE, "no API token", "--token")


def test_client_command_with_a_missing_config_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "firm-a.toml"
    assert_error(invoke(["-c", str(missing), "status"]), exitcodes.CONFIG, str(missing), "not found")
    via_env = CliRunner(env={**CLEAN_ENV, "PEERDB_CONFIG": str(missing)}).invoke(main, ["status"])
    assert via_env.exit_code == exitcodes.CONFIG and str(missing) in via_env.stderr


@pytest.mark.parametrize("command", [
    ["status"], ["get", "books", "k"], ["put", "books", "k", "v"], ["delete", "books", "k"],
    ["history", "books", "k"], ["blocks", "list"], ["blocks", "show", "1"], ["evidence", "list"],
    ["anchors", "list"], ["anchors", "show", "1"]], ids=" ".join)
def test_unreachable_node_exits_3_and_says_what_to_do(command: list[str]) -> None:
    api = unreachable_api()
    result = invoke([*api, *command])
    assert_error(result, exitcodes.UNREACHABLE, f"cannot reach the node at http://{api[1]}",
                 "is `peerdb node run` running with this API address?")
    assert result.stderr.count("\n") == 1  # one line


def test_unreachable_node_with_json_still_exits_3() -> None:
    assert_error(invoke([*unreachable_api(), "--json", "status"]), exitcodes.UNREACHABLE, "cannot reach the node")


def test_unreachable_node_via_environment() -> None:
    api = unreachable_api()
    runner = CliRunner(env={**CLEAN_ENV, "PEERDB_API": api[1], "PEERDB_TOKEN": TOKEN})
    result = runner.invoke(main, ["status"])
    assert result.exit_code == exitcodes.UNREACHABLE and api[1] in result.stderr


# --- custom parameter types --------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["get", "books", "k", "--view", "bogus"],
     "Invalid value for '--view': 'bogus' is not a view; use one of tentative, majority, unanimous_signed, unanimous"),
    (["put", "books", "k", "v", "--wait", "soon"], "'soon' is not a view"),
    (["propose", "-", "--wait", "all"], "'all' is not a view"),
    (["get", "books", "k", "--at", "-1"], "Invalid value for '--at': '-1' is not a block height (a non-negative integer)"),
    (["get", "books", "k", "--at", "ten"], "'ten' is not a block height"),
    (["blocks", "list", "--from", "-3"], "Invalid value for '--from': '-3' is not a block height"),
    (["blocks", "list", "--to", "1.5"], "Invalid value for '--to': '1.5' is not a block height"),
    (["put", "books", "k", "v", "--timeout", "0"], "Invalid value for '--timeout'"),
    (["put", "books", "k", "v", "--timeout", "601"], "Invalid value for '--timeout'"),
    (["get", "books"], "Missing argument 'KEY'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_arguments_are_usage_errors_before_any_request(args: list[str], fragment: str) -> None:
    result = invoke([*unreachable_api(), *args], input="[]")  # exit 2, not 3: nothing was sent
    assert_error(result, exitcodes.USAGE, fragment)
    assert "Try 'peerdb" in result.stderr


@pytest.mark.parametrize("view", ["tentative", "majority", "unanimous-signed", "unanimous_signed", "unanimous"])
def test_every_documented_view_name_is_accepted(view: str) -> None:
    # Accepted views get as far as the network (exit 3), never a usage error.
    assert invoke([*unreachable_api(), "get", "books", "k", "--view", view]).exit_code == exitcodes.UNREACHABLE


@pytest.mark.parametrize("value", ["nohost", ":8101", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:0",
                                   "127.0.0.1:65536"])
def test_address_type_fails_with_a_clear_message(value: str) -> None:
    @click.command()
    @click.option("--at", type=AddressType())
    def show(at: str) -> None:
        click.echo(at)

    result = CliRunner().invoke(show, ["--at", value])
    assert result.exit_code == exitcodes.USAGE
    assert f"{value!r} is not HOST:PORT with a port in 1..65535" in result.stderr
    ok = CliRunner().invoke(show, ["--at", "127.0.0.1:8101"])
    assert ok.exit_code == 0 and ok.output == "127.0.0.1:8101\n"


@pytest.mark.parametrize("api", ["127.0.0.1:notaport", "127.0.0.1:99999"])
def test_bad_api_address_is_a_usage_error(api: str) -> None:
    assert_error(invoke(["--api", api, "--token", TOKEN, "status"]), exitcodes.USAGE, "HOST:PORT")


# --- propose: the batch file -------------------------------------------------------------------------

@pytest.mark.parametrize("content, fragments", [
    ('[{"op": "put", "namespace": "books", ', ("not valid JSON", "expected a list of operations")),
    ("", ("not valid JSON",)),
    ('{"op": "put", "namespace": "books", "key": "k", "value": "v"}', ("expected a non-empty JSON list",)),
    ("[]", ("expected a non-empty JSON list",)),
    ('["put books k v"]', ("expected a non-empty JSON list of operation objects",)),
    ('"hello"', ("expected a non-empty JSON list",)),
], ids=["truncated", "empty", "object", "empty-list", "strings", "string"])
def test_propose_malformed_batch_file_is_a_usage_error(tmp_path: Path, content: str,
                                                       fragments: tuple[str, ...]) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(content)
    assert_error(invoke([*unreachable_api(), "propose", str(batch)]), exitcodes.USAGE, str(batch), *fragments)


def test_propose_malformed_batch_on_stdin_is_a_usage_error() -> None:
    assert_error(invoke([*unreachable_api(), "propose", "-"], input="[{oops"), exitcodes.USAGE,
                 "<stdin>", "not valid JSON")


def test_propose_missing_batch_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "batch.json"
    assert_error(invoke([*unreachable_api(), "propose", str(missing)]), exitcodes.USAGE,
                 str(missing), "No such file or directory")


def test_propose_valid_batch_goes_to_the_node(tmp_path: Path) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"op": "put", "namespace": "books", "key": "k", "value": "v"}]))
    assert invoke([*unreachable_api(), "propose", str(batch)]).exit_code == exitcodes.UNREACHABLE


# --- audit: bundle files ---------------------------------------------------------------------------------

def test_audit_verify_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "x.pdbaudit"
    assert_error(invoke(["audit", "verify", str(missing)]), exitcodes.USAGE, "does not exist")


def test_audit_verify_of_garbage_exits_4(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pdbaudit"
    junk.write_bytes(b"this is not a bundle at all\n" * 10)
    assert_error(invoke(["audit", "verify", str(junk)]), exitcodes.VERIFY_FAILED, "verification FAILED")


# --- errors under --json ---------------------------------------------------------------------------

def json_error(result: Result, exit_code: int) -> dict[str, Any]:
    """Under --json a failure is one JSON object on stderr, nothing on stdout."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    assert result.stdout == ""
    error: dict[str, Any] = json.loads(result.stderr)["error"]
    assert error["exit_code"] == exit_code and error["message"]
    return error


def test_errors_under_json_are_json_on_stderr_with_a_code() -> None:
    unreachable = json_error(invoke([*unreachable_api(), "--json", "status"]), exitcodes.UNREACHABLE)
    assert unreachable["code"] == "unreachable" and "cannot reach the node" in unreachable["message"]
    usage = json_error(invoke(["get", "--json"]), exitcodes.USAGE)
    assert usage["code"] == "usage" and "NAMESPACE" in usage["message"]
    assert "Error:" in invoke(["get"]).stderr  # without --json: the line for people


def test_a_refusal_under_json_carries_the_nodes_error_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from cli.client import refusal
    from cli.context import Ctx

    class Refusing:
        def get(self, path: str, **params: Any) -> dict[str, Any]:
            raise refusal(httpx.Response(403, json={"error": {"code": "forbidden",
                                                              "message": "firm-c may not read namespace 'deals'"}}))
    monkeypatch.setattr(Ctx, "client", property(lambda self: Refusing()))
    error = json_error(invoke(["--json", "get", "deals", "acme"]), exitcodes.REJECTED)
    assert error["code"] == "forbidden" and "may not read namespace 'deals'" in error["message"]
