"""pysyncobj: three nodes (PyPI ``pysyncobj``), each its own process with a replicated dict.

How it is measured, and why: pysyncobj is a library that lives inside an application, so each
node process (``bench/pysyncobj_node.py``) hosts the Raft node plus a small TCP front that the
load generator's connections (spread evenly over the three nodes) send framed puts to. A put is
acknowledged when pysyncobj's callback fires on the receiving node: committed by a majority and
applied there. The front is one extra hop and some Python per request, as PeerDB's HTTP API is.

Durability: nodes use pysyncobj's file journal (its persistent mode), but pysyncobj never
fsyncs it per commit (the journal is an mmap, flushed only at shutdown) and has no option to; so
unlike etcd and PeerDB, an acknowledged write can be lost if every node loses power. The JSON
says so next to the numbers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from bench import framing
from bench.drivers import Client, ClientSpec
from bench.errors import BenchError, SubmitError, SystemSkipped
from bench.pool import Pool
from bench.procs import ManagedProcesses, dead_child, free_ports, wait_until

MEMBERS = 3
"""Same cluster size as etcd, so the Raft systems are compared like for like."""

START_TIMEOUT_S = 30.0
"""pysyncobj elects a leader within its 0.4-1.4 s election timeouts; 30 covers a loaded machine."""

INSTALL_TIMEOUT_S = 300.0
"""pip install of one pure-Python package."""

STATUS_TIMEOUT_S = 1.0
"""Per-probe timeout on a node's front while waiting for the cluster to elect a leader."""

REQUEST_TIMEOUT_S = 10.0
"""Per-put client timeout; far beyond any healthy commit, so it only cuts off a stuck request."""

PIP_REQUIREMENT = "pysyncobj>=0.3.12"


class PySyncObjDriver:
    name = "pysyncobj"
    levels = ("committed",)
    members = MEMBERS

    def __init__(self) -> None:
        self._pids: list[int] = []

    def ensure_available(self, install: bool) -> None:
        if _importable():
            return
        if not install:
            raise SystemSkipped("pysyncobj: not installed and installing is off in this mode")
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PIP_REQUIREMENT]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SystemSkipped(f"pysyncobj: pip install failed to run: {e}") from None
        if done.returncode != 0 or not _importable():
            raise SystemSkipped(f"pysyncobj: pip install failed: {done.stderr.strip()[-500:]}")

    def version(self) -> str | None:
        try:
            return importlib.metadata.version("pysyncobj")
        except importlib.metadata.PackageNotFoundError:
            return None

    def how_measured(self) -> dict[str, Any]:
        return {
            "members": MEMBERS,
            "durability": "file journal (journalFile), not fsynced per commit: pysyncobj has no such option",
            "transport": "pysyncobj's own TCP between nodes on 127.0.0.1 (no encryption)",
            "client": "a length-prefixed TCP front in each node process (bench/pysyncobj_node.py); "
            "load generator connections spread evenly over the three nodes",
            "ack": "pysyncobj callback on the receiving node: committed by a majority and applied there",
            "settings": "SyncObjConf defaults apart from journalFile: autoTickPeriod 0.05 s and "
            "appendEntriesPeriod 0.1 s batch commands per tick, which sets a latency floor of tens of ms",
        }

    def start(self, procs: ManagedProcesses, workdir: Path) -> ClientSpec:
        ports = free_ports(2 * MEMBERS)
        raft = [f"127.0.0.1:{ports[i]}" for i in range(MEMBERS)]
        fronts = [ports[MEMBERS + i] for i in range(MEMBERS)]
        repo_root = Path(__file__).resolve().parent.parent
        started = []
        for i in range(MEMBERS):
            node_dir = workdir / f"pysyncobj-n{i}"
            node_dir.mkdir(parents=True, exist_ok=False)
            log = workdir / f"pysyncobj-n{i}.log"
            argv = [sys.executable, "-m", "bench.pysyncobj_node", "--self", raft[i]]
            for j in range(MEMBERS):
                if j != i:
                    argv += ["--partner", raft[j]]
            argv += ["--front-port", str(fronts[i]), "--journal", str(node_dir / "journal")]
            proc = procs.spawn(f"pysyncobj-n{i}", argv, log_path=log, cwd=repo_root)
            self._pids.append(proc.pid)
            started.append((f"pysyncobj-n{i}", proc, log))
        wait_until(
            lambda: all(_node_ready(port) for port in fronts),
            timeout_s=START_TIMEOUT_S,
            what="pysyncobj cluster leader",
            alive=lambda: dead_child(started),
        )
        return {"kind": "pysyncobj", "fronts": [["127.0.0.1", p] for p in fronts]}

    def stop(self, procs: ManagedProcesses) -> None:
        for pid in self._pids:
            procs.stop(pid)
        self._pids.clear()

    def extra_measurements(self, procs: ManagedProcesses, workdir: Path) -> dict[str, Any]:
        return {}


