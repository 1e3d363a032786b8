"""Anchoring inside the node: whose duty it is, which blocks to anchor, and sharing proofs.

Duty rotates (docs/protocol.md, "Anchoring"): interval k = floor(now / anchor_interval) belongs
to members[k mod n]. In its interval the duty member hands every best-chain block above the
anchored height to its :class:`~peerdb.anchor.service.AnchorService`, which publishes one
Bitcoin transaction for all of them. A member that is down simply misses its interval and the
next one anchors; so the consortium pays for at most one anchor per interval, whatever the
block rate, and no member is needed for anchoring to continue.

Confirmed proofs are stored, marked in the block tree, and sent to every member in an
``anchor`` message. Every member verifies every proof it receives offline (Merkle path, OP_RETURN,
partial Merkle tree, header chain, depth) and, when it has a Bitcoin node, also that the header
is on that node's best chain, before it counts the block as anchored.
"""

from __future__ import annotations

import dataclasses

import logging
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import trio

from ..anchor.errors import AnchorProofError, BitcoinRPCError, BitcoinUnavailable
from ..anchor.planner import AnchorItem, AnchorPolicy
from ..anchor.proof import AnchorProof, verify_anchor_proof
from ..anchor.rpc import AnchorMaterial, BitcoinRPC, PublishedAnchor, TxStatus
from ..anchor.service import AnchorRPC, AnchorService, AnchorServiceConfig
from ..core.consortium import Consortium, Params
from ..core.errors import DecodeError, ValidationError
from .alerts import Alert
from .config import NodeConfig
from .engine import Engine, Outgoing
from .messages import AnchorMsg
from .service import NodeService

log = logging.getLogger("peerdb.anchor")

ANCHOR_PENDING_ALERT_MS = 3
"""Multiples of the anchor interval after which unanchored blocks raise ``anchor_pending``."""


