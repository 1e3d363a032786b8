"""The write stream end to end: four real ``peerdb node run`` processes (TLS between them, LMDB
synced, hypercorn in front), the client library in plain Python and in trio, raw WebSocket
frames, and ``peerdb load``.

Every transaction is acknowledged for every view asked and is then readable at another member;
a small pool (firm-b's ``mempool_max_txs``) pushes back with ``busy`` frames the client counts,
and nothing is lost; bad frames get the documented error frame and close code, or keep the
connection; only the application token opens the stream.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
import trio
from trio_websocket import ConnectionClosed

from peerdb.client import (ACCEPTED, REFUSED, NodeClient, NodeRefused, SyncStream, TxSigner, open_connection,
                           open_stream)
from peerdb.core.codec import encode
from peerdb.core.model import Tx
from peerdb.localnet import LocalConsortium
from peerdb.stream_frames import (BAD_FRAME, CLOSE_INVALID_PAYLOAD, CLOSE_MESSAGE_TOO_BIG, CLOSE_UNSUPPORTED_DATA,
                                  MAX_FRAME_BYTES, TEXT_FRAME, TOO_LARGE, UNKNOWN_OP, Admitted, Busy, ErrorFrame,
                                  Hello, Reached, SubmitFrame, parse_server_frame)

pytestmark = pytest.mark.slow

FAST = {"heartbeat_ms": 200, "turn_timeout_ms": 1000}
SMALL_POOL = 30
"""firm-b's pool: a few frames of 20 fill it."""
READ_TOKEN = "read-only-token-" + "r" * 16
VIEWS3 = ("tentative", "majority", "unanimous_signed")
WAIT_S = 60.0
"""Bound on any one wait for the consortium (a few seconds in practice; this catches a hang)."""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalConsortium]:
    directory = tmp_path_factory.mktemp("stream") / "c"
    net = LocalConsortium(directory, params=FAST)
    net.write_files()
    with open(directory / "consortium.toml", "a", encoding="utf-8") as f:
        f.write('\n[[namespaces]]\nname = "locked"\nwriters = ["firm-d"]\n')
    for name, changes in (("firm-a", {"api": {"read_token": READ_TOKEN}}),
                          ("firm-b", {"node": {"mempool_max_txs": SMALL_POOL}})):
        path = net.nodes[name].config
        data = tomllib.loads(path.read_text())
        for section, values in changes.items():
            data[section].update(values)
        path.write_text(tomli_w.dumps(data))
    with net:
        net.start_all()
        net.wait_ready()
        yield net


def signer(net: LocalConsortium, name: str) -> TxSigner:
    return TxSigner.from_node_config(net.nodes[name].config)


def test_plain_python_gets_every_view_and_another_member_reads_the_writes(net: LocalConsortium) -> None:
    node = net.nodes["firm-a"]
    with SyncStream(node.api, node.token, views=VIEWS3, timeout_s=WAIT_S, signer=signer(net, "firm-a")) as stream:
        assert stream.member == "firm-a"
        txids = [stream.put("ns", f"sync-{i}", f"value {i}") for i in range(200)]
        outcomes = stream.drain()
        stats = stream.stats()
    assert sorted(o.txid for o in outcomes) == sorted(txids)
    for o in outcomes:
        assert o.ok and o.status == ACCEPTED, o
        steps = [o.reached_s[k] for k in ("admitted", *VIEWS3)]
        assert steps == sorted(steps), o
    assert stats.txs_sent == 200 and stats.frames_sent < 200  # batched
    with NodeClient(f"http://{node.api}", node.token) as mine, \
            NodeClient(f"http://{net.nodes['firm-c'].api}", net.nodes["firm-c"].token) as other:
        other.wait_head("unanimous_signed", mine.head("unanimous_signed"), WAIT_S)
        assert other.read("ns", "sync-199", view="unanimous_signed")["value_text"] == "value 199"


def test_trio_client_pipelines_and_reports_each_transaction(net: LocalConsortium) -> None:
    node = net.nodes["firm-c"]
    sign = signer(net, "firm-c")

    async def main() -> list[object]:
        async with open_stream(node.api, node.token, views=("majority",), timeout_s=WAIT_S, signer=sign) as stream:
            pendings = [await stream.put("ns", f"trio-{i}", b"x" * 150) for i in range(100)]
            locked = await stream.put("locked", "no", "firm-c may not write it")
            outcomes = [await p.wait() for p in pendings]
            refused = await locked.wait()
        assert all(o.ok for o in outcomes) and [o.txid for o in outcomes] == [p.txid for p in pendings]
        assert all(p.reached_at["majority"] >= p.reached_at["admitted"] for p in pendings)
        return [refused]

    [refused] = trio.run(main)
    assert getattr(refused, "status") == REFUSED and getattr(refused, "code") == "forbidden"
    assert "may not write namespace 'locked'" in str(getattr(refused, "message"))


