"""`peerdb governance`: request bodies, usage errors, and the confirmation a warned vote needs
(the node side is in tests/node/test_governance.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import exitcodes
from cli.context import Ctx
from cli.errors import CliError
from cli.governance import NEEDS_CONFIRMATION, body_for, describe_change, read_certificate
from cli.main import main
from peerdb.net.certs import certificate_name, certificate_public_key


def test_bodies_name_the_api_kinds() -> None:
    none: tuple[str, ...] = ()
    remove = body_for("remove", ("firm-d",), None, None, None, none, None, none, None, none, none, False)
    assert remove == {"kind": "remove_members", "members": ["firm-d"]}
    params = body_for("params", none, None, None, None, none, None, ("heartbeat_ms=2000", "max_block_txs = 5"),
                      None, none, none, False)
    assert params == {"kind": "set_params", "params": {"heartbeat_ms": 2000, "max_block_txs": 5}}


def test_usage_errors_exit_2_before_contacting_a_node() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--api", "127.0.0.1:1", "--token", "x", "governance", "propose", "params",
                                  "--set", "heartbeat_ms=fast"])
    assert result.exit_code == 2 and "expected NAME=INTEGER" in result.output
    result = runner.invoke(main, ["--api", "127.0.0.1:1", "--token", "x", "governance", "propose", "remove"])
    assert result.exit_code == 2 and "--member" in result.output
    result = runner.invoke(main, ["--api", "127.0.0.1:1", "--token", "x", "governance", "vote", "ab" * 32])
    assert result.exit_code == 2 and "--yes or --no" in result.output


def test_keygen_with_a_name_writes_the_certificate_that_add_and_rotate_need(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["keygen", "--out", str(tmp_path / "firm-e.key"), "--name", "firm-e", "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    cert = tmp_path / "firm-e.crt"
    assert info["certificate"] == str(cert) and cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    der = read_certificate(str(cert))
    assert base64.b64decode(info["cert_b64"]) == der  # the form the consortium file takes
    assert certificate_public_key(der).hex() == info["public"]
    assert certificate_name(der) == "firm-e"
    # The certificate carries the key: the body has both, and a different --key is refused.
    none: tuple[str, ...] = ()
    body = body_for("add", none, "firm-e", None, "127.0.0.1:7400", none, None, none, None, none, none, False,
                    str(cert))
    assert body["key"] == info["public"] and base64.b64decode(body["cert_b64"]) == der
    api = ["--api", "127.0.0.1:1", "--token", "x" * 20, "governance", "propose"]
    missing = runner.invoke(main, [*api, "add", "--name", "firm-e", "--key", info["public"],
                                   "--address", "127.0.0.1:7400"])
    assert missing.exit_code == 2 and "give --cert FILE" in missing.output
    mismatch = runner.invoke(main, [*api, "rotate", "--name", "firm-e", "--cert", str(cert), "--key", "11" * 32])
    assert mismatch.exit_code == 2 and "carries key" in mismatch.output
    (tmp_path / "junk.crt").write_text("not a certificate")
    junk = runner.invoke(main, [*api, "rotate", "--name", "firm-e", "--cert", str(tmp_path / "junk.crt")])
    assert junk.exit_code == 5 and "not a member certificate" in junk.output
    again = runner.invoke(main, ["keygen", "--out", str(tmp_path / "firm-e.key"), "--name", "firm-e"])
    assert again.exit_code == 5  # never overwrites a key (or its certificate) without --force
    client = runner.invoke(main, ["keygen", "--kind", "client", "--out", str(tmp_path / "c.key"), "--name", "x"])
    assert client.exit_code == 2 and "only member keys" in client.output


def test_governance_show_describes_each_kind_of_change_in_words() -> None:
    key = "ab" * 32
    assert describe_change("add_member", ["firm-e", key, "10.0.0.5:7400", ["cd" * 32], "3082", None]) == \
        "add member firm-e (key abababababababab..., address 10.0.0.5:7400, 1 client key(s), certificate given)"
    assert describe_change("remove_members", ["firm-c", "firm-d"]) == "remove firm-c, firm-d"
    assert describe_change("rotate_key", ["firm-b", key, None]) == \
        "rotate firm-b's member key to abababababababab... (NO certificate)"
    assert describe_change("update_member", ["firm-b", "10.0.0.6:7400", [], None, "10.0.0.6:8400"]) == \
        "update firm-b: address 10.0.0.6:7400, 0 client key(s), API 10.0.0.6:8400"
    assert describe_change("set_params", [["heartbeat_ms", 2000], ["max_block_txs", 5]]) == \
        "set heartbeat_ms = 2000, max_block_txs = 5"
    assert describe_change("set_namespace", ["deals", ["firm-a"], ["firm-a", "firm-b"], True]) == \
        "namespace deals: writers firm-a; readers firm-a, firm-b; private (encrypted for its readers)"
    assert describe_change("future_kind", [1, 2]) == "[1, 2]"  # a newer node's kind: shown as given


class _Node:
    """A stand-in for the node's vote endpoint: refuses a yes without "confirm" as the node does
    for a rotation of this member's key to one its node does not hold."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self.bodies.append(body)
        if not body.get("confirm"):
            raise CliError("node refused: this vote would rotate firm-b's member key to 4f1c..., which this node "
                           "does not hold", exitcodes.REJECTED, NEEDS_CONFIRMATION)
        return {"proposal": body["proposal"], "member": "firm-b", "approve": True, "accepted": ["ab"],
                "duplicates": [], "rejected": []}


