"""Anchoring as wired into the node (peerdb/node/anchoring.py):

- the receiving side (:class:`~peerdb.node.anchoring.AnchorBook`) that every member runs on
  proofs gossiped by the duty member: a bad proof is refused with a logged reason and marks
  nothing anchored; a good one is stored and counted;
- a daemon whose Bitcoin node cannot be reached keeps serving and shows the failed, pending
  anchoring in its status and alerts: a stopped Bitcoin node is a visible state, never a crash
  (tests/anchor/test_service.py tests the service alone, without a daemon around it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peerdb.anchor.proof import AnchorProof
from peerdb.anchor.regtest import free_port
from peerdb.core.consortium import Params
from peerdb.localnet import LocalConsortium, poll_until
from peerdb.node.anchoring import AnchorBook
from peerdb.node.messages import AnchorMsg
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.engine_net import PARAMS, Net, run_until


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    # The consortium wants two confirmations of an anchor (the shallow proof below has one).
    n = Net(tmp_path, params=dataclasses.replace(PARAMS, anchor_confirmations=2))
    yield n
    n.close()


def _anchored_world(net: Net) -> tuple[AnchorBook, list[bytes], list[AnchorProof]]:
    net.engines["firm-a"].submit([net.tx("firm-a", "k").raw], None, net.now)
    run_until(net, lambda: net.engines["firm-a"].heads().majority >= 2)
    engine = net.engines["firm-a"]
    hashes = [engine.tree.best_chain_hash(h) or b"" for h in (1, 2)]
    return AnchorBook(engine, check_pow=False, rpc=None), hashes, make_anchor(hashes, depth=3)


def test_peer_anchor_proofs_are_checked_before_they_count(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peerdb.anchor")
    book, hashes, proofs = _anchored_world(net)
    engine, store = book.engine, net.stores["firm-a"]
    good, other = proofs
    wrong_path = dataclasses.replace(good, path=((good.path[0][0], bytes(32)),) + good.path[1:])
    wrong_block = dataclasses.replace(other, block_hash=good.block_hash)  # block 2's path, block 1's hash
    shallow = make_anchor(hashes, depth=1)[0]
    assert book.min_depth == 2
    book.on_anchor_message("firm-b", AnchorMsg((b"\x00garbage", wrong_path.encode(), wrong_block.encode(),
                                                shallow.encode())), net.now)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected anchor proof from firm-b")]
    assert len(refusals) == 4, refusals
    assert "anchor_proof" in refusals[0]
    assert all("Merkle path from the block hash does not lead to the anchored root" in r for r in refusals[1:3])
    assert "depth 1 below the required 2" in refusals[3]
    assert store.anchor(good.block_hash) is None and engine.heads().anchored == 0
    book.on_anchor_message("firm-b", AnchorMsg((good.encode(), other.encode())), net.now)
    assert store.anchor(good.block_hash) == good.encode() and engine.heads().anchored == 2
    # Received proofs are not gossiped on (the duty member shares its own).
    assert not [o for o in engine.take_outbox() if isinstance(o.msg, AnchorMsg)]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    try:
        poll_until(predicate, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


@pytest.mark.slow
def test_unreachable_bitcoin_node_is_a_visible_state_not_a_crash(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    params = {"heartbeat_ms": 200, "turn_timeout_ms": 1000, "anchor_interval_s": 1}
    assert Params(**params).anchor_interval_s == 1
    with LocalConsortium(tmp_path / "c", members=2, params=params,
                         bitcoin_rpc=f"http://user:secret@127.0.0.1:{port}") as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        node = net.nodes["firm-a"]
        with node.client() as c:
            r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": "k", "value": "v"}],
                                          "wait": "unanimous_signed", "timeout_s": 30})
            assert r.status_code == 200 and r.json()["wait"]["reached"] is True, r.text

            def anchoring() -> dict[str, object]:
                info = c.get("/v1/anchors").json()["anchoring"]
                assert isinstance(info, dict)
                return info

            wait_for(lambda: anchoring()["state"] == "failed", "a failed anchoring state")
            info = anchoring()
            assert info["state"] == "failed", info
            assert f"127.0.0.1:{port}" in str(info["reason"]) and "secret" not in str(info["reason"]), info
            wait_for(lambda: any(a["kind"] == "anchor_pending" for a in net.status("firm-a")["alerts"]),
                     "anchor_pending alert")
            status = net.status("firm-a")
            assert status["heads"]["unanimous"] == 0 and status["heads"]["unanimous_signed"] >= 1
            # Still serving and still making progress.
            r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": "k2", "value": "v"}],
                                          "wait": "majority", "timeout_s": 30})
            assert r.status_code == 200 and r.json()["wait"]["reached"] is True, r.text
        assert all(n.running() for n in net.nodes.values())
    for n in net.nodes.values():
        assert n.proc is not None and n.proc.returncode == 0, n.log_tail()
