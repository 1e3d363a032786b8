"""A local consortium of real ``peerdb node run`` processes on 127.0.0.1.

Shared by the demo, the benchmark and the real-process tests, so that all three exercise
exactly what an operator runs: files written by ``consortium init``, one OS process per member,
TLS between them, LMDB on disk, the HTTP API in front. Every process is started in its own
process group and stopped by its PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from .setup_files import init_consortium

STOP_GRACE_S = 10.0
"""Seconds a node gets to shut down cleanly on SIGTERM before it is killed."""


def free_ports(n: int) -> list[int]:
    """n distinct currently-free TCP ports on 127.0.0.1 (the OS picks them)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


POLL_INTERVAL_S = 0.1
"""How often a condition on real processes is re-checked while waiting for it."""


def poll_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition on real processes: re-check it until it holds or the deadline passes
    (then TimeoutError naming what was awaited). The one place that polls with a sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class NodeProcess:
    name: str
    config: Path
    api: str
    token: str
    log_path: Path
    audit_token: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    metrics: str | None = None
    """``host:port`` of the node's metrics and health endpoints, when the consortium has them."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 30.0, *, auditor: bool = False) -> httpx.Client:
        """An HTTP client of the node's API with the application token (``auditor``: with the
        auditor token, which opens only the audit export)."""
        token = self.audit_token if auditor else self.token
        return httpx.Client(base_url=f"http://{self.api}", headers={"Authorization": f"Bearer {token}"},
                            timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalConsortium:
    directory: Path
    members: int = 4
    params: dict[str, int] = field(default_factory=dict)
    bitcoin_rpc: str | None = None
    sync: bool = True
    idle_block_s: int = 0
    """Seconds an idle chain rests between empty blocks (0: one every heartbeat)."""
    metrics: bool = False
    """Give every node a ``[metrics] listen`` address (Prometheus metrics, /healthz, /readyz)."""
    idle_timeout_s: float | None = None
    """``[net] idle_timeout_s`` of every node (None: the default): how soon a silent peer is down."""
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def write_files(self) -> None:
        names = [f"firm-{chr(ord('a') + i)}" for i in range(self.members)]
        ports = free_ports(3 * self.members)
        init_consortium(self.directory, "local", names, base_port=0, api_base_port=0,
                        bitcoin_rpc=self.bitcoin_rpc, params=self.params, overwrite=True, sync=self.sync,
                        ports=ports[:self.members], api_ports=ports[self.members:2 * self.members])
        for i, name in enumerate(names):
            config = self.directory / f"{name}.toml"
            metrics = f"127.0.0.1:{ports[2 * self.members + i]}" if self.metrics else None
            if metrics is not None:
                config.write_text(config.read_text() + f'\n[metrics]\nlisten = "{metrics}"\n')
            data = tomllib.loads(config.read_text())
            # A local consortium (demo, tests, benchmarks) shows liveness block by block: no resting.
            data["node"]["idle_block_s"] = self.idle_block_s
            if self.idle_timeout_s is not None:
                data["net"] = {"idle_timeout_s": self.idle_timeout_s}
            header = "".join(line + "\n" for line in config.read_text().splitlines() if line.startswith("#"))
            config.write_text(header + tomli_w.dumps(data))
            self.nodes[name] = NodeProcess(name, config, data["api"]["listen"], data["api"]["token"],
                                           self.directory / f"{name}.log", data["api"].get("audit_token"),
                                           metrics=metrics)

    def start(self, name: str, extra_args: tuple[str, ...] = (), *,
              launcher: Sequence[str] | None = None) -> NodeProcess:
        """Start ``name``'s node: ``peerdb node run --config ...``, or ``launcher`` followed by
        ``--config <file>`` and ``extra_args`` (a test's wrapper, e.g. in a network namespace)."""
        node = self.nodes[name]
        if node.running():
            return node
        command = list(launcher) if launcher is not None else [sys.executable, "-m", "cli", "node", "run"]
        log = open(node.log_path, "ab")
        node.proc = subprocess.Popen(
            [*command, "--config", str(node.config), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return node

    def start_all(self) -> None:
        for name in self.nodes:
            self.start(name)

    def wait_ready(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for name in names or list(self.nodes):
            node = self.nodes[name]
            while True:
                if not node.running():
                    raise RuntimeError(f"{name} exited during start-up:\n{node.log_tail()}")
                try:
                    with node.client(timeout=2) as c:
                        if c.get("/v1/status").status_code == 200:
                            break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not answer on {node.api} within {timeout} s:\n{node.log_tail()}")
                time.sleep(0.1)

    def status(self, name: str) -> dict[str, Any]:
        with self.nodes[name].client() as c:
            response = c.get("/v1/status")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        poll_until(predicate, timeout, what)

    def kill(self, name: str) -> None:
        """SIGKILL: a crash, not a shutdown."""
        node = self.nodes[name]
        if node.proc is not None and node.running():
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=STOP_GRACE_S)

    def stop(self, name: str) -> int | None:
        node = self.nodes[name]
        if node.proc is None:
            return None
        if node.running():
            os.kill(node.proc.pid, signal.SIGTERM)
            try:
                node.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.kill(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=STOP_GRACE_S)
        return node.proc.returncode

    def stop_all(self) -> None:
        for name in self.nodes:
            self.stop(name)

    def __enter__(self) -> "LocalConsortium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
