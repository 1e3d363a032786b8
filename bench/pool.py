"""Lending a fixed set of client connections to the load generator's workers, one each.

The generator runs ``concurrency`` workers and each client holds ``concurrency`` connections,
so a borrow never waits in practice; the pool exists so that a connection is never used by two
requests at once whatever the worker count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Pool(Generic[T]):
    def __init__(self, items: Sequence[T]) -> None:
        self.items = list(items)
        self._send, self._receive = trio.open_memory_channel[T](len(self.items))
        for item in self.items:
            self._send.send_nowait(item)

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[T]:
        item = await self._receive.receive()
        try:
            yield item
        finally:
            self._send.send_nowait(item)
