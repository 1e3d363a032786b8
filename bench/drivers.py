"""The two halves every measured system provides, and where to find them by name.

A system lives in one module (``bench/etcd_driver.py`` ...) holding both halves:

- a ``Driver``, used by the harness process: installs or finds the system, starts a cluster of
  real processes on 127.0.0.1, says how to reach it (a JSON-able *client spec*), stops it by PID;
- a ``make_client(spec, concurrency)`` function, called inside the load-generator process, which
  builds a ``Client`` from that spec.

The split exists because the load generator runs in its own process (so its CPU use neither
steals from nor hides behind the harness), and only plain JSON crosses the process boundary.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from bench.procs import ManagedProcesses

ClientSpec = dict[str, Any]
"""JSON-able description of how to reach a running cluster; ``kind`` names the system module."""


class Client(Protocol):
    """One load generator's connection(s) to a cluster; shared by all its concurrent workers."""

    async def prepare(self, count: int, value_bytes: int) -> None:
        """Called once before the clock starts: open connections, pre-sign payloads..."""

    async def submit(self, seq: int, key: bytes, value: bytes) -> Mapping[str, float]:
        """Write ``key=value``; return ``trio.current_time()`` at each acknowledgement level
        reached (the driver's ``levels``). Raise ``bench.errors.SubmitError`` if refused."""

    async def aclose(self) -> None:
        """Close connections; called once after the last submit returned or was cancelled."""


class Driver(Protocol):
    """The harness side of a system: a cluster of real processes, started and stopped by PID."""

    name: str
    """Key prefix in the JSON (``etcd`` -> ``etcd_tps``) and module name ``bench.<name>_driver``."""

    levels: tuple[str, ...]
    """Acknowledgement levels its client reports, weakest first; the last one decides when a
    load step counts as saturated."""

    members: int
    """Cluster size started by ``start``."""

    def ensure_available(self, install: bool) -> None:
        """Find the system's binaries or libraries, installing them when ``install`` is true;
        raise ``SystemSkipped`` with the reason when it cannot be had."""

    def version(self) -> str | None:
        """The version that will be (or was) measured, or None when unknown."""

    def how_measured(self) -> dict[str, Any]:
        """Settings that matter for comparing numbers: durability, transport, client path."""

    def start(self, procs: ManagedProcesses, workdir: Path) -> ClientSpec:
        """Start a fresh cluster (new data dirs under ``workdir``), wait until it accepts writes,
        return the client spec. Raise ``BenchError`` if it does not come up in bounded time."""

    def stop(self, procs: ManagedProcesses) -> None:
        """Stop the cluster's processes by PID (the harness also stops leftovers in finally)."""

    def extra_measurements(self, procs: ManagedProcesses, workdir: Path) -> dict[str, Any]:
        """System-specific figures beyond the load steps (PeerDB: audit and catch-up rates,
        bytes per transaction). Others return {}."""


SYSTEM_NAMES = ("peerdb", "peerdb_stream", "etcd", "pysyncobj")
"""Every system the harness knows, in the order it measures them."""


def driver_module_name(system: str) -> str:
    if system not in SYSTEM_NAMES:
        raise ValueError(f"system: unknown {system!r}; known: {', '.join(SYSTEM_NAMES)}")
    return f"bench.{system}_driver"


def make_driver(system: str) -> Driver:
    """The driver for ``system``; imports its module lazily so a missing optional library only
    affects that system."""
    module = importlib.import_module(driver_module_name(system))
    driver: Driver = module.DRIVER_CLASS()
    return driver


def make_client(spec: ClientSpec, concurrency: int) -> Client:
    """Inside the load generator: the client for the cluster described by ``spec``."""
    kind = spec.get("kind")
    if not isinstance(kind, str):
        raise ValueError("client spec: field 'kind' must be a system name")
    module = importlib.import_module(driver_module_name(kind))
    client: Client = module.make_client(spec, concurrency)
    return client
