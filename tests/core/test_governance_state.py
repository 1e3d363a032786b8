"""Governance through the state machine: proposals and votes in blocks, checked like a member
checks them, and the consortium in force at every height that results."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerdb.core.codec import decode
from peerdb.core.consortium import Member, NamespaceRule
from peerdb.core.errors import AccessError, SignatureError, ValidationError
from peerdb.core.governance import (
    FAILED,
    MAX_PENDING_PER_MEMBER,
    PASSED,
    PENDING,
    PROPOSAL_TTL_MS,
    REJECTED,
    propose_op,
    proposal_key,
    read_pending,
    read_votes,
    vote_key,
    vote_op,
)
from peerdb.core.membership import CHANGES_KEY, GOVERNANCE_DELAY, ConsortiumState, StateCache, change_key
from peerdb.core.model import GOV_NAMESPACE, OP_PUT, ZERO_HASH, Block, Op, Tx, consortium_id
from peerdb.core.proposals import AddMember, Proposal, RemoveMembers, RotateKey, SetNamespace, SetParams, Vote
from peerdb.core.state import BlockRun, MemoryState, apply_txs, check_tx_static
from peerdb.core.validate import proposer_for

from tests.helpers.core import (OUTSIDER_KEY, assert_names, client_key, expected_state_root, make_consortium,
                                member_key, put, seed_key)
from tests.helpers.governance import Chain

ALL = ("firm-a", "firm-b", "firm-c", "firm-d")
E_KEY = seed_key("member/firm-e")
FIRM_E = Member("firm-e", E_KEY.public, "127.0.0.1:7010", (client_key("firm-e").public,))


def passed(chain: Chain, proposal: Proposal) -> int:
    """Effective height of a proposal that must have passed."""
    record = chain.record(proposal)
    assert record.status == PASSED, record
    assert record.effective_height is not None
    return record.effective_height


def refused(chain: Chain, txs: list[Tx], error: type[Exception] = ValidationError) -> Exception:
    """The block carrying ``txs`` is invalid; nothing changes."""
    before = dict(chain.state.values)
    with pytest.raises(error) as info:
        chain.step(txs)
    assert chain.state.values == before
    return info.value


# --- the proposer's vote -------------------------------------------------------------------------

def test_a_proposal_is_its_proposers_yes_vote() -> None:
    """Every other member's approval is enough: the firm that proposed need not vote again."""
    chain = Chain()
    proposal = chain.propose("firm-a", AddMember(FIRM_E), "firm-e joins the books")
    chain.vote(("firm-b", "firm-c"), proposal)
    assert chain.record(proposal).status == PENDING
    chain.vote(["firm-d"], proposal)
    assert passed(chain, proposal) == chain.height + GOVERNANCE_DELAY


def test_the_proposer_may_still_vote_yes_and_a_no_withdraws_its_proposal() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", SetParams((("heartbeat_ms", 500),)))
    chain.vote(["firm-a"], proposal)  # redundant, harmless
    assert chain.record(proposal).status == PENDING
    other = chain.propose("firm-b", SetParams((("heartbeat_ms", 600),)), nonce=1)
    chain.vote(["firm-b"], other, approve=False)
    record = chain.record(other)
    assert record.status == REJECTED and "firm-b voted against" in record.reason


def test_a_lone_members_proposal_passes_in_the_block_that_carries_it() -> None:
    chain = Chain(make_consortium(("firm-a",)))
    proposal = chain.propose("firm-a", SetParams((("heartbeat_ms", 500),)))
    assert passed(chain, proposal) == chain.height + GOVERNANCE_DELAY


# --- adding a member -----------------------------------------------------------------------------

