"""The anchoring service: drives :class:`~.planner.AnchorPlanner` against a Bitcoin node.

A trio service owned by the node's nursery. Every round it takes new block hashes from its host,
asks the node about the transactions it is watching, turns confirmed batches into verified
:class:`~.proof.AnchorProof` objects for the host, and publishes a new anchor when the planner
says one is due. RPC calls are blocking and run in worker threads.

Failures of the Bitcoin node (unreachable, refusing, over the fee budget) are expected states,
not crashes: they become a batch state with a reason that :meth:`AnchorService.status` shows,
and are retried. Anything else is a bug and propagates to the nursery.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar, cast

import trio

from peerdb.core.errors import DecodeError, ValidationError

from .errors import BitcoinRPCError, BitcoinUnavailable, FeeOverBudget
from .planner import (
    AnchorItem,
    AnchorPlanner,
    AnchorPolicy,
    AnchorStatus,
    BatchStatus,
    Observation,
    PlannerError,
)
from .proof import AnchorProof, build_anchor_proofs
from .rpc import AnchorMaterial, PublishedAnchor, TxStatus

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 5.0
"""How often to ask the node about watched transactions. Bitcoin blocks come every ten minutes
on average; five seconds makes a confirmation visible promptly at negligible RPC cost."""

T = TypeVar("T")


class AnchorRPC(Protocol):
    """The calls the service makes; :class:`~.rpc.BitcoinRPC` provides them (tests may fake them)."""

    def publish_anchor(
        self, payload: bytes, *, max_fee_sat: int, fee_rate_sat_vb: Decimal | None = None
    ) -> PublishedAnchor: ...

    def tx_status(self, tx_id: str) -> TxStatus: ...

    def abandon_transaction(self, tx_id: str) -> None: ...

    def anchor_material(self, tx_id: str, depth: int) -> AnchorMaterial: ...


class AnchorHost(Protocol):
    """What the node daemon provides to the service."""

    async def new_blocks(self) -> Sequence[AnchorItem]:
        """Block hashes to anchor that were not handed over before (after a restart: all
        unanchored). Async so that the host reads its chain under its own lock."""
        ...

    async def on_proof(self, proof: AnchorProof) -> None:
        """Store (and share) the proof for one block; called once per block of a confirmed batch."""
        ...


@dataclass(frozen=True)
class AnchorServiceConfig:
    policy: AnchorPolicy
    fee_rate_sat_vb: Decimal | None = None
    """Fixed fee rate; None lets the node estimate (or use its -fallbackfee)."""
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S


def trio_now_ms() -> int:
    return int(trio.current_time() * 1000)


RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]
"""How blocking RPC calls are run: in a worker thread by default; tests with a fake RPC and
trio's autojump clock run them inline, since virtual time would jump while a thread works."""


