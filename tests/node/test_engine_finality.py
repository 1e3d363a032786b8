"""A node refuses a block that leaves out its settled block, says who signed it, and convicts only
double-signers.

Four engines run until every block up to height 3 is unanimous-signed; block 3's anchor reaches
firm-a, so blocks 1..3 are settled in its view. A proposal forking from block 1 — valid in every
other respect, and heavier by the seed's weights once colluders sign it — is refused: nothing is
stored, nothing signed, the tip does not move, and the ``settled_conflict`` alert names its
signers. A proposer who also signed the settled block at that height has double-signed: that,
and only that, produces evidence.
"""

from __future__ import annotations

from pathlib import Path

from peerdb.core.model import BlockSignature
from peerdb.core.validate import proposer_for
from peerdb.node.messages import ProposalMsg, SigsMsg
from tests.helpers.engine_net import NAMES, Net, run_until


def settled_world(tmp_path: Path) -> Net:
    """Blocks 1..3 settled in firm-a's view; firm-d endorses them only through a later block
    (it was cut off while they were made), so it signed nothing at heights 1..3."""
    net = Net(tmp_path)
    a = net.engines["firm-a"]
    net.cut.add("firm-d")
    net.engines["firm-a"].submit([net.tx("firm-a", "k").raw], None, net.now)
    run_until(net, lambda: a.heads().majority >= 3)
    net.cut.clear()
    run_until(net, lambda: all(e.heads().unanimous_signed >= 3 for e in net.engines.values()))
    a.tree.set_anchored(a.tree.best_chain_hash(3) or b"")
    assert a.tree.final.height == 3
    assert not any(a.tree.signed_at("firm-d", h) for h in (1, 2, 3))
    return net


def test_a_fork_below_the_settled_block_is_refused_and_named(tmp_path: Path) -> None:
    net = settled_world(tmp_path)
    try:
        a = net.engines["firm-a"]
        one = a.tree.header(a.tree.best_chain_hash(1) or b"")
        tip_before = a.tree.best_tip
        # Height 2 on block 1, in a round whose proposer did not sign the settled block 2.
        signed_2 = a.tree.signers(a.tree.best_chain_hash(2) or b"")
        round_ = next(r for r in range(1, 8) if proposer_for(NAMES, 2, r) not in signed_2)
        proposer = proposer_for(NAMES, 2, round_)
        fork, sig = net.craft(proposer, [], parent=one, round_=round_, time_ms=one.time_ms + round_ * 1000 + 1)
        a.handle(proposer, ProposalMsg(fork.raw, sig), net.now)
        assert fork.hash in a.conflicts and a.store.block(fork.hash) is None and fork.hash not in a.tree
        assert a.tree.best_tip == tip_before and not a.tree.culprits  # no conviction: no double-sign
        # A co-signature on the refused block is recorded against it too.
        colluder = next(m for m in NAMES if m not in (proposer, "firm-a"))
        a.handle(colluder, SigsMsg((BlockSignature.create(net.keys[colluder], net.cid, colluder, fork.hash),)),
                 net.now)
        alerts = a.alert_conditions(net.now, lambda _m: True)
        conflict = next(x for x in alerts if x.kind == "settled_conflict")
        assert conflict.subject == fork.hash.hex()
        assert conflict.details["signers"] == sorted({proposer, colluder})
        assert "leaves out the settled block 3" in conflict.message
    finally:
        net.close()


def test_a_conflicting_block_by_a_member_who_signed_the_settled_one_is_evidence(tmp_path: Path) -> None:
    net = settled_world(tmp_path)
    try:
        a = net.engines["firm-a"]
        one = a.tree.header(a.tree.best_chain_hash(1) or b"")
        signed_2 = a.tree.signers(a.tree.best_chain_hash(2) or b"")
        round_ = next(r for r in range(1, 8) if proposer_for(NAMES, 2, r) in signed_2)
        proposer = proposer_for(NAMES, 2, round_)
        fork, sig = net.craft(proposer, [], parent=one, round_=round_, time_ms=one.time_ms + round_ * 1000 + 1)
        a.handle(proposer, ProposalMsg(fork.raw, sig), net.now)
        assert fork.hash in a.conflicts
        assert a.tree.culprits == {proposer}  # it signed two blocks at height 2
        assert any(ev.member == proposer for ev in a.evidence.values())
    finally:
        net.close()
