"""The verifier follows on-chain governance: members and keys by height (docs/protocol.md §20).

Chains come from :class:`tests.helpers.governance.Chain` (every block checked like a member would
on the way); each block is signed by the members in force at its height with their keys there.
The exporter's claims come from a block tree that follows the best chain's governance, as a
node's does after a restart (``Engine._load``): :class:`GovSource`.

Every test runs twice: with the verifier's default pipeline (the whole small bundle's
signatures are queued before any block is replayed, so every key after a change is first
guessed from genesis and must be corrected), and with a pipeline one item deep (the guess comes
from the state of the block two below, which is already exact).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pytest

import peerdb.audit.verify as verify_module
from peerdb.audit.bundle import BlockEntry, Head, Item
from peerdb.audit.errors import AuditFailure
from peerdb.audit.export import MemorySource
from peerdb.core.chain import BlockTree
from peerdb.core.consortium import Consortium, Member, Params
from peerdb.core.errors import ValidationError
from peerdb.core.governance import PASSED, propose_op, read_proposal
from peerdb.core.keys import SigningKey
from peerdb.core.membership import ConsortiumState
from peerdb.core.model import Block, BlockSignature, Evidence, Objection, Tx, genesis_header
from peerdb.core.proposals import AddMember, Change, Proposal, RemoveMembers, RotateKey, SetParams
from peerdb.core.validate import proposer_for

from tests.helpers.core import CONSORTIUM, MEMBER_NAMES, client_key, make_consortium, member_key, put, seed_key
from tests.helpers.governance import Chain
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.bundles import assemble, block_item, items_of, verify

ALL = MEMBER_NAMES
NEW_C = seed_key("member/firm-c/2")
E_KEY = seed_key("member/firm-e")
FIRM_E = Member("firm-e", E_KEY.public, "127.0.0.1:7010", (client_key("firm-e").public,))
KEYRING: dict[bytes, SigningKey] = {k.public: k for k in
                                    [member_key(n) for n in ALL] + [NEW_C, E_KEY]}
"""Every member key a test chain uses, by public key: signatures are made with the key the
chain's governance gives a member at the block's height."""


@pytest.fixture(params=["default pipeline", "one item deep"], autouse=True)
def pipeline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "one item deep":
        monkeypatch.setattr(verify_module, "MAX_PENDING_ITEMS", 1)


# --- books -------------------------------------------------------------------------------------

class GovSource(MemorySource):
    """A node's books whose tree follows the governance state ``gov`` of its best tip: a
    signature by a member that state never had is not counted (``Engine._tree_sign``)."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(chain.consortium)
        self.gov = chain.cs()

    def tree(self) -> BlockTree:
        tree = BlockTree(genesis_header(self.consortium), self.consortium.member_names,
                         self.gov if self.gov.changes else None)
        for block in sorted(self.blocks.values(), key=lambda b: b.height):
            tree.add_header(block.header)
        for block_hash, sigs in self.sigs.items():
            for member in sigs:
                try:
                    tree.add_signature(block_hash, member)
                except ValidationError:
                    pass
        for ev in self.evidence_by_id.values():
            tree.add_culprit(ev.member)
        for block_hash in self.anchors:
            tree.set_anchored(block_hash)
        return tree


def sign(chain: Chain, block: Block, member: str, key: SigningKey | None = None,
         state: ConsortiumState | None = None) -> BlockSignature:
    """``member``'s signature with its key at the block's height (or ``key``)."""
    if key is None:
        public = (state or chain.cs()).key_at(member, block.height)
        assert public is not None, (member, block.height)
        key = KEYRING[public]
    return BlockSignature.create(key, chain.cid, member, block.hash)


def sign_all(chain: Chain, block: Block, members: Iterable[str] | None = None,
             state: ConsortiumState | None = None) -> list[BlockSignature]:
    state = state or chain.cs()
    names = state.members_at(block.height) if members is None else members
    return [sign(chain, block, m, state=state) for m in names]


def books(chain: Chain, skip: Callable[[Block, str], bool] = lambda _b, _m: False) -> GovSource:
    """Every block of ``chain`` (best) signed by every member in force at its height."""
    src = GovSource(chain)
    state = chain.cs()
    for block in chain.blocks:
        src.add_block(block, [s for s in sign_all(chain, block, state=state) if not skip(block, s.member)])
    return src


