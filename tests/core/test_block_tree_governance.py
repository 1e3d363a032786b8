"""The fork rule's "everyone", block signatures and evidence follow the member set and the keys
in force at each height."""

from __future__ import annotations

import pytest

from peerdb.core.chain import BlockTree
from peerdb.core.consortium import Member
from peerdb.core.errors import SignatureError, ValidationError
from peerdb.core.keys import SigningKey
from peerdb.core.membership import ConsortiumState
from peerdb.core.model import BlockSignature, Evidence, Header
from peerdb.core.proposals import AddMember, RemoveMembers, RotateKey
from peerdb.core.validate import check_evidence, check_proposer_signature, proposer_for
from peerdb.node.alerts import chain_alerts, waiting_for

from tests.helpers.core import assert_names, bare_header, client_key, member_key, seed_key
from tests.helpers.governance import Chain

ALL = ("firm-a", "firm-b", "firm-c", "firm-d")
E_KEY = seed_key("member/firm-e")
FIRM_E = Member("firm-e", E_KEY.public, "127.0.0.1:7010", (client_key("firm-e").public,))
C_NEW = seed_key("member/firm-c/2")


def governed(change: object, extra_blocks: int = 4) -> tuple[Chain, int]:
    """A chain on which ``change`` passed with everyone's approval, built a few blocks past its
    effective height; returns the chain and that height."""
    chain = Chain()
    proposal = chain.propose("firm-a", change)  # type: ignore[arg-type]
    voters = [m for m in ALL if m not in proposal.excluded_voters()]
    chain.step([chain.vote_tx(v, proposal, carrier="firm-a") for v in voters])
    effective = chain.record(proposal).effective_height
    assert effective is not None
    while chain.height < effective + extra_blocks:
        chain.step()
    return chain, effective


def tree_of(chain: Chain, schedule: bool = True) -> BlockTree:
    cs = chain.cs()
    tree = BlockTree(chain.headers[0], chain.consortium.member_names, cs if schedule else None)
    for header in chain.headers[1:]:
        tree.add_header(header)
    return tree


def test_unanimity_waits_for_an_added_member_from_its_height() -> None:
    chain, joined = governed(AddMember(FIRM_E))
    tree = tree_of(chain)
    tip = chain.tip
    for m in ALL:
        tree.add_signature(tip.hash, m)
    heads = tree.heads()
    assert heads.majority == tip.height  # 4 of 5 endorse the tip
    assert heads.unanimous_signed == joined - 1  # everyone of the old set; firm-e not yet
    assert tree.eligible(joined - 1) == ALL and tree.eligible(joined) == ALL + ("firm-e",)
    assert tree.eligible() == ALL + ("firm-e",)  # at the best tip
    stalled = waiting_for(tree, 0, 0, 3000)
    assert stalled.details["missing_signatures"] == ["firm-e"]
    tree.add_signature(tip.hash, "firm-e")
    assert tree.heads().unanimous_signed == tip.height


def test_the_new_member_counts_in_the_majority_denominator_from_its_height() -> None:
    chain, joined = governed(AddMember(FIRM_E))
    tree = tree_of(chain)
    tree.add_signature(chain.headers[joined - 1].hash, "firm-c")
    for m in ("firm-a", "firm-b"):
        tree.add_signature(chain.tip.hash, m)
    # below the change 3 of 4 is a majority; above it 2 of 5 is not
    assert tree.heads().majority == joined - 1
    tree.add_signature(chain.tip.hash, "firm-e")
    assert tree.heads().majority == chain.tip.height


def test_a_tree_without_schedule_refuses_a_member_it_does_not_know() -> None:
    chain, _joined = governed(AddMember(FIRM_E))
    tree = tree_of(chain, schedule=False)
    with pytest.raises(ValidationError):
        tree.add_signature(chain.tip.hash, "firm-e")
    tree.set_schedule(chain.cs())
    assert tree.add_signature(chain.tip.hash, "firm-e")


def test_a_removed_member_no_longer_holds_back_unanimity() -> None:
    chain, removed = governed(RemoveMembers(("firm-d",)))
    tree = tree_of(chain)
    tree.add_signature(chain.headers[removed - 1].hash, "firm-d")  # its last block as a member
    for m in ("firm-a", "firm-b", "firm-c"):
        tree.add_signature(chain.tip.hash, m)
    heads = tree.heads()
    assert heads.unanimous_signed == heads.majority == chain.tip.height
    assert tree.endorsers(chain.tip.hash) == ("firm-a", "firm-b", "firm-c")
    assert "firm-d" in tree.endorsers(chain.headers[removed - 1].hash)
    # the genesis-list tree would still wait for firm-d
    old = tree_of(chain, schedule=False)
    old.add_signature(chain.headers[removed - 1].hash, "firm-d")
    for m in ("firm-a", "firm-b", "firm-c"):
        old.add_signature(chain.tip.hash, m)
    assert old.heads().unanimous_signed == removed - 1
    # and the removed member is told nothing about majorities it no longer takes part in
    assert not [a for a in chain_alerts(tree, "firm-d") if a.kind == "majority_without_me"]
    assert [a for a in chain_alerts(old, "firm-d") if a.kind == "majority_without_me"]


