"""Listing a namespace's keys as of a height below the head (``GET /v1/kv/{ns}?view=...``).

The store keeps the state at its head only, plus each key's history; the history is indexed by
key, not by namespace, so it cannot list a namespace. A page as of height ``h`` is therefore
the head's page, corrected for the keys that blocks above ``h`` wrote: each of those is read
as of ``h`` (a key created above ``h`` disappears, one deleted above ``h`` comes back, one
overwritten gets its older value). Only those blocks are read: for the majority and
unanimous-signed views a few, for the unanimous view the blocks since the last anchor.

Finding the keys means decoding the blocks above ``h``; that runs in a worker thread without
the engine's lock (a stored block never changes), bounded by :data:`MAX_REWIND_TXS`. The page
itself is then assembled under the lock, after checking that the best chain still holds the
blocks that were read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ...core.model import Block
from ...core.state import Effects
from ...store import Store
from ...store.layout import state_key
from .errors import ApiError

MAX_REWIND_TXS = 200_000
"""Transactions above the requested height whose keys a listing may correct for: a few seconds
of decoding in a worker thread. Beyond it the request is refused with advice (read a later
height, or the keys one by one), so that no listing can occupy the node for minutes."""

Row = tuple[str, bytes, int]
"""(key, value, height written), as :meth:`Store.scan` gives them."""


def touched_keys(store: Store, hashes: Iterable[bytes], cached: Mapping[bytes, Effects],
                 namespace: str, prefix: str) -> set[str]:
    """Keys of ``namespace`` starting with ``prefix`` that the blocks ``hashes`` wrote (put or
    delete); ``cached`` holds the effects of blocks the engine still has them for."""
    keys: set[str] = set()
    txs = 0
    for block_hash in hashes:
        effects = cached.get(block_hash)
        if effects is not None:
            txs += len(effects.txids)
            written: Iterable[tuple[str, str]] = ((ns, key) for ns, key, _ in effects.writes)
        else:
            block: Block | None = store.block(block_hash)
            if block is None:
                raise ApiError(409, "not_available", f"block {block_hash.hex()[:16]} of the best chain has no "
                               "stored body on this node yet; retry")
            txs += len(block.txs)
            written = ((op.namespace, op.key) for tx in block.txs for op in tx.ops)
        if txs > MAX_REWIND_TXS:
            raise ApiError(400, "too_far_behind", f"listing {namespace!r} at this height means undoing more than "
                           f"{MAX_REWIND_TXS} later transactions; list a later height (a view nearer the tip) "
                           "or read the keys one by one")
        keys.update(key for ns, key in written if ns == namespace and key.startswith(prefix))
    return keys


def page_at(store: Store, namespace: str, prefix: str, after: str | None, limit: int, height: int,
            touched: set[str]) -> tuple[list[Row], str | None]:
    """One page of keys as of best-chain ``height`` (at most ``limit``, in the store's order,
    after ``after``), and the ``after`` of the next page (None: this was the last).

    ``touched`` are the keys blocks above ``height`` wrote (:func:`touched_keys`). The head's
    page bounds which of them belong on this page: a touched key beyond the head page's last
    key belongs to a later page, where that page's head scan will bound it in turn.
    """
    order = {key: state_key(namespace, key) for key in touched}
    head = store.scan(namespace, prefix, start_after=after, limit=limit)
    full = len(head) >= limit
    bound = state_key(namespace, head[-1][0]) if full else None
    floor = state_key(namespace, after) if after is not None else None
    rows: dict[str, Row] = {key: (key, value, written) for key, value, written in head if key not in touched}
    for key, skey in order.items():
        if (floor is not None and skey <= floor) or (bound is not None and skey > bound):
            continue
        value, written = store.get(namespace, key, height)
        if value is not None and written is not None:
            rows[key] = (key, value, written)
    page = sorted(rows.values(), key=lambda row: state_key(namespace, row[0]))
    more = len(page) > limit
    page = page[:limit]
    for key, value, _written in page:  # never a value the disk changed (~0.1 ms a key)
        store.check_value(namespace, key, value, height)
    if more:
        return page, page[-1][0]
    return page, head[-1][0] if full else None
