"""The frames of the streaming write protocol (docs/stream.md), for both ends: their codec, their
limits, and the error and close codes. Pure: no I/O, no clock.

An application that writes at rate keeps one WebSocket open to its node (``/v1/stream``) and
sends **submit frames**, each carrying a batch of transactions it signed itself, without
waiting for the answers: the node acknowledges each frame asynchronously, first with what
admission did to each transaction, then once per view the client asked for. Every message is
one canonical CBOR map (the encoding every PeerDB object uses), so the transactions travel as
the bytes that were signed: no JSON, no base64, one decode each, by admission.

Untrusted bytes reach :func:`parse_client_frame` (the node) and :func:`parse_server_frame` (the
client) only, each through :func:`peerdb.core.codec.decode` with size and item limits. A frame
the node cannot attribute (not CBOR, no ``id``) closes the connection; a frame it can attribute
but refuses (an unknown ``op``, a bad field) is answered with an error frame naming its ``id``
and the connection stays open (:class:`FrameError` says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .core.chain import View
from .core.codec import decode, encode
from .core.errors import DecodeError, LimitError
from .core.limits import MAX_TX_BYTES

PROTOCOL = 1
"""Version of the frames below, announced in the hello frame."""

PATH = "/v1/stream"
"""The WebSocket route on the node's client API listener."""

MAX_FRAME_BYTES = 1024 * 1024
"""Largest frame either end reads. Holds a submit frame of about 4,000 transactions of the usual
size (a 150-byte value makes a ~260-byte transaction) or at least three of the largest
(``MAX_TX_BYTES``), while a connection's frames waiting in hypercorn's queue stay a few MiB."""

MAX_FRAME_TXS = 1024
"""Transactions in one submit frame. Admission decodes and signature-checks a frame in one engine
call (about 0.1 ms a transaction), so this bounds that call near a tenth of a second, the
budget the node keeps for one batch of peer messages as well (``INBOX_BATCH_BYTES``)."""

MAX_FRAME_ITEMS = 2 * MAX_FRAME_TXS + 64
"""CBOR items a submit frame may hold: a transaction is one byte string, and the map's other
fields a few dozen items; twice the transactions leaves room to refuse a frame a little over
:data:`MAX_FRAME_TXS` with its own error (and its id) instead of closing."""

MAX_IN_FLIGHT_TXS = 16_384
"""Transactions of one connection admitted (or being admitted) whose frames still wait for a view.
At 10,000 tx/s and a second to ``unanimous_signed`` a client needs 10,000; the pool itself
holds ``mempool_max_txs`` (200,000 by default) for every client together."""

MAX_IN_FLIGHT_FRAMES = 512
"""Frames of one connection not yet finished: each is one task on the node waiting for views."""

MAX_ADMITTING_BYTES = 4 * MAX_FRAME_BYTES
"""Bytes of a connection's frames read but not yet through admission: what the node holds of
one client's raw transactions at once."""

MAX_STREAMS = 32
"""Open streams per node. A firm's applications need a few (one per writer process); each holds
at most the budgets above."""

MAX_TIMEOUT_MS = 600_000
"""Longest a frame may ask the node to wait for its views (as ``POST /v1/txs`` ``timeout_s``)."""

DEFAULT_TIMEOUT_MS = 30_000
"""How long the node waits for a frame's views when the frame does not say."""

MAX_ID = 2**63 - 1
"""Frame ids are client-chosen integers in [0, MAX_ID], unique among the connection's frames in flight."""

MAX_MESSAGE_CHARS = 1000
"""Error and refusal messages are cut to this many characters (a reason, not a document)."""

VIEWS = tuple(v.value for v in View)
"""Views a frame may ask for, weakest first: acknowledgements come in this order."""

# --- codes ------------------------------------------------------------------------------------

