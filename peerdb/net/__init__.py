"""The members-only network: TLS 1.3 bound to member keys, framed canonical CBOR, one connection
per member pair, reconnect with backoff.

Modules: :mod:`.certs` (certificates that are member keys), :mod:`.tls` (SSL contexts and the
TLS-over-TCP transport), :mod:`.memory` (the in-process transport for deterministic tests),
:mod:`.frames` (length-prefixed frames), :mod:`.hello` (version / consortium / identity check),
:mod:`.queue` (bounded outgoing queue), :mod:`.inbox` (incoming messages, bounded per peer and
served round-robin), :mod:`.peers` (the :class:`PeerNetwork` service).
"""

from .certs import certificate_public_key, check_member_certificate, member_certificate, verify_self_signed
from .frames import FrameDecoder, FrameReader, encode_frame, send_frame
from .hello import check_hello
from .inbox import FairInbox
from .memory import MemoryHub, MemoryTransport
from .config import NetConfig
from .peers import PeerEvent, PeerNetwork, PeerState
from .tls import TlsMember, TlsTransport, client_context, peer_identity, server_context
from .transport import AuthenticatedStream, Transport

__all__ = [
    "AuthenticatedStream",
    "FairInbox",
    "FrameDecoder",
    "FrameReader",
    "MemoryHub",
    "MemoryTransport",
    "NetConfig",
    "PeerEvent",
    "PeerNetwork",
    "PeerState",
    "TlsMember",
    "TlsTransport",
    "Transport",
    "certificate_public_key",
    "check_hello",
    "check_member_certificate",
    "client_context",
    "encode_frame",
    "member_certificate",
    "peer_identity",
    "send_frame",
    "server_context",
    "verify_self_signed",
]
