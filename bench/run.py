"""Benchmark PeerDB beside etcd and pysyncobj on this machine, against its signature bound.

    python bench/run.py [--quick | --smoke] [--out FILE.json] [--systems peerdb,etcd,pysyncobj]

One run: (1) the signature bound (``bench/sigbound.py``); (2) for each system, a fresh cluster of
real processes on 127.0.0.1 and a ramp of open-loop load steps from a separate generator process
(``bench/loadgen.py``): offered load grows geometrically until the system saturates, then one
step runs at 80% of the peak; (3) a table on stdout, the JSON at ``--out`` and a PNG of latency
against offered load beside it. Every process is stopped by PID at the end, on success or not.

Modes bound the total time: ``--smoke`` (tests) seconds, ``--quick`` about 3 minutes, default
(full) under 20. PeerDB is measured twice, on fresh clusters: one transaction per HTTP request
(``peerdb``) and through the write stream with the client library (``peerdb_stream``). Exit status: 0 when every selected system was measured or skipped, 3 when one
failed (the JSON says why), other non-zero for a harness bug.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(REPO_ROOT))

from bench import report, sigbound  # noqa: E402
from bench.drivers import SYSTEM_NAMES, ClientSpec, Driver, make_driver  # noqa: E402
from bench.errors import BenchError, SystemSkipped  # noqa: E402
from bench.loadgen import LoadSpec, run_step  # noqa: E402
from bench import diskfloor  # noqa: E402
from bench.machine import describe_machine, software_versions  # noqa: E402
from bench.peerdb_driver import MEMBERS as CONSORTIUM_MEMBERS  # noqa: E402
from bench.peerdb_driver import PRELOAD_ENV  # noqa: E402
from bench.procs import ManagedProcesses  # noqa: E402
from bench.stats import __doc__ as STATS_DEFINITIONS  # noqa: E402

VALUE_BYTES = 150
"""Value size of every write, for every system: a typical business record or digest bundle."""

SATURATION_FRACTION = 0.9
"""A step whose sustained throughput is below this fraction of the offered load is saturated:
the system no longer keeps up, so offering more only grows queues."""

MAX_ERROR_FRACTION = 0.01
"""More refused writes than this fraction also counts as saturated."""

EIGHTY_PERCENT = 0.8
"""The 'busy but not overloaded' operating point the issue asks latency for."""

MIN_RATE = 10.0
"""Slowest step worth running: below it a short step holds too few requests for a p99."""

CONCURRENCY = 512
"""Client connections in flight, the same for every system. By Little's law a system can show at
most concurrency / latency writes/s, so this must exceed the peak any system could reach times
its latency there: 512 covers 10,000 tx/s at 50 ms, or pysyncobj's ~170 ms floor up to 3,000 tx/s.
A step whose ``queue_wait_ms`` grows was limited by it (or the system saturated)."""

BUSY_LOAD_PER_CORE = 0.5
"""A 1-minute load average above this per core at start means the machine is not quiet."""

STEP_OVERHEAD_S = 1.5
"""Start-up of a generator process (imports, opening its connections) on top of a step's length,
for the time-budget check."""

BUDGET_OVERRUN = 1.25
"""The 80% step may start as long as the system's run ends within this multiple of its budget:
without it the latency at 80% of peak, one of the headline figures, would be lost."""

EXIT_SOME_SYSTEM_FAILED = 3

JSON_SCHEMA = 1


@dataclass(frozen=True)
class Mode:
    """How long and how hard one run measures; every field bounds time."""

    name: str
    signature_s: float
    step_s: float
    warmup_s: float
    drain_s: float
    first_rate: float
    ramp_factor: float
    max_ramp_steps: int
    eighty_percent_step: bool
    system_budget_s: float
    install: bool
    concurrency: int


MODES = {
    # Tests: one short light step per system, nothing installed. Well under a minute.
    "smoke": Mode("smoke", 0.3, 1.5, 0.5, 1.0, 50.0, 1.0, 1, False, 15.0, False, 8),
    # About 3 minutes for four systems (PeerDB over HTTP and over the write stream, etcd,
    # pysyncobj): 100, 400, 1600, 6400 tx/s then 80% of peak, 4 s steps; at worst 4 x 1.25 x 45 s
    # plus the signature bound (installs, when needed, come on top).
    "quick": Mode("quick", 1.5, 4.0, 1.0, 2.0, 100.0, 4.0, 4, True, 45.0, True, CONCURRENCY),
    # Under 20 minutes: 100 .. 12800 tx/s doubling, 15 s steps, then 80% of peak;
    # at worst 4 x 1.25 x 200 s plus the signature bound.
    "full": Mode("full", 5.0, 15.0, 3.0, 5.0, 100.0, 2.0, 8, True, 200.0, True, CONCURRENCY),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_saturated(step: dict[str, Any], level: str) -> bool:
    lv = step["levels"][level]
    return (
        lv["sustained_tps"] < SATURATION_FRACTION * step["offered_tps"]
        or lv["p99_ms"] is None
        or step["error_count"] > MAX_ERROR_FRACTION * step["requests"]
    )


class SystemRun:
    """Measures one system: cluster up, load ramp, 80% step, extras, cluster down."""

    def __init__(self, driver: Driver, mode: Mode, concurrency: int, procs: ManagedProcesses, workdir: Path):
        self.driver = driver
        self.mode = mode
        self.concurrency = concurrency
        self.procs = procs
        self.workdir = workdir
        self.steps: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.clusters_started = 0

    def step(self, spec: ClientSpec, rate: float, role: str) -> dict[str, Any]:
        load = LoadSpec(
            client=spec,
            levels=self.driver.levels,
            rate=rate,
            duration_s=self.mode.step_s,
            warmup_s=self.mode.warmup_s,
            drain_s=self.mode.drain_s,
            concurrency=self.concurrency,
            value_bytes=VALUE_BYTES,
            key_prefix=f"bench/{self.driver.name}/{len(self.steps)}",
        )
        traced = getattr(self.driver, "trace_counts", None)
        before = traced() if traced is not None else None
        result = run_step(self.procs, load, REPO_ROOT, self.workdir / "loadgen.log")
        result["role"] = role
        after = traced() if traced is not None else None
        if before is not None and after is not None:
            result["stages_ms"] = report.stage_breakdown(before, after)
        self.steps.append(result)
        top = result["levels"][self.driver.levels[-1]]
        log(
            f"  {self.driver.name} {role:>13} offered {rate:8.0f}/s -> {top['sustained_tps']:8.1f}/s "
            f"p50 {top['p50_ms']} ms p99 {top['p99_ms']} ms errors {result['error_count']} "
            f"loadgen cpu {result['loadgen_cpu_util']}"
        )
        return result

    def start_cluster(self) -> ClientSpec:
        """A fresh cluster in a fresh directory; each start gets its own, so a restart never
        reuses a predecessor's data."""
        self.clusters_started += 1
        t = time.monotonic()
        spec = self.driver.start(self.procs, self.workdir / f"cluster-{self.clusters_started}")
        log(f"  {self.driver.name}: cluster up in {time.monotonic() - t:.1f} s")
        return spec

    def measure(self) -> None:
        per_step = self.mode.step_s + self.mode.drain_s + STEP_OVERHEAD_S
        spec = self.start_cluster()
        started = time.monotonic()  # the budget is for load steps: an aged (preloaded) cluster takes minutes to set up
        primary = self.driver.levels[-1]
        rate = self.mode.first_rate
        saturated = False
        for k in range(self.mode.max_ramp_steps):
            if k > 0 and time.monotonic() - started + per_step > self.mode.system_budget_s:
                self.notes.append(f"ramp stopped before {rate:.0f} tx/s: time budget")
                break
            result = self.step(spec, rate, report.LIGHT if k == 0 else "ramp")
            saturated = is_saturated(result, primary)
            if saturated:
                break
            rate *= self.mode.ramp_factor
        if not self.mode.eighty_percent_step:
            return
        peak = report.peak_tps(self.steps, primary) or 0.0
        if peak < MIN_RATE:
            self.notes.append(f"no 80% step: peak {peak} tx/s below {MIN_RATE}")
            return
        if time.monotonic() - started + per_step > self.mode.system_budget_s * BUDGET_OVERRUN:
            self.notes.append("no 80% step: time budget")
            return
        if saturated:
            # An overloaded cluster keeps working through writes whose clients already gave up;
            # that backlog (or the elections it provoked) would land in the next step.
            self.driver.stop(self.procs)
            spec = self.start_cluster()
            self.notes.append("cluster restarted after the saturated step, before the 80% step")
        self.step(spec, EIGHTY_PERCENT * peak, report.AT_80)


