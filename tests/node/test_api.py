"""The client API in process (a one-member consortium on the memory hub, httpx through ASGI):
writes, reads, history and views; errors are JSON and change nothing; a write whose wait times
out is still durable.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from peerdb.anchor.anchortx import parse_tx, txid
from peerdb.anchor.hashes import sha256d, to_display
from peerdb.core.chain import View
from peerdb.core.consortium import NamespaceRule
from peerdb.node.http import Api
from peerdb.proofs.verify import verify_read_proof
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.node_harness import Cluster

TOKEN = "t" * 32


@pytest.fixture
async def api(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> AsyncIterator[tuple[httpx.AsyncClient, Cluster]]:
    cluster = Cluster(tmp_path, names=("firm-a", "firm-b"),
                      namespaces=(NamespaceRule("locked", writers=("firm-b",)),))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        node = cluster.nodes["firm-a"]
        app = Api(node.service, TOKEN, cluster.client_keys["firm-a"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield client, cluster
        await cluster.close()
        nursery.cancel_scope.cancel()


def put(key: str, value: str, ns: str = "books") -> dict[str, object]:
    return {"ops": [{"op": "put", "namespace": ns, "key": key, "value": value}], "wait": "unanimous_signed"}


async def test_write_read_history_and_views(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    r = await client.post("/v1/write", json=put("q3", "100"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["wait"]["reached"] is True and set(body["wait"]["levels_ms"]) >= {"majority", "unanimous_signed"}
    txid = body["accepted"][0]
    got = (await client.get("/v1/kv/books/q3", params={"view": "unanimous_signed"})).json()
    assert got["value_text"] == "100" and got["view"] == "unanimous_signed" and got["height"] >= got["written_at"]
    assert (await client.get("/v1/kv/books/q3")).json()["view"] == "majority"  # the documented default
    await client.post("/v1/write", json=put("q3", "200"))
    versions = (await client.get("/v1/history/books/q3")).json()["versions"]
    assert [v["value_text"] for v in versions] == ["100", "200"]
    old = (await client.get("/v1/kv/books/q3", params={"at": versions[0]["height"]})).json()
    assert old["value_text"] == "100"
    tx = (await client.get(f"/v1/tx/{txid}")).json()
    assert tx["status"] in ("majority", "unanimous_signed") and tx["height"] == versions[0]["height"]
    scan = (await client.get("/v1/kv/books", params={"prefix": "q"})).json()
    assert [k["key"] for k in scan["keys"]] == ["q3"]
    block = (await client.get(f"/v1/blocks/{tx['height']}")).json()
    assert {s["member"] for s in block["signatures"] if s["signed"]} == {"firm-a", "firm-b"}
    assert block["txs"][0]["txid"] == txid
    status = (await client.get("/v1/status")).json()
    assert status["heads"]["unanimous_signed"] >= tx["height"] and status["peers"] == {"firm-b": True}
    anchor = (await client.get(f"/v1/anchors/{tx['height']}")).json()
    assert anchor["anchored"] is False and anchor["proof"] is None
    consortium = (await client.get("/v1/consortium")).json()
    assert consortium["namespaces"] == [{"name": "locked", "writers": ["firm-b"], "readers": ["*"]}]


async def test_errors_are_json_and_change_nothing(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, cluster = api
    store = cluster.nodes["firm-a"].store
    r = await client.get("/v1/status", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.delete("/v1/status")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = await client.get("/v1/kv/books/x", params={"view": "sideways"})
    assert r.status_code == 400 and "view" in r.json()["error"]["message"]
    r = await client.get("/v1/kv/Bad NS/x")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_namespace"
    # A bad wait option is refused before anything is written.
    r = await client.post("/v1/write", json={**put("never", "x"), "timeout_s": 0})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter"
    assert not cluster.nodes["firm-a"].engine.mempool and store.get("books", "never") == (None, None)
    r = await client.post("/v1/write", json=put("k", "v", ns="locked"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await client.post("/v1/txs", json={"txs": [base64.b64encode(b"garbage").decode()]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "rejected"
    r = await client.post("/v1/txs", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
    r = await client.get("/v1/blocks/999999")
    assert r.status_code == 404
    assert not cluster.nodes["firm-a"].engine.mempool


async def test_wait_timeout_still_leaves_the_write_durable(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, cluster = api
    await cluster.crash("firm-b")  # two members: no majority without firm-b
    r = await client.post("/v1/write", json={**put("pending", "1"), "wait": "majority", "timeout_s": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["wait"]["reached"] is False and "still pending" in body["wait"]["message"]
    txid = bytes.fromhex(body["accepted"][0])
    store = cluster.nodes["firm-a"].store
    # Answered "accepted" only once durable: in a stored block, or in the persisted pool.
    assert txid in store.included([txid]) or txid in {tx.txid for tx in store.mempool_items()}


async def test_an_anchor_shows_the_bitcoin_txid_not_the_wtxid(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    """``getrawtransaction`` finds a transaction by its txid (the hash without witness data); an
    anchor spending a segwit output has a different wtxid, which must not be shown."""
    client, cluster = api
    r = await client.post("/v1/write", json=put("anchored", "1"))
    height = (await client.get(f"/v1/tx/{r.json()['accepted'][0]}")).json()["height"]
    node = cluster.nodes["firm-a"]
    block_hash = node.engine.tree.best_chain_hash(height)
    assert block_hash is not None
    proof = make_anchor([block_hash], witness=True)[0]
    await node.service.call(node.store.record_anchor, block_hash, proof.encode())
    tx = parse_tx(proof.bitcoin_tx)
    txid_hex, wtxid_hex = to_display(txid(tx)), to_display(sha256d(proof.bitcoin_tx))
    assert txid_hex != wtxid_hex
    anchor = (await client.get(f"/v1/anchors/{height}")).json()
    assert anchor["bitcoin_txid"] == txid_hex


async def test_a_put_into_gov_is_refused_at_once_with_the_reason(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    """Not "accepted" and then dropped by every proposer while the client's wait runs out."""
    client, cluster = api
    r = await client.post("/v1/write", json={**put("books", "x", ns="_gov"), "timeout_s": 5})
    assert r.status_code == 400 and r.json()["error"]["code"] == "rejected"
    assert "_gov takes only 'propose' and 'vote' requests" in r.json()["error"]["message"]
    assert not cluster.nodes["firm-a"].engine.mempool


