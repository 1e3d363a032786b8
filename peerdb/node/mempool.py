"""The pool of admitted transactions, and admission: which submitted transactions enter it.

Admission is where a member decides what it will vouch for: a transaction enters the pool only
if it decodes, is signed by a client of its member, may write every namespace it touches, is
within its time window, carries envelopes where a namespace is private, is a well-formed
governance request where it touches ``_gov``, fits in a block, is not already pending or on
the chain, and fits in the pool. What no block could ever include is refused here, with the
reason (:class:`NeverIncluded`), rather than answered "accepted" and dropped by every proposer. Every refusal keeps its error object (an
:class:`~peerdb.core.errors.AccessError` for a namespace rule, a
:class:`~peerdb.core.errors.SignatureError` for a bad client signature, ...) so the edge — the
HTTP API, a log line — maps its type, never its text.

The pool belongs to the engine: it is read and written only under the service lock (see
:mod:`peerdb.node.service`). Its size is bounded by ``max_txs``; admission refuses a request
as a whole with :class:`MempoolFull` rather than take part of it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ..core.blockbody import block_size, header_size, header_template
from ..core.blockdecode import decode_tx_fast
from ..core.consortium import Consortium
from ..core.errors import DecodeError, RemoteError, SignatureError, ValidationError
from ..core.governance import parse_request
from ..core.limits import HASH_LEN, MAX_BLOCK_BYTES, MAX_NAME_LEN, MAX_ROUND
from ..core.model import GOV_NAMESPACE, Tx
from ..core.state import check_tx_envelopes, check_tx_static, check_tx_time

DEFAULT_MEMPOOL_TXS = 200_000
"""Transactions waiting for a block before clients get back-pressure (about 40 blocks of 5,000)."""


class MempoolFull(RemoteError):
    """Back-pressure: the pool of waiting transactions is at its limit; retry later."""


class NeverIncluded(ValidationError):
    """A transaction no block can include whatever the chain does next (a ``_gov`` op that is no
    governance request, a transaction larger than a block): every proposer would drop it, so
    admission refuses it and says why."""


LARGEST_HEADER = header_template(2**63 - 1, MAX_ROUND, bytes(HASH_LEN), "x" * MAX_NAME_LEN, 2**63 - 1)
"""A header at least as large as any real one (every integer field at a wide width, the longest
member name), so that a transaction that fits beside it fits in any block."""


def check_includable(tx: Tx, current: Consortium) -> None:
    """Raise :class:`NeverIncluded` if no block under ``current`` could carry ``tx``."""
    where = f"tx {tx.txid.hex()[:16]}"
    for op in tx.ops:
        if op.namespace == GOV_NAMESPACE:
            try:
                parse_request(op, where)
            except ValidationError as exc:
                raise NeverIncluded(str(exc)) from None
    limit = min(current.params.max_block_bytes, MAX_BLOCK_BYTES)
    alone = block_size(header_size(LARGEST_HEADER, 1), [len(tx.raw)], [])
    if alone > limit:
        raise NeverIncluded(f"{where}: {len(tx.raw)} bytes; a block holding only this transaction would be "
                            f"{alone} bytes, over max_block_bytes={limit}")


@dataclass
class SubmitResult:
    accepted: list[bytes] = field(default_factory=list)
    duplicates: list[bytes] = field(default_factory=list)
    rejected: list[tuple[int, RemoteError]] = field(default_factory=list)
    """(index in the request, why): the error object, whose type says what kind of refusal."""


class Mempool:
    """Pending transactions in arrival order (the order a proposer offers them to a block)."""

    def __init__(self, max_txs: int = DEFAULT_MEMPOOL_TXS, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_txs = max_txs
        self._txs: OrderedDict[bytes, Tx] = OrderedDict()
        self._clock = clock
        self._arrived: dict[bytes, float] = {}
        """Txid -> when it entered the pool (``clock`` seconds), for :meth:`oldest_age`."""
        self.by_raw: dict[bytes, Tx] = {}
        """Encoded transaction -> object, so a block body carrying pool transactions is not parsed again."""

    def __contains__(self, txid: object) -> bool:
        return txid in self._txs

    def __len__(self) -> int:
        return len(self._txs)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._txs)

    def __bool__(self) -> bool:
        return bool(self._txs)

    def get(self, txid: bytes) -> Tx | None:
        return self._txs.get(txid)

    def values(self) -> Iterable[Tx]:
        return self._txs.values()

    def put(self, tx: Tx) -> None:
        if tx.txid not in self._txs:
            self._txs[tx.txid] = tx
            self.by_raw[tx.raw] = tx
            self._arrived[tx.txid] = self._clock()

    def drop(self, txid: bytes) -> None:
        tx = self._txs.pop(txid, None)
        if tx is not None:
            self.by_raw.pop(tx.raw, None)
            self._arrived.pop(txid, None)

    def oldest_age(self) -> float:
        """Seconds the longest-waiting transaction has been in the pool (0 when it is empty).
        Transactions leave in blocks roughly in arrival order, so this is how far the pool lags."""
        for txid in self._txs:
            return max(0.0, self._clock() - self._arrived[txid])
        return 0.0

    @property
    def room(self) -> int:
        return self.max_txs - len(self._txs)

    def admit(self, requests: Sequence[Sequence[bytes]], current: Consortium, now_ms: int,
              included: Callable[[Iterable[bytes]], set[bytes]],
              verify: Callable[[Sequence[Tx]], list[bool]]) -> list[tuple[SubmitResult | MempoolFull, list[Tx]]]:
        """Check several requests' transactions; per request, its result and the transactions
        admitted (not yet put in the pool: the caller makes them durable first, then calls
        :meth:`put`). One signature batch (``verify``) and one chain lookup (``included``) for all.

        ``current`` is the consortium in force at the next height: its rules decide.
        """
        ttl = current.params.tx_ttl_ms + current.params.clock_skew_ms
        decoded: list[list[tuple[int, Tx | RemoteError]]] = []
        for raws in requests:
            parsed: list[tuple[int, Tx | RemoteError]] = []
            for i, raw in enumerate(raws):
                try:
                    known = self.by_raw.get(raw)
                    tx = known if known is not None else decode_tx_fast(raw)
                    check_tx_static(tx, current, governance=True)
                    check_includable(tx, current)
                    check_tx_envelopes(tx, current)
                    check_tx_time(tx, now_ms, ttl)
                except (DecodeError, ValidationError) as exc:
                    parsed.append((i, exc))
                    continue
                parsed.append((i, tx))
            decoded.append(parsed)
        on_chain = included(t.txid for parsed in decoded for _, t in parsed if isinstance(t, Tx))
        room = self.room
        seen_batch: set[bytes] = set()
        per_request: list[tuple[SubmitResult | MempoolFull, list[tuple[int, Tx]], list[tuple[int, Tx]]]] = []
        for parsed in decoded:
            result = SubmitResult()
            candidates: list[tuple[int, Tx]] = []
            replays: list[tuple[int, Tx]] = []
            for i, item in parsed:
                if not isinstance(item, Tx):
                    result.rejected.append((i, item))
                    continue
                pending = self._txs.get(item.txid)
                if pending is not None and pending.raw == item.raw:
                    result.duplicates.append(item.txid)  # byte for byte what is pending
                    continue
                if pending is not None or item.txid in seen_batch or item.txid in on_chain:
                    # The txid covers the body, not the signature: the same body with other
                    # signature bytes is a duplicate only if that signature verifies too.
                    replays.append((i, item))
                    continue
                seen_batch.add(item.txid)
                candidates.append((i, item))
            if len(candidates) > room:
                for _, tx in candidates:
                    seen_batch.discard(tx.txid)
                per_request.append((MempoolFull(f"mempool: {len(self._txs)} transactions waiting, limit "
                                                f"{self.max_txs}; retry after the next blocks"), [], []))
                continue
            room -= len(candidates)
            per_request.append((result, candidates, replays))
        oks = iter(verify([tx for _, candidates, replays in per_request for _, tx in candidates + replays]))
        out: list[tuple[SubmitResult | MempoolFull, list[Tx]]] = []
        for outcome, candidates, replays in per_request:
            admitted: list[Tx] = []
            for n, (i, tx) in enumerate(candidates + replays):  # a full pool's request has none
                assert isinstance(outcome, SubmitResult)
                if not next(oks):
                    outcome.rejected.append((i, SignatureError(
                        f"tx {tx.txid.hex()[:16]}: client signature does not verify")))
                elif n >= len(candidates):
                    outcome.duplicates.append(tx.txid)
                else:
                    admitted.append(tx)
                    outcome.accepted.append(tx.txid)
            if isinstance(outcome, SubmitResult):
                outcome.rejected.sort(key=lambda r: r[0])
            out.append((outcome, admitted))
        return out
