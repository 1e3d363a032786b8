"""Governance proposals and votes as objects: canonical encoding, ids, signatures, and the rules
a change must satisfy to apply (each refused with a message naming the rule)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from peerdb.core.codec import encode, signing_message, tagged_hash
from peerdb.core.consortium import Member, NamespaceRule
from peerdb.core.errors import DecodeError, ValidationError
from peerdb.core.keys import verify
from peerdb.core.model import DOMAIN_BLOCK, DOMAIN_TX, DOMAIN_VOTE, GOV_NAMESPACE, OP_DELETE, OP_PUT, Op
from peerdb.core.proposals import (
    AddMember,
    Change,
    Proposal,
    RemoveMembers,
    RotateKey,
    SetNamespace,
    SetParams,
    UpdateMember,
    Vote,
    apply_change,
    vote_hash,
)

from tests.helpers.core import CID, CONSORTIUM, assert_names, client_key, make_consortium, member_key, seed_key

NEW_KEY = seed_key("member/firm-e").public
NEW_CLIENT = seed_key("client/firm-e").public
FIRM_E = Member("firm-e", NEW_KEY, "127.0.0.1:7010", (NEW_CLIENT,), b"\x30\x01", "127.0.0.1:8010")

CHANGES: list[Change] = [
    AddMember(FIRM_E),
    RemoveMembers(("firm-b", "firm-d")),
    RotateKey("firm-c", NEW_KEY, b"cert"),
    UpdateMember("firm-a", "10.0.0.1:7001", (NEW_CLIENT,), None, "10.0.0.1:8001"),
    SetParams((("max_block_txs", 100), ("turn_timeout_ms", 5000))),
    SetNamespace(NamespaceRule("ledger", ("firm-a", "firm-b"), ("*",), private=True)),
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.kind)
def test_proposal_round_trip_and_id(change: Change) -> None:
    proposal = Proposal(change, "why we ask", 7)
    assert proposal.raw == encode([change.kind, change.body(), "why we ask", 7])
    assert proposal.id == tagged_hash("proposal", proposal.raw)
    again = Proposal.decode(proposal.raw)
    assert again.raw == proposal.raw and again.id == proposal.id and again.kind == change.kind
    assert Proposal(change, "why we ask", 8).id != proposal.id  # the nonce makes a new question


@pytest.mark.parametrize("data, fragments", [
    (encode(["grant_everything", [], "", 0]), ("proposal.kind", "not one of")),
    (encode(["remove_members", ["firm-d", "firm-b"], "", 0]), ("proposal.remove_members", "sorted")),
    (encode(["remove_members", [], "", 0]), ("proposal.remove_members", "need 1..64")),
    (encode(["set_params", [["max_block_txs", 1], ["heartbeat_ms", 1]], "", 0]), ("set_params", "sorted")),
    (encode(["set_params", [["block_size", 1]], "", 0]), ("proposal.set_params[0].name", "not a parameter")),
    (encode(["set_params", [["max_block_txs", "many"]], "", 0]), ("proposal.set_params.max_block_txs", "integer")),
    (encode(["set_params", [], "", 0]), ("proposal.set_params", "need 1..9")),
    (encode(["rotate_key", ["firm-c", b"short", None], "", 0]), ("proposal.rotate_key.key", "32 bytes")),
    (encode(["add_member", ["Firm E", NEW_KEY, "h:1", [], None, None], "", 0]), ("add_member.name", "not a valid")),
    (encode(["add_member", ["firm-e", NEW_KEY, "no port", [], None, None], "", 0]), ("proposal.add_member", "host:port")),
    (encode(["add_member", ["firm-e", NEW_KEY, "h:1", [NEW_CLIENT, NEW_CLIENT], None, None], "", 0]),
     ("add_member.clients", "distinct")),
    (encode(["set_namespace", ["_gov", ["*"], ["*"], False], "", 0]), ("set_namespace.name", "not a valid")),
    (encode(["set_namespace", ["books", ["*"], ["*"], 1], "", 0]), ("set_namespace.private", "true or false")),
    (encode(["remove_members", ["firm-b"], "x" * 501, 0]), ("proposal.note", "500")),
    (encode(["remove_members", ["firm-b"], "", -1]), ("proposal.nonce", "outside")),
    (encode(["remove_members", ["firm-b"], ""]), ("proposal", "expected 4 elements")),
])
def test_malformed_proposals_are_refused_naming_the_field(data: bytes, fragments: tuple[str, ...]) -> None:
    with pytest.raises(DecodeError) as info:
        Proposal.decode(data)
    assert_names(info.value, *fragments)


def test_vote_is_signed_by_the_member_key_in_its_own_domain() -> None:
    pid = Proposal(RemoveMembers(("firm-d",))).id
    vote = Vote.create(member_key("firm-a"), CID, pid, "firm-a", True)
    assert Vote.decode(vote.encode()) == vote
    assert vote.valid(CID, member_key("firm-a").public)
    assert verify(member_key("firm-a").public, vote.signature, DOMAIN_VOTE, CID, vote_hash(pid, "firm-a", True))
    assert signing_message(DOMAIN_VOTE, CID, pid).startswith(b"PEERDB-SIG/1/vote/")
    # not valid as anything else, nor with another key, nor with its meaning changed
    assert not vote.valid(CID, client_key("firm-a").public)
    assert not replace(vote, approve=False).valid(CID, member_key("firm-a").public)
    assert not replace(vote, member="firm-b").valid(CID, member_key("firm-a").public)
    assert not verify(member_key("firm-a").public, vote.signature, DOMAIN_BLOCK, CID, vote_hash(pid, "firm-a", True))
    assert not verify(member_key("firm-a").public, vote.signature, DOMAIN_TX, CID, vote_hash(pid, "firm-a", True))
    assert not vote.valid(tagged_hash("tx", b"other consortium"), member_key("firm-a").public)


@pytest.mark.parametrize("data, fragments", [
    (encode([b"x" * 31, "firm-a", True, b"s" * 64]), ("vote.proposal", "32 bytes")),
    (encode([b"x" * 32, "firm-a", 1, b"s" * 64]), ("vote.approve", "true or false")),
    (encode([b"x" * 32, "Firm A", True, b"s" * 64]), ("vote.member", "not a valid")),
    (encode([b"x" * 32, "firm-a", True]), ("vote", "expected 4 elements")),
])
def test_malformed_votes_are_refused(data: bytes, fragments: tuple[str, ...]) -> None:
    with pytest.raises(DecodeError) as info:
        Vote.decode(data)
    assert_names(info.value, *fragments)


def test_gov_namespace_takes_puts_only_and_stays_closed_to_names() -> None:
    assert Op(OP_PUT, GOV_NAMESPACE, "vote", b"").namespace == GOV_NAMESPACE
    with pytest.raises(DecodeError) as info:
        Op(OP_DELETE, GOV_NAMESPACE, "vote")
    assert_names(info.value, "op.kind", "must be a put")
    for other in ("_other", "_GOV", "_gov2"):
        with pytest.raises(DecodeError):
            Op(OP_PUT, other, "k", b"")


# --- apply_change ----------------------------------------------------------------------------------

def test_changes_apply_in_place() -> None:
    c = CONSORTIUM
    added = apply_change(c, AddMember(FIRM_E))
    assert added.member_names == c.member_names + ("firm-e",)  # appended: last in the turn order
    assert added.member_of_client(NEW_CLIENT) == "firm-e"
    removed = apply_change(c, RemoveMembers(("firm-b",)))
    assert removed.member_names == ("firm-a", "firm-c", "firm-d")
    assert "firm-b" not in removed.rule("books").writers  # type: ignore[union-attr]
    rotated = apply_change(c, RotateKey("firm-c", NEW_KEY))
    assert rotated.member("firm-c").key == NEW_KEY  # type: ignore[union-attr]
    assert rotated.member_names == c.member_names  # same turn slot
    assert rotated.member_of_client(member_key("firm-c").public) is None  # the old key is no client any more
    params = apply_change(c, SetParams((("turn_timeout_ms", 9000),)))
    assert params.params.turn_timeout_ms == 9000 and params.params.heartbeat_ms == c.params.heartbeat_ms
    ruled = apply_change(c, SetNamespace(NamespaceRule("books", ("firm-c",), ("firm-c",), True)))
    rule = ruled.rule("books")
    assert rule is not None and rule.writers == ("firm-c",) and rule.private
    assert ruled.may_write("firm-c", "books") and not ruled.may_write("firm-a", "books")
    updated = apply_change(c, UpdateMember("firm-a", "10.0.0.1:7001", (NEW_CLIENT,)))
    assert updated.member("firm-a").address == "10.0.0.1:7001"  # type: ignore[union-attr]
    assert updated.member_of_client(NEW_CLIENT) == "firm-a"
    assert updated.member_of_client(client_key("firm-a").public) is None


@pytest.mark.parametrize("change, used_names, used_keys, fragments", [
    (RemoveMembers(("firm-z",)), (), (), ("proposal.remove_members", "firm-z is not a member")),
    (RotateKey("firm-z", NEW_KEY), (), (), ("proposal.rotate_key", "'firm-z' is not a member")),
    (UpdateMember("firm-z", "h:1"), (), (), ("proposal.update_member", "'firm-z' is not a member")),
    (SetNamespace(NamespaceRule("books", ("firm-z",))), (), (), ("proposal.set_namespace", "firm-z is not a member")),
    (RemoveMembers(("firm-a", "firm-b", "firm-c", "firm-d")), (), (), ("proposal.remove_members", "every member")),
    (SetParams((("heartbeat_ms", 3000),)), (), (), ("proposal.set_params", "heartbeat_ms", "smaller than turn_timeout_ms")),
    (SetParams((("max_block_txs", 0),)), (), (), ("proposal.set_params", "params.max_block_txs", "[1, 20000]")),
    (AddMember(replace(FIRM_E, key=member_key("firm-b").public)), (), (), ("proposal.add_member", "already used")),
    (AddMember(replace(FIRM_E, clients=(client_key("firm-d").public,))), (), (), ("proposal.add_member", "already used")),
    (AddMember(replace(FIRM_E, name="firm-b")), (), (), ("proposal.add_member", "'firm-b' is or was already a member")),
    (AddMember(FIRM_E), ("firm-e",), (), ("proposal.add_member", "'firm-e' is or was already a member")),
    (AddMember(FIRM_E), (), (NEW_KEY,), ("proposal.add_member", "already used")),
    (RotateKey("firm-c", member_key("firm-c").public), (), (), ("proposal.rotate_key", "already used")),
    (RotateKey("firm-c", client_key("firm-a").public), (), (), ("proposal.rotate_key", "already used")),
    (RotateKey("firm-c", NEW_KEY), (), (NEW_KEY,), ("proposal.rotate_key", "already used")),
    (UpdateMember("firm-a", "h:1", (client_key("firm-b").public,)), (), (), ("proposal.update_member", "already used")),
    (UpdateMember("firm-a", "h:99999"), (), (), ("proposal.update_member", "port in 1..65535")),
])
def test_bad_changes_are_refused_naming_the_rule(change: Change, used_names: tuple[str, ...],
                                                 used_keys: tuple[bytes, ...], fragments: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        apply_change(CONSORTIUM, change, frozenset(used_names), frozenset(used_keys))
    assert_names(info.value, *fragments)


def test_never_remove_the_last_member() -> None:
    solo = make_consortium(("firm-a",))
    with pytest.raises(ValidationError) as info:
        apply_change(solo, RemoveMembers(("firm-a",)))
    assert_names(info.value, "proposal.remove_members", "keeps at least one")


def test_no_more_than_max_members() -> None:
    full = make_consortium(tuple(f"m{i}" for i in range(64)))
    with pytest.raises(ValidationError) as info:
        apply_change(full, AddMember(FIRM_E))
    assert_names(info.value, "proposal.add_member", "64 members")


def test_update_member_may_keep_its_own_clients() -> None:
    own = client_key("firm-a").public
    updated = apply_change(CONSORTIUM, UpdateMember("firm-a", "10.0.0.1:1", (own, NEW_CLIENT)))
    assert updated.member("firm-a").clients == (own, NEW_CLIENT)  # type: ignore[union-attr]


def test_worked_example_of_protocol_section_20() -> None:
    """The values docs/protocol.md §20.12 prints, from the §15 consortium."""
    from peerdb.core.consortium import Consortium
    from peerdb.core.keys import SigningKey
    from peerdb.core.model import consortium_id

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    members = tuple(Member(f"firm-{c}", k.public, f"127.0.0.1:{7001 + i}") for i, (c, k) in enumerate(zip("abcd", keys)))
    cid = consortium_id(Consortium("example", 1700000000000, members))
    proposal = Proposal(RemoveMembers(("firm-d",)), "firm-d left", 1)
    assert proposal.raw.hex() == "846e72656d6f76655f6d656d6265727381666669726d2d646b6669726d2d64206c65667401"
    assert proposal.id.hex() == "e018cf9c311c723f78f889e7d0e872f9b11fac0b0d9e75cbf530d9ce75bb1fc8"
    vote = Vote.create(keys[0], cid, proposal.id, "firm-a", True)
    assert vote_hash(proposal.id, "firm-a", True).hex() == "df8c8b60158098ba14b2b43fa6a63a3b9dfe07cba2599bb97f604fd7bc128439"
    assert len(signing_message(DOMAIN_VOTE, cid, vote_hash(proposal.id, "firm-a", True))) == 82
    assert vote.signature.hex() == ("1d0aaae1be878d2e0e57d46841903c8b301378793e13e292c102196f53ed444e"
                                    "0857a32f295d816376262f01fd15c836ee2152445246d5b59b5141e5f042650d")
    assert len(vote.encode()) == 109
