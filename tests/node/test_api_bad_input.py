"""No request makes the API answer 500 or stop the node: bad input gets a 4xx naming the problem.

The named cases once answered 500 (genesis as a block, a 64-digit numeric block reference, a
timeout of 400 digits, JSON nested 100,000 deep) or could not be read back (a key with a line
break). A Hypothesis run then throws random paths, parameters and bodies at every documented
endpoint and checks that every answer is below 500 and the node still answers afterwards.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerdb.node.http import Api
from tests.helpers.node_harness import Cluster

TOKEN = "t" * 32


@pytest.fixture
async def api(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> AsyncIterator[tuple[httpx.AsyncClient, Cluster]]:
    cluster = Cluster(tmp_path, names=("firm-a", "firm-b"))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        node = cluster.nodes["firm-a"]
        app = Api(node.service, TOKEN, cluster.client_keys["firm-a"])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            yield client, cluster
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_the_genesis_block_is_a_block(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, cluster = api
    r = await client.get("/v1/blocks/0")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["height"] == 0 and body["hash"] == cluster.cid.hex() and body["txs"] == []


@pytest.mark.parametrize("path, code", [
    ("/v1/blocks/" + "1" * 64, 404),             # 64 digits: a hash (of no block), not a height
    ("/v1/blocks/" + "9" * 30, 404),             # beyond the tip: read as a hash prefix, of no block
    ("/v1/anchors/" + "9" * 30, 404),
    ("/v1/blocks/" + "9" * 65, 400),             # longer than a hash
    ("/v1/blocks?from=" + "9" * 400, 400),
    ("/v1/kv/books/x?at=" + "9" * 400, 400),
    ("/v1/kv/books?limit=-1", 400),
    ("/v1/blocks/%E2%91%A0", 400),               # a digit that is not ASCII
])
async def test_bad_references_are_refused_not_crashed(api: tuple[httpx.AsyncClient, Cluster], path: str,
                                                       code: int) -> None:
    client, _ = api
    r = await client.get(path)
    assert r.status_code == code, r.text
    assert r.json()["error"]["message"]


async def test_a_huge_timeout_is_a_bad_parameter(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    body = '{"ops": [{"namespace": "books", "key": "k", "value": "v"}], "wait": "majority", "timeout_s": ' \
           + "9" * 400 + "}"
    r = await client.post("/v1/write", content=body)
    assert r.status_code == 400 and "timeout_s" in r.json()["error"]["message"]


async def test_json_nested_too_deep_is_bad_json(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    r = await client.post("/v1/write", content="[" * 100_000 + "]" * 100_000)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"


async def test_a_key_with_a_line_break_can_be_read_back(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    key = "line one\nline two/and a slash"
    r = await client.post("/v1/write", json={"ops": [{"namespace": "books", "key": key, "value": "v"}],
                                             "wait": "majority"})
    assert r.status_code == 200, r.text
    quoted = urllib.parse.quote(key, safe="/")  # %0A: what a client sends for the line break
    got = await client.get("/v1/kv/books/" + quoted)
    assert got.status_code == 200 and got.json()["key"] == key and got.json()["value_text"] == "v"
    history = await client.get("/v1/history/books/" + quoted)
    assert history.status_code == 200 and len(history.json()["versions"]) == 1


# --- fuzz -----------------------------------------------------------------------------------------

texts = st.one_of(st.text(max_size=30), st.sampled_from(["0", "-1", "9" * 25, "ff" * 32, "1" * 64, "", "%00",
                                                          "tentative", "unanimous", "../..", "\n", "é"]))
GETS = ["/v1/status", "/v1/alerts", "/v1/peers", "/v1/evidence", "/v1/objections", "/v1/anchors",
        "/v1/consortium", "/v1/governance", "/v1/blocks"]
GET_TEMPLATES = ["/v1/tx/{}", "/v1/kv/{}", "/v1/kv/books/{}", "/v1/history/books/{}", "/v1/blocks/{}",
                 "/v1/anchors/{}", "/v1/governance/{}", "/v1/namespaces/{}/readers"]
PARAMS = ["view", "at", "from", "to", "limit", "prefix", "after"]
POSTS = ["/v1/write", "/v1/txs", "/v1/governance/propose", "/v1/governance/vote"]
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=20)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries({"ops": json_values}, optional={"wait": texts, "timeout_s": json_values}).map(json.dumps),
    st.fixed_dictionaries({"txs": st.lists(st.one_of(texts, json_values), max_size=3)}).map(json.dumps),
    st.fixed_dictionaries({"kind": texts}, optional={"name": texts, "proposal": texts, "approve": json_values,
                                                     "members": json_values, "params": json_values}).map(json.dumps),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
requests = st.one_of(
    st.tuples(st.just("GET"), st.sampled_from(GETS), st.dictionaries(st.sampled_from(PARAMS), texts, max_size=3),
              st.none()),
    st.tuples(st.just("GET"), st.builds(lambda t, v: t.format(v), st.sampled_from(GET_TEMPLATES), texts),
              st.dictionaries(st.sampled_from(PARAMS), texts, max_size=3), st.none()),
    st.tuples(st.just("POST"), st.sampled_from(POSTS), st.just({}), bodies),
)


async def test_no_request_ever_answers_500(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    seen: list[tuple[str, str, int]] = []

    @settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
              deadline=None)
    @given(st.lists(requests, min_size=1, max_size=4))
    def batch(reqs: list[tuple[str, str, dict[str, str], str | None]]) -> None:
        seen.extend((method, path, 0) for method, path, _p, _b in reqs)
        pending.append(reqs)

    pending: list[list[tuple[str, str, dict[str, str], str | None]]] = []
    batch()  # draw the examples (Hypothesis runs synchronously); send them below, in trio
    for reqs in pending:
        for method, path, params, body in reqs:
            try:
                url = httpx.URL(path)
            except (httpx.InvalidURL, ValueError):
                continue  # not even a URL a client could send
            r = await client.request(method, url, params=params, content=body)
            assert r.status_code < 500, f"{method} {path} {params} {body!r}: {r.status_code} {r.text}"
            assert r.status_code < 400 or r.headers.get("content-type", "").startswith("application/json"), \
                f"{method} {path} {params} {body!r}: {r.status_code} {r.headers} {r.text!r}"
    assert seen
    status = await client.get("/v1/status")
    assert status.status_code == 200  # the node still runs and answers