def measure_system(
    name: str, mode: Mode, concurrency: int, install: bool, procs: ManagedProcesses, workdir: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (entry for ``systems`` in the JSON, extra measurements)."""
    driver = make_driver(name)
    entry: dict[str, Any] = {
        "status": "measured",
        "levels": list(driver.levels),
        "members": driver.members,
        "how_measured": driver.how_measured(),
        "steps": [],
    }
    extras: dict[str, Any] = {}
    # A system whose client keeps many writes in flight on a few connections (the write stream)
    # names its own bound; the mode's is a number of connections.
    concurrency = getattr(driver, "concurrency", concurrency)
    entry["concurrency"] = concurrency
    run = SystemRun(driver, mode, concurrency, procs, workdir / name)
    log(f"{name}:")
    try:
        driver.ensure_available(install)
        entry["version"] = driver.version()
        run.workdir.mkdir(parents=True)
        run.measure()
        try:
            extras = driver.extra_measurements(procs, run.workdir)
        except NotImplementedError as e:
            run.notes.append(f"extra measurements not implemented ({e})")
    except NotImplementedError as e:
        entry.update(status="skipped", reason=f"{name}: driver not implemented ({e})")
    except SystemSkipped as e:
        entry.update(status="skipped", reason=str(e))
    except BenchError as e:
        entry.update(status="failed", reason=str(e))
    finally:
        driver.stop(procs)
    entry["version"] = entry.get("version") or driver.version()
    entry["steps"] = run.steps
    entry["notes"] = run.notes
    if entry["status"] != "measured":
        log(f"  {name}: {entry['status']}: {entry['reason']}")
    return entry, extras


def headline(systems: dict[str, dict[str, Any]], extras: dict[str, Any]) -> dict[str, Any]:
    """The issue's required top-level keys; null wherever a figure was not measured."""
    def steps_of(name: str) -> list[dict[str, Any]]:
        entry = systems.get(name)
        return entry["steps"] if entry is not None else []

    out: dict[str, Any] = {}
    peerdb = steps_of("peerdb")
    out["peerdb_tps_majority"] = report.peak_tps(peerdb, "majority")
    out["peerdb_tps_unanimous_signed"] = report.peak_tps(peerdb, "unanimous_signed")
    out["peerdb_latency_ms"] = (
        {level: report.latency_summary(peerdb, level) for level in ("majority", "unanimous_signed")}
        if peerdb
        else None
    )
    stream = steps_of("peerdb_stream")
    out["peerdb_stream_tps_majority"] = report.peak_tps(stream, "majority")
    out["peerdb_stream_tps_unanimous_signed"] = report.peak_tps(stream, "unanimous_signed")
    out["peerdb_stream_latency_ms"] = (
        {level: report.latency_summary(stream, level) for level in ("majority", "unanimous_signed")}
        if stream
        else None
    )
    out["peerdb_stages_ms"] = (
        {role: (report.step_by_role(peerdb, role) or {}).get("stages_ms") for role in (report.LIGHT, report.AT_80)}
        if peerdb
        else None
    )
    for name in ("etcd", "pysyncobj"):
        out[f"{name}_tps"] = report.peak_tps(steps_of(name), "committed")
        out[f"{name}_latency_ms"] = report.latency_summary(steps_of(name), "committed")
    for key in ("audit_verify_tps", "catchup_tps", "bytes_per_tx"):
        value = extras.get(key)
        out[key] = value if isinstance(value, (int, float)) and math.isfinite(value) else None
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about 3 minutes")
    size.add_argument("--smoke", action="store_true", help="seconds; for the test suite; installs nothing")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/<mode>.json); PNG beside it")
    parser.add_argument("--systems", default=",".join(SYSTEM_NAMES), help="comma-separated subset of %(default)s")
    parser.add_argument("--concurrency", type=int, help="client connections in flight (default per mode)")
    parser.add_argument("--no-install", action="store_true", help="skip systems that are not installed")
    parser.add_argument("--keep-workdir", action="store_true", help="keep data dirs and logs after the run")
    parser.add_argument("--preload-blocks", type=int, default=0,
                        help="start PeerDB's members on stores already holding this many blocks (an old consortium)")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEM_NAMES]
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEM_NAMES)}")
    args.system_list = systems
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency: must be at least 1")
    return args


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: children are stopped


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    concurrency = args.concurrency or mode.concurrency
    install = mode.install and not args.no_install
    out = args.out or REPO_ROOT / "bench" / "results" / f"{mode.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.preload_blocks:
        os.environ[PRELOAD_ENV] = str(args.preload_blocks)  # read by the PeerDB driver

    started_at = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="peerdb-bench-"))
    machine = describe_machine(workdir.parent)
    if machine["load_average_1m_at_start"] > BUSY_LOAD_PER_CORE * (machine["cores"] or 1):
        log(f"warning: load average {machine['load_average_1m_at_start']} at start: "
            "other work is running and every figure below will be low and noisy")
    systems: dict[str, dict[str, Any]] = {}
    extras: dict[str, Any] = {}
    try:
        log(f"mode {mode.name}; work dir {workdir}")
        log("signature bound:")
        signature = sigbound.measure(CONSORTIUM_MEMBERS, mode.signature_s)
        log(f"  {signature['bound_tps']} tx/s ({signature['verify_per_s_all_threads']} verify/s)")
        disk = diskfloor.measure(workdir)
        log(f"durable-write floor: 4 KiB + fdatasync p50 {disk['fdatasync_4k_ms']['p50']} ms, LMDB synced commit "
            f"of {diskfloor.PUTS_PER_COMMIT} puts p50 {disk[f'lmdb_sync_commit_{diskfloor.PUTS_PER_COMMIT}_puts_ms']['p50']} ms")
        with ManagedProcesses() as procs:
            for name in args.system_list:
                entry, more = measure_system(name, mode, concurrency, install, procs, workdir)
                systems[name] = entry
                extras.update(more)
            leftovers = procs.running()
        if leftovers:
            raise BenchError(f"processes still running after their drivers stopped: {leftovers}")
    finally:
        failed = any(e["status"] == "failed" for e in systems.values())
        if args.keep_workdir or failed:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    versions = software_versions()
    for name in SYSTEM_NAMES:
        versions[name] = systems[name].get("version") if name in systems else None
    if versions["peerdb"] is None:
        versions["peerdb"] = make_driver("peerdb").version()
    result: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "mode": mode.name,
        "preload_blocks": args.preload_blocks,
        "started_at": started_at.isoformat(timespec="seconds"),
        "elapsed_s": None,
        "machine": machine,
        "versions": versions,
        "members": CONSORTIUM_MEMBERS,
        "signature": signature,
        "bound_tps": signature["bound_tps"],
        "disk_floor": disk,
        **headline(systems, extras),
        "load_shape": {
            "value_bytes": VALUE_BYTES,
            "concurrency": concurrency,
            "step_s": mode.step_s,
            "warmup_s": mode.warmup_s,
            "drain_s": mode.drain_s,
            "first_rate": mode.first_rate,
            "ramp_factor": mode.ramp_factor,
            "max_ramp_steps": mode.max_ramp_steps,
            "saturated_when": f"sustained < {SATURATION_FRACTION} x offered, an unacknowledged p99, "
            f"or > {MAX_ERROR_FRACTION:.0%} errors",
            "generator": "one separate process (python -m bench.loadgen), trio, open loop, "
            "a fresh process per step",
        },
        "definitions": " ".join((STATS_DEFINITIONS or "").split()),
        "how_measured": {name: e["how_measured"] for name, e in systems.items()},
        "systems": systems,
        "skipped": {n: e["reason"] for n, e in systems.items() if e["status"] == "skipped"},
        "failed": {n: e["reason"] for n, e in systems.items() if e["status"] == "failed"},
        "mode_settings": asdict(mode),
        "plot": None,
        "plot_note": None,
    }
    note = report.plot(result, png)
    if note is None:
        result["plot"] = str(png)
    else:
        result["plot_note"] = note
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    machine["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(result))
    print(f"\nJSON: {out}" + (f"\nplot: {png}" if note is None else f"\nno plot: {note}"))
    return EXIT_SOME_SYSTEM_FAILED if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
