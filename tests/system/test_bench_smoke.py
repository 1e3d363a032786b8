"""The benchmark harness: its smallest run writes a well-formed JSON, and its measuring parts
compute what they claim. Speed is measured by ``bench/run.py``, never asserted here."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from peerdb.localnet import poll_until
import trio
import trio.testing

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # ``bench`` is a directory of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench import http1  # noqa: E402
from bench.errors import SubmitError  # noqa: E402
from bench.loadgen import LoadSpec, run_open_loop  # noqa: E402
from bench.procs import ManagedProcesses  # noqa: E402
from bench.run import is_saturated  # noqa: E402
from bench.stats import level_stats, percentile  # noqa: E402

SMOKE_TIMEOUT_S = 150.0
"""The smoke run takes about ten seconds; this only stops a hung harness."""

TERM_GRACE_S = 20.0
"""After SIGTERM the harness stops its clusters (a few seconds) before it is killed outright."""

GRANDCHILD_EXIT_S = 10.0
"""A SIGKILLed process disappears in milliseconds; this only bounds the wait."""

REQUIRED_KEYS = {
    "bound_tps",
    "disk_floor",
    "peerdb_tps_majority",
    "peerdb_tps_unanimous_signed",
    "peerdb_latency_ms",
    "peerdb_stream_tps_majority",
    "peerdb_stream_tps_unanimous_signed",
    "peerdb_stream_latency_ms",
    "peerdb_stages_ms",
    "etcd_tps",
    "etcd_latency_ms",
    "pysyncobj_tps",
    "pysyncobj_latency_ms",
    "audit_verify_tps",
    "catchup_tps",
    "bytes_per_tx",
    "machine",
    "versions",
    "signature",
    "systems",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_latency_summary(name: str, summary: Any) -> None:
    if summary is None:
        return
    assert set(summary) == {"light", "at_80pct_peak"}, name
    for point in summary.values():
        if point is None:
            continue
        assert _is_number(point["offered_tps"]) and point["offered_tps"] > 0, name
        for pct in ("p50", "p99"):
            assert point[pct] is None or (_is_number(point[pct]) and point[pct] >= 0), (name, pct)


def _run_smoke(out: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(out)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness then stops every cluster it started
        try:
            proc.communicate(timeout=TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail(f"bench/run.py --smoke did not finish within {SMOKE_TIMEOUT_S} s")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_smoke_run_writes_json_with_every_key(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    done = _run_smoke(out)
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())

    assert REQUIRED_KEYS <= data.keys(), REQUIRED_KEYS - data.keys()
    assert _is_number(data["bound_tps"]) and data["bound_tps"] > 0
    assert data["bound_tps"] == data["signature"]["bound_tps"]
    for key in ("verify_per_s_1_thread", "verify_per_s_all_threads", "verify_per_s_all_processes"):
        assert _is_number(data["signature"][key]) and data["signature"][key] > 0, key
    for key in (
        "peerdb_tps_majority",
        "peerdb_tps_unanimous_signed",
        "peerdb_stream_tps_majority",
        "peerdb_stream_tps_unanimous_signed",
        "etcd_tps",
        "pysyncobj_tps",
        "audit_verify_tps",
        "catchup_tps",
        "bytes_per_tx",
    ):
        assert data[key] is None or (_is_number(data[key]) and data[key] >= 0), key
    _check_latency_summary("etcd", data["etcd_latency_ms"])
    _check_latency_summary("pysyncobj", data["pysyncobj_latency_ms"])
    for system in ("peerdb", "peerdb_stream"):
        if data[f"{system}_latency_ms"] is not None:
            assert set(data[f"{system}_latency_ms"]) == {"majority", "unanimous_signed"}
            for level, summary in data[f"{system}_latency_ms"].items():
                _check_latency_summary(f"{system} {level}", summary)

    if data["systems"]["peerdb"]["status"] == "measured":
        light = data["peerdb_stages_ms"]["light"]
        # The light step's transactions went through every stage of the write path.
        for stage in ("tx.parse", "tx.admit", "tx.block", "tx.unanimous_signed", "tx.total", "propose.commit",
                      "cosign.commit", "block.unanimous_signed"):
            assert light[stage]["count"] > 0, stage
            assert 0 <= light[stage]["p50_ms"] <= light[stage]["p99_ms"], stage

    machine = data["machine"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert isinstance(machine["memory_bytes"], int) and machine["memory_bytes"] > 0
    assert isinstance(machine["kernel"], str) and machine["kernel"]
    assert _is_number(machine["load_average_1m_at_end"]) and machine["load_average_1m_at_end"] >= 0
    disk = data["disk_floor"]  # the durable-write floor, measured in the same run
    for key in ("fdatasync_4k_ms", "lmdb_sync_commit_50_puts_ms"):
        assert 0 < disk[key]["p50"] <= disk[key]["p99"], key
    versions = data["versions"]
    assert isinstance(versions["python"], str) and isinstance(versions["pynacl"], str)
    for name in ("etcd", "pysyncobj", "peerdb"):
        assert name in versions and (versions[name] is None or isinstance(versions[name], str)), name

    assert set(data["systems"]) == {"peerdb", "peerdb_stream", "etcd", "pysyncobj"}
    for name, entry in data["systems"].items():
        assert entry["status"] in {"measured", "skipped", "failed"}, name
        if entry["status"] == "measured":
            assert entry["steps"], name
            tps_key = f"{name}_tps_unanimous_signed" if name.startswith("peerdb") else f"{name}_tps"
            assert _is_number(data[tps_key]), tps_key
        else:
            assert isinstance(entry["reason"], str) and entry["reason"], name
    assert data["failed"] == {}, data["failed"]
    assert data["plot"] is None or Path(data["plot"]).is_file()


def test_percentile_is_nearest_rank_and_refuses_unacknowledged() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([1.0, math.inf], 50) == 1.0
    assert percentile([1.0, math.inf], 99) is None
    assert percentile([], 50) is None


def test_level_stats_counts_only_the_window_and_starts_latency_at_submit() -> None:
    scheduled = [0.0, 1.0, 2.0, 3.0]
    released = [0.0, 1.0005, 2.5, 3.0]  # the second within timer tolerance, the third late
    acked = [0.5, 1.2505, 2.75, math.nan]
    stats = level_stats(scheduled, released, acked, 1.0, 3.0)
    assert stats["requests_in_window"] == 2
    assert stats["sustained_tps"] == 1.0  # acks at 1.2505 and 2.75 fall in the 2 s window
    assert stats["p50_ms"] == 250.0  # counted from the release: 0.5 ms late is timer rounding
    assert stats["max_ms"] == 749.0  # 0.5 s late is not: counted from scheduled + 1 ms
    assert stats["unacked_in_window"] == 0
    late = level_stats(scheduled, released, acked, 1.0, 4.0)
    assert late["unacked_in_window"] == 1 and late["p99_ms"] is None


class _FakeClient:
    """A system that takes ``service_s`` per write and handles ``parallel`` writes at once."""

    def __init__(self, service_s: float, parallel: int) -> None:
        self.service_s = service_s
        self.slots = trio.Semaphore(parallel)
        self.closed = False

    async def prepare(self, count: int, value_bytes: int) -> None:
        return None

    async def submit(self, seq: int, key: bytes, value: bytes) -> Mapping[str, float]:
        if seq == 3:
            raise SubmitError("refused on purpose")
        async with self.slots:
            await trio.sleep(self.service_s)
        return {"committed": trio.current_time()}

    async def aclose(self) -> None:
        self.closed = True


def _spec(rate: float, concurrency: int) -> LoadSpec:
    return LoadSpec(
        client={"kind": "fake"},
        levels=("committed",),
        rate=rate,
        duration_s=4.0,
        warmup_s=1.0,
        drain_s=1.0,
        concurrency=concurrency,
        value_bytes=150,
        key_prefix="t",
    )


async def test_open_loop_keeps_up_below_capacity(autojump_clock: trio.testing.MockClock) -> None:
    client = _FakeClient(service_s=0.010, parallel=100)
    result = await run_open_loop(client, _spec(rate=200.0, concurrency=16))
    committed = result["levels"]["committed"]
    assert result["requests"] == 800 and result["dispatched"] == 800
    assert result["error_count"] == 1 and client.closed
    assert committed["sustained_tps"] == pytest.approx(200.0, rel=0.02)
    assert committed["p50_ms"] == pytest.approx(10.0, abs=1.1)
    assert not is_saturated(result, "committed")


async def test_open_loop_shows_saturation_as_queueing(autojump_clock: trio.testing.MockClock) -> None:
    client = _FakeClient(service_s=0.010, parallel=1)  # capacity 100 writes/s
    result = await run_open_loop(client, _spec(rate=400.0, concurrency=16))
    committed = result["levels"]["committed"]
    assert committed["sustained_tps"] == pytest.approx(100.0, rel=0.05)
    assert committed["p99_ms"] is None or committed["p99_ms"] > 100.0
    assert is_saturated(result, "committed")


async def _serve_http(stream: trio.SocketStream) -> None:
    """Answers each request with 200, alternately Content-Length and chunked bodies."""
    buffer = b""
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 429 Too Many\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ]
    served = 0
    async with stream:
        while served < len(answers):  # bounded: one pass per request this test sends
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                buffer += chunk
                continue
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            if len(rest) < length:
                buffer += await stream.receive_some(4096)
                continue
            buffer = rest[length:]
            await stream.send_all(answers[served])
            served += 1


async def test_http1_client_reads_length_and_chunked_bodies_on_one_connection() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _serve_http, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        conn = http1.Connection("127.0.0.1", port)
        assert await conn.request("POST", "/v3/kv/put", b'{"key":"a"}', "application/json") == (200, b"hello")
        assert await conn.request("POST", "/v3/kv/put", b"{}", "application/json") == (429, b"abcde")
        await conn.close()
        nursery.cancel_scope.cancel()


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_managed_processes_stop_a_child_and_what_it_forked() -> None:
    with ManagedProcesses() as procs:
        child = procs.spawn("sh", ["sh", "-c", "sleep 60 & echo $!; wait"], pipes=True)
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert procs.running() == [(child.pid, "sh")]
    assert procs.running() == []
    assert child.returncode is not None
    try:
        poll_until(lambda: _gone_or_zombie(grandchild), GRANDCHILD_EXIT_S, "the killed grandchild to exit")
    except TimeoutError:
        pass
    assert _gone_or_zombie(grandchild)
