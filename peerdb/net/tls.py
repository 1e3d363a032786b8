"""TLS 1.3 over TCP with mutual authentication, where the trust store is the member list.

Both contexts trust exactly the members' self-signed certificates (:mod:`peerdb.net.certs`) and
nothing else: no system CAs, no hostnames (``check_hostname`` is off because a member is its key,
not a DNS name). OpenSSL refuses a peer whose certificate is not one of them during the
handshake; afterwards we still map the *key* of the presented certificate to a member name
(:func:`peer_identity`) and never believe a name the peer merely claims.

Python's :mod:`ssl` only loads a private key from a file, so the key is handed over through an
anonymous in-memory file (``memfd``) on Linux; elsewhere through a private temporary directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerdb.core.errors import ConfigError, ProtocolError, RemoteError
from peerdb.core.limits import KEY_LEN

from .certs import SEED_LEN, certificate_public_key, member_certificate, public_key_from_seed
from .logs import describe_error, log_event
from .transport import AuthenticatedStream, Handler, Transport

HANDSHAKE_TIMEOUT = 10.0
"""Seconds an accepted TCP connection gets to finish the TLS handshake. Members on a WAN finish
in well under a second; the bound stops idle or hostile sockets from pinning a task forever."""


@dataclass(frozen=True)
class TlsMember:
    """What the transport needs to know about one member (from the consortium file)."""

    name: str
    public_key: bytes
    certificate: bytes
    host: str
    port: int

    def __post_init__(self) -> None:
        if len(self.public_key) != KEY_LEN:
            raise ConfigError(f"members.{self.name}.public_key: expected {KEY_LEN} bytes")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"members.{self.name}.port: {self.port} is not a TCP port")


@contextlib.contextmanager
def _key_file(pem: bytes) -> Iterator[str]:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("peerdb-tls-key", 0)
        try:
            os.write(fd, pem)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="peerdb-tls-") as directory:
        path = os.path.join(directory, "key.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
        yield path


def _build_context(purpose: int, seed: bytes, certificate: bytes, trusted: Iterable[bytes]) -> ssl.SSLContext:
    if type(seed) is not bytes or len(seed) != SEED_LEN:
        raise ConfigError(f"seed: expected {SEED_LEN} bytes")
    if certificate_public_key(certificate) != public_key_from_seed(seed):
        raise ConfigError("certificate: does not carry this node's own key")
    anchors = list(trusted)
    if not anchors:
        raise ConfigError("members: no certificates to trust")
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        context.check_hostname = False
    else:
        context.num_tickets = 0  # no session resumption: every connection proves its key afresh
    context.verify_mode = ssl.CERT_REQUIRED
    key_pem = Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = ssl.DER_cert_to_PEM_cert(certificate).encode("ascii")
    with _key_file(cert_pem + key_pem) as path:
        context.load_cert_chain(path)
    context.load_verify_locations(cadata=b"".join(anchors))
    return context


def server_context(seed: bytes, certificate: bytes, trusted: Iterable[bytes]) -> ssl.SSLContext:
    """TLS 1.3 server context presenting ``certificate`` and requiring a client certificate
    that chains to one of ``trusted`` (the member certificates, DER)."""
    return _build_context(ssl.PROTOCOL_TLS_SERVER, seed, certificate, trusted)


def client_context(seed: bytes, certificate: bytes, trusted: Iterable[bytes]) -> ssl.SSLContext:
    """TLS 1.3 client context presenting ``certificate`` and verifying the server against
    ``trusted`` only, without hostname checks."""
    return _build_context(ssl.PROTOCOL_TLS_CLIENT, seed, certificate, trusted)


def peer_identity(stream: trio.SSLStream[Any], members_by_key: Mapping[bytes, str]) -> str:
    """Member name owning the key of the certificate the peer presented in this handshake."""
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise ProtocolError("tls: peer presented no certificate")
    key = certificate_public_key(der)
    name = members_by_key.get(key)
    if name is None:
        raise ProtocolError(f"tls: certificate key {key.hex()[:16]}... is not a member key")
    return name


class TlsTransport(Transport):
    """Members-only TLS over TCP for member ``own_name``.

    ``listen`` overrides the (host, port) to bind (default: the member's own address in
    ``members``); port 0 binds a free port, readable from :attr:`bound_port` once serving.
    """

    def __init__(
        self,
        own_name: str,
        seed: bytes,
        members: Sequence[TlsMember],
        *,
        listen: tuple[str, int] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        strict: bool = True,
        other_seeds: Sequence[bytes] = (),
    ) -> None:
        self.own_name = own_name
        self._strict = strict
        """Refuse an own entry whose key is not the seed's (a config mistake); the daemon turns it
        off: after a rotation it did not get the key for, the node still starts and reports."""
        self._seed = seed
        self._own: TlsMember | None = None
        self._addresses: dict[str, tuple[str, int]] = {}
        self.set_members(members, seed, other_seeds)
        self._listen = listen if listen is not None else self._own_address()
        self._handshake_timeout = handshake_timeout
        self._bound_port: int | None = None

    def set_members(self, members: Sequence[TlsMember], seed: bytes | None = None,
                    other_seeds: Sequence[bytes] = ()) -> None:
        """Trust exactly ``members`` from now on (a member set changed by governance) and, with
        ``seed``, present that key's certificate (this member's key was rotated). Connections
        already up are not touched; the caller drops those of members who left. This node may
        be missing from ``members`` (it is joining and has not seen its admission yet): it
        keeps presenting its own certificate, made from its seed.

        ``other_seeds``: this member's other keys. After a failed dial the next attempt
        presents the next one: a node that was offline while its own key rotation took effect
        still holds the retired key as "in force", and its peers, already past the rotation,
        accept only the new one; this way it gets in and catches up."""
        by_key: dict[bytes, str] = {}
        for member in members:
            if by_key.setdefault(member.public_key, member.name) != member.name:
                raise ConfigError("members: two members share a public key")
            if certificate_public_key(member.certificate) != member.public_key:
                raise ConfigError(f"members.{member.name}.certificate: does not carry the member key")
        if len({(m.name, m.public_key) for m in members}) != len(members):
            raise ConfigError("members: duplicate member name")
        # A member may appear twice during a key rotation (old and new key, both trusted); the
        # last entry gives the address to dial.
        by_name = {member.name: member for member in members}
        seed = self._seed if seed is None else seed
        if type(seed) is not bytes or len(seed) != SEED_LEN:
            raise ConfigError(f"seed: expected {SEED_LEN} bytes")
        public = public_key_from_seed(seed)
        mine = [m for m in members if m.name == self.own_name]
        if not mine and self._own is None:
            raise ConfigError(f"members: this node's name {self.own_name!r} is not a member")
        own = next((m for m in mine if m.public_key == public), None)
        if own is None and mine and self._own is None:
            raise ConfigError("certificate: does not carry this node's own key")
        if own is None:  # joining (not listed yet), or a rotation to a key this node does not hold
            base = mine[-1] if mine else self._own
            assert base is not None
            own = TlsMember(self.own_name, public, member_certificate(seed, self.own_name), base.host, base.port)
        trusted = [member.certificate for member in members]
        self._server_context = server_context(seed, own.certificate, trusted)
        self._client_contexts = [client_context(seed, own.certificate, trusted)] + [
            client_context(other, member_certificate(other, self.own_name), trusted)
            for other in other_seeds if other != seed]
        for name, (host, port) in self._addresses.items():
            known = by_name.get(name)
            if known is not None:
                by_name[name] = TlsMember(name, known.public_key, known.certificate, host, port)
        self._members = by_name
        self._by_key = by_key
        self._seed = seed
        self._own = own

    def _own_address(self) -> tuple[str, int]:
        assert self._own is not None
        return self._own.host, self._own.port

    @property
    def bound_port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("bound_port: not serving yet")
        return self._bound_port

    def set_address(self, name: str, host: str, port: int) -> None:
        """Change where ``name`` is dialled (tests that bind port 0; a member that moved)."""
        member = self._members[name]
        self._members[name] = TlsMember(member.name, member.public_key, member.certificate, host, port)
        self._addresses[name] = (host, port)

    async def connect(self, peer: str, attempt: int = 0) -> AuthenticatedStream:
        member = self._members.get(peer)
        if member is None:
            raise ConfigError(f"peer: {peer!r} is not a member")
        remote = f"{member.host}:{member.port}"
        tcp = await trio.open_tcp_stream(member.host, member.port)
        context = self._client_contexts[attempt % len(self._client_contexts)]
        stream = trio.SSLStream(tcp, context, server_hostname=None)
        try:
            await stream.do_handshake()
            identity = peer_identity(stream, self._by_key)
            if identity != peer:
                raise ProtocolError(f"tls: dialled {peer} at {remote} but the key of {identity} answered")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return AuthenticatedStream(stream, identity, remote)

    async def serve(self, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._bound_port = listeners[0].socket.getsockname()[1]
        log_event(logging.INFO, "listening", node=self.own_name, address=f"{host}:{self._bound_port}")

        async def accept(tcp: trio.SocketStream) -> None:
            await self._accept(tcp, handler)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, accept, listeners)
            task_status.started()

    async def _accept(self, tcp: trio.SocketStream, handler: Handler) -> None:
        try:
            address = tcp.socket.getpeername()
            remote = f"{address[0]}:{address[1]}"
        except OSError:
            remote = "unknown"
        stream = trio.SSLStream(tcp, self._server_context, server_side=True)
        try:
            with trio.fail_after(self._handshake_timeout):
                await stream.do_handshake()
            identity = peer_identity(stream, self._by_key)
        except (trio.BrokenResourceError, trio.TooSlowError, RemoteError) as exc:
            log_event(logging.WARNING, "refused", node=self.own_name, remote=remote, reason=describe_error(exc))
            await trio.aclose_forcefully(stream)
            return
        await handler(AuthenticatedStream(stream, identity, remote))

