"""The auditor's verifier: honest bundles verify; each kind of tampering is refused, naming the item.

Bundles are built without a network from :mod:`tests.helpers.chainbuilder` blocks held by a
:class:`~peerdb.audit.export.MemorySource` (a node's books without a node). Anchor proofs are
made by hand (:mod:`tests.helpers.anchor_proofs`): regtest-difficulty headers, a txoutproof and
an anchor transaction, all valid, no Bitcoin node needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable

import pytest

from peerdb.anchor.errors import AnchorProofError
from peerdb.anchor.proof import VerifiedAnchor
from peerdb.audit.bundle import (
    MAGIC,
    BlockEntry,
    BtcPart,
    EvidenceEntry,
    Head,
    Item,
)
from peerdb.audit.errors import AuditFailure
from peerdb.audit.export import MemorySource
from peerdb.core import codec
from peerdb.core.keys import SigningKey
from peerdb.core.model import Block, Evidence
from tests.helpers.chainbuilder import ChainBuilder
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.bundles import OPTIONS, assemble, block_item, build_books, change_block, items_of, verify

BOOKS = build_books()
GOOD = BOOKS.bundle()


# --- rewriting bundles -----------------------------------------------------------------------

def with_raw(entry: BlockEntry, raw: bytes) -> BlockEntry:
    return dataclasses.replace(entry, raw=raw, header=Block.peek_header(raw))


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1
    return bytes(out)


# --- honest bundles --------------------------------------------------------------------------

def test_honest_books_verify_and_the_report_says_what_was_checked() -> None:
    report = verify(GOOD)
    assert report.blocks == 7 and report.best_chain_blocks == 6 and report.side_blocks == 1
    assert report.transactions == 2 + 1 + 1 + 1 + 9
    assert report.best_chain_transactions == 13
    assert report.signatures == {"m0": 7 - 1, "m1": 6, "m2": 6, "m3": 6}
    assert [(e.member, e.source.split()[0]) for e in report.excluded] == [("m1", "evidence")]
    assert report.objections == 1 and report.evidence == 1
    assert report.anchored_blocks == 4 and report.bitcoin_transactions == 1
    heads = report.heads
    assert (heads.tentative, heads.majority, heads.unanimous_signed, heads.anchored, heads.unanimous) == (6, 6, 6, 4, 4)
    assert report.tip == BOOKS.main[-1].hash.hex()
    state = BOOKS.cb.state_at(BOOKS.main[-1])
    assert report.keys_in_state == len(state.values)
    assert report.pow_checked and not report.bitcoin_checked
    assert "6 on the best chain" in report.text() and report.to_json()["ok"] is True


def test_an_empty_chain_verifies() -> None:
    cb = ChainBuilder(2)
    report = verify(MemorySource(cb.consortium).bundle("m1"))
    assert report.blocks == 0 and report.heads.tentative == 0


def test_evidence_carried_in_a_block_verifies_and_excludes() -> None:
    cb = ChainBuilder(4)
    src = MemorySource(cb.consortium)
    b1 = cb.block(cb.genesis)
    _, _, ev = cb.double_sign("m3", b1)
    b2 = cb.block(b1, [cb.tx("m0", [("books", "k", b"v")])], evidence=[ev])
    for block in (b1, b2):
        src.add_block(block, cb.sign_all(block))
    report = verify(src.bundle("m0"))
    assert [e.member for e in report.excluded] == ["m3"]


def test_a_bitcoin_node_is_asked_once_per_anchor_transaction() -> None:
    seen: list[VerifiedAnchor] = []

    class Node:
        def check_anchor_in_best_chain(self, verified: VerifiedAnchor) -> None:
            seen.append(verified)

    report = verify(GOOD, dataclasses.replace(OPTIONS, bitcoin=Node()))
    assert report.bitcoin_checked
    assert len(seen) == 1 and seen[0].bitcoin_height == 500 and seen[0].depth == 3


def test_one_thread_gives_the_same_answer() -> None:
    assert verify(GOOD, dataclasses.replace(OPTIONS, threads=1)).to_json()["heads"] == verify(GOOD).to_json()["heads"]


# --- tampering: each case refused with its reason ----------------------------------------------

def _changed_tx(entry: BlockEntry) -> BlockEntry:
    """A transaction's value changed, its original client signature kept."""
    block = Block.decode(entry.raw)
    tx = block.txs[0]
    forged_body = tx.body.replace(b"3", b"9")
    assert forged_body != tx.body
    forged = codec.encode([forged_body, tx.signature])
    items = codec.decode(entry.raw)
    items[1][0] = forged
    return with_raw(entry, codec.encode(items))