def test_add_member_takes_effect_two_blocks_after_the_last_approval() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", AddMember(FIRM_E), "firm-e joins the books")
    chain.vote(ALL[:3], proposal)
    assert chain.record(proposal).status == PENDING
    chain.vote(["firm-d"], proposal)
    last_approval = chain.height
    effective = passed(chain, proposal)
    assert effective == last_approval + GOVERNANCE_DELAY == last_approval + 2
    cs = chain.cs()
    assert cs.members_at(effective - 1) == ALL
    assert cs.members_at(effective) == ALL + ("firm-e",)
    assert cs.key_at("firm-e", effective - 1) is None and cs.key_at("firm-e", effective) == E_KEY.public
    assert [start for start, _ in cs.member_epochs()] == [0, effective]
    # the proposer schedule includes firm-e from that height on, and only from then
    proposers = {h: proposer_for(cs.members_at(h), h, 0) for h in range(1, effective + 10)}
    assert "firm-e" not in [proposers[h] for h in range(1, effective)]
    assert "firm-e" in [proposers[h] for h in range(effective, effective + 5)]
    # firm-e's client cannot write before it is a member; it can from the effective height
    while chain.height + 1 < effective:
        refused(chain, [chain.tx("firm-e", [put("books2", "k", b"early")])])
        chain.step()
    chain.step([chain.tx("firm-e", [put("books2", "k", b"joined")])])
    assert chain.state.get("books2", "k") == b"joined"
    # and its block, at its turn, is valid: check_block follows the schedule
    while proposer_for(chain.cs().members_at(chain.height + 1), chain.height + 1, 0) != "firm-e":
        chain.step()
    block = chain.build()
    assert block.header.proposer == "firm-e"
    chain.add(block)


def test_a_block_by_the_old_schedule_is_refused_after_the_change() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", AddMember(FIRM_E))
    chain.vote(ALL, proposal)
    effective = passed(chain, proposal)
    while chain.height + 1 < effective:
        chain.step()
    height = chain.height + 1
    old_turn = proposer_for(ALL, height, 0)
    new_turn = proposer_for(ALL + ("firm-e",), height, 0)
    assert old_turn != new_turn
    block = chain.build()
    forged = replace(block.header, proposer=old_turn)
    with pytest.raises(ValidationError) as info:
        chain.add(Block(forged, ()))
    assert_names(info.value, f"proposed by {old_turn}", f"turn belongs to {new_turn}")


# --- removing a member ---------------------------------------------------------------------------

def test_remove_member_needs_everyone_else_and_not_the_member() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", RemoveMembers(("firm-d",)), "firm-d stopped answering")
    error = refused(chain, [chain.vote_tx("firm-d", proposal, approve=False)])
    assert_names(error, "firm-d does not vote on its own removal")
    chain.vote(["firm-a", "firm-b"], proposal)
    assert chain.record(proposal).status == PENDING
    chain.vote(["firm-c"], proposal)
    effective = passed(chain, proposal)
    cs = chain.cs()
    assert cs.members_at(effective) == ("firm-a", "firm-b", "firm-c")
    assert cs.key_at("firm-d", effective - 1) == member_key("firm-d").public  # its history stays valid
    assert cs.key_at("firm-d", effective) is None
    assert all(proposer_for(cs.members_at(h), h, r) != "firm-d" for h in range(effective, effective + 9) for r in range(3))
    while chain.height < effective:
        chain.step()
    refused(chain, [chain.tx("firm-d", [put("books2", "k", b"after")])])


def test_remove_several_members_at_once() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", RemoveMembers(("firm-c", "firm-d")))
    chain.vote(["firm-a", "firm-b"], proposal)
    assert chain.cs().members_at(passed(chain, proposal)) == ("firm-a", "firm-b")


def test_a_member_may_leave_with_everyone_elses_approval() -> None:
    chain = Chain()
    proposal = chain.propose("firm-d", RemoveMembers(("firm-d",)), "we leave")
    chain.vote(["firm-a", "firm-b", "firm-c"], proposal)
    assert "firm-d" not in chain.cs().members_at(passed(chain, proposal))


def test_never_remove_the_last_member_through_the_chain() -> None:
    chain = Chain(make_consortium(("firm-a", "firm-b")))
    error = refused(chain, [chain.tx("firm-a", [propose_op(Proposal(RemoveMembers(("firm-a", "firm-b"))))])])
    assert_names(error, "propose", "proposal.remove_members", "keeps at least one")
    leave = chain.propose("firm-a", RemoveMembers(("firm-b",)))  # firm-a's proposal is its own yes: passed
    effective = passed(chain, leave)
    while chain.height < effective:
        chain.step()
    assert chain.cs().members_at(chain.height) == ("firm-a",)
    error = refused(chain, [chain.tx("firm-a", [propose_op(Proposal(RemoveMembers(("firm-a",))))])])
    assert_names(error, "keeps at least one")


# --- key rotation ----------------------------------------------------------------------------------