def test_a_small_pool_pushes_back_with_busy_frames_and_loses_nothing(net: LocalConsortium) -> None:
    node = net.nodes["firm-b"]
    busy: list[Busy] = []
    sign = signer(net, "firm-b")
    with SyncStream(node.api, node.token, views=("majority",), timeout_s=WAIT_S, signer=sign,
                    frame_txs=20, pipeline=8, on_busy=busy.append) as stream:
        txids = stream.submit_many([sign.put("ns", f"bp-{i}", b"y" * 150) for i in range(300)])
        outcomes = stream.drain()
        stats = stream.stats()
    assert stats.busy_frames >= 1 and len(busy) == stats.busy_frames
    assert all(b.limit == SMALL_POOL and "mempool" in b.message for b in busy)
    assert sorted(o.txid for o in outcomes) == sorted(txids)
    assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok][:3]


BAD = [
    pytest.param("a text frame", TEXT_FRAME, CLOSE_UNSUPPORTED_DATA, id="text"),
    pytest.param(b"\x9f\xff\x00 not canonical cbor", BAD_FRAME, CLOSE_INVALID_PAYLOAD, id="not-cbor"),
    pytest.param(b"\x00" * (MAX_FRAME_BYTES + 10), TOO_LARGE, CLOSE_MESSAGE_TOO_BIG, id="oversize"),
    pytest.param(encode({"op": "subscribe", "id": 41}), UNKNOWN_OP, None, id="unknown-op"),
]


@pytest.mark.parametrize(("data", "code", "close"), BAD)
def test_bad_frames_get_the_documented_error_and_close_code(net: LocalConsortium, data: bytes | str, code: str,
                                                            close: int | None) -> None:
    sign = signer(net, "firm-a")

    async def main() -> None:
        async with open_connection(net.nodes["firm-a"].api, net.nodes["firm-a"].token) as ws:
            assert isinstance(parse_server_frame(await ws.get_message()), Hello)
            await ws.send_message(data)
            error = parse_server_frame(await ws.get_message())
            assert isinstance(error, ErrorFrame) and error.code == code and error.message, error
            if close is not None:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == close
                return
            assert error.id == 41
            good = sign.put("ns", "after-a-bad-frame", "kept")
            forged = Tx(good.member, good.client, good.nonce + 1, good.expires_ms, good.ops, bytes(64),
                        Tx.body_bytes(good.member, good.client, good.nonce + 1, good.expires_ms, good.ops))
            await ws.send_message(SubmitFrame(42, (good.raw, forged.raw), ("majority",)).encode())
            admitted = parse_server_frame(await ws.get_message())
            assert isinstance(admitted, Admitted) and admitted.accepted == (good.txid,), admitted
            assert [(r.index, r.code) for r in admitted.refused] == [(1, "bad_signature")]
            reached = parse_server_frame(await ws.get_message())
            assert isinstance(reached, Reached) and reached.ids == (42,)

    trio.run(main)


def test_a_frame_far_over_the_limit_is_cut_off_at_the_websocket_layer(net: LocalConsortium) -> None:
    async def main() -> None:
        async with open_connection(net.nodes["firm-a"].api, net.nodes["firm-a"].token) as ws:
            assert isinstance(parse_server_frame(await ws.get_message()), Hello)
            await ws.send_message(b"\x00" * (2 * MAX_FRAME_BYTES + 1))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None and closed.value.reason.code == CLOSE_MESSAGE_TOO_BIG

    trio.run(main)


def test_only_the_application_token_opens_the_stream(net: LocalConsortium) -> None:
    node = net.nodes["firm-a"]
    for token, status, words in (("wrong-token-" + "w" * 20, 401, "bearer token"),
                                 (READ_TOKEN, 401, "read token only reads"),
                                 (node.audit_token, 403, "auditor token")):
        assert token is not None
        with pytest.raises(NodeRefused) as refused:
            SyncStream(node.api, token)
        assert refused.value.status == status and words in refused.value.reason, (token, refused.value)


def test_peerdb_load_streams_a_file_and_names_refused_lines(net: LocalConsortium, tmp_path: Path) -> None:
    node = net.nodes["firm-d"]
    lines = [json.dumps({"namespace": "ns", "key": f"load-{i}", "value": f"v{i}"}) for i in range(300)]
    lines.insert(120, json.dumps({"ops": [{"namespace": "ns", "key": "load-multi", "value": "m"},
                                          {"op": "delete", "namespace": "ns", "key": "load-0"}]}))
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n")
    cli = [sys.executable, "-m", "cli", "-c", str(node.config), "load"]
    done = subprocess.run([*cli, str(good), "--wait", "majority", "--json"], capture_output=True, text=True,
                          timeout=WAIT_S * 2)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["submitted"], summary["accepted"], summary["reached"]) == (301, 301, 301), summary
    with NodeClient(f"http://{node.api}", node.token) as client:
        assert client.read("ns", "load-299")["value_text"] == "v299"
        assert client.read("ns", "load-0")["found"] is False  # the multi-operation line deleted it

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"namespace": "ns", "key": "load-ok", "value": "ok"}) + "\n"
                     + json.dumps({"namespace": "locked", "key": "no", "value": "firm-a may not"}) + "\n")
    refused = subprocess.run([sys.executable, "-m", "cli", "-c", str(net.nodes["firm-a"].config), "load", str(mixed)],
                             capture_output=True, text=True, timeout=WAIT_S * 2)
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "1 accepted" in refused.stdout and "1 refused" in refused.stdout
    assert "line 2: refused forbidden" in refused.stdout and "may not write namespace 'locked'" in refused.stdout
