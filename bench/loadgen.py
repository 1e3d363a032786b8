"""The open-loop load generator, run as its own process: ``python -m bench.loadgen < spec.json``.

Open loop means requests are scheduled at the offered rate whatever the system does: request i
is due at ``t0 + i / rate``. Up to ``concurrency`` requests are in flight at once (the number of
client connections a real deployment would hold); a due request waits for a free slot, and that
wait counts in its latency (see ``bench.stats``). A closed-loop generator would slow down with the
system and report flattering latencies; this one keeps offering the load.

Everything is bounded: ``rate * duration`` requests at most, and the step ends ``drain_s`` after
the last scheduled request whether or not every request was acknowledged.

It runs in a separate process so that its CPU use is visible (``loadgen_cpu_util`` in the result:
near 1.0 means the generator, not the system, may be the limit) and so that a stuck client can be
killed by PID without taking the harness down.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from bench.drivers import Client, ClientSpec, make_client
from bench.errors import BenchError, SubmitError
from bench.procs import ManagedProcesses
from bench.stats import level_stats, spread_ms

VALUE_POOL_SIZE = 1024
"""Distinct random values cycled through: enough that no system can dedupe or compress them
away, few enough that making them costs nothing."""

MAX_REQUESTS_PER_STEP = 2_000_000
"""Ceiling on ``rate * duration``: keeps the per-request arrays (a few floats each) well under a
few hundred MB even if someone asks for an absurd rate."""

START_DELAY_S = 0.05
"""Gap between setting up and the first scheduled request, so setup never eats into the step."""

ERROR_TEXT_CHARS = 120
"""Error messages are grouped by their first characters; a longer text rarely adds information."""

SUBPROCESS_SLACK_S = 30.0
"""Time on top of the step's own length for the generator process to start, connect, prepare and
report; past it the harness kills the process and records the step as failed."""


@dataclass(frozen=True)
class LoadSpec:
    """One load step: what to offer, to which cluster, for how long."""

    client: ClientSpec
    levels: tuple[str, ...]
    rate: float
    duration_s: float
    warmup_s: float
    drain_s: float
    concurrency: int
    value_bytes: int
    key_prefix: str

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"rate: must be a positive number of requests per second, got {self.rate}")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError(f"warmup_s: must be in [0, duration_s={self.duration_s}), got {self.warmup_s}")
        if self.drain_s < 0:
            raise ValueError(f"drain_s: must not be negative, got {self.drain_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be at least 1, got {self.concurrency}")
        if self.value_bytes < 1:
            raise ValueError(f"value_bytes: must be at least 1, got {self.value_bytes}")
        if self.requests > MAX_REQUESTS_PER_STEP:
            raise ValueError(f"rate*duration: {self.requests} requests exceeds {MAX_REQUESTS_PER_STEP}")
        if not self.levels:
            raise ValueError("levels: at least one acknowledgement level is needed")

    @property
    def requests(self) -> int:
        return max(1, int(round(self.rate * self.duration_s)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadSpec:
        return cls(
            client=dict(data["client"]),
            levels=tuple(str(x) for x in data["levels"]),
            rate=float(data["rate"]),
            duration_s=float(data["duration_s"]),
            warmup_s=float(data["warmup_s"]),
            drain_s=float(data["drain_s"]),
            concurrency=int(data["concurrency"]),
            value_bytes=int(data["value_bytes"]),
            key_prefix=str(data["key_prefix"]),
        )


async def run_open_loop(client: Client, spec: LoadSpec) -> dict[str, Any]:
    """Offer ``spec.rate`` writes per second for ``spec.duration_s``; return the step's figures."""
    n = spec.requests
    values = [os.urandom(spec.value_bytes) for _ in range(min(n, VALUE_POOL_SIZE))]
    nan = math.nan
    released = [nan] * n
    sent = [nan] * n
    acks = {level: [nan] * n for level in spec.levels}
    errors: Counter[str] = Counter()
    await client.prepare(n, spec.value_bytes)

    send_channel, receive_channel = trio.open_memory_channel[int](n)

    async def worker(requests: trio.MemoryReceiveChannel[int]) -> None:
        async with requests:
            async for i in requests:
                sent[i] = trio.current_time()
                key = f"{spec.key_prefix}/{i:09d}".encode()
                try:
                    reached = await client.submit(i, key, values[i % len(values)])
                except SubmitError as e:
                    errors[str(e)[:ERROR_TEXT_CHARS]] += 1
                    continue
                for level, t in reached.items():
                    if level in acks:
                        acks[level][i] = t

    cpu_before = _cpu_seconds()
    t0 = trio.current_time() + START_DELAY_S
    async with trio.open_nursery() as nursery:
        for _ in range(spec.concurrency):
            nursery.start_soon(worker, receive_channel.clone())
        receive_channel.close()
        async with send_channel:
            i = 0
            while i < n:  # each pass releases >= 1 request or sleeps until the next is due
                now = trio.current_time()
                due = min(n, int((now - t0) * spec.rate) + 1)
                if due <= i:
                    at = t0 + i / spec.rate
                    if now < at:
                        await trio.sleep_until(at)
                        continue
                    due = i + 1  # its time has come, whatever float rounding said above
                while i < due:
                    released[i] = now
                    send_channel.send_nowait(i)
                    i += 1
        # All dispatched; give stragglers until the drain deadline, then cancel them.
        nursery.cancel_scope.deadline = t0 + spec.duration_s + spec.drain_s
    t_end = trio.current_time()
    cpu_used = _cpu_seconds() - cpu_before
    await client.aclose()

    scheduled = [t0 + i / spec.rate for i in range(n)]
    window = (t0 + spec.warmup_s, t0 + spec.duration_s)
    return {
        "offered_tps": spec.rate,
        "requests": n,
        "dispatched": sum(1 for t in sent if not math.isnan(t)),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "levels": {level: level_stats(scheduled, released, acks[level], *window) for level in spec.levels},
        "dispatch_lag_ms": spread_ms([r - sch for r, sch in zip(released, scheduled)]),
        "queue_wait_ms": spread_ms([s - r for s, r in zip(sent, released)]),
        "loadgen_cpu_util": round(cpu_used / max(t_end - t0, 1e-9), 3),
        "wall_s": round(t_end - t0, 3),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _main_async(spec: LoadSpec) -> dict[str, Any]:
    client = make_client(spec.client, spec.concurrency)
    return await run_open_loop(client, spec)


def main() -> None:
    """Entry point of the generator process: spec JSON on stdin, result JSON on stdout."""
    spec = LoadSpec.from_json(json.load(sys.stdin))
    result = trio.run(_main_async, spec)
    json.dump(result, sys.stdout)
    sys.stdout.flush()


def run_step(procs: ManagedProcesses, spec: LoadSpec, repo_root: Path, log_path: Path) -> dict[str, Any]:
    """Harness side: run one step in a fresh generator process, return its figures.

    The process is stopped by PID whatever happens; a timeout or crash raises ``BenchError``
    with the generator's stderr.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = procs.spawn("loadgen", [sys.executable, "-m", "bench.loadgen"], cwd=repo_root, env=env, pipes=True)
    payload = json.dumps(asdict(spec)).encode()
    timeout = spec.duration_s + spec.drain_s + SUBPROCESS_SLACK_S
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"load generator: no result within {timeout:.0f} s at {spec.rate:.0f} tx/s") from None
    finally:
        procs.stop(proc.pid)
    with open(log_path, "ab") as log:
        log.write(err)
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace")[-2000:]
        raise BenchError(f"load generator: exited with {proc.returncode} at {spec.rate:.0f} tx/s:\n{tail}")
    try:
        result: dict[str, Any] = json.loads(out)
    except ValueError as e:
        raise BenchError(f"load generator: unreadable result ({e})") from None
    return result


if __name__ == "__main__":
    main()