def test_rotated_key_signs_from_the_effective_height_and_the_old_key_before() -> None:
    chain = Chain()
    new = seed_key("member/firm-c/2")
    proposal = chain.propose("firm-c", RotateKey("firm-c", new.public), "new HSM")
    chain.vote(ALL, proposal)
    effective = passed(chain, proposal)
    cs = chain.cs()
    assert cs.key_at("firm-c", effective - 1) == member_key("firm-c").public
    assert cs.key_at("firm-c", effective) == new.public
    assert cs.key_history("firm-c") == ((0, member_key("firm-c").public), (effective, new.public))
    # votes after the rotation need the new key; the old one is refused
    later = chain.propose("firm-a", SetParams((("max_block_txs", 100),)))
    while chain.height + 1 < effective:
        chain.step()
    error = refused(chain, [chain.vote_tx("firm-c", later, key=member_key("firm-c"))], SignatureError)
    assert_names(error, "vote", "not signed by its member key")
    chain.keys["firm-c"] = new
    chain.step([chain.vote_tx("firm-c", later)])
    assert "firm-c" in read_votes(chain.state, later.id, ALL)
    # the old member key is no client key any more either
    refused(chain, [chain.tx("firm-c", [put("books2", "k", b"x")], key=member_key("firm-c"))])
    chain.step([chain.tx("firm-c", [put("books2", "k", b"x")], key=new)])


def test_rotating_to_a_key_used_before_is_refused() -> None:
    chain = Chain()
    new = seed_key("member/firm-c/2")
    first = chain.propose("firm-c", RotateKey("firm-c", new.public))
    chain.vote(ALL, first)
    passed(chain, first)
    for key in (member_key("firm-c").public, new.public, member_key("firm-a").public, client_key("firm-b").public):
        error = refused(chain, [chain.tx("firm-c", [propose_op(Proposal(RotateKey("firm-c", key), nonce=5))])])
        assert_names(error, "proposal.rotate_key", "already used")


# --- votes that do not carry ---------------------------------------------------------------------

def test_votes_lacking_approvals_never_take_effect() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", AddMember(FIRM_E))
    chain.vote(["firm-a", "firm-b", "firm-c"], proposal)
    for _ in range(10):
        chain.step()
    assert chain.record(proposal).status == PENDING
    cs = chain.cs()
    assert cs.changes == () and all(cs.members_at(h) == ALL for h in range(chain.height + 20))
    # after the deadline the missing vote is refused and nothing ever changes
    late = chain.record(proposal).time_ms + PROPOSAL_TTL_MS + 1
    with pytest.raises(ValidationError) as info:
        chain.step([chain.vote_tx("firm-d", proposal, time_ms=late)], time_ms=late)
    assert_names(info.value, "vote", "expired")
    assert chain.record(proposal).status_at(late) == "expired"
    chain.step(time_ms=late)
    assert chain.cs().members_at(chain.height + 10) == ALL


def test_one_no_rejects_and_later_votes_are_refused() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", AddMember(FIRM_E))
    chain.vote(["firm-a", "firm-b"], proposal)
    chain.vote(["firm-c"], proposal, approve=False)
    record = chain.record(proposal)
    assert record.status == REJECTED and record.reason == "firm-c voted against"
    assert record.decided_height == chain.height and record.effective_height is None
    error = refused(chain, [chain.vote_tx("firm-d", proposal)])
    assert_names(error, "already rejected")
    assert read_pending(chain.state) == ()
    assert chain.cs().members_at(chain.height + 5) == ALL
    again = chain.propose("firm-a", AddMember(FIRM_E), nonce=1)  # asked again, a new id
    chain.vote(ALL, again)
    assert "firm-e" in chain.cs().members_at(passed(chain, again))


@pytest.mark.parametrize("case", ["unknown", "non-member", "duplicate", "client-key", "forged", "other-chain"])
def test_bad_votes_are_refused(case: str) -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", SetParams((("max_block_txs", 100),)))
    chain.vote(["firm-a"], proposal)
    if case == "unknown":
        tx = chain.vote_tx("firm-b", Proposal(SetParams((("max_block_txs", 99),))))
        fragments: tuple[str, ...] = ("unknown on this chain",)
    elif case == "non-member":
        vote = Vote.create(OUTSIDER_KEY, chain.cid, proposal.id, "firm-z", True)
        tx = chain.tx("firm-b", [vote_op(vote)])
        fragments = ("firm-z is not a member at height",)
    elif case == "duplicate":
        tx = chain.vote_tx("firm-a", proposal, carrier="firm-b")
        fragments = ("firm-a already voted",)
    elif case == "client-key":
        tx = chain.vote_tx("firm-b", proposal, key=client_key("firm-b"))
        fragments = ("firm-b's vote", "not signed by its member key")
    elif case == "forged":
        tx = chain.vote_tx("firm-b", proposal, key=member_key("firm-c"))
        fragments = ("not signed by its member key",)
    else:
        other = consortium_id(make_consortium(ALL, name="another"))
        vote = Vote.create(member_key("firm-b"), other, proposal.id, "firm-b", True)
        tx = chain.tx("firm-b", [vote_op(vote)])
        fragments = ("not signed by its member key",)
    error = refused(chain, [tx])
    assert_names(error, f"tx {tx.txid.hex()[:16]}: vote", *fragments)


