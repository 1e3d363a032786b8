"""Founding a consortium across firms without a node (docs/operations.md, "Founding a consortium
across firms"): `peerdb member init` per firm, `peerdb consortium init --member-card ...` by
the coordinator, `peerdb consortium show` for the id every firm compares, `peerdb node init`
per firm. Every file is written as the node will read it; every mistake is refused with exit 5
(a file) or 2 (usage) before anything is written. tests/system/test_founding.py runs the same
commands for three firms and starts their nodes."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import exitcodes
from cli.main import main
from peerdb.consortium_file import load_consortium
from peerdb.core.consortium import EVERYONE, FOUNDING_CLOCK_SKEW_MS, NamespaceRule
from peerdb.core.errors import ConfigError
from peerdb.core.model import consortium_id
from peerdb.founding import parse_namespace_spec, read_card
from peerdb.keyfile import read_key
from peerdb.node.config import load_node_config

CLEAN_ENV: dict[str, str | None] = {"PEERDB_CONFIG": None, "PEERDB_API": None, "PEERDB_TOKEN": None}
FIRMS = ("firm-a", "firm-b", "firm-c")


def invoke(*args: str) -> Result:
    return CliRunner(env=CLEAN_ENV).invoke(main, list(args), prog_name="peerdb")


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def firms(tmp_path: Path) -> dict[str, Path]:
    """Each firm's own directory, after `member init` there."""
    dirs = {}
    for i, name in enumerate(FIRMS):
        dirs[name] = tmp_path / name
        ok_json(invoke("--json", "member", "init", "--name", name, "--address", f"10.0.0.{i + 1}:7101",
                       "--dir", str(dirs[name])))
    return dirs


def found(tmp_path: Path, dirs: dict[str, Path], *extra: str) -> Path:
    """The coordinator's consortium file from the cards, copied into each firm's directory."""
    out = tmp_path / "coordinator" / "consortium.toml"
    cards = [arg for name in FIRMS for arg in ("--member-card", str(dirs[name] / f"{name}.card"))]
    ok_json(invoke("--json", "consortium", "init", "--name", "trade", *cards, "--out", str(out), *extra))
    for d in dirs.values():
        shutil.copy(out, d / "consortium.toml")
    return out


# --- member init ---------------------------------------------------------------------------------

def test_member_init_writes_private_keys_and_a_public_card_the_consortium_file_can_take(tmp_path: Path) -> None:
    info = ok_json(invoke("--json", "member", "init", "--name", "firm-a", "--address", "peerdb.firm-a.example:7101",
                          "--dir", str(tmp_path), "--clients", "2"))
    key_file, client_files = Path(info["member_key_file"]), [Path(p) for p in info["client_key_files"]]
    assert key_file == tmp_path / "keys" / "firm-a.key" and len(client_files) == 2
    for path in (key_file, *client_files):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    member = read_card(info["card"])  # certificate checked against key and name
    assert member.name == "firm-a" and member.address == "peerdb.firm-a.example:7101"
    assert member.key == read_key(key_file)[0].public and member.key.hex() == info["public"]
    assert list(member.clients) == [read_key(p)[0].public for p in client_files]
    assert "seed" not in Path(info["card"]).read_text()  # nothing secret on the card


def test_member_init_refuses_to_replace_keys_without_force(tmp_path: Path) -> None:
    ok_json(invoke("--json", "member", "init", "--name", "firm-a", "--address", "h:1", "--dir", str(tmp_path)))
    key = (tmp_path / "keys" / "firm-a.key").read_text()
    again = invoke("member", "init", "--name", "firm-a", "--address", "h:1", "--dir", str(tmp_path))
    assert again.exit_code == exitcodes.CONFIG and "--force" in again.stderr
    assert (tmp_path / "keys" / "firm-a.key").read_text() == key


