"""The write stream from plain Python: :class:`SyncStream` runs the trio writer in a thread.

::

    from peerdb.client import SyncStream
    with SyncStream.from_config("/etc/peerdb/firm-a.toml", views=("majority",)) as stream:
        for row in rows:
            stream.put("books", row.key, row.value)   # returns the txid; blocks only on back-pressure
        outcomes = stream.drain()                      # every transaction's TxOutcome, in final order

The writer and its state live on the background thread's trio loop; the calling thread reaches
them only through ``trio.from_thread.run`` (which runs the call on that loop), and outcomes come
back as immutable :class:`TxOutcome` values through a thread-safe queue. Nothing is shared
between the threads otherwise.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..core.model import Op, Tx
from ..stream_frames import Busy
from .http import node_config_endpoint
from .signer import TxSigner
from .stream import DEFAULT_PIPELINE, StreamStats, StreamWriter, TxOutcome, open_stream

T = TypeVar("T")

START_TIMEOUT_S = 30.0
"""Longest the constructor waits for the thread to connect (the connect timeout is inside it)."""


class SyncStream:
    """A write stream for synchronous code; a context manager (``close`` drains, then closes)."""

    def __init__(self, api: str, token: str, *, views: Iterable[str] = (), timeout_s: float = 30.0,
                 signer: TxSigner | None = None, pipeline: int = DEFAULT_PIPELINE,
                 on_busy: Callable[[Busy], None] | None = None, frame_txs: int | None = None) -> None:
        self._outcomes: queue.SimpleQueue[TxOutcome] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._writer: StreamWriter | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._options: dict[str, Any] = dict(views=tuple(views), timeout_s=timeout_s, signer=signer,
                                             pipeline=pipeline, on_final=self._outcomes.put, on_busy=on_busy,
                                             frame_txs=frame_txs)
        self._thread = threading.Thread(target=trio.run, args=(self._main, api, token), name="peerdb-stream",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError(f"no stream to {api} within {START_TIMEOUT_S} s")
        failure = self._failure()
        if failure is not None:
            self._thread.join()
            raise failure

    def _failure(self) -> BaseException | None:
        """Why the thread could not open the stream (set by the thread before ``_ready``)."""
        return self._startup_error

    @classmethod
    def from_config(cls, path: str | Path, **options: Any) -> "SyncStream":
        """The node config's API address and token, and its client key as the signer."""
        api, token = node_config_endpoint(path)
        options.setdefault("signer", TxSigner.from_node_config(path))
        return cls(api, token, **options)

    async def _main(self, api: str, token: str) -> None:
        try:
            async with open_stream(api, token, **self._options) as writer:
                self._writer = writer
                self._stop = trio.Event()
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
                return
            raise

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("the stream is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    # --- writing -------------------------------------------------------------------------------

    def submit(self, tx: Tx) -> bytes:
        """Queue a signed transaction; returns its txid. Blocks while the node's window is full."""
        return self.submit_many([tx])[0]

    def submit_many(self, txs: Iterable[Tx]) -> list[bytes]:
        """Queue several (one hop to the stream's thread for all of them)."""
        batch = list(txs)
        self._call(self._submit_all, batch)
        return [tx.txid for tx in batch]

    async def _submit_all(self, txs: list[Tx]) -> None:
        assert self._writer is not None
        for tx in txs:
            await self._writer.submit(tx)

    def put(self, namespace: str, key: str, value: bytes | str) -> bytes:
        return self.submit(self._signer().put(namespace, key, value))

    def delete(self, namespace: str, key: str) -> bytes:
        return self.submit(self._signer().delete(namespace, key))

    def write(self, ops: list[Op]) -> bytes:
        """One atomic transaction of ``ops``."""
        return self.submit(self._signer().sign(ops))

    def _signer(self) -> TxSigner:
        signer = self._options["signer"]
        if signer is None:
            raise ValueError("this stream has no signer: pass signer=, or submit signed transactions")
        assert isinstance(signer, TxSigner)
        return signer

    # --- outcomes ------------------------------------------------------------------------------

    def outcomes(self) -> Iterator[TxOutcome]:
        """The outcomes that are final so far (each once), without waiting."""
        while True:
            try:
                yield self._outcomes.get_nowait()
            except queue.Empty:
                return

    def drain(self) -> list[TxOutcome]:
        """Wait until every transaction submitted so far is final; its outcomes not yet taken."""
        self._call(self._drain)
        return list(self.outcomes())

    async def _drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    def stats(self) -> StreamStats:
        """A copy of the writer's counters (busy frames seen, window waits, frames sent)."""
        return self._call(self._stats_copy)  # type: ignore[no-any-return]

    async def _stats_copy(self) -> StreamStats:
        assert self._writer is not None
        s = self._writer.stats
        return StreamStats(s.frames_sent, s.txs_sent, s.largest_frame, s.busy_frames, set(s.held), s.window_waits,
                           s.window_wait_s, dict(s.outcomes))

    @property
    def member(self) -> str:
        assert self._writer is not None
        return self._writer.member  # set once before the constructor returned; never changes

    # --- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Drain, close the stream, stop the thread."""
        if self._token is not None and self._thread.is_alive():
            try:
                self._call(self._drain)
            finally:
                trio.from_thread.run_sync(self._stop_set, trio_token=self._token)
        self._thread.join()

    def _stop_set(self) -> None:
        assert self._stop is not None
        self._stop.set()

    def __enter__(self) -> "SyncStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
