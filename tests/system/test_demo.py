"""The README's first command, run exactly as a user would: `scripts/demo`; and the demo started
from a script stops everything it started on SIGINT and SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    done = subprocess.run([str(ROOT / "scripts" / "demo"), "--workdir", str(tmp_path / "demo"), "--txs", "300"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    failure = [line for line in out.splitlines() if "FAILED" in line]
    assert done.returncode == 0, (failure, out[-3000:])
    assert "PeerDB demo: OK" in out
    assert "all 300 transactions unanimous-signed" in out
    assert "VERIFIED (300 transactions" in out
    summary = out[out.index("PeerDB demo summary"):]
    for member in ("firm-a", "firm-b", "firm-c", "firm-d"):
        assert f"{member}: " in summary  # signatures per member
    assert (tmp_path / "demo" / "audit.bundle").stat().st_size > 0
    assert "stopped everything the demo started" in out
    # Nothing the demo started is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def _leftovers(workdir: Path) -> str:
    """Processes still running with the demo's directory on their command line (the regtest
    node's datadir and every member's config are under it)."""
    found = subprocess.run(["pgrep", "-a", "-f", str(workdir)], capture_output=True, text=True)
    return found.stdout.strip()


def _start_demo_from_a_script(workdir: Path, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """`peerdb demo` as a shell script's background job starts it: SIGINT ignored (inherited),
    no terminal. Its output lines arrive on the queue."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "demo", "--members", "2", "--txs", "20", "--workdir", str(workdir), *args],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put("")  # end of output
    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _wait_for_line(lines: queue.Queue[str], fragment: str, seen: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        seen.append(line)
        if fragment in line:
            return
        assert line, f"the demo ended before {fragment!r}:\n{''.join(seen)[-3000:]}"


def _rest(lines: queue.Queue[str], seen: list[str]) -> str:
    while (line := lines.get(timeout=120)) != "":
        seen.append(line)
    return "".join(seen)


@pytest.mark.parametrize("signum, after, code", [
    (signal.SIGINT, "Press Ctrl-C", 0),
    (signal.SIGTERM, "3/7", 128 + signal.SIGTERM),
], ids=["sigint-while-kept-running", "sigterm-mid-demo"])
def test_the_demo_started_from_a_script_stops_everything_on_a_signal(tmp_path: Path, signum: signal.Signals,
                                                                      after: str, code: int) -> None:
    workdir = tmp_path / "demo"
    proc, lines = _start_demo_from_a_script(workdir, "--keep-running")
    seen: list[str] = []
    try:
        _wait_for_line(lines, after, seen)
        assert _leftovers(workdir)  # the regtest node and the members are up
        proc.send_signal(signum)
        returncode = proc.wait(timeout=180)
        out = _rest(lines, seen)
        assert returncode == code, out[-3000:]
        assert "stopped everything the demo started" in out, out[-3000:]
        assert _leftovers(workdir) == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for line in _leftovers(workdir).splitlines():  # only if the demo failed to: its own children
            os.kill(int(line.split()[0]), signal.SIGKILL)
