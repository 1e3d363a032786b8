"""Catch-up and anti-entropy: what a member sends a peer that is behind, and the status it gossips.

A peer asks for best-chain blocks by height (``get_blocks``); the answer carries each block's
stored bytes with its signatures, checked on the way out: a block whose stored bytes no longer
hash to its id is never sent (the answer stops before it and the caller learns which block, to
raise an alert and fetch a good copy). The status message names the best tip and the signers of
the last few best-chain blocks, so that peers missing a signature can ask for nothing and still
get it (:func:`missing_signatures`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.chain import BlockTree
from ..core.errors import CorruptionError
from ..core.model import BlockSignature
from ..store import Store
from .messages import MAX_CATCHUP_BLOCKS, MAX_CATCHUP_BYTES, STATUS_RECENT, BlocksMsg, GetBlocksMsg, StatusMsg

CATCHUP_RETRY_MS = 2000
"""Do not ask the same peer for blocks again sooner than this while a request is outstanding."""

Signatures = Callable[[bytes], Sequence[BlockSignature]]


@dataclass(frozen=True)
class Answer:
    msg: BlocksMsg
    corrupt: CorruptionError | None = None
    """The stored block the answer stopped at because its bytes are corrupt."""


def blocks_answer(tree: BlockTree, store: Store, signatures: Signatures, request: GetBlocksMsg) -> Answer:
    items: list[tuple[bytes, tuple[BlockSignature, ...]]] = []
    size = 0
    height = max(1, request.from_height)
    corrupt = None
    while height <= request.to_height and len(items) < MAX_CATCHUP_BLOCKS:
        block_hash = tree.best_chain_hash(height)
        if block_hash is None:
            break
        try:
            raw = store.block_raw_checked(block_hash)
        except CorruptionError as exc:
            corrupt = exc
            break
        if raw is None:
            break
        if items and size + len(raw) > MAX_CATCHUP_BYTES:
            break
        size += len(raw)
        items.append((raw, tuple(signatures(block_hash))))
        height += 1
    return Answer(BlocksMsg(tuple(items), tree.best_tip.height), corrupt)


def status_message(tree: BlockTree) -> StatusMsg:
    tip = tree.best_tip
    recent = []
    for height in range(tip.height, max(0, tip.height - STATUS_RECENT), -1):
        block_hash = tree.best_chain_hash(height)
        if block_hash is None:
            break
        recent.append((block_hash, tuple(sorted(tree.signers(block_hash)))))
    return StatusMsg(tip.hash, tip.height, tuple(recent))


def missing_signatures(tree: BlockTree, status: StatusMsg, signatures: Signatures) -> list[BlockSignature]:
    """Our signatures on the peer's recent blocks that its status says it lacks."""
    missing: list[BlockSignature] = []
    for block_hash, signers in status.recent:
        if block_hash not in tree:
            continue
        ours = tree.signers(block_hash) - set(signers)
        if ours:
            missing.extend(s for s in signatures(block_hash) if s.member in ours)
    return missing


class CatchupThrottle:
    """When we last asked each peer for blocks, and what we asked ahead (one entry per member:
    bounded)."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.ahead: dict[str, int] = {}
        """Peer -> the first height of the batch asked for before the previous one was handled."""
        self.outstanding: set[str] = set()
        """Peers whose answers we asked for and that still bring blocks: only their answers make
        us ask for the next batch ahead."""

    def may_ask(self, peer: str, now_ms: int) -> bool:
        last = self.asked.get(peer)
        if last is not None and now_ms - last < CATCHUP_RETRY_MS:
            return False
        self.asked[peer] = now_ms
        return True

    def answered(self, peer: str) -> None:
        self.asked.pop(peer, None)
