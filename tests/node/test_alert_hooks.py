"""The daemon's alert sink (peerdb/node/daemon.py ``alert_sink``): a raised or cleared alert
reaches the configured command (JSON on its stdin) and webhook (a JSON POST); an unreachable
webhook is logged, never raised; and the service's alert loop hands events to the hooks one
at a time, in order, abandoning a hook that hangs so that the next alert still arrives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peerdb.node.alerts import Alert, AlertEvent
from peerdb.node.config import NodeConfig, load_node_config
from peerdb.node.daemon import alert_sink
from peerdb.node.service import ALERT_HOOK_TIMEOUT_S
from peerdb.setup_files import init_consortium
from tests.helpers.node_harness import Cluster

ALERT = AlertEvent("raised", Alert("peer_down", "peer firm-b is not connected", subject="firm-b"),
                   since_ms=1_000, at_ms=4_000)
PAYLOAD = {"member": "firm-a", "kind": "peer_down", "message": "peer firm-b is not connected", "subject": "firm-b",
           "event": "raised", "since_ms": 1_000, "at_ms": 4_000}
CLEARED = AlertEvent("cleared", ALERT.alert, since_ms=1_000, at_ms=70_000, ended_ms=40_000)


def node_config(tmp_path: Path, **changes: Any) -> NodeConfig:
    init_consortium(tmp_path / "c", "hooks", ["firm-a", "firm-b"], sync=False)
    return dataclasses.replace(load_node_config(tmp_path / "c" / "firm-a.toml"), **changes)


async def test_alert_command_gets_the_alert_as_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    send = await alert_sink(node_config(tmp_path, alert_command=f"cat > '{out}'"))
    with trio.fail_after(30):
        await send(ALERT)
    assert json.loads(out.read_text()) == PAYLOAD


async def test_alert_command_hears_the_clearing_with_its_duration(tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    send = await alert_sink(node_config(tmp_path, alert_command=f"cat > '{out}'"))
    with trio.fail_after(30):
        await send(CLEARED)
    assert json.loads(out.read_text()) == {**PAYLOAD, "event": "cleared", "at_ms": 70_000, "ended_ms": 40_000,
                                           "duration_s": 39.0}


async def test_alert_webhook_gets_the_alert_as_json(tmp_path: Path) -> None:
    received: list[bytes] = []
    done = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        received.append(head.split(b"\r\n")[0] + b"\n" + body)
        await stream.send_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        done.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            send = await alert_sink(node_config(tmp_path, alert_webhook=f"http://127.0.0.1:{port}/hook"))
            await send(ALERT)
            await done.wait()
            nursery.cancel_scope.cancel()
    request_line, body = received[0].split(b"\n", 1)
    assert request_line.startswith(b"POST /hook ")
    assert json.loads(body) == PAYLOAD


async def test_unreachable_webhook_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from peerdb.anchor.regtest import free_port

    caplog.set_level(logging.WARNING, logger="peerdb")
    url = f"http://127.0.0.1:{free_port()}/hook"
    send = await alert_sink(node_config(tmp_path, alert_webhook=url))
    with trio.fail_after(30):
        await send(ALERT)
    assert any(f"alert webhook {url} failed" in r.getMessage() for r in caplog.records)


async def two_peers_go_down(tmp_path: Path, hook: Callable[[AlertEvent], Awaitable[None]],
                            reached: list[AlertEvent], delivered: list[AlertEvent]) -> None:
    """firm-a's service with ``hook`` as its alert hook: firm-d goes down, and once its alert
    has reached the hook (``reached``), firm-c; returns when firm-c's alert is in ``delivered``."""
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.nodes["firm-a"].service.on_alert = hook
        await cluster.crash("firm-d")
        await cluster.wait_until(lambda: bool(reached), what="the first alert reaches the hook")
        await cluster.crash("firm-c")
        await cluster.wait_until(lambda: any(e.kind == "peer_down" and e.subject == "firm-c" for e in delivered),
                                 timeout=3 * ALERT_HOOK_TIMEOUT_S, what="the later alert reaches the hook")
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_hanging_alert_hook_is_abandoned_and_later_alerts_still_reach_it_in_order(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    hooked: list[AlertEvent] = []

    async def hang(alert: AlertEvent) -> None:
        hooked.append(alert)
        if len(hooked) == 1:
            await trio.sleep_forever()  # a command that never exits, the first time

    await two_peers_go_down(tmp_path, hang, hooked, hooked)
    assert hooked[0].kind == "peer_down" and hooked[0].subject == "firm-d"
    # One delivery at a time, in the order the events happened.
    assert [e.at_ms for e in hooked] == sorted(e.at_ms for e in hooked)


async def test_a_slow_alert_hook_hears_the_events_in_the_order_they_happened(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    started: list[AlertEvent] = []
    finished: list[AlertEvent] = []

    async def slow(alert: AlertEvent) -> None:
        started.append(alert)
        if len(started) == 1:
            await trio.sleep(ALERT_HOOK_TIMEOUT_S - 1)  # slow, but within its time
        finished.append(alert)

    await two_peers_go_down(tmp_path, slow, started, finished)
    assert finished[0].subject == "firm-d", [(e.kind, e.subject) for e in finished]
    assert started == finished[:len(started)]
