"""Ed25519 checks in worker threads, in large chunks, on messages built once.

An audit verifies one client signature per transaction and every block signature; at ~50 us of
CPU each they are most of the work. libsodium's ``crypto_sign_open`` releases the GIL (PyNaCl
calls it through cffi), so worker threads use every core while the main thread decodes and
replays. Jobs are handed over in chunks of :data:`CHUNK` so the hand-off costs nothing next to
the checks, and each job is the exact byte string libsodium checks (signature || signing
message) with the key as raw bytes: no per-check object is built.

Acceptance is libsodium's, as the protocol requires (docs/protocol.md §3.3): this is the same
call :func:`peerdb.core.keys.verify` makes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor

import nacl.bindings
import nacl.exceptions

from peerdb.core.codec import signing_prefix

CHUNK = 2048
"""Signatures per task: ~0.1 s of one core, long enough that queueing and waking a thread are
noise, short enough that both cores get work early and the last chunk does not leave one idle."""

_FAILURES = (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError)




def _check_chunk(start: int, signed: list[bytes], keys: list[bytes]) -> list[int]:
    """Indices (global) of the signatures that do not verify."""
    bad = []
    open_ = nacl.bindings.crypto_sign_open
    for i, (sm, pk) in enumerate(zip(signed, keys)):
        try:
            open_(sm, pk)
        except _FAILURES:
            bad.append(start + i)
    return bad


class SignaturePool:
    """Collects signature checks, runs them in threads, answers per job index.

    ``add`` returns a job's index; ``failed(lo, hi)`` returns the failing indices in
    ``[lo, hi)``, waiting for (and if need be submitting) the chunks that cover them. Indices are
    consumed in order, which is how the verifier walks the bundle.

    ``processes=True`` runs the checks in worker processes instead: each check still releases
    the GIL, but a thread must take it back after every check, and while the main thread is busy
    decoding it waits up to a switch interval for it; separate processes never wait. They cost
    a start-up (spawned, so no state is inherited) and the copying of each chunk.
    """

    def __init__(self, threads: int | None = None, chunk: int = CHUNK, processes: bool = False) -> None:
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.chunk = chunk
        self._pool: Executor
        if processes:
            self._pool = ProcessPoolExecutor(self.threads, mp_context=multiprocessing.get_context("spawn"))
        else:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="audit-verify")
        self._signed: list[bytes] = []
        self._keys: list[bytes] = []
        self._start = 0  # global index of self._signed[0]
        self._futures: deque[tuple[int, list[bytes], list[bytes], Future[list[int]]]] = deque()
        """(first index, jobs, keys, future) per submitted chunk, in order."""
        self._done = 0  # every job below this index has its result in self._bad
        self._bad: set[int] = set()
        self.checked = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "SignaturePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def next_index(self) -> int:
        return self._start + len(self._signed)

    @property
    def in_flight(self) -> int:
        """Jobs added whose results have not been collected yet."""
        return self.next_index - self._done

    def add(self, signature: bytes, message: bytes, key: bytes) -> int:
        index = self._start + len(self._signed)
        self._signed.append(signature + message)
        self._keys.append(key)
        if len(self._signed) >= self.chunk:
            self.submit(full_chunks_only=True)
        return index

    def extend(self, signed: list[bytes], keys: list[bytes]) -> int:
        """Add pre-built jobs (signature || message, key); returns the first one's index."""
        index = self._start + len(self._signed)
        self._signed.extend(signed)
        self._keys.extend(keys)
        if len(self._signed) >= self.chunk:
            self.submit(full_chunks_only=True)
        return index

    def submit(self, full_chunks_only: bool = False) -> None:
        """Hand the jobs collected so far to the threads, one task per chunk."""
        signed, keys, chunk = self._signed, self._keys, self.chunk
        cut = 0
        while len(signed) - cut >= chunk or (not full_chunks_only and cut < len(signed)):
            end = min(cut + chunk, len(signed))
            start = self._start + cut
            part, part_keys = signed[cut:end], keys[cut:end]
            self._futures.append((start, part, part_keys, self._pool.submit(_check_chunk, start, part, part_keys)))
            cut = end
        if cut:
            self._start += cut
            self._signed, self._keys = signed[cut:], keys[cut:]

    def failed(self, lo: int, hi: int) -> list[int]:
        """Failing job indices in ``[lo, hi)`` (all earlier chunks are collected on the way).

        A chunk no thread has started yet is checked right here instead of waiting for one: the
        caller would only sit idle, and this way it adds a core's worth of checking at the end.
        """
        if hi > self._start:
            self.submit()
        while self._done < hi:
            start, signed, keys, future = self._futures.popleft()
            bad = _check_chunk(start, signed, keys) if future.cancel() else future.result()
            self._bad.update(bad)
            self.checked += len(signed)
            self._done = start + len(signed)
        if not self._bad:
            return []
        out = sorted(i for i in self._bad if lo <= i < hi)
        self._bad.difference_update([i for i in self._bad if i < hi])
        return out
