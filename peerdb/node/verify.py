"""Parallel Ed25519 verification of transaction signatures.

Verification dominates a member's CPU (every member checks every client signature once).
libsodium's verify releases the GIL through cffi, so a small thread pool uses every core; we
keep it to one pool per process and hand it whole batches to amortise the hand-off.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..core.model import Tx

PARALLEL_MIN_BATCH = 64
"""Below this many signatures the thread hand-off costs more than it saves."""
PREFETCH_CHUNK = 256
"""Signatures per pool task when a whole catch-up batch is checked ahead (:meth:`prefetch`):
small enough that the first block's checks finish early and its state can be applied while
the pool checks the next blocks, large enough that the hand-off is a small part (~15 ms of
checks per task)."""
MAX_PREFETCHED = 64 * 5000
"""Signatures checked ahead at most: one catch-up answer (64 blocks of 5,000 transactions)."""
VERIFIED_CACHE = 250_000
"""Transactions whose signatures we already checked (mempool admission, then the block): more
than a full pool (``DEFAULT_MEMPOOL_TXS``, 200,000) so that every pooled transaction is checked
once, and about 64 MiB at the bound (267 bytes per entry measured with tracemalloc: the txid, the
signature and the ordered dict's node). A hit saves one 60 us verification per transaction. On a
busy node the cache fills over hours and then stays at its bound: part of a long-running node's
resident memory (``bench/soak.py``)."""


class TxSignatureChecker:
    """Checks client signatures of transactions in batches, across a thread pool, and remembers
    the ones that passed (mempool admission, then the block: each is checked once). A txid
    covers the body, not the signature, so the cache holds the signature that verified: the
    same body with other signature bytes is checked again. One per engine, called under the
    service's lock."""

    def __init__(self, cid: bytes, threads: int | None = None) -> None:
        self.cid = cid
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="verify") if self.threads > 1 else None
        self._verified: OrderedDict[bytes, bytes] = OrderedDict()
        """txid -> the signature that verified for it."""
        self._ahead: dict[bytes, tuple[Future[list[bool]], int, bytes]] = {}
        """txid -> (the pool task checking it, its index there, the signature it checks)."""
        self.checked = 0
        """Signatures verified so far (cache hits not counted): the metrics' verify rate."""

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def known(self, tx: Tx) -> bool:
        return self._verified.get(tx.txid) == tx.signature

    def remember(self, txs: Sequence[Tx]) -> None:
        for tx in txs:
            self._verified[tx.txid] = tx.signature
        while len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)

    def prefetch(self, txs: Sequence[Tx]) -> None:
        """Start checking ``txs`` in the pool now (a whole catch-up answer in one call): the
        caller goes on applying blocks while the pool checks the next ones, and :meth:`verify`
        takes the results as it reaches each block. Without a pool this does nothing."""
        if self._pool is None:
            return
        todo = [tx for tx in txs if not self.known(tx) and tx.txid not in self._ahead]
        todo = todo[:max(0, MAX_PREFETCHED - len(self._ahead))]
        cid = self.cid
        for start in range(0, len(todo), PREFETCH_CHUNK):
            part = todo[start:start + PREFETCH_CHUNK]
            future = self._pool.submit(lambda p: [tx.signature_valid(cid) for tx in p], part)
            for index, tx in enumerate(part):
                self._ahead[tx.txid] = (future, index, tx.signature)

    def drop_prefetched(self) -> None:
        """Forget checks started ahead and not used (a catch-up answer that stopped early)."""
        for future, _index, _sig in self._ahead.values():
            future.cancel()
        self._ahead.clear()

    def verify(self, txs: Sequence[Tx]) -> list[bool]:
        """Check signatures of ``txs`` (skipping ones already verified, taking the results of
        checks started by :meth:`prefetch`); remember the good ones."""
        todo = [i for i, tx in enumerate(txs) if not self.known(tx)]
        results = [True] * len(txs)
        if not todo:
            return results
        if self._ahead:
            rest = []
            good_ahead = []
            for i in todo:
                tx = txs[i]
                ahead = self._ahead.pop(tx.txid, None)
                if ahead is None or ahead[2] != tx.signature or ahead[0].cancelled():
                    rest.append(i)
                    continue
                self.checked += 1
                ok = ahead[0].result()[ahead[1]]
                results[i] = ok
                if ok:
                    good_ahead.append(tx)
            self.remember(good_ahead)
            todo = rest
            if not todo:
                return results
        self.checked += len(todo)
        if self._pool is None or len(todo) < PARALLEL_MIN_BATCH:
            checked = [txs[i].signature_valid(self.cid) for i in todo]
        else:
            chunk = max(16, len(todo) // (self.threads * 4))
            parts = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
            futures = [self._pool.submit(lambda p: [txs[i].signature_valid(self.cid) for i in p], part)
                       for part in parts]
            checked = [ok for f in futures for ok in f.result()]
        good = []
        for i, ok in zip(todo, checked):
            results[i] = ok
            if ok:
                good.append(txs[i])
        self.remember(good)
        return results
