"""The hello: the first frame each side sends once the transport has proven who the peer is.

The transport (TLS, or the in-memory hub in tests) authenticates the *key*; the hello then
checks that both ends speak the same protocol version, belong to the same consortium (the
consortium id is the hash of its genesis), and that the name the peer claims is the name its key
is registered under. A mismatch is answered with an error frame ``{"error": reason}`` so that the
other operator's log says why, then the connection is closed.

The dialer speaks first and the acceptor answers, so the exchange cannot deadlock even over
a stream with no buffering at all (``trio.testing.lockstep_stream_pair``).
"""

from __future__ import annotations

from typing import Any

import trio

from peerdb.core.errors import ProtocolError
from peerdb.core.limits import HASH_LEN, MAX_NAME_LEN, MAX_REASON_LEN, PROTOCOL_VERSION

from .frames import FrameReader, send_frame

HELLO_FIELDS = frozenset({"v", "cid", "member"})
ERROR_FIELD = "error"

REFUSAL_SEND_TIMEOUT = 2.0
"""Seconds we spend telling a refused peer why before closing anyway: the courtesy must not let
a peer that stopped reading hold our task open."""


DUPLICATE_CONNECTION = "duplicate connection"
"""The reason sent when the one-connection rule refuses a connection (routine, not a fault)."""

REPLACED = "replaced by a newer connection"
"""The goodbye on a connection being retired for a newer one: "finish reading, then close"."""


class RefusedByPeer(ProtocolError):
    """The peer answered with an error frame; it closes the connection, we just log its reason."""

    def __init__(self, peer: str, reason: str) -> None:
        super().__init__(f"refused by {peer}: {reason}")
        self.peer = peer
        self.reason = reason


def make_hello(consortium_id: bytes, name: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "cid": consortium_id, "member": name}


def error_message(reason: str) -> dict[str, Any]:
    return {ERROR_FIELD: reason[:MAX_REASON_LEN]}


def refusal_reason(message: Any) -> str | None:
    """The reason in an error frame, ``None`` if ``message`` is not one (shape checked, not trusted)."""
    if type(message) is dict and len(message) == 1 and ERROR_FIELD in message:
        reason = message[ERROR_FIELD]
        return reason[:MAX_REASON_LEN] if type(reason) is str else "(error frame without a text reason)"
    return None


def check_hello(message: Any, expected_cid: bytes, peer_identity: str) -> None:
    """Raise :class:`ProtocolError` naming the field unless ``message`` is an acceptable hello.

    ``peer_identity`` is the member name the *transport* proved (certificate key); the name in
    the hello is only compared with it, never used on its own. The version is checked before the
    other fields so that a peer on another version gets "version" and not a shape complaint.
    """
    if type(message) is not dict:
        raise ProtocolError(f"hello: expected a map, got {type(message).__name__}")
    version = message.get("v")
    if type(version) is not int:
        raise ProtocolError("hello.v: missing or not an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"hello.v: protocol version {version}, we speak {PROTOCOL_VERSION}")
    if set(message) != HELLO_FIELDS:
        raise ProtocolError(f"hello: fields {sorted(map(str, message))}, expected {sorted(HELLO_FIELDS)}")
    cid = message["cid"]
    if type(cid) is not bytes or len(cid) != HASH_LEN:
        raise ProtocolError(f"hello.cid: expected {HASH_LEN} bytes")
    if cid != expected_cid:
        raise ProtocolError(
            f"hello.cid: different consortium (genesis {cid.hex()[:16]}..., ours {expected_cid.hex()[:16]}...)"
        )
    member = message["member"]
    if type(member) is not str or not member or len(member.encode("utf-8")) > MAX_NAME_LEN:
        raise ProtocolError(f"hello.member: expected 1..{MAX_NAME_LEN} bytes of text")
    if member != peer_identity:
        raise ProtocolError(f"hello.member: claims {member!r} but its key belongs to {peer_identity!r}")


async def send_hello(stream: trio.abc.SendStream, consortium_id: bytes, name: str) -> None:
    await send_frame(stream, make_hello(consortium_id, name))


async def receive_hello(reader: FrameReader, expected_cid: bytes, peer_identity: str) -> None:
    """Read the peer's first frame and check it.

    Raises :class:`RefusedByPeer` if the peer sent an error frame instead, :class:`ProtocolError`
    (or another :class:`RemoteError`) if its hello is unacceptable, and :class:`trio.EndOfChannel`
    if it closed without a word.
    """
    message = await reader.receive()
    reason = refusal_reason(message)
    if reason is not None:
        raise RefusedByPeer(peer_identity, reason)
    check_hello(message, expected_cid, peer_identity)


async def send_refusal(stream: trio.abc.SendStream, reason: str) -> None:
    """Best effort: tell the peer why we close; never raise, never wait long."""
    with trio.move_on_after(REFUSAL_SEND_TIMEOUT):
        try:
            await send_frame(stream, error_message(reason))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