def effective(chain: Chain, proposal_id: bytes) -> int:
    record = read_proposal(chain.state, proposal_id)
    assert record is not None and record.status == PASSED, record
    assert record.effective_height is not None
    return record.effective_height


def governed_chain(change: Change, voters: Sequence[str], after: int = 6,
                   rotate: tuple[str, SigningKey] | None = None,
                   block_evidence: Callable[[Chain, int], Sequence[Evidence]] | None = None,
                   consortium: Consortium = CONSORTIUM) -> tuple[Chain, int]:
    """Two plain blocks, then ``change`` proposed by firm-a and approved by ``voters`` in one
    block, then blocks with a write each until ``after`` blocks past the effective height;
    ``block_evidence(chain, effective)`` may give evidence for the block two past it."""
    chain = Chain(consortium)
    chain.step([chain.tx("firm-a", [put("books", "before", b"1")])])
    chain.step()
    proposal = chain.propose("firm-a", change, "audit test")
    chain.step([chain.vote_tx(v, proposal) for v in voters])
    eff = effective(chain, proposal.id)
    if rotate is not None:
        chain.keys[rotate[0]] = rotate[1]
    while chain.height < eff + after:
        evidence = block_evidence(chain, eff) if block_evidence and chain.height + 1 == eff + 2 else ()
        chain.add(chain.build([chain.tx("firm-b", [put("books", f"k{chain.height}", b"v")])], evidence=evidence))
    return chain, eff


def rebuild(src: MemorySource, items_change: Callable[[list[Item]], None]) -> bytes:
    items = items_of(src.bundle("firm-a", now_ms=1_700_000_100_000))
    items_change(items)
    return assemble(items)


def resign(height: int, member: str, sig: bytes | None) -> Callable[[list[Item]], None]:
    """Replace (or with ``sig=None`` remove; or add) ``member``'s signature on the best block at ``height``."""
    def apply(items: list[Item]) -> None:
        i = block_item(items, height)
        entry = items[i]
        assert isinstance(entry, BlockEntry)
        sigs = [s for s in entry.sigs if s[0] != member] + ([(member, sig)] if sig is not None else [])
        items[i] = dataclasses.replace(entry, sigs=tuple(sorted(sigs)))
    return apply


def refused(data: bytes, where: str, reason: str) -> AuditFailure:
    with pytest.raises(AuditFailure) as info:
        verify(data)
    assert re.search(where, info.value.where), (info.value.where, info.value.reason)
    assert re.search(reason, info.value.reason), (info.value.where, info.value.reason)
    return info.value


def block_at(chain: Chain, height: int) -> Block:
    block = chain.blocks[height - 1]
    assert block.height == height
    return block


def cosigned_by(chain: Chain, member: str, heights: Iterable[int]) -> int:
    """The first of ``heights`` whose block ``member`` co-signs without proposing it."""
    return next(h for h in heights if block_at(chain, h).header.proposer != member)


# --- (a) key rotation ----------------------------------------------------------------------------

ROTATION, ROTATED_AT = governed_chain(RotateKey("firm-c", NEW_C.public), ALL, rotate=("firm-c", NEW_C))


def test_a_rotated_key_signs_from_its_height_and_the_old_key_before() -> None:
    chain, eff = ROTATION, ROTATED_AT
    report = verify(books(chain).bundle("firm-a"))
    tip = chain.height
    assert report.blocks == tip and report.signatures == {m: tip for m in ALL}
    assert (report.heads.tentative, report.heads.majority, report.heads.unanimous_signed) == (tip, tip, tip)
    old = member_key("firm-c").public.hex()
    assert report.key_history["firm-c"] == [(0, old), (eff, NEW_C.public.hex())]
    assert report.key_history["firm-a"] == [(0, member_key("firm-a").public.hex())]
    assert report.to_json()["key_history"]["firm-c"] == [[0, old], [eff, NEW_C.public.hex()]]
    assert f"firm-c: from 0 {old[:16]}; from {eff} {NEW_C.public.hex()[:16]}" in report.text()
    # firm-c proposed a block with each key: both proposer signatures verified
    proposers = {b.height: b.header.proposer for b in chain.blocks}
    assert any(proposers[h] == "firm-c" for h in range(1, eff)) and \
        any(proposers[h] == "firm-c" for h in range(eff, tip + 1))


