"""`peerdb node run`: build every component from the node config and run them in one nursery.

A component that crashes cancels the nursery and stops the node with the error: a node that
silently lost its network or its anchoring would be worse than a stopped one. SIGINT/SIGTERM
cancel the nursery; an engine call in progress runs to the end of its LMDB transaction first
(worker threads are not abandoned), so shutdown never leaves a half-applied write. A node whose
member was removed from the consortium says so (status, the ``removed`` alert, its hooks) and
stops with :class:`~.identity.MemberRemoved`.
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

from ..core.consortium import Consortium, parse_address
from ..core.errors import ConfigError, DecodeError, PeerDBError
from ..core.keys import SigningKey
from ..core.model import consortium_id
from ..net.certs import certificate_public_key, member_certificate
from ..net.peers import PeerNetwork
from ..net.tls import TlsMember, TlsTransport
from ..store import Store
from .alerts import REMOVED, AlertEvent
from .anchoring import AnchorBook, NodeAnchoring
from .http import Api
from .http.monitor import MonitorApp
from .metrics import NodeMetrics
from .config import NodeConfig, load_node_config
from .engine import Engine
from .identity import MemberRemoved
from .service import ALERT_HOOK_TIMEOUT_S, NodeService, wall_clock_ms
from ..stream_frames import MAX_FRAME_BYTES as STREAM_MAX_FRAME_BYTES

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


class JsonLogFormatter(logging.Formatter):
    """``[log] format = "json"``: one JSON object per line with the text line's fields (``time``,
    ``level``, ``member``, ``component``, ``message``), plus the ``fields`` a log call passes in
    ``extra`` (an alert's event, kind, subject, duration) and ``error`` with a traceback."""

    def __init__(self, member: str) -> None:
        super().__init__()
        self.member = member

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "member": self.member,
                                "component": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, member: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter(member))
    else:
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


def http_config(listen: str) -> HypercornConfig:
    """Hypercorn's settings for one of the node's HTTP listeners (the API, the metrics)."""
    hconfig = HypercornConfig()
    hconfig.bind = [listen]
    hconfig.accesslog = None
    hconfig.backlog = API_BACKLOG
    hconfig.keep_alive_timeout = API_KEEP_ALIVE_S
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    # The write stream refuses a frame over MAX_FRAME_BYTES with an error frame; one over twice
    # that is cut off by hypercorn itself (close 1009) before it is buffered whole.
    hconfig.websocket_max_message_size = 2 * STREAM_MAX_FRAME_BYTES
    return hconfig


def run_daemon(config_path: str, *, accept_restored: bool = False) -> None:
    cfg = load_node_config(config_path)
    setup_logging(cfg.log_level, cfg.member, cfg.log_format)
    consortium = cfg.load_consortium()
    keys = cfg.load_keys(consortium)
    try:
        trio.run(run_node, cfg, consortium, keys, accept_restored)
    except BaseExceptionGroup as group:
        # A component failed inside the nursery: report our own error (a full disk, a corrupt
        # store, a bad config) by itself, not wrapped in the nursery's group.
        cause = first_peerdb_error(group)
        if cause is None:
            raise
        log.error("node %s stopping: %s", cfg.member, cause)
        raise cause from None


