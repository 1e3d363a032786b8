"""The README's first command, run exactly as a user would: `scripts/demo`."""

from __future__ import annotations

import subprocess
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
