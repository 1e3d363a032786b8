"""`peerdb governance`: request bodies and usage errors (the node side is in test_node_governance)."""

from __future__ import annotations

from click.testing import CliRunner

from cli.governance import body_for
from cli.main import main


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
