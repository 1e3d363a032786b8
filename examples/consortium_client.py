"""What every example needs: find a consortium's node configs and talk to each member's API.

The examples run against any consortium whose directory holds ``consortium.toml`` and one node
config per member (what ``peerdb consortium init`` writes, and what ``peerdb demo --keep-running
--workdir DIR`` leaves in ``DIR/consortium``). Each member is reached the way that firm's own
applications reach it: with PeerDB's client library (:class:`peerdb.client.NodeClient`) at its
``api.listen`` address with its ``api.token``. Their command lines are click commands, in the
style of the ``peerdb`` command itself (:func:`example_command`).

Only the documented client API (docs/api.md) is used, so the examples double as API samples.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from peerdb.client import NodeClient, NodeError, NodeRefused, NodeUnreachable, SyncStream, TxSigner
from peerdb.consortium_file import load_consortium
from peerdb.core.consortium import Consortium
from peerdb.core.errors import ConfigError
from peerdb.node.config import NodeConfig, load_node_config

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_CHECK_FAILED = 4
"""Same numbers as the ``peerdb`` CLI: 3 node unreachable, 4 a verification failed."""

__all__ = ["EXIT_CHECK_FAILED", "ConsortiumDir", "ExampleError", "Member", "NodeRefused", "example_command",
           "open_consortium"]


class ExampleError(click.ClickException):
    """A failure worth one clear line for the person running the example, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        vars(self)["exit_code"] = exit_code  # click exits with it


@dataclass
class Member:
    """One member firm's node, as its own applications see it: the client library's
    :class:`NodeClient`, named for the firm, with its failures said in the firm's name."""

    name: str
    config: NodeConfig
    node: NodeClient

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NodeUnreachable as exc:
            raise ExampleError(f"cannot reach {self.name}'s node at {self.config.api_listen} ({exc}); "
                               f"is the consortium running? (peerdb demo --keep-running --workdir DIR)",
                               EXIT_UNREACHABLE) from None
        except NodeRefused:
            raise  # the caller may expect it (a forged write); otherwise it is reported as an error
        except NodeError as exc:
            raise ExampleError(f"{self.name}'s node: {exc}") from None
        except TimeoutError as exc:
            raise ExampleError(f"{self.name}: {exc}") from None

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self.node.request, method, path, **kwargs)
        return result

    def write(self, ops: list[dict[str, Any]], wait: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        """POST /v1/write: the node signs one atomic transaction with the firm's client key."""
        result: dict[str, Any] = self._call(self.node.write, ops, wait, timeout_s)
        return result

    def get(self, namespace: str, key: str, view: str = "majority", at: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self.node.read, namespace, key, view, at)
        return result

    def history(self, namespace: str, key: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(self.node.history, namespace, key)
        return result

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self.node.status)
        return result

    def head(self, view: str) -> int:
        result: int = self._call(self.node.head, view)
        return result

    def wait_head(self, view: str, height: int, timeout: float) -> int:
        """Poll until this member's head in ``view`` reaches ``height``; returns the head."""
        result: int = self._call(self.node.wait_head, view, height, timeout)
        return result

    def block(self, ref: int | str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self.node.block, ref)
        return result

    def blocks(self, start: int, end: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call(self.node.blocks, start, end)
        return result

    def stream(self, views: tuple[str, ...], timeout_s: float) -> SyncStream:
        """A write stream to this member's node (docs/stream.md), signing with the firm's client
        key from its node config: for writing at rate, many transactions in flight."""
        try:
            signer = TxSigner.from_node_config(self.config.path)
        except ConfigError as exc:
            raise ExampleError(str(exc)) from None
        stream: SyncStream = self._call(SyncStream, self.node.url, self.node.token, views=views, timeout_s=timeout_s,
                                        signer=signer)
        return stream

    def close(self) -> None:
        self.node.close()


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
            members[name] = Member(name, cfg, NodeClient(f"http://{cfg.api_listen}", cfg.api_token))
    if not members:
        raise ExampleError(f"{path}: no member node configs found next to consortium.toml")
    return ConsortiumDir(path, consortium, members)


def example_command(fn: Callable[..., int | None]) -> click.Command:
    """The example's command line, in the ``peerdb`` command's style (click): ``--dir`` and
    ``--timeout`` for every example, the example's own options on ``fn``; ``fn(net, timeout,
    **options)`` gets the open consortium and returns the exit code. A refusal nobody expected
    is one line and exit 1; the consortium's connections are closed at the end."""
    @click.option("--dir", "directory", required=True, metavar="CONSORTIUM_DIR",
                  help="Directory with consortium.toml and the members' node configs (or a `peerdb demo "
                       "--workdir` directory).")
    @click.option("--timeout", type=float, default=60.0, show_default=True,
                  help="Seconds to wait for each write to reach its view.")
    @functools.wraps(fn)
    def run(directory: str, timeout: float, **options: Any) -> None:
        net = open_consortium(directory)
        try:
            code = fn(net, timeout, **options)
        except NodeRefused as exc:
            raise ExampleError(f"a node refused: {exc}") from None
        finally:
            net.close()
        sys.exit(code or 0)
    return click.command(help=fn.__doc__, context_settings={"max_content_width": 100})(run)