def _vote(monkeypatch: pytest.MonkeyPatch, *args: str, at_a_terminal: bool, answer: str = "") -> tuple[Result, _Node]:
    node = _Node()
    monkeypatch.setattr(Ctx, "client", property(lambda self: node))
    monkeypatch.setattr("cli.governance.interactive", lambda: at_a_terminal)
    result = CliRunner().invoke(main, ["governance", "vote", "ab" * 32, "--yes", *args], input=answer)
    return result, node


def test_a_vote_the_node_warns_about_is_asked_at_a_terminal_and_sent_confirmed(monkeypatch: pytest.MonkeyPatch) -> None:
    result, node = _vote(monkeypatch, at_a_terminal=True, answer="y\n")
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.output and "does not hold" in result.output and "Vote yes anyway?" in result.output
    assert [b.get("confirm") for b in node.bodies] == [None, True]


def test_a_warned_vote_declined_at_the_terminal_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    result, node = _vote(monkeypatch, at_a_terminal=True, answer="n\n")
    assert result.exit_code == exitcodes.ERROR and "not voted" in result.output
    assert len(node.bodies) == 1


def test_a_warned_vote_from_a_script_needs_confirm(monkeypatch: pytest.MonkeyPatch) -> None:
    result, node = _vote(monkeypatch, at_a_terminal=False)
    assert result.exit_code == exitcodes.REJECTED and "--confirm" in result.output and len(node.bodies) == 1
    confirmed, node = _vote(monkeypatch, "--confirm", at_a_terminal=False)
    assert confirmed.exit_code == 0 and node.bodies == [{"proposal": "ab" * 32, "approve": True, "confirm": True}]


class _Recorder:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self.bodies.append(body)
        return {"proposal": "cd" * 32, "kind": body["kind"], "accepted": ["ab"], "duplicates": [], "rejected": []}


def test_a_joining_firms_member_card_is_all_an_add_proposal_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = CliRunner().invoke(main, ["--json", "member", "init", "--name", "firm-e", "--address", "10.0.0.5:7400",
                                     "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    node = _Recorder()
    monkeypatch.setattr(Ctx, "client", property(lambda self: node))
    result = CliRunner().invoke(main, ["governance", "propose", "add", "--card", info["card"], "--note", "joins"])
    assert result.exit_code == 0, result.output
    [body] = node.bodies
    assert body["kind"] == "add_member" and body["name"] == "firm-e" and body["key"] == info["public"]
    assert body["address"] == "10.0.0.5:7400" and body["clients"] == info["clients"] and body["note"] == "joins"
    der = base64.b64decode(body["cert_b64"])
    assert certificate_public_key(der).hex() == info["public"] and certificate_name(der) == "firm-e"
    mixed = CliRunner().invoke(main, ["governance", "propose", "add", "--card", info["card"], "--name", "firm-x"])
    assert mixed.exit_code == exitcodes.USAGE and "leave those options out" in mixed.output


class _RaceNode:
    """A node that warns about a parameter change leaving a turn race (409 needs_confirmation)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self.bodies.append(body)
        if not body.get("confirm"):
            raise CliError("node refused: this proposal would leave params.clock_skew_ms (900) is more than a quarter "
                           "of turn_timeout_ms (3000)", exitcodes.REJECTED, NEEDS_CONFIRMATION)
        return {"proposal": "cd" * 32, "kind": "set_params", "accepted": ["ab"], "duplicates": [], "rejected": []}


@pytest.mark.parametrize("at_a_terminal, answer, args, sent, code", [
    (True, "y\n", (), [None, True], 0),
    (True, "n\n", (), [None], exitcodes.ERROR),
    (False, "", (), [None], exitcodes.REJECTED),
    (False, "", ("--confirm",), [True], 0),
])
def test_a_proposal_the_node_warns_about_is_confirmed_like_a_vote(
        monkeypatch: pytest.MonkeyPatch, at_a_terminal: bool, answer: str, args: tuple[str, ...],
        sent: list[bool | None], code: int) -> None:
    node = _RaceNode()
    monkeypatch.setattr(Ctx, "client", property(lambda self: node))
    monkeypatch.setattr("cli.governance.interactive", lambda: at_a_terminal)
    result = CliRunner().invoke(main, ["governance", "propose", "params", "--set", "clock_skew_ms=900", *args],
                                input=answer)
    assert result.exit_code == code, result.output
    assert [b.get("confirm") for b in node.bodies] == sent
    assert all(b["params"] == {"clock_skew_ms": 900} for b in node.bodies)
    if code == exitcodes.ERROR:
        assert "not proposed" in result.output
    if code == exitcodes.REJECTED:
        assert "--confirm" in result.output and "more than a quarter" in result.output