def test_the_old_key_after_the_rotation_is_refused_naming_member_and_block() -> None:
    chain, eff = ROTATION, ROTATED_AT
    old = member_key("firm-c")
    h = cosigned_by(chain, "firm-c", range(eff, chain.height + 1))
    data = rebuild(books(chain), resign(h, "firm-c", sign(chain, block_at(chain, h), "firm-c", key=old).signature))
    refused(data, rf"^block {h} ", r"^firm-c's signature does not verify")
    p = next(b.height for b in chain.blocks if b.height >= eff and b.header.proposer == "firm-c")
    data = rebuild(books(chain), resign(p, "firm-c", sign(chain, block_at(chain, p), "firm-c", key=old).signature))
    refused(data, rf"^block {p} .*proposed by firm-c", r"proposer's \(firm-c\) signature does not verify")


def test_the_new_key_before_the_rotation_is_refused() -> None:
    chain, eff = ROTATION, ROTATED_AT
    h = cosigned_by(chain, "firm-c", range(eff - 1, 0, -1))
    data = rebuild(books(chain), resign(h, "firm-c", sign(chain, block_at(chain, h), "firm-c", key=NEW_C).signature))
    refused(data, rf"^block {h} ", r"^firm-c's signature does not verify")


def test_objections_verify_with_the_key_at_the_height_or_a_later_one() -> None:
    chain, eff = ROTATION, ROTATED_AT
    before, after = eff - 1, eff + 1

    def with_objection(height: int, key: SigningKey) -> bytes:
        src = GovSource(chain)
        for block in chain.blocks:
            objections = [Objection.create(key, chain.cid, "firm-c", block.hash, "not what we agreed")] \
                if block.height == height else []
            src.add_block(block, sign_all(chain, block), objections=objections)
        return src.bundle("firm-a")

    # the node signs objections with its key at its own next height: the new key may object
    # to the last block before the rotation
    assert verify(with_objection(before, NEW_C)).objections == 1
    assert verify(with_objection(before, member_key("firm-c"))).objections == 1
    refused(with_objection(after, member_key("firm-c")), rf"^block {after} ",
            rf"firm-c's objection signature does not verify with its key at height {after} or a later one")


# --- (b) a member added ----------------------------------------------------------------------------

ADDED, ADDED_AT = governed_chain(AddMember(FIRM_E), ALL, after=7)


def test_a_member_added_mid_chain_signs_and_proposes_later_blocks() -> None:
    chain, eff = ADDED, ADDED_AT
    tip = chain.height
    assert any(b.header.proposer == "firm-e" for b in chain.blocks)
    report = verify(books(chain).bundle("firm-a"))
    assert report.members == [*ALL, "firm-e"]
    assert report.signatures == {**{m: tip for m in ALL}, "firm-e": tip - eff + 1}
    assert report.key_history["firm-e"] == [(0, None), (eff, E_KEY.public.hex())]
    assert report.heads.unanimous_signed == tip and report.heads.majority == tip
    assert "firm-e: from 0 not a member; from" in report.text()


def test_the_new_members_signature_counts_for_unanimity() -> None:
    chain, _ = ADDED, ADDED_AT
    tip = chain.height
    last = block_at(chain, tip)
    assert last.header.proposer != "firm-e"
    src = books(chain, skip=lambda b, m: b is last and m == "firm-e")
    report = verify(src.bundle("firm-a"))
    assert report.heads.unanimous_signed == tip - 1 and report.heads.majority == tip


def test_the_new_members_signature_before_it_joined_is_refused() -> None:
    chain, eff = ADDED, ADDED_AT
    h = eff - 1
    data = rebuild(books(chain), resign(h, "firm-e", sign(chain, block_at(chain, h), "firm-e", key=E_KEY).signature))
    refused(data, rf"^block {h} ", rf"signature by 'firm-e', who is not a member at height {h}$")


# --- (c) a member removed ------------------------------------------------------------------------

REMOVED, REMOVED_AT = governed_chain(RemoveMembers(("firm-d",)), ("firm-a", "firm-b", "firm-c"))


