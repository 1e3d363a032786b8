"""`peerdb node run`: build every component from the node config and run them in one nursery.

A component that crashes cancels the nursery and stops the node with the error: a node that
silently lost its network or its anchoring would be worse than a stopped one. SIGINT/SIGTERM
cancel the nursery; an engine call in progress runs to the end of its LMDB transaction first
(worker threads are not abandoned), so shutdown never leaves a half-applied write.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ..core.alerts import Alert
from ..core.consortium import Consortium
from ..core.errors import ConfigError
from ..core.keys import SigningKey
from ..core.model import consortium_id
from ..net.peers import PeerNetwork
from ..net.tls import TlsMember, TlsTransport
from ..store import Store
from .anchoring import AnchorBook, NodeAnchoring
from .api import Api
from .config import NodeConfig, load_node_config
from .engine import Engine
from .service import NodeService, wall_clock_ms

log = logging.getLogger("peerdb.node")

API_BACKLOG = 1024
"""Pending client connections the API accepts; applications open hundreds of connections."""
API_KEEP_ALIVE_S = 120
"""Idle keep-alive connections are kept this long, so a client reusing a pooled connection does
not race the server closing it (hypercorn's default is 5 s)."""


class _JsonishFormatter(logging.Formatter):
    """One line per event: time, level, component, message (structured fields are in the message)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", " | ")


def setup_logging(level: str, member: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonishFormatter(f"%(asctime)s %(levelname)s {member} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


def task_tree() -> str:
    """The trio task tree with each task's innermost frames: what `kill -USR1 <pid>` logs."""
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        frames = []
        coro: Any = task.coro
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            frames.append(f"{coro.cr_frame.f_code.co_name}:{coro.cr_frame.f_lineno}")
            coro = coro.cr_await
        lines.append("  " * depth + f"{task.name}  {' > '.join(frames[-5:])}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)
    root = trio.lowlevel.current_root_task()
    if root is not None:
        walk(root, 0)
    return "\n".join(lines)


async def _dump_on_usr1() -> None:
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            for line in task_tree().splitlines():
                log.warning("task: %s", line)


def run_daemon(config_path: str, *, accept_restored: bool = False) -> None:
    cfg = load_node_config(config_path)
    setup_logging(cfg.log_level, cfg.member)
    consortium = cfg.load_consortium()
    key = cfg.load_key(consortium)
    trio.run(run_node, cfg, consortium, key, accept_restored)


def tls_members(consortium: Consortium) -> list[TlsMember]:
    members = []
    for m in consortium.members:
        if m.cert is None:
            raise ConfigError(f"member {m.name}: no TLS certificate ('cert') in the consortium file; "
                              f"regenerate it with `peerdb consortium init` or add the member's certificate")
        host, port = m.host_port
        members.append(TlsMember(m.name, m.key, m.cert, host, port))
    return members


async def alert_sink(cfg: NodeConfig) -> Callable[[Alert], Any]:
    async def send(alert: Alert) -> None:
        payload = {"member": cfg.member, "kind": alert.kind, "message": alert.message, "subject": alert.subject}
        if cfg.alert_webhook:
            import httpx
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    await client.post(cfg.alert_webhook, json=payload)
            except httpx.HTTPError as exc:
                log.warning("alert webhook %s failed: %s", cfg.alert_webhook, exc)
        if cfg.alert_command:
            try:
                await trio.run_process(cfg.alert_command, shell=True, stdin=json.dumps(payload).encode(),
                                       check=False)
            except OSError as exc:
                log.warning("alert command failed: %s", exc)
    return send


async def run_node(cfg: NodeConfig, consortium: Consortium, key: SigningKey, accept_restored: bool,
                   *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    cid = consortium_id(consortium)
    store = Store.open(cfg.data_dir, consortium, cfg.member, sync=cfg.sync, accept_restored=accept_restored)
    try:
        engine = Engine(consortium, cfg.member, key, store, wall_clock_ms(), mempool_max=cfg.mempool_max_txs)
        transport = TlsTransport(cfg.member, key.seed, tls_members(consortium), listen=cfg.listen_address(consortium))
        network = PeerNetwork(cfg.member, consortium.member_names, cid, transport)
        extras: dict[str, Callable[[], Any]] = {}
        service = NodeService(engine, network, offload=True, on_alert=await alert_sink(cfg))
        anchoring = None
        if cfg.bitcoin is not None:
            anchoring = NodeAnchoring(service, cfg, consortium)
            extras["anchoring"] = anchoring.status_dict
            service.anchor_handler = anchoring.book.on_anchor_message
            service.extra_status = anchoring.alert_conditions
        else:
            log.warning("no [bitcoin] section: this member verifies anchor proofs offline and anchors nothing")
            service.anchor_handler = AnchorBook(engine, check_pow=False, rpc=None).on_anchor_message
        api = Api(service, cfg.api_token, cfg.load_client_key(), extras)
        hconfig = HypercornConfig()
        hconfig.bind = [cfg.api_listen]
        hconfig.accesslog = None
        hconfig.backlog = API_BACKLOG
        hconfig.keep_alive_timeout = API_KEEP_ALIVE_S
        hconfig.errorlog = logging.getLogger("hypercorn.error")
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_dump_on_usr1)
            await nursery.start(service.run)
            if anchoring is not None:
                await nursery.start(anchoring.run)
            serve_api = functools.partial(hypercorn_serve, api, hconfig, shutdown_trigger=stop.wait)
            bound = await nursery.start(serve_api)
            log.info("client API listening on %s", bound if bound else cfg.api_listen)
            task_status.started(service)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    stop.set()
                    nursery.cancel_scope.cancel()
                    break
    finally:
        store.close()
        log.info("node %s stopped; store closed", cfg.member)
