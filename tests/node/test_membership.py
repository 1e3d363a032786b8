"""Members joining and keys rotating on a running consortium (memory hub, autojump clock).

A firm admitted by votes starts its node from the founding consortium file, is let in by the
others' networks once they have seen the admission pass, catches up, and takes turns and counts
for unanimity from the agreed height, all while clients keep writing. A member key rotated by
votes signs every block from the agreed height, the old one every block before it, and the
exported books verify end to end with ``peerdb audit verify``'s verifier.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import trio

from peerdb.audit.export import export_snapshot, take_snapshot
from peerdb.audit.verify import VerifyOptions, verify_bundle
from peerdb.core.keys import SigningKey
from peerdb.core.model import Tx
from peerdb.core.governance import PENDING, propose_op
from peerdb.core.proposals import AddMember, Proposal, RotateKey
from peerdb.node.service import trio_clock_ms
from tests.helpers.consortium import seed_key
from tests.helpers.node_harness import Cluster, gov_tx, passed_height, propose, record_status, vote

PASSED = "passed"


async def write_steadily(cluster: Cluster, members: tuple[str, ...], count: int, sent: list[Tx],
                         done: trio.Event) -> None:
    """Clients keep writing (one transaction every 50 ms of virtual time, round-robin over the
    members' nodes) while governance happens; bounded by ``count``."""
    for i in range(count):
        member = members[i % len(members)]
        tx = cluster.tx(member, f"flow-{i}")
        await cluster.submit(member, [tx])
        sent.append(tx)
        await trio.sleep(0.05)
    done.set()


def signed_with(cluster: Cluster, viewer: str, member: str, height: int) -> bytes | None:
    """The public key ``member``'s signature on the best block at ``height`` verifies with: a
    stored one, or one the engine holds until its next flush (the newest blocks' peer
    signatures are written every heartbeat, not as they arrive)."""
    engine = cluster.nodes[viewer].engine
    block_hash = engine.tree.best_chain_hash(height)
    assert block_hash is not None
    held = [s for s in engine.unsaved_sigs if s.block_hash == block_hash]
    for sig in engine.store.signatures(block_hash) + held:
        if sig.member == member:
            for key in engine.gov.key_history(member):
                if key[1] is not None and sig.valid(engine.cid, key[1]):
                    return key[1]
            raise AssertionError(f"{member}'s signature at height {height} verifies with none of its keys")
    return None


def audit(cluster: Cluster, exporter: str) -> object:
    engine = cluster.nodes[exporter].engine
    engine.flush_signatures()
    snapshot = take_snapshot(engine.tree, engine.consortium, engine.me, engine.evidence.values(), trio_clock_ms())
    bundle = b"".join(export_snapshot(engine.store, snapshot))
    return verify_bundle(io.BytesIO(bundle), VerifyOptions(threads=1))


async def test_member_added_while_transactions_flow(tmp_path: Path, autojump_clock: trio.testing.MockClock,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cluster = Cluster(tmp_path)
    founders = cluster.names
    newcomer = cluster.newcomer("firm-e")
    sent: list[Tx] = []
    flowing = trio.Event()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        nursery.start_soon(write_steadily, cluster, founders, 120, sent, flowing)
        # The new firm's node starts first, from the founding file: the members do not let it
        # in yet, it keeps dialling.
        await cluster.start_node("firm-e")
        joiner = cluster.nodes["firm-e"]
        assert joiner.engine.gov.key_at("firm-e", 1) is None
        proposal = Proposal(AddMember(newcomer), "firm-e joins the books")
        await cluster.submit("firm-a", [gov_tx(cluster, "firm-a", propose_op(proposal))])
        await cluster.wait_until(lambda: all(record_status(cluster, n, proposal) == PENDING for n in founders),
                                 what="proposal recorded at every founder")
        assert not any(joiner.network.peer_state(p).connected for p in founders)
        await vote(cluster, founders, proposal)
        await cluster.wait_until(lambda: all(record_status(cluster, n, proposal) == PASSED for n in founders),
                                 what="admission passed at every founder")
        effective = passed_height(cluster, "firm-a", proposal)
        # Admitted: the members' networks let it in, it catches up and learns it is a member.
        await cluster.wait_until(lambda: joiner.engine.gov.key_at("firm-e", effective) == newcomer.key,
                                 what="firm-e caught up past its admission")
        await flowing.wait()
        await cluster.wait_until(lambda: all(cluster.included(n, sent) for n in (*founders, "firm-e")),
                                 what="every transaction unanimous-signed at all five members")
        engine = cluster.nodes["firm-a"].engine
        tip = engine.tree.best_tip.height
        assert engine.gov.members_at(effective) == (*founders, "firm-e")
        assert engine.gov.members_at(effective - 1) == founders
        # It takes turns from the agreed height (appended to the turn order) ...
        proposers = {engine.tree.header(engine.tree.best_chain_hash(h) or b"").proposer
                     for h in range(effective, tip + 1)}
        assert "firm-e" in proposers
        assert all(engine.tree.header(engine.tree.best_chain_hash(h) or b"").proposer != "firm-e"
                   for h in range(1, effective))
        # ... and unanimity waits for it: every unanimous-signed block from there carries its signature.
        unanimous = engine.heads().unanimous_signed
        assert unanimous >= effective
        for h in range(effective, unanimous + 1):
            block_hash = engine.tree.best_chain_hash(h)
            assert block_hash is not None and "firm-e" in engine.tree.signers(block_hash)
        # Nothing a client wrote was lost, and the new member's store holds the same state.
        joined_tip = joiner.engine.tree.best_tip.height
        for i in range(len(sent)):
            assert joiner.engine.store.get("ns", f"flow-{i}", joined_tip)[0] == b"v"
        report = audit(cluster, "firm-a")
        assert report.blocks >= tip  # type: ignore[attr-defined]
        assert any("member_joined" in r.getMessage() and "firm-e" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()
    await cluster.close()


async def test_key_rotation_mid_run_and_old_blocks_still_audit(tmp_path: Path,
                                                               autojump_clock: trio.testing.MockClock,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cluster = Cluster(tmp_path)
    old_key = cluster.keys["firm-b"]
    new_key = seed_key("member/firm-b/rotated")  # fixed: block hashes, and so tie-breaks, are the same every run
    cluster.more_keys["firm-b"] = [new_key]  # the operator configured the next key before proposing
    sent: list[Tx] = []
    flowing = trio.Event()
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        nursery.start_soon(write_steadily, cluster, cluster.names, 80, sent, flowing)
        proposal = await propose(cluster, "firm-b", RotateKey("firm-b", new_key.public), "firm-b: yearly key rotation")
        await vote(cluster, cluster.names, proposal)
        await cluster.wait_until(lambda: all(record_status(cluster, n, proposal) == PASSED for n in cluster.names),
                                 what="rotation passed everywhere")
        effective = passed_height(cluster, "firm-a", proposal)
        await flowing.wait()
        await cluster.wait_until(lambda: all(cluster.included(n.name, sent) for n in cluster.live())
                                 and cluster.nodes["firm-a"].engine.heads().unanimous_signed >= effective + 3,
                                 what="writes unanimous-signed past the rotation")
        engine = cluster.nodes["firm-a"].engine
        unanimous = engine.heads().unanimous_signed
        # firm-b signed with the old key below the agreed height and with the new one from it (a
        # height it endorses through a later block carries no signature of its own: None).
        assert {signed_with(cluster, "firm-a", "firm-b", h) for h in range(1, effective)} - {None} == {old_key.public}
        assert {signed_with(cluster, "firm-a", "firm-b", h) for h in range(effective, unanimous + 1)} - {None} \
            == {new_key.public}
        assert cluster.nodes["firm-b"].engine.key.public == new_key.public
        # Connections firm-b's retired key authenticated are closed when the rotation takes effect.
        for viewer in ("firm-a", "firm-c", "firm-d"):
            assert any("reconnecting" in r.getMessage() and f"node={viewer}" in r.getMessage()
                       and "peer=firm-b" in r.getMessage() for r in caplog.records), viewer
        # The books verify end to end: old blocks with the old key, new ones with the new key.
        report = audit(cluster, "firm-c")
        assert report.blocks >= unanimous  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()
    await cluster.close()


async def test_rotation_to_a_key_the_node_does_not_hold_is_reported(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    cluster = Cluster(tmp_path)
    new_key = SigningKey.generate()  # firm-c's operator forgot to configure it
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        proposal = await propose(cluster, "firm-a", RotateKey("firm-c", new_key.public))
        await vote(cluster, cluster.names, proposal)
        await cluster.wait_until(lambda: all(record_status(cluster, n, proposal) == PASSED for n in cluster.names),
                                 what="rotation passed everywhere")
        effective = passed_height(cluster, "firm-a", proposal)
        await cluster.wait_until(lambda: cluster.nodes["firm-a"].engine.tree.best_tip.height >= effective + 2,
                                 what="chain past the rotation")
        firm_c = cluster.nodes["firm-c"].engine
        problem = firm_c.key_problem()
        assert problem is not None and "firm-c's member key in force" in problem
        alerts = firm_c.alert_conditions(trio_clock_ms(), lambda _peer: True)
        assert any(a.kind == "key_missing" and "extra_key_files" in a.message for a in alerts)
        assert any("which this node does not hold" in r.getMessage() or "member key in force" in r.getMessage()
                   for r in caplog.records if r.levelno >= logging.ERROR)
        # It signs nothing with the retired key from the agreed height: no block there has its signature.
        engine = cluster.nodes["firm-a"].engine
        for h in range(effective, engine.tree.best_tip.height + 1):
            block_hash = engine.tree.best_chain_hash(h)
            assert block_hash is not None and "firm-c" not in engine.tree.signers(block_hash)
        nursery.cancel_scope.cancel()
    await cluster.close()