def test_a_removed_member_no_longer_holds_unanimity_back() -> None:
    chain, eff = REMOVED, REMOVED_AT
    tip = chain.height
    report = verify(books(chain).bundle("firm-a"))
    assert report.members == list(ALL)
    assert report.signatures["firm-d"] == eff - 1 and report.signatures["firm-a"] == tip
    assert report.key_history["firm-d"] == [(0, member_key("firm-d").public.hex()), (eff, None)]
    assert report.heads.unanimous_signed == tip  # by the genesis member list it would be eff - 1
    # an exporter that counted unanimity over the genesis members is caught
    data = rebuild(books(chain), lambda items: _claim_unanimous(items, eff - 1))
    refused(data, r"^claims$", rf"unanimous_signed head is height {eff - 1}, .* give {tip}")


def _claim_unanimous(items: list[Item], height: int) -> None:
    head = items[0]
    assert isinstance(head, Head)
    items[0] = dataclasses.replace(head, claims=dataclasses.replace(head.claims, unanimous_signed=height,
                                                                    unanimous=min(height, head.claims.unanimous)))


def test_a_removed_members_signatures_after_its_removal_are_refused() -> None:
    chain, eff = REMOVED, REMOVED_AT
    for h in (eff, chain.height):
        data = rebuild(books(chain),
                       resign(h, "firm-d", sign(chain, block_at(chain, h), "firm-d", key=member_key("firm-d")).signature))
        refused(data, rf"^block {h} ", rf"signature by 'firm-d', who is not a member at height {h}$")


def test_a_missing_signature_of_a_remaining_member_still_counts_against_unanimity() -> None:
    chain, _ = REMOVED, REMOVED_AT
    tip = chain.height
    lazy = next(m for m in ("firm-a", "firm-b", "firm-c") if m != block_at(chain, tip).header.proposer)
    src = books(chain, skip=lambda b, m: b.height == tip and m == lazy)
    assert verify(src.bundle("firm-a")).heads.unanimous_signed == tip - 1


# --- (d) evidence made with a key rotated away since -----------------------------------------------

def _double_sign(chain: Chain, height: int, key: SigningKey) -> Evidence:
    header = block_at(chain, height).header
    other = dataclasses.replace(header, time_ms=header.time_ms + 1)
    return Evidence.from_signatures("firm-c", header, key.sign("block", chain.cid, header.hash),
                                    other, key.sign("block", chain.cid, other.hash))


def test_a_double_sign_with_a_rotated_away_key_still_convicts() -> None:
    chain, _ = ROTATION, ROTATED_AT
    src = books(chain)
    src.add_evidence(_double_sign(chain, 2, member_key("firm-c")))
    report = verify(src.bundle("firm-a"))
    assert [(e.member, e.height, e.source.split()[0]) for e in report.excluded] == [("firm-c", 2, "evidence")]
    assert report.evidence == 1
    # the same double-sign "made" with the key firm-c only got later proves nothing
    src = books(chain)
    src.add_evidence(_double_sign(chain, 2, NEW_C))
    refused(src.bundle("firm-a"), r"^evidence [0-9a-f]{16} against firm-c$", r"evidence.sig_a: not firm-c's signature")


def test_evidence_carried_in_a_block_after_the_rotation_convicts_with_the_old_key() -> None:
    chain, eff = governed_chain(RotateKey("firm-c", NEW_C.public), ALL, rotate=("firm-c", NEW_C),
                                block_evidence=lambda c, _eff: [_double_sign(c, 2, member_key("firm-c"))])
    carrier = block_at(chain, eff + 2)
    assert carrier.evidence and carrier.evidence[0].member == "firm-c"
    report = verify(books(chain).bundle("firm-a"))
    assert [(e.member, e.height) for e in report.excluded] == [("firm-c", 2)]


# --- a member only a side branch's governance added --------------------------------------------

@dataclass
class Forked:
    main: Chain
    side: Chain
    fork_height: int
    side_added_at: int


