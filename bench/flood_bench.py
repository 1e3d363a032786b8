"""One member floods another with costly frames: does the target's API stay responsive, and do
the others keep making blocks?

Starts a local consortium of four real member daemons (``peerdb.localnet``: TLS, LMDB, the HTTP
API) but runs only firm-a, firm-b and firm-c; this script plays firm-d with firm-d's own member
key, so the target (firm-a) accepts its TLS connection and hello like any member's. Without
firm-d, a majority (more than half of four) needs firm-a's signature, so a frozen firm-a stops
everyone's majority head.

Phases: a quiet baseline, then the flood, each ``--seconds`` long. Throughout, firm-a's
``GET /v1/status`` is timed every 100 ms and every member's majority head is read every 250 ms.
The flood (``--kind``):

- ``tiny``: 16 MiB frames ``{"msg": [[], [], ...]}``, sixteen million one-byte items, sent
  back to back on one connection and again on a new one whenever the target closes it
  (retrying every 100 ms while it refuses);
- ``sigs``: well-formed ``sigs`` messages of 4,096 forged signatures each (450 KB, every one
  verified and refused by the target, which does not disconnect for it).

Prints one JSON object: API latency (p50, p99, max) in each phase, the majority heads' progress
and longest stall in each phase, what the flooder managed to send, the target's peak memory, and
the load average. Reported, never asserted (see docs/performance.md). Every daemon is stopped by
PID on exit.

    .venv/bin/python bench/flood_bench.py [--seconds 30] [--kind tiny|sigs] [--out FILE]

To measure another checkout's daemons (e.g. before a change), run from that checkout's root
with ``PYTHONPATH`` pointing at it: the daemons are started as ``python -m cli`` from the
working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

import peerdb
from peerdb.consortium_file import load_consortium
from peerdb.core.codec import encode
from peerdb.core.errors import PeerDBError
from peerdb.core.model import BlockSignature, consortium_id
from peerdb.keyfile import read_key
from peerdb.localnet import LocalConsortium
from peerdb.net.frames import FrameReader, encode_frame
from peerdb.net.hello import send_hello
from peerdb.net.tls import TlsMember, TlsTransport
from peerdb.net.transport import AuthenticatedStream

TARGET = "firm-a"
OTHERS = ("firm-b", "firm-c")
FLOODER = "firm-d"
PARAMS = {"heartbeat_ms": 1000, "turn_timeout_ms": 2000}
"""The heartbeat and turn timeout of the reported incident: an idle chain grows a block a second."""
API_PERIOD_S = 0.1
HEADS_PERIOD_S = 0.25
API_TIMEOUT_S = 120.0
RETRY_S = 0.1
TINY_FRAME_BYTES = 16 * 1024 * 1024


def tiny_items_frame() -> bytes:
    """A maximal frame of one-byte items: {"msg": [[], [], ...]}."""
    count = TINY_FRAME_BYTES - 16
    payload = b"\xa1\x63msg" + b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count
    return len(payload).to_bytes(4, "big") + payload


def forged_sigs_frame() -> bytes:
    sigs = [BlockSignature(os.urandom(32), TARGET, os.urandom(64)).to_cbor() for _ in range(4096)]
    return encode_frame({"msg": {"t": "sigs", "sigs": sigs}})


@dataclass
class Samples:
    api: list[tuple[float, float | None]] = field(default_factory=list)  # (start, seconds or None: failed)
    heads: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def poll_api(net: LocalConsortium, samples: Samples, stop: threading.Event) -> None:
    with net.nodes[TARGET].client(timeout=API_TIMEOUT_S) as client:
        while not stop.is_set():
            start = time.monotonic()
            try:
                ok = client.get("/v1/status").status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.monotonic() - start
            with samples.lock:
                samples.api.append((start, took if ok else None))
            stop.wait(max(0.0, API_PERIOD_S - took))


def poll_heads(net: LocalConsortium, samples: Samples, stop: threading.Event) -> None:
    clients = {name: net.nodes[name].client(timeout=5) for name in OTHERS}
    try:
        while not stop.is_set():
            for name, client in clients.items():
                try:
                    majority = int(client.get("/v1/status").json()["heads"]["majority"])
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                with samples.lock:
                    samples.heads.setdefault(name, []).append((time.monotonic(), majority))
            stop.wait(HEADS_PERIOD_S)
    finally:
        for client in clients.values():
            client.close()


@dataclass
class FloodStats:
    connections: int = 0
    refused: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    last_refusal: str | None = None
    closes: list[str] = field(default_factory=list)


async def flood(directory: Path, frame: bytes, seconds: float, stats: FloodStats) -> None:
    """Play firm-d: connect to the target, hello, then send ``frame`` until the connection
    breaks; again, for ``seconds``."""
    consortium = load_consortium(directory / "consortium.toml")
    cid = consortium_id(consortium)
    key, _kind = read_key(directory / "keys" / f"{FLOODER}.key")
    members = []
    for m in consortium.members:
        assert m.cert is not None
        host, port = m.host_port
        members.append(TlsMember(m.name, m.key, m.cert, host, port))
    transport = TlsTransport(FLOODER, key.seed, members)
    ping = encode_frame({"ping": 0})
    auth: AuthenticatedStream | None = None
    with trio.move_on_after(seconds):
        while True:
            try:
                with trio.fail_after(30):
                    auth = await transport.connect(TARGET)
                    await send_hello(auth.stream, cid, FLOODER)
                    answer = await FrameReader(auth.stream).receive()
                if "error" in answer:
                    stats.refused += 1
                    stats.last_refusal = str(answer["error"])[:200]
                else:
                    stats.connections += 1
                    await auth.stream.send_all(ping)  # the dialler's confirmation: the target installs us
                    while True:
                        await auth.stream.send_all(frame)
                        stats.frames_sent += 1
                        stats.bytes_sent += len(frame)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                    trio.EndOfChannel, PeerDBError) as exc:
                stats.closes.append(f"{type(exc).__name__}: {exc}"[:200])
            finally:
                if auth is not None:
                    with trio.move_on_after(1, shield=True):
                        try:
                            await auth.stream.aclose()
                        except (OSError, trio.BrokenResourceError):
                            pass
                auth = None
            await trio.sleep(RETRY_S)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(samples: Samples, start: float, end: float) -> dict[str, Any]:
    with samples.lock:
        api = [(t, d) for t, d in samples.api if start <= t < end]
        heads = {name: [(t, h) for t, h in series if start <= t < end] for name, series in samples.heads.items()}
    latencies = [d for _, d in api if d is not None]
    out: dict[str, Any] = {
        "seconds": round(end - start, 1),
        "api_requests": len(api),
        "api_failed": sum(1 for _, d in api if d is None),
        "api_p50_ms": _ms(percentile(latencies, 0.5)),
        "api_p99_ms": _ms(percentile(latencies, 0.99)),
        "api_max_ms": _ms(max(latencies) if latencies else None),
    }
    for name, series in heads.items():
        if len(series) < 2:
            out[name] = {"samples": len(series)}
            continue
        stall, last_change, last = 0.0, series[0][0], series[0][1]
        for t, h in series[1:]:
            if h != last:
                stall, last_change, last = max(stall, t - last_change), t, h
        stall = max(stall, series[-1][0] - last_change)
        out[name] = {"majority_from": series[0][1], "majority_to": series[-1][1],
                     "blocks_per_s": round((series[-1][1] - series[0][1]) / (series[-1][0] - series[0][0]), 2),
                     "longest_stall_s": round(stall, 2)}
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def count_in_log(path: Path, *needles: str) -> dict[str, int]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    return {needle: text.count(needle) for needle in needles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the baseline and of the flood")
    parser.add_argument("--kind", choices=("tiny", "sigs"), default="tiny")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    args = parser.parse_args()

    frame = tiny_items_frame() if args.kind == "tiny" else forged_sigs_frame()
    directory = Path(tempfile.mkdtemp(prefix="peerdb-flood-"))
    samples, stats = Samples(), FloodStats()
    stop = threading.Event()
    result: dict[str, Any] = {
        "kind": args.kind, "frame_bytes": len(frame), "peerdb": str(Path(peerdb.__file__).parent),
        "cwd": os.getcwd(), "params": PARAMS, "load_average_start": os.getloadavg(),
    }
    net = LocalConsortium(directory, members=4, params=PARAMS)
    try:
        net.write_files()
        for name in (TARGET, *OTHERS):
            net.start(name)
        net.wait_ready([TARGET, *OTHERS], timeout=120)
        net.wait_for(lambda: all(net.status(n)["heads"]["majority"] >= 3 for n in (TARGET, *OTHERS)), 120,
                     "the three members making majority blocks")
        pollers = [threading.Thread(target=poll_api, args=(net, samples, stop), daemon=True),
                   threading.Thread(target=poll_heads, args=(net, samples, stop), daemon=True)]
        for thread in pollers:
            thread.start()
        t0 = time.monotonic()
        time.sleep(args.seconds)  # the quiet baseline: the pollers sample meanwhile
        t1 = time.monotonic()
        trio.run(flood, directory, frame, args.seconds, stats)
        t2 = time.monotonic()
        time.sleep(min(10.0, args.seconds))  # recovery
        t3 = time.monotonic()
        stop.set()
        for thread in pollers:
            thread.join(API_TIMEOUT_S + 5)
        result["baseline"] = summarize(samples, t0, t1)
        result["flood"] = summarize(samples, t1, t2)
        result["after"] = summarize(samples, t2, t3)
        result["flooder"] = {"connections": stats.connections, "refused": stats.refused,
                             "frames_sent": stats.frames_sent, "mib_sent": round(stats.bytes_sent / 2**20, 1),
                             "last_refusal": stats.last_refusal, "closes": stats.closes[:3]}
        result["target_peak_rss_mb"] = peak_rss_mb(net.nodes[TARGET].pid)
        result["target_log"] = count_in_log(net.nodes[TARGET].log_path, "peer_down", "peer_barred", "refused_barred",
                                            "CBOR items", "rejected signature")
        result["load_average_end"] = os.getloadavg()
    finally:
        stop.set()
        net.stop_all()
        if args.keep:
            result["workdir"] = str(directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