def test_any_member_may_carry_another_members_signed_vote() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", SetParams((("max_block_txs", 100),)))
    chain.step([chain.vote_tx(v, proposal, carrier="firm-a") for v in ALL])
    assert chain.cs().params_at(passed(chain, proposal)).max_block_txs == 100


# --- bad proposals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("proposal, fragments", [
    (Proposal(RemoveMembers(("firm-z",))), ("proposal.remove_members", "firm-z is not a member")),
    (Proposal(RotateKey("firm-z", seed_key("x").public)), ("proposal.rotate_key", "'firm-z' is not a member")),
    (Proposal(SetParams((("turn_timeout_ms", 500),))), ("proposal.set_params", "heartbeat_ms", "smaller than")),
    (Proposal(SetParams((("clock_skew_ms", 10**9),))), ("proposal.set_params", "clock_skew_ms", "[0, 60000]")),
    (Proposal(AddMember(replace(FIRM_E, key=member_key("firm-a").public))), ("proposal.add_member", "already used")),
    (Proposal(AddMember(replace(FIRM_E, name="firm-a"))), ("proposal.add_member", "already a member")),
    (Proposal(SetNamespace(NamespaceRule("books", ("firm-z",)))), ("proposal.set_namespace", "firm-z is not a member")),
])
def test_bad_proposals_are_refused_with_clear_errors(proposal: Proposal, fragments: tuple[str, ...]) -> None:
    chain = Chain()
    tx = chain.tx("firm-b", [propose_op(proposal)])
    error = refused(chain, [tx])
    assert_names(error, f"tx {tx.txid.hex()[:16]}: propose", *fragments)


@pytest.mark.parametrize("op, fragments", [
    (Op(OP_PUT, GOV_NAMESPACE, "propose", b"\x01"), ("propose", "proposal", "expected an array")),
    (Op(OP_PUT, GOV_NAMESPACE, "vote", b"not cbor \xff"), ("vote", "vote")),
    (Op(OP_PUT, GOV_NAMESPACE, "members", b"{}"), ("takes only 'propose' and 'vote' requests", "'members'")),
    (Op(OP_PUT, GOV_NAMESPACE, "change/0000000000", b"\x00"), ("takes only",)),
])
def test_nothing_but_requests_reaches_the_system_namespace(op: Op, fragments: tuple[str, ...]) -> None:
    chain = Chain()
    tx = chain.tx("firm-a", [op])
    error = refused(chain, [tx])
    assert_names(error, f"tx {tx.txid.hex()[:16]}: ", *fragments)
    assert not any(ns == GOV_NAMESPACE for ns, _ in chain.state.values)


def test_a_proposal_is_made_once_and_open_proposals_are_capped() -> None:
    chain = Chain()
    first = chain.propose("firm-b", SetParams((("max_block_txs", 100),)))
    error = refused(chain, [chain.tx("firm-c", [propose_op(first)])])
    assert_names(error, "was already made", "change the nonce")
    for nonce in range(1, MAX_PENDING_PER_MEMBER):
        chain.propose("firm-b", SetParams((("max_block_txs", 100),)), nonce=nonce)
    error = refused(chain, [chain.tx("firm-b", [propose_op(Proposal(SetParams((("max_block_txs", 1),))))])])
    assert_names(error, f"firm-b already has {MAX_PENDING_PER_MEMBER} open proposals")
    chain.propose("firm-c", SetParams((("max_block_txs", 1),)))  # others are not blocked
    assert len(read_pending(chain.state)) == MAX_PENDING_PER_MEMBER + 1


def test_governance_needs_the_block_height() -> None:
    chain = Chain()
    tx = chain.tx("firm-a", [propose_op(Proposal(SetParams((("max_block_txs", 100),))))])
    with pytest.raises(ValidationError) as info:
        apply_txs(MemoryState(), [tx], chain.consortium, chain.cid, chain.next_time(), ZERO_HASH)
    assert_names(info.value, f"tx {tx.txid.hex()[:16]}", "needs a caller that follows governance")
    # a pool that does not follow governance cannot admit it either; one that does, can
    with pytest.raises(ValidationError):
        check_tx_static(tx, chain.consortium)
    check_tx_static(tx, chain.cs().at(chain.height + 1), governance=True)