BAD_FRAME = "bad_frame"          # not canonical CBOR, not a map, or no valid id: closes (1007)
TEXT_FRAME = "text_frame"        # a text message: closes (1003)
TOO_LARGE = "too_large"          # over MAX_FRAME_BYTES or MAX_FRAME_ITEMS: closes (1009)
BAD_REQUEST = "bad_request"      # a field of an identified frame is wrong: frame refused, connection kept
UNKNOWN_OP = "unknown_op"        # an op this node does not know: frame refused, connection kept
DUPLICATE_ID = "duplicate_id"    # the id of a frame still in flight: frame refused, connection kept

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011


class FrameError(Exception):
    """A client frame the node refuses: ``code`` (above), a message, the frame's ``frame_id`` when
    it could be read, and ``close``: the WebSocket close code when the connection closes over it
    (None: only the frame is refused)."""

    def __init__(self, code: str, message: str, frame_id: int | None = None, close: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id
        self.close = close


class StreamProtocolError(Exception):
    """The node sent something the client cannot read: the client closes the connection."""


# --- client -> node ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SubmitFrame:
    """``{"op": "submit", "id": ID, "txs": [bytes, ...], "views": [VIEW, ...], "timeout_ms": MS}``.

    ``views`` (optional, default none) are the views to be acknowledged, weakest first once
    parsed; ``timeout_ms`` (optional) bounds the wait for all of them, from admission."""

    id: int
    txs: tuple[bytes, ...]
    views: tuple[str, ...] = ()
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    def encode(self) -> bytes:
        body: dict[str, Any] = {"op": "submit", "id": self.id, "txs": list(self.txs)}
        if self.views:
            body["views"] = list(self.views)
        if self.timeout_ms != DEFAULT_TIMEOUT_MS:
            body["timeout_ms"] = self.timeout_ms
        return encode(body)


SUBMIT_FIELDS = frozenset({"op", "id", "txs", "views", "timeout_ms"})

SUBMIT_OVERHEAD_BYTES = 128
"""Bytes of a submit frame besides its transactions' own bytes and length heads, at most: the
map, its keys, an id, four view names and a timeout. A client fills frames up to
``MAX_FRAME_BYTES`` minus this."""


def tx_cost_bytes(tx: bytes) -> int:
    """What one transaction adds to a submit frame: its bytes and its CBOR length head."""
    n = len(tx)
    return n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)


def parse_client_frame(data: bytes | str) -> SubmitFrame:
    """The submit frame in ``data``, or :class:`FrameError` saying why not and whether the
    connection closes over it."""
    if isinstance(data, str):
        raise FrameError(TEXT_FRAME, "frames are binary CBOR, not text", close=CLOSE_UNSUPPORTED_DATA)
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(TOO_LARGE, f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME_BYTES}",
                         close=CLOSE_MESSAGE_TOO_BIG)
    try:
        value = decode(data, max_size=MAX_FRAME_BYTES, what="frame", max_items=MAX_FRAME_ITEMS)
    except LimitError as exc:
        raise FrameError(TOO_LARGE, str(exc), close=CLOSE_MESSAGE_TOO_BIG) from None
    except DecodeError as exc:
        raise FrameError(BAD_FRAME, str(exc), close=CLOSE_INVALID_PAYLOAD) from None
    if not isinstance(value, dict):
        raise FrameError(BAD_FRAME, f"frame: must be a map, got {type(value).__name__}", close=CLOSE_INVALID_PAYLOAD)
    frame_id = value.get("id")
    if type(frame_id) is not int or not 0 <= frame_id <= MAX_ID:
        raise FrameError(BAD_FRAME, f"frame: 'id' must be an integer in [0, 2^63), got {frame_id!r:.40}",
                         close=CLOSE_INVALID_PAYLOAD)
    op = value.get("op")
    if op != "submit":
        raise FrameError(UNKNOWN_OP, f"frame {frame_id}: unknown op {op!r:.40} (this node knows 'submit')", frame_id)
    unknown = sorted(str(k) for k in value if k not in SUBMIT_FIELDS)
    if unknown:
        raise FrameError(BAD_REQUEST, f"frame {frame_id}: unknown fields {', '.join(unknown)[:200]}", frame_id)
    txs = value.get("txs")
    if not isinstance(txs, list) or not txs:
        raise FrameError(BAD_REQUEST, f"frame {frame_id}: 'txs' must be a non-empty array of transactions", frame_id)
    if len(txs) > MAX_FRAME_TXS:
        raise FrameError(BAD_REQUEST, f"frame {frame_id}: {len(txs)} transactions exceed the limit of "
                         f"{MAX_FRAME_TXS} per frame", frame_id)
    for i, tx in enumerate(txs):
        if type(tx) is not bytes or not tx or len(tx) > MAX_TX_BYTES:
            raise FrameError(BAD_REQUEST, f"frame {frame_id}: txs[{i}] must be the bytes of one signed "
                             f"transaction (1..{MAX_TX_BYTES} bytes)", frame_id)
    return SubmitFrame(frame_id, tuple(txs), _parse_views(value.get("views", []), frame_id),
                       _parse_timeout(value.get("timeout_ms", DEFAULT_TIMEOUT_MS), frame_id))


