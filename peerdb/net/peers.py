"""PeerNetwork: one connection to every other member, kept up for as long as the node runs.

What it guarantees the node:

- ``send``/``broadcast`` never block and never raise for a peer being down: frames wait in a
  bounded per-peer :class:`~peerdb.net.queue.OutQueue` (drop-oldest, see there why) that
  survives reconnects. Delivery is best effort and in order per connection; the consensus
  protocol above copes with loss.
- Messages from peers arrive as ``(peer_name, message)`` on :attr:`PeerNetwork.incoming`, a
  bounded channel: a node that stops reading stops the readers, which stalls the TCP flow from
  those peers, which fills *their* queues, which drop their oldest frames.
- ``peer_name`` is always the member the transport proved (certificate key or hub), checked
  against the name in the hello; a message never arrives under a name its sender only claimed.
- Exactly one connection per pair survives. Both ends dial (so either one coming back is enough
  to reconnect); if two connections meet, both ends keep the one dialled by the member whose
  name sorts first (:func:`keep_existing`), a rule that needs no coordination. A second
  connection from the same dialler replaces the old one: the old one is stale (the peer
  restarted and we have not noticed yet).
- A dead or silent peer is noticed by the idle timeout: each side sends a ping after
  ``ping_interval`` without traffic and drops a connection that delivered no byte for
  ``idle_timeout``.
- A peer that breaks the framing or the hello is told why (``{"error": reason}``), logged, and
  disconnected; nothing it sent after the last good frame is delivered. Dialling resumes with
  exponential backoff and jitter.

Frames after the hello are maps with exactly one key: ``{"msg": m}`` (delivered), ``{"ping": 0}``
(liveness only) or ``{"error": reason}`` (the peer is closing and says why).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from peerdb.core.codec import encode
from peerdb.core.errors import LocalError, ProtocolError, RemoteError
from peerdb.core.limits import HASH_LEN, MAX_FRAME_BYTES, MAX_MEMBERS

from .frames import FrameReader, encode_frame, frame_payload
from .hello import DUPLICATE_CONNECTION, RefusedByPeer, receive_hello, refusal_reason, send_hello, send_refusal
from .logs import describe_error, log_event
from .queue import OutQueue
from .transport import AuthenticatedStream, Transport

OUTGOING_QUEUE_FRAMES = 4096
"""Frames waiting for one peer. A block is one frame and its signatures a handful more, so this
holds many heights of traffic: enough to ride out a reconnect without loss."""

OUTGOING_QUEUE_BYTES = 64 * 1024 * 1024
"""Bytes waiting for one peer: four maximal frames. With MAX_MEMBERS peers this bounds queued
memory at a few GiB in the absolute worst case, and at almost nothing in practice, since a
broadcast shares one bytes object between all queues."""

INCOMING_BUFFER = 256
"""Decoded messages waiting for the node. Small, so that a node that falls behind pushes back on
its peers through TCP rather than buffering without bound."""

EVENTS_BUFFER = 1024
"""Up/down events waiting to be read. If nobody reads them they are dropped (logged at debug);
:meth:`PeerNetwork.peer_state` stays exact either way."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds for connecting plus TLS plus the hello exchange; a healthy WAN peer needs well under one."""

PING_INTERVAL = 5.0
"""Seconds without outgoing traffic after which we send a ping, so the peer's idle timer sees us."""

IDLE_TIMEOUT = 20.0
"""Seconds without a single incoming byte before the peer is declared gone: four missed pings,
so one delayed packet is not an outage, yet a silent partition is reported within half a minute."""

WRITE_TIMEOUT = 60.0
"""Seconds one frame may take to write. A maximal frame (16 MiB) needs ~2 Mbit/s to make it;
a peer that stops reading for longer is treated as gone rather than left pinning our writer."""

CLOSE_TIMEOUT = 2.0
"""Seconds a graceful close (TLS close_notify) may take before the socket is just dropped."""

BACKOFF_INITIAL = 0.5
"""First redial delay after a failure; also the stagger of the member that does not win ties,
so that at start-up the preferred dialler usually connects first and no duplicate is made."""

