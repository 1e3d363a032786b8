"""Shared by the fault tests (hostile members, partitions): what the honest members say (status,
alerts, logs), the auditor's commands, a miner for the regtest node, and the figures the tests
report (scenario, members, transactions acknowledged and lost, time to detect and to recover).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peerdb.anchor.regtest import RegtestNode
from peerdb.client import NodeClient
from peerdb.localnet import LocalConsortium, NodeProcess, poll_until

ROOT = Path(__file__).resolve().parents[2]
MINE_EVERY_S = 1.0
"""Regtest makes no blocks by itself: the tests' miner makes one a second, so anchors confirm."""


def client(node: NodeProcess, timeout: float = 30.0) -> NodeClient:
    return NodeClient(f"http://{node.api}", node.token, timeout)


def status(net: LocalConsortium, name: str) -> dict[str, Any]:
    return net.status(name)


def alerts(net: LocalConsortium, name: str) -> list[dict[str, Any]]:
    """Active alerts and the recently cleared ones (a short incident may already be over)."""
    s = net.status(name)
    return [*s["alerts"], *s.get("alert_history", [])]


def has_alert(net: LocalConsortium, name: str, kind: str, *mentions: str) -> bool:
    return any(a["kind"] == kind and all(m in a["message"] for m in mentions) for a in alerts(net, name))


def wait_all(names: Iterable[str], predicate: Callable[[str], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate(name)`` held for every name (each at least once); returns when."""
    pending = set(names)

    def done() -> bool:
        pending.difference_update([n for n in list(pending) if predicate(n)])
        return not pending
    try:
        poll_until(done, timeout, f"{what} (still waiting for {', '.join(sorted(pending))})")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; still waiting for {sorted(pending)}") from None
    return time.monotonic()


class LogWatch:
    """The lines a node logged since :meth:`mark`."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.offset = 0
        self.mark()

    def mark(self) -> None:
        self.offset = self.node.log_path.stat().st_size if self.node.log_path.exists() else 0

    def text(self) -> str:
        with open(self.node.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def count(self, *needles: str) -> int:
        return sum(1 for line in self.text().splitlines() if all(n in line for n in needles))


def peerdb(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The ``peerdb`` command, as a separate process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERDB_")}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=180, env={**env, "PYTHONPATH": str(ROOT)})


def audit(node: NodeProcess, out: Path, bitcoin_rpc: str) -> tuple[int, dict[str, Any]]:
    """``peerdb audit export`` with the auditor token, then ``peerdb audit verify --json`` against
    the Bitcoin node: (verify's exit status, its JSON report)."""
    exported = peerdb("-c", str(node.config), "--json", "audit", "export", "--out", str(out), "--force")
    assert exported.returncode == 0, (node.name, exported.stdout, exported.stderr)
    verified = peerdb("--json", "audit", "verify", str(out), "--bitcoin-rpc", bitcoin_rpc)
    try:
        report: dict[str, Any] = json.loads(verified.stdout)
    except ValueError:
        raise AssertionError((node.name, verified.returncode, verified.stdout, verified.stderr)) from None
    return verified.returncode, report


class Miner(threading.Thread):
    """Mines a regtest block every MINE_EVERY_S until stopped."""

    def __init__(self, regtest: RegtestNode) -> None:
        super().__init__(name="miner", daemon=True)
        self.regtest = regtest
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(MINE_EVERY_S):
            self.regtest.mine(1)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=30)


@dataclass
class Figure:
    """One scenario's row in docs/faults.md."""

    scenario: str
    members: int
    acknowledged: int
    lost: int
    detect_s: float | None
    recover_s: float | None
    note: str = ""


def report_figures(figures: list[Figure]) -> None:
    """Print the figures (``pytest -s`` shows them; docs/faults.md quotes a run)."""
    for f in figures:
        print("FAULT-FIGURE " + json.dumps(asdict(f)))
