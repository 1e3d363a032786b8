"""PeerNetwork: one connection to every other member, kept up for as long as the node runs.

What it guarantees the node:

- ``send``/``broadcast`` never block and never raise for a peer being down: frames wait in a
  bounded per-peer :class:`~peerdb.net.queue.OutQueue` (drop-oldest, see there why) that
  survives reconnects. Delivery is best effort: in order on one connection, but a frame can be
  lost when a connection breaks, and frames can overtake each other across a reconnect. The
  consensus protocol above copes with both.
- Messages from peers arrive as ``(peer_name, message)`` on :attr:`PeerNetwork.incoming`, a
  :class:`~peerdb.net.inbox.FairInbox`: bounded per peer and served round-robin over the
  peers, so one peer's backlog never delays another's messages by more than one message per
  turn. A node that stops reading stops the readers, which stalls the TCP flow from those
  peers, which fills *their* queues, which drop their oldest frames.
- Frames are decoded with bounded work (MAX_FRAME_ITEMS); large ones in a worker thread (see
  :mod:`.frames`), one at a time across all connections.
- ``peer_name`` is always the member the transport proved (certificate key or hub), checked
  against the name in the hello; a message never arrives under a name its sender only claimed.
- A dead or silent peer is noticed by the idle timeout: each side sends a ping after
  ``ping_interval`` without traffic and drops a connection that delivered no byte for
  ``idle_timeout``.
- A peer that breaks the framing or the hello is told why (``{"error": reason}``), logged, and
  disconnected; nothing it sent after the last good frame is delivered. Dialling resumes with
  exponential backoff and jitter.
- A peer that broke the protocol (a bad hello or frame, or a malformed message reported
  through :meth:`PeerNetwork.disconnect`) is *barred* for a while: we neither
  dial it nor accept its connections (they are refused with the reason) until the bar ends. The
  bar doubles with each consecutive fault, from ``backoff_initial`` up to ``backoff_max``, and is
  forgotten once a connection to it ends without a fault after ``stable_after``; so a member
  that keeps sending bad frames costs us one frame per ``backoff_max`` at most.

One connection per pair, without losing frames while duplicates are sorted out:

- Both ends dial (so either one coming back is enough to reconnect). When two connections meet,
  both ends keep the one dialled by the member whose name sorts first (:func:`keep_existing`);
  a newer connection from the same dialler replaces an older one (the older is stale: the peer
  restarted and we have not noticed yet). Each end knows who dialled what, so no extra message
  is needed to agree.
- The dialler sends its hello, the acceptor answers (or refuses a duplicate), and the dialler
  decides: it refuses a duplicate with an error frame, or installs the connection and sends a
  ping at once. The acceptor installs and starts writing only when that first frame arrives,
  so a connection the dialler refuses never carried data.
- A replaced connection is *retired*, not cut: its writer stops between frames and says
  ``{"error": "replaced by a newer connection"}``; its reader keeps delivering until the peer
  says the same (both ends retire the same connection) or ends the stream. A peer that retires
  our current connection first has announced a newer one, so for ``handshake_timeout`` we keep
  counting it as up while that connection arrives; no spurious down/up events.

Frames after the hello are maps with exactly one key: ``{"msg": m}`` (delivered), ``{"ping": 0}``
(liveness only) or ``{"error": reason}`` (the sender is closing this connection and says why).

Why one module of this size: dialling, accepting, the hello, the reader and writer loops and
barring share one connection table whose invariants (one connection per member, proved names)
hold only across all of them; framing, queues and the inbox live in their own modules.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from peerdb.core.codec import encode
from peerdb.core.errors import LocalError, ProtocolError, RemoteError
from peerdb.core.limits import HASH_LEN, MAX_MEMBERS

from .config import NetConfig
from .frames import FrameReader, encode_frame, frame_payload
from .hello import (
    DUPLICATE_CONNECTION,
    REPLACED,
    RefusedByPeer,
    error_message,
    receive_hello,
    refusal_reason,
    send_hello,
    send_refusal,
)
from .inbox import FairInbox
from .logs import describe_error, log_event
from .queue import OutQueue
from .transport import AuthenticatedStream, Transport

__all__ = ["NetConfig", "PeerEvent", "PeerNetwork", "PeerState", "keep_existing"]
"""``NetConfig`` lives in :mod:`.config` and is re-exported here for callers that import it
from the service module."""

MSG_KEY = "msg"
PING_KEY = "ping"
ERROR_KEY = "error"
_MSG_PREFIX = b"\xa1" + encode(MSG_KEY)
"""Canonical CBOR of ``{"msg": x}`` is this prefix followed by the encoding of ``x`` (a map
with one key needs no sorting), so a broadcast encodes its message once for every peer."""
_PING_FRAME = encode_frame({PING_KEY: 0})
NOT_A_MEMBER = "no longer a member of the consortium"


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

    ``since`` is when the peer last went up or down (``None``: not connected yet since start);
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
    two dialled by the same member the new one wins (the old one is stale).
    """
    preferred = min(a, b)
    return existing_dialler == preferred and new_dialler != preferred


