"""PeerDB: the slot for the four-member consortium; to be wired by the lead once the daemon exists.

What the harness expects here (see ``bench/drivers.py`` for the protocols):

- ``PeerDBDriver.start`` starts four member daemons as real processes on 127.0.0.1 with the
  default production settings (TLS between members, LMDB synced), with fresh data dirs under
  ``workdir``, waits until they accept writes, and returns a JSON-able client spec
  (``{"kind": "peerdb", ...}``: API URLs, the client key seed, the namespace).
- ``make_client(spec, concurrency)`` builds, inside the load generator, a client whose
  ``submit`` sends one client-signed transaction (~150-byte value) through the public API and
  returns ``{"majority": t1, "unanimous_signed": t2}``, the ``trio.current_time()`` at which each
  level was reached (anchoring excluded: it is reported separately). ``prepare(count, ...)`` may
  pre-sign ``count`` transactions so that signing does not load the generator during the step.
- ``extra_measurements`` returns ``audit_verify_tps`` (``peerdb audit verify`` over an exported
  bundle), ``catchup_tps`` (a member wiped and restarted: transactions caught up per second) and
  ``bytes_per_tx`` (LMDB bytes per stored transaction), each a number or None.

Until then every method that would start or measure something raises NotImplementedError, which
``run.py`` reports as skipped (all PeerDB keys null in the JSON).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from bench.drivers import Client, ClientSpec
from bench.procs import ManagedProcesses

MEMBERS = 4
"""The consortium size the issue measures and ``bound_tps`` is computed for."""

NOT_WIRED = "wired by the lead"


class PeerDBDriver:
    name = "peerdb"
    levels = ("majority", "unanimous_signed")
    members = MEMBERS

    def __init__(self) -> None:
        self._pids: list[int] = []

    def ensure_available(self, install: bool) -> None:
        return None  # PeerDB is this repository; nothing to install

    def version(self) -> str | None:
        try:
            return importlib.metadata.version("peerdb")
        except importlib.metadata.PackageNotFoundError:
            return None

    def how_measured(self) -> dict[str, Any]:
        return {"members": MEMBERS, "status": f"driver not implemented yet ({NOT_WIRED})"}

    def start(self, procs: ManagedProcesses, workdir: Path) -> ClientSpec:
        raise NotImplementedError(NOT_WIRED)

    def stop(self, procs: ManagedProcesses) -> None:
        for pid in self._pids:
            procs.stop(pid)
        self._pids.clear()

    def extra_measurements(self, procs: ManagedProcesses, workdir: Path) -> dict[str, Any]:
        raise NotImplementedError(NOT_WIRED)


def make_client(spec: ClientSpec, concurrency: int) -> Client:
    raise NotImplementedError(NOT_WIRED)


DRIVER_CLASS = PeerDBDriver
