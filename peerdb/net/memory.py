"""An in-process network for deterministic multi-node tests (trio memory streams, MockClock).

Each member gets a :class:`MemoryTransport` from one :class:`MemoryHub`; dialling a member
returns one end of a fresh in-memory stream pair and hands the other end to that member's
listener. The hub plays the part of TLS: it tells each side who the other is. Framing, hello,
the one-connection rule, queues and reconnects above it are the production code.

Tests steer the network through the hub: :meth:`MemoryHub.cut` / :meth:`MemoryHub.partition`
break links (open connections fail at once with :class:`trio.BrokenResourceError`, like a
reset, and new dials are refused until :meth:`MemoryHub.heal`), :meth:`MemoryHub.disconnect`
kills a member's connections without cutting anything (they reconnect), and
:meth:`MemoryHub.connect_raw` opens a bare stream into a listener under any identity, to play a
hostile or broken peer. A silent black hole is not modelled; a stalled peer can be played with
``connect_raw`` (say hello, then say nothing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import trio
import trio.testing

from peerdb.core.errors import LocalError

from .transport import AuthenticatedStream, Handler, Transport


class _HubStream(trio.abc.Stream):
    """One end of a hub link: a pair of trio memory streams the hub can break at any moment."""

    def __init__(self, link: _Link, send: trio.testing.MemorySendStream, receive: trio.testing.MemoryReceiveStream) -> None:
        self._link = link
        self._send = send
        self._receive = receive
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._link.broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("memory: link broken by the hub")
        try:
            await self._send.send_all(data)
        except trio.BrokenResourceError:
            if self._link.broken:  # the break happened while we were sending: say so
                raise trio.BrokenResourceError("memory: link broken by the hub") from None
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._send.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._link.broken and not self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("memory: link broken by the hub")
        data = await self._receive.receive_some(max_bytes)
        if self._link.broken and not self._closed:
            raise trio.BrokenResourceError("memory: link broken by the hub")
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._send.close()
        self._receive.close()
        self._link.end_closed()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def wake_for_break(self) -> None:
        """Wake a pending ``receive_some`` so it sees the break (an EOF marker it will not return)."""
        self._receive.put_eof()


class _Link:
    def __init__(self, hub: MemoryHub, dialler: str, acceptor: str) -> None:
        self.hub = hub
        self.members = frozenset({dialler, acceptor})
        self.broken = False
        forward_send, forward_receive = trio.testing.memory_stream_one_way_pair()
        back_send, back_receive = trio.testing.memory_stream_one_way_pair()
        self.dialler_end = _HubStream(self, forward_send, back_receive)
        self.acceptor_end = _HubStream(self, back_send, forward_receive)

    def end_closed(self) -> None:
        self.hub._links.discard(self)  # a connection is over once either end has closed it

    def break_(self) -> None:
        if self.broken:
            return
        self.broken = True
        self.dialler_end.wake_for_break()
        self.acceptor_end.wake_for_break()
        self.hub._links.discard(self)


class MemoryHub:
    """The switchboard all in-memory transports of one test share."""

    def __init__(self) -> None:
        self._listeners: dict[str, trio.MemorySendChannel[AuthenticatedStream]] = {}
        self._names: set[str] = set()
        self._cut: set[frozenset[str]] = set()
        self._links: set[_Link] = set()

    def transport(self, name: str) -> MemoryTransport:
        self._names.add(name)
        return MemoryTransport(self, name)

    # -- steering ------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Break the a-b link now and refuse dials between them until healed."""
        pair = frozenset({a, b})
        self._cut.add(pair)
        for link in [link for link in self._links if link.members == pair]:
            link.break_()

    def mend(self, a: str, b: str) -> None:
        """Allow the a-b link again (the members reconnect on their own, with backoff)."""
        self._cut.discard(frozenset({a, b}))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between members of different groups (links inside a group stay)."""
        sets = [set(group) for group in groups]
        for index, group in enumerate(sets):
            for other in sets[index + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def isolate(self, name: str) -> None:
        """Cut ``name`` off from every other member this hub knows."""
        for other in self._names - {name}:
            self.cut(name, other)

    def heal(self) -> None:
        """Undo every cut."""
        self._cut.clear()

    def disconnect(self, name: str) -> None:
        """Break every open connection of ``name`` without cutting anything (they reconnect)."""
        for link in [link for link in self._links if name in link.members]:
            link.break_()

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset({a, b}) in self._cut

    def open_links(self, a: str, b: str) -> int:
        """Connections currently open between a and b (the one-connection rule makes this 1)."""
        return sum(1 for link in self._links if link.members == frozenset({a, b}))

    def is_listening(self, name: str) -> bool:
        return name in self._listeners

    async def connect_raw(self, identity: str, target: str) -> trio.abc.Stream:
        """A bare stream into ``target``'s listener, which will take it to be ``identity``."""
        return await self._dial(identity, target)

    # -- used by MemoryTransport ---------------------------------------------------------------

    async def _dial(self, dialler: str, target: str) -> _HubStream:
        await trio.lowlevel.checkpoint()
        if frozenset({dialler, target}) in self._cut:
            raise ConnectionRefusedError(f"memory: link {dialler}-{target} is cut")
        listener = self._listeners.get(target)
        if listener is None:
            raise ConnectionRefusedError(f"memory: {target} is not listening")
        link = _Link(self, dialler, target)
        self._links.add(link)
        listener.send_nowait(AuthenticatedStream(link.acceptor_end, dialler, f"memory:{dialler}"))
        return link.dialler_end

    def _register(self, name: str, channel: trio.MemorySendChannel[AuthenticatedStream]) -> None:
        if name in self._listeners:
            raise LocalError(f"memory: {name} is already listening")
        self._listeners[name] = channel

    def _unregister(self, name: str, channel: trio.MemorySendChannel[AuthenticatedStream]) -> None:
        if self._listeners.get(name) is channel:
            del self._listeners[name]


class MemoryTransport(Transport):
    """The :class:`Transport` of member ``name`` on a :class:`MemoryHub`."""

    def __init__(self, hub: MemoryHub, name: str) -> None:
        self.hub = hub
        self.name = name

    async def connect(self, peer: str, attempt: int = 0) -> AuthenticatedStream:
        stream = await self.hub._dial(self.name, peer)
        return AuthenticatedStream(stream, peer, f"memory:{peer}")

    async def serve(self, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[AuthenticatedStream](math.inf)
        self.hub._register(self.name, send)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async for accepted in receive:
                    nursery.start_soon(handler, accepted)
        finally:
            self.hub._unregister(self.name, send)
            for _ in range(receive.statistics().current_buffer_used):
                pending = receive.receive_nowait()
                if isinstance(pending.stream, _HubStream):
                    pending.stream.close()