def _check_size(names: Iterable[str]) -> None:
    count = len(set(names))
    if count > 2 * MAX_MEMBERS:  # the members in force plus those a passed change adds
        raise LocalError(f"members: {count} exceeds the limit of {2 * MAX_MEMBERS}")


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
        self.retiring = False
        self.retire_reason = REPLACED
        self.peer_bye: str | None = None
        self.wait_scope: trio.CancelScope | None = None

    def fail(self, reason: str, *, peer_fault: bool = False) -> None:
        """Close at once (broken stream, protocol violation, timeout)."""
        if self.close_reason is None:
            self.close_reason = reason
            self.peer_fault = peer_fault
        self.scope.cancel()

    def retire(self, reason: str, drain_deadline: float) -> None:
        """Stop writing after the current frame, say goodbye, keep reading until the deadline."""
        if self.retiring:
            return
        self.retiring = True
        self.retire_reason = reason
        if self.close_reason is None:
            self.close_reason = reason
        self.scope.deadline = min(self.scope.deadline, drain_deadline)
        if self.wait_scope is not None:
            self.wait_scope.cancel()


class _Peer:
    def __init__(self, name: str, config: NetConfig) -> None:
        self.name = name
        self.queue = OutQueue(config.queue_frames, config.queue_bytes)
        self.conn: _Connection | None = None
        self.since: float | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.failures = 0
        self.faults = 0
        """Consecutive connections we closed for a protocol violation (see :meth:`PeerNetwork._bar`)."""
        self.barred_until = -math.inf
        self.barred_for = ""
        self._changed = trio.Event()
        self.dial_scope = trio.CancelScope()
        """Cancelled when the member leaves the consortium (see :meth:`PeerNetwork.set_members`)."""

    def is_connected(self) -> bool:
        return self.conn is not None

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
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
        _check_size(names)
        if type(consortium_id) is not bytes or len(consortium_id) != HASH_LEN:
            raise LocalError(f"consortium_id: expected {HASH_LEN} bytes")
        self.own_name = own_name
        self.consortium_id = consortium_id
        self.config = config if config is not None else NetConfig()
        self._transport = transport
        self._rng = rng if rng is not None else random.Random()
        self._peers = {name: _Peer(name, self.config) for name in names if name != own_name}
        self.incoming = FairInbox(self.config.incoming_buffer, self.config.incoming_bytes)
        self._decode_limiter = trio.CapacityLimiter(self.config.decode_threads)
        self._events_send, self.events = trio.open_memory_channel[PeerEvent](self.config.events_buffer)
        self._started = False
        self._nursery: trio.Nursery | None = None

    # -- the node's side -----------------------------------------------------------------------

    @property
    def peers(self) -> tuple[str, ...]:
        """Every other member, sorted."""
        return tuple(sorted(self._peers))

    def send(self, peer: str, message: Any) -> None:
        """Queue ``message`` for ``peer``; returns at once (see the module docstring). A
        member that has just left the consortium is skipped: the node may still address a
        reply to it."""
        target = self._peers.get(peer)
        if target is None:
            if peer == self.own_name:
                raise LocalError(f"peer: {peer!r} is not another member (a node does not send to itself)")
            self._log(logging.DEBUG, "not_sent", peer=peer, reason="no longer a member")
            return
        self._enqueue(target, self._encode(message))

    def set_members(self, members: Iterable[str]) -> None:
        """Follow a member set changed by governance: dial members who joined, drop the
        connection to and stop dialling members who left (their queued frames are discarded).
        The transport must already trust the new set (for TLS, see
        :meth:`peerdb.net.tls.TlsTransport.set_members`)."""
        names = set(members) | {self.own_name}
        _check_size(names)
        for name in sorted(set(self._peers) - names):
            peer = self._peers.pop(name)
            peer.dial_scope.cancel()
            if peer.conn is not None:
                peer.conn.fail(NOT_A_MEMBER)
            self._log(logging.INFO, "member_left", peer=name)
        for name in sorted(names - set(self._peers) - {self.own_name}):
            peer = self._peers[name] = _Peer(name, self.config)
            self._log(logging.INFO, "member_joined", peer=name)
            if self._nursery is not None:
                self._nursery.start_soon(self._dial_loop, peer)

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

    def disconnect(self, name: str, reason: str) -> None:
        """Drop the connection to ``name`` because it broke the protocol above the framing (a
        malformed message); it is logged as the peer's fault and barred (see the module
        docstring). If its connection is already gone (the message waited in the inbox), the
        bar still applies; a member that has left is ignored."""
        peer = self._peers.get(name)
        if peer is None:
            self._log(logging.INFO, "not_disconnected", peer=name, reason="no longer a member")
        elif peer.conn is not None:
            peer.conn.fail(reason, peer_fault=True)
        else:
            self._bar(peer, reason)

    def reconnect(self, name: str, reason: str) -> None:
        """Close the connection to ``name`` (not its fault) so that the next one is made under
        the transport's current trust list: a member whose key was rotated must prove the new
        key, not keep a connection the retired key opened."""
        peer = self._peers.get(name)
        if peer is not None and peer.conn is not None:
            self._log(logging.INFO, "reconnecting", peer=name, reason=reason)
            peer.conn.fail(reason)

    def connected_peers(self) -> list[str]:
        return sorted(name for name, peer in self._peers.items() if peer.conn is not None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every peer, keep the connections up until cancelled.

        ``task_status.started()`` is called once the listener accepts connections. One instance
        runs once: on return ``incoming`` and ``events`` are closed (their readers see the end).
        """
        if self._started:
            raise LocalError("PeerNetwork.run: a network runs once; make a new one to restart")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._serve)
                self._nursery = nursery
                for peer in self._peers.values():
                    nursery.start_soon(self._dial_loop, peer)
                self._log(logging.INFO, "network_started", peers=len(self._peers))
                task_status.started()
        finally:
            self.incoming.close()
            self._events_send.close()

    # -- bookkeeping ---------------------------------------------------------------------------

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

    def _emit(self, event: PeerEvent) -> None:
        try:
            self._events_send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._log(logging.DEBUG, "event_dropped", peer=event.peer, up=event.up)

    def _loses(self, conn: _Connection) -> bool:
        """Whether ``conn`` must give way to the connection already installed for its peer."""
        current = conn.peer.conn
        if current is None or current is conn or current.peer_bye is not None:
            return False  # nothing there, or the peer already abandoned it
        return keep_existing(current.dialler, conn.dialler, self.own_name, conn.peer.name)

    def _is_current(self, peer: _Peer) -> bool:
        """False for a member removed (by :meth:`set_members`) while its connection was set up."""
        return self._peers.get(peer.name) is peer

    def _install(self, conn: _Connection) -> bool:
        peer = conn.peer
        if not self._is_current(peer):
            self._log(logging.INFO, "refused", peer=peer.name, remote=conn.remote, reason=NOT_A_MEMBER)
            return False
        if self._loses(conn):
            current = peer.conn
            self._log(logging.INFO, "duplicate_refused", peer=peer.name,
                      kept=current.direction if current else None, refused=conn.direction)
            return False
        now = trio.current_time()
        current = peer.conn
        conn.installed_at = now
        peer.conn = conn
        if current is not None:
            self._retire(current, REPLACED)
            self._log(logging.INFO, "connection_replaced", peer=peer.name, old=current.direction, new=conn.direction)
        else:
            peer.connects += 1
            peer.since = now
            self._log(logging.INFO, "peer_up", peer=peer.name, direction=conn.direction, remote=conn.remote)
            self._emit(PeerEvent(peer.name, True, "connected", conn.direction, now))
        peer.notify()
        return True

    def _uninstall(self, conn: _Connection) -> float | None:
        """Forget ``conn``; returns how long it was installed (None: never)."""
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
        if lasted >= self.config.stable_after and not conn.peer_fault:
            peer.failures = 0
            peer.faults = 0
        self._log(logging.WARNING if conn.peer_fault else logging.INFO, "peer_down",
                  peer=peer.name, direction=conn.direction, reason=reason)
        self._emit(PeerEvent(peer.name, False, reason, None, now))
        peer.notify()
        return lasted

    def _retire(self, conn: _Connection, reason: str) -> None:
        conn.retire(reason, trio.current_time() + self.config.handshake_timeout)

    def _bar(self, peer: _Peer, reason: str) -> None:
        """``peer`` broke the protocol on a connection: neither dial it nor accept it for a
        while, doubling with each consecutive fault (no jitter: only we decide when it ends)."""
        peer.faults += 1
        delay = min(self.config.backoff_max, self.config.backoff_initial * 2.0 ** min(peer.faults - 1, 32))
        peer.barred_until = max(peer.barred_until, trio.current_time() + delay)
        peer.barred_for = reason
        self._log(logging.WARNING, "peer_barred", peer=peer.name, seconds=round(delay, 3), faults=peer.faults,
                  reason=reason)

    def _barred(self, peer: _Peer) -> float:
        """Seconds left until ``peer`` may connect again (0: it may now)."""
        return max(0.0, peer.barred_until - trio.current_time())

    # -- dialling and accepting ----------------------------------------------------------------

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
        """Redial ``peer`` whenever no connection to it is up, for as long as the network runs
        and ``peer`` is a member."""
        with peer.dial_scope:
            await self._dial_forever(peer)

    async def _dial_forever(self, peer: _Peer) -> None:
        while True:
            while peer.is_connected():
                await peer.wait_change()
            delay = self._delay(peer)
            if delay:
                await trio.sleep(delay)
            while self._barred(peer):  # also when the peer was barred while we slept
                await trio.sleep(self._barred(peer))
            if peer.is_connected():
                continue
            lasted = await self._dial(peer)
            if lasted is None or lasted < self.config.stable_after:
                peer.failures += 1

    async def _dial(self, peer: _Peer) -> float | None:
        """One attempt; returns how long the resulting connection was up (None: never up)."""
        try:
            with trio.fail_after(self.config.handshake_timeout):
                auth = await self._transport.connect(peer.name, attempt=peer.failures)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, RemoteError, LocalError) as exc:
            # LocalError: the transport cannot dial this member (no certificate or address for
            # it yet); the network must not stop for one member's missing details.
            reason = describe_error(exc)
            peer.last_error = f"dial: {reason}"
            level = logging.WARNING if isinstance(exc, (RemoteError, LocalError)) else logging.INFO
            self._log(level, "dial_failed", peer=peer.name, attempt=peer.failures + 1, reason=reason)
            return None
        return await self._connection(auth, dialled=True, expected=peer.name)

    # -- one connection ------------------------------------------------------------------------

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
            elif self._barred(peer):
                reason = f"barred for {self._barred(peer):.1f} s more after: {peer.barred_for}"
                self._log(logging.INFO, "refused_barred", peer=auth.peer, remote=auth.remote, reason=reason)
                await send_refusal(auth.stream, reason)
            else:
                scope = trio.CancelScope()
                conn = _Connection(peer, auth, self.own_name if dialled else peer.name, scope)
                with scope:
                    reader = FrameReader(
                        auth.stream, max_frame_bytes=self.config.max_frame_bytes, idle_timeout=self.config.idle_timeout,
                        offload_bytes=self.config.decode_offload_bytes, limiter=self._decode_limiter,
                    )
                    pending = await self._handshake(conn, reader, dialled)
                    if pending is not None:
                        await self._pump(conn, reader, pending)
                if conn.peer_fault and conn.close_reason is not None:
                    await send_refusal(auth.stream, conn.close_reason)  # outside the cancelled scope
                elif conn.peer_bye == REPLACED and peer.conn is conn:
                    await self._await_replacement(conn)
        finally:
            if conn is not None:
                # Also runs when the whole network is cancelled: the peer is reported down.
                lasted = self._uninstall(conn)
                if conn.peer_fault:
                    self._bar(conn.peer, conn.close_reason or "protocol violation")
            with trio.move_on_after(self.config.close_timeout):
                try:
                    await auth.stream.aclose()
                except (trio.BrokenResourceError, OSError):
                    pass  # closed either way; trio notes SSL_shutdown can raise spuriously
        return lasted

    async def _refuse(self, auth: AuthenticatedStream, reason: str) -> None:
        self._log(logging.WARNING, "refused", peer=auth.peer, remote=auth.remote, reason=reason)
        await send_refusal(auth.stream, reason)

    async def _handshake(self, conn: _Connection, reader: FrameReader,
                         dialled: bool) -> tuple[tuple[Any, int], ...] | None:
        """Exchange hellos and install ``conn``.

        Returns the frames already read, with their sizes, that the reader must still handle (the
        acceptor reads the dialler's first frame as its confirmation), or None (after logging) if
        it must close.
        """
        name = conn.peer.name
        try:
            with trio.fail_after(self.config.handshake_timeout):
                if dialled:
                    await send_hello(conn.stream, self.consortium_id, self.own_name)
                    await receive_hello(reader, self.consortium_id, name)
                    if not self._install(conn):
                        await send_refusal(conn.stream, DUPLICATE_CONNECTION if self._is_current(conn.peer)
                                           else NOT_A_MEMBER)
                        return None
                    return ()
                await receive_hello(reader, self.consortium_id, name)
                if self._loses(conn):
                    self._log(logging.INFO, "duplicate_refused", peer=name, refused=conn.direction)
                    await send_refusal(conn.stream, DUPLICATE_CONNECTION)
                    return None
                await send_hello(conn.stream, self.consortium_id, self.own_name)
                first, first_size = await reader.receive_sized()
                reason = refusal_reason(first)
                if reason is not None:
                    raise RefusedByPeer(name, reason)
            if not self._install(conn):
                if not self._is_current(conn.peer):
                    await send_refusal(conn.stream, NOT_A_MEMBER)  # removed during the handshake
                    return None
                self._retire(conn, REPLACED)  # lost the tie while waiting: read what it carries, then close
            return ((first, first_size),)
        except RefusedByPeer as exc:
            conn.peer.last_error = str(exc)
            level = logging.INFO if exc.reason == DUPLICATE_CONNECTION else logging.WARNING
            self._log(level, "refused_by_peer", peer=name, remote=conn.remote, reason=exc.reason)
        except RemoteError as exc:
            conn.peer.last_error = f"hello: {exc}"
            self._log(logging.WARNING, "refused", peer=name, remote=conn.remote, reason=str(exc))
            await send_refusal(conn.stream, str(exc))  # first: barring closes what the peer has open
            self._bar(conn.peer, f"hello: {exc}")  # an authenticated member sent it: as costly as any bad frame
        except (trio.EndOfChannel, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"hello: {describe_error(exc)}"
            conn.peer.last_error = reason
            self._log(logging.INFO, "hello_failed", peer=name, remote=conn.remote, reason=reason)
        if conn.installed_at is not None:
            conn.fail(conn.peer.last_error or "hello failed")
        return None

    async def _await_replacement(self, conn: _Connection) -> None:
        """The peer retired our current connection for a newer one: let that one arrive."""
        peer = conn.peer
        with trio.move_on_after(self.config.handshake_timeout):
            while peer.conn is conn:
                await peer.wait_change()

    async def _pump(self, conn: _Connection, reader: FrameReader, pending: tuple[tuple[Any, int], ...]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_task, conn, reader, pending)
            nursery.start_soon(self._write_task, conn)

    async def _read_task(self, conn: _Connection, reader: FrameReader,
                         pending: tuple[tuple[Any, int], ...]) -> None:
        try:
            for message, size in pending:
                if not await self._dispatch(conn, message, size):
                    return
            while await self._dispatch(conn, *await reader.receive_sized()):
                pass
        except RemoteError as exc:
            conn.fail(str(exc), peer_fault=True)
        except trio.TooSlowError:
            conn.fail(f"idle: no data for {self.config.idle_timeout:g}s")
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn.fail(describe_error(exc))

    async def _dispatch(self, conn: _Connection, message: Any, size: int) -> bool:
        """Handle one frame of ``size`` payload bytes; False when the peer said goodbye on this
        connection."""
        if type(message) is not dict or len(message) != 1:
            raise ProtocolError("frame: expected a map with one key")
        if MSG_KEY in message:
            await self.incoming.put(conn.peer.name, message[MSG_KEY], size)
            return True
        if PING_KEY in message:
            return True
        if ERROR_KEY in message:
            reason = refusal_reason(message) or ""
            conn.peer_bye = reason
            if conn.close_reason is None:
                conn.close_reason = f"closed by peer: {reason}"
            self._retire(conn, reason)  # answer the goodbye; our reader is done
            return False
        raise ProtocolError(f"frame: unknown kind {next(iter(message))!r}")

    async def _write_task(self, conn: _Connection) -> None:
        queue = conn.peer.queue
        try:
            if conn.direction == "out" and not conn.retiring:
                await self._write(conn, _PING_FRAME)  # the dialler's confirmation
            while not conn.retiring:
                frame = await self._next_frame(conn)
                if frame is None:
                    break
                await self._write(conn, frame)
                if queue.dropped_episode and not len(queue):
                    self._log(logging.INFO, "queue_drained", peer=conn.peer.name, dropped=queue.dropped_episode)
                    queue.dropped_episode = 0
            await self._write(conn, encode_frame(error_message(conn.retire_reason)))
        except trio.TooSlowError:
            conn.fail(f"write stalled for {self.config.write_timeout:g}s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn.fail(describe_error(exc))

    async def _next_frame(self, conn: _Connection) -> bytes | None:
        """The next queued frames (joined), a ping after ``ping_interval`` of quiet, None once retiring."""
        got: list[bytes] = []
        with trio.CancelScope(deadline=trio.current_time() + self.config.ping_interval) as wait:
            conn.wait_scope = wait
            got.append(await conn.peer.queue.get())
        conn.wait_scope = None
        if got:  # even when retiring: a frame taken from the queue is always sent
            more = conn.peer.queue.take_ready(self.config.write_batch_bytes - len(got[0]))
            return got[0] if not more else b"".join(got + more)
        return None if conn.retiring else _PING_FRAME

    async def _write(self, conn: _Connection, frame: bytes) -> None:
        with trio.fail_after(self.config.write_timeout):
            await conn.stream.send_all(frame)
