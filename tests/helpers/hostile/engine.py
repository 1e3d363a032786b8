"""The hostile member's engine: the real :class:`~peerdb.node.engine.Engine` with misbehaviour
switched in at its seams (signing, proposing, the status it advertises, what it sends).

Everything it does wrong it does with its own member key, as a firm that went rogue would: it
cannot forge another member's signature, only sign what an honest member never would, withhold
what it should give, or send what is stale or false. Every act is written into :attr:`report`.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

from peerdb.anchor.proof import AnchorProof
from peerdb.core.errors import DoubleSignRefused
from peerdb.core.model import Block, BlockSignature, Header
from peerdb.core.state import Effects
from peerdb.core.validate import proposer_for, round_at
from peerdb.node.catchup import blocks_answer
from peerdb.node.engine import Engine, Outgoing
from peerdb.node.messages import (
    AnchorMsg,
    EvidenceMsg,
    GetBlocksMsg,
    Message,
    ObjectionMsg,
    ProposalMsg,
    SigsMsg,
    StatusMsg,
    TxsMsg,
)

from ..anchor_proofs import make_anchor
from .switches import Report, Switches

OLD_MESSAGES = 200
"""Messages of our own kept for replays: the first ones we sent (the oldest there are)."""
REPLAY_BATCH = 20
"""Old messages sent again per misbehaviour tick."""
FORGE_EVERY_MS = 500
"""Forged anchor proofs go out at most this often: each costs every honest member a Bitcoin RPC."""
FORK_FALLBACK_MS = 2000
"""If the colluders' fork has not grown for this long, any colluder free at the next height
proposes, not only the one whose round comes first."""
LIE_AHEAD = 1000
"""Heights a lying status claims beyond our real tip."""

_REPLAYABLE = (ProposalMsg, SigsMsg, TxsMsg, EvidenceMsg, ObjectionMsg)


class HostileEngine(Engine):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.switches = Switches()
        self.report = Report()
        self._old: list[Message] = []
        self._old_status: list[StatusMsg] = []
        self._replay_pos = 0
        self._replaying = False
        self._endorsed = 0
        self._oot_heights: set[int] = set()
        self._forged_ms = 0
        self._fork_base: Header | None = None
        self._fork_main_child: bytes | None = None
        self._fork: list[Header] = []
        self._fork_seen = (0, 0)
        """(fork length, when it last grew or the attack began)."""
        super().__init__(*args, **kwargs)
        self.report.member = self.me

    # --- switches --------------------------------------------------------------------------------

    def apply_switches(self, switches: Switches) -> None:
        self.switches = switches
        self.tree.settle = switches.finality
        if switches.orphan_from is None:
            self._fork_base, self._fork_main_child, self._fork, self._fork_seen = None, None, [], (0, 0)
        elif self._fork_base is None:
            base = self.tree.best_chain_hash(switches.orphan_from)
            if base is None:
                raise ValueError(f"orphan_from: no best-chain block at height {switches.orphan_from}")
            self._fork_base = self.tree.header(base)
            self._fork_main_child = self.tree.best_chain_hash(switches.orphan_from + 1)
        self.report.switches = switches.to_json()

    # --- seams of the honest engine ---------------------------------------------------------------

    def take_outbox(self) -> list[Outgoing]:
        out = super().take_outbox()
        if not self._replaying and len(self._old) < OLD_MESSAGES:
            self._old.extend(o.msg for o in out if isinstance(o.msg, _REPLAYABLE))
        return out

    def on_txs(self, peer: str | None, msg: TxsMsg, now_ms: int) -> None:
        # Others' client transactions are the replay that matters: each is included by then.
        if len(self._old) < OLD_MESSAGES:
            self._old.append(msg)
        super().on_txs(peer, msg, now_ms)

    def on_get_blocks(self, peer: str | None, msg: GetBlocksMsg, now_ms: int) -> None:
        if peer is not None:
            self.report.asked[peer] = self.report.asked.get(peer, 0) + 1
        super().on_get_blocks(peer, msg, now_ms)

    def status_message(self) -> StatusMsg:
        real = super().status_message()
        if len(self._old_status) < 4:
            self._old_status.append(real)
        if not self.switches.lie_status:
            return real
        self.report.lies += 1
        everyone = tuple(self.gov.at(real.height + 1).member_names)
        # Alternately claim that nobody and that everybody signed our recent blocks.
        recent = tuple((h, everyone if i % 2 else ()) for i, (h, _) in enumerate(real.recent))
        return StatusMsg(os.urandom(32), real.height + LIE_AHEAD, recent)

    def proposal_due(self, now_ms: int) -> bool:
        return not self.switches.silent and super().proposal_due(now_ms)

    def maybe_propose(self, now_ms: int) -> Block | None:
        block = super().maybe_propose(now_ms)
        if block is not None and self.switches.equivocate:
            self._equivocate(block, now_ms)
        return block

    def _maybe_sign_tip(self, now_ms: int) -> None:
        if not self.switches.withhold:
            super()._maybe_sign_tip(now_ms)

    def _store_new_block(self, block: Block, proposer_sig: BlockSignature, effects: Effects,
                         own: bool = False, cosign_now: bool = True) -> None:
        if self.switches.withhold and not own:
            cosign_now = False
        super()._store_new_block(block, proposer_sig, effects, own=own, cosign_now=cosign_now)
        if not own and self.switches.sign_two_forks:
            self._sign_second(block.header)

    # --- misbehaviour ------------------------------------------------------------------------------

    def misbehave(self, now_ms: int) -> None:
        """One tick of whatever the switches say (called under the service lock)."""
        sw = self.switches
        if sw.endorse > self._endorsed:
            self._endorse(now_ms)
        if sw.out_of_turn:
            self._out_of_turn(now_ms)
        if sw.replay:
            self._replay()
        if sw.forge_anchors and now_ms - self._forged_ms >= FORGE_EVERY_MS:
            self._forged_ms = now_ms
            self._forge_anchors()
        if self._fork_base is not None:
            self._orphan_step(now_ms)
        self._update_report()

    def _sign(self, header: Header) -> BlockSignature | None:
        key = self.key_at(header.height, self.state_for(header.prev, header.height))
        return None if key is None else BlockSignature.create(key, self.cid, self.me, header.hash)

    def _equivocate(self, block: Block, now_ms: int) -> None:
        parent = self.tree.header(block.header.prev)
        twin = self._build_block(parent, block.height, block.header.round, max(now_ms, block.header.time_ms) + 1)
        sig = self._sign(twin.header)
        if sig is None or twin.hash == block.hash:
            return
        self._send(ProposalMsg(twin.raw, sig))
        self.report.equivocated.append([block.height, block.hash.hex(), twin.hash.hex()])

    def _sign_second(self, header: Header) -> None:
        if self.me in self.tree.signers(header.hash):
            return
        if not [b for b in self.tree.signed_at(self.me, header.height) if b != header.hash]:
            return
        sig = self._sign(header)
        if sig is not None:
            self._send(SigsMsg((sig,)))
            self.report.two_forks.append([header.height, header.hash.hex()])

    def _endorse(self, now_ms: int) -> None:
        self._endorsed = self.switches.endorse
        tip = self.tree.best_tip
        Engine._maybe_sign_tip(self, now_ms)
        if self.me in self.tree.signers(tip.hash):
            self.report.endorsed.append(tip.height)

    def _out_of_turn(self, now_ms: int) -> None:
        tip = self.tree.best_tip
        height = tip.height + 1
        if height in self._oot_heights:
            return
        self._oot_heights.add(height)
        names = self.gov.at(height).member_names
        params = self.params
        current = round_at(now_ms - self.tip_seen_ms, params.turn_timeout_ms)
        theirs = current if proposer_for(names, height, current) != self.me else current + 1
        self._send_invalid(tip, height, theirs, now_ms, "not_ours")
        ours = next(r for r in range(current, current + len(names)) if proposer_for(names, height, r) == self.me)
        if tip.time_ms + ours * params.turn_timeout_ms - params.clock_skew_ms > now_ms + params.clock_skew_ms:
            self._send_invalid(tip, height, ours, now_ms, "early")

    def _send_invalid(self, tip: Header, height: int, round_: int, now_ms: int, kind: str) -> None:
        block = self._build_block(tip, height, round_, now_ms)
        sig = self._sign(block.header)
        if sig is not None:
            self._send(ProposalMsg(block.raw, sig))
            self.report.out_of_turn.append([height, round_, block.hash.hex(), kind])

    def _replay(self) -> None:
        counts: Counter[str] = Counter(self.report.replayed)
        self._replaying = True
        try:
            if self._old:
                for i in range(REPLAY_BATCH):
                    msg = self._old[(self._replay_pos + i) % len(self._old)]
                    self._send(msg)
                    counts[type(msg).__name__] += 1
                self._replay_pos += REPLAY_BATCH
            for status in self._old_status:
                self._send(status)
                counts["StatusMsg"] += 1
            answer = blocks_answer(self.tree, self.store, self._served_signatures, GetBlocksMsg(1, 16)).msg
            self._send(answer)
            counts["BlocksMsg"] += 1
        finally:
            self._replaying = False
        self.report.replayed = dict(counts)

    def _forge_anchors(self) -> None:
        tip = self.tree.best_tip
        if tip.height == 0:
            return
        counts: Counter[str] = Counter(self.report.forged)
        depth = max(1, self.params.anchor_confirmations)
        # Self-consistent, and mined at regtest difficulty: only a Bitcoin node can tell that its
        # block is nowhere in Bitcoin's chain.
        nowhere = make_anchor([tip.hash], depth=depth, height=1)[0]
        real = self._a_real_proof()
        # A real proof (when there is one) claimed for another block: its Merkle path leads elsewhere.
        moved = dataclasses.replace(real or nowhere, block_hash=tip.prev if real is None else tip.hash)
        proofs = (nowhere.encode(), moved.encode(), b"\xa1\x61v\x02")
        counts.update(["not_in_bitcoin", "path_to_another_block", "undecodable"])
        self._send(AnchorMsg(proofs))
        self.report.forged = dict(counts)

    def _a_real_proof(self) -> AnchorProof | None:
        anchored = self.tree.heads().anchored
        for height in range(anchored, max(0, anchored - 64), -1):
            block_hash = self.tree.best_chain_hash(height)
            raw = self.store.anchor(block_hash) if block_hash is not None else None
            if raw is not None:
                return AnchorProof.decode(raw)
        return None

    # --- the colluders' fork -------------------------------------------------------------------------

    def _refresh_fork(self) -> None:
        """The fork as the tree holds it: from the base, at each height the child (other than the
        best chain's block after the base) with the most signatures, then the lowest hash, so
        that every colluder follows the same blocks once their signatures have travelled."""
        assert self._fork_base is not None
        children: dict[bytes, list[Header]] = {}
        for header in self.tree.headers():
            if header.height > self._fork_base.height and header.hash != self._fork_main_child:
                children.setdefault(header.prev, []).append(header)
        chain: list[Header] = []
        tip = self._fork_base
        while children.get(tip.hash):
            tip = min(children[tip.hash], key=lambda k: (-len(self.tree.signers(k.hash)), k.hash))
            chain.append(tip)
        self._fork = chain

    def _orphan_step(self, now_ms: int) -> None:
        """Co-sign the fork wherever the guard allows; propose its next block when due."""
        assert self._fork_base is not None
        self._refresh_fork()
        if len(self._fork) != self._fork_seen[0] or not self._fork_seen[1]:
            self._fork_seen = (len(self._fork), now_ms)
        for header in self._fork:
            if self.me in self.tree.signers(header.hash) or self.tree.signed_at(self.me, header.height):
                continue
            sig = self._sign(header)
            if sig is None:
                continue
            try:
                self.store.guard_sign(header.height, header.round, header.hash, signature=sig, others=self.unsaved_sigs)
            except DoubleSignRefused:
                continue
            self.unsaved_sigs = []
            self.tree.add_signature(header.hash, self.me)
            self._send(SigsMsg((sig,)))
        self._after_change(now_ms)
        self._propose_on_fork(now_ms)

    def _propose_on_fork(self, now_ms: int) -> None:
        assert self._fork_base is not None
        parent = self._fork[-1] if self._fork else self._fork_base
        height = parent.height + 1
        if self.tree.signed_at(self.me, height):
            return
        names = self.gov.at(height).member_names
        due = next(((p, r) for r in range(len(names)) if (p := proposer_for(names, height, r)) in
                    self.switches.colluders and not self.tree.signed_at(p, height)), None)
        stuck = now_ms - self._fork_seen[1] > FORK_FALLBACK_MS
        if due is None or (due[0] != self.me and not stuck):
            return
        round_ = due[1] if due[0] == self.me else \
            next(r for r in range(len(names)) if proposer_for(names, height, r) == self.me)
        params = self.params
        time_ms = max(now_ms, parent.time_ms, parent.time_ms + round_ * params.turn_timeout_ms - params.clock_skew_ms)
        if time_ms > now_ms + params.clock_skew_ms:
            return  # that round cannot have begun yet, even within the tolerated skew
        block = self._build_block(parent, height, round_, time_ms)
        sig = self._sign(block.header)
        if sig is None:
            return
        try:
            self._store_new_block(block, sig, self.effects_cache[block.hash], own=True)
        except DoubleSignRefused:
            return
        self._send(ProposalMsg(block.raw, sig))
        self._after_change(now_ms)
        self._refresh_fork()

    # --- the report ----------------------------------------------------------------------------------

    def _update_report(self) -> None:
        self.report.tip = self.tree.best_tip.height
        latest = self.tree.latest_signed(self.me)
        self.report.last_signed = self.tree.header(latest).height if latest is not None and latest in self.tree else 0
        self.report.fork = [[h.height, h.hash.hex(), sorted(self.tree.signers(h.hash))] for h in self._fork]
        if self._fork_main_child is not None and self._fork_main_child in self.tree:
            self.report.best_leaves_settled = not self.tree.on_best_chain(self._fork_main_child)