async def in_worker_thread(fn: Callable[[], Any]) -> Any:
    # abandon_on_cancel: a node that hangs must not hold up the daemon's shutdown; the thread
    # ends on its own at the RPC timeout.
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class AnchorService:
    """Run with ``nursery.start(service.run)``; read :meth:`status` at any time."""

    def __init__(
        self,
        rpc: AnchorRPC,
        host: AnchorHost,
        config: AnchorServiceConfig,
        *,
        clock: Callable[[], int] = trio_now_ms,
        run_sync: RunSync = in_worker_thread,
    ) -> None:
        self._rpc = rpc
        self._host = host
        self.config = config
        self.planner = AnchorPlanner(config.policy)
        self._clock = clock
        self._run_sync = run_sync
        self._wake = trio.Event()
        self.rounds = 0
        """Completed rounds, so tests can wait for "one more round" without sleeping."""
        self._round_done = trio.Event()

    def status(self) -> AnchorStatus:
        return self.planner.status(self._clock())

    def wake(self) -> None:
        """Run a round now (e.g. the host just committed a block); safe from the trio thread."""
        self._wake.set()

    async def wait_rounds(self, n: int = 1) -> None:
        """Wait until ``n`` more rounds have completed (for tests and the demo)."""
        target = self.rounds + n
        while self.rounds < target:
            await self._round_done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.step()
            self.rounds += 1
            self._round_done.set()
            self._round_done = trio.Event()
            delay = self.config.poll_interval_s
            now = self._clock()
            next_due = self.planner.next_due_ms(now)
            if next_due is not None:
                delay = min(delay, max(next_due - now, 0) / 1000)
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        return cast(T, await self._run_sync(functools.partial(fn, *args, **kwargs)))

    async def step(self) -> None:
        """One round: take new blocks, watch transactions, deliver proofs, publish if due."""
        items = await self._host.new_blocks()
        if items:
            self.planner.add(items, self._clock())
        for batch in self.planner.tracked():
            await self._watch(batch)
        for batch in self.planner.confirmed():
            await self._deliver(batch)
        if self.planner.due(self._clock()):
            await self._publish()

    async def _watch(self, batch: BatchStatus) -> None:
        if batch.txid is None:
            raise PlannerError(f"batch {batch.batch_id}: tracked without a txid")
        try:
            st = await self._call(self._rpc.tx_status, batch.txid)
        except (BitcoinUnavailable, BitcoinRPCError) as exc:
            self.planner.observe_failed(batch.batch_id, f"cannot check anchor tx: {exc}", self._clock())
            return
        outcome = self.planner.observe(
            batch.batch_id, confirmations=st.confirmations, in_mempool=st.in_mempool, now_ms=self._clock()
        )
        if outcome is Observation.DROPPED:
            log.warning("anchor tx %s dropped by Bitcoin; re-anchoring %d blocks", batch.txid, len(batch.items))
            try:
                # Frees the inputs in the wallet; if the node refuses (e.g. the tx came back to
                # the mempool meanwhile) the re-anchor still goes ahead.
                await self._call(self._rpc.abandon_transaction, batch.txid)
            except (BitcoinUnavailable, BitcoinRPCError) as exc:
                log.info("could not abandon dropped anchor tx %s: %s", batch.txid, exc)
        elif outcome is Observation.CONFIRMED:
            log.info("anchor tx %s confirmed (%d blocks)", batch.txid, len(batch.items))

    async def _deliver(self, batch: BatchStatus) -> None:
        if batch.txid is None:
            raise PlannerError(f"batch {batch.batch_id}: confirmed without a txid")
        depth = self.config.policy.confirmations
        try:
            material = await self._call(self._rpc.anchor_material, batch.txid, depth)
            proofs = build_anchor_proofs(
                batch.block_hashes,
                bitcoin_tx=material.raw_tx,
                txoutproof=material.txoutproof,
                headers=material.headers,
                bitcoin_height=material.height,
            )
        except (BitcoinUnavailable, BitcoinRPCError, ValidationError, DecodeError) as exc:
            # A reorg between the RPC calls, or the node went away: try again next round.
            self.planner.proofs_failed(batch.batch_id, f"cannot build proofs: {exc}", self._clock())
            return
        for proof in proofs:
            await self._host.on_proof(proof)
        self.planner.delivered(batch.batch_id, self._clock())
        log.info("anchor tx %s: delivered %d proofs", batch.txid, len(proofs))

    async def _publish(self) -> None:
        plan = self.planner.start_batch(self._clock())
        try:
            published = await self._call(
                self._rpc.publish_anchor,
                plan.payload,
                max_fee_sat=self.config.policy.max_fee_sat,
                fee_rate_sat_vb=self.config.fee_rate_sat_vb,
            )
        except FeeOverBudget as exc:
            self.planner.publish_failed(plan.batch_id, str(exc), self._clock())
            log.warning("anchor for %d blocks not published: %s", len(plan.items), exc)
            return
        except (BitcoinUnavailable, BitcoinRPCError) as exc:
            self.planner.publish_failed(plan.batch_id, f"cannot publish anchor: {exc}", self._clock())
            log.warning("anchor for %d blocks not published: %s", len(plan.items), exc)
            return
        self.planner.published(plan.batch_id, published.txid, published.raw_tx, published.fee_sat, self._clock())
        log.info("anchor tx %s published for %d blocks, fee %d sat", published.txid, len(plan.items), published.fee_sat)
