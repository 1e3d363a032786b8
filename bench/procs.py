"""Every process the harness starts: each in its own session, stopped by PID on every exit path.

A benchmark that leaves an etcd member running skews the next run and holds its ports, so the
harness owns one ``ManagedProcesses`` for its whole life and stops everything in ``finally``.
Each child leads its own process group (``start_new_session``), so stopping it also stops
anything it forked, and nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from bench.errors import BenchError

STOP_GRACE_S = 5.0
"""How long a child may take to exit after SIGTERM before it gets SIGKILL. etcd and the pysyncobj
nodes exit in well under a second; five leaves room for a loaded two-core machine."""

KILL_WAIT_S = 5.0
"""How long to wait for the kernel to reap a SIGKILLed child before giving up on it."""

LOG_TAIL_BYTES = 2000
"""How much of a failed child's log goes into the error message: enough for the last few lines."""


class ManagedProcesses:
    """The children of one harness run, by PID; a context manager that stops them all on exit."""

    def __init__(self) -> None:
        self._children: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}

    def __enter__(self) -> ManagedProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; stdout+stderr go to ``log_path`` unless ``pipes``."""
        log: IO[bytes] | None = None
        if log_path is not None and not pipes:
            log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                start_new_session=True,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else (log or subprocess.DEVNULL),
                stderr=subprocess.PIPE if pipes else (log or subprocess.DEVNULL),
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own descriptor
        self._children[proc.pid] = (name, proc)
        return proc

    def running(self) -> list[tuple[int, str]]:
        """(PID, name) of children that have not exited yet."""
        return [(pid, name) for pid, (name, p) in self._children.items() if exit_code(p) is None]

    def stop(self, pid: int) -> None:
        """Stop one child and its process group: SIGTERM, then SIGKILL after ``STOP_GRACE_S``.

        The group is signalled only while its leader is not yet reaped (alive or a zombie), so
        its id cannot have been reused by anyone else's process.
        """
        entry = self._children.pop(pid, None)
        if entry is None:
            return
        _name, proc = entry
        if proc.returncode is None:
            _signal_group(pid, signal.SIGTERM)
            if not _wait_exit(proc, STOP_GRACE_S):
                _signal_group(pid, signal.SIGKILL)
                _wait_exit(proc, KILL_WAIT_S)
            # The leader is now a zombie at most: kill helpers it forked, then reap it.
            _signal_group(pid, signal.SIGKILL)
            try:
                proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass  # unkillable (D state); nothing more a harness can do
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        """Stop every child still known, newest first (load generators before the clusters)."""
        for pid in reversed(list(self._children)):
            self.stop(pid)


def exit_code(proc: subprocess.Popen[bytes]) -> int | None:
    """The child's exit status, or None while it runs; never reaps it (see ``stop``)."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll()  # already reaped elsewhere
    return None if info is None else info.si_status


EXIT_POLL_S = 0.05
"""Polling period while waiting for a signalled child to exit."""


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child to exit, without reaping it."""
    deadline = time.monotonic() + timeout_s
    while exit_code(proc) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(EXIT_POLL_S)
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is gone
    except PermissionError:
        pass  # not ours (cannot happen while the leader is unreaped; kept for safety)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets stay open until every port is picked, so the list has no duplicates; another
    program could still take one before our child binds it, in which case the cluster fails its
    readiness check with a clear error rather than talking to a stranger.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


POLL_INTERVAL_S = 0.1
"""Readiness polling period: short next to the seconds a cluster takes to elect a leader."""


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    alive: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll ``ready`` until it is true; raise ``BenchError`` after ``timeout_s`` or as soon as
    ``alive`` returns a reason (a child died), so a dead cluster fails fast with its cause."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        died = alive()
        if died is not None:
            raise BenchError(f"{what}: {died}")
        time.sleep(POLL_INTERVAL_S)
    raise BenchError(f"{what}: not ready within {timeout_s:.0f} s")


def log_tail(path: Path) -> str:
    """The last ``LOG_TAIL_BYTES`` of a child's log, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log at {path}: {e})"


def dead_child(procs: Sequence[tuple[str, subprocess.Popen[bytes], Path]]) -> str | None:
    """A description of the first child in ``procs`` that has exited, with its log tail."""
    for name, proc, log in procs:
        code = exit_code(proc)
        if code is not None:
            return f"{name} (pid {proc.pid}) exited with {code}; log tail:\n{log_tail(log)}"
    return None