BACKOFF_MAX = 30.0
"""Cap on the redial delay: a member back from an outage is reconnected within half a minute."""

STABLE_AFTER = 10.0
"""A connection that lasted this long resets the backoff; a peer that accepts and then drops us
(or sends garbage) at once keeps backing off instead of being redialled in a tight loop."""

MSG_KEY = "msg"
PING_KEY = "ping"
ERROR_KEY = "error"
_MSG_PREFIX = b"\xa1" + encode(MSG_KEY)
"""Canonical CBOR of ``{"msg": x}`` is this prefix followed by the encoding of ``x`` (a map
with one key needs no sorting), so a broadcast encodes its message once for every peer."""
_PING_FRAME = encode_frame({PING_KEY: 0})


@dataclass(frozen=True)
class NetConfig:
    """Tunables of a :class:`PeerNetwork`; defaults are the named constants above."""

    queue_frames: int = OUTGOING_QUEUE_FRAMES
    queue_bytes: int = OUTGOING_QUEUE_BYTES
    incoming_buffer: int = INCOMING_BUFFER
    events_buffer: int = EVENTS_BUFFER
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    ping_interval: float = PING_INTERVAL
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    stable_after: float = STABLE_AFTER
    stagger_dial: bool = True
    max_frame_bytes: int = MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        for field in ("queue_frames", "queue_bytes", "incoming_buffer", "events_buffer", "max_frame_bytes"):
            if getattr(self, field) < 1:
                raise LocalError(f"net.{field}: must be at least 1")
        for field in ("handshake_timeout", "ping_interval", "idle_timeout", "write_timeout", "close_timeout", "backoff_initial"):
            if not getattr(self, field) > 0:
                raise LocalError(f"net.{field}: must be positive")
        if self.idle_timeout <= self.ping_interval:
            raise LocalError("net.idle_timeout: must exceed ping_interval, or idle peers would be dropped")
        if self.backoff_max < self.backoff_initial:
            raise LocalError("net.backoff_max: must be at least backoff_initial")
        if self.max_frame_bytes > MAX_FRAME_BYTES:
            raise LocalError(f"net.max_frame_bytes: above the protocol limit {MAX_FRAME_BYTES}")


@dataclass(frozen=True)
class PeerEvent:
    """A peer went up or down; ``at`` is ``trio.current_time()``, ``direction`` "in"/"out" when up."""

    peer: str
    up: bool
    reason: str
    direction: str | None
    at: float


@dataclass(frozen=True)
class PeerState:
    """A snapshot for status pages and "peer down" alerts.

    ``since`` is when the peer last went up or down (``None``: never connected since start);
    ``last_error`` why the last connection or dial attempt ended; ``dropped`` frames lost to a
    full queue since start.
    """

    name: str
    connected: bool
    direction: str | None
    since: float | None
    last_error: str | None
    connects: int
    queued: int
    dropped: int


def keep_existing(existing_dialler: str, new_dialler: str, a: str, b: str) -> bool:
    """Whether the a-b connection we have beats a new one; both ends reach the same verdict.

    The connection dialled by ``min(a, b)`` wins over one dialled by the other member; between
    two dialled by the same member the new one wins (the old one is stale). Each end knows
    who dialled each connection, so both keep the same one without any extra message.
    """
    preferred = min(a, b)
    return existing_dialler == preferred and new_dialler != preferred


class _Connection:
    def __init__(self, peer: _Peer, auth: AuthenticatedStream, dialler: str, scope: trio.CancelScope) -> None:
        self.peer = peer
        self.stream = auth.stream
        self.remote = auth.remote
        self.dialler = dialler
        self.direction = "in" if dialler == peer.name else "out"
        self.scope = scope
        self.installed_at: float | None = None
        self.close_reason: str | None = None
        self.peer_fault = False

    def fail(self, reason: str, *, peer_fault: bool = False) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.peer_fault = peer_fault
        self.scope.cancel()


class _Peer:
    def __init__(self, name: str, config: NetConfig) -> None:
        self.name = name
        self.queue = OutQueue(config.queue_frames, config.queue_bytes)
        self.conn: _Connection | None = None
        self.since: float | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.failures = 0
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_disconnected(self) -> None:
        while self.conn is not None:
            await self._changed.wait()


