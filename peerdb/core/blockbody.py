"""Choosing a block's body: which pending transactions and evidence a proposer puts in a block.

A proposer must never build a block its peers refuse. The two size rules a body must meet —
``max_block_txs`` and ``max_block_bytes`` of the parameters in force at the block's height — are
checked by every member on the encoded block (:func:`peerdb.core.validate.check_block`), so the
proposer counts the very bytes :class:`~peerdb.core.model.Block` will encode, not an estimate:
the size of the block envelope, the header (whose length depends on its transaction count), each
transaction's byte string and each evidence item.

The selection is pure: which transaction is valid on the proposer's tip is decided by the
``admit`` callback (the node applies it to a :class:`~peerdb.core.state.BlockRun`), and the
function only orders, counts and measures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from .codec import encode, item_head_size
from .consortium import Params
from .limits import MAX_BLOCK_BYTES, MAX_EVIDENCE_PER_BLOCK
from .merkle import merkle_root
from .model import Evidence, Header, Tx


class Admit(Enum):
    """What the proposer's check says of one candidate transaction."""

    TAKE = "take"
    """Valid on the tip: include it (the callback has applied it)."""
    SKIP = "skip"
    """Not now (e.g. its time window has not opened): leave it in the pool."""
    DROP = "drop"
    """Never valid on this tip (expired, already included, refused by the rules): drop it."""


@dataclass(frozen=True)
class BodyChoice:
    txs: tuple[Tx, ...]
    evidence: tuple[Evidence, ...]
    dropped: tuple[bytes, ...]
    """Txids the caller should remove from its pool (:attr:`Admit.DROP`)."""
    size: int
    """The exact encoded size of the block these make (with the header given)."""


def header_size(template: Header, tx_count: int) -> int:
    """Encoded size of ``template`` with ``tx_count`` transactions: only the count's integer head
    varies with the body (roots are fixed-length), so this is exact for any body."""
    return len(template.raw) - item_head_size(template.tx_count) + item_head_size(tx_count)


def block_size(header_len: int, tx_lens: Sequence[int], evidence_lens: Sequence[int]) -> int:
    """Encoded size of ``[header bytes, [tx bytes...], [evidence...]]`` (see ``Block.raw``):
    evidence items are embedded maps, so their lengths are their full encodings."""
    return (item_head_size(3) + item_head_size(header_len) + header_len
            + item_head_size(len(tx_lens)) + sum(item_head_size(n) + n for n in tx_lens)
            + item_head_size(len(evidence_lens)) + sum(evidence_lens))


def evidence_size(ev: Evidence) -> int:
    return len(encode(ev.to_cbor()))


def select_body(
    template: Header,
    params: Params,
    candidates: Iterable[Tx],
    evidence: Iterable[Evidence],
    admit: Callable[[Tx], Admit],
) -> BodyChoice:
    """Fill a block under ``params``: pending evidence first (it protects the fork rule), up to
    :data:`MAX_EVIDENCE_PER_BLOCK` in id order, then ``candidates`` in pool order until the next
    one would break ``max_block_txs`` or ``max_block_bytes``.

    ``template`` is the header the block will have, with any ``tx_count``/roots (only their
    sizes matter). ``admit`` is called once per candidate that fits, in order, and only then:
    a candidate that does not fit is never offered, so a stateful check (applying the
    transaction to a block run) stays in step with what is chosen.
    """
    max_bytes = min(params.max_block_bytes, MAX_BLOCK_BYTES)
    chosen_ev: list[Evidence] = []
    ev_lens: list[int] = []
    for ev in sorted(evidence, key=lambda e: e.id):
        if len(chosen_ev) >= MAX_EVIDENCE_PER_BLOCK:
            break
        n = evidence_size(ev)
        if block_size(header_size(template, 0), [], [*ev_lens, n]) > max_bytes:
            break
        chosen_ev.append(ev)
        ev_lens.append(n)
    ev_total = sum(ev_lens)
    fixed = item_head_size(3) + item_head_size(len(ev_lens)) + ev_total

    def size_with(count: int, tx_bytes: int) -> int:
        h = header_size(template, count)
        return fixed + item_head_size(h) + h + item_head_size(count) + tx_bytes

    chosen: list[Tx] = []
    dropped: list[bytes] = []
    tx_bytes = 0
    for tx in candidates:
        if len(chosen) >= params.max_block_txs:
            break
        n = item_head_size(len(tx.raw)) + len(tx.raw)
        if size_with(len(chosen) + 1, tx_bytes + n) > max_bytes:
            break
        verdict = admit(tx)
        if verdict is Admit.TAKE:
            chosen.append(tx)
            tx_bytes += n
        elif verdict is Admit.DROP:
            dropped.append(tx.txid)
    return BodyChoice(tuple(chosen), tuple(chosen_ev), tuple(dropped), size_with(len(chosen), tx_bytes))


def header_template(height: int, round_: int, prev: bytes, proposer: str, time_ms: int) -> Header:
    """A header with the given fixed fields and placeholder roots, for :func:`select_body`."""
    empty = merkle_root([])
    return Header(height, round_, prev, proposer, time_ms, empty, 0, empty, empty)
