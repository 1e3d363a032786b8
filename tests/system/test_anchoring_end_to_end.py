"""Anchoring end to end: four ``peerdb node run`` daemons anchoring into the session's regtest node.

A block is unanimous only when every member signed it *and* it is anchored. Here the members
sign a write at once (unanimous-signed), the anchor transaction goes out, and as long as no
Bitcoin block confirms it the write stays short of unanimous on every member; one mined block
later it is unanimous everywhere. The exported books then verify against the Bitcoin node, and
stop verifying once the anchor's Bitcoin block leaves the node's best chain
(``invalidateblock``; undone with ``reconsiderblock`` so the shared node is left as it was).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peerdb.anchor.hashes import sha256d, to_display
from peerdb.anchor.proof import AnchorProof
from peerdb.anchor.regtest import RegtestNode
from peerdb.audit.errors import AuditFailure
from peerdb.audit.verify import VerifyOptions, verify_bundle
from peerdb.localnet import LocalConsortium, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

PARAMS = {"heartbeat_ms": 200, "turn_timeout_ms": 1000, "anchor_interval_s": 2, "anchor_confirmations": 1}
WAIT_S = 60.0
"""Deadline for each step; every step normally takes a few seconds (anchor interval 2 s)."""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    try:
        poll_until(predicate, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def heads(net: LocalConsortium, name: str) -> dict[str, int]:
    result: dict[str, int] = net.status(name)["heads"]
    return result


def anchor_info(net: LocalConsortium, name: str, height: int) -> dict[str, Any]:
    with net.nodes[name].client() as c:
        r = c.get(f"/v1/anchors/{height}")
        assert r.status_code == 200, r.text
        info: dict[str, Any] = r.json()
        return info


def read_unanimous(net: LocalConsortium, name: str) -> dict[str, Any]:
    with net.nodes[name].client() as c:
        r = c.get("/v1/kv/ns/settled", params={"view": "unanimous"})
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer


def mempool(node: RegtestNode) -> set[str]:
    rpc = node.rpc()
    try:
        return set(rpc.call("getrawmempool"))
    finally:
        rpc.close()


def test_blocks_become_unanimous_only_after_the_anchor_confirms(
        tmp_path: Path, regtest: RegtestNode) -> None:
    regtest.mine(1)  # earlier tests' transactions out of the mempool: what appears there now is ours
    assert not mempool(regtest)
    with LocalConsortium(tmp_path / "c", params=PARAMS, bitcoin_rpc=regtest.wallet_url) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        names = list(net.nodes)
        with net.nodes["firm-a"].client() as c:
            r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": "settled", "value": "yes"}],
                                          "wait": "unanimous_signed", "timeout_s": 30})
            assert r.status_code == 200 and r.json()["wait"]["reached"] is True, r.text
            height = c.get(f"/v1/tx/{r.json()['accepted'][0]}").json()["height"]
        assert isinstance(height, int) and height >= 1
        wait_for(lambda: all(heads(net, n)["unanimous_signed"] >= height for n in names), "unanimous-signed everywhere")

        # Published, not confirmed: signed by all, yet not unanimous anywhere.
        wait_for(lambda: bool(mempool(regtest)), "an anchor transaction in the Bitcoin mempool")
        before = {n: heads(net, n) for n in names}
        for n, h in before.items():
            assert h["unanimous"] == 0 and h["anchored"] == 0, (n, h)
            assert h["unanimous"] < h["unanimous_signed"], (n, h)
            assert anchor_info(net, n, height)["anchored"] is False
            assert read_unanimous(net, n)["found"] is False  # the settled view ignores unanchored blocks

        # Confirm. An anchor published before the write's block existed cannot cover it; then
        # the next interval's anchor does, so mine again for each new anchor (bounded).
        for _ in range(6):
            regtest.mine(1)
            try:
                wait_for(lambda: all(heads(net, n)["unanimous"] >= height for n in names),
                         "unanimous after the anchor confirmed", timeout=15)
                break
            except AssertionError:
                wait_for(lambda: bool(mempool(regtest)), "the next anchor transaction")
        else:
            raise AssertionError(f"never unanimous at height {height}: {[heads(net, n) for n in names]}")
        for n in names:
            h = heads(net, n)
            assert height <= h["unanimous"] <= min(h["anchored"], h["unanimous_signed"]), (n, h)
            assert anchor_info(net, n, height)["anchored"] is True
            settled = read_unanimous(net, n)
            assert settled["found"] is True and settled["value_text"] == "yes" and settled["view"] == "unanimous"

        # The books of one member verify against the Bitcoin node ...
        with net.nodes["firm-b"].client(timeout=60, auditor=True) as c:
            response = c.get("/v1/audit/bundle")
            assert response.status_code == 200
            bundle = response.content
        proof_info = next(anchor_info(net, "firm-b", h) for h in range(height, 0, -1)
                          if anchor_info(net, "firm-b", h).get("proof"))
    rpc = regtest.rpc()
    try:
        report = verify_bundle(io.BytesIO(bundle), VerifyOptions(check_pow=False, bitcoin=rpc, threads=2))
        assert report.bitcoin_checked and report.anchored_blocks >= 1 and report.heads.unanimous >= height
        # ... and not once the anchor's Bitcoin block left the node's best chain.
        proof = AnchorProof.decode(base64.b64decode(proof_info["proof"]))
        anchor_block = to_display(sha256d(proof.headers[0]))
        rpc.call("invalidateblock", anchor_block)
        try:
            with pytest.raises(AuditFailure, match=r"not in the bitcoin node's best chain|unknown to the bitcoin node"):
                verify_bundle(io.BytesIO(bundle), VerifyOptions(check_pow=False, bitcoin=rpc, threads=2))
        finally:
            rpc.call("reconsiderblock", anchor_block)
        assert rpc.call("getblockheader", anchor_block)["confirmations"] > 0
    finally:
        rpc.close()
