"""Engine-level protocol tests: four engines, messages delivered synchronously, time passed in.

No trio, no network: each test drives the engines step by step, so it can inject exactly the
malicious or malformed message it is about and check that nothing changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdb.core.consortium import Params
from peerdb.core.membership import ConsortiumState
from peerdb.core.model import OP_PUT, Block, BlockSignature, Header, Op, Tx
from peerdb.core.proposals import RotateKey, SetParams
from peerdb.core.validate import proposer_for
from peerdb.node.mempool import MempoolFull
from peerdb.node.messages import BlocksMsg, EvidenceMsg, ProposalMsg, SigsMsg

from tests.helpers.consortium import seed_key
from tests.helpers.engine_net import NAMES, PARAMS, Net, run_until


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path)
    yield n
    n.close()


def test_signatures_on_a_descendant_endorse_its_ancestors(net: Net) -> None:
    net.cut.add("firm-d")
    txs = [net.tx("firm-a", f"k{i}") for i in range(5)]
    net.engines["firm-a"].submit([t.raw for t in txs], None, net.now)
    run_until(net, lambda: net.engines["firm-a"].heads().majority >= 3)
    a = net.engines["firm-a"]
    assert a.heads().unanimous_signed == 0
    early = a.tree.best_chain_hash(1)
    assert early is not None and "firm-d" not in a.tree.signers(early)
    net.cut.clear()
    run_until(net, lambda: net.engines["firm-d"].tree.best_tip.height >= a.tree.best_tip.height)
    run_until(net, lambda: a.heads().unanimous_signed >= 3)
    # firm-d never signed block 1 itself, yet block 1 is unanimous-signed through its descendants.
    assert "firm-d" not in a.tree.signers(early)
    assert a.tree.status(early).value == "unanimous_signed"


def test_equivocating_proposer_is_excluded_everywhere(net: Net) -> None:
    run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 2)
    tip = net.engines["firm-a"].tree.best_tip
    height = tip.height + 1
    proposer = net.engines["firm-a"].current_turn(net.now)[2]
    x, sx = net.craft(proposer, [net.tx(proposer, "x")], parent=tip)
    y, sy = net.craft(proposer, [net.tx(proposer, "y")], parent=tip)
    assert x.hash != y.hash and x.height == y.height == height
    others = [n for n in NAMES if n != proposer]
    net.engines[others[0]].on_proposal(proposer, ProposalMsg(x.raw, sx), net.now)
    net.engines[others[1]].on_proposal(proposer, ProposalMsg(y.raw, sy), net.now)
    net.deliver()
    run_until(net, lambda: all(proposer in e.tree.culprits for e in net.engines.values()))
    # The evidence is written into the chain by a later proposer.
    run_until(net, lambda: any(net.engines[others[2]].chain.evidence_in_block.values()))
    for e in net.engines.values():
        assert e.evidence and all(ev.member == proposer for ev in e.evidence.values())
        assert proposer not in e.tree.eligible()
    # The consortium keeps going without the culprit's weight.
    before = net.engines["firm-a"].heads().majority
    run_until(net, lambda: net.engines["firm-a"].heads().majority >= before + 3)


def test_invalid_block_from_the_right_proposer_gets_an_objection(net: Net) -> None:
    run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
    proposer = net.engines["firm-a"].current_turn(net.now)[2]
    good = net.tx(proposer, "k")
    forged = Tx(good.member, good.client, good.nonce, good.expires_ms, good.ops, bytes(64), good.body)
    block, sig = net.craft(proposer, [forged])
    victim = next(n for n in NAMES if n != proposer)
    before = net.snapshot(victim)
    net.engines[victim].on_proposal(proposer, ProposalMsg(block.raw, sig), net.now)
    assert net.snapshot(victim) == before
    objections = net.stores[victim].objections(block.hash)
    assert len(objections) == 1 and "signature" in objections[0].reason
    net.deliver()
    # The objection travelled: the proposer's node recorded it too.
    assert len(net.stores[proposer].objections(block.hash)) == 1


def test_wrong_turn_forged_and_replayed_proposals_change_nothing(net: Net) -> None:
    run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
    target = "firm-b"
    e = net.engines[target]
    proposer = e.current_turn(net.now)[2]
    wrong = next(n for n in NAMES if n not in (proposer, target))
    before = net.snapshot(target)
    # Wrong turn: a member that is not the proposer for this height and round.
    block, sig = net.craft(wrong, [net.tx(wrong, "w")])
    e.on_proposal(wrong, ProposalMsg(block.raw, sig), net.now)
    assert net.snapshot(target) == before
    assert net.stores[target].objections(block.hash)  # signed by its author: objected to, not accepted
    # Forged: the right proposer's name, another member's signature bytes.
    block, _ = net.craft(proposer, [net.tx(proposer, "f")])
    forged = BlockSignature(block.hash, proposer, BlockSignature.create(net.keys[wrong], net.cid, wrong, block.hash).signature)
    e.on_proposal(wrong, ProposalMsg(block.raw, forged), net.now)
    assert net.snapshot(target) == before
    assert not net.stores[target].objections(block.hash)  # unsigned garbage: logged, never objected to
    # Malformed block bytes.
    e.on_proposal(wrong, ProposalMsg(b"\xff\x00garbage", forged), net.now)
    assert net.snapshot(target) == before
    # Replay: an old, already stored proposal changes nothing.
    old_hash = e.tree.best_chain_hash(1)
    assert old_hash is not None
    old = net.stores[target].block(old_hash)
    assert old is not None
    old_sig = next(s for s in net.stores[target].signatures(old_hash) if s.member == old.header.proposer)
    e.on_proposal(old.header.proposer, ProposalMsg(old.raw, old_sig), net.now)
    assert net.snapshot(target) == before


def test_forged_signature_is_rejected(net: Net) -> None:
    run_until(net, lambda: net.engines["firm-a"].heads().majority >= 1)
    e = net.engines["firm-a"]
    tip = e.tree.best_tip.hash
    bad = BlockSignature(tip, "firm-c", bytes(64))
    signers = e.tree.signers(tip)
    e.on_sigs("firm-b", SigsMsg((bad,)), net.now)
    if "firm-c" not in signers:
        assert "firm-c" not in e.tree.signers(tip)
    assert e.tree.signers(tip) == signers


def test_replayed_and_invalid_transactions_are_refused(net: Net) -> None:
    e = net.engines["firm-a"]
    tx = net.tx("firm-a", "k")
    first = e.submit([tx.raw], None, net.now)
    assert first.accepted == [tx.txid]
    again = e.submit([tx.raw], None, net.now)
    assert again.duplicates == [tx.txid] and not again.accepted
    run_until(net, lambda: net.stores["firm-a"].tx_location(tx.txid) is not None)
    replay = e.submit([tx.raw], None, net.now)
    assert replay.duplicates == [tx.txid] and tx.txid not in e.mempool
    # Signed by firm-b's client key but claiming to be firm-a's.
    wrong = Tx.create(net.clients["firm-b"], net.cid, "firm-a", 99, net.now + 1000, [Op(OP_PUT, "ns", "x", b"1")])
    result = e.submit([wrong.raw, b"not a transaction"], None, net.now)
    assert not result.accepted and len(result.rejected) == 2
    assert "belongs to firm-b" in str(result.rejected[0][1])


def test_full_mempool_pushes_back(tmp_path: Path) -> None:
    net = Net(tmp_path, mempool_max=3)
    try:
        e = net.engines["firm-a"]
        e.submit([net.tx("firm-a", f"k{i}").raw for i in range(3)], None, net.now)
        with pytest.raises(MempoolFull, match="limit 3"):
            e.submit([net.tx("firm-a", "k9").raw], None, net.now)
        assert len(e.mempool) == 3
    finally:
        net.close()


def test_evidence_with_bad_signature_is_ignored(net: Net) -> None:
    run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
    from peerdb.core.model import Evidence
    tip = net.engines["firm-a"].tree.best_tip
    x, sx = net.craft("firm-b", [], parent=net.engines["firm-a"].tree.header(tip.prev), height=tip.height,
                      time_ms=tip.time_ms + 1)
    ev = Evidence.from_signatures("firm-b", x.header, bytes(64), tip, bytes(64))
    e = net.engines["firm-a"]
    e.on_evidence("firm-c", EvidenceMsg(ev), net.now)
    assert not e.tree.culprits and not e.evidence


def test_body_not_matching_its_signed_header_gets_an_objection(net: Net) -> None:
    from peerdb.core.codec import encode
    run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
    proposer = net.engines["firm-a"].current_turn(net.now)[2]
    block, sig = net.craft(proposer, [net.tx(proposer, "honest")])
    swapped = encode([block.header.raw, [net.tx(proposer, "swapped").raw], []])
    victim = next(n for n in NAMES if n != proposer)
    before = net.snapshot(victim)
    net.engines[victim].on_proposal(proposer, ProposalMsg(swapped, sig), net.now)
    assert net.snapshot(victim) == before
    [objection] = net.stores[victim].objections(block.hash)
    assert "tx_root" in objection.reason


def test_block_over_the_agreed_limits_is_objected_to_not_a_crash(tmp_path: Path) -> None:
    net = Net(tmp_path, params=Params(heartbeat_ms=200, turn_timeout_ms=1000, clock_skew_ms=1000, max_block_txs=2))
    try:
        run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
        proposer = net.engines["firm-a"].current_turn(net.now)[2]
        block, sig = net.craft(proposer, [net.tx(proposer, f"k{i}") for i in range(3)])
        victim = next(n for n in NAMES if n != proposer)
        before = net.snapshot(victim)
        net.engines[victim].on_proposal(proposer, ProposalMsg(block.raw, sig), net.now)
        assert net.snapshot(victim) == before
        [objection] = net.stores[victim].objections(block.hash)
        assert "max_block_txs" in objection.reason
    finally:
        net.close()


def test_a_catch_up_answer_is_checked_whole_and_stops_at_a_forged_client_signature(net: Net) -> None:
    """The client signatures of a whole catch-up answer are checked ahead in one pool call; the
    block whose transaction carries other signature bytes (same txid, so the same block hash) is
    refused there, with everything after it, and the blocks before it are kept."""
    net.cut.add("firm-d")
    for round_ in range(3):
        txs = [net.tx("firm-a", f"r{round_}k{i}") for i in range(40)]
        net.engines["firm-a"].submit([t.raw for t in txs], None, net.now)
        run_until(net, lambda: len(net.engines["firm-a"].mempool) == 0)
    a, d = net.engines["firm-a"], net.engines["firm-d"]
    heights = [h for h in range(1, a.tree.best_tip.height + 1)
               if (b := a.store.block(a.tree.best_chain_hash(h) or b"")) is not None and b.txs]
    assert len(heights) >= 3
    items = []
    forged_at = heights[1]
    for height in range(1, a.tree.best_tip.height + 1):
        block_hash = a.tree.best_chain_hash(height)
        assert block_hash is not None
        block = a.store.block(block_hash)
        assert block is not None
        if height == forged_at:
            first = block.txs[0]
            bad = Tx.from_parts(first.body, bytes([first.signature[0] ^ 1]) + first.signature[1:])
            block = Block(block.header, (bad, *block.txs[1:]))
            assert block.hash == block_hash
        items.append((block.raw, tuple(a.store.signatures(block_hash))))
    assert d.verifier.threads > 1  # the pool that checks ahead
    d.handle("firm-a", BlocksMsg(tuple(items), a.tree.best_tip.height), net.now)
    assert d.tree.best_tip.height == forged_at - 1
    refused = a.tree.best_chain_hash(forged_at)
    assert refused is not None and refused not in d.tree
    assert d.tree.best_chain_hash(forged_at - 1) == a.tree.best_chain_hash(forged_at - 1)


def two_blocks_passing_one_change(net: Net) -> tuple[Header, Block, Block, BlockSignature]:
    """A change approved by all but firm-d; firm-d's vote goes into a round-1 block that every
    member takes (firm-a's best tip), and into a late round-0 sibling, returned unsent with its
    proposer's signature: (their parent, the round-1 block, the late block, its signature)."""
    run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
    last = net.approved_but_one(SetParams((("heartbeat_ms", 300),)), "slower heartbeat")
    a = net.engines["firm-a"]
    parent = a.tree.best_tip
    net.now = parent.time_ms + PARAMS.turn_timeout_ms + 10
    first, first_sig = net.craft(a.current_turn(net.now)[2], [last], parent=parent, round_=1)
    for name in NAMES:
        if name != first.header.proposer:
            net.engines[name].on_proposal(first.header.proposer, ProposalMsg(first.raw, first_sig), net.now)
    net.deliver()
    late_proposer = proposer_for(NAMES, parent.height + 1, 0)
    late, late_sig = net.craft(late_proposer, [last], parent=parent, round_=0, time_ms=parent.time_ms + 10)
    return parent, first, late, late_sig


def test_a_competing_block_that_passes_the_same_change_is_valid(net: Net) -> None:
    """Two blocks at one height (a late round-0 proposal and the round-1 one) carry the same last
    vote, so both pass the same change. A node whose best tip is one of them validates the other
    against *its parent's* governance state: the change list the other block appends to must not
    already hold the change its sibling passed (it was wrongly taken from the best tip's state, so
    a member back from a restart refused the consortium's chain forever)."""
    parent, first, late, late_sig = two_blocks_passing_one_change(net)
    a = net.engines["firm-a"]
    assert a.tree.best_tip.hash == first.hash and a.gov.changes, "the change passed on firm-a's best chain"
    assert late.header.state_root == first.header.state_root
    a.on_proposal(late.header.proposer, ProposalMsg(late.raw, late_sig), net.now)
    assert late.hash in a.tree
    assert net.stores["firm-a"].objections(late.hash) == []
    # Whatever block a child hangs from, the state the engine hands out is that block's own.
    run_until(net, lambda: a.tree.best_tip.height >= parent.height + 4)
    for header in a.tree.headers():
        with a.store.state_reader_at(header.hash) as reader:
            stored = ConsortiumState.load(net.consortium, reader)
        assert a.state_for(header.hash, header.height + 1).digest == stored.digest, header.height


def test_a_fault_of_the_nodes_own_while_checking_a_block_is_logged_not_raised_nor_objected(
        net: Net, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that cannot be checked because this node got its own state wrong (here: the best
    tip's governance state handed out for a sibling, the fault fixed above) is not the proposer's
    fault: no objection, and no exception out of the handler, which a peer resending the block
    would turn into a crash after every restart."""
    _, _, late, late_sig = two_blocks_passing_one_change(net)
    a = net.engines["firm-a"]
    monkeypatch.setattr(a, "state_for", lambda _parent, _height: a.gov)  # the wrong state
    a.on_proposal(late.header.proposer, ProposalMsg(late.raw, late_sig), net.now)
    assert late.hash not in a.tree
    assert net.stores["firm-a"].objections(late.hash) == []
    assert any("a fault of this node" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_a_proposal_signed_with_a_key_rotated_on_its_own_branch_is_taken(tmp_path: Path) -> None:
    """Two blocks compete at one height and only one of them (the late round-0 block) carries
    the last vote of a key rotation. A member whose best tip is the other one must still take a
    proposal on the rotating branch signed with the new key: the block is checked against its
    parent's state, in which that key is in force (it was refused as "not signed by its
    proposer", and a member on the other branch never heard of the branch's blocks)."""
    rotated = "firm-c"
    new_key = seed_key("member/firm-c/rotation/0")
    net = Net(tmp_path, extra_keys={rotated: [new_key]})
    try:
        run_until(net, lambda: net.engines["firm-a"].heads().unanimous_signed >= 1)
        last = net.approved_but_one(RotateKey(rotated, new_key.public), "new key")
        watcher = net.engines["firm-b"]
        parent = watcher.tree.best_tip
        height = parent.height + 1
        net.now = parent.time_ms + 3 * PARAMS.turn_timeout_ms
        # The round-1 block, without the last vote, wins the height everywhere.
        late_proposer = proposer_for(NAMES, height, 0)
        net.cut.add(late_proposer)  # it proposes its own block, not knowing this one
        on_time, on_time_sig = net.craft(proposer_for(NAMES, height, 1), [], parent=parent, round_=1)
        for name in NAMES:
            if name != late_proposer:
                net.engines[name].on_proposal(on_time.header.proposer, ProposalMsg(on_time.raw, on_time_sig), net.now)
        net.deliver()
        assert watcher.tree.best_tip.hash == on_time.hash and not watcher.gov.changes
        # The late round-0 block passes the rotation (in force from height + 2 on its branch).
        late, late_sig = net.craft(late_proposer, [last], parent=parent,
                                   time_ms=parent.time_ms + 10)
        watcher.on_proposal(late.header.proposer, ProposalMsg(late.raw, late_sig), net.now)
        assert late.hash in watcher.tree and watcher.tree.best_tip.hash == on_time.hash
        assert net.state_of("firm-b", late.hash).key_at(rotated, height + 2) == new_key.public
        child, child_sig = net.craft(proposer_for(NAMES, height + 1, 0), [], parent=late.header,
                                     time_ms=late.header.time_ms + 10)
        watcher.on_proposal(child.header.proposer, ProposalMsg(child.raw, child_sig), net.now)
        assert child.hash in watcher.tree
        round_ = (NAMES.index(rotated) - (height + 1)) % len(NAMES)
        grandchild, grandchild_sig = net.craft(rotated, [], parent=child.header, round_=round_, key=new_key,
                                               time_ms=child.header.time_ms + round_ * PARAMS.turn_timeout_ms)
        watcher.on_proposal(rotated, ProposalMsg(grandchild.raw, grandchild_sig), net.now)
        assert grandchild.hash in watcher.tree, "a block signed with the key in force on its branch was refused"
        assert net.stores["firm-b"].objections(grandchild.hash) == []
    finally:
        net.close()
