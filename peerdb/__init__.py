"""PeerDB: a peer database for consortia of competing firms.

The consensus-critical code lives in :mod:`peerdb.core` and imports no I/O library; the
store, network, node, anchoring and API layers wrap it.
"""

__version__ = "0.1.0"
