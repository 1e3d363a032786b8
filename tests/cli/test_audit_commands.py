"""``peerdb audit verify`` and ``export`` as a user runs them: exit codes, output, and one export
through the real API of a running single-member consortium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import exitcodes
from cli.main import main
from peerdb.audit.bundle import BlockEntry
from tests.helpers.bundles import assemble, build_books, change_block, items_of

GOOD = build_books().bundle()


def test_verify_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "good.pdbaudit"
    path.write_bytes(GOOD)
    result = CliRunner().invoke(main, ["audit", "verify", str(path), "--check-pow", "--network", "regtest"])
    assert result.exit_code == exitcodes.OK, result.output
    assert "OK: bundle of m0" in result.output and "blocks: 7 (6 on the best chain, 1 on side branches)" in result.output
    assert "proof of work checked" in result.output


def test_verify_json_names_the_first_failure_and_exits_4(tmp_path: Path) -> None:
    items = items_of(GOOD)
    change_block(4, lambda e: BlockEntry(e.raw, e.header, e.best, e.sigs + (("mallory", bytes(64)),),
                                         e.objections, e.anchor))(items)
    path = tmp_path / "bad.pdbaudit"
    path.write_bytes(assemble(items))
    result = CliRunner().invoke(main, ["audit", "verify", str(path), "--json"])
    assert result.exit_code == exitcodes.VERIFY_FAILED
    answer = json.loads(result.output[result.output.index("{"):])
    assert answer["ok"] is False and answer["where"].startswith("block 4 (")
    assert "mallory" in answer["reason"]
    text = CliRunner().invoke(main, ["audit", "verify", str(path)])
    assert text.exit_code == exitcodes.VERIFY_FAILED and "verification FAILED: block 4" in text.output


def test_verify_json_reports_the_numbers(tmp_path: Path) -> None:
    path = tmp_path / "good.pdbaudit"
    path.write_bytes(GOOD)
    result = CliRunner().invoke(main, ["--json", "audit", "verify", str(path), "--threads", "1"])
    assert result.exit_code == exitcodes.OK, result.output
    answer = json.loads(result.output[result.output.index("{"):])
    assert answer["ok"] is True and answer["transactions"] == 14 and answer["threads"] == 1
    assert answer["excluded"][0]["member"] == "m1" and answer["heads"]["anchored"] == 4


def test_export_needs_a_node_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "x.pdbaudit"
    out.write_bytes(b"keep me")
    refused = CliRunner().invoke(main, ["--api", "127.0.0.1:9", "--token", "t" * 20, "audit", "export", "--out", str(out)])
    assert refused.exit_code == exitcodes.USAGE and out.read_bytes() == b"keep me"
    unreachable = CliRunner().invoke(main, ["--api", "127.0.0.1:9", "--token", "t" * 20, "audit", "export",
                                            "--out", str(tmp_path / "y.pdbaudit")])
    assert unreachable.exit_code == exitcodes.UNREACHABLE
    assert not (tmp_path / "y.pdbaudit").exists() and not (tmp_path / "y.pdbaudit.part").exists()


@pytest.mark.slow
def test_export_from_a_running_node_verifies(tmp_path: Path) -> None:
    from peerdb.localnet import LocalConsortium

    with LocalConsortium(tmp_path / "c", members=1, params={"heartbeat_ms": 200, "turn_timeout_ms": 1000}) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        node = net.nodes["firm-a"]
        with node.client() as c:
            for i in range(3):
                r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "books", "key": f"k{i}",
                                                       "value": f"v{i}"}], "wait": "unanimous_signed",
                                              "timeout_s": 30})
                assert r.status_code == 200 and r.json()["wait"]["reached"], r.text
        net.wait_for(lambda: net.status("firm-a")["heads"]["tentative"] >= 5, 30, "a few blocks")
        out = tmp_path / "firm-a.pdbaudit"
        runner = CliRunner()
        exported = runner.invoke(main, ["--config", str(node.config), "--json", "audit", "export", "--out", str(out)])
        assert exported.exit_code == exitcodes.OK, exported.output
        summary = json.loads(exported.output[exported.output.index("{"):])
        assert summary["blocks"] >= 5 and summary["transactions"] == 3
        verified = runner.invoke(main, ["--json", "audit", "verify", str(out)])
        assert verified.exit_code == exitcodes.OK, verified.output
        report = json.loads(verified.output[verified.output.index("{"):])
        assert report["exporter"] == "firm-a" and report["transactions"] == 3
        assert report["blocks"] == summary["blocks"] and report["signatures"]["firm-a"] == summary["blocks"]
        height = summary["blocks"]
        net.wait_for(lambda: net.status("firm-a")["heads"]["tentative"] > height, 30, "a later block")
        later = tmp_path / "later.pdbaudit"
        again = runner.invoke(main, ["--config", str(node.config), "audit", "export", "--out", str(later)])
        assert again.exit_code == exitcodes.OK, again.output
        diff = runner.invoke(main, ["audit", "diff", str(out), str(later)])
        assert diff.exit_code == exitcodes.OK, diff.output
        assert f"up to height {height}" in diff.output and "A lacks best-chain heights" in diff.output