def _rerooted_block(entry: BlockEntry) -> BlockEntry:
    """The block rebuilt around a different (validly signed) transaction: new roots, new hash."""
    cb = BOOKS.cb
    block = Block.decode(entry.raw)
    parent = cb.header(block.header.prev)
    tx = cb.tx("m2", [("books", "a", b"9")])
    rebuilt = cb.block(parent, [tx], time_ms=block.header.time_ms)
    return with_raw(entry, rebuilt.raw)


def _sig_by(member: str, key: SigningKey, block_hash: bytes) -> tuple[str, bytes]:
    return (member, key.sign("block", BOOKS.cb.cid, block_hash))


def _forge(member: str) -> Callable[[BlockEntry], BlockEntry]:
    wrong = SigningKey(b"\x42" * 32)
    return lambda e: dataclasses.replace(e, sigs=tuple(sorted(
        [s for s in e.sigs if s[0] != member] + [_sig_by(member, wrong, e.hash)])))


def _drop(member: str) -> Callable[[BlockEntry], BlockEntry]:
    return lambda e: dataclasses.replace(e, sigs=tuple(s for s in e.sigs if s[0] != member))


def _swap_blocks(items: list[Item]) -> None:
    i, j = block_item(items, 2), block_item(items, 3)
    items[i], items[j] = items[j], items[i]


def _path(items: list[Item]) -> None:
    def bad(e: BlockEntry) -> BlockEntry:
        assert e.anchor is not None
        left, sibling = e.anchor.path[0]
        return dataclasses.replace(e, anchor=dataclasses.replace(e.anchor, path=((left, _flip(sibling, 3)),)
                                                                   + e.anchor.path[1:]))
    change_block(3, bad)(items)


def _btc(fn: Callable[[BtcPart], BtcPart]) -> Callable[[list[Item]], None]:
    def apply(items: list[Item]) -> None:
        i = next(i for i, it in enumerate(items) if isinstance(it, BtcPart))
        part = items[i]
        assert isinstance(part, BtcPart)
        items[i] = fn(part)
    return apply


OTHER_PROOF = make_anchor([hashlib.sha256(b"x").digest(), hashlib.sha256(b"y").digest()], prevout=b"\x07" * 32)[0]


def _forged_header(part: BtcPart) -> BtcPart:
    h1 = bytearray(part.headers[1])
    h1[68:72] = (int.from_bytes(h1[68:72], "little") + 1).to_bytes(4, "little")  # its time
    return dataclasses.replace(part, headers=(part.headers[0], bytes(h1), *part.headers[2:]))


def _remove_evidence(items: list[Item]) -> None:
    items[:] = [it for it in items if not isinstance(it, EvidenceEntry)]


def _head(fn: Callable[[Head], Head]) -> Callable[[list[Item]], None]:
    def apply(items: list[Item]) -> None:
        head = items[0]
        assert isinstance(head, Head)
        items[0] = fn(head)
    return apply


def _claim(**changes: object) -> Callable[[list[Item]], None]:
    return _head(lambda h: dataclasses.replace(h, claims=dataclasses.replace(h.claims, **changes)))  # type: ignore[arg-type]


