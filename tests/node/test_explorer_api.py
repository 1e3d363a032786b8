"""What the explorer page and ``peerdb forks | tx`` read (peerdb/node/http/explorer.py, refs.py):
the signature matrix names a stopped member's missing signatures, a fork that lost is listed
with its weight and why it lost and the reorg it caused is remembered, ids resolve from
prefixes and an ambiguous prefix is refused naming the candidates, and the page is served
without a token while its data needs one (the read token may read, not write).

In-process: real engines and stores on the in-memory hub under the autojump clock, the API
through httpx's ASGI transport (tests/system/test_explorer_browser.py drives the page itself
in a real browser against real daemons).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
import trio.testing

from peerdb.core.model import OP_PUT, Op, Tx
from peerdb.node.http import Api
from peerdb.node.service import trio_clock_ms
from tests.helpers.node_harness import API_TOKEN, Cluster, MemberNode

READ_TOKEN = "r" * 32


@asynccontextmanager
async def api_of(cluster: Cluster, node: MemberNode, token: str = API_TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    app = Api(node.service, API_TOKEN, cluster.client_keys[node.name], read_token=READ_TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


async def test_the_matrix_shows_a_stopped_members_missing_signatures(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        await cluster.wait_until(lambda: a.engine.heads().unanimous_signed >= 2, what="blocks signed by all")
        signed_by_all = a.engine.heads().unanimous_signed
        await cluster.crash("firm-d")
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(3)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: cluster.included("firm-a", txs, "majority"), what="majority without firm-d")
        async with api_of(cluster, a) as client:
            view = (await client.get("/v1/explorer")).json()
        assert view["members"] == list(cluster.names)
        by_height = {b["height"]: b for b in view["blocks"]}
        assert [b["height"] for b in view["blocks"]] == sorted(by_height, reverse=True)  # newest first
        after = [b for h, b in by_height.items() if h > signed_by_all]
        assert after and all(b["cells"]["firm-d"] == "missing" for b in after)
        assert all(b["cells"]["firm-a"] in ("signed", "endorsed") for b in after)
        assert set(by_height[signed_by_all]["cells"].values()) <= {"signed", "endorsed"}  # firm-d's included
        tx_block = a.store.tx_location(txs[0].txid)
        assert tx_block is not None
        assert by_height[tx_block.height]["status"] == "majority" and not by_height[tx_block.height]["anchored"]
        assert view["peers"]["firm-d"] is False
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_losing_fork_is_a_side_branch_with_its_weight_and_the_reorg_is_listed(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.hub.isolate("firm-c")
        c = cluster.nodes["firm-c"]
        lone = cluster.tx("firm-c", "from-the-fork")
        await c.service.call(c.engine.submit, [lone.raw], "firm-a", trio_clock_ms())
        await cluster.wait_until(lambda: c.store.tx_location(lone.txid) is not None, what="in firm-c's own block")
        location = c.store.tx_location(lone.txid)
        assert location is not None
        fork_block = location.block_hash
        others = [cluster.tx("firm-a", f"k{i}") for i in range(3)]
        await cluster.submit("firm-a", others)
        await cluster.wait_until(lambda: cluster.included("firm-a", others, "majority"), what="the majority moves on")
        cluster.hub.heal()
        await cluster.wait_until(lambda: not c.engine.tree.on_best_chain(fork_block), what="firm-c reorganised")
        async with api_of(cluster, c) as client:
            forks = (await client.get("/v1/forks")).json()
            view = (await client.get("/v1/explorer")).json()
        [branch] = [s for s in forks["side_branches"] if fork_block.hex() in {b["hash"] for b in s["blocks"]}]
        assert branch["weight"] < branch["best_weight"]
        assert branch["held"] is True and branch["why_lost"] == (
            f"lighter: {branch['weight']} counted signatures above the fork against the best chain's "
            f"{branch['best_weight']}")
        assert branch["weight"] == sum(len(b["signers"]) for b in branch["blocks"])
        assert all(set(b["signers"]) <= {"firm-c"} for b in branch["blocks"])
        assert branch["fork_height"] < location.height <= branch["height"]
        assert forks["reorgs"], "firm-c rolled its own blocks back"
        assert all(r["rolled_back"] >= 1 for r in forks["reorgs"])
        assert any(r["fork_height"] == branch["fork_height"] for r in forks["reorgs"])
        assert view["side_branches"] == forks["side_branches"] and view["reorgs"] == forks["reorgs"]
        await cluster.close()
        nursery.cancel_scope.cancel()


def colliding_txs(cluster: Cluster, digits: int = 4) -> tuple[Tx, Tx]:
    """Two of firm-a's transactions whose ids share their first ``digits`` hex digits (found by
    trying nonces; deterministic, the consortium's keys are seeded)."""
    seen: dict[str, Tx] = {}
    for nonce in itertools.count(10_000):
        tx = Tx.create(cluster.client_keys["firm-a"], cluster.cid, "firm-a", nonce, trio_clock_ms() + 600_000,
                       [Op(OP_PUT, "ns", f"p{nonce}", b"v")])
        prefix = tx.txid.hex()[:digits]
        if prefix in seen:
            return seen[prefix], tx
        seen[prefix] = tx
    raise AssertionError("unreachable")


