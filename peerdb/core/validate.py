"""Who may propose what, when, and whether a block is acceptable on top of its parent.

Turns are a pure function of the member list, the height and the round: every member computes
the same schedule without talking to anyone. A round's proposer that stays silent for
``turn_timeout_ms`` hands the turn to the next member, so a crashed member delays a height by
at most one timeout per consecutive dead member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .consortium import Consortium
from .errors import SignatureError, ValidationError
from .limits import MAX_ROUND
from .membership import ConsortiumState
from .model import Block, BlockSignature, Evidence, Header, Tx
from .state import Effects, StateReader, apply_txs


def proposer_for(members: Sequence[str], height: int, round_: int) -> str:
    """Round-robin: height h, round r belongs to members[(h - 1 + r) mod n]."""
    if not members:
        raise ValidationError("no members to take turns")
    return members[(height - 1 + round_) % len(members)]


def round_at(elapsed_ms: int, turn_timeout_ms: int) -> int:
    """The round in force ``elapsed_ms`` after a member first saw the parent block."""
    if elapsed_ms <= 0:
        return 0
    return min(elapsed_ms // turn_timeout_ms, MAX_ROUND)


PIPELINE_DEPTH = 2
"""Blocks of the best chain a proposer with transactions may leave above the majority head,
counting the one it proposes (node policy, docs/protocol.md §8.2: not a validity rule).

1 was the rule before pipelining: propose only on a majority-endorsed tip, so each block waited
for the previous one's signatures to come back. 2 lets the next proposer build as soon as it
holds and has checked its parent: one block gathers signatures while its child is proposed, and
the child's proposer signature endorses the parent, so the parent reaches a majority no later
than it would have. With four members that is enough for the cycle never to wait: when the
member after next receives the child, the parent already has three endorsements (its proposer,
the child's proposer through the child, and its own co-signature). The bound keeps the work that
can still be rolled back small when signatures stop coming (members down or partitioned):
at most this many blocks of transactions wait above the majority head."""


def may_extend(tip_height: int, majority_height: int, depth: int = PIPELINE_DEPTH) -> bool:
    """Whether a proposer with transactions waiting may propose on a best tip at ``tip_height``
    while the majority head is at ``majority_height``: at most ``depth`` best-chain blocks
    above the majority head once its block is added (genesis is always endorsed)."""
    return tip_height == 0 or tip_height + 1 - majority_height <= depth


def check_header(header: Header, parent: Header, consortium: Consortium, now_ms: int) -> None:
    """Rules on the header alone: linkage, turn, time. Raises ValidationError naming the rule."""
    where = f"block at height {header.height} round {header.round}"
    if header.height != parent.height + 1:
        raise ValidationError(f"{where}: height is not parent height {parent.height} + 1")
    if header.prev != parent.hash:
        raise ValidationError(f"{where}: prev does not match the parent's hash")
    expected = proposer_for(consortium.member_names, header.height, header.round)
    if header.proposer != expected:
        raise ValidationError(f"{where}: proposed by {header.proposer}, but the turn belongs to {expected}")
    params = consortium.params
    earliest = parent.time_ms + header.round * params.turn_timeout_ms - params.clock_skew_ms
    if header.time_ms < parent.time_ms or header.time_ms < earliest:
        raise ValidationError(
            f"{where}: time {header.time_ms} is before its round could start ({max(parent.time_ms, earliest)})")
    if header.time_ms > now_ms + params.clock_skew_ms:
        raise ValidationError(f"{where}: time {header.time_ms} is more than clock_skew_ms in the future (now {now_ms})")
    if header.tx_count > params.max_block_txs:
        raise ValidationError(f"{where}: {header.tx_count} transactions, more than max_block_txs={params.max_block_txs}")


def check_proposer_signature(header: Header, sig: BlockSignature, consortium: Consortium, cid: bytes) -> None:
    """``consortium``: the one in force at the block's height on the block's own branch. A
    header is enough (the block hash is the header's), so a proposal is checked before its body
    is decoded."""
    if sig.block_hash != header.hash or sig.member != header.proposer:
        raise SignatureError(f"block at height {header.height}: proposal is not signed by its proposer")
    member = consortium.member(sig.member)
    if member is None or not sig.valid(cid, member.key):
        raise SignatureError(f"block at height {header.height}: proposer signature of {sig.member} does not verify")


def check_evidence(ev: Evidence, consortium: Consortium, cid: bytes,
                   consortium_state: ConsortiumState | None = None) -> None:
    """With ``consortium_state``, the member's key at the evidenced height convicts it (so a key
    rotation never erases a double-sign made with the old key); else ``consortium``'s key."""
    if consortium_state is not None:
        consortium_state.check_evidence(ev, cid)
        return
    member = consortium.member(ev.member)
    if member is None:
        raise ValidationError(f"evidence: {ev.member} is not a member")
    ev.check(cid, member.key)


def check_block(
    block: Block,
    parent: Header,
    parent_state_root: bytes,
    reader: StateReader,
    consortium: Consortium,
    cid: bytes,
    now_ms: int,
    evidence_known: Callable[[bytes], bool] = lambda _id: False,
    signature_ok: Callable[[Tx], bool] | None = None,
    consortium_state: ConsortiumState | None = None,
) -> Effects:
    """Everything an honest member checks before co-signing; returns the block's effects.

    ``consortium`` is the genesis consortium: the one in force at the block's height (turn,
    parameters, keys, rules) comes from the governance state in ``reader``, the parent's state
    (or from ``consortium_state``, the parent's, if the caller has it at hand).
    """
    state = consortium_state if consortium_state is not None else ConsortiumState.load(consortium, reader)
    here = state.at(block.height)
    check_header(block.header, parent, here, now_ms)
    if len(block.raw) > here.params.max_block_bytes:
        raise ValidationError(f"block at height {block.height}: {len(block.raw)} bytes, more than "
                              f"max_block_bytes={here.params.max_block_bytes}")
    ids = set()
    for ev in block.evidence:
        if ev.id in ids or evidence_known(ev.id):
            raise ValidationError(f"block at height {block.height}: evidence against {ev.member} is already recorded")
        ids.add(ev.id)
        state.check_evidence(ev, cid)
    effects = apply_txs(reader, block.txs, consortium, cid, block.header.time_ms, parent_state_root, signature_ok,
                        height=block.height, consortium_state=state)
    if effects.state_root != block.header.state_root:
        raise ValidationError(f"block at height {block.height}: state_root does not match the transactions' effects")
    return effects
