"""The largest legitimate message of each type fits the frame's item limit, with the counts that
MAX_FRAME_ITEMS gives as its reason."""

from __future__ import annotations

from typing import Any

import pytest

from peerdb.core.codec import decode, encode
from peerdb.core.limits import HASH_LEN, MAX_BLOCK_TXS, MAX_FRAME_ITEMS, MAX_MEMBERS, SIG_LEN
from peerdb.core.model import BlockSignature
from peerdb.net.frames import FrameDecoder, encode_frame
from peerdb.node.messages import (
    MAX_ANCHOR_PROOFS_PER_MESSAGE,
    MAX_CATCHUP_BLOCKS,
    MAX_SIGS_PER_MESSAGE,
    STATUS_RECENT,
    AnchorMsg,
    BlocksMsg,
    GetBlocksMsg,
    Message,
    ProposalMsg,
    SigsMsg,
    StatusMsg,
    TxsMsg,
    from_wire,
    to_wire,
)

MEMBERS = tuple(f"member-{i:02d}" for i in range(MAX_MEMBERS))
SIG = BlockSignature(b"\x01" * HASH_LEN, MEMBERS[0], b"\x02" * SIG_LEN)


def items_in(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(items_in(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(items_in(k) + items_in(v) for k, v in value.items())
    return 1


LARGEST: list[tuple[str, Message, int]] = [
    ("txs", TxsMsg((b"t",) * MAX_BLOCK_TXS), 20_007),
    ("blocks", BlocksMsg(((b"b", tuple(BlockSignature(SIG.block_hash, m, SIG.signature) for m in MEMBERS)),)
                         * MAX_CATCHUP_BLOCKS, 10), 16_585),
    ("sigs", SigsMsg((SIG,) * MAX_SIGS_PER_MESSAGE), 16_391),
    ("anchor", AnchorMsg((b"p",) * MAX_ANCHOR_PROOFS_PER_MESSAGE), 4_103),
    ("status", StatusMsg(b"\x03" * HASH_LEN, 10, ((b"\x04" * HASH_LEN, MEMBERS),) * STATUS_RECENT), 547),
    ("proposal", ProposalMsg(b"block", SIG), 12),
    ("get_blocks", GetBlocksMsg(1, 2), 9),
]


@pytest.mark.parametrize("kind, msg, count", LARGEST, ids=[c[0] for c in LARGEST])
def test_largest_message_of_each_type_is_within_the_frame_item_limit(kind: str, msg: Message, count: int) -> None:
    envelope = {"msg": to_wire(msg)}
    assert items_in(envelope) == count <= MAX_FRAME_ITEMS
    assert from_wire(decode(encode(envelope), max_items=count)["msg"]) == msg
    decoder = FrameDecoder()
    decoder.feed(encode_frame(envelope))
    assert decoder.next_message() == (True, envelope)
