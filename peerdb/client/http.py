"""A client of one node's HTTP API (docs/api.md), for a firm's applications, scripts and tools.

The ``peerdb`` command talks to its node through this client, and so do the examples in
``examples/``: it knows the API's error shape and turns it into :class:`NodeRefused` (status,
code, message), a node that does not answer into :class:`NodeUnreachable`, and reads a node
config (``api.listen``, ``api.token``, or the auditor token) so that callers never handle
tokens themselves::

    from peerdb.client import NodeClient
    with NodeClient.from_config("/etc/peerdb/firm-a.toml") as node:
        node.write([{"op": "put", "namespace": "books", "key": "2026-Q3", "value": "..."}], wait="majority")
        print(node.read("books", "2026-Q3")["value_text"])
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..core.errors import ConfigError

DEFAULT_TIMEOUT_S = 30.0
"""Seconds one request may take unless the call says otherwise."""
WAIT_SLACK_S = 10.0
"""How much longer than a write's ``timeout_s`` its HTTP request may take: the node answers when
the write reached the view or the timeout passed, and the answer must still arrive."""
POLL_S = 0.2
"""Pause between status reads while :meth:`NodeClient.wait_head` waits for a head to move."""


class NodeError(Exception):
    """The node could not be asked, or said no."""


class NodeUnreachable(NodeError):
    """Nothing answered at the API address (the node is not running, or another address)."""


class NodeRefused(NodeError):
    """The node answered with an error: HTTP ``status``, the API's ``code`` and ``reason``."""

    def __init__(self, url: str, status: int, code: str | None, reason: str) -> None:
        super().__init__(f"{url}: {status} {code or 'error'}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason


def node_config_endpoint(path: str | Path, *, audit: bool = False) -> tuple[str, str]:
    """(API URL, token) of a node config; ``audit``: the auditor token. ConfigError if the
    config has none, or a port the client cannot know (0: any free port)."""
    from ..node.config import load_node_config
    cfg = load_node_config(path)
    if cfg.api_listen.endswith(":0"):
        raise ConfigError(f"{path}: api.listen is {cfg.api_listen} (any free port): the node logs the port it got "
                          "('client API listening on ...'); pass the address, or set a fixed port in api.listen")
    token = cfg.api_audit_token if audit else cfg.api_token
    if token is None:
        raise ConfigError(f"{path}: no api.audit_token: audit export takes the auditor token, not the application "
                          "token; set api.audit_token in the node config (and restart the node)")
    return f"http://{cfg.api_listen}", token


@dataclass
class NodeClient:
    """One node's API at ``url`` (``http://host:port``) with a bearer ``token``."""

    url: str
    token: str
    timeout: float = DEFAULT_TIMEOUT_S
    _http: httpx.Client | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, path: str | Path, *, audit: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> "NodeClient":
        url, token = node_config_endpoint(path, audit=audit)
        return cls(url, token, timeout)

    def __post_init__(self) -> None:
        if not self.url.startswith("http"):
            self.url = f"http://{self.url}"
        self.url = self.url.rstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def http(self) -> httpx.Client:
        """One connection pool for the client's requests."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """The JSON object the node answers; :class:`NodeRefused` for an error answer."""
        try:
            response = self.http.request(method, path, json=json, params=params, timeout=timeout or self.timeout)
        except httpx.TransportError as exc:
            raise NodeUnreachable(f"cannot reach the node at {self.url} ({exc.__class__.__name__}: {exc})") from None
        try:
            body = response.json()
        except ValueError:
            raise NodeError(f"the node at {self.url} answered {response.status_code} with a body that is not "
                            "JSON") from None
        if response.status_code >= 400:
            raise refused(self.url, response.status_code, body, response.text)
        if not isinstance(body, dict):
            raise NodeError(f"the node at {self.url} answered with an unexpected JSON shape")
        return body

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.request("POST", path, json=body, timeout=timeout)

    @contextmanager
    def stream(self, path: str, *, read_timeout: float) -> Iterator[httpx.Response]:
        """A streamed GET (read the body in chunks); ``read_timeout`` bounds the pause between
        two chunks."""
        try:
            with httpx.stream("GET", self.url + path, headers=self.headers,
                              timeout=httpx.Timeout(self.timeout, read=read_timeout)) as response:
                yield response
        except httpx.TransportError as exc:
            raise NodeUnreachable(f"cannot reach the node at {self.url}, or it stopped sending "
                                  f"({exc.__class__.__name__}: {exc})") from None

    # --- the API's operations (docs/api.md) ------------------------------------------------------

    def write(self, ops: list[dict[str, Any]], wait: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        """``POST /v1/write``: the node signs one atomic transaction of ``ops`` with the firm's
        client key; with ``wait`` it answers once the write is in that view (or ``timeout_s``)."""
        body: dict[str, Any] = {"ops": ops}
        if wait:
            body.update(wait=wait, timeout_s=timeout_s)
        return self.post("/v1/write", body, timeout=timeout_s + WAIT_SLACK_S)

    def read(self, namespace: str, key: str, view: str = "majority", at: int | None = None) -> dict[str, Any]:
        """``GET /v1/kv/{namespace}/{key}`` in ``view``, optionally as of height ``at``."""
        return self.get(f"/v1/kv/{namespace}/{key}", view=view, at=at)

    def history(self, namespace: str, key: str) -> list[dict[str, Any]]:
        versions: list[dict[str, Any]] = self.get(f"/v1/history/{namespace}/{key}")["versions"]
        return versions

    def tx(self, txid: str) -> dict[str, Any]:
        return self.get(f"/v1/tx/{txid}")

    def status(self) -> dict[str, Any]:
        return self.get("/v1/status")

    def head(self, view: str) -> int:
        height: int = self.status()["heads"][view]
        return height

    def wait_head(self, view: str, height: int, timeout: float) -> int:
        """Poll until this node's head in ``view`` reaches ``height``; returns the head, or
        raises TimeoutError. (Signatures travel by gossip: another member learns that a block
        is fully signed a moment after the member that accepted the write.)"""
        deadline = time.monotonic() + timeout
        while True:
            head = self.head(view)
            if head >= height:
                return head
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: the {view} head is {head}, still below {height} after {timeout} s")
            time.sleep(POLL_S)

    def block(self, ref: int | str) -> dict[str, Any]:
        return self.get(f"/v1/blocks/{ref}")

    def blocks(self, start: int, end: int) -> list[dict[str, Any]]:
        """Block summaries of the best chain from ``start`` to ``end``, page by page."""
        out: list[dict[str, Any]] = []
        while start <= end:
            page = self.get("/v1/blocks", **{"from": start, "to": end})["blocks"]
            if not page:
                break
            out.extend(page)
            start = page[-1]["height"] + 1
        return out


def refused(url: str, status: int, body: Any, text: str) -> NodeRefused:
    """The error for the node's error answer ``{"error": {"code", "message"}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return NodeRefused(url, status, str(code) if code is not None else None, str(error.get("message", text)))
    return NodeRefused(url, status, None, text)
