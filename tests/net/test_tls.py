"""TLS 1.3 on 127.0.0.1 with real sockets: members get in, everyone else is refused and logged.

These run in real time (a TLS handshake with Ed25519 takes about a millisecond), with short
backoffs and polling under a deadline; no sleeps are used as synchronisation.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from peerdb.core.errors import ConfigError, ProtocolError
from peerdb.core.limits import MAX_FRAME_BYTES, PROTOCOL_VERSION
from peerdb.net.certs import member_certificate, public_key_from_seed
from peerdb.net.frames import FrameReader, send_frame
from peerdb.net.hello import make_hello
from peerdb.net.config import NetConfig
from peerdb.net.peers import PeerNetwork
from peerdb.net.tls import TlsMember, TlsTransport, client_context, peer_identity, server_context
from peerdb.net.transport import AuthenticatedStream

CID = hashlib.sha256(b"tls consortium").digest()
OTHER_CID = hashlib.sha256(b"another tls consortium").digest()
NAMES = ["firm-a", "firm-b"]
SEEDS = {name: hashlib.sha256(name.encode()).digest() for name in NAMES + ["mallory"]}
CERTS = {name: member_certificate(seed, name) for name, seed in SEEDS.items()}
MEMBER_CERTS = [CERTS[name] for name in NAMES]
CONFIG = NetConfig(
    backoff_initial=0.05, backoff_max=0.5, handshake_timeout=5.0, ping_interval=1.0, idle_timeout=5.0, stable_after=1.0
)
DEADLINE = 15.0


@pytest.fixture(autouse=True)
def _net_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="peerdb.net")


def net_lines(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "peerdb.net" and r.getMessage().startswith(event + " ")]


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def members(ports: dict[str, int]) -> list[TlsMember]:
    return [
        TlsMember(name, public_key_from_seed(SEEDS[name]), CERTS[name], "127.0.0.1", ports.get(name, 0)) for name in NAMES
    ]


class TlsCluster:
    def __init__(self, nursery: trio.Nursery, config: NetConfig = CONFIG) -> None:
        self.nursery = nursery
        self.config = config
        self.ports: dict[str, int] = {}
        self.transports: dict[str, TlsTransport] = {}
        self.nets: dict[str, PeerNetwork] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, name: str, *, cid: bytes = CID) -> PeerNetwork:
        transport = TlsTransport(
            name, SEEDS[name], members(self.ports), listen=("127.0.0.1", self.ports.get(name, 0))
        )
        net = PeerNetwork(name, NAMES, cid, transport, config=self.config)
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await net.run(task_status=task_status)

        await self.nursery.start(run)
        self.ports[name] = transport.bound_port
        for other in self.transports.values():
            other.set_address(name, "127.0.0.1", transport.bound_port)
        self.transports[name], self.nets[name], self.scopes[name] = transport, net, scope
        return net

    def stop(self, name: str) -> None:
        self.scopes[name].cancel()

    def connected(self) -> bool:
        return all(self.nets[n].connected_peers() == [m for m in NAMES if m != n] for n in NAMES if n in self.nets)


@asynccontextmanager
async def tls_cluster(config: NetConfig = CONFIG) -> AsyncIterator[TlsCluster]:
    async with trio.open_nursery() as nursery:
        yield TlsCluster(nursery, config)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_tls(port: int, context: ssl.SSLContext) -> AsyncIterator[trio.SSLStream[trio.SocketStream]]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=None)
    try:
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


async def receive(net: PeerNetwork) -> tuple[str, Any]:
    with trio.fail_after(DEADLINE):
        return await net.incoming.receive()


async def test_mutual_tls13_handshake_identifies_both_sides_by_key() -> None:
    transport_a = TlsTransport("firm-a", SEEDS["firm-a"], members({}), listen=("127.0.0.1", 0))
    transport_b = TlsTransport("firm-b", SEEDS["firm-b"], members({}))
    accepted: list[AuthenticatedStream] = []
    done = trio.Event()

    async def handler(auth: AuthenticatedStream) -> None:
        accepted.append(auth)
        assert isinstance(auth.stream, trio.SSLStream)
        await auth.stream.send_all(b"hi")
        done.set()
        await auth.stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(transport_a.serve, handler)
        transport_b.set_address("firm-a", "127.0.0.1", transport_a.bound_port)
        with trio.fail_after(DEADLINE):
            auth = await transport_b.connect("firm-a")
            assert auth.peer == "firm-a"
            assert isinstance(auth.stream, trio.SSLStream)
            assert auth.stream.version() == "TLSv1.3"
            assert await auth.stream.receive_some() == b"hi"
            await done.wait()
        await auth.stream.aclose()
        nursery.cancel_scope.cancel()
    assert [a.peer for a in accepted] == ["firm-b"]


async def test_two_members_exchange_messages_over_tls() -> None:
    async with tls_cluster() as c:
        a = await c.start("firm-a")
        b = await c.start("firm-b")
        await wait_until(c.connected)
        a.send("firm-b", {"block": b"\x01" * 1000})
        b.broadcast([1, "two"])
        assert await receive(b) == ("firm-a", {"block": b"\x01" * 1000})
        assert await receive(a) == ("firm-b", [1, "two"])


@pytest.mark.parametrize("claimed_name", ["mallory", "firm-b"])
async def test_non_member_key_is_refused_and_listener_keeps_serving(
    caplog: pytest.LogCaptureFixture, claimed_name: str
) -> None:
    """A key outside the member list is refused in the handshake, whatever name its certificate claims."""
    async with tls_cluster() as c:
        a = await c.start("firm-a")
        cert = member_certificate(SEEDS["mallory"], claimed_name)
        context = client_context(SEEDS["mallory"], cert, MEMBER_CERTS + [cert])
        async with raw_tls(c.ports["firm-a"], context) as stream:
            with trio.fail_after(DEADLINE), pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
                await send_frame(stream, make_hello(CID, claimed_name))
                await FrameReader(stream).receive()
        await wait_until(lambda: bool(net_lines(caplog, "refused")))
        assert "tls:" in net_lines(caplog, "refused")[0]
        await c.start("firm-b")
        await wait_until(c.connected)
        assert a.peer_state("firm-b").connected


async def test_tls12_is_refused_even_for_a_member(caplog: pytest.LogCaptureFixture) -> None:
    async with tls_cluster() as c:
        await c.start("firm-a")
        context = client_context(SEEDS["firm-b"], CERTS["firm-b"], MEMBER_CERTS)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        async with raw_tls(c.ports["firm-a"], context) as stream:
            with trio.fail_after(DEADLINE), pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
        await wait_until(lambda: bool(net_lines(caplog, "refused")))
        assert "tls:" in net_lines(caplog, "refused")[0]


async def test_member_key_cannot_vouch_for_another_key(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """firm-b's key signs a certificate for a fresh key: not a CA, so OpenSSL refuses the chain."""
    async with tls_cluster() as c:
        await c.start("firm-a")
        fresh = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
        issuer = Ed25519PrivateKey.from_private_bytes(SEEDS["firm-b"])
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "firm-b-subkey")]))
            .issuer_name(x509.load_der_x509_certificate(CERTS["firm-b"]).subject)
            .public_key(fresh.public_key())
            .serial_number(2)
            .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc))
            .sign(issuer, None)
        )
        pem = tmp_path / "chain.pem"
        pem.write_bytes(
            leaf.public_bytes(serialization.Encoding.PEM)
            + ssl.DER_cert_to_PEM_cert(CERTS["firm-b"]).encode()
            + fresh.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(pem)
        context.load_verify_locations(cadata=b"".join(MEMBER_CERTS))
        async with raw_tls(c.ports["firm-a"], context) as stream:
            with trio.fail_after(DEADLINE), pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
                await send_frame(stream, make_hello(CID, "firm-b"))
                await FrameReader(stream).receive()
        await wait_until(lambda: bool(net_lines(caplog, "refused")))
        assert "invalid CA certificate" in net_lines(caplog, "refused")[0]


class _FakeTlsStream:
    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self.der


def test_peer_identity_is_the_key_owner_never_the_claimed_name() -> None:
    by_key = {public_key_from_seed(SEEDS[name]): name for name in NAMES}
    assert peer_identity(_FakeTlsStream(CERTS["firm-b"]), by_key) == "firm-b"  # type: ignore[arg-type]
    # firm-b's key under the name "firm-a" is still firm-b
    assert peer_identity(_FakeTlsStream(member_certificate(SEEDS["firm-b"], "firm-a")), by_key) == "firm-b"  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="not a member key"):
        peer_identity(_FakeTlsStream(member_certificate(SEEDS["mallory"], "firm-a")), by_key)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="no certificate"):
        peer_identity(_FakeTlsStream(None), by_key)  # type: ignore[arg-type]


