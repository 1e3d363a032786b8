"""Parallel Ed25519 verification of transaction signatures.

Verification dominates a member's CPU (every member checks every client signature once).
libsodium's verify releases the GIL through cffi, so a small thread pool uses every core; we
keep it to one pool per process and hand it whole batches to amortise the hand-off.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..core.model import Tx

PARALLEL_MIN_BATCH = 64
"""Below this many signatures the thread hand-off costs more than it saves."""
VERIFIED_CACHE = 500_000
"""Transactions whose signatures we already checked (mempool admission, then the block): about
60 MB (txid and signature bytes per entry); a hit saves one 60 us verification per transaction."""


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

    def verify(self, txs: Sequence[Tx]) -> list[bool]:
        """Check signatures of ``txs`` (skipping ones already verified); remember the good ones."""
        todo = [i for i, tx in enumerate(txs) if not self.known(tx)]
        results = [True] * len(txs)
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
