"""The hostile member's network: the real :class:`~peerdb.net.peers.PeerNetwork` (TLS, its own
member key), which can also put bytes on a connection that no honest node would send.

The bad frames go through the peer's outgoing queue like any frame, so they reach the honest
node exactly as a rogue implementation's would: inside the authenticated TLS stream, after a
correct hello.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from peerdb.core.codec import encode
from peerdb.core.limits import MAX_FRAME_BYTES
from peerdb.net.frames import HEADER_LEN, encode_frame, frame_payload
from peerdb.net.peers import PeerNetwork

JUNK_TXS = 16
"""Transactions of junk per megabyte frame (each 60 KB: well-formed as a frame, refused as a
transaction)."""
JUNK_TX_BYTES = 60_000

BAD_FRAMES: tuple[tuple[str, bytes], ...] = (
    ("oversized", (MAX_FRAME_BYTES + 1).to_bytes(HEADER_LEN, "big") + b"\x00" * 64),
    ("zero_length", b"\x00" * HEADER_LEN),
    ("not_cbor", frame_payload(b"\xff\xfe\xfd")),
    ("not_a_one_key_map", encode_frame([1, 2, 3])),
    ("message_without_type", encode_frame({"msg": {"kind": "bogus"}})),
    ("mistyped_field", encode_frame({"msg": {"t": "status", "tip": b"x", "height": 1, "recent": []}})),
)
"""Frames that break the framing, the frame shape or the message rules (protocol.md §17.2-17.4).
A well-formed message of an unknown type is not among them: nodes skip those (a newer
protocol's), so it would not close the connection."""


class HostileNetwork(PeerNetwork):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flood_counts: Counter[str] = Counter()
        self._flooded: dict[str, object] = {}
        self._next_bad = 0

    def flood(self) -> None:
        """On each live connection not flooded yet: a megabyte of junk transactions, then one bad
        frame (the honest node closes the connection at it, so each connection carries one)."""
        for name, peer in self._peers.items():
            conn = peer.conn
            if conn is None or self._flooded.get(name) is conn:
                continue
            self._flooded[name] = conn
            kind, frame = BAD_FRAMES[self._next_bad % len(BAD_FRAMES)]
            self._next_bad += 1
            junk = {"t": "txs", "txs": [os.urandom(JUNK_TX_BYTES) for _ in range(JUNK_TXS)]}
            self._enqueue(peer, frame_payload(encode({"msg": junk})))
            self._enqueue(peer, frame)
            self.flood_counts["junk_megabyte"] += 1
            self.flood_counts[kind] += 1
