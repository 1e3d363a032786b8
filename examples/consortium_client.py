"""What every example needs: find a consortium's node configs and talk to each member's API.

The examples run against any consortium whose directory holds ``consortium.toml`` and one node
config per member (what ``peerdb consortium init`` writes, and what ``peerdb demo --keep-running
--workdir DIR`` leaves in ``DIR/consortium``). Each member is reached the way that firm's own
applications reach it: over HTTP at its ``api.listen`` address with its ``api.token``.

Only the documented client API (docs/api.md) is used, so the examples double as API samples.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from peerdb.consortium_file import load_consortium
from peerdb.core.consortium import Consortium
from peerdb.core.errors import ConfigError
from peerdb.node.config import NodeConfig, load_node_config

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_CHECK_FAILED = 4
"""Same numbers as the ``peerdb`` CLI: 3 node unreachable, 4 a verification failed."""

POLL_S = 0.2
"""Pause between status polls while waiting for a head to move."""
HTTP_SLACK_S = 10.0
"""Extra seconds the HTTP client waits beyond a ``--wait`` the node itself bounds."""


class ExampleError(Exception):
    """A failure worth one clear line for the person running the example."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NodeRefused(ExampleError):
    """The node answered with ``{"error": {"code", "message"}}``."""

    def __init__(self, member: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{member}'s node refused ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.reason = message


@dataclass
class Member:
    """One member firm's node, as its own applications see it."""

    name: str
    config: NodeConfig
    http: httpx.Client

    def request(self, method: str, path: str, *, timeout: float = 30.0, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, timeout=timeout, **kwargs)
        except httpx.TransportError as exc:
            raise ExampleError(f"cannot reach {self.name}'s node at {self.config.api_listen} ({exc}); "
                               f"is the consortium running? (peerdb demo --keep-running --workdir DIR)",
                               EXIT_UNREACHABLE) from None
        try:
            body = response.json()
        except ValueError:
            raise ExampleError(f"{self.name}'s node answered {response.status_code} {response.text[:200]!r}") from None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise NodeRefused(self.name, response.status_code, str(error.get("code", "?")),
                              str(error.get("message", response.text)))
        if not isinstance(body, dict):
            raise ExampleError(f"{self.name}'s node answered with unexpected JSON: {body!r}")
        return body

    def write(self, ops: list[dict[str, Any]], wait: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        """POST /v1/write: the node signs one atomic transaction with the firm's client key."""
        body: dict[str, Any] = {"ops": ops}
        if wait:
            body.update(wait=wait, timeout_s=timeout_s)
        return self.request("POST", "/v1/write", json=body, timeout=timeout_s + HTTP_SLACK_S)

    def get(self, namespace: str, key: str, view: str = "majority", at: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"view": view}
        if at is not None:
            params["at"] = at
        return self.request("GET", f"/v1/kv/{namespace}/{key}", params=params)

    def history(self, namespace: str, key: str) -> list[dict[str, Any]]:
        versions: list[dict[str, Any]] = self.request("GET", f"/v1/history/{namespace}/{key}")["versions"]
        return versions

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def head(self, view: str) -> int:
        height: int = self.status()["heads"][view]
        return height

    def wait_head(self, view: str, height: int, timeout: float) -> int:
        """Poll until this member's head in ``view`` reaches ``height``; returns the head.

        Signatures travel by gossip, so another member learns that a block is fully signed a
        moment after the member that accepted the write."""
        deadline = time.monotonic() + timeout
        while True:
            head = self.head(view)
            if head >= height:
                return head
            if time.monotonic() > deadline:
                raise ExampleError(f"{self.name}'s {view} head is {head}, still below {height} after {timeout} s")
            time.sleep(POLL_S)

    def block(self, ref: int | str) -> dict[str, Any]:
        return self.request("GET", f"/v1/blocks/{ref}")

    def blocks(self, start: int, end: int) -> list[dict[str, Any]]:
        """Block summaries of the best chain from ``start`` to ``end``, paging as the API requires."""
        out: list[dict[str, Any]] = []
        while start <= end:
            page = self.request("GET", "/v1/blocks", params={"from": start, "to": end})["blocks"]
            if not page:
                break
            out.extend(page)
            start = page[-1]["height"] + 1
        return out

    def close(self) -> None:
        self.http.close()


@dataclass
class ConsortiumDir:
    directory: Path
    consortium: Consortium
    members: dict[str, Member]
    """In the consortium file's order (the turn order), for the members whose config is here."""

    def member(self, name: str) -> Member:
        if name not in self.members:
            raise ExampleError(f"no node config for member {name!r} in {self.directory} "
                               f"(have: {', '.join(self.members) or 'none'})")
        return self.members[name]

    def close(self) -> None:
        for member in self.members.values():
            member.close()


def open_consortium(directory: str | Path) -> ConsortiumDir:
    """Read ``consortium.toml`` and every member's node config in ``directory``.

    A ``peerdb demo`` work directory is accepted too: its consortium lives in ``DIR/consortium``.
    """
    path = Path(directory)
    if not (path / "consortium.toml").exists() and (path / "consortium" / "consortium.toml").exists():
        path = path / "consortium"
    try:
        consortium = load_consortium(path / "consortium.toml")
    except ConfigError as exc:
        raise ExampleError(f"{exc} (pass --dir with the directory `peerdb consortium init` wrote)") from None
    configs: dict[str, NodeConfig] = {}
    for file in sorted(path.glob("*.toml")):
        if file.name == "consortium.toml":
            continue
        try:
            cfg = load_node_config(file)
        except ConfigError as exc:
            raise ExampleError(str(exc)) from None
        if cfg.consortium_file.resolve() != (path / "consortium.toml").resolve():
            continue  # a node config of some other consortium
        if cfg.api_listen.endswith(":0"):
            raise ExampleError(f"{file}: api.listen {cfg.api_listen!r} has no fixed port; the examples need one")
        configs[cfg.member] = cfg
    members = {}
    for name in consortium.member_names:
        if name in configs:
            cfg = configs[name]
            members[name] = Member(name, cfg, httpx.Client(base_url=f"http://{cfg.api_listen}",
                                                           headers={"Authorization": f"Bearer {cfg.api_token}"}))
    if not members:
        raise ExampleError(f"{path}: no member node configs found next to consortium.toml")
    return ConsortiumDir(path, consortium, members)


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, metavar="CONSORTIUM_DIR",
                        help="directory with consortium.toml and the members' node configs "
                             "(or a `peerdb demo --workdir` directory)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for each write to reach its view (default 60)")
    return parser


def run_main(main: Any) -> None:
    """Run ``main()`` and turn an :class:`ExampleError` into one line and an exit code."""
    try:
        code = main()
    except ExampleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code or 0)