def _parse_views(raw: Any, frame_id: int) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(type(v) is str and v in VIEWS for v in raw) or len(set(raw)) != len(raw):
        raise FrameError(BAD_REQUEST, f"frame {frame_id}: 'views' must be distinct names among "
                         f"{', '.join(VIEWS)}", frame_id)
    return tuple(v for v in VIEWS if v in raw)


def _parse_timeout(raw: Any, frame_id: int) -> int:
    if type(raw) is not int or not 1 <= raw <= MAX_TIMEOUT_MS:
        raise FrameError(BAD_REQUEST, f"frame {frame_id}: 'timeout_ms' must be an integer in [1, {MAX_TIMEOUT_MS}]",
                         frame_id)
    return raw


# --- node -> client ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The budgets the node announces in its hello frame (the constants above, as in force)."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_frame_txs: int = MAX_FRAME_TXS
    max_in_flight_txs: int = MAX_IN_FLIGHT_TXS
    max_in_flight_frames: int = MAX_IN_FLIGHT_FRAMES
    max_timeout_ms: int = MAX_TIMEOUT_MS


@dataclass(frozen=True)
class Hello:
    """``{"t": "hello", "protocol": 1, "member": NAME, "limits": {...}}``: first frame of every stream."""

    member: str
    limits: Limits
    protocol: int = PROTOCOL


@dataclass(frozen=True)
class Refusal:
    """One transaction of a frame that admission refused: its index in the frame, the refusal's
    code (``bad_signature``, ``forbidden``, ``mempool_full``, ...; docs/stream.md) and message."""

    index: int
    code: str
    message: str


@dataclass(frozen=True)
class Admitted:
    """``{"t": "admitted", "id": ID, "accepted": [TXID...], "duplicates": [TXID...],
    "refused": [[INDEX, CODE, MESSAGE], ...]}``: what admission did to each transaction of frame
    ``id``. Accepted transactions are in the pool (durable there when the frame asked for no
    view); duplicates were already pending or on the chain."""

    id: int
    accepted: tuple[bytes, ...]
    duplicates: tuple[bytes, ...]
    refused: tuple[Refusal, ...]


@dataclass(frozen=True)
class Busy:
    """``{"t": "busy", "id": ID, "pool": N, "limit": N, "message": TEXT}``: the pool is full; the
    node holds frame ``id``, retries it as blocks empty the pool, and reads nothing more from
    this connection until it is admitted (or refused ``mempool_full`` after ``BUSY_HOLD_S``)."""

    id: int
    pool: int
    limit: int
    message: str


@dataclass(frozen=True)
class Reached:
    """``{"t": "view", "view": VIEW, "ids": [ID...]}``: every admitted transaction of these frames
    is in ``view``."""

    view: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class TimedOut:
    """``{"t": "timeout", "id": ID, "view": VIEW, "message": TEXT}``: frame ``id``'s transactions did
    not all reach ``view`` within its ``timeout_ms``; they stay pending (durable) and no further
    acknowledgement comes for this frame."""

    id: int
    view: str
    message: str


