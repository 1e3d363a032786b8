"""What :class:`~peerdb.net.peers.PeerNetwork` needs from a transport: authenticated streams.

A transport dials a member by name and accepts connections, and for every stream it hands out it
has already *proven* which member is at the other end (TLS: the key of the peer's certificate;
the in-memory hub: the name the test registered). Everything above it (framing, hello, the
one-connection rule, queues, reconnects) is shared, so the fast in-process tests exercise the
same code as the TLS deployment.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class AuthenticatedStream:
    """A byte stream plus the member name the transport proved for the other end.

    ``remote`` is a human-readable address for logs ("127.0.0.1:4001", "memory:firm-b"),
    never used for identity.
    """

    stream: trio.abc.Stream
    peer: str
    remote: str


Handler = Callable[[AuthenticatedStream], Awaitable[None]]
"""Called once per accepted and authenticated connection, in its own task; owns the stream."""


class Transport(abc.ABC):
    """Dial and listen for one member; failures to authenticate are refused and logged here."""

    @abc.abstractmethod
    async def connect(self, peer: str, attempt: int = 0) -> AuthenticatedStream:
        """Dial ``peer`` and authenticate it. ``attempt`` counts the failed dials since the last
        good connection (a transport with several identities tries them in turn).

        Raises :class:`OSError` (unreachable), :class:`trio.BrokenResourceError` (handshake
        failed) or a :class:`~peerdb.core.errors.RemoteError` (the other end is not ``peer``
        or not a member). The caller bounds the time with a cancel scope.
        """

    @abc.abstractmethod
    async def serve(self, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled, calling ``handler`` for each authenticated one.

        Calls ``task_status.started()`` once connections can be accepted. A connection that
        fails authentication is logged with its reason and closed; the listener keeps serving.
        """