def test_closed_namespaces_do_not_close_governance() -> None:
    chain = Chain(make_consortium(ALL, open_namespaces=False))
    proposal = chain.propose("firm-c", SetParams((("max_block_txs", 100),)))
    assert chain.record(proposal).status == PENDING
    refused(chain, [chain.tx("firm-c", [put("anything", "k", b"v")])], AccessError)


# --- decisions against the member set of the moment ------------------------------------------------

def test_a_pending_proposal_passes_when_the_missing_voter_is_removed() -> None:
    chain = Chain()
    waiting = chain.propose("firm-a", SetParams((("max_block_txs", 100),)))
    chain.vote(["firm-a", "firm-b", "firm-c"], waiting)  # firm-d never votes
    removal = chain.propose("firm-a", RemoveMembers(("firm-d",)))
    chain.vote(["firm-a", "firm-b", "firm-c"], removal)
    removed_at = passed(chain, removal)
    while chain.height < removed_at:
        assert chain.record(waiting).status == PENDING
        chain.step()
    record = chain.record(waiting)
    assert record.status == PASSED and record.decided_height == removed_at
    assert chain.cs().params_at(removed_at + GOVERNANCE_DELAY).max_block_txs == 100
    assert chain.cs().params_at(removed_at + GOVERNANCE_DELAY - 1).max_block_txs == 5000


def test_a_new_member_must_approve_what_is_still_open_when_it_joins() -> None:
    chain = Chain()
    join = chain.propose("firm-a", AddMember(FIRM_E))
    later = chain.propose("firm-a", SetParams((("max_block_txs", 100),)))
    chain.vote(ALL, join)
    joined = passed(chain, join)
    while chain.height + 1 < joined:
        chain.step()
    chain.vote(ALL, later)  # from the joining height on, firm-e is one of "everyone"
    assert chain.record(later).status == PENDING
    chain.keys["firm-e"] = E_KEY
    chain.vote(["firm-e"], later)
    assert chain.record(later).status == PASSED


def test_a_change_that_no_longer_applies_when_it_passes_fails_with_its_reason() -> None:
    chain = Chain()
    one = chain.propose("firm-a", AddMember(FIRM_E))
    two = chain.propose("firm-b", AddMember(replace(FIRM_E, address="127.0.0.1:7011")))
    chain.step([chain.vote_tx(v, one) for v in ALL])
    chain.step([chain.vote_tx(v, two) for v in ALL])  # firm-e is not yet in force: it passes, then fails
    record = chain.record(two)
    assert record.status == FAILED and "already a member" in record.reason
    assert len(chain.cs().changes) == 1


# --- effects are ordinary writes -------------------------------------------------------------------

def test_governance_effects_are_writes_under_the_state_root() -> None:
    chain = Chain()
    proposal = Proposal(RemoveMembers(("firm-d",)))
    effects = chain.step([chain.tx("firm-a", [propose_op(proposal), put("books", "k", b"v")])])
    assert effects.writes[-1] == ("books", "k", b"v")
    assert (GOV_NAMESPACE, proposal_key(proposal.id)) in {(ns, k) for ns, k, _ in effects.writes}
    assert effects.state_root == expected_state_root(chain.state.values)
    chain.vote(["firm-a", "firm-b"], proposal)
    effects = chain.step([chain.vote_tx("firm-c", proposal)])
    keys = [k for ns, k, _ in effects.writes if ns == GOV_NAMESPACE]
    assert keys == [vote_key(proposal.id, "firm-c"), change_key(0), CHANGES_KEY, proposal_key(proposal.id), "pending"]
    count, _digest = decode(chain.state.get(GOV_NAMESPACE, CHANGES_KEY))  # type: ignore[arg-type]
    assert count == 1


