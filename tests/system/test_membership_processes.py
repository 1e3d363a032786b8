"""Membership changes on four running `peerdb node run` processes over TLS, through the CLI an
operator would use. A fifth firm joins (keygen with a certificate, a proposal, four votes, a node
started with ``joining = true`` from the founding consortium file) while writes keep flowing; a
member key is rotated and the exported books still verify; a node that was offline across its
own rotation gets back in; and a removed member's node says so and stops.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import exitcodes
from cli.main import main
from peerdb.localnet import LocalConsortium, NodeProcess, free_ports

pytestmark = pytest.mark.slow

FAST = {"heartbeat_ms": 200, "turn_timeout_ms": 1000}


def cli(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(main, [*args, "--json"] if args[0] != "-c" else [*args[:2], "--json", *args[2:]])
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.output[result.output.index("{"):])
    return parsed


def write(net: LocalConsortium, name: str, key: str, wait: str = "majority") -> None:
    with net.nodes[name].client(timeout=45) as c:  # longer than timeout_s: the node answers first
        r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": key, "value": key}],
                                      "wait": wait, "timeout_s": 30})
        assert r.status_code == 200, r.text


def best_hash(net: LocalConsortium, name: str, height: int) -> str | None:
    with net.nodes[name].client() as c:
        r = c.get(f"/v1/blocks/{height}")
        return str(r.json()["hash"]) if r.status_code == 200 else None


def test_a_fifth_firm_joins_running_processes_while_writes_flow(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    with LocalConsortium(directory, params=FAST) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        founders = list(net.nodes)
        # The new firm makes its keys; its member certificate goes into the proposal.
        keys = directory / "keys"
        made = cli("keygen", "--out", str(keys / "firm-e.key"), "--name", "firm-e")
        client = cli("keygen", "--kind", "client", "--out", str(keys / "firm-e-client.key"))
        assert Path(str(made["certificate"])).exists()
        peer_port, api_port = free_ports(2)
        token = secrets.token_urlsafe(24)
        config = directory / "firm-e.toml"
        config.write_text(
            "[node]\nmember = \"firm-e\"\nconsortium = \"consortium.toml\"\njoining = true\n"
            "key_file = \"keys/firm-e.key\"\nclient_key_file = \"keys/firm-e-client.key\"\n"
            f"data_dir = \"data/firm-e\"\nlisten = \"127.0.0.1:{peer_port}\"\nsync = true\n\n"
            f"[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"{token}\"\n")
        net.nodes["firm-e"] = NodeProcess("firm-e", config, f"127.0.0.1:{api_port}", token, directory / "firm-e.log")
        # It may start before it is admitted: the members refuse it until then, it keeps trying.
        net.start("firm-e")
        net.wait_ready(["firm-e"])
        write(net, "firm-a", "before-0")

        proposal = cli("-c", str(net.nodes["firm-a"].config), "governance", "propose", "add", "--name", "firm-e",
                       "--cert", str(made["certificate"]), "--address", f"127.0.0.1:{peer_port}",
                       "--client", str(client["public"]), "--api", f"127.0.0.1:{api_port}",
                       "--note", "firm-e joins", "--wait", "majority")
        pid = str(proposal["proposal"])
        for i, name in enumerate(founders):
            write(net, name, f"during-{i}")
            cli("-c", str(net.nodes[name].config), "governance", "vote", pid, "--yes", "--wait", "majority")
        shown = cli("-c", str(net.nodes["firm-a"].config), "governance", "show", pid)
        assert shown["status"] == "passed", shown
        effective = int(str(shown["effective_height"]))

        def joined() -> bool:
            status = net.status("firm-e")
            return status["heads"]["unanimous_signed"] >= effective + 2 and "firm-e" in status["members"]
        net.wait_for(joined, 90, "firm-e caught up, admitted and counted in unanimity")
        # Its own client writes through its own node, to unanimity of all five.
        write(net, "firm-e", "from-firm-e", wait="unanimous_signed")
        for i in range(3):
            write(net, "firm-b", f"after-{i}", wait="unanimous_signed")
        with net.nodes["firm-a"].client() as c:
            block = c.get(f"/v1/blocks/{effective + 1}").json()
            signed = {s["member"]: s["signed"] for s in block["signatures"]}
            assert set(signed) == {*founders, "firm-e"} and all(signed.values()), block
            for key in ("before-0", "during-0", "from-firm-e", "after-2"):
                got = c.get(f"/v1/kv/ns/{key}", params={"view": "unanimous_signed"}).json()
                assert got["found"], (key, got)
        with net.nodes["firm-e"].client() as c:
            got = c.get("/v1/kv/ns/before-0").json()
            assert got["found"] and got["value_text"] == "before-0"
        log = net.nodes["firm-a"].log_path.read_text()
        assert "member_joined" in log and "firm-e" in log


def test_key_rotation_on_running_processes_then_audit_verify(tmp_path: Path) -> None:
    """firm-b rotates its member key on four TLS daemons: signing switches at the agreed height,
    its node restarts and is let in with the new certificate, and `peerdb audit verify` accepts
    the whole history (old blocks with the old key, new ones with the new key)."""
    directory = tmp_path / "c"
    with LocalConsortium(directory, params=FAST) as net:
        net.write_files()
        made = cli("keygen", "--out", str(directory / "keys" / "firm-b.next.key"), "--name", "firm-b")
        config = net.nodes["firm-b"].config
        text = config.read_text()
        config.write_text(text.replace('key_file = "keys/firm-b.key"\n',
                                       'key_file = "keys/firm-b.key"\nextra_key_files = ["keys/firm-b.next.key"]\n'))
        assert "extra_key_files" in config.read_text()
        net.start_all()
        net.wait_ready()
        for i in range(3):
            write(net, "firm-a", f"old-{i}", wait="unanimous_signed")
        proposal = cli("-c", str(config), "governance", "propose", "rotate", "--name", "firm-b",
                       "--cert", str(made["certificate"]), "--note", "yearly rotation", "--wait", "majority")
        pid = str(proposal["proposal"])
        for name in net.nodes:
            cli("-c", str(net.nodes[name].config), "governance", "vote", pid, "--yes", "--wait", "majority")
        shown = cli("-c", str(net.nodes["firm-a"].config), "governance", "show", pid)
        assert shown["status"] == "passed", shown
        effective = int(str(shown["effective_height"]))
        net.wait_for(lambda: net.status("firm-a")["heads"]["unanimous_signed"] >= effective + 2, 60,
                     "unanimity past the rotation (firm-b signing with its new key)")
        # A restart: firm-b connects with the new key's certificate, and signs on.
        net.stop("firm-b")
        net.start("firm-b")
        net.wait_ready(["firm-b"])
        for i in range(3):
            write(net, "firm-b", f"new-{i}", wait="unanimous_signed")
        with net.nodes["firm-a"].client() as c:
            consortium = c.get("/v1/consortium").json()
        [firm_b] = [m for m in consortium["members"] if m["name"] == "firm-b"]
        assert firm_b["key"] == made["public"]
        bundle = tmp_path / "firm-c.pdbaudit"
        runner = CliRunner()
        exported = runner.invoke(main, ["--config", str(net.nodes["firm-c"].config), "audit", "export",
                                        "--out", str(bundle)])
        assert exported.exit_code == 0, exported.output
        verified = runner.invoke(main, ["--json", "audit", "verify", str(bundle)])
        assert verified.exit_code == 0, verified.output
        report = json.loads(verified.output[verified.output.index("{"):])
        assert report["transactions"] >= 6 + 5  # the writes plus the proposal and four votes
        history = report["key_history"]["firm-b"]
        assert [entry[1] if isinstance(entry, list) else entry["key"] for entry in history][-1] == made["public"]
        assert len(history) == 2, history


def test_a_node_offline_across_its_own_rotation_gets_back_in(tmp_path: Path) -> None:
    """firm-b votes for its own rotation and goes down; the others pass it and move on. On
    restart its chain still has the old key in force, which its peers no longer accept: it
    presents its other key on the next dial, is let in, catches up and signs with the new key."""
    directory = tmp_path / "c"
    with LocalConsortium(directory, params=FAST) as net:
        net.write_files()
        made = cli("keygen", "--out", str(directory / "keys" / "firm-b.next.key"), "--name", "firm-b")
        config = net.nodes["firm-b"].config
        config.write_text(config.read_text().replace(
            'key_file = "keys/firm-b.key"\n', 'key_file = "keys/firm-b.key"\nextra_key_files = ["keys/firm-b.next.key"]\n'))
        net.start_all()
        net.wait_ready()
        proposal = cli("-c", str(config), "governance", "propose", "rotate", "--name", "firm-b",
                       "--cert", str(made["certificate"]), "--wait", "majority")
        pid = str(proposal["proposal"])
        cli("-c", str(config), "governance", "vote", pid, "--yes", "--wait", "majority")
        net.stop("firm-b")
        for name in ("firm-a", "firm-c", "firm-d"):
            cli("-c", str(net.nodes[name].config), "governance", "vote", pid, "--yes", "--wait", "majority")
        shown = cli("-c", str(net.nodes["firm-a"].config), "governance", "show", pid)
        assert shown["status"] == "passed", shown
        effective = int(str(shown["effective_height"]))
        net.wait_for(lambda: net.status("firm-a")["heads"]["tentative"] >= effective + 2, 60, "past the rotation")
        net.start("firm-b")
        net.wait_ready(["firm-b"])
        # Caught up onto the consortium's chain (not a fork of its own, which it could grow alone).
        net.wait_for(lambda: best_hash(net, "firm-b", effective + 2) == best_hash(net, "firm-a", effective + 2),
                     60, "firm-b on the others' chain past the rotation")
        # Unanimity includes firm-b again: its signatures, now with the new key, verify at every member.
        write(net, "firm-a", "after-return", wait="unanimous_signed")
        assert net.status("firm-b")["alerts"] == [] or all(a["kind"] != "key_missing" for a in net.status("firm-b")["alerts"])


def test_a_removed_members_node_says_so_and_stops_with_its_own_exit_code(tmp_path: Path) -> None:
    """firm-a proposes firm-c's removal and firm-b approves (proposing is firm-a's yes; firm-c
    does not vote on its own removal). firm-c's node does not go on showing a stalled chain and
    peers down: it raises the ``removed`` alert (its hook gets it), logs why, and exits 9, which
    the systemd unit does not restart."""
    directory = tmp_path / "c"
    with LocalConsortium(directory, members=3, params=FAST) as net:
        net.write_files()
        alerts = tmp_path / "firm-c-alerts.jsonl"
        config = net.nodes["firm-c"].config
        config.write_text(config.read_text() + f'\n[alerts]\ncommand = "cat >> {alerts}; echo >> {alerts}"\n')
        net.start_all()
        net.wait_ready()
        write(net, "firm-c", "before", wait="unanimous_signed")
        proposal = cli("-c", str(net.nodes["firm-a"].config), "governance", "propose", "remove", "--member", "firm-c",
                       "--note", "firm-c leaves", "--wait", "majority")
        pid = str(proposal["proposal"])
        cli("-c", str(net.nodes["firm-b"].config), "governance", "vote", pid, "--yes", "--wait", "majority")
        shown = cli("-c", str(net.nodes["firm-a"].config), "governance", "show", pid)
        assert shown["status"] == "passed", shown
        effective = int(str(shown["effective_height"]))
        node = net.nodes["firm-c"]
        net.wait_for(lambda: not node.running(), 90, "firm-c's node to stop")
        assert node.proc is not None and node.proc.returncode == exitcodes.REMOVED, node.log_tail()
        log = node.log_path.read_text()
        assert f"firm-c was removed from the consortium at height {effective}" in log
        raised = [json.loads(line) for line in alerts.read_text().splitlines() if line.strip()]
        kinds = [a["kind"] for a in raised]
        assert "removed" in kinds and set(kinds[kinds.index("removed"):]) == {"removed"}, raised
        assert f"at height {effective}" in raised[kinds.index("removed")]["message"]
        write(net, "firm-a", "after", wait="unanimous_signed")  # the others go on without it