def _mark_side_best(items: list[Item]) -> None:
    for i, it in enumerate(items):
        if isinstance(it, BlockEntry) and it.hash in (BOOKS.side.hash, BOOKS.main[2].hash):
            items[i] = dataclasses.replace(it, best=not it.best)


def _forged_objection(e: BlockEntry) -> BlockEntry:
    member, reason, sig = e.objections[0]
    return dataclasses.replace(e, objections=((member, reason + "!", sig),))


def _hide_block_evidence() -> bytes:
    cb = ChainBuilder(4)
    src = MemorySource(cb.consortium)
    b1 = cb.block(cb.genesis)
    _, _, ev = cb.double_sign("m3", b1)
    b2 = cb.block(b1, evidence=[ev])
    for block in (b1, b2):
        src.add_block(block, cb.sign_all(block))
    items = items_of(src.bundle("m0"))
    return assemble([it for it in items if not isinstance(it, EvidenceEntry)])


TAMPER: dict[str, tuple[Callable[[list[Item]], None], str, str]] = {
    # name: (change, where the failure is reported, what the reason says)
    "changed transaction": (change_block(2, _changed_tx), r"block 2 ", r"tx_root does not match"),
    "changed transaction, block re-rooted": (change_block(2, _rerooted_block), r"block 2 ",
                                             r"proposer's \(m1\) signature does not verify"),
    "dropped co-signature": (change_block(6, _drop("m2")), r"claims",
                             r"unanimous_signed head is height 6, .* give 5"),
    "dropped proposer signature": (change_block(5, _drop("m0")), r"block 5 ", r"no signature by its proposer m0"),
    "extra signature by a non-member": (
        change_block(4, lambda e: dataclasses.replace(e, sigs=e.sigs + (("mallory", bytes(64)),))),
        r"block 4 ", r"signature by 'mallory', who is not a member"),
    "forged co-signature": (change_block(4, _forge("m2")), r"block 4 ", r"m2's signature does not verify"),
    "forged proposer signature": (change_block(4, _forge("m3")), r"block 4 ", r"proposer's \(m3\) signature"),
    "reordered blocks": (_swap_blocks, r"item \d+", r"out of order"),
    "wrong merkle path in an anchor proof": (_path, r"block 3 ", r"anchor proof: .*Merkle path"),
    "swapped anchor transaction": (_btc(lambda p: dataclasses.replace(p, bitcoin_tx=OTHER_PROOF.bitcoin_tx)),
                                   r"block 1 ", r"anchor proof: .*OP_RETURN commits to another root"),
    "forged bitcoin header": (_btc(_forged_header), r"block 1 ", r"anchor proof: .*headers\[[12]\].*(does not link|does not meet its target)"),
    "evidence removed": (_remove_evidence, r"claims", r"excluded \['m1'\], .* exclude nobody"),
    "claimed tip changed": (_claim(tip=b"\x00" * 32), r"claims", r"best tip is 0000"),
    "claimed majority raised": (_claim(majority=7), r"claims", r"majority head is height 7"),
    "claimed anchored raised": (_claim(anchored=5), r"claims", r"anchored head is height 5, .* give 4"),
    "side block marked best": (_mark_side_best, r"block 4 ", r"does not extend the best block"),
    "forged objection": (change_block(3, _forged_objection, best=False), r"block 3 ", r"m0's objection"),
}


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_tampering_is_refused_with_its_reason(name: str) -> None:
    change, where, reason = TAMPER[name]
    items = items_of(GOOD)
    change(items)
    with pytest.raises(AuditFailure) as info:
        verify(assemble(items))
    assert re.search(where, info.value.where), (info.value.where, info.value.reason)
    assert re.search(reason, info.value.reason), (info.value.where, info.value.reason)


