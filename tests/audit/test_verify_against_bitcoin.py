"""An anchored export checked against a real (regtest) Bitcoin node: it verifies while the anchor's
block is in the node's best chain, and fails naming the block once that block is invalidated."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import exitcodes
from cli.main import main
from peerdb.anchor.hashes import sha256d, to_display
from peerdb.anchor.regtest import RegtestNode
from peerdb.audit.bundle import BtcPart, read_items
from peerdb.localnet import LocalConsortium

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

MINE_EVERY_S = 1.0


def test_anchored_export_verifies_against_bitcoin_until_the_anchor_is_reorged_away(
        tmp_path: Path, regtest: RegtestNode) -> None:
    params = {"heartbeat_ms": 200, "turn_timeout_ms": 1000, "anchor_interval_s": 1}
    out = tmp_path / "anchored.pdbaudit"
    runner = CliRunner()
    with LocalConsortium(tmp_path / "c", members=1, params=params, bitcoin_rpc=regtest.wallet_url) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        node = net.nodes["firm-a"]
        with node.client() as c:
            r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "books", "key": "k", "value": "v"}],
                                          "wait": "unanimous_signed", "timeout_s": 30})
            assert r.status_code == 200 and r.json()["wait"]["reached"], r.text
        last_mined = [0.0]

        def anchored() -> bool:
            if time.monotonic() - last_mined[0] >= MINE_EVERY_S:
                regtest.mine(1)
                last_mined[0] = time.monotonic()
            return int(net.status("firm-a")["heads"]["anchored"]) >= 1

        net.wait_for(anchored, 90, "an anchored block")
        exported = runner.invoke(main, ["--config", str(node.config), "audit", "export", "--out", str(out)])
        assert exported.exit_code == exitcodes.OK, exported.output
    verified = runner.invoke(main, ["--json", "audit", "verify", str(out), "--bitcoin-rpc", regtest.rpc_url])
    assert verified.exit_code == exitcodes.OK, verified.output
    report = json.loads(verified.output[verified.output.index("{"):])
    assert report["bitcoin_node_checked"] is True and report["anchored_blocks"] >= 1
    assert report["heads"]["anchored"] >= 1

    part = next(item for item in read_items(io.BytesIO(out.read_bytes())) if isinstance(item, BtcPart))
    anchor_block = to_display(sha256d(part.headers[0]))
    rpc = regtest.rpc()
    rpc.call("invalidateblock", anchor_block)
    try:
        refused = runner.invoke(main, ["--json", "audit", "verify", str(out), "--bitcoin-rpc", regtest.rpc_url])
    finally:
        rpc.call("reconsiderblock", anchor_block)
    assert refused.exit_code == exitcodes.VERIFY_FAILED, refused.output
    failure = json.loads(refused.output[refused.output.index("{"):])
    assert failure["where"].startswith("block ")
    assert f"block {anchor_block} is not in the bitcoin node's best chain" in failure["reason"]