def _importable() -> bool:
    importlib.invalidate_caches()
    try:
        importlib.import_module("pysyncobj")
    except ImportError:
        return False
    return True


def _node_ready(port: int) -> bool:
    """Blocking status probe from the harness: does this node know a leader and is it synced?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=STATUS_TIMEOUT_S) as s:
            s.sendall(framing.encode(framing.STATUS))
            data = b""
            # Bounded: the reply is one small frame, and each recv waits at most the timeout.
            for _ in range(64):
                chunk = s.recv(framing.RECEIVE_CHUNK_BYTES)
                if not chunk:
                    break
                data += chunk
                if len(data) >= framing.HEADER.size:
                    kind, length = framing.HEADER.unpack_from(data)
                    if len(data) >= framing.HEADER.size + length:
                        status = json.loads(data[framing.HEADER.size : framing.HEADER.size + length])
                        return kind == framing.OK and status["leader"] is not None and bool(status["ready"])
    except (OSError, ValueError, KeyError):
        return False
    return False


class _Connection:
    """One client connection to one node's front, reopened lazily after a failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.reader: framing.FrameReader | None = None

    async def connect(self) -> None:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.reader = framing.FrameReader(self.stream)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.connect()
        if self.stream is None or self.reader is None:
            raise framing.FrameError("connection: not open")
        await self.stream.send_all(framing.encode_put(key, value))
        frame = await self.reader.read()
        if frame is None:
            raise framing.FrameError("front: closed the connection before answering")
        kind, payload = frame
        if kind != framing.OK:
            raise SubmitError(payload.decode("utf-8", "replace"))

    async def close(self) -> None:
        stream, self.stream, self.reader = self.stream, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


class PySyncObjClient:
    """``concurrency`` connections, spread round-robin over the nodes, opened before the clock
    starts and lent out one per request."""

    def __init__(self, fronts: list[tuple[str, int]], concurrency: int) -> None:
        if not fronts:
            raise BenchError("pysyncobj client spec: field 'fronts' must list at least one node")
        self._pool = Pool([_Connection(*fronts[i % len(fronts)]) for i in range(concurrency)])

    async def prepare(self, count: int, value_bytes: int) -> None:
        for conn in self._pool.items:
            await conn.connect()

    async def submit(self, seq: int, key: bytes, value: bytes) -> Mapping[str, float]:
        async with self._pool.borrow() as conn:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await conn.put(key, value)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, framing.FrameError) as e:
                await conn.close()
                raise SubmitError(f"{type(e).__name__}: {e}") from None
        return {"committed": trio.current_time()}

    async def aclose(self) -> None:
        for conn in self._pool.items:
            await conn.close()


def make_client(spec: ClientSpec, concurrency: int) -> Client:
    return PySyncObjClient([(str(h), int(p)) for h, p in spec["fronts"]], concurrency)


DRIVER_CLASS = PySyncObjDriver