def anchor_duty(members: Sequence[str], now_ms: int, interval_s: int) -> str:
    return members[(now_ms // (interval_s * 1000)) % len(members)]


class AnchorBook:
    """Receiving side, on every member (with or without a Bitcoin node of its own).

    A proof is accepted when it verifies offline at the consortium's ``anchor_confirmations``
    depth (so all members agree on what counts as anchored) and, when this member has a Bitcoin
    node, when that node also has the header on its best chain.
    """

    def __init__(self, engine: Engine, *, check_pow: bool, rpc: BitcoinRPC | None) -> None:
        self.engine = engine
        self.check_pow = check_pow
        self.rpc = rpc

    @property
    def min_depth(self) -> int:
        """The depth every member requires, in force now (governance may change it); read under
        the service lock (proofs are recorded through an engine call)."""
        return self.engine.params.anchor_confirmations

    def record(self, proofs: Sequence[AnchorProof], share: bool) -> int:
        fresh = []
        for proof in proofs:
            if self.engine.store.anchor(proof.block_hash) is not None:
                continue
            self.engine.store.record_anchor(proof.block_hash, proof.encode())
            if proof.block_hash in self.engine.tree:
                self.engine.tree.set_anchored(proof.block_hash)
            fresh.append(proof)
        if fresh:
            log.info("anchored %d blocks in Bitcoin block %d", len(fresh), fresh[0].bitcoin_height)
            if share:
                self.engine.outbox.append(Outgoing(None, AnchorMsg(tuple(p.encode() for p in fresh))))
        return len(fresh)

    def on_anchor_message(self, peer: str, msg: AnchorMsg, now_ms: int) -> None:
        good = []
        for raw in msg.proofs:
            try:
                proof = AnchorProof.decode(raw)
                if self.engine.store.anchor(proof.block_hash) is not None:
                    continue
                verified = verify_anchor_proof(proof, proof.block_hash, check_pow=self.check_pow,
                                               min_depth=self.min_depth)
                if self.rpc is not None:
                    self.rpc.check_anchor_in_best_chain(verified)
            except (DecodeError, ValidationError, AnchorProofError) as exc:
                log.warning("rejected anchor proof from %s: %s", peer, exc)
                continue
            except (BitcoinUnavailable, BitcoinRPCError) as exc:
                log.warning("cannot check anchor proof from %s against Bitcoin now: %s", peer, exc)
                continue
            good.append(proof)
        self.record(good, share=False)


class CostedRPC:
    """The Bitcoin RPC as the anchor service uses it, telling ``on_published`` the fee of each
    anchor transaction published (the metrics' fee spent). Runs in the service's worker thread."""

    def __init__(self, rpc: AnchorRPC, on_published: Callable[[int], None]) -> None:
        self.rpc = rpc
        self.on_published = on_published

    def publish_anchor(self, payload: bytes, *, max_fee_sat: int,
                       fee_rate_sat_vb: Decimal | None = None) -> PublishedAnchor:
        published = self.rpc.publish_anchor(payload, max_fee_sat=max_fee_sat, fee_rate_sat_vb=fee_rate_sat_vb)
        self.on_published(published.fee_sat)
        return published

    def tx_status(self, tx_id: str) -> TxStatus:
        return self.rpc.tx_status(tx_id)

    def abandon_transaction(self, tx_id: str) -> None:
        self.rpc.abandon_transaction(tx_id)

    def anchor_material(self, tx_id: str, depth: int) -> AnchorMaterial:
        return self.rpc.anchor_material(tx_id, depth)


class NodeAnchoring:
    def __init__(self, service: NodeService, cfg: NodeConfig, consortium: Consortium,
                 on_published: Callable[[int], None] | None = None) -> None:
        assert cfg.bitcoin is not None  # the daemon builds this only with a [bitcoin] section
        self.service = service
        self.engine = service.engine
        self.cfg = cfg
        self.bitcoin = cfg.bitcoin
        self.consortium = consortium
        # A member may wait deeper than agreed before it shares a proof, never shallower.
        self.confirmations = max(cfg.bitcoin.confirmations or 0, self.params.anchor_confirmations)
        self.rpc = BitcoinRPC(cfg.bitcoin.rpc_url)
        self.book = AnchorBook(self.engine, check_pow=cfg.bitcoin.check_pow, rpc=self.rpc)
        policy = AnchorPolicy(interval_ms=0, interval_blocks=None, confirmations=self.confirmations,
                              max_fee_sat=cfg.bitcoin.fee_budget_sat)
        rpc: AnchorRPC = self.rpc if on_published is None else CostedRPC(self.rpc, on_published)
        self.anchor_service = AnchorService(rpc, self, AnchorServiceConfig(policy=policy), clock=service.clock_ms)
        self.handed_over: set[bytes] = set()
        self.last_duty_interval = -1

    @property
    def params(self) -> Params:
        """The parameters in force at the next height (governance may change the interval)."""
        return self.service.view.params

    @property
    def members(self) -> tuple[str, ...]:
        return self.service.view.current.member_names

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.anchor_service.run)
            nursery.start_soon(self._duty_loop)
            task_status.started()

    def _follow_params(self) -> None:
        """A set_params vote may change the confirmations every member requires."""
        want = max(self.bitcoin.confirmations or 0, self.params.anchor_confirmations)
        if want != self.confirmations:
            log.info("anchoring now waits for %d confirmations (was %d)", want, self.confirmations)
            self.confirmations = want
            policy = dataclasses.replace(self.anchor_service.config.policy, confirmations=want)
            self.anchor_service.config = dataclasses.replace(self.anchor_service.config, policy=policy)
            self.anchor_service.planner.policy = policy

    async def _duty_loop(self) -> None:
        """Wake the anchor service at the start of each interval that is ours."""
        while True:
            self._follow_params()
            interval_ms = self.params.anchor_interval_s * 1000  # governance may change it
            now = self.service.clock_ms()
            k = now // interval_ms
            if anchor_duty(self.members, now, self.params.anchor_interval_s) == self.engine.me \
                    and k != self.last_duty_interval:
                self.anchor_service.wake()
            await trio.sleep(max(0.05, ((k + 1) * interval_ms - now) / 1000))

    # --- AnchorHost ------------------------------------------------------------------------------

    async def new_blocks(self) -> Sequence[AnchorItem]:
        now = self.service.clock_ms()
        interval_ms = self.params.anchor_interval_s * 1000
        k = now // interval_ms
        if k == self.last_duty_interval or \
                anchor_duty(self.members, now, self.params.anchor_interval_s) != self.engine.me:
            return []
        items = await self.service.read(self._unanchored)  # the tree belongs to the engine: its lock
        if not items:
            return []
        self.last_duty_interval = k
        self.handed_over.update(i.block_hash for i in items)
        log.info("anchor duty: anchoring heights %d-%d", items[0].height, items[-1].height)
        return items

    def _unanchored(self) -> list[AnchorItem]:
        """Best-chain blocks above the anchored height not handed over yet (under the lock).
        Hand-overs below the anchored height are forgotten: the set stays as small as the
        stretch still waiting for its anchor."""
        tree = self.engine.tree
        heads = tree.heads()
        self.handed_over = {h for h in self.handed_over if tree.held(h) and tree.header(h).height > heads.anchored}
        items = []
        for height in range(heads.anchored + 1, heads.tentative + 1):
            block_hash = tree.best_chain_hash(height)
            if block_hash is not None and block_hash not in self.handed_over:
                items.append(AnchorItem(height, block_hash))
        return items

    async def on_proof(self, proof: AnchorProof) -> None:
        await self.service.call(self.book.record, [proof], True)

    # --- status and alerts ---------------------------------------------------------------------

    def status_dict(self) -> dict[str, Any]:
        status = self.anchor_service.status()
        return {"state": status.state, "reason": status.reason, "lines": status.lines(),
                "summary": "; ".join(status.lines()) or status.state,
                "duty": anchor_duty(self.members, self.service.clock_ms(),
                                    self.params.anchor_interval_s)}

    def alert_conditions(self) -> dict[str, Any]:
        """Anchoring alerts; called by the service's alert loop under the service lock (it reads
        the block tree)."""
        status = self.anchor_service.status()
        alerts = []
        if status.state == "failed":
            alerts.append(Alert("anchor_pending", f"anchoring failed: {status.reason}", subject="failed"))
        heads = self.engine.tree.heads()
        if heads.tentative > heads.anchored and status.waiting_since_ms is not None:
            waited = status.now_ms - status.waiting_since_ms
            if waited > ANCHOR_PENDING_ALERT_MS * self.params.anchor_interval_s * 1000:
                alerts.append(Alert("anchor_pending", "; ".join(status.lines()), subject="pending"))
        return {"alerts": alerts}
