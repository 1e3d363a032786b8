"""etcd: Debian's ``etcd-server``, three members on 127.0.0.1, fsync on, written to over HTTP/JSON.

The cluster runs with etcd's defaults except addresses and logging: in particular no
``--unsafe-no-fsync``, so every acknowledged put is fsynced by a majority (etcd's WAL). Clients
use the gRPC gateway that every etcd 3.4 member serves on its client port (``POST /v3/kv/put``,
base64 key and value) over keep-alive HTTP/1.1 connections (``bench/http1.py``: httpx cost the
generator more CPU per request than etcd spent), spread round-robin over the three members as
etcd's own client balancer does. The gateway costs etcd a JSON->gRPC hop inside
the member, which a native gRPC client would not pay: the figures are a fair comparison with
PeerDB's HTTP/JSON API, and a slight underestimate of etcd with its Go client.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from bench import http1
from bench.drivers import Client, ClientSpec
from bench.errors import BenchError, SubmitError, SystemSkipped
from bench.pool import Pool
from bench.procs import ManagedProcesses, dead_child, free_ports, wait_until

MEMBERS = 3
"""The usual production etcd cluster size, and the one the issue asks for."""

START_TIMEOUT_S = 30.0
"""Three members on a loaded two-core machine elect a leader in a few seconds; 30 is generous."""

INSTALL_TIMEOUT_S = 600.0
"""apt-get update plus install of etcd-server and etcd-client: usually well under a minute."""

REQUEST_TIMEOUT_S = 10.0
"""Per-put client timeout; far beyond any healthy commit, so it only cuts off a stuck request."""

HEALTH_TIMEOUT_S = 1.0
"""Per-probe timeout while waiting for the cluster to elect a leader."""

APT_PACKAGES = ("etcd-server", "etcd-client")

PUT_PATH = "/v3/kv/put"
"""etcd 3.4's gateway serves the KV API under /v3/ (and the older /v3beta/); 3.3 had only /v3beta/."""


class EtcdDriver:
    name = "etcd"
    levels = ("committed",)
    members = MEMBERS

    def __init__(self) -> None:
        self._pids: list[int] = []

    def ensure_available(self, install: bool) -> None:
        if shutil.which("etcd") is not None:
            return
        if not install:
            raise SystemSkipped("etcd: binary not found and installing is off in this mode")
        _apt_install(APT_PACKAGES)
        if shutil.which("etcd") is None:
            raise SystemSkipped("etcd: still no 'etcd' binary after installing " + " ".join(APT_PACKAGES))

    def version(self) -> str | None:
        exe = shutil.which("etcd")
        if exe is None:
            return None
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r"etcd Version:\s*(\S+)", out)
        return match.group(1) if match else None

    def how_measured(self) -> dict[str, Any]:
        return {
            "members": MEMBERS,
            "binary": shutil.which("etcd"),
            "durability": "etcd defaults: WAL fsync on every commit (no --unsafe-no-fsync)",
            "transport": "plain HTTP between members on 127.0.0.1 (no TLS)",
            "client": "keep-alive HTTP/1.1 (bench/http1.py) to the gRPC gateway, POST /v3/kv/put, "
            "base64 key/value, connections round-robin over members",
            "ack": "HTTP 200 from the member: the put is committed by a majority and applied",
        }

    def start(self, procs: ManagedProcesses, workdir: Path) -> ClientSpec:
        exe = shutil.which("etcd")
        if exe is None:
            raise SystemSkipped("etcd: binary not found")
        ports = free_ports(2 * MEMBERS)
        client_urls = [f"http://127.0.0.1:{ports[i]}" for i in range(MEMBERS)]
        peer_urls = [f"http://127.0.0.1:{ports[MEMBERS + i]}" for i in range(MEMBERS)]
        initial = ",".join(f"m{i}={peer_urls[i]}" for i in range(MEMBERS))
        token = f"bench-{os.getpid()}-{ports[0]}"
        started = []
        for i in range(MEMBERS):
            data_dir = workdir / f"etcd-m{i}"
            data_dir.mkdir(parents=True, exist_ok=False)
            log = workdir / f"etcd-m{i}.log"
            argv = [
                exe,
                f"--name=m{i}",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_urls[i]}",
                f"--advertise-client-urls={client_urls[i]}",
                f"--listen-peer-urls={peer_urls[i]}",
                f"--initial-advertise-peer-urls={peer_urls[i]}",
                f"--initial-cluster={initial}",
                f"--initial-cluster-token={token}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-level=warn",
            ]
            proc = procs.spawn(f"etcd-m{i}", argv, log_path=log)
            self._pids.append(proc.pid)
            started.append((f"etcd-m{i}", proc, log))
        wait_until(
            lambda: all(_healthy(url) for url in client_urls),
            timeout_s=START_TIMEOUT_S,
            what="etcd cluster health",
            alive=lambda: dead_child(started),
        )
        return {"kind": "etcd", "endpoints": client_urls}

    def stop(self, procs: ManagedProcesses) -> None:
        for pid in self._pids:
            procs.stop(pid)
        self._pids.clear()

    def extra_measurements(self, procs: ManagedProcesses, workdir: Path) -> dict[str, Any]:
        return {}


def _healthy(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/health", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.json().get("health") == "true"


def _apt_install(packages: tuple[str, ...]) -> None:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (sudo + ["apt-get", "update", "-qq"], sudo + ["apt-get", "install", "-y", "-qq", *packages]):
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SystemSkipped(f"etcd: could not run {' '.join(argv)}: {e}") from None
        if done.returncode != 0:
            raise SystemSkipped(f"etcd: {' '.join(argv)} failed: {done.stderr.strip()[-500:]}")


class EtcdClient:
    """Puts through the gateway over ``concurrency`` keep-alive connections, spread round-robin
    over the members and opened before the clock starts."""

    def __init__(self, endpoints: list[str], concurrency: int) -> None:
        if not endpoints:
            raise BenchError("etcd client spec: field 'endpoints' must list at least one URL")
        hosts = [urlsplit(e) for e in endpoints]
        self._pool = Pool(
            [http1.Connection(u.hostname or "127.0.0.1", u.port or 2379) for u in (hosts * concurrency)[:concurrency]]
        )

    async def prepare(self, count: int, value_bytes: int) -> None:
        for conn in self._pool.items:
            await conn.connect()

    async def submit(self, seq: int, key: bytes, value: bytes) -> Mapping[str, float]:
        body = json.dumps({"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()})
        async with self._pool.borrow() as conn:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    status, answer = await conn.request("POST", PUT_PATH, body.encode(), "application/json")
            except trio.TooSlowError:
                await conn.close()
                raise SubmitError(f"no answer within {REQUEST_TIMEOUT_S} s") from None
            except http1.HTTPError as e:
                raise SubmitError(str(e)) from None
        if status != 200:
            raise SubmitError(f"HTTP {status}: {answer[:80]!r}")
        return {"committed": trio.current_time()}

    async def aclose(self) -> None:
        for conn in self._pool.items:
            await conn.close()


def make_client(spec: ClientSpec, concurrency: int) -> Client:
    return EtcdClient([str(e) for e in spec["endpoints"]], concurrency)


DRIVER_CLASS = EtcdDriver