def test_a_bitcoin_node_that_lacks_the_header_fails_the_block() -> None:
    class Node:
        def check_anchor_in_best_chain(self, verified: VerifiedAnchor) -> None:
            raise AnchorProofError("anchor_proof.headers[0]: block 00ff is not in the bitcoin node's best chain")

    with pytest.raises(AuditFailure, match=r"block 1 .*not in the bitcoin node's best chain"):
        verify(GOOD, dataclasses.replace(OPTIONS, bitcoin=Node()))


def test_anchors_need_the_consortiums_confirmations() -> None:
    from peerdb.core.consortium import Params
    from peerdb.core.limits import MAX_TX_TTL_MS
    cb = ChainBuilder(2, params=Params(tx_ttl_ms=MAX_TX_TTL_MS, anchor_confirmations=4))
    src = MemorySource(cb.consortium)
    (b1,) = cb.chain(1)
    src.add_block(b1, cb.sign_all(b1), anchor=make_anchor([b1.hash], depth=3)[0])
    with pytest.raises(AuditFailure, match=r"block 1 .*depth 3 below the required 4"):
        verify(src.bundle("m0"))


def test_block_evidence_missing_from_the_evidence_items_is_named() -> None:
    with pytest.raises(AuditFailure, match=r"block 2 .*carries evidence .* missing from the bundle's evidence"):
        verify(_hide_block_evidence())


def test_double_signatures_in_the_bundle_exclude_the_signer_even_without_evidence() -> None:
    cb = ChainBuilder(4)
    src = MemorySource(cb.consortium)
    b1 = cb.block(cb.genesis)
    a = cb.block(b1)
    b = cb.block(b1, round=1)
    src.add_block(b1, cb.sign_all(b1))
    src.add_block(a, cb.sign_all(a, ["m1", "m2", "m0"]))
    src.add_block(b, cb.sign_all(b, ["m2"]))  # m2 signed both: the bundle itself proves it
    with pytest.raises(AuditFailure, match=r"claims.*excluded nobody.*exclude \['m2'\]"):
        verify(src.bundle("m0"))
    ev = Evidence.from_signatures("m2", a.header, cb.sign(a, "m2").signature, b.header, cb.sign(b, "m2").signature)
    src.add_evidence(ev)
    report = verify(src.bundle("m0"))
    assert [e.member for e in report.excluded] == ["m2"]


# --- integrity: truncation and splicing -------------------------------------------------------

@pytest.mark.parametrize("cut", [0, 3, 8, 11, 100, -1, -40, "last frame", "before trailer"])
def test_a_truncated_bundle_is_refused(cut: int | str) -> None:
    frames = _frame_offsets(GOOD)
    if cut == "last frame":
        end = frames[-1] + 10
    elif cut == "before trailer":
        end = frames[-1]
    else:
        assert isinstance(cut, int)
        end = cut if cut >= 0 else len(GOOD) + cut
    with pytest.raises(AuditFailure, match=r"truncated|not a PeerDB audit bundle|empty"):
        verify(GOOD[:end])


def _frame_offsets(data: bytes) -> list[int]:
    pos, out = len(MAGIC), []
    while pos < len(data):
        out.append(pos)
        pos += 4 + int.from_bytes(data[pos:pos + 4], "big")
    return out


def test_a_changed_byte_without_a_new_trailer_is_refused() -> None:
    items = items_of(GOOD)
    head = items[0]
    assert isinstance(head, Head)
    spliced = assemble([dataclasses.replace(head, exported_ms=head.exported_ms + 1), *items[1:]])
    good_frames, new_frames = _frame_offsets(GOOD), _frame_offsets(spliced)
    # Keep the old trailer: the head changed, the hash over it did not.
    forged = spliced[:new_frames[-1]] + GOOD[good_frames[-1]:]
    with pytest.raises(AuditFailure, match=r"SHA-256 over the bundle does not match"):
        verify(forged)


def test_trailing_bytes_and_items_after_the_trailer_are_refused() -> None:
    with pytest.raises(AuditFailure, match=r"after the trailer"):
        verify(GOOD + GOOD[8:40])


