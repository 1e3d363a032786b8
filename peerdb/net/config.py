"""Tunables of the peer network, each a named default with the reason for its value.

These are local choices, not consensus rules: two members with different values still talk.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerdb.core.errors import LocalError
from peerdb.core.limits import MAX_FRAME_BYTES

OUTGOING_QUEUE_FRAMES = 4096
"""Frames waiting for one peer. A block is one frame and its signatures a handful more, so this
holds many heights of traffic: enough to ride out a reconnect without loss."""

OUTGOING_QUEUE_BYTES = 64 * 1024 * 1024
"""Bytes waiting for one peer: four maximal frames. With MAX_MEMBERS peers this bounds queued
memory at a few GiB in the absolute worst case, and at almost nothing in practice, since a
broadcast shares one bytes object between all queues."""

INCOMING_BUFFER = 256
"""Decoded messages waiting for the node, per peer (:class:`~peerdb.net.inbox.FairInbox`). Small,
so that a node that falls behind pushes back on that peer through TCP rather than buffering
without bound; per peer, so that one peer's backlog never holds up another's messages."""

INCOMING_BYTES = MAX_FRAME_BYTES
"""Bytes (frame sizes) of decoded messages waiting for the node, per peer: one maximal frame or
many small ones. With the frame being received and the one being decoded, one peer holds at
most about three maximal frames of our memory, whatever it sends."""

DECODE_OFFLOAD_BYTES = 4096
"""Frames with a larger payload are decoded in a worker thread, smaller ones on the event loop.
A 4 KiB payload has at most 4,096 items and decodes in a few milliseconds at worst; most
frames (signatures, statuses, pings, small proposals) are smaller, and a thread hop for them
would cost more than decoding them."""

DECODE_THREADS = 1
"""Frames decoded at once, across all connections. Decoding holds the GIL most of the time, so a
second thread would not decode faster; with one, frames are decoded first come first served
(trio's CapacityLimiter is fair), so a member's frame waits for at most one decode per other
member with a frame in flight."""

EVENTS_BUFFER = 1024
"""Up/down events waiting to be read. If nobody reads them they are dropped (logged at debug);
``PeerNetwork.peer_state`` stays exact either way."""

HANDSHAKE_TIMEOUT = 10.0
"""Seconds for connecting plus TLS plus the hello exchange; a healthy WAN peer needs well under
one. Also how long a replaced connection may take to drain, and how long a peer that announced
a newer connection is still counted as up while that connection is being made."""

PING_INTERVAL = 5.0
"""Seconds without outgoing traffic after which we send a ping, so the peer's idle timer sees us."""

IDLE_TIMEOUT = 20.0
"""Seconds without a single incoming byte before the peer is declared gone: four missed pings,
so one delayed packet is not an outage, yet a silent partition is reported within half a minute."""

WRITE_TIMEOUT = 60.0
"""Seconds one frame may take to write. A maximal frame (16 MiB) needs ~2 Mbit/s to make it;
a peer that stops reading for longer is treated as gone rather than left pinning our writer."""

WRITE_BATCH_BYTES = 256 * 1024
"""Frames already queued are joined into one write up to this size: one TLS record batch and one
system call instead of one per frame, which more than doubles small-message throughput; bounded
so that the join copies little (a frame bigger than this is written on its own)."""

CLOSE_TIMEOUT = 2.0
"""Seconds a graceful close (TLS close_notify) may take before the socket is just dropped."""

BACKOFF_INITIAL = 0.5
"""First redial delay after a failure; also the stagger of the member that does not win ties,
so that at start-up the preferred dialler usually connects first and no duplicate is made. Also
the first bar on a peer that broke the protocol (see :mod:`.peers`)."""

BACKOFF_MAX = 30.0
"""Cap on the redial delay: a member back from an outage is reconnected within half a minute.
Also the longest bar: a peer that keeps sending bad frames gets one through every 30 s."""

STABLE_AFTER = 10.0
"""A connection that lasted this long resets the backoff (and, if we did not close it for a
fault, the bar); a peer that accepts and then drops us (or sends garbage) at once keeps backing
off instead of being redialled in a tight loop."""


@dataclass(frozen=True)
class NetConfig:
    """Tunables of a ``PeerNetwork``; the defaults are the named constants of this module.

    ``stagger_dial=False`` makes both members of a pair dial at once (tests of the tie rule);
    ``decode_offload_bytes=None`` decodes every frame on the event loop (tests on the autojump
    clock, where time would jump ahead while a task waits for a thread).
    """

    queue_frames: int = OUTGOING_QUEUE_FRAMES
    queue_bytes: int = OUTGOING_QUEUE_BYTES
    incoming_buffer: int = INCOMING_BUFFER
    incoming_bytes: int = INCOMING_BYTES
    decode_offload_bytes: int | None = DECODE_OFFLOAD_BYTES
    decode_threads: int = DECODE_THREADS
    events_buffer: int = EVENTS_BUFFER
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    ping_interval: float = PING_INTERVAL
    idle_timeout: float = IDLE_TIMEOUT
    write_timeout: float = WRITE_TIMEOUT
    write_batch_bytes: int = WRITE_BATCH_BYTES
    close_timeout: float = CLOSE_TIMEOUT
    backoff_initial: float = BACKOFF_INITIAL
    backoff_max: float = BACKOFF_MAX
    stable_after: float = STABLE_AFTER
    stagger_dial: bool = True
    max_frame_bytes: int = MAX_FRAME_BYTES

    def __post_init__(self) -> None:
        for field in (
            "queue_frames", "queue_bytes", "incoming_buffer", "incoming_bytes", "events_buffer", "max_frame_bytes",
            "write_batch_bytes", "decode_threads",
        ):
            if getattr(self, field) < 1:
                raise LocalError(f"net.{field}: must be at least 1")
        for field in (
            "handshake_timeout", "ping_interval", "idle_timeout", "write_timeout", "close_timeout", "backoff_initial",
        ):
            if not getattr(self, field) > 0:
                raise LocalError(f"net.{field}: must be positive")
        if self.idle_timeout <= self.ping_interval:
            raise LocalError("net.idle_timeout: must exceed ping_interval, or idle peers would be dropped")
        if self.decode_offload_bytes is not None and self.decode_offload_bytes < 0:
            raise LocalError("net.decode_offload_bytes: must not be negative")
        if self.backoff_max < self.backoff_initial:
            raise LocalError("net.backoff_max: must be at least backoff_initial")
        if self.max_frame_bytes > MAX_FRAME_BYTES:
            raise LocalError(f"net.max_frame_bytes: above the protocol limit {MAX_FRAME_BYTES}")
