"""`peerdb governance`: request bodies and usage errors (the node side is in
tests/node/test_governance.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from click.testing import CliRunner

from cli.governance import body_for, describe_change, read_certificate
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
