"""``GET /v1/audit/bundle`` in process (a two-member consortium on the memory hub, httpx via
ASGI): the node streams its books as a bundle that the auditor's verifier accepts.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import trio
import trio.testing

from peerdb.audit.verify import VerifyOptions, verify_bundle
from peerdb.node.http import Api
from peerdb.node.http.routes_audit import BLOCKS_HEADER
from tests.helpers.node_harness import Cluster

TOKEN = "t" * 32
AUDIT_TOKEN = "a" * 32


async def test_the_node_streams_a_bundle_that_verifies(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, names=("firm-a", "firm-b"))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        node = cluster.nodes["firm-a"]
        transport = httpx.ASGITransport(app=Api(node.service, TOKEN, cluster.client_keys["firm-a"],
                                                audit_token=AUDIT_TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for i in range(3):
                r = await client.post("/v1/write", json={"ops": [{"op": "put", "namespace": "books", "key": f"k{i}",
                                                                  "value": f"v{i}"}], "wait": "unanimous_signed"})
                assert r.status_code == 200 and r.json()["wait"]["reached"], r.text
            refused = await client.get("/v1/audit/bundle", headers={"Authorization": "Bearer wrong"})
            assert refused.status_code == 401
            r = await client.get("/v1/audit/bundle", headers={"Authorization": f"Bearer {AUDIT_TOKEN}"})
            assert r.status_code == 200
            status = (await client.get("/v1/status")).json()
        await cluster.close()
        nursery.cancel_scope.cancel()
    report = verify_bundle(io.BytesIO(r.content), VerifyOptions(threads=1))
    assert report.exporter == "firm-a" and report.transactions == 3
    assert report.blocks == int(r.headers[BLOCKS_HEADER]) >= 1
    assert report.heads.tentative <= status["heads"]["tentative"]
    assert set(report.signatures) == {"firm-a", "firm-b"} and report.signatures["firm-b"] >= 1


async def test_only_the_auditor_token_exports_the_books_and_it_opens_nothing_else(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A bundle holds every value the member stores, also of namespaces whose read rules keep
    them from this member's applications: an application token must not pull one."""
    cluster = Cluster(tmp_path, names=("firm-a",))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        node = cluster.nodes["firm-a"]
        with_audit = httpx.ASGITransport(app=Api(node.service, TOKEN, cluster.client_keys["firm-a"],
                                                 audit_token=AUDIT_TOKEN))
        without = httpx.ASGITransport(app=Api(node.service, TOKEN, cluster.client_keys["firm-a"]))
        async with httpx.AsyncClient(transport=with_audit, base_url="http://node") as client:
            app = {"Authorization": f"Bearer {TOKEN}"}
            auditor = {"Authorization": f"Bearer {AUDIT_TOKEN}"}
            r = await client.get("/v1/audit/bundle", headers=app)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            assert "auditor token" in r.json()["error"]["message"]
            for path in ("/v1/status", "/v1/kv/books/k", "/v1/blocks"):
                r = await client.get(path, headers=auditor)
                assert r.status_code == 403 and "opens only /v1/audit/bundle" in r.json()["error"]["message"]
            r = await client.post("/v1/write", headers=auditor,
                                  json={"ops": [{"op": "put", "namespace": "books", "key": "k", "value": "v"}]})
            assert r.status_code == 403 and not node.engine.mempool
            assert (await client.get("/v1/audit/bundle", headers=auditor)).status_code == 200
            assert (await client.get("/v1/status", headers=app)).status_code == 200
        async with httpx.AsyncClient(transport=without, base_url="http://node") as client:
            r = await client.get("/v1/audit/bundle", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 403 and "audit export is off" in r.json()["error"]["message"]
        await cluster.close()
        nursery.cancel_scope.cancel()
