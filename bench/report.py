"""From load steps to the headline figures, the printed table and the latency plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LIGHT = "light"
AT_80 = "at_80pct_peak"


def peak_tps(steps: Sequence[Mapping[str, Any]], level: str) -> float | None:
    """Highest sustained throughput at ``level`` over all steps (None if no step ran)."""
    rates = [s["levels"][level]["sustained_tps"] for s in steps if level in s.get("levels", {})]
    return round(max(rates), 1) if rates else None


def latency_point(step: Mapping[str, Any] | None, level: str) -> dict[str, Any] | None:
    """The figures of one step at one level that the headline latency keys carry."""
    if step is None or level not in step.get("levels", {}):
        return None
    lv = step["levels"][level]
    return {
        "offered_tps": round(step["offered_tps"], 1),
        "sustained_tps": round(lv["sustained_tps"], 1),
        "p50": lv["p50_ms"],
        "p99": lv["p99_ms"],
        "unacked": lv["unacked_in_window"],
        "errors": step["error_count"],
    }


def step_by_role(steps: Sequence[Mapping[str, Any]], role: str) -> Mapping[str, Any] | None:
    for s in steps:
        if s.get("role") == role:
            return s
    return None


def latency_summary(steps: Sequence[Mapping[str, Any]], level: str) -> dict[str, Any] | None:
    """``{"light": {...}, "at_80pct_peak": {...}}`` for one level, or None if nothing ran."""
    if not steps:
        return None
    return {
        LIGHT: latency_point(step_by_role(steps, LIGHT), level),
        AT_80: latency_point(step_by_role(steps, AT_80), level),
    }


def stage_breakdown(before: Mapping[str, Mapping[int, int]],
                    after: Mapping[str, Mapping[int, int]]) -> dict[str, dict[str, Any]]:
    """Per block-cycle stage, ``count``, ``p50_ms`` and ``p99_ms`` of the observations made
    between two trace snapshots (summed over the members); stages not seen are left out."""
    from peerdb.node.trace import difference, summarise
    out = {}
    for stage, counts in difference(after, before).items():
        if counts:
            out[stage] = summarise(counts)
    return out


def stages_table(stages: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """The stage breakdown of one step as printed lines (``stage  count  p50  p99``)."""
    if not stages:
        return []
    lines = [f"  {'stage':<24} {'count':>8} {'p50 ms':>9} {'p99 ms':>9}"]
    for stage, row in stages.items():
        lines.append(f"  {stage:<24} {row['count']:>8} {_fmt(row['p50_ms'], 2):>9} {_fmt(row['p99_ms'], 2):>9}")
    return lines


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _disk_line(disk: Mapping[str, Any] | None) -> str:
    if not disk:
        return "durable-write floor: not measured"
    commits = next((v for k, v in disk.items() if k.startswith("lmdb_sync_commit")), {})
    return (f"durable-write floor (data directory's disk): 4 KiB + fdatasync p50/p99 "
            f"{disk['fdatasync_4k_ms']['p50']} / {disk['fdatasync_4k_ms']['p99']} ms; LMDB synced commit "
            f"p50/p99 {commits.get('p50')} / {commits.get('p99')} ms")


def table(result: Mapping[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    sig = result.get("signature") or {}
    machine = result.get("machine") or {}
    lines = [
        f"machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, "
        f"load average {machine.get('load_average_1m_at_start')} at start; mode {result.get('mode')}",
        f"signature bound: {_fmt(result.get('bound_tps'))} tx/s for {sig.get('members', '?')} members "
        f"(Ed25519 verify/s: 1 thread {_fmt(sig.get('verify_per_s_1_thread'))}, "
        f"{sig.get('cores', '?')} threads {_fmt(sig.get('verify_per_s_all_threads'))}, "
        f"{sig.get('cores', '?')} processes {_fmt(sig.get('verify_per_s_all_processes'))})",
        _disk_line(result.get("disk_floor")),
        f"load average at end: {machine.get('load_average_1m_at_end')}",
        "",
    ]
    header = ("system", "level", "peak tx/s", "light p50/p99 ms", "80% peak p50/p99 ms", "80% load")
    rows: list[tuple[str, ...]] = [header]
    for system, data in result.get("systems", {}).items():
        if data.get("status") != "measured":
            rows.append((system, "-", data.get("status", "?"), data.get("reason", "")[:60], "", ""))
            continue
        for level in data["levels"]:
            steps = data["steps"]
            light = latency_point(step_by_role(steps, LIGHT), level) or {}
            at80 = latency_point(step_by_role(steps, AT_80), level) or {}
            rows.append(
                (
                    system,
                    level,
                    _fmt(peak_tps(steps, level)),
                    f"{_fmt(light.get('p50'))} / {_fmt(light.get('p99'))}",
                    f"{_fmt(at80.get('p50'))} / {_fmt(at80.get('p99'))}",
                    _fmt(at80.get("offered_tps"), 0),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    for key in ("audit_verify_tps", "catchup_tps", "bytes_per_tx"):
        lines.append(f"{key}: {_fmt(result.get(key))}")
    for role, stages in (result.get("peerdb_stages_ms") or {}).items():
        if stages:
            lines.append(f"peerdb block-cycle stages, {role} step (all members):")
            lines.extend(stages_table(stages))
    return "\n".join(lines)


def plot(result: Mapping[str, Any], path: Path) -> str | None:
    """Latency (p50 solid, p99 dashed) against offered load, one colour per system and level.

    Returns None on success, or why no plot was drawn (matplotlib missing, nothing measured).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib unavailable: {e}"
    series = []
    for system, data in result.get("systems", {}).items():
        if data.get("status") != "measured":
            continue
        for level in data["levels"]:
            points = sorted(
                (s["offered_tps"], s["levels"][level]["p50_ms"], s["levels"][level]["p99_ms"])
                for s in data["steps"]
                if level in s["levels"]
            )
            label = system if len(data["levels"]) == 1 else f"{system} {level}"
            series.append((label, points))
    if not series:
        return "no system measured"
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, points) in enumerate(series):
        colour = colours[k % len(colours)]
        p50 = [(x, y) for x, y, _ in points if y is not None]
        p99 = [(x, y) for x, _, y in points if y is not None]
        if p50:
            ax.plot(*zip(*p50), marker="o", color=colour, label=f"{label} p50")
        if p99:
            ax.plot(*zip(*p99), marker="x", linestyle="--", color=colour, label=f"{label} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (writes/s, open loop)")
    ax.set_ylabel("latency submit -> ack (ms)")
    machine = result.get("machine", {})
    ax.set_title(
        f"Latency vs offered load ({result.get('mode')}; {machine.get('cores')} cores, "
        f"{result.get('load_shape', {}).get('value_bytes')}-byte values)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "saturated points (a percentile not acknowledged) are omitted", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
