"""PeerDB's client library: one node's API, for a firm's applications, scripts and tools.

- :class:`NodeClient` (:mod:`.http`): the HTTP/JSON API (docs/api.md) — reads, single writes,
  status, blocks; what the ``peerdb`` command and small scripts use.
- :func:`open_stream` (:mod:`.stream`, trio) and :class:`SyncStream` (:mod:`.sync`, plain
  Python): the write stream (docs/stream.md) for applications that write at rate — transactions
  signed here (:class:`TxSigner`), many in flight on one connection, each acknowledged with its
  txid and the views it reached, with back-pressure.

Errors: :class:`NodeUnreachable` (nothing answers), :class:`NodeRefused` (the node said no:
status, code, reason), :class:`StreamClosed` (a stream ended), all :class:`NodeError`.
"""

from .http import (DEFAULT_TIMEOUT_S, NodeClient, NodeError, NodeRefused, NodeUnreachable, node_config_endpoint,
                   refused)
from .signer import TxSigner, ops_from_json
from .stream import (ACCEPTED, ADMITTED, DUPLICATE, LOST, REFUSED, TIMEOUT, Pending, StreamClosed, StreamStats,
                     StreamWriter, TxOutcome, open_connection, open_stream, stream_url)
from .sync import SyncStream

__all__ = [
    "ACCEPTED", "ADMITTED", "DEFAULT_TIMEOUT_S", "DUPLICATE", "LOST", "NodeClient", "NodeError", "NodeRefused",
    "NodeUnreachable", "Pending", "REFUSED", "StreamClosed", "StreamStats", "StreamWriter", "SyncStream", "TIMEOUT",
    "TxOutcome", "TxSigner", "node_config_endpoint", "ops_from_json", "open_connection", "open_stream", "refused", "stream_url",
]
