"""Monitoring a consortium of real ``peerdb node run`` processes, as an operator's Prometheus, load
balancer and pager would: metrics scraped over HTTP from each daemon's ``[metrics] listen``
address move when blocks are made; ``/readyz`` answers ready with its peers and not ready when
the node is left alone; one outage of a member reaches the alert command exactly twice (raised,
then cleared with its duration); and ``[log] format = "json"`` makes every log line a JSON
object carrying the alert's fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from peerdb.localnet import LocalConsortium, NodeProcess, poll_until
from peerdb.node.alerts import ALERT_CLEAR_HOLD_MS

pytestmark = pytest.mark.slow

PARAMS = {"heartbeat_ms": 200, "turn_timeout_ms": 1000}
WAIT_S = 60.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    try:
        poll_until(predicate, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def scrape(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"http://{node.metrics}/metrics", timeout=10)  # no token: the metrics address has none
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def probe(node: NodeProcess, path: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"http://{node.metrics}{path}", timeout=10)
    return r.status_code, r.json()


def alert_loop_turned_since(node: NodeProcess, since: float) -> bool:
    """Whether the node's alert loop began a turn after ``since`` (this process's monotonic clock)."""
    _status, health = probe(node, "/healthz")
    ago: float = health["loops_last_turned_s_ago"]["alert"]
    return time.monotonic() - ago > since


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_metrics_health_and_alert_hooks_of_real_daemons(tmp_path: Path) -> None:
    hooked = tmp_path / "alerts.jsonl"
    with LocalConsortium(tmp_path / "c", params=PARAMS, sync=False, metrics=True) as net:
        net.write_files()
        a = net.nodes["firm-a"]
        # awk writes each event as one line in one write, so concurrent events never interleave.
        a.config.write_text(a.config.read_text() + f"\n[alerts]\ncommand = \"awk 1 >> '{hooked}'\"\n"
                            "\n[log]\nformat = \"json\"\n")
        net.start_all()
        net.wait_ready()
        wait_for(lambda: probe(a, "/readyz")[0] == 200, "firm-a ready")
        before = scrape(a)
        status, health = probe(a, "/healthz")
        assert status == 200 and health["healthy"] is True and set(health["loops_last_turned_s_ago"]) == {
            "turn", "status", "alert"}

        with a.client() as c:
            for i in range(5):
                r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": f"k{i}", "value": "v"}],
                                              "wait": "unanimous_signed", "timeout_s": 30})
                assert r.status_code == 200 and r.json()["wait"]["reached"], r.text
        after = scrape(a)

        def v(samples: dict[Any, float], name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]
        assert v(after, "peerdb_head_height", view="unanimous_signed") > v(before, "peerdb_head_height",
                                                                             view="unanimous_signed")
        assert v(after, "peerdb_transactions_applied_total") - v(before, "peerdb_transactions_applied_total") >= 5
        assert v(after, "peerdb_blocks_applied_total") > v(before, "peerdb_blocks_applied_total")
        assert v(after, "peerdb_store_commit_seconds_count") > v(before, "peerdb_store_commit_seconds_count")
        for member in net.nodes:
            assert v(after, "peerdb_signatures_total", member=member) > 0
        assert v(after, "peerdb_peers_up") == 3 and v(after, "process_resident_memory_bytes") > 0
        b_metrics = scrape(net.nodes["firm-b"])  # every daemon serves its own
        assert v(b_metrics, "peerdb_head_height", view="tentative") >= 1

        # One outage of firm-d: the hook hears it raised once and cleared once.
        net.stop("firm-d")
        wait_for(lambda: any(e["event"] == "raised" and e["subject"] == "firm-d" for e in events(hooked)),
                 "peer_down raised at the hook")
        assert probe(a, "/readyz")[0] == 200  # three of four: still a majority
        net.start("firm-d")
        wait_for(lambda: any(e["event"] == "cleared" and e["subject"] == "firm-d" for e in events(hooked)),
                 "peer_down cleared at the hook", timeout=WAIT_S + ALERT_CLEAR_HOLD_MS / 1000)
        # Nothing more follows for this outage: three turns of firm-a's alert loop after the clear
        # (each turn stamps itself, then evaluates the conditions and starts their hooks).
        for _ in range(3):
            since = time.monotonic()
            wait_for(lambda: alert_loop_turned_since(a, since), "firm-a's alert loop turned")
        outage = [e for e in events(hooked) if e["subject"] == "firm-d"]
        assert [(e["event"], e["kind"]) for e in outage] == [("raised", "peer_down"), ("cleared", "peer_down")]
        raised, cleared = outage
        assert raised["member"] == "firm-a" and cleared["duration_s"] > 0 and cleared["at_ms"] > raised["at_ms"]
        logged = [json.loads(line) for line in a.log_path.read_text().splitlines() if line.startswith("{")]
        assert logged and {"time", "level", "member", "component", "message"} <= set(logged[0])
        assert any(e.get("event") == "cleared" and e.get("subject") == "firm-d" and e["level"] == "WARNING"
                   for e in logged)

        # Alone: not ready, and the answer says why.
        for name in ("firm-b", "firm-c", "firm-d"):
            net.stop(name)
        wait_for(lambda: probe(a, "/readyz")[0] == 503, "firm-a not ready alone")
        status, body = probe(a, "/readyz")
        assert body["ready"] is False and any(r.startswith("alone: no member is connected") for r in body["reasons"])
        assert probe(a, "/healthz")[0] == 200
