"""The node's HTTP/1.1 server (peerdb/node/http/server.py), over real sockets on 127.0.0.1:
keep-alive, request bodies, whole and streamed answers, HEAD, 100-continue, and refusals of
what is not HTTP, each answered and none taking the server down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from peerdb.node.http.server import MAX_HEAD_BYTES, serve_http


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"method": request.method, "path": request.url.path, "query": request.url.query,
                         "bytes": len(body), "client": request.client is not None})


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"chunk{i};".encode() * 1000
            await trio.sleep(0)
    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def hello(request: Request) -> Response:
    return Response(b"hello", media_type="text/plain")  # never reads the request body


async def fail(request: Request) -> Response:
    raise RuntimeError("the app broke")


APP = Starlette(routes=[Route("/echo/{rest:path}", echo, methods=["GET", "POST"]), Route("/stream", stream),
                        Route("/hello", hello), Route("/fail", fail)])


@asynccontextmanager
async def server(app: Any = APP) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(lambda task_status: serve_http(app, "127.0.0.1:0", backlog=16, keep_alive_s=5,
                                                                   task_status=task_status))
        yield url
        nursery.cancel_scope.cancel()


async def raw_exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(data)
    out = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            out += chunk
    await stream.aclose()
    return out


async def test_requests_share_a_keep_alive_connection_and_bodies_arrive_whole() -> None:
    async with server() as url, httpx.AsyncClient(base_url=url) as client:
        r1 = await client.post("/echo/a%20b", params={"x": "1"}, content=b"z" * 300_000)
        r2 = await client.get("/echo/again")
        assert r1.status_code == 200 and r1.json() == {"method": "POST", "path": "/echo/a b", "query": "x=1",
                                                        "bytes": 300_000, "client": True}
        assert r2.json()["path"] == "/echo/again" and r1.headers["content-length"] == str(len(r1.content))


async def test_requests_whose_body_the_app_does_not_read_keep_the_connection() -> None:
    """A GET's (empty) body ends with an event of its own that the app never asks for; the
    connection must stay usable, or the client's next request on it would be reset."""
    async with server() as url:
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        answers = b""
        for i in range(3):
            await stream.send_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
            with trio.fail_after(10):
                while answers.count(b"hello") < i + 1:
                    chunk = await stream.receive_some(65536)
                    assert chunk, f"the server closed the connection after {i} answers"
                    answers += chunk
        await stream.aclose()
        assert answers.count(b"HTTP/1.1 200 OK") == 3


async def test_a_streamed_answer_is_chunked_and_complete() -> None:
    async with server() as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/stream")
        assert r.status_code == 200 and r.headers.get("transfer-encoding") == "chunked"
        assert r.content == b"".join(f"chunk{i};".encode() * 1000 for i in range(5))


async def test_head_answers_the_length_without_the_body() -> None:
    async with server() as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.head("/echo/x")
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0


async def test_an_app_failure_answers_500_and_the_server_goes_on() -> None:
    async with server() as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/fail")
        assert r.status_code == 500
        assert (await client.get("/echo/after")).status_code == 200


async def test_expect_100_continue_gets_its_interim_answer() -> None:
    async with server() as url:
        answer = await raw_exchange(url, b"POST /echo/c HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                                         b"expect: 100-continue\r\nconnection: close\r\n\r\nabc")
        assert answer.startswith(b"HTTP/1.1 100 ")
        assert b"HTTP/1.1 200 " in answer and b'"bytes":3' in answer


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n", b"431"),
    (b"POST /echo/x HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n", b"400"),
], ids=["not-http", "head-too-large", "bad-length"])
async def test_what_is_not_http_is_refused_and_the_connection_closed(request_bytes: bytes, status: bytes) -> None:
    async with server() as url:
        answer = await raw_exchange(url, request_bytes)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
        async with httpx.AsyncClient(base_url=url) as client:  # the server still serves
            assert (await client.get("/echo/ok")).status_code == 200


async def test_a_client_that_leaves_mid_request_does_not_disturb_the_others() -> None:
    async with server() as url:
        host, port = url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(b"POST /echo/x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nonly a part")
        await stream.aclose()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/echo/ok")).json()["path"] == "/echo/ok"