@dataclass(frozen=True)
class ErrorFrame:
    """``{"t": "error", "id": ID or null, "code": CODE, "message": TEXT}``: a frame refused (with
    its id, connection kept) or the reason the node closes the connection (id null or the
    offending frame's)."""

    id: int | None
    code: str
    message: str


ServerFrame = Hello | Admitted | Busy | Reached | TimedOut | ErrorFrame


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."


def encode_server_frame(frame: ServerFrame) -> bytes:
    body: dict[str, Any]
    if isinstance(frame, Hello):
        lim = frame.limits
        body = {"t": "hello", "protocol": frame.protocol, "member": frame.member, "limits": {
            "max_frame_bytes": lim.max_frame_bytes, "max_frame_txs": lim.max_frame_txs,
            "max_in_flight_txs": lim.max_in_flight_txs, "max_in_flight_frames": lim.max_in_flight_frames,
            "max_timeout_ms": lim.max_timeout_ms}}
    elif isinstance(frame, Admitted):
        body = {"t": "admitted", "id": frame.id, "accepted": list(frame.accepted), "duplicates": list(frame.duplicates),
                "refused": [[r.index, r.code, _cut(r.message)] for r in frame.refused]}
    elif isinstance(frame, Busy):
        body = {"t": "busy", "id": frame.id, "pool": frame.pool, "limit": frame.limit, "message": _cut(frame.message)}
    elif isinstance(frame, Reached):
        body = {"t": "view", "view": frame.view, "ids": list(frame.ids)}
    elif isinstance(frame, TimedOut):
        body = {"t": "timeout", "id": frame.id, "view": frame.view, "message": _cut(frame.message)}
    else:
        body = {"t": "error", "id": frame.id, "code": frame.code, "message": _cut(frame.message)}
    return encode(body)


MAX_SERVER_FRAME_ITEMS = 4 * MAX_FRAME_TXS + 64
"""CBOR items of the largest node frame: an admitted frame lists each transaction once (a txid,
or a refusal of four items)."""


def parse_server_frame(data: bytes | str) -> ServerFrame:
    """A frame the node sent; :class:`StreamProtocolError` for anything else."""
    if isinstance(data, str):
        raise StreamProtocolError("the node sent a text message; frames are binary CBOR")
    try:
        value = decode(data, max_size=MAX_FRAME_BYTES, what="node frame", max_items=MAX_SERVER_FRAME_ITEMS)
    except DecodeError as exc:
        raise StreamProtocolError(str(exc)) from None
    try:
        return _server_frame(value)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise StreamProtocolError(f"node frame: unexpected shape ({type(exc).__name__}: {exc})") from None


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _txids(value: Any) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not all(type(t) is bytes and len(t) == 32 for t in value):
        raise TypeError("expected an array of 32-byte txids")
    return tuple(value)


def _server_frame(value: Any) -> ServerFrame:
    if not isinstance(value, dict):
        raise TypeError("a node frame is a map")
    kind = value["t"]
    if kind == "hello":
        lim = value["limits"]
        return Hello(_str(value["member"]), Limits(
            _int(lim["max_frame_bytes"]), _int(lim["max_frame_txs"]), _int(lim["max_in_flight_txs"]),
            _int(lim["max_in_flight_frames"]), _int(lim["max_timeout_ms"])), _int(value["protocol"]))
    if kind == "admitted":
        refused = tuple(Refusal(_int(r[0]), _str(r[1]), _str(r[2])) for r in value["refused"])
        return Admitted(_int(value["id"]), _txids(value["accepted"]), _txids(value["duplicates"]), refused)
    if kind == "busy":
        return Busy(_int(value["id"]), _int(value["pool"]), _int(value["limit"]), _str(value["message"]))
    if kind == "view":
        view = _str(value["view"])
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}")
        return Reached(view, tuple(_int(i) for i in value["ids"]))
    if kind == "timeout":
        return TimedOut(_int(value["id"]), _str(value["view"]), _str(value["message"]))
    if kind == "error":
        frame_id = value["id"]
        return ErrorFrame(None if frame_id is None else _int(frame_id), _str(value["code"]), _str(value["message"]))
    raise ValueError(f"unknown frame type {kind!r:.40}")