async def test_member_refuses_a_server_with_a_non_member_key(caplog: pytest.LogCaptureFixture) -> None:
    impostor = server_context(SEEDS["mallory"], CERTS["mallory"], MEMBER_CERTS + [CERTS["mallory"]])

    async def serve_impostor(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, impostor, server_side=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with tls_cluster() as c:
        listeners = await c.nursery.start(trio.serve_tcp, serve_impostor, 0)
        impostor_port = listeners[0].socket.getsockname()[1]
        c.ports["firm-b"] = impostor_port  # firm-a will dial the impostor as firm-b
        a = await c.start("firm-a")
        await wait_until(lambda: bool(net_lines(caplog, "dial_failed")))
        line = net_lines(caplog, "dial_failed")[0]
        assert "peer=firm-b" in line and "certificate verify failed (self-signed certificate)" in line
        assert not a.peer_state("firm-b").connected


async def test_other_consortium_refused_at_hello_over_tls(caplog: pytest.LogCaptureFixture) -> None:
    async with tls_cluster() as c:
        a = await c.start("firm-a")
        await c.start("firm-b", cid=OTHER_CID)
        def both_sides_logged() -> bool:
            refusers = {line.split()[1] for line in net_lines(caplog, "refused") if "different consortium" in line}
            refused = [line for line in net_lines(caplog, "refused_by_peer") if "different consortium" in line]
            return refusers == {"node=firm-a", "node=firm-b"} and bool(refused)

        await wait_until(both_sides_logged)
        assert not a.peer_state("firm-b").connected


@pytest.mark.parametrize(
    "after_hello, match",
    [
        (b"\x00\x00\x00\x02\xff\x00", "frame: malformed CBOR"),
        ((MAX_FRAME_BYTES + 1).to_bytes(4, "big"), "exceeds the limit"),
        (None, "hello.v: protocol version"),
    ],
)
async def test_bad_version_or_frame_closes_that_connection_only(
    caplog: pytest.LogCaptureFixture, after_hello: bytes | None, match: str
) -> None:
    async with tls_cluster() as c:
        a = await c.start("firm-a")
        context = client_context(SEEDS["firm-b"], CERTS["firm-b"], MEMBER_CERTS)
        async with raw_tls(c.ports["firm-a"], context) as stream:
            reader = FrameReader(stream)
            with trio.fail_after(DEADLINE):
                if after_hello is None:
                    await send_frame(stream, {"v": PROTOCOL_VERSION + 1, "cid": CID, "member": "firm-b"})
                else:
                    await send_frame(stream, make_hello(CID, "firm-b"))
                    assert await reader.receive() == make_hello(CID, "firm-a")
                    await stream.send_all(after_hello)
                answer = await reader.receive()
                while answer == {"ping": 0}:
                    answer = await reader.receive()
                assert set(answer) == {"error"} and match in answer["error"]
                with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
                    await reader.receive()
        assert any(match in line for line in net_lines(caplog, "refused") + net_lines(caplog, "peer_down"))
        await c.start("firm-b")
        await wait_until(c.connected)
        assert a.peer_state("firm-b").connected


async def test_reconnect_after_the_peer_restarts() -> None:
    async with tls_cluster() as c:
        a = await c.start("firm-a")
        await c.start("firm-b")
        await wait_until(c.connected)
        c.stop("firm-b")
        await wait_until(lambda: not a.peer_state("firm-b").connected)
        assert a.peer_state("firm-b").last_error
        b2 = await c.start("firm-b")  # same port, new process-equivalent
        await wait_until(c.connected)
        a.send("firm-b", "again")
        assert await receive(b2) == ("firm-a", "again")
        assert a.peer_state("firm-b").connects == 2


async def test_one_connection_per_pair_under_simultaneous_dial() -> None:
    config = NetConfig(
        stagger_dial=False, backoff_initial=0.05, backoff_max=0.5, handshake_timeout=5.0, ping_interval=1.0, idle_timeout=5.0
    )
    async with tls_cluster(config) as c:
        # bind both listeners before either network dials, so both dial at once and both succeed
        c.ports = {"firm-a": _free_port(), "firm-b": _free_port()}
        async with trio.open_nursery() as starter:
            starter.start_soon(c.start, "firm-a")
            starter.start_soon(c.start, "firm-b")
        await wait_until(c.connected)
        a, b = c.nets["firm-a"], c.nets["firm-b"]
        await wait_until(lambda: a.peer_state("firm-b").direction == "out" and b.peer_state("firm-a").direction == "in")
        b.send("firm-a", "one connection")
        assert await receive(a) == ("firm-b", "one connection")
        assert a.peer_state("firm-b").connected and b.peer_state("firm-a").connected


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_transport_checks_the_member_list() -> None:
    with pytest.raises(ConfigError, match="not a member"):
        TlsTransport("mallory", SEEDS["mallory"], members({}))
    with pytest.raises(ConfigError, match="own key"):
        TlsTransport("firm-a", SEEDS["firm-b"], members({}))
    bad = [TlsMember("firm-a", public_key_from_seed(SEEDS["firm-a"]), CERTS["firm-b"], "127.0.0.1", 1)]
    with pytest.raises(ConfigError, match="does not carry the member key"):
        TlsTransport("firm-a", SEEDS["firm-a"], bad)