def test_a_wrong_file_is_refused_at_once() -> None:
    with pytest.raises(AuditFailure, match=r"wrong magic"):
        verify(b"NOTAUDIT" + GOOD[8:])


def test_a_bundle_of_another_consortium_id_is_refused() -> None:
    items = items_of(GOOD)
    head = items[0]
    assert isinstance(head, Head)
    with pytest.raises(AuditFailure, match=r"item 0.cid"):
        verify(assemble([dataclasses.replace(head, cid=b"\x01" * 32), *items[1:]]))


def test_a_block_whose_parent_is_missing_is_named() -> None:
    items = [it for it in items_of(GOOD) if not (isinstance(it, BlockEntry) and it.header.height == 2)]
    with pytest.raises(AuditFailure, match=r"block 3 .*parent .* is not in the bundle"):
        verify(assemble(items))


def test_headers_of_items_match_their_blocks() -> None:
    for item in items_of(GOOD):
        if isinstance(item, BlockEntry):
            assert Block.decode(item.raw).header == item.header


def test_the_first_failure_in_bundle_order_is_reported() -> None:
    items = items_of(GOOD)
    change_block(2, _forge("m3"))(items)
    change_block(5, _drop("m0"))(items)
    data = assemble(items)
    for broken in (data, data[:-20]):  # a later bad block, and a truncated end, come second
        with pytest.raises(AuditFailure, match=r"^block 2 .*m3's signature does not verify"):
            verify(broken)


def test_an_export_is_the_books_at_its_snapshot_even_if_signatures_arrive_meanwhile() -> None:
    from peerdb.audit.export import export_snapshot
    cb = ChainBuilder(4)
    src = MemorySource(cb.consortium)
    b1, b2 = cb.chain(2, txs_per_block=1)
    src.add_block(b1, cb.sign_all(b1))
    src.add_block(b2, cb.sign_all(b2, ["m1", "m0", "m2"]))
    snapshot = src.snapshot("m0", 0)
    src.add_signatures(cb.sign_all(b2, ["m3"]))  # arrives while the bundle streams out
    report = verify(b"".join(export_snapshot(src, snapshot)))
    assert report.signatures == {"m0": 2, "m1": 2, "m2": 2, "m3": 1}
    assert report.heads.unanimous_signed == 1 and report.heads.majority == 2


def test_worker_processes_give_the_same_answer_and_catch_the_same_forgery() -> None:
    options = dataclasses.replace(OPTIONS, processes=True)
    assert verify(GOOD, options).to_json()["signatures"] == verify(GOOD).to_json()["signatures"]
    items = items_of(GOOD)
    change_block(4, _forge("m2"))(items)
    with pytest.raises(AuditFailure, match=r"block 4 .*m2's signature does not verify"):
        verify(assemble(items), options)


def test_a_changed_byte_names_the_item_whose_own_checks_fail_not_only_the_trailer() -> None:
    """One byte of a transaction's signature changed on the way (the frame still decodes): the
    auditor is told which block carries it, and that the trailer does not match either."""
    tx = BOOKS.main[1].txs[0]
    at = GOOD.index(tx.signature) + 5
    with pytest.raises(AuditFailure) as info:
        verify(_flip(GOOD, at))
    assert info.value.where.startswith("block 2 ("), (info.value.where, info.value.reason)
    assert "signature" in info.value.reason and "trailer" in info.value.reason


def test_a_changed_byte_that_breaks_no_item_is_reported_by_the_trailer() -> None:
    """A byte of an objection's reason: every item still checks out on its own; only the
    trailer's hash tells."""
    reason = b"not what we agreed"
    at = GOOD.index(reason)
    with pytest.raises(AuditFailure) as info:
        verify(GOOD[:at] + b"N" + GOOD[at + 1:])
    assert info.value.where == "trailer" and "does not match" in info.value.reason, info.value
