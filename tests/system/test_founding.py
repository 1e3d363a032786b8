"""Three firms found a consortium by the procedure of docs/operations.md ("Founding a consortium
across firms"), each in its own directory as on its own machine, with the documented commands
and nothing written by hand; then run it, anchoring into a regtest Bitcoin node as the
procedure's trial setup says (one regtest node, a wallet per firm funded by the coordinator,
who mines), and audit it.

The commands run as separate processes in each firm's directory (``python -m cli`` is the
``peerdb`` command), exactly as an operator types them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from peerdb.anchor.regtest import RegtestNode
from peerdb.anchor.rpc import BitcoinRPC
from peerdb.localnet import STOP_GRACE_S, free_ports, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

ROOT = Path(__file__).resolve().parents[2]
FIRMS = ("firm-a", "firm-b", "firm-c")
TRIAL_PARAMS = ("heartbeat_ms=200", "turn_timeout_ms=1000", "anchor_interval_s=2", "anchor_confirmations=1")
"""Quick turns and anchors, so the trial settles in seconds."""
WAIT_S = 90.0
MINE_EVERY_S = 1.0
"""The coordinator's miner: regtest makes no blocks by itself."""


def peerdb(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERDB_")}
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**env, "PYTHONPATH": str(ROOT)})
    if check:
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done


def peerdb_json(cwd: Path, *args: str) -> Any:
    return json.loads(peerdb(cwd, "--json", *args).stdout)


def mine_until(regtest: RegtestNode, stop: threading.Event) -> None:
    """The coordinator's miner for the trial: a block every MINE_EVERY_S until ``stop``."""
    while not stop.wait(MINE_EVERY_S):
        regtest.mine(1)


