"""What the numbers were measured on: machine, filesystem and software versions.

Benchmark figures without this are not comparable across runs: two "cores" on a shared VM, or a
data directory on tmpfs (where fsync costs nothing), change every result.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any


def _first_line_with(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else line.strip()
    except OSError:
        return None
    return None


def _memory_bytes() -> int | None:
    total = _first_line_with("/proc/meminfo", "MemTotal")
    if total is None:
        return None
    parts = total.split()
    return int(parts[0]) * 1024 if parts and parts[0].isdigit() else None


def _os_name() -> str | None:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None


def filesystem_of(path: Path) -> dict[str, str | None]:
    """Mount point and type holding ``path`` (longest matching mount in /proc/mounts)."""
    target = str(path.resolve())
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                device, mount, fstype = fields[0], fields[1], fields[2]
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) > len(best[1])):
                    best = (device, mount, fstype)
    except OSError:
        return {"mount": None, "type": None, "device": None}
    if best is None:
        return {"mount": None, "type": None, "device": None}
    return {"device": best[0], "mount": best[1], "type": best[2]}


def describe_machine(workdir: Path) -> dict[str, Any]:
    """Call it before measuring: the load average says whether something else was running."""
    return {
        "cpu_model": _first_line_with("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_bytes": _memory_bytes(),
        "kernel": platform.release(),
        "os": _os_name(),
        "hypervisor": _first_line_with("/proc/cpuinfo", "flags") is not None
        and "hypervisor" in (_first_line_with("/proc/cpuinfo", "flags") or "").split(),
        "data_filesystem": filesystem_of(workdir),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, str | None]:
    """Versions of the harness's own stack; the systems' versions come from their drivers."""
    return {
        "python": platform.python_version(),
        "pynacl": package_version("pynacl"),
        "trio": package_version("trio"),
        "httpx": package_version("httpx"),
        "matplotlib": package_version("matplotlib"),
    }
