"""Throughput and latency figures from one load step's raw timestamps.

Definitions (also written into the JSON's ``how_measured``):

- *Sustained throughput*: acknowledgements whose ack time falls inside the measurement window
  (the step after its warm-up), divided by the window's length. Requests still queued when the
  window closes do not count, so an overloaded system is credited with what it actually
  finished, not with what it was offered.
- *Latency*: from the request's submit time to its acknowledgement, for requests scheduled
  inside the window. The submit time is when the generator released the request, but never later
  than ``RELEASE_TOLERANCE_S`` after the time the offered rate scheduled it for (open loop): timer
  rounding is forgiven, real lateness is not. A late release, like the time a request spends
  waiting for a free client slot, counts as latency, so an overloaded system that starves the
  generator or fills every slot shows it instead of hiding it (no coordinated omission). The
  generator's lateness is reported separately as ``dispatch_lag_ms``, the slot wait as
  ``queue_wait_ms``.
- A request never acknowledged counts as infinitely slow. A percentile that lands on one is
  reported as ``None``: the system was saturated at that load and the number would be a lie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MS_PER_S = 1000.0

RELEASE_TOLERANCE_S = 0.001
"""trio's epoll wait rounds sleeps up to the next millisecond, so a release up to this late is the
timer, not the system; any later and the latency is counted from the scheduled time."""


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ascending values; None if empty or infinite."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    value = sorted_values[rank - 1]
    return None if math.isinf(value) else value


def level_stats(
    scheduled: Sequence[float],
    released: Sequence[float],
    acked: Sequence[float],
    window_start: float,
    window_end: float,
) -> dict[str, Any]:
    """Sustained throughput and latency for one acknowledgement level.

    ``scheduled[i]`` is request i's scheduled submit time (it picks the window), ``released[i]``
    when the generator released it (NaN if never), ``acked[i]`` its ack time or NaN; latency
    starts at the release, or ``RELEASE_TOLERANCE_S`` after the scheduled time if that is earlier.
    """
    window = window_end - window_start
    if window <= 0:
        raise ValueError(f"window: end {window_end} must be after start {window_start}")
    acks_in_window = sum(1 for t in acked if window_start <= t < window_end)
    latencies: list[float] = []
    unacked = 0
    for s, r, a in zip(scheduled, released, acked):
        if not window_start <= s < window_end:
            continue
        if math.isnan(a) or math.isnan(r):
            unacked += 1
            latencies.append(math.inf)
        else:
            latencies.append(a - min(r, s + RELEASE_TOLERANCE_S))
    latencies.sort()
    return {
        "sustained_tps": acks_in_window / window,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(percentile(latencies, 100)),
        "requests_in_window": len(latencies),
        "unacked_in_window": unacked,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * MS_PER_S, 3)


def spread_ms(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p99 in milliseconds of finite durations in seconds (diagnostics such as send lag)."""
    finite = sorted(v for v in values if not math.isnan(v))
    return {"p50_ms": _ms(percentile(finite, 50)), "p99_ms": _ms(percentile(finite, 99))}