def first_peerdb_error(group: BaseExceptionGroup[BaseException]) -> PeerDBError | None:
    for exc in group.exceptions:
        if isinstance(exc, PeerDBError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_peerdb_error(exc)
            if found is not None:
                return found
    return None


def tls_members(consortium: Consortium) -> list[TlsMember]:
    members = []
    for m in consortium.members:
        if m.cert is None:
            raise ConfigError(f"member {m.name}: no TLS certificate ('cert') in the consortium file; "
                              f"regenerate it with `peerdb consortium init` or add the member's certificate")
        host, port = m.host_port
        members.append(TlsMember(m.name, m.key, m.cert, host, port))
    return members


def joining_member(cfg: NodeConfig, key: SigningKey) -> TlsMember:
    """A joining member's own entry before its node has seen the admission: its certificate
    is made from its key (the same bytes it gave in the add_member proposal)."""
    if cfg.listen is None:
        raise ConfigError(f"{cfg.path}: node.listen is required with node.joining (the consortium file "
                          f"has no address for {cfg.member}): give the address proposed for it")
    host, port = parse_address(cfg.listen, "node.listen")
    return TlsMember(cfg.member, key.public, member_certificate(key.seed, cfg.member), host, port)


def trusted_members(engine: Engine, pairs: tuple[tuple[str, bytes], ...]) -> list[TlsMember]:
    """The TLS entries for :meth:`Engine.network_members`: the member entry carrying each key
    (a rotation's new key and certificate come from the proposal)."""
    height = engine.tree.best_tip.height + 1
    now, latest = engine.gov.at(height), engine.gov.latest()
    entries = {(m.name, m.key): m for c in (now, latest) for m in c.members}
    out = []
    for name, key in pairs:
        m = entries[(name, key)]
        problem = "no certificate" if m.cert is None else None
        if m.cert is not None:
            try:
                if certificate_public_key(m.cert) != key:
                    problem = "a certificate that does not carry its key"
            except DecodeError as exc:
                problem = f"an unreadable certificate ({exc})"
        if problem is not None or m.cert is None:
            log.error("member %s: key %s has %s on chain; its node cannot connect over TLS until an "
                      "update_member vote gives its certificate", name, key.hex()[:16], problem)
            continue
        where = latest.member(name) or m  # the address most recently agreed
        host, port = where.host_port
        out.append(TlsMember(name, key, m.cert, host, port))
    return out


def check_keys(cfg: NodeConfig, engine: Engine) -> None:
    """Refuse to start with keys this member never had; say plainly when it waits for its
    admission or holds no key for the next height."""
    history = {k for _h, k in engine.gov.key_history(cfg.member) if k is not None}
    if not history:
        if cfg.joining:
            log.warning("%s is not a member on this node's chain yet (height %d): it catches up from the members "
                        "and takes part once its add_member proposal has taken effect", cfg.member,
                        engine.tree.best_tip.height)
            return
        raise ConfigError(f"{cfg.member} is not a member of this chain")
    if not history & set(engine.keyring):
        raise ConfigError(f"{cfg.path}: none of the configured keys ({', '.join(k.hex()[:16] for k in engine.keyring)}) "
                          f"has ever been {cfg.member}'s member key on this chain")
    problem = engine.key_problem()
    if problem is not None:
        log.error("%s", problem)


def alert_payload(member: str, event: AlertEvent) -> dict[str, Any]:
    """What the webhook and the command receive: the member, the alert (kind, message, subject)
    and the event (``raised`` or ``cleared``, when, and for ``cleared`` how long it lasted)."""
    return {"member": member, **event.fields()}


async def alert_sink(cfg: NodeConfig) -> Callable[[AlertEvent], Any]:
    async def send(event: AlertEvent) -> None:
        payload = alert_payload(cfg.member, event)
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


REMOVAL_CHECK_S = 1.0
"""How often the daemon looks whether its member was removed (a cheap read of the governance
state; a removal is known blocks before it takes effect)."""


async def watch_removal(service: NodeService, announced: trio.Event) -> None:
    """Stop the node once its member's removal is in force: after the ``removed`` alert went to
    the hooks (or could not within their time), raise :class:`MemberRemoved`."""
    engine = service.engine
    while True:
        height = await service.read(engine.removed_at)
        if height is not None:
            break
        await trio.sleep(REMOVAL_CHECK_S)
    log.error("%s was removed from the consortium at height %d: stopping", engine.me, height)
    with trio.move_on_after(ALERT_HOOK_TIMEOUT_S + 2 * engine.params.heartbeat_ms / 1000):
        await announced.wait()
    raise MemberRemoved(f"{engine.me} was removed from the consortium at height {height}; its node takes no part "
                        "any more (the data directory keeps the books up to then)")


async def run_node(cfg: NodeConfig, consortium: Consortium, keys: list[SigningKey],
                   accept_restored: bool, *, task_status: Any = trio.TASK_STATUS_IGNORED,
                   engine_class: type[Engine] = Engine, network_class: type[PeerNetwork] = PeerNetwork) -> None:
    """Run one member's node until SIGINT/SIGTERM; ``task_status.started`` gets the service.

    ``engine_class`` and ``network_class`` are the seams a test harness uses to run a member
    that misbehaves (``tests/helpers/hostile.py``); ``peerdb node run`` never passes them."""
    cid = consortium_id(consortium)
    store = Store.open(cfg.data_dir, consortium, cfg.member, sync=cfg.sync, accept_restored=accept_restored,
                       joining=cfg.joining)
    try:
        engine = engine_class(consortium, cfg.member, keys, store, wall_clock_ms(), mempool_max=cfg.mempool_max_txs,
                              idle_block_ms=cfg.idle_block_s * 1000)
        check_keys(cfg, engine)
        other_seeds = [k.seed for k in keys]

        def trust_list(pairs: tuple[tuple[str, bytes], ...], starting: bool = False) -> list[TlsMember]:
            trusted = trusted_members(engine, pairs)
            if (starting or cfg.joining) and all(m.name != cfg.member for m in trusted):
                # Not a member on our chain (not admitted yet): the transport needs our own entry
                # once; later updates keep it.
                trusted.append(joining_member(cfg, keys[0]))
            return trusted

        trusted = trust_list(engine.network_members(), starting=True)
        listen = parse_address(cfg.listen, "node.listen") if cfg.listen else None
        transport = TlsTransport(cfg.member, engine.transport_key().seed, trusted, listen=listen, strict=False,
                                 other_seeds=other_seeds)
        network = network_class(cfg.member, {m.name for m in trusted} | {cfg.member}, cid, transport,
                                config=cfg.net_config())
        extras: dict[str, Callable[[], Any]] = {}
        send_alert = await alert_sink(cfg)
        removal_announced = trio.Event()

        async def on_alert(event: AlertEvent) -> None:
            try:
                await send_alert(event)
            finally:
                if event.kind == REMOVED:
                    removal_announced.set()
        service = NodeService(engine, network, offload=True, on_alert=on_alert)
        metrics = NodeMetrics() if cfg.metrics_listen else None
        if metrics is not None:
            store.on_commit = metrics.observe_commit
            engine.trace.sink = metrics.observe_stage

        def follow_members(pairs: tuple[tuple[str, bytes], ...]) -> None:
            transport.set_members(trust_list(pairs), engine.transport_key().seed, other_seeds)
        service.on_members = follow_members
        anchoring = None
        if cfg.bitcoin is not None:
            anchoring = NodeAnchoring(service, cfg, consortium,
                                      on_published=metrics.published if metrics is not None else None)
            extras["anchoring"] = anchoring.status_dict
            service.anchor_handler = anchoring.book.on_anchor_message
            service.extra_status = anchoring.alert_conditions
        else:
            log.warning("no [bitcoin] section: this member verifies anchor proofs offline and anchors nothing")
            service.anchor_handler = AnchorBook(engine, check_pow=False, rpc=None).on_anchor_message
        anchor_status = anchoring.anchor_service.status if anchoring is not None else None
        if metrics is not None:
            metrics.anchor_status = anchor_status
        api = Api(service, cfg.api_token, cfg.load_client_key(), extras, read_token=cfg.api_read_token,
                  anchor_status=anchor_status, audit_token=cfg.api_audit_token)
        hconfig = http_config(cfg.api_listen)
        stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_dump_on_usr1)
                await nursery.start(service.run)
                if anchoring is not None:
                    await nursery.start(anchoring.run)
                serve_api = functools.partial(hypercorn_serve, api, hconfig, shutdown_trigger=stop.wait)
                bound = await nursery.start(serve_api)
                log.info("client API listening on %s (explorer: http://%s/explorer)", bound if bound else cfg.api_listen,
                         cfg.api_listen)
                if metrics is not None and cfg.metrics_listen is not None:
                    monitor = MonitorApp(service, metrics, engine.params)
                    serve_monitor = functools.partial(hypercorn_serve, monitor, http_config(cfg.metrics_listen),
                                                      shutdown_trigger=stop.wait)
                    await nursery.start(serve_monitor)
                    log.info("metrics on http://%s/metrics, health on /healthz and /readyz", cfg.metrics_listen)
                task_status.started(service)
                nursery.start_soon(watch_removal, service, removal_announced)
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        log.info("received %s: shutting down", signal.Signals(signum).name)
                        stop.set()
                        nursery.cancel_scope.cancel()
                        break
        except* MemberRemoved as removed:  # one task's ending, not a crash: the plain error for the exit code
            raise removed.exceptions[0] from None
    finally:
        store.close()
        log.info("node %s stopped; store closed", cfg.member)
