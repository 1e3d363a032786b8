"""``peerdb`` against a real node: a one-member consortium (a real ``node run`` process) shared by
the module, and a two-member one with a member down for --wait timeouts.

What is checked is docs/cli.md: the text people read holds the key facts, --json prints the
API's shapes, and every failure has its documented exit code. Tests write distinct keys, so
their order does not matter.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import exitcodes
from cli.main import main
from peerdb.localnet import LocalConsortium, NodeProcess
from peerdb.node.config import load_node_config

pytestmark = pytest.mark.slow

FAST = {"heartbeat_ms": 200, "turn_timeout_ms": 1000}
CLEAN_ENV: dict[str, str | None] = {"PEERDB_CONFIG": None, "PEERDB_API": None, "PEERDB_TOKEN": None}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
WRITE_KEYS = {"accepted", "duplicates", "rejected"}
KV_KEYS = {"namespace", "key", "found", "value", "value_text", "written_at", "view", "height", "head_height"}
BLOCK_SUMMARY_KEYS = {"height", "hash", "round", "proposer", "time_ms", "tx_count", "status", "signers", "anchored"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with LocalConsortium(tmp_path_factory.mktemp("cli") / "c", members=1, params=FAST) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        net.wait_for(lambda: net.status("firm-a")["heads"]["tentative"] >= 3, 30, "three blocks (heartbeats)")
        yield net.nodes["firm-a"]


@pytest.fixture(scope="module")
def half_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """Two members, only firm-a running: majority (2 of 2) can never be reached."""
    with LocalConsortium(tmp_path_factory.mktemp("cli2") / "c", members=2, params=FAST) as net:
        net.write_files()
        net.start("firm-a")
        net.wait_ready(["firm-a"])
        yield net.nodes["firm-a"]


def cli(node: NodeProcess, *args: str, **kwargs: Any) -> Result:
    return CliRunner(env=CLEAN_ENV).invoke(main, ["-c", str(node.config), *args], prog_name="peerdb", **kwargs)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def ok_json(result: Result) -> Any:
    return json.loads(ok(result))


def put(node: NodeProcess, ns: str, key: str, value: str) -> dict[str, Any]:
    answer: dict[str, Any] = ok_json(cli(node, "put", ns, key, value, "--wait", "majority", "--json"))
    return answer


# --- writes and reads ----------------------------------------------------------------------------

def test_put_wait_majority_reports_the_level(node: NodeProcess) -> None:
    text = ok(cli(node, "put", "books", "2026-Q3", '{"cash": 1200000}', "--wait", "majority"))
    assert re.fullmatch(r"put: accepted [0-9a-f]{16}; majority reached\n", text), text
    answer = put(node, "books", "2026-Q3", '{"cash": 1300000}')
    assert WRITE_KEYS <= set(answer) and answer["duplicates"] == [] and answer["rejected"] == []
    assert len(answer["accepted"]) == 1 and HEX64.match(answer["accepted"][0])
    wait = answer["wait"]
    assert wait["view"] == "majority" and wait["reached"] is True
    assert {"tentative", "majority"} <= set(wait["levels_ms"])
    assert all(isinstance(ms, (int, float)) and ms >= 0 for ms in wait["levels_ms"].values())


def test_put_without_wait_only_reports_acceptance(node: NodeProcess) -> None:
    text = ok(cli(node, "put", "books", "nowait", "x"))
    assert re.fullmatch(r"put: accepted [0-9a-f]{16}\n", text), text
    answer = ok_json(cli(node, "--json", "put", "books", "nowait2", "x"))
    assert "wait" not in answer and len(answer["accepted"]) == 1


def test_put_then_get_text_and_json(node: NodeProcess) -> None:
    written = put(node, "books", "cash", "1200000")
    answer = ok_json(cli(node, "get", "books", "cash", "--json"))
    assert KV_KEYS <= set(answer)
    assert answer["found"] is True and answer["value_text"] == "1200000"
    assert base64.b64decode(answer["value"]) == b"1200000"
    assert answer["view"] == "majority" and answer["namespace"] == "books" and answer["key"] == "cash"
    assert 1 <= answer["written_at"] <= answer["height"] <= answer["head_height"]
    assert written["accepted"]
    text = ok(cli(node, "get", "books", "cash"))
    match = re.fullmatch(r"1200000\n  \(majority view at height (\d+), written at (\d+)\)\n", text)
    assert match, text
    assert int(match[2]) == answer["written_at"] and int(match[1]) >= answer["height"]


def test_get_from_other_views_and_at_an_earlier_height(node: NodeProcess) -> None:
    put(node, "books", "period", "v1")
    first = ok_json(cli(node, "get", "books", "period", "--view", "tentative", "--json"))
    put(node, "books", "period", "v2")
    latest = ok_json(cli(node, "get", "books", "period", "--view", "unanimous-signed", "--json"))
    assert latest["view"] == "unanimous_signed" and latest["value_text"] == "v2"
    then = ok_json(cli(node, "get", "books", "period", "--view", "tentative", "--at", str(first["written_at"]),
                       "--json"))
    assert then["value_text"] == "v1" and then["height"] == first["written_at"] and then["view"] == "tentative"
    assert then["head_height"] >= latest["written_at"] > then["height"]


def test_get_missing_key_exits_0_with_found_false(node: NodeProcess) -> None:
    answer = ok_json(cli(node, "get", "books", "never-written", "--json"))
    assert answer["found"] is False and answer["value"] is None and answer["value_text"] is None
    text = ok(cli(node, "get", "books", "never-written"))
    assert re.fullmatch(r"\(not found in the majority view at height \d+\)\n", text), text


def test_get_above_the_view_head_is_refused_by_the_node(node: NodeProcess) -> None:
    result = cli(node, "get", "books", "cash", "--at", "999999")
    assert result.exit_code == exitcodes.REJECTED and "node refused: height 999999 is above" in result.stderr


def test_delete_and_history(node: NodeProcess) -> None:
    put(node, "books", "draft", "first")
    put(node, "books", "draft", "second")
    deleted = ok_json(cli(node, "delete", "books", "draft", "--wait", "majority", "--json"))
    assert deleted["wait"]["reached"] is True and len(deleted["accepted"]) == 1
    history = ok_json(cli(node, "history", "books", "draft", "--json"))
    assert history["namespace"] == "books" and history["key"] == "draft"
    versions = history["versions"]
    assert [v["value_text"] for v in versions] == ["first", "second", None]
    assert [v["deleted"] for v in versions] == [False, False, True]
    assert [v["height"] for v in versions] == sorted(v["height"] for v in versions)
    for v in versions:
        assert HEX64.match(v["block"]) and v["status"] in ("majority", "unanimous_signed")
    lines = ok(cli(node, "history", "books", "draft")).splitlines()
    assert len(lines) == 3 and lines[0].split() == [str(versions[0]["height"]), versions[0]["status"], "first"]
    assert lines[2].endswith("(deleted)")
    gone = ok_json(cli(node, "get", "books", "draft", "--json"))
    assert gone["found"] is False
    assert ok(cli(node, "history", "books", "nothing-here")) == "(no versions)\n"


def test_get_and_history_verify_their_proofs_with_the_consortium_file(node: NodeProcess) -> None:
    put(node, "books", "proven", "42")
    text = ok(cli(node, "get", "books", "proven", "--verify"))
    assert re.search(r"^42\n  \(majority view at height \d+, written at \d+\)\n  VERIFIED: (majority|unanimous_signed) "
                     r"at height \d+ \(block [0-9a-f]{16}\), signed by firm-a of firm-a", text), text
    answer = ok_json(cli(node, "get", "books", "proven", "--verify", "--json"))
    assert answer["verified"]["value"] == b"42".hex() and answer["verified"]["height"] == answer["height"]
    absent = ok(cli(node, "get", "books", "nowhere-proven", "--verify"))
    assert "(not found" in absent and "VERIFIED:" in absent
    history = ok(cli(node, "history", "books", "proven", "--verify"))
    assert "[verified: " in history


def test_verify_against_another_consortium_file_fails_naming_the_item(node: NodeProcess, tmp_path: Path) -> None:
    put(node, "books", "foreign", "1")
    other = tmp_path / "other.toml"
    text = load_node_config(node.config).consortium_file.read_text()
    other.write_text(text.replace('name = "', 'name = "x', 1))
    result = cli(node, "get", "books", "foreign", "--verify", "--consortium", str(other))
    assert result.exit_code == exitcodes.VERIFY_FAILED, result.output
    assert "verification FAILED: chain.sigs[firm-a]" in result.stderr


def test_propose_a_batch_file_as_one_transaction(node: NodeProcess, tmp_path: Path) -> None:
    put(node, "ledger", "old", "to be removed")
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([
        {"op": "put", "namespace": "ledger", "key": "a", "value": "1"},
        {"op": "put", "namespace": "ledger", "key": "raw", "value_b64": base64.b64encode(b"\xff\x00").decode()},
        {"op": "delete", "namespace": "ledger", "key": "old"}]))
    text = ok(cli(node, "propose", str(batch), "--wait", "majority"))
    assert re.fullmatch(r"batch: accepted [0-9a-f]{16}; majority reached\n", text), text
    a = ok_json(cli(node, "get", "ledger", "a", "--json"))
    raw = ok_json(cli(node, "get", "ledger", "raw", "--json"))
    old = ok_json(cli(node, "get", "ledger", "old", "--json"))
    assert a["value_text"] == "1" and not old["found"]
    assert a["written_at"] == raw["written_at"]  # one transaction, one block
    assert raw["value_text"] is None and raw["value"] == base64.b64encode(b"\xff\x00").decode()
    assert ok(cli(node, "get", "ledger", "raw")).startswith(f"(base64) {raw['value']}\n")
    block = ok_json(cli(node, "blocks", "show", str(a["written_at"]), "--json"))
    txs = [tx for tx in block["txs"] if any(op["key"] == "a" and op["namespace"] == "ledger" for op in tx["ops"])]
    assert len(txs) == 1 and [op["op"] for op in txs[0]["ops"]] == ["put", "put", "delete"]


def test_propose_from_stdin_json(node: NodeProcess) -> None:
    batch = json.dumps([{"op": "put", "namespace": "ledger", "key": "stdin", "value": "piped"}])
    answer = ok_json(cli(node, "propose", "-", "--wait", "majority", "--json", input=batch))
    assert answer["wait"]["reached"] is True and len(answer["accepted"]) == 1
    assert ok_json(cli(node, "get", "ledger", "stdin", "--json"))["value_text"] == "piped"


@pytest.mark.parametrize("ops, fragment", [
    ([{"op": "frob", "namespace": "books", "key": "k"}], "must be 'put' or 'delete', got 'frob'"),
    ([{"op": "put", "namespace": "Bad Name", "key": "k", "value": "v"}], "'Bad Name' is not a valid namespace"),
    ([{"op": "put", "namespace": "books", "key": "k"}], "a put needs 'value'"),
], ids=["unknown-op", "bad-namespace", "no-value"])
def test_propose_an_operation_the_node_refuses_exits_6(node: NodeProcess, tmp_path: Path,
                                                       ops: list[dict[str, str]], fragment: str) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(ops))
    result = cli(node, "propose", str(batch))
    assert result.exit_code == exitcodes.REJECTED and result.stdout == "", result.output
    assert "node refused: " in result.stderr and fragment in result.stderr


def test_put_into_an_invalid_namespace_exits_6(node: NodeProcess) -> None:
    result = cli(node, "put", "NOT OK", "k", "v")
    assert result.exit_code == exitcodes.REJECTED and "node refused" in result.stderr and "NOT OK" in result.stderr


def test_wait_for_a_view_that_cannot_come_exits_7(node: NodeProcess) -> None:
    # Without anchoring nothing becomes unanimous: the docs' own example of exit 7.
    result = cli(node, "put", "books", "x", "y", "--wait", "unanimous", "--timeout", "0.3")
    assert result.exit_code == exitcodes.TIMEOUT, result.output
    assert re.fullmatch(r"put: accepted [0-9a-f]{16}; unanimous NOT reached yet \(still pending\)\n", result.stdout)


# --- node choice and tokens ------------------------------------------------------------------------

def test_wrong_token_exits_5_and_says_to_check_it(node: NodeProcess) -> None:
    for args in (["--api", node.api, "--token", "wrong-token-wrong-token"], ["-c", str(node.config), "--token", "nope"]):
        result = CliRunner(env=CLEAN_ENV).invoke(main, [*args, "status"], prog_name="peerdb")
        assert result.exit_code == exitcodes.CONFIG, result.output
        assert "node refused" in result.stderr and "(check the token)" in result.stderr and result.stdout == ""


def test_api_and_token_options_and_environment_reach_the_node(node: NodeProcess) -> None:
    by_options = CliRunner(env=CLEAN_ENV).invoke(main, ["--api", node.api, "--token", node.token, "--json", "status"])
    assert ok_json(by_options)["member"] == "firm-a"
    by_env = CliRunner(env={**CLEAN_ENV, "PEERDB_CONFIG": str(node.config)}).invoke(main, ["status", "--json"])
    assert ok_json(by_env)["member"] == "firm-a"
    env_api = CliRunner(env={"PEERDB_CONFIG": None, "PEERDB_API": f"http://{node.api}", "PEERDB_TOKEN": node.token})
    assert ok_json(env_api.invoke(main, ["status", "--json"]))["member"] == "firm-a"


# --- inspection --------------------------------------------------------------------------------------

def test_status_text_and_json(node: NodeProcess) -> None:
    put(node, "books", "status-probe", "x")
    s = ok_json(cli(node, "status", "--json"))
    assert {"member", "consortium", "consortium_id", "heads", "tip", "turn", "up_to_date", "mempool", "excluded",
            "peers", "alerts"} <= set(s)
    assert s["member"] == "firm-a" and s["consortium"] == "local" and HEX64.match(s["consortium_id"])
    assert set(s["heads"]) == {"tentative", "majority", "unanimous_signed", "unanimous", "anchored"}
    assert s["heads"]["tentative"] >= s["heads"]["majority"] >= 1 and s["heads"]["unanimous"] == 0
    assert s["peers"] == {} and s["excluded"] == [] and s["turn"]["proposer"] == "firm-a"
    text = ok(cli(node, "status"))
    assert text.startswith(f"firm-a in consortium local ({s['consortium_id'][:16]})\n")
    assert re.search(r"^heads: tentative \d+  majority \d+  unanimous-signed \d+  unanimous 0  anchored 0$", text, re.M)
    assert "up to date: no (not every block is unanimous yet)" in text
    assert re.search(r"^turn: height \d+ round \d+ -> firm-a$", text, re.M)
    assert re.search(r"^pending transactions: \d+$", text, re.M)


def test_blocks_list_text_and_json(node: NodeProcess) -> None:
    put(node, "books", "blocks-probe", "x")
    answer = ok_json(cli(node, "blocks", "list", "--from", "1", "--to", "3", "--json"))
    assert answer["tip"] >= 3 and [b["height"] for b in answer["blocks"]] == [1, 2, 3]
    for b in answer["blocks"]:
        assert set(b) == BLOCK_SUMMARY_KEYS and HEX64.match(b["hash"]) and b["proposer"] == "firm-a"
        assert b["signers"] == ["firm-a"] and b["anchored"] is False
    lines = ok(cli(node, "blocks", "list", "--from", "1", "--to", "3")).splitlines()
    assert len(lines) == 3
    for line, b in zip(lines, answer["blocks"]):
        fields = line.split()
        assert fields[:3] == [str(b["height"]), b["hash"][:16], "firm-a"]
        assert fields[3:6] == [str(b["tx_count"]), "txs", b["status"]] and fields[6] == "firm-a"
        assert fields[7:9] == ["round", str(b["round"])]
    default = ok_json(cli(node, "blocks", "list", "--json"))
    assert default["blocks"][-1]["height"] == default["tip"] and len(default["blocks"]) <= 20


def test_blocks_show_by_height_and_by_hash(node: NodeProcess) -> None:
    put(node, "books", "show-me", "the money")
    height = ok_json(cli(node, "get", "books", "show-me", "--json"))["written_at"]
    block = ok_json(cli(node, "blocks", "show", str(height), "--json"))
    assert BLOCK_SUMMARY_KEYS | {"prev", "tx_root", "state_root", "evidence_root", "signatures", "objections",
                                 "evidence", "txs"} <= set(block)
    assert block["height"] == height and block["signatures"] == [{"member": "firm-a", "signed": True,
                                                                  "excluded": False}]
    assert block["tx_count"] == len(block["txs"]) >= 1
    assert ok_json(cli(node, "blocks", "show", block["hash"], "--json")) == block
    text = ok(cli(node, "blocks", "show", block["hash"]))
    assert text.startswith(f"block {height} {block['hash']}\n")
    assert f"  proposer firm-a round {block['round']} time_ms {block['time_ms']}" in text
    assert f"  prev {block['prev']}" in text and f"  status {block['status']}" in text
    assert re.search(r"^  signatures:\n    firm-a\s+signed$", text, re.M)
    assert f"  transactions ({block['tx_count']}):" in text
    assert re.search(r"^    [0-9a-f]{12} firm-a\s+put\s+books/show-me = the money$", text, re.M), text


def test_blocks_show_of_an_unknown_block_exits_6(node: NodeProcess) -> None:
    for ref in ("999999", "ab" * 32):
        result = cli(node, "blocks", "show", ref)
        assert result.exit_code == exitcodes.REJECTED and f"node refused: no block {ref}" in result.stderr


def test_evidence_list_and_show(node: NodeProcess) -> None:
    assert ok(cli(node, "evidence", "list")) == "(no evidence: nobody double-signed)\n"
    assert ok_json(cli(node, "evidence", "list", "--json")) == {"evidence": []}
    unknown = cli(node, "evidence", "show", "abcdef")
    assert unknown.exit_code == exitcodes.ERROR and "no evidence with id abcdef" in unknown.stderr


def test_anchors_list(node: NodeProcess) -> None:
    answer = ok_json(cli(node, "anchors", "list", "--json"))
    assert answer == {"anchoring": None, "anchored_height": 0}  # no [bitcoin] section in this config
    assert ok(cli(node, "anchors", "list")) == (
        "anchored height: 0\nthis node does not anchor (no [bitcoin] section); it verifies the anchor proofs "
        "other members send\n")


def test_anchors_show(node: NodeProcess) -> None:
    # docs/cli.md and docs/api.md still say `anchors show` fails (no /v1/anchors/{ref}); the node serves it now.
    put(node, "books", "anchor-probe", "x")
    block = ok_json(cli(node, "blocks", "show", "1", "--json"))
    answer = ok_json(cli(node, "anchors", "show", "1", "--json"))
    assert answer["block"] == block["hash"] and answer["height"] == 1
    assert answer["anchored"] is False and answer["proof"] is None
    assert ok_json(cli(node, "anchors", "show", block["hash"], "--json")) == answer
    assert block["hash"] in ok(cli(node, "anchors", "show", "1"))
    text = ok(cli(node, "anchors", "show", block["hash"][:10]))
    assert text == f"block 1 {block['hash']}\n  not anchored yet: no Bitcoin transaction covers it (see `peerdb " \
                   "anchors list`)\n"
    assert not text.lstrip().startswith("{")
    bad = cli(node, "anchors", "show", "not-a-block")
    assert bad.exit_code == exitcodes.REJECTED and "node refused" in bad.stderr


# --- forks, objections, transactions, id prefixes ------------------------------------------------------

def test_blocks_show_by_hash_prefix(node: NodeProcess) -> None:
    block = ok_json(cli(node, "blocks", "show", "2", "--json"))
    assert ok_json(cli(node, "blocks", "show", block["hash"][:8], "--json")) == block
    short = cli(node, "blocks", "show", "abc")
    assert short.exit_code == exitcodes.REJECTED and "at least 4 hex digits" in short.stderr


def test_tx_by_prefix_says_where_it_is_and_which_views_it_reached(node: NodeProcess) -> None:
    txid = put(node, "books", "tx-probe", "x")["accepted"][0]
    full = ok_json(cli(node, "tx", txid, "--json"))
    assert full["txid"] == txid and full["status"] in ("majority", "unanimous_signed")
    assert full["views"]["tentative"] is True and full["views"]["majority"] is True
    assert full["views"]["unanimous"] is False and full["anchored"] is False
    block = ok_json(cli(node, "blocks", "show", str(full["height"]), "--json"))
    assert full["block"] == block["hash"] and full["round"] == block["round"]
    assert [t["txid"] for t in block["txs"]][full["index"]] == txid
    assert ok_json(cli(node, "tx", txid[:8], "--json")) == full
    text = ok(cli(node, "tx", txid[:8]))
    assert text.startswith(f"transaction {txid}\n  in block {full['height']} {full['block']} (round {full['round']}, "
                           "proposed by firm-a)")
    assert "views reached: tentative, majority" in text and "not anchored yet" in text
    unknown = cli(node, "tx", "00" * 32)
    assert unknown.exit_code == exitcodes.REJECTED and "neither pending nor on the best chain" in unknown.stderr
    bad = cli(node, "tx", "xyz1")
    assert bad.exit_code == exitcodes.REJECTED and "not a hex id" in bad.stderr


def test_forks_and_objections_on_a_quiet_chain(node: NodeProcess) -> None:
    forks = ok_json(cli(node, "forks", "--json"))
    assert forks["side_branches"] == [] and forks["refused"] == [] and forks["reorgs"] == []
    assert forks["height"] >= 1 and HEX64.match(forks["tip"])
    text = ok(cli(node, "forks"))
    assert re.match(r"best chain: tip \d+ [0-9a-f]{16}, weight \d+ signatures; final \(settled\) height \d+\n", text)
    assert "no side branch: every block this node holds is on its best chain" in text
    assert ok(cli(node, "objections")) == "(no objections)\n"
    assert ok_json(cli(node, "objections", "--json")) == {"objections": []}


def test_governance_show_by_prefix_in_words(node: NodeProcess) -> None:
    answer = ok_json(cli(node, "governance", "propose", "namespace", "--namespace", "cli-probe", "--writer", "*", "--reader", "*",
                         "--note", "a probe", "--wait", "majority", "--json"))
    pid = answer["proposal"]
    shown = ok_json(cli(node, "governance", "show", pid[:8], "--json"))
    assert shown["id"] == pid and shown["kind"] == "set_namespace"
    text = ok(cli(node, "governance", "show", pid[:8]))
    assert f"proposal {pid}\n" in text
    assert "change: namespace cli-probe: writers everyone; readers everyone\n" in text


# --- audit -----------------------------------------------------------------------------------------------

def test_audit_export_verify_and_a_corrupted_copy(node: NodeProcess, tmp_path: Path) -> None:
    put(node, "books", "audited", "yes")
    bundle = tmp_path / "firm-a.pdbaudit"
    exported = ok_json(cli(node, "audit", "export", "--out", str(bundle), "--json"))
    assert set(exported) == {"file", "bytes", "blocks", "transactions", "signatures", "objections", "evidence",
                             "anchored_blocks", "bitcoin_transactions"}
    assert exported["file"] == str(bundle) and exported["bytes"] == bundle.stat().st_size
    assert exported["blocks"] >= 2 and exported["transactions"] >= 1 and exported["signatures"] >= exported["blocks"]
    assert not bundle.with_name(bundle.name + ".part").exists()

    text = ok(cli(node, "audit", "verify", str(bundle)))
    assert text.startswith("OK: bundle of firm-a in consortium local") and "verifies" in text
    report = ok_json(cli(node, "audit", "verify", str(bundle), "--json"))
    assert report["ok"] is True and report["file"] == str(bundle)

    again = cli(node, "audit", "export", "--out", str(bundle))
    assert again.exit_code == exitcodes.USAGE and "--force" in again.stderr

    data = bundle.read_bytes()
    flipped = tmp_path / "flipped.pdbaudit"
    flipped.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x01]) + data[len(data) // 2 + 1:])
    truncated = tmp_path / "truncated.pdbaudit"
    truncated.write_bytes(data[:-100])
    for broken in (flipped, truncated):
        result = CliRunner().invoke(main, ["audit", "verify", str(broken)])
        assert result.exit_code == exitcodes.VERIFY_FAILED, (broken, result.output)
        assert "verification FAILED" in result.stderr
        failed = CliRunner().invoke(main, ["audit", "verify", str(broken), "--json"])
        assert failed.exit_code == exitcodes.VERIFY_FAILED
        answer = json.loads(failed.stdout)
        assert answer["ok"] is False and answer["file"] == str(broken) and answer["reason"]


def test_audit_export_of_one_namespace_verifies(node: NodeProcess, tmp_path: Path) -> None:
    put(node, "books", "ns-audited", "1")
    put(node, "other", "not-exported", "secret-ish")
    bundle = tmp_path / "books.pdbaudit"
    exported = ok_json(cli(node, "audit", "export", "--namespace", "books", "--out", str(bundle), "--json"))
    assert exported["namespace"] == "books" and exported["blocks"] >= 2
    assert b"secret-ish" not in bundle.read_bytes()
    report = ok_json(cli(node, "audit", "verify", str(bundle), "--json"))
    assert report["ok"] is True and report["namespace"] == "books" and len(report["namespace_root"]) == 64
    refused = cli(node, "audit", "export", "--namespace", "Not A Name", "--out", str(tmp_path / "x"))
    assert refused.exit_code == exitcodes.REJECTED and "namespace" in refused.stderr


# --- a member down ---------------------------------------------------------------------------------------

def test_wait_majority_times_out_with_a_member_down(half_down: NodeProcess) -> None:
    result = cli(half_down, "put", "books", "k", "v", "--wait", "majority", "--timeout", "0.3")
    assert result.exit_code == exitcodes.TIMEOUT, result.output
    assert re.fullmatch(r"put: accepted [0-9a-f]{16}; majority NOT reached yet \(still pending\)\n", result.stdout)
    as_json = cli(half_down, "propose", "-", "--wait", "majority", "--timeout", "0.3", "--json",
                  input='[{"op": "put", "namespace": "books", "key": "k2", "value": "v"}]')
    assert as_json.exit_code == exitcodes.TIMEOUT
    wait = json.loads(as_json.stdout)["wait"]
    assert wait["view"] == "majority" and wait["reached"] is False and "still pending" in wait["message"]
    tentative = ok_json(cli(half_down, "get", "books", "k", "--view", "tentative", "--json"))
    majority = ok_json(cli(half_down, "get", "books", "k", "--json"))
    assert majority["found"] is False and majority["height"] == 0
    assert tentative["view"] == "tentative"  # firm-a may already have proposed it in its own turn


def test_status_names_the_member_that_is_down(half_down: NodeProcess) -> None:
    text = ok(cli(half_down, "status"))
    assert "peers: firm-b DOWN" in text
    assert ok_json(cli(half_down, "status", "--json"))["peers"] == {"firm-b": False}