async def test_ids_resolve_from_prefixes_and_an_ambiguous_one_names_the_candidates(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        first, second = colliding_txs(cluster)
        await cluster.submit("firm-a", [first, second])
        await cluster.wait_until(lambda: cluster.included("firm-a", [first, second], "majority"), what="both in blocks")
        async with api_of(cluster, a) as client:
            common = next(i for i, (x, y) in enumerate(zip(first.txid.hex(), second.txid.hex())) if x != y)
            r = await client.get(f"/v1/tx/{first.txid.hex()[:common]}")
            assert r.status_code == 400 and r.json()["error"]["code"] == "ambiguous_id"
            message = r.json()["error"]["message"]
            assert first.txid.hex()[:16] in message and second.txid.hex()[:16] in message
            r = await client.get(f"/v1/tx/{first.txid.hex()[:common + 1]}")
            assert r.status_code == 200 and r.json()["txid"] == first.txid.hex()
            height = r.json()["height"]
            block = (await client.get(f"/v1/blocks/{height}")).json()
            assert (await client.get(f"/v1/blocks/{block['hash'][:10]}")).json()["hash"] == block["hash"]
            assert (await client.get(f"/v1/anchors/{block['hash'][:10]}")).json()["block"] == block["hash"]
            r = await client.get("/v1/blocks/99")
            assert r.status_code == 404  # a short number is a height (beyond the tip), not a prefix
            r = await client.get("/v1/blocks/ab")
            assert r.status_code == 400 and "at least 4 hex digits" in r.json()["error"]["message"]
            r = await client.get("/v1/tx/12")
            assert r.status_code == 400 and "at least 4 hex digits" in r.json()["error"]["message"]
            for bad in ("\u00b2\u00b3\u2074\u2075", "9" * 5000, "f" * 65):  # unicode digits, a huge number, too long
                r = await client.get(f"/v1/blocks/{bad}")
                assert r.status_code in (400, 404) and len(r.json()["error"]["message"]) < 300, (bad[:10], r.text[:200])
            assert (await client.get(f"/v1/blocks/{'0' * 64}")).status_code == 404  # 64 digits: a hash, not a height
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_the_page_needs_no_token_its_data_does_and_the_read_token_only_reads(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        async with api_of(cluster, a, token="wrong" * 4) as anonymous:
            page = await anonymous.get("/explorer")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "<title>PeerDB explorer</title>" in page.text
            assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
            assert (await anonymous.get("/v1/explorer")).status_code == 401
        async with api_of(cluster, a, token=READ_TOKEN) as reader:
            assert (await reader.get("/v1/explorer")).status_code == 200
            assert (await reader.get("/v1/status")).status_code == 200
            r = await reader.post("/v1/write", json={"ops": [{"op": "put", "namespace": "ns", "key": "k",
                                                              "value": "v"}]})
            assert r.status_code == 401 and "only reads" in r.json()["error"]["message"]
        assert not a.engine.mempool
        await cluster.close()
        nursery.cancel_scope.cancel()
