"""Four real `peerdb node run` processes on 127.0.0.1 (TLS between them, LMDB on disk, HTTP in
front): a write reaches every member; while one member is down the others keep a majority going
and their alerts name it, and once restarted it catches up and signs again; an outsider is
refused by TLS; a clean SIGTERM exits 0; and a bad API token is refused.
"""

from __future__ import annotations

import secrets
import ssl
import socket
from pathlib import Path

import pytest

from peerdb.consortium_file import load_consortium
from peerdb.core.keys import SigningKey
from peerdb.localnet import LocalConsortium
from peerdb.net.certs import member_certificate
from peerdb.net.tls import client_context

pytestmark = pytest.mark.slow

FAST = {"heartbeat_ms": 200, "turn_timeout_ms": 1000}


def heads(net: LocalConsortium, name: str) -> dict[str, int]:
    result: dict[str, int] = net.status(name)["heads"]
    return result


def put(net: LocalConsortium, name: str, key: str, wait: str = "unanimous_signed") -> dict[str, object]:
    with net.nodes[name].client() as c:
        r = c.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": key, "value": key}],
                                      "wait": wait, "timeout_s": 30})
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body


def test_four_processes_crash_alert_restart_and_refuse_outsiders(tmp_path: Path) -> None:
    with LocalConsortium(tmp_path / "c", params=FAST) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        answer = put(net, "firm-a", "first")
        wait = answer["wait"]
        assert isinstance(wait, dict) and wait["view"] == "unanimous_signed" and wait["reached"] is True
        levels = wait["levels_ms"]
        assert levels["majority"] <= levels["unanimous_signed"]
        net.wait_for(lambda: len({net.status(n)["tip"] for n in net.nodes}) == 1 or
                     min(heads(net, n)["unanimous_signed"] for n in net.nodes) > 0, 30, "agreement")
        for name in net.nodes:
            with net.nodes[name].client() as c:
                got = c.get("/v1/kv/ns/first", params={"view": "unanimous_signed"}).json()
                assert got["value_text"] == "first", (name, got)

        # A crash: the other three keep a majority going and name the missing member.
        net.kill("firm-c")
        for i in range(3):
            answer = put(net, "firm-a", f"after-crash-{i}", wait="majority")
            assert answer["wait"]["reached"] is True  # type: ignore[index]
        net.wait_for(lambda: any(a["kind"] in ("peer_down", "stalled") and "firm-c" in a["message"]
                                 for a in net.status("firm-a")["alerts"]), 30, "alert naming firm-c")
        stuck = heads(net, "firm-a")["unanimous_signed"]
        assert heads(net, "firm-a")["majority"] > stuck

        # Restart: it catches up and signs again, so unanimity moves past the crash.
        net.start("firm-c")
        net.wait_ready(["firm-c"])
        target = heads(net, "firm-a")["majority"]
        net.wait_for(lambda: heads(net, "firm-a")["unanimous_signed"] >= target, 60, "unanimity after restart")
        with net.nodes["firm-c"].client() as c:
            assert c.get("/v1/kv/ns/after-crash-2", params={"view": "majority"}).json()["value_text"] == "after-crash-2"

        # An outsider with a valid-looking certificate of its own is refused by TLS.
        outsider = SigningKey.generate()
        cert = member_certificate(outsider.seed, "intruder")
        consortium = load_consortium(net.directory / "consortium.toml")
        # The intruder trusts the members' certificates, so any refusal is the member's doing.
        ctx = client_context(outsider.seed, cert, [m.cert for m in consortium.members if m.cert])
        host, port = tomllib_member_address(net, "firm-a")
        with socket.create_connection((host, port), timeout=5) as raw:
            received = b"refused by an exception"
            try:
                with ctx.wrap_socket(raw) as tls:  # TLS 1.3: the server checks our cert after this
                    tls.sendall(b"\x00\x00\x00\x01\x00")
                    received = tls.recv(1)
            except (ssl.SSLError, ConnectionError, OSError):
                pass
            assert not received or received == b"refused by an exception"
        net.wait_for(lambda: "refused" in net.nodes["firm-a"].log_path.read_text(), 10, "refusal logged")
        refusal = [line for line in net.nodes["firm-a"].log_path.read_text().splitlines() if "refused" in line]
        assert "UNKNOWN_CA" not in refusal[-1], refusal[-1]  # the member refused the client, not vice versa

        # A clean SIGTERM stops every node with exit status 0.
    for name in net.nodes:
        proc = net.nodes[name].proc
        assert proc is not None and proc.returncode == 0, net.nodes[name].log_tail()


def tomllib_member_address(net: LocalConsortium, name: str) -> tuple[str, int]:
    import tomllib
    data = tomllib.loads((net.directory / "consortium.toml").read_text())
    for m in data["members"]:
        if m["name"] == name:
            host, port = m["address"].split(":")
            return host, int(port)
    raise AssertionError(name)


def test_bad_api_token_is_refused(tmp_path: Path) -> None:
    with LocalConsortium(tmp_path / "c", members=1, params=FAST) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        node = net.nodes["firm-a"]
        node.token = secrets.token_urlsafe(24)
        with node.client() as c:
            r = c.get("/v1/status")
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorized"