@pytest.mark.parametrize("args, fragment", [
    (["--name", "Firm A", "--address", "h:1"], "member name"),
    (["--name", "firm-a", "--address", "nowhere"], "HOST:PORT"),
])
def test_member_init_bad_name_or_address_writes_nothing(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = invoke("member", "init", *args, "--dir", str(tmp_path / "d"))
    assert result.exit_code in (exitcodes.USAGE, exitcodes.CONFIG) and fragment in result.stderr
    assert not (tmp_path / "d").exists()


# --- consortium init from cards, and show --------------------------------------------------------

def test_the_coordinator_writes_the_consortium_from_the_cards_in_turn_order(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    out = found(tmp_path, dirs, "--namespace", "deals:writers=*:readers=firm-a,firm-b:private",
                "--namespace", "chain.firm-a:writers=firm-a", "--param", "anchor_interval_s=600",
                "--genesis-time-ms", "1767225600000")
    consortium = load_consortium(out)
    assert consortium.member_names == FIRMS and consortium.genesis_time_ms == 1767225600000
    assert consortium.params.anchor_interval_s == 600
    deals = consortium.rule("deals")
    assert deals is not None and deals.private and deals.readers == ("firm-a", "firm-b")
    for name in FIRMS:
        assert consortium.member(name) == read_card(dirs[name] / f"{name}.card")
    shown = ok_json(invoke("--json", "consortium", "show", str(dirs["firm-c"] / "consortium.toml")))
    assert shown["id"] == consortium_id(consortium).hex()
    assert [m["name"] for m in shown["members"]] == list(FIRMS) and {m["cert"] for m in shown["members"]} == {"ok"}
    assert {"name": "deals", "writers": ["*"], "readers": ["firm-a", "firm-b"], "private": True} in shown["namespaces"]
    text = invoke("consortium", "show", str(out))
    assert text.exit_code == 0 and text.stdout.startswith(f"consortium id: {shown['id']}\n")
    assert "PRIVATE" in text.stdout


def test_one_changed_letter_in_a_received_file_shows_as_another_id(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    out = found(tmp_path, dirs)
    tampered = dirs["firm-b"] / "consortium.toml"
    tampered.write_text(tampered.read_text().replace('name = "trade"', 'name = "trades"'))
    ids = {ok_json(invoke("--json", "consortium", "show", str(p)))["id"] for p in (out, tampered)}
    assert len(ids) == 2


def test_a_card_whose_certificate_is_not_its_own_is_refused(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    card_a, card_b = dirs["firm-a"] / "firm-a.card", dirs["firm-b"] / "firm-b.card"
    cert_b = next(line for line in card_b.read_text().splitlines() if line.startswith("cert = "))
    lines = [cert_b if line.startswith("cert = ") else line for line in card_a.read_text().splitlines()]
    card_a.write_text("\n".join(lines) + "\n")
    result = invoke("consortium", "init", "--name", "trade", "--member-card", str(card_a),
                    "--member-card", str(card_b), "--out", str(tmp_path / "c.toml"))
    assert result.exit_code == exitcodes.CONFIG and str(card_a) in result.stderr and "cert" in result.stderr
    assert not (tmp_path / "c.toml").exists()


def test_the_same_card_twice_is_refused(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    card = str(dirs["firm-a"] / "firm-a.card")
    result = invoke("consortium", "init", "--name", "t", "--member-card", card, "--member-card", card,
                    "--out", str(tmp_path / "c.toml"))
    assert result.exit_code == exitcodes.CONFIG and "duplicate member name" in result.stderr


@pytest.mark.parametrize("extra", [["--dir", "x"], ["--members", "3"], ["--bitcoin-rpc", "http://u:p@h:1"]])
def test_pilot_options_with_member_cards_are_a_usage_error(tmp_path: Path, extra: list[str]) -> None:
    dirs = firms(tmp_path)
    result = invoke("consortium", "init", "--name", "t", "--member-card", str(dirs["firm-a"] / "firm-a.card"),
                    "--out", str(tmp_path / "c.toml"), *extra)
    assert result.exit_code == exitcodes.USAGE and "peerdb node init" in result.stderr


def test_consortium_init_without_cards_or_dir_says_what_to_give() -> None:
    result = invoke("consortium", "init")
    assert result.exit_code == exitcodes.USAGE and "--member-card" in result.stderr and "--dir" in result.stderr


def test_the_pilot_takes_namespace_rules_too(tmp_path: Path) -> None:
    result = invoke("consortium", "init", "--dir", str(tmp_path / "c"), "--members", "2",
                    "--namespace", "deals:readers=firm-a:private", "--closed-namespaces")
    assert result.exit_code == 0, result.output
    consortium = load_consortium(tmp_path / "c" / "consortium.toml")
    assert consortium.rule("deals") == NamespaceRule("deals", (EVERYONE,), ("firm-a",), True)
    assert consortium.open_namespaces is False


@pytest.mark.parametrize("spec, rule", [
    ("books", NamespaceRule("books")),
    ("chain.firm-a:writers=firm-a", NamespaceRule("chain.firm-a", ("firm-a",))),
    ("deals:writers=*:readers=firm-a,firm-b:private", NamespaceRule("deals", ("*",), ("firm-a", "firm-b"), True)),
    ("board:private:readers=firm-b", NamespaceRule("board", ("*",), ("firm-b",), True)),
])
def test_namespace_specs(spec: str, rule: NamespaceRule) -> None:
    assert parse_namespace_spec(spec) == rule


@pytest.mark.parametrize("spec", ["Books", "deals:owner=firm-a", "deals:readers=", "deals:writers=a:writers=b"])
def test_bad_namespace_specs_say_the_form(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_namespace_spec(spec)
    result = invoke("consortium", "init", "--dir", "unused", "--namespace", spec)
    assert result.exit_code == exitcodes.USAGE and "--namespace" in result.stderr


# --- node init -----------------------------------------------------------------------------------

def test_node_init_writes_a_config_the_node_reads_with_fresh_tokens(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    found(tmp_path, dirs)
    configs = {}
    for i, name in enumerate(FIRMS):
        info = ok_json(invoke("--json", "node", "init", "--member", name, "--dir", str(dirs[name]),
                              "--api-listen", f"127.0.0.1:{8101 + i}", "--bitcoin-rpc",
                              f"http://u:p@127.0.0.1:8332/wallet/{name}", "--no-check-pow"))
        path = Path(info["config"])
        assert path == dirs[name] / f"{name}.toml" and stat.S_IMODE(path.stat().st_mode) == 0o600
        cfg = load_node_config(path)
        consortium = cfg.load_consortium()
        assert info["consortium_id"] == consortium_id(consortium).hex()
        assert cfg.load_keys(consortium)[0].public == consortium.member(name).key  # type: ignore[union-attr]
        assert cfg.client_key_file == dirs[name] / "keys" / f"{name}-client.key"
        assert cfg.data_dir == dirs[name] / "data" / name and cfg.api_listen == f"127.0.0.1:{8101 + i}"
        assert cfg.bitcoin is not None and cfg.bitcoin.check_pow is False
        assert cfg.bitcoin.rpc_url.endswith(f"/wallet/{name}")
        assert cfg.api_audit_token and cfg.api_audit_token != cfg.api_token
        configs[name] = cfg
    assert len({c.api_token for c in configs.values()}) == len(FIRMS)
    assert 'key_file = "keys/firm-a.key"' in (dirs["firm-a"] / "firm-a.toml").read_text()  # movable directory


def test_node_init_refuses_a_key_that_is_not_the_members(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    found(tmp_path, dirs)
    result = invoke("node", "init", "--member", "firm-a", "--dir", str(dirs["firm-a"]),
                    "--key-file", str(dirs["firm-b"] / "keys" / "firm-b.key"))
    assert result.exit_code == exitcodes.CONFIG and "is not firm-a's member key" in result.stderr
    assert not (dirs["firm-a"] / "firm-a.toml").exists()


def test_node_init_refuses_a_client_key_of_another_firm(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    found(tmp_path, dirs)
    result = invoke("node", "init", "--member", "firm-a", "--dir", str(dirs["firm-a"]),
                    "--client-key-file", str(dirs["firm-b"] / "keys" / "firm-b-client.key"))
    assert result.exit_code == exitcodes.CONFIG and "not one of firm-a's clients" in result.stderr


def test_node_init_for_a_firm_not_in_the_file_names_the_members(tmp_path: Path) -> None:
    dirs = firms(tmp_path)
    found(tmp_path, dirs)
    result = invoke("node", "init", "--member", "firm-z", "--dir", str(dirs["firm-a"]))
    assert result.exit_code == exitcodes.CONFIG and "firm-a, firm-b, firm-c" in result.stderr


def test_a_new_consortium_gets_a_clock_skew_without_a_turn_race_and_a_chosen_race_is_pointed_out(
        tmp_path: Path) -> None:
    """Params' own default skew (5000 ms, kept so that old files keep their id) is larger than half
    the default turn (3000 ms): a later round's member could take the turn of the one before it."""
    dirs = firms(tmp_path)
    safe = load_consortium(found(tmp_path, dirs))
    assert safe.params.clock_skew_ms == FOUNDING_CLOCK_SKEW_MS and safe.params.turn_race_problem is None
    shown = ok_json(invoke("--json", "consortium", "show", str(tmp_path / "coordinator" / "consortium.toml")))
    assert shown["turn_race"] is None

    out = tmp_path / "racy.toml"
    cards = [arg for name in FIRMS for arg in ("--member-card", str(dirs[name] / f"{name}.card"))]
    chosen = invoke("consortium", "init", "--name", "trade", *cards, "--out", str(out), "--param", "clock_skew_ms=2000")
    assert chosen.exit_code == 0, chosen.output
    assert "warning: params.clock_skew_ms (2000) is more than a quarter of turn_timeout_ms (3000)" in chosen.stderr
    assert load_consortium(out).params.clock_skew_ms == 2000  # the founders' choice stands
    text = invoke("consortium", "show", str(out))
    assert text.exit_code == 0 and "WARNING: params.clock_skew_ms (2000)" in text.stdout
