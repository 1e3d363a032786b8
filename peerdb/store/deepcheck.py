"""``peerdb node check --deep``: the whole store checked offline, against what commits to it.

The start-up check (:mod:`.check`) is bounded so that start-up does not grow with the chain; this
one is not, and runs with the node stopped. It walks the best chain from genesis and checks
every item against the hash or signature that commits to it:

* each block's stored bytes hash to its id (header, transaction and evidence roots), its stored
  header is the same, and it links to the block below;
* each transaction's client signature verifies (a transaction's id covers its body, not its
  signature, so only the signature check catches a flipped signature byte);
* the transactions, replayed from genesis, give every header's state root;
* each stored block signature verifies with its member's key at that height;
* the transaction index places every transaction where it is;
* the state the node serves (the ``state`` table) equals the replayed state, key for key.

It names the first problems it finds (:data:`MAX_PROBLEMS`) and stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from peerdb.core.consortium import Consortium
from peerdb.core.errors import PeerDBError
from peerdb.core.membership import ConsortiumState, StateCache
from peerdb.core.model import Block, consortium_id, genesis_header
from peerdb.core.state import MemoryState, apply_txs

from .check import verify_block_bytes
from .queries import StoreQueries

MAX_PROBLEMS = 20
"""Problems named before the check stops: past that, the store is to be restored anyway."""


@dataclass
class DeepReport:
    blocks: int = 0
    transactions: int = 0
    signatures: int = 0
    keys: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def deep_check(store: StoreQueries, consortium: Consortium,
               progress: Callable[[int, int], None] | None = None) -> DeepReport:
    report = DeepReport()
    cid = consortium_id(consortium)
    head = store.head()
    cache = StateCache(consortium)
    with store.state_reader_at(head.hash) as reader:
        keys_by_height = ConsortiumState.load(consortium, reader, cache)  # members and keys at every height

    def problem(text: str) -> bool:
        report.problems.append(text)
        return len(report.problems) >= MAX_PROBLEMS

    state = MemoryState()
    parent = genesis_header(consortium)
    for height in range(1, head.height + 1):
        if progress is not None and height % 1000 == 0:
            progress(height, head.height)
        block_hash = store.block_hash_at(height)
        raw = store.block_raw(block_hash) if block_hash is not None else None
        if block_hash is None or raw is None:
            problem(f"height {height}: no best-chain block stored")
            break
        try:
            header, _txids = verify_block_bytes(block_hash, raw)
            block = Block.decode(raw)
        except PeerDBError as exc:
            problem(f"height {height}: {exc}")
            break  # the replay cannot go past a block it cannot read
        report.blocks += 1
        stored_header = store.header(block_hash)
        if stored_header is None or stored_header.raw != header.raw:
            if problem(f"block {height} {block_hash.hex()[:16]}: the stored header differs from the block's"):
                break
        if header.prev != parent.hash:
            problem(f"block {height} {block_hash.hex()[:16]}: does not link to the best-chain block below")
            break
        for tx in block.txs:
            report.transactions += 1
            if not tx.signature_valid(cid):
                if problem(f"block {height}: transaction {tx.txid.hex()[:16]}: its client signature does not verify"):
                    return report
            location = store.tx_location(tx.txid)
            if location is None or location.height != height or location.block_hash != block_hash:
                if problem(f"block {height}: transaction {tx.txid.hex()[:16]} is not indexed where it is"):
                    return report
        try:
            effects = apply_txs(state, block.txs, consortium, cid, header.time_ms, parent.state_root,
                                signature_ok=lambda _tx: True, height=height)
        except PeerDBError as exc:
            problem(f"block {height} {block_hash.hex()[:16]}: its transactions do not apply: {exc}")
            break
        if effects.state_root != header.state_root:
            problem(f"block {height} {block_hash.hex()[:16]}: replaying its transactions does not give its state_root")
            break
        state.apply(effects)
        for sig in store.signatures(block_hash):
            report.signatures += 1
            member_key = keys_by_height.key_at(sig.member, height)
            if member_key is None or not sig.valid(cid, member_key):
                if problem(f"block {height} {block_hash.hex()[:16]}: {sig.member}'s stored signature does not verify"):
                    return report
        parent = header
    if report.problems:
        return report
    served = 0
    for namespace, key, value, _written in store.state_items():
        served += 1
        report.keys += 1
        if state.values.get((namespace, key)) != value:
            if problem(f"state {namespace}/{key}: the stored value differs from the one the chain gives"):
                return report
    if served != len(state.values):
        problem(f"state: {served} keys stored, the chain gives {len(state.values)}")
    return report