def test_a_proposer_fills_its_block_leaving_out_requests_that_no_longer_apply() -> None:
    chain = Chain()
    proposal = chain.propose("firm-a", AddMember(FIRM_E))
    chain.vote(["firm-a", "firm-b", "firm-c"], proposal)
    no = chain.vote_tx("firm-d", proposal, approve=False)
    yes = chain.vote_tx("firm-d", proposal, approve=True, carrier="firm-a")
    data = chain.tx("firm-b", [put("books", "k", b"v")])
    height = chain.height + 1
    run = BlockRun(chain.state, chain.consortium, chain.cid, chain.next_time(), height=height)
    assert run.try_add(no) is None
    error = run.try_add(yes)
    assert error is not None and "already rejected" in str(error)
    assert run.try_add(data) is None
    assert run.try_add(data) is not None  # a replay inside the block
    effects = run.effects(chain.tip.state_root)
    assert effects.txids == (no.txid, data.txid)
    assert effects == apply_txs(chain.state, [no, data], chain.consortium, chain.cid, chain.next_time(),
                                chain.tip.state_root, height=height)
    assert run.consortium_state is not None and run.consortium_state.changes == ()


def test_namespace_and_params_changes_apply_from_their_height() -> None:
    chain = Chain()
    rule = chain.propose("firm-a", SetNamespace(NamespaceRule("books", ("firm-c",), ("firm-c",))))
    params = chain.propose("firm-a", SetParams((("max_block_txs", 1),)))
    chain.step([chain.vote_tx(v, p, carrier="firm-a") for p in (rule, params) for v in ALL])
    effective = passed(chain, rule)
    assert passed(chain, params) == effective
    refused(chain, [chain.tx("firm-c", [put("books", "k", b"v")])], AccessError)
    chain.step([chain.tx("firm-a", [put("books", "k", b"v")]), chain.tx("firm-b", [put("books", "k", b"w")])])
    assert chain.height == effective - 1
    cs = chain.cs()
    assert cs.at(effective).rule("books") == NamespaceRule("books", ("firm-c",), ("firm-c",))
    error = refused(chain, [chain.tx("firm-c", [put("books", "k", b"1")]), chain.tx("firm-c", [put("books", "k", b"2")])],
                    ValidationError)
    assert_names(error, "more than max_block_txs=1")
    refused(chain, [chain.tx("firm-a", [put("books", "k", b"v")])], AccessError)
    chain.step([chain.tx("firm-c", [put("books", "k", b"mine")])])
    assert chain.state.get("books", "k") == b"mine"


def test_without_governance_nothing_changes() -> None:
    """A chain that never governs: one read per block, the genesis consortium at every height."""
    chain = Chain()
    for i in range(5):
        chain.step([chain.tx("firm-a", [put("books", f"k{i}", b"v")])])
    cs = chain.cs()
    assert cs.at(10**9) is chain.consortium and cs.changes == ()
    assert not any(ns == GOV_NAMESPACE for ns, _ in chain.state.values)
    assert ConsortiumState.load(chain.consortium, chain.state, chain.gov_states) is cs


def test_a_state_cache_folds_each_set_of_changes_once_and_belongs_to_one_consortium() -> None:
    chain = Chain()
    cache = StateCache(chain.consortium, size=1)
    assert ConsortiumState.load(chain.consortium, chain.state, cache) is cache.genesis_state
    proposal = chain.propose("firm-a", AddMember(FIRM_E), "firm-e joins the books")
    chain.vote(ALL, proposal)
    passed(chain, proposal)
    loaded = ConsortiumState.load(chain.consortium, chain.state, cache)
    assert loaded.changes and ConsortiumState.load(chain.consortium, chain.state, cache) is loaded
    assert ConsortiumState.load(chain.consortium, chain.state) is not loaded  # no cache: a fresh fold
    assert ConsortiumState.load(chain.consortium, chain.state).digest == loaded.digest
    cache.put(ConsortiumState(chain.consortium, loaded.changes, b"\x01" * 32))  # size 1: evicts the other
    assert len(cache) == 1 and cache.get(loaded.digest) is None and cache.get(b"\x01" * 32) is not None
    other = Chain(make_consortium(ALL[:3]))
    with pytest.raises(ValueError, match="another consortium"):
        ConsortiumState.load(other.consortium, other.state, cache)
    with pytest.raises(ValueError, match="another consortium"):
        cache.put(ConsortiumState(other.consortium))


def test_governance_block_reads_its_own_writes() -> None:
    """A proposal and every vote in one transaction pass in that block."""
    chain = Chain()
    proposal = Proposal(SetParams((("max_block_txs", 100),)))
    votes = [vote_op(Vote.create(member_key(v), chain.cid, proposal.id, v, True)) for v in ALL]
    chain.step([chain.tx("firm-a", [propose_op(proposal), *votes])])
    assert passed(chain, proposal) == chain.height + GOVERNANCE_DELAY
