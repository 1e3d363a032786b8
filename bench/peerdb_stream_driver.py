"""PeerDB through the write stream: the same four members, measured with the client library.

The cluster is :class:`bench.peerdb_driver.PeerDBDriver`'s (TLS 1.3 between members, LMDB with
``sync = true``, consortium defaults), started fresh. The load generator opens one write stream
(``peerdb.client.open_stream``, docs/stream.md) per member and spreads the writes over them
round-robin, as the HTTP client spreads its connections; each write is one client-signed
transaction (signed in ``prepare``, before the clock starts) asking for ``majority`` and
``unanimous_signed``, and the stream's acknowledgements give when each was reached. The
generator stays open loop: a write is submitted when it is due, whatever is in flight, up to the
streams' windows (``IN_FLIGHT`` writes at once, far above what the cluster can have pending).
Audit, catch-up and storage figures are the ``peerdb`` system's; this one measures only writes.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peerdb.client import StreamClosed, open_stream
from peerdb.core.keys import SigningKey
from peerdb.core.model import OP_PUT, Op, Tx

from bench.drivers import Client, ClientSpec
from bench.errors import SubmitError
from bench.peerdb_driver import LEVELS, NAMESPACE, REQUEST_TIMEOUT_S, PeerDBDriver
from bench.procs import ManagedProcesses

IN_FLIGHT = 8192
"""Writes the generator keeps in flight at most (its worker tasks). By Little's law it covers
8,000 tx/s at a second to ``unanimous_signed``; the streams' own windows (16,384 transactions
each) are larger still, so neither limits a step before the cluster does."""

ERROR_CHARS = 100


class PeerDBStreamDriver(PeerDBDriver):
    name = "peerdb_stream"
    concurrency = IN_FLIGHT

    def how_measured(self) -> dict[str, Any]:
        out = super().how_measured()
        out["client"] = (f"the write stream (peerdb.client.open_stream): one WebSocket per member, client-signed "
                         f"transactions batched into frames by the client library, up to {IN_FLIGHT} writes in "
                         "flight, views majority and unanimous_signed acknowledged per frame")
        return out

    def start(self, procs: ManagedProcesses, workdir: Path) -> ClientSpec:
        spec = super().start(procs, workdir)
        spec["kind"] = "peerdb_stream"
        return spec

    def extra_measurements(self, procs: ManagedProcesses, workdir: Path) -> dict[str, Any]:
        return {}  # measured once, by the peerdb system


class PeerDBStreamClient:
    """Pre-signed transactions over one write stream per member."""

    def __init__(self, spec: ClientSpec, concurrency: int) -> None:
        self._cid = bytes.fromhex(spec["cid"])
        self._members = list(spec["members"])
        self._apis = {m: api for m, api in zip(self._members, spec["apis"])}
        self._keys = {m: SigningKey(bytes.fromhex(seed)) for m, seed in spec["client_seeds"].items()}
        self._txs: list[tuple[str, Tx]] = []
        self._next = itertools.count()
        self._stack = contextlib.AsyncExitStack()
        self._writers: dict[str, Any] = {}

    async def prepare(self, count: int, value_bytes: int) -> None:
        expires = int(time.time() * 1000) + 3_600_000
        nonce = random.getrandbits(40)
        for i in range(count):
            member = self._members[i % len(self._members)]
            value = bytes(random.getrandbits(8) for _ in range(8)) + b"v" * max(0, value_bytes - 8)
            self._txs.append((member, Tx.create(self._keys[member], self._cid, member, nonce + i, expires,
                                                [Op(OP_PUT, NAMESPACE, f"s{nonce + i}", value)])))
        for member, (api, token) in self._apis.items():
            self._writers[member] = await self._stack.enter_async_context(
                open_stream(api, token, views=LEVELS, timeout_s=REQUEST_TIMEOUT_S, drain=False))

    async def submit(self, seq: int, key: bytes, value: bytes) -> Mapping[str, float]:
        index = next(self._next)
        if index >= len(self._txs):
            raise SubmitError("more submissions than prepared transactions")
        member, tx = self._txs[index]
        try:
            pending = await self._writers[member].submit(tx)
        except StreamClosed as exc:  # every later write on this stream fails the same way
            raise SubmitError(f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]) from None
        outcome = await pending.wait()
        if not outcome.ok:
            raise SubmitError(f"{outcome.status} {outcome.code}: {outcome.message}"[:ERROR_CHARS])
        return {level: pending.reached_at[level] for level in LEVELS}

    async def aclose(self) -> None:
        await self._stack.aclose()


def make_client(spec: ClientSpec, concurrency: int) -> Client:
    return PeerDBStreamClient(spec, concurrency)


DRIVER_CLASS = PeerDBStreamDriver