def _forked() -> Forked:
    """From height 2, the best chain has plain blocks signed by three members; a side branch
    (blocks of a later round, each signed by its proposer only, so no member signs two blocks at
    one height) adds firm-e, which then signs the side blocks."""
    main = Chain()
    main.step([main.tx("firm-a", [put("books", "a", b"1")])])
    main.step()
    side = main.fork()
    turn = side.consortium.params.turn_timeout_ms

    def side_step(txs: Sequence[Tx] = ()) -> None:
        """The first round after 0 whose proposer is not the best chain's at this height."""
        height = side.height + 1
        members = side.cs().members_at(height)
        round_ = next(r for r in range(1, 5) if proposer_for(members, height, r) != proposer_for(ALL, height, 0))
        side.add(side.build(txs, round_=round_, time_ms=side.tip.time_ms + round_ * turn))

    proposal = Proposal(AddMember(FIRM_E), "only on the side branch")
    side_step([side.tx("firm-a", [propose_op(proposal)])])
    side_step([side.vote_tx(v, proposal) for v in ALL])
    eff = effective(side, proposal.id)
    while side.height < eff + 1:
        side_step()
    while main.height < side.height + 1:
        main.step([main.tx("firm-b", [put("books", f"m{main.height}", b"v")])])
    return Forked(main, side, 2, eff)


def test_signatures_by_a_member_only_a_side_branch_added_do_not_break_the_audit() -> None:
    f = _forked()
    src = GovSource(f.main)
    main_state, side_state = f.main.cs(), f.side.cs()
    for block in f.main.blocks:
        side_proposer = f.side.blocks[block.height - 1].header.proposer \
            if f.fork_height < block.height <= f.side.height else None
        src.add_block(block, sign_all(f.main, block, [m for m in ALL if m != side_proposer], state=main_state))
    side_blocks = f.side.blocks[f.fork_height:]
    for block in side_blocks:
        src.add_block(block, sign_all(f.side, block, [block.header.proposer], state=side_state))
    # A node's tree never counted firm-e (its best chain's governance does not know it), so its
    # export leaves firm-e's signatures out; a bundle holding them anyway must still verify.
    added = [b for b in side_blocks if b.height >= f.side_added_at]
    assert len(added) == 2

    def with_e(sig_of: Callable[[Block], bytes]) -> Callable[[list[Item]], None]:
        def apply(items: list[Item]) -> None:
            for block in added:
                i = next(i for i, it in enumerate(items) if isinstance(it, BlockEntry) and it.hash == block.hash)
                entry = items[i]
                assert isinstance(entry, BlockEntry) and not entry.best
                items[i] = dataclasses.replace(entry, sigs=tuple(sorted([*entry.sigs, ("firm-e", sig_of(block))])))
        return apply

    report = verify(rebuild(src, with_e(lambda b: sign(f.side, b, "firm-e", state=side_state).signature)))
    assert report.best_chain_blocks == f.main.height and report.side_blocks == len(side_blocks)
    assert report.members == [*ALL, "firm-e"] and report.signatures["firm-e"] == len(added)
    assert "firm-e" not in report.key_history  # not a member on the best chain
    assert report.heads.tentative == f.main.height
    # they are verified all the same, with the key the side branch gives firm-e
    wrong = seed_key("nobody")
    refused(rebuild(src, with_e(lambda b: BlockSignature.create(wrong, f.side.cid, "firm-e", b.hash).signature)),
            rf"^block {added[0].height} ", r"^firm-e's signature does not verify")


# --- anchor depth under changed parameters ---------------------------------------------------------

@pytest.mark.parametrize("later", [3, 5])
def test_an_anchor_needs_the_least_depth_in_force_from_its_block_on(later: int) -> None:
    """Genesis asks 4 confirmations; a proof of depth 3 for block 1 is enough once governance
    lowers the requirement to 3 (a node accepting the proof then checked it so), never while
    every height from block 1 on asks 4 or more."""
    consortium = make_consortium(params=Params(anchor_confirmations=4))
    chain, eff = governed_chain(SetParams((("anchor_confirmations", later),)), ALL, after=2, consortium=consortium)
    assert chain.cs().params_at(eff).anchor_confirmations == later
    src = GovSource(chain)
    (proof,) = make_anchor([block_at(chain, 1).hash], depth=3)
    for block in chain.blocks:
        src.add_block(block, sign_all(chain, block), anchor=proof if block.height == 1 else None)
    if later == 3:
        assert verify(src.bundle("firm-a")).anchored_blocks == 1
    else:
        refused(src.bundle("firm-a"), r"^block 1 ", r"depth 3 below the required 4 \(anchor_confirmations")
