"""Mempool back-pressure as a client sees it: a full mempool is a clear HTTP error naming the
limit, and no accepted transaction is silently lost (tests/node/test_engine_protocol.py checks
the engine's side; this checks the answer that reaches the client).
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import trio
import trio.testing

from peerdb.node.http import Api
from tests.helpers.node_harness import Cluster

TOKEN = "t" * 32


async def test_full_mempool_is_a_503_naming_the_limit_and_loses_nothing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, names=("firm-a", "firm-b"))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        setattr(a.engine, "maybe_propose", lambda now_ms: None)  # no blocks for now: the pool only fills
        a.engine.mempool_max = 3
        transport = httpx.ASGITransport(app=Api(a.service, TOKEN, cluster.client_keys["firm-a"]))
        async with httpx.AsyncClient(transport=transport, base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            first = [cluster.tx("firm-a", f"k{i}") for i in range(3)]
            r = await client.post("/v1/txs", json={"txs": [base64.b64encode(t.raw).decode() for t in first]})
            assert r.status_code == 200 and len(r.json()["accepted"]) == 3, r.text
            extra = [cluster.tx("firm-a", "one-too-many")]
            r = await client.post("/v1/txs", json={"txs": [base64.b64encode(t.raw).decode() for t in extra]})
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "mempool_full" and "limit 3" in error["message"] and "retry" in error["message"]
            assert extra[0].txid not in a.engine.mempool  # refused as a whole, and said so
            assert {t.txid for t in first} <= set(a.engine.mempool)  # what was accepted stays
            delattr(a.engine, "maybe_propose")  # proposing again
            await cluster.wait_until(lambda: all(cluster.included(n, first, "majority") for n in cluster.names),
                                     what="the pool drains into blocks")
            r = await client.post("/v1/txs", json={"txs": [base64.b64encode(t.raw).decode() for t in extra],
                                                   "wait": "majority", "timeout_s": 60})
            assert r.status_code == 200 and r.json()["wait"]["reached"] is True, r.text
        await cluster.close()
        nursery.cancel_scope.cancel()
