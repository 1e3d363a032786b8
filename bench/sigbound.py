"""The machine's signature bound: how many client-signed transactions per second a consortium of
N members could accept if checking signatures were the only cost.

Every member verifies every client signature, so each transaction costs the consortium N
verifications; spread over machines they run in parallel, but on one benchmark machine they
share its cores: ``bound_tps = verify_per_s(all cores) / members``.

Verification uses PyNaCl (libsodium), as PeerDB does. PyNaCl calls libsodium through cffi, which
releases the GIL during the C call, so threads can use every core; this module measures one
thread and ``os.cpu_count()`` threads and reports the ratio, and cross-checks with the same
number of processes (no GIL at all): if threads fall well short of processes, the GIL is in the
way and ``bound_tps`` (taken from threads, as a node would use them) says so.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from nacl.signing import SigningKey, VerifyKey

MESSAGE_BYTES = 220
"""About one encoded transaction: a ~150-byte value, its key, nonce, namespace and envelope.
Ed25519 verification cost barely depends on length at this size (one SHA-512 block or two)."""

DISTINCT_SIGNERS = 16
"""Several keys, so the figure includes decoding a different public key, as real traffic does."""

CLOCK_CHECK_EVERY = 64
"""Verifications between clock reads: reading the clock per call would add measurable overhead."""

MESSAGES = 4 * CLOCK_CHECK_EVERY
"""Distinct signed messages cycled through by each thread (a multiple of CLOCK_CHECK_EVERY, so
every slice is full)."""


def _signed_messages() -> list[tuple[VerifyKey, bytes, bytes]]:
    keys = [SigningKey.generate() for _ in range(DISTINCT_SIGNERS)]
    out = []
    for i in range(MESSAGES):
        key = keys[i % DISTINCT_SIGNERS]
        message = os.urandom(MESSAGE_BYTES)
        out.append((key.verify_key, message, key.sign(message).signature))
    return out


def _verify_for(items: list[tuple[VerifyKey, bytes, bytes]], deadline: float) -> int:
    """Verify items in a loop until ``deadline`` (perf_counter); return how many were verified."""
    done = 0
    start = 0
    while time.perf_counter() < deadline:
        for vk, message, signature in items[start : start + CLOCK_CHECK_EVERY]:
            vk.verify(message, signature)
        start = (start + CLOCK_CHECK_EVERY) % len(items)
        done += CLOCK_CHECK_EVERY
    return done


def verify_rate_threads(threads: int, duration_s: float) -> float:
    """Verifications per second with ``threads`` threads verifying for ``duration_s``."""
    items = _signed_messages()
    counts = [0] * threads
    barrier = threading.Barrier(threads + 1)
    deadline_box: list[float] = []

    def run(slot: int) -> None:
        barrier.wait()
        counts[slot] = _verify_for(items, deadline_box[0])

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    start = time.perf_counter()
    deadline_box.append(start + duration_s)
    barrier.wait()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def _process_worker(duration_s: float) -> tuple[int, float]:
    items = _signed_messages()
    start = time.perf_counter()
    count = _verify_for(items, start + duration_s)
    return count, time.perf_counter() - start


def verify_rate_processes(processes: int, duration_s: float) -> float:
    """Verifications per second summed over ``processes`` single-threaded processes."""
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_process_worker, [duration_s] * processes))
    return sum(count / elapsed for count, elapsed in results)


def measure(members: int, duration_s: float) -> dict[str, Any]:
    """The signature figures for the JSON: rates, scaling, and ``bound_tps`` for ``members``."""
    cores = os.cpu_count() or 1
    one = verify_rate_threads(1, duration_s)
    all_threads = verify_rate_threads(cores, duration_s)
    all_processes = verify_rate_processes(cores, duration_s)
    return {
        "members": members,
        "cores": cores,
        "verify_per_s_1_thread": round(one),
        "verify_per_s_all_threads": round(all_threads),
        "verify_per_s_all_processes": round(all_processes),
        "thread_scaling": round(all_threads / one, 2),
        "threads_vs_processes": round(all_threads / all_processes, 2),
        "bound_tps": round(all_threads / members),
        "how_measured": (
            f"PyNaCl VerifyKey.verify on {MESSAGE_BYTES}-byte messages from {DISTINCT_SIGNERS} signers, "
            f"{duration_s:g} s each with 1 thread, {cores} threads and {cores} processes; "
            f"bound_tps = verify_per_s_all_threads / {members} members"
        ),
    }