class PeerNetwork:
    """The members-only network of member ``own_name`` (a trio service: see :meth:`run`).

    ``members`` lists every member name, ``own_name`` included. ``rng`` draws the backoff
    jitter; pass a seeded one for reproducible tests.
    """

    def __init__(
        self,
        own_name: str,
        members: Iterable[str],
        consortium_id: bytes,
        transport: Transport,
        *,
        config: NetConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        names = list(members)
        if len(set(names)) != len(names):
            raise LocalError("members: duplicate member name")
        if own_name not in names:
            raise LocalError(f"members: this node's name {own_name!r} is not a member")
        if len(names) > MAX_MEMBERS:
            raise LocalError(f"members: {len(names)} exceeds the limit of {MAX_MEMBERS}")
        if type(consortium_id) is not bytes or len(consortium_id) != HASH_LEN:
            raise LocalError(f"consortium_id: expected {HASH_LEN} bytes")
        self.own_name = own_name
        self.consortium_id = consortium_id
        self.config = config if config is not None else NetConfig()
        self._transport = transport
        self._rng = rng if rng is not None else random.Random()
        self._peers = {name: _Peer(name, self.config) for name in names if name != own_name}
        self._incoming_send, self.incoming = trio.open_memory_channel[tuple[str, Any]](self.config.incoming_buffer)
        self._events_send, self.events = trio.open_memory_channel[PeerEvent](self.config.events_buffer)
        self._started = False

    # -- the node's side -----------------------------------------------------------------------

    @property
    def peers(self) -> tuple[str, ...]:
        """Every other member, sorted."""
        return tuple(sorted(self._peers))

    def send(self, peer: str, message: Any) -> None:
        """Queue ``message`` for ``peer``; returns at once (see the module docstring)."""
        self._enqueue(self._peer(peer), self._encode(message))

    def broadcast(self, message: Any) -> None:
        """Queue ``message`` for every other member (encoded once)."""
        frame = self._encode(message)
        for peer in self._peers.values():
            self._enqueue(peer, frame)

    def peer_state(self, name: str) -> PeerState:
        peer = self._peer(name)
        conn = peer.conn
        return PeerState(
            name=name,
            connected=conn is not None,
            direction=conn.direction if conn is not None else None,
            since=peer.since,
            last_error=peer.last_error,
            connects=peer.connects,
            queued=len(peer.queue),
            dropped=peer.queue.dropped_total,
        )

    def connected_peers(self) -> list[str]:
        return sorted(name for name, peer in self._peers.items() if peer.conn is not None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every peer, keep the connections up until cancelled.

        ``task_status.started()`` is called once the listener accepts connections. One instance
        runs once: on return ``incoming`` and ``events`` are closed (readers see the end).
        """
        if self._started:
            raise LocalError("PeerNetwork.run: a network runs once; make a new one to restart")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._serve)
                for peer in self._peers.values():
                    nursery.start_soon(self._dial_loop, peer)
                self._log(logging.INFO, "network_started", peers=len(self._peers))
                task_status.started()
        finally:
            self._incoming_send.close()
            self._events_send.close()

    # -- internals -----------------------------------------------------------------------------

    def _log(self, level: int, event: str, **fields: object) -> None:
        log_event(level, event, node=self.own_name, **fields)

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            raise LocalError(f"peer: {name!r} is not another member")
        return peer

    def _encode(self, message: Any) -> bytes:
        return frame_payload(_MSG_PREFIX + encode(message), max_frame_bytes=self.config.max_frame_bytes)

    def _enqueue(self, peer: _Peer, frame: bytes) -> None:
        first_drop = peer.queue.dropped_episode == 0
        if peer.queue.put(frame) and first_drop:
            self._log(
                logging.WARNING, "queue_full", peer=peer.name, connected=peer.conn is not None,
                reason="dropping the oldest frames",
            )

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._transport.serve(self._accepted, task_status=task_status)

    async def _accepted(self, auth: AuthenticatedStream) -> None:
        await self._connection(auth, dialled=False)

    def _delay(self, peer: _Peer) -> float:
        if peer.failures == 0:
            stagger = self.config.stagger_dial and self.own_name > peer.name
            return self.config.backoff_initial * (0.5 + 0.5 * self._rng.random()) if stagger else 0.0
        base = min(self.config.backoff_max, self.config.backoff_initial * 2.0 ** min(peer.failures - 1, 32))
        return base * (0.5 + 0.5 * self._rng.random())

    async def _dial_loop(self, peer: _Peer) -> None:
        """Redial ``peer`` whenever no connection to it is up, for as long as the network runs."""
        while True:
            await peer.wait_disconnected()
            delay = self._delay(peer)
            if delay:
                await trio.sleep(delay)
                if peer.conn is not None:
                    continue
            lasted = await self._dial(peer)
            if lasted is None or lasted < self.config.stable_after:
                peer.failures += 1

    async def _dial(self, peer: _Peer) -> float | None:
        """One attempt; returns how long the resulting connection was up (None: never up)."""
        try:
            with trio.fail_after(self.config.handshake_timeout):
                auth = await self._transport.connect(peer.name)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, RemoteError) as exc:
            reason = describe_error(exc)
            peer.last_error = f"dial: {reason}"
            level = logging.WARNING if isinstance(exc, RemoteError) else logging.INFO
            self._log(level, "dial_failed", peer=peer.name, attempt=peer.failures + 1, reason=reason)
            return None
        return await self._connection(auth, dialled=True, expected=peer.name)

    async def _connection(self, auth: AuthenticatedStream, *, dialled: bool, expected: str | None = None) -> float | None:
        """Hello, install, pump frames until the connection ends; always closes the stream.

        Returns how long the connection was installed, None if it never was. Expected failures
        are logged here and never propagate: a bad peer must not take the listener down.
        """
        conn: _Connection | None = None
        lasted: float | None = None
        try:
            peer = self._peers.get(auth.peer)
            if expected is not None and auth.peer != expected:
                await self._refuse(auth, f"dialled {expected} but {auth.peer} answered")
            elif peer is None:
                what = "ourselves" if auth.peer == self.own_name else "not a member"
                await self._refuse(auth, f"identity {auth.peer!r} is {what}")
            else:
                with trio.CancelScope() as scope:
                    conn = _Connection(peer, auth, self.own_name if dialled else peer.name, scope)
                    reader = FrameReader(
                        auth.stream, max_frame_bytes=self.config.max_frame_bytes, idle_timeout=self.config.idle_timeout
                    )
                    if await self._hello(conn, reader, dialled):
                        await self._pump(conn, reader)
                if conn.peer_fault and conn.close_reason is not None:
                    await send_refusal(auth.stream, conn.close_reason)  # outside the cancelled scope
        finally:
            if conn is not None:
                # Also runs when the whole network is cancelled: the peer is reported down.
                lasted = self._uninstall(conn)
            with trio.move_on_after(self.config.close_timeout):
                await auth.stream.aclose()
        return lasted

    async def _hello(self, conn: _Connection, reader: FrameReader, dialled: bool) -> bool:
        """Exchange hellos and install ``conn``; False (after logging) if it must close."""
        auth_peer = conn.peer.name
        try:
            with trio.fail_after(self.config.handshake_timeout):
                if dialled:
                    await send_hello(conn.stream, self.consortium_id, self.own_name)
                    await receive_hello(reader, self.consortium_id, auth_peer)
                    if not self._install(conn):
                        await send_refusal(conn.stream, DUPLICATE_CONNECTION)
                        return False
                else:
                    await receive_hello(reader, self.consortium_id, auth_peer)
                    if not self._install(conn):
                        await send_refusal(conn.stream, DUPLICATE_CONNECTION)
                        return False
                    await send_hello(conn.stream, self.consortium_id, self.own_name)
            return True
        except RefusedByPeer as exc:
            conn.peer.last_error = str(exc)
            level = logging.INFO if exc.reason == DUPLICATE_CONNECTION else logging.WARNING
            self._log(level, "refused_by_peer", peer=auth_peer, remote=conn.remote, reason=str(exc))
        except RemoteError as exc:
            conn.peer.last_error = f"hello: {exc}"
            self._log(logging.WARNING, "refused", peer=auth_peer, remote=conn.remote, reason=str(exc))
            await send_refusal(conn.stream, str(exc))
        except (trio.EndOfChannel, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"hello: {describe_error(exc)}"
            conn.peer.last_error = reason
            self._log(logging.INFO, "hello_failed", peer=auth_peer, remote=conn.remote, reason=reason)
        if conn.installed_at is not None:
            conn.fail(conn.peer.last_error or "hello failed")
        return False

    def _install(self, conn: _Connection) -> bool:
        peer = conn.peer
        current = peer.conn
        if current is not None and keep_existing(current.dialler, conn.dialler, self.own_name, peer.name):
            self._log(logging.INFO, "duplicate_refused", peer=peer.name, kept=current.direction, refused=conn.direction)
            return False
        now = trio.current_time()
        conn.installed_at = now
        peer.conn = conn
        if current is not None:
            current.fail("replaced by a newer connection")
            self._log(logging.INFO, "connection_replaced", peer=peer.name, old=current.direction, new=conn.direction)
            return True
        peer.connects += 1
        peer.since = now
        self._log(logging.INFO, "peer_up", peer=peer.name, direction=conn.direction, remote=conn.remote)
        self._emit(PeerEvent(peer.name, True, "connected", conn.direction, now))
        peer.notify()
        return True

    def _uninstall(self, conn: _Connection) -> float | None:
        if conn.installed_at is None:
            return None
        now = trio.current_time()
        lasted = now - conn.installed_at
        peer = conn.peer
        if peer.conn is not conn:
            return lasted  # replaced: the peer never went down
        reason = conn.close_reason or "network stopped"
        peer.conn = None
        peer.since = now
        peer.last_error = reason
        if lasted >= self.config.stable_after:
            peer.failures = 0
        level = logging.WARNING if conn.peer_fault else logging.INFO
        self._log(level, "peer_down", peer=peer.name, direction=conn.direction, reason=reason)
        self._emit(PeerEvent(peer.name, False, reason, None, now))
        peer.notify()
        return lasted

    def _emit(self, event: PeerEvent) -> None:
        try:
            self._events_send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._log(logging.DEBUG, "event_dropped", peer=event.peer, up=event.up)

    async def _refuse(self, auth: AuthenticatedStream, reason: str) -> None:
        self._log(logging.WARNING, "refused", peer=auth.peer, remote=auth.remote, reason=reason)
        await send_refusal(auth.stream, reason)

    async def _pump(self, conn: _Connection, reader: FrameReader) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_task, conn, reader)
            nursery.start_soon(self._write_task, conn)

    async def _read_task(self, conn: _Connection, reader: FrameReader) -> None:
        try:
            while True:
                message = await reader.receive()
                if type(message) is not dict or len(message) != 1:
                    raise ProtocolError("frame: expected a map with one key")
                if MSG_KEY in message:
                    await self._incoming_send.send((conn.peer.name, message[MSG_KEY]))
                elif PING_KEY in message:
                    continue
                elif ERROR_KEY in message:
                    conn.fail(f"closed by peer: {refusal_reason(message)}")
                    return
                else:
                    raise ProtocolError(f"frame: unknown kind {next(iter(message))!r}")
        except RemoteError as exc:
            conn.fail(str(exc), peer_fault=True)
        except trio.TooSlowError:
            conn.fail(f"idle: no data for {self.config.idle_timeout:g}s")
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn.fail(describe_error(exc))

    async def _write_task(self, conn: _Connection) -> None:
        queue = conn.peer.queue
        try:
            while True:
                frame = _PING_FRAME
                with trio.move_on_after(self.config.ping_interval):
                    frame = await queue.get()
                with trio.fail_after(self.config.write_timeout):
                    await conn.stream.send_all(frame)
                if queue.dropped_episode and not len(queue):
                    self._log(logging.INFO, "queue_drained", peer=conn.peer.name, dropped=queue.dropped_episode)
                    queue.dropped_episode = 0
        except trio.TooSlowError:
            conn.fail(f"write stalled for {self.config.write_timeout:g}s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn.fail(describe_error(exc))