def test_three_firms_found_a_consortium_by_the_documented_commands_and_run_it(
        tmp_path: Path, regtest: RegtestNode) -> None:
    ports = free_ports(2 * len(FIRMS))
    dirs = {firm: tmp_path / firm for firm in FIRMS}
    coordinator = tmp_path / "coordinator"
    coordinator.mkdir()

    # 1. Each firm, on its own machine: keys and member card; the card goes to the coordinator.
    for i, firm in enumerate(FIRMS):
        dirs[firm].mkdir()
        made = peerdb_json(dirs[firm], "member", "init", "--name", firm, "--address", f"127.0.0.1:{ports[i]}")
        assert made["card"] == f"{firm}.card"
        shutil.copy(dirs[firm] / f"{firm}.card", coordinator)

    # 2. The coordinator writes the consortium file from the cards (their order: the turn order).
    cards = [arg for firm in FIRMS for arg in ("--member-card", f"{firm}.card")]
    params = [arg for setting in TRIAL_PARAMS for arg in ("--param", setting)]
    founded = peerdb_json(coordinator, "consortium", "init", "--name", "trade-finance", *cards,
                          "--namespace", "deals:writers=*:readers=firm-a,firm-b:private", *params)
    cid = founded["id"]

    # 3. Each firm receives the file and compares its id with the others'.
    for firm in FIRMS:
        shutil.copy(coordinator / "consortium.toml", dirs[firm])
        assert peerdb_json(dirs[firm], "consortium", "show", "consortium.toml")["id"] == cid

    # 4. The Bitcoin side of the trial: one regtest node; each firm a wallet on it, funded by the
    #    coordinator, who mines.
    node_rpc = regtest.rpc()
    miner_rpc = BitcoinRPC(regtest.wallet_url)
    wallets = {firm: f"{firm}-{tmp_path.name}" for firm in FIRMS}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stop_mining = threading.Event()
    miner = threading.Thread(target=mine_until, args=(regtest, stop_mining), daemon=True)
    try:
        for firm, wallet in wallets.items():
            node_rpc.call("createwallet", wallet)
            address = BitcoinRPC(f"{regtest.rpc_url}/wallet/{wallet}").call("getnewaddress")
            miner_rpc.call("sendtoaddress", address, 1)
        regtest.mine(1)
        for firm, wallet in wallets.items():
            assert BitcoinRPC(f"{regtest.rpc_url}/wallet/{wallet}").call("getbalance") > 0

        # 5. Each firm writes its node config and starts its node.
        for i, firm in enumerate(FIRMS):
            peerdb(dirs[firm], "node", "init", "--member", firm, "--api-listen", f"127.0.0.1:{ports[len(FIRMS) + i]}",
                   "--bitcoin-rpc", f"{regtest.rpc_url}/wallet/{wallets[firm]}", "--no-check-pow")
        for firm in FIRMS:
            with open(dirs[firm] / "node.log", "wb") as log:
                processes[firm] = subprocess.Popen(
                    [sys.executable, "-m", "cli", "node", "run", "--config", f"{firm}.toml"], cwd=dirs[firm],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        miner.start()

        def up(firm: str) -> bool:
            assert processes[firm].poll() is None, (dirs[firm] / "node.log").read_text()[-3000:]
            done = peerdb(dirs[firm], "-c", f"{firm}.toml", "--json", "status", check=False)
            return done.returncode == 0 and all(json.loads(done.stdout)["peers"].values())
        for firm in FIRMS:
            poll_until(lambda: up(firm), WAIT_S, f"{firm}'s node up and connected")
            assert peerdb_json(dirs[firm], "-c", f"{firm}.toml", "status")["consortium_id"] == cid

        # 6. The firms use it: a write every member signs and that gets anchored; a private value
        #    only its readers read.
        a, b, c = (dirs[f] for f in FIRMS)
        put = peerdb_json(a, "-c", "firm-a.toml", "put", "books", "2026-Q3", '{"cash": 1200000}',
                          "--wait", "unanimous_signed", "--timeout", "60")
        assert put["wait"]["reached"] is True
        peerdb(a, "-c", "firm-a.toml", "put", "deals", "acme", "41.50", "--wait", "unanimous_signed")
        assert peerdb_json(b, "-c", "firm-b.toml", "get", "deals", "acme")["value_text"] == "41.50"
        refused = peerdb(c, "-c", "firm-c.toml", "get", "deals", "acme", check=False)
        assert refused.returncode == 6 and "firm-c may not read namespace 'deals'" in refused.stderr

        def settled(firm: str) -> bool:
            got = peerdb_json(dirs[firm], "-c", f"{firm}.toml", "get", "books", "2026-Q3", "--view", "unanimous")
            return bool(got["found"])
        for firm in FIRMS:
            poll_until(lambda: settled(firm), WAIT_S, f"the books settled (signed by all, anchored) at {firm}")
        height = peerdb_json(c, "-c", "firm-c.toml", "get", "books", "2026-Q3")["written_at"]
        anchored = next(info for h in range(height, height + 200)
                        if (info := peerdb_json(c, "-c", "firm-c.toml", "anchors", "show", str(h)))["proof"])
        found = node_rpc.call("getrawtransaction", anchored["bitcoin_txid"], True)
        assert found["txid"] == anchored["bitcoin_txid"]
        checked = peerdb_json(c, "-c", "firm-c.toml", "anchors", "verify", str(height), "--bitcoin-rpc", regtest.rpc_url)
        assert checked["ok"] is True and checked["bitcoin_checked"] is True
        assert checked["bitcoin_txid"] == anchored["bitcoin_txid"] or checked["anchored_by"] is not None

        # 7. An auditor gets firm-b's books with its auditor token and verifies them against Bitcoin.
        peerdb(b, "-c", "firm-b.toml", "audit", "export", "--out", "firm-b.pdbaudit")
        report = peerdb_json(b, "audit", "verify", "firm-b.pdbaudit", "--bitcoin-rpc", regtest.rpc_url)
        assert report["ok"] is True and report["exporter"] == "firm-b" and report["anchored_blocks"] >= 1
        assert report["members"] == list(FIRMS)
    except BaseException:
        for firm in processes:  # what each node saw, for a failure in CI that does not reproduce here
            print(f"--- {firm} node.log (tail) ---\n" + (dirs[firm] / "node.log").read_text()[-4000:])
        raise
    finally:
        stop_mining.set()
        if miner.is_alive():
            miner.join(timeout=30)
        for firm, proc in processes.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for wallet in wallets.values():
            try:
                node_rpc.call("unloadwallet", wallet)  # leave the session's node as it was
            except Exception:  # noqa: BLE001 - a wallet not created because an earlier step failed
                pass
        node_rpc.close()
        miner_rpc.close()
    for firm, proc in processes.items():
        assert proc.returncode == 0, (firm, (dirs[firm] / "node.log").read_text()[-2000:])