def test_waiting_for_names_the_proposer_of_the_schedule_in_force() -> None:
    chain, joined = governed(AddMember(FIRM_E), extra_blocks=0)
    tree = tree_of(chain)
    for m in ALL + ("firm-e",):
        tree.add_signature(chain.tip.hash, m)
    alert = waiting_for(tree, tip_seen_ms=0, now_ms=0, turn_timeout_ms=3000)
    height = chain.tip.height + 1
    assert alert.details["proposer"] == proposer_for(ALL + ("firm-e",), height, 0)


# --- keys by height ------------------------------------------------------------------------------

def sign_at(key: SigningKey, chain: Chain, member: str, header: Header) -> BlockSignature:
    return BlockSignature(header.hash, member, key.sign("block", chain.cid, header.hash))


def test_old_signatures_verify_at_old_heights_and_the_new_key_after() -> None:
    chain, rotated = governed(RotateKey("firm-c", C_NEW.public), extra_blocks=6)
    cs = chain.cs()
    old_block, new_block = chain.headers[rotated - 1], chain.headers[rotated]
    old_key = member_key("firm-c")
    assert cs.signature_valid(sign_at(old_key, chain, "firm-c", old_block), old_block.height, chain.cid)
    assert not cs.signature_valid(sign_at(old_key, chain, "firm-c", new_block), new_block.height, chain.cid)
    assert cs.signature_valid(sign_at(C_NEW, chain, "firm-c", new_block), new_block.height, chain.cid)
    assert not cs.signature_valid(sign_at(C_NEW, chain, "firm-c", old_block), old_block.height, chain.cid)
    # blocks proposed by firm-c on either side verify with the key of their height only
    by_c = [b for b in chain.blocks if b.header.proposer == "firm-c"]
    assert min(b.height for b in by_c) < rotated <= max(b.height for b in by_c)
    for block in by_c:
        here = cs.at(block.height)
        right, wrong = (old_key, C_NEW) if block.height < rotated else (C_NEW, old_key)
        check_proposer_signature(block.header, sign_at(right, chain, "firm-c", block.header), here, chain.cid)
        with pytest.raises(SignatureError):
            check_proposer_signature(block.header, sign_at(wrong, chain, "firm-c", block.header), here, chain.cid)


def evidence(key: SigningKey, chain: Chain, member: str, parent: Header) -> Evidence:
    h1, h2 = bare_header(parent, salt=1, proposer=member), bare_header(parent, salt=2, proposer=member)
    return Evidence.from_signatures(member, h1, key.sign("block", chain.cid, h1.hash),
                                    h2, key.sign("block", chain.cid, h2.hash))


def test_evidence_survives_a_key_rotation() -> None:
    chain, rotated = governed(RotateKey("firm-c", C_NEW.public))
    cs = chain.cs()
    before = evidence(member_key("firm-c"), chain, "firm-c", chain.headers[1])  # height 2, old key
    cs.check_evidence(before, chain.cid)
    check_evidence(before, chain.consortium, chain.cid, consortium_state=cs)
    # the old key is worthless above the rotation: no evidence, just invalid signatures
    above = evidence(member_key("firm-c"), chain, "firm-c", chain.headers[rotated])
    with pytest.raises(SignatureError):
        cs.check_evidence(above, chain.cid)
    cs.check_evidence(evidence(C_NEW, chain, "firm-c", chain.headers[rotated]), chain.cid)
    # and a block written after the rotation can still record the old double-sign
    chain.add(chain.build(evidence=[before]))
    assert chain.blocks[-1].evidence == (before,)


def test_evidence_against_a_removed_member_stays_valid_for_its_time() -> None:
    chain, removed = governed(RemoveMembers(("firm-d",)))
    cs = chain.cs()
    cs.check_evidence(evidence(member_key("firm-d"), chain, "firm-d", chain.headers[0]), chain.cid)
    with pytest.raises(ValidationError) as info:
        cs.check_evidence(evidence(member_key("firm-d"), chain, "firm-d", chain.headers[removed]), chain.cid)
    assert_names(info.value, "evidence", f"firm-d is not a member at height {removed + 1}")


def test_member_state_is_exact_up_to_the_delay_after_the_block_it_was_read_at() -> None:
    """What a node needs to know when it follows the best chain block by block."""
    chain, joined = governed(AddMember(FIRM_E), extra_blocks=0)
    start = ConsortiumState(chain.consortium)
    followed = start
    for effects in chain.effects:
        followed = followed.after_writes(effects.writes)
    assert followed.member_epochs() == chain.cs().member_epochs()
    assert followed.digest == chain.cs().digest
    assert [h for h, _ in followed.member_epochs()] == [0, joined]
