"""`peerdb governance`: request bodies and usage errors (the node side is in
tests/node/test_governance.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from click.testing import CliRunner

from cli.governance import body_for, read_certificate
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