async def test_listing_keys_answers_the_view_asked_for(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    """A namespace listing in the majority view does not show what only the tentative view has
    (a key created, deleted or overwritten in blocks the majority has not signed yet)."""
    client, cluster = api
    for key in ("a", "b"):
        assert (await client.post("/v1/write", json=put(key, "1", ns="ledger"))).status_code == 200
    await cluster.crash("firm-b")  # two members: nothing new reaches the majority view
    changes = [{"op": "delete", "namespace": "ledger", "key": "a"},
               {"op": "put", "namespace": "ledger", "key": "b", "value": "2"},
               {"op": "put", "namespace": "ledger", "key": "c", "value": "3"}]
    r = await client.post("/v1/write", json={"ops": changes, "wait": "tentative", "timeout_s": 30})
    assert r.json()["wait"]["reached"], r.text

    async def listing(**params: str | int) -> Any:
        answer = await client.get("/v1/kv/ledger", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    tentative = await listing(view="tentative")
    assert [(k["key"], k["value_text"]) for k in tentative["keys"]] == [("b", "2"), ("c", "3")]
    majority = await listing(view="majority")
    assert majority["view"] == "majority" and majority["height"] < tentative["height"]
    assert [(k["key"], k["value_text"]) for k in majority["keys"]] == [("a", "1"), ("b", "1")]
    assert (await listing())["keys"] == tentative["keys"]  # a listing's documented default: the head
    first = await listing(view="majority", limit=1)
    assert [k["key"] for k in first["keys"]] == ["a"] and first["next_after"] == "a"
    second = await listing(view="majority", limit=1, after="a")
    assert [k["key"] for k in second["keys"]] == ["b"]
    assert (await listing(view="majority", limit=1, after="b"))["keys"] == []
    beyond = await client.get("/v1/kv/ledger", params={"view": "majority", "at": tentative["height"]})
    assert beyond.status_code == 400 and beyond.json()["error"]["code"] == "beyond_view"


async def test_unknown_paths_and_methods_answer_as_docs_api_md_shows(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    r = await client.get("/v1/nope")
    assert r.json() == {"error": {"code": "not_found", "message": "GET /v1/nope: Not Found"}}
    r = await client.delete("/v1/status")
    assert r.json() == {"error": {"code": "method_not_allowed", "message": "DELETE /v1/status: Method Not Allowed"}}


async def test_status_shows_the_data_directory_instance_and_signing_guard(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    """docs/operations-restore.md tells an operator to read the instance id in the status."""
    client, cluster = api
    store = cluster.nodes["firm-a"].store
    data_dir = (await client.get("/v1/status")).json()["data_dir"]
    assert data_dir == {"instance_id": store.instance_id.hex(), "signing_locked": False, "guard_floor": None}


async def test_reads_and_history_with_proofs_verify_with_the_consortium_file(
        api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, cluster = api
    await client.post("/v1/write", json=put("q3", "100"))
    await client.post("/v1/write", json={"ops": [{"op": "delete", "namespace": "books", "key": "q3"}],
                                         "wait": "unanimous_signed"})
    await client.post("/v1/write", json=put("q4", "7"))
    for key, found in (("q4", True), ("q3", False), ("never", False)):
        got = (await client.get(f"/v1/kv/books/{key}", params={"view": "unanimous_signed", "proof": "true"})).json()
        result = verify_read_proof(cluster.consortium, base64.b64decode(got["proof"]))
        assert result.found is found and result.height == got["height"] and result.key == key
        assert result.view is View.UNANIMOUS_SIGNED
        assert (result.value == b"7") if found else result.value is None
    plain = (await client.get("/v1/kv/books/q4")).json()
    assert "proof" not in plain
    history = (await client.get("/v1/history/books/q3", params={"proof": "true"})).json()["versions"]
    proven = [verify_read_proof(cluster.consortium, base64.b64decode(v["proof"])) for v in history]
    assert [(p.height, p.value) for p in proven] == [(v["height"], None if v["deleted"] else b"100") for v in history]
    r = await client.get("/v1/kv/books/q4", params={"proof": "maybe"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter"
