"""The consensus engine: one member's protocol logic, without sockets or timers.

The engine takes messages and ticks, consults the pure core for every decision, persists through
the store, and answers with the messages to send. It never blocks on the network and never
reads a clock of its own: ``now_ms`` is passed in. The trio layer (:mod:`peerdb.node.service`)
feeds it, serialised by one lock, and runs it in a worker thread in production because store
writes fsync.

Why one module of this size: every handler below reads and changes the same few pieces of state
(the block tree, the signature pool, the signing guard, the head) and the invariants below hold
only across all of them together; what has its own state moved out (admission to
:mod:`.mempool`, keys to :mod:`.identity`, pruning to :mod:`.chainkeeper`, catch-up answers to
:mod:`.catchup`, alert rules to :mod:`.alerts`, body selection to :mod:`peerdb.core.blockbody`).

Invariants it keeps:
* a block enters the tree only after full validation against its parent's state;
* a signature leaves the engine only after the store's signing guard durably recorded it;
* the store's head always equals the tree's best tip after every handler returns.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.blockbody import Admit, header_template, select_body
from ..core.blockdecode import decode_block_fast, peek_header_fast
from ..core.chain import BlockTree, SettledConflict, ViewHeads
from ..core.consortium import Consortium, Params
from ..core.errors import (
    CorruptionError,
    DecodeError,
    DoubleSignRefused,
    LocalError,
    SignatureError,
    StorageError,
    ValidationError,
)
from ..core.keys import SigningKey
from ..core.membership import GOVERNANCE_DELAY, ConsortiumState, StateCache
from ..core.merkle import merkle_root
from ..core.model import (Block, BlockSignature, Evidence, Header, Objection, Tx, block_ns_tx_root, consortium_id,
                          genesis_header)
from ..core.state import BlockRun, Effects, check_tx_time
from ..core.validate import (check_block, check_evidence, check_proposer_signature, may_extend, proposer_for,
                             round_at)
from ..store import Store
from .alerts import TURN_RACE, Alert, chain_alerts, not_signing, removed_alert, waiting_for
from .catchup import CatchupThrottle, blocks_answer, missing_signatures, status_message
from .chainkeeper import ChainKeeper
from .counters import EngineCounters, Reorg
from .identity import Identity, network_members, removal_settled, signed_by_some_key
from .mempool import DEFAULT_MEMPOOL_TXS, Mempool, MempoolFull, SubmitResult
from .trace import BlockTrace
from .messages import (
    BlocksMsg,
    EvidenceMsg,
    GetBlocksMsg,
    Message,
    ObjectionMsg,
    ProposalMsg,
    SigsMsg,
    StatusMsg,
    TxsMsg,
)
from .verify import TxSignatureChecker

log = logging.getLogger("peerdb.node")

T = TypeVar("T")

MAX_ORPHANS = 256
"""Proposals whose parent we lack, kept until catch-up brings the parent."""
MAX_PENDING_SIG_BLOCKS = 4096
"""Unknown blocks for which we hold early signatures (signatures can overtake their block)."""
EFFECTS_CACHE = 256
"""Effects of recently validated blocks, so applying them to the head does not recompute them."""
STATE_FOLD_BLOCKS = 8
"""How far above the block :attr:`Engine.gov` follows a child's parent may be for its governance
state to be folded from cached effects instead of read from the store (pipelined children)."""
REFETCHED = frozenset({"block", "header", "signature"})
"""Stored items a node replaces by a good copy from its peers (a block's id is its hash; a
signature is checked with its member's key)."""
REMEDY = {"block": "; a good copy is being fetched from peers (run `peerdb node check --deep` offline to check "
                   "the whole store)",
          "signature": "; it is left out of what the node sends and exports (the tree still counts it: it verified "
                       "when it arrived) until a good copy, fetched from peers, replaces it",
          "objection": "; it is left out of what the node sends and exports; run `peerdb node check --deep` offline "
                       "and restore the data directory or resync it from peers (docs/operations-restore.md)",
          "state": "; the node's state disagrees with its chain: stop it, run `peerdb node check --deep`, and "
                   "restore the data directory or resync it from peers (docs/operations-restore.md)"}
"""What the operator is told for each kind of damaged item (a header as a block; anything else is state)."""


def remedy(item: str) -> str:
    return REMEDY.get("block" if item == "header" else item, REMEDY["state"])


MAX_CORRUPT_ITEMS = 64
"""Corrupt stored items remembered for the alert (more than that: the disk is failing anyway)."""
UNSAVED_SIGS_MAX = 4096
"""Peers' signatures held in memory before a write of their own is forced (see _accept_sigs)."""
APPLIED_FEED_MAX = 4096
"""Applied blocks the feed holds between two takes (a service takes it after every call)."""
MAX_CONFLICTS = 64
"""Blocks leaving out our final block whose signers we remember for the finality alert."""

__all__ = ["AppliedFeed", "Engine", "Outgoing"]


def final_signers(engine: "Engine", final: Header) -> frozenset[str]:
    """Members whose signatures are on the settled block itself (endorsers count too)."""
    return engine.tree.signers(final.hash)


@dataclass(frozen=True)
class Outgoing:
    to: str | None  # None: every other member
    msg: Message


@dataclass
class AppliedFeed:
    """What changed on the best chain during engine calls, for the service to learn where
    transactions landed without reading the store (:meth:`Engine.take_applied`)."""

    blocks: list[Block] = field(default_factory=list)
    """Blocks applied to the head, in order (their objects are the engine's own: no copies)."""
    rolled_back: bool = False
    """Some block left the best chain (or the feed overflowed): whoever follows transactions
    must look them up again."""

    def add(self, block: Block) -> None:
        if len(self.blocks) >= APPLIED_FEED_MAX:
            # Nobody took the feed for a long while (an engine driven without a service): keep
            # memory bounded; the taker then looks its transactions up in the store.
            self.blocks.clear()
            self.rolled_back = True
        self.blocks.append(block)


class Engine:
    def __init__(self, consortium: Consortium, me: str, keys: SigningKey | Iterable[SigningKey], store: Store,
                 now_ms: int, *, mempool_max: int = DEFAULT_MEMPOOL_TXS, verifier: TxSignatureChecker | None = None,
                 idle_block_ms: int | None = None, trace: BlockTrace | None = None) -> None:
        self.consortium = consortium
        self.cid = consortium_id(consortium)
        self.me = me
        self.identity = Identity(me, keys)
        self.keyring = self.identity.keyring
        self.store = store
        self.trace = trace or BlockTrace()
        """Stage timings and block timelines (thread-safe, its own lock; :mod:`peerdb.node.trace`)."""
        self.mempool = Mempool(mempool_max, clock=self.trace.clock)
        self.idle_block_ms = idle_block_ms
        """With an empty pool, propose an empty block only after this long without a block (None:
        every heartbeat). Node policy, not a validity rule: see docs/protocol.md §8.2."""
        self.verifier = verifier or TxSignatureChecker(self.cid)
        self.chain = ChainKeeper(consortium, store)
        """The block tree with its snapshot, pruning and evidence bookkeeping (:attr:`tree`)."""
        self.gov_states = StateCache(consortium)
        """Governance states loaded from the store, by digest (used under the service's lock)."""
        self.gov = ConsortiumState(consortium)
        """The governance state after the best tip: members, keys and parameters at every height
        up to the tip's height + GOVERNANCE_DELAY on the best chain (see :meth:`_follow_tip`)."""
        self._gov_tip = b""
        self.outbox: list[Outgoing] = []
        self._uncommitted: list[tuple[bytes, str, float]] = []
        """Traced blocks written in the open batch: (hash, commit stage, write began)."""
        self.applied_feed = AppliedFeed()
        """Blocks applied to the head since the service last took them (its waiting clients)."""
        self.recent_blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.unsaved_sigs: list[BlockSignature] = []
        self.orphans: OrderedDict[bytes, tuple[Block, BlockSignature]] = OrderedDict()
        self.pending_sigs: OrderedDict[bytes, dict[str, BlockSignature]] = OrderedDict()
        self.effects_cache: OrderedDict[bytes, Effects] = OrderedDict()
        self.evidence: dict[bytes, Evidence] = {}
        self.conflicts: OrderedDict[bytes, tuple[Header, set[str]]] = OrderedDict()
        """Blocks refused for leaving out our final block: header, and who signed it."""
        self.proposed: set[tuple[int, int]] = set()
        self.catchup = CatchupThrottle()
        self.corrupt: OrderedDict[bytes, CorruptionError] = OrderedDict()
        """Stored items found corrupt when read (for the alert), until a good copy replaces them."""
        self.tip_seen_ms = now_ms
        self.tip_seen_at = self.trace.now()
        """When the best tip last changed, on the trace's clock (for ``pool.wait``)."""
        self.objection_count = 0
        self.counters = EngineCounters()
        """Events counted for the metrics (read under the service's lock at scrape time)."""
        self._last_tip = b""
        self._majority_height = -1
        self._guard_refusal_logged = False
        self._majority_seen_ms = now_ms
        self._load(now_ms)

    HANDLERS: dict[type, str] = {
        ProposalMsg: "on_proposal",
        SigsMsg: "on_sigs",
        EvidenceMsg: "on_evidence",
        ObjectionMsg: "on_objection",
        TxsMsg: "on_txs",
        GetBlocksMsg: "on_get_blocks",
        BlocksMsg: "on_blocks",
        StatusMsg: "on_status",
    }
    """Message type -> handler: every handler takes ``(peer, msg, now_ms)``. Anchor messages are
    not the engine's: the anchoring layer takes them."""

    def handle(self, peer: str | None, msg: Message, now_ms: int) -> None:
        """The one entry point for a member's message (``peer`` None: from ourselves or a test)."""
        name = self.HANDLERS.get(type(msg))
        if name is None:
            raise TypeError(f"the engine does not handle {type(msg).__name__}")
        getattr(self, name)(peer, msg, now_ms)

    @property
    def mempool_max(self) -> int:
        return self.mempool.max_txs

    @mempool_max.setter
    def mempool_max(self, value: int) -> None:
        self.mempool.max_txs = value

    # --- start-up ------------------------------------------------------------------------------

    def _load(self, now_ms: int) -> None:
        # The stored head's governance state names every member the best chain ever had, so
        # their stored signatures can be counted before the tree has chosen its best tip.
        with self.store.state_reader_at(self.store.head().hash) as reader:
            self._set_gov(ConsortiumState.load(self.consortium, reader, self.gov_states), self.store.head().hash)
        self.chain.load(self.gov, ())
        for ev in self.store.evidence_list():
            self.evidence[ev.id] = ev
            self.tree.add_culprit(ev.member)
        for tx in self.store.mempool_items():
            self.mempool.put(tx)
        if self.mempool:
            self.verifier.verify(list(self.mempool.values()))
        self._sync_head(now_ms)
        self._follow_tip()
        self._last_tip = self.tree.best_tip.hash
        log.info("engine loaded: root height %d, %d blocks held, tip height %d, final height %d, %d pending txs, "
                 "%d culprits", self.tree.root.height, sum(1 for _ in self.tree.headers()), self.tree.best_tip.height,
                 self.tree.final.height, len(self.mempool), len(self.tree.culprits))

    @property
    def tree(self) -> BlockTree:
        return self.chain.tree

    def _maybe_prune(self) -> None:
        if self.chain.maybe_prune():
            tip = self.tree.best_tip.height
            self.proposed = {p for p in self.proposed if p[0] > tip - self.chain.keep}

    # --- governance: the consortium in force by height ------------------------------------------

    @property
    def current(self) -> Consortium:
        """The consortium in force at the next height (tip + 1): the rules new work follows."""
        return self.gov.at(self.tree.best_tip.height + 1)

    @property
    def params(self) -> Params:
        return self.current.params

    def _set_gov(self, state: ConsortiumState, tip: bytes) -> None:
        changed = state.digest != self.gov.digest or state.genesis is not self.gov.genesis
        self.gov, self._gov_tip = state, tip
        if changed or self.tree.schedule is None and state.changes:
            self.tree.set_schedule(state if state.changes else None)

    def _follow_tip(self) -> None:
        """Keep :attr:`gov` the state after the best tip (call after every best-tip change)."""
        tip = self.tree.best_tip
        if tip.hash == self._gov_tip:
            return
        effects = self.effects_cache.get(tip.hash)
        if effects is not None and tip.prev == self._gov_tip:
            self._set_gov(self.gov.after_writes(effects.writes), tip.hash)
            return
        with self.store.state_reader_at(tip.hash, self.effects_cache) as reader:
            self._set_gov(ConsortiumState.load(self.consortium, reader, self.gov_states), tip.hash)

    def state_for(self, parent: bytes, height: int) -> ConsortiumState:
        """The governance state after block ``parent``, for validating or building its child at
        ``height``. It must be *that* state, not merely one that agrees at ``height``: a child
        that passes a change appends it to this state's change list, and a proposal is checked
        against the names and keys this state has used.

        :attr:`gov` (the state after block G) is exactly it when ``parent`` is G, or an
        ancestor of G below every change G's chain passed (a change passed in block ``H``
        records ``H + GOVERNANCE_DELAY``). For a descendant of G within a few blocks, G's state
        plus those blocks' changes (from the effects cache) is. Other parents read their state
        from the store (cached by its digest)."""
        g = self._gov_tip
        gov = self.gov
        if parent == g:
            return gov
        if parent in self.tree:
            parent_height = self.tree.header(parent).height
            passed_above = bool(gov.changes) and \
                gov.changes[-1].effective_height - GOVERNANCE_DELAY > parent_height
            if not passed_above and (self.tree.on_best_chain(parent) if g == self.tree.best_tip.hash
                                     else g in self.tree and self._is_ancestor(parent, g)):
                return gov
            above_g = parent_height - self.tree.header(g).height if g in self.tree else 0
            if 0 < above_g <= STATE_FOLD_BLOCKS:
                folded = self._fold_cached_changes(g, parent, above_g)
                if folded is not None:
                    return folded
        with self.store.state_reader_at(parent, self.effects_cache) as reader:
            return ConsortiumState.load(self.consortium, reader, self.gov_states)

    def _fold_cached_changes(self, g: bytes, block_hash: bytes, steps: int) -> ConsortiumState | None:
        """:attr:`gov` (the state after ``g``) followed up to ``block_hash``, ``steps`` blocks
        above ``g``, through the cached effects of the blocks between; None if ``block_hash``
        does not descend from ``g`` or an effect is not cached."""
        path: list[Effects] = []
        cursor = block_hash
        for _ in range(steps):
            effects = self.effects_cache.get(cursor)
            if effects is None:
                return None
            path.append(effects)
            cursor = self.tree.header(cursor).prev
        if cursor != g:
            return None
        state = self.gov
        for effects in reversed(path):
            state = state.after_writes(effects.writes)
        return state

    # --- identity: the member keys this node holds, by height (peerdb.node.identity) ------------

    @property
    def key(self) -> SigningKey:
        """The member key in force at the next height (votes, objections, new blocks); the
        first configured key while this node is not (yet) a member."""
        return self.key_at(self.tree.best_tip.height + 1) or self.identity.first_key

    def key_at(self, height: int, state: ConsortiumState | None = None) -> SigningKey | None:
        """Our signing key at ``height`` on the branch ``state`` describes (default: the best chain)."""
        return self.identity.key_at(state or self.gov, height)

    def network_members(self) -> tuple[tuple[str, bytes], ...]:
        return network_members(self.gov, self.tree.best_tip.height + 1)

    def transport_key(self) -> SigningKey:
        return self.identity.transport_key(self.gov, self.tree.best_tip.height + 1)

    def key_problem(self) -> str | None:
        return self.identity.key_problem(self.gov, self.tree.best_tip.height + 1)

    def _key_for(self, member: str, block_hash: bytes) -> bytes | None:
        """The key ``member`` signs with on a known block (None: not a member at its height)."""
        header = self.tree.header(block_hash)
        return self.state_for(header.prev, header.height).key_at(member, header.height)

    def _signed_by_some_key(self, member: str, check: Callable[[bytes], bool]) -> bool:
        return signed_by_some_key(self.gov, member, check)

    def _signed_by_proposer(self, header: Header, sig: BlockSignature) -> bool:
        """Whether ``sig`` is the proposer's signature on ``header``. With the parent held, it
        must verify with the proposer's key at the block's height on the block's own branch: a
        rotation passed on that branch only (a competing block carried the last vote) is in
        force there and not on our best chain. Without the parent, any key our best chain ever
        gave the proposer will do for now: the block is checked again once its parent is in."""
        if header.prev in self.tree:
            try:
                check_proposer_signature(header, sig, self.state_for(header.prev, header.height).at(header.height),
                                         self.cid)
            except SignatureError:
                return False
            return True
        return sig.member == header.proposer and sig.block_hash == header.hash \
            and self._signed_by_some_key(sig.member, lambda k: sig.valid(self.cid, k))

    def _tree_sign(self, block_hash: bytes, member: str) -> bool:
        added = self.chain.sign(block_hash, member)
        if added:
            self.counters.signed(member)
        return added

    # --- helpers ---------------------------------------------------------------------------------

    def _send(self, msg: Message, to: str | None = None) -> None:
        self.outbox.append(Outgoing(to, msg))

    def take_outbox(self) -> list[Outgoing]:
        out, self.outbox = self.outbox, []
        return out

    def take_applied(self) -> AppliedFeed:
        """The blocks applied since the last call (taken after every engine call, so the feed
        holds at most one call's worth)."""
        feed, self.applied_feed = self.applied_feed, AppliedFeed()
        return feed

    def heads(self) -> ViewHeads:
        return self.tree.heads()

    def _is_ancestor(self, ancestor: bytes, block_hash: bytes) -> bool:
        return self.chain.is_ancestor(ancestor, block_hash)

    def _evidence_included(self, ev_id: bytes, parent: bytes) -> bool:
        return self.chain.evidence_included(ev_id, parent)

    def _remember_effects(self, block_hash: bytes, effects: Effects) -> None:
        self.effects_cache[block_hash] = effects
        while len(self.effects_cache) > EFFECTS_CACHE:
            self.effects_cache.popitem(last=False)

    # --- blocks --------------------------------------------------------------------------------

    def on_proposal(self, peer: str | None, proposal: ProposalMsg, now_ms: int) -> None:
        sig = proposal.signature
        received = self.trace.now()
        try:
            # The header first (a few hundred bytes): a proposal its proposer did not sign costs
            # us no decoding of its body.
            header = Block.peek_header(proposal.block)
            if not self._signed_by_proposer(header, sig):
                log.warning("rejected proposal %d %s from %s: not signed by its proposer %s", header.height,
                            header.hash.hex()[:16], peer, header.proposer)
                return
        except (DecodeError, ValidationError) as exc:
            log.warning("rejected proposal from %s: %s", peer, exc)
            return
        try:
            block = decode_block_fast(proposal.block, self.mempool.by_raw)
        except (DecodeError, ValidationError) as exc:
            log.warning("rejected proposal from %s: %s", peer, exc)
            if peer is None or proposal.signature.member == peer:
                self._object_if_attributable(proposal, str(exc))
            return
        if block.hash not in self.tree:
            self.trace.block_seen(block.hash, block.height, block.header.proposer, len(block.txs), own=False,
                                  at=received)
            self.trace.since("cosign.decode", received)
        # Only the proposer's own copy is attributable to it: a relayer could swap a transaction
        # signature without changing the block hash (txids cover bodies, not signatures).
        self._accept_block(block, (proposal.signature,), peer, now_ms,
                           object_on_failure=peer in (None, block.header.proposer), traced=True, proposer_checked=True)
        self._after_change(now_ms)

    def _accept_block(self, block: Block, sigs: Sequence[BlockSignature], peer: str | None, now_ms: int,
                      object_on_failure: bool, traced: bool = False, proposer_checked: bool = False) -> bool:
        """Validate and store one block; returns True if it was new and valid. ``traced``: a
        proposal, whose validation and commit the trace times (catch-up blocks are not traced).
        ``proposer_checked``: the proposer's signature in ``sigs`` passed
        :meth:`_signed_by_proposer` already (a proposal's header is checked before its body is
        decoded), so it is not verified twice."""
        if block.hash in self.tree:
            if block.hash in self.corrupt and self.store.repair_block(block):
                del self.corrupt[block.hash]
                log.warning("repaired stored block %d %s with a good copy from %s", block.height,
                            block.hash.hex()[:16], peer)
            log.debug("ignored block %d %s from %s: already known (duplicate or replay)", block.height,
                      block.hash.hex()[:16], peer)
            self._accept_sigs(sigs, peer, now_ms)
            return False
        proposer_sig = next((s for s in sigs if s.member == block.header.proposer and s.block_hash == block.hash), None)
        if proposer_sig is None:
            log.warning("rejected block %d %s from %s: no proposer signature", block.height,
                        block.hash.hex()[:16], peer)
            return False
        if not proposer_checked and not self._signed_by_proposer(block.header, proposer_sig):
            log.warning("rejected block %d %s from %s: not signed by its proposer %s", block.height,
                        block.hash.hex()[:16], peer, block.header.proposer)
            return False
        if not self._within_reach(block.header, proposer_sig, peer):
            return False
        if block.header.prev not in self.tree:
            self.orphans[block.hash] = (block, proposer_sig)
            while len(self.orphans) > MAX_ORPHANS:
                self.orphans.popitem(last=False)
            if peer is not None:
                self._request_catchup(peer, max(block.height, self.tree.best_tip.height + 1), now_ms)
            return False
        parent = self.tree.header(block.header.prev)
        validating = self.trace.now()
        try:
            self.verifier.verify(block.txs)
            state = self.state_for(parent.hash, block.height)
            with self.store.state_reader_at(parent.hash, self.effects_cache) as reader:
                effects = check_block(
                    block, parent, parent.state_root, reader, self.consortium, self.cid, now_ms,
                    evidence_known=lambda ev_id: self._evidence_included(ev_id, parent.hash),
                    signature_ok=self.verifier.known,
                    consortium_state=state)
        except (ValidationError, DecodeError) as exc:
            log.warning("rejected block %d round %d by %s (from %s): %s", block.height, block.header.round,
                        block.header.proposer, peer, exc)
            if object_on_failure:
                self._object(block.hash, str(exc))
            return False
        except LocalError as exc:
            if isinstance(exc, StorageError):
                raise  # the disk: the node's own handling (alerts, stopping) applies
            # A fault of this node's own (a state it got wrong), not of the proposer: no objection,
            # and no crash that the same peer message would repeat after every restart. The block
            # is checked again when it comes back (catch-up, the status exchange).
            log.error("could not check block %d %s by %s (from %s): %s; a fault of this node, not the "
                      "proposer's: please report it", block.height, block.hash.hex()[:16], block.header.proposer,
                      peer, exc)
            return False
        if traced:
            validating = self.trace.since("cosign.validate", validating)
        self._store_new_block(block, proposer_sig, effects, cosign_now=object_on_failure)
        if traced:
            self._written(block.hash, "cosign.commit", validating)
        for sig in sigs:
            if sig is not proposer_sig:
                self._accept_sigs([sig], peer, now_ms)
        for ev in block.evidence:
            self._accept_evidence(ev, None, now_ms)
        early = self.pending_sigs.pop(block.hash, None)
        if early:
            self._accept_sigs(list(early.values()), None, now_ms)
        orphan_children = [o for o in self.orphans.values() if o[0].header.prev == block.hash]
        for child, child_sig in orphan_children:
            self.orphans.pop(child.hash, None)
            self._accept_block(child, (child_sig,), None, now_ms, object_on_failure)
        return True

    def _within_reach(self, header: Header, proposer_sig: BlockSignature, peer: str | None) -> bool:
        """False for a block that leaves out our final block (refused, remembered for the alert);
        a block forking below the tree's root but above the final block re-roots the tree."""
        try:
            if header.prev in self.tree and not self.tree.held(header.prev):
                fork = self.tree.fork_point(header.prev).height
                final = self.tree.final
                if fork < final.height:
                    raise SettledConflict(f"block at height {header.height} ({header.hash.hex()[:16]}) leaves out "
                                          f"the settled block {final.hash.hex()[:16]} at height {final.height}",
                                          final, header)
                self.chain.reroot(fork, self.gov)
            if header.prev in self.tree:
                self.tree.check_settled(header)
        except SettledConflict as exc:
            self._conflict(exc, proposer_sig, peer)
            return False
        return True

    def _conflict(self, exc: SettledConflict, sig: BlockSignature, peer: str | None) -> None:
        header = exc.block
        record = self.conflicts.get(header.hash)
        if record is None:
            record = self.conflicts[header.hash] = (header, set())
            while len(self.conflicts) > MAX_CONFLICTS:
                self.conflicts.popitem(last=False)
            log.error("SETTLED HISTORY CONFLICT: refused block %d %s from %s, proposed by %s: %s",
                      header.height, header.hash.hex()[:16], peer, header.proposer, exc)
        if sig.member not in record[1]:
            record[1].add(sig.member)
            self._check_double_sign(header, sig)
        for early in self.pending_sigs.pop(header.hash, {}).values():
            if early.member not in record[1]:
                record[1].add(early.member)
                self._check_double_sign(header, early)

    def _store_new_block(self, block: Block, proposer_sig: BlockSignature, effects: Effects,
                         own: bool = False, cosign_now: bool = True) -> None:
        """Add a validated block to the tree and the store. ``own``: we proposed it, and
        ``proposer_sig`` is ours. If the block becomes our best tip we co-sign it in the same
        durable commit (block, guard entry and signature together), then release the signature;
        not during catch-up (``cosign_now`` False), where signing the final tip endorses it all."""
        head = self.store.head()
        if own:
            # Our own proposal extends our best tip. The guard decides before anything changes
            # in memory: if it refuses, no trace of the block is left anywhere.
            extends_head = block.header.prev == head.hash
            riders = self._take_unsaved()
            try:
                result = self.store.add_block(block, riders, effects=effects, make_head=extends_head,
                                              own_signature=proposer_sig)
            except DoubleSignRefused:
                self.unsaved_sigs.extend(riders)
                raise
            self._remember_block(block, proposer_sig, effects)
            if extends_head and self.tree.best_tip.hash == block.hash:
                self._applied([block.hash], [], result.returned_txs if result else [])
            return
        self._check_double_sign(block.header, proposer_sig)
        self._remember_block(block, proposer_sig, effects)
        extends_head = block.header.prev == head.hash and self.tree.best_tip.hash == block.hash
        cosign = None
        if not own and cosign_now and self.tree.best_tip.hash == block.hash \
                and not self.tree.signed_at(self.me, block.height):
            key = self.key_at(block.height, self.state_for(block.header.prev, block.height))
            if key is not None:
                cosign = BlockSignature.create(key, self.cid, self.me, block.hash)
        riders = self._take_unsaved()
        try:
            result = self.store.add_block(block, [proposer_sig, *riders], effects=effects,
                                          make_head=extends_head, own_signature=cosign)
        except DoubleSignRefused as exc:
            self._log_guard_refusal(block.header, exc)
            cosign = None
            result = self.store.add_block(block, [proposer_sig, *riders], effects=effects, make_head=extends_head)
        if extends_head:
            self._applied([block.hash], [], result.returned_txs if result else [])
        if cosign is not None:
            self.tree.add_signature(block.hash, self.me)
            self.counters.signed(self.me)
            self._send(SigsMsg((cosign,)))
        log.debug("stored block %d round %d by %s (%d txs) %s", block.height, block.header.round,
                  block.header.proposer, len(block.txs), block.hash.hex()[:16])

    def _remember_block(self, block: Block, proposer_sig: BlockSignature, effects: Effects) -> None:
        for ev in block.evidence:
            self.chain.record_evidence_in(block.hash, [ev.id])
        self.tree.add_header(block.header)
        self._tree_sign(block.hash, proposer_sig.member)
        self._remember_effects(block.hash, effects.without_nodes())  # the store writes the tree records from ours
        self.recent_blocks[block.hash] = block
        while len(self.recent_blocks) > EFFECTS_CACHE:
            self.recent_blocks.popitem(last=False)

    def _log_guard_refusal(self, header: Header, exc: DoubleSignRefused) -> None:
        if not self._guard_refusal_logged:
            log.error("signing guard refused to sign block %d %s: %s", header.height, header.hash.hex()[:16], exc)
            self._guard_refusal_logged = True

    def _sync_head(self, now_ms: int) -> None:
        """Make the store's head follow the tree's best tip (reorg if needed)."""
        tip = self.tree.best_tip
        old_tip = self.store.head().hash
        if old_tip == tip.hash:
            return
        result = self.store.set_head(tip.hash, self.effects_cache)
        if result.rolled_back:
            self.counters.reorganised(Reorg(now_ms, tip.height - len(result.applied), len(result.rolled_back),
                                            len(result.applied), old_tip, tip.hash, len(result.returned_txs)))
            log.warning("reorg: rolled back %d blocks, applied %d; new tip %d %s; %d txs back to the pool",
                        len(result.rolled_back), len(result.applied), tip.height, tip.hash.hex()[:16],
                        len(result.returned_txs))
        self._applied(result.applied, result.rolled_back, result.returned_txs)
        self._follow_tip()

    def _applied(self, applied: Sequence[bytes], rolled_back: Sequence[bytes], returned: Sequence[Tx]) -> None:
        self.counters.blocks_applied += len(applied)
        if rolled_back:
            self.applied_feed.rolled_back = True
        for block_hash in applied:
            block = self.recent_blocks.get(block_hash) or self.store.block(block_hash)
            if block is not None:
                self.counters.txs_applied += len(block.txs)
                self.applied_feed.add(block)
                for tx in block.txs:
                    self.mempool.drop(tx.txid)
        for tx in returned:
            self.mempool.put(tx)
        self.verifier.remember(list(returned))

    def _after_change(self, now_ms: int) -> None:
        self._sync_head(now_ms)
        self._follow_tip()
        self._maybe_sign_tip(now_ms)
        self._maybe_prune()
        tip = self.tree.best_tip.hash
        if tip != self._last_tip:
            self._last_tip = tip
            self.tip_seen_ms = now_ms
            self.tip_seen_at = self.trace.now()

    def _maybe_sign_tip(self, now_ms: int) -> None:
        tip = self.tree.best_tip
        if tip.height == 0 or self.me in self.tree.signers(tip.hash):
            return
        if self.tree.signed_at(self.me, tip.height):
            return  # we endorsed another block at this height; we endorse this branch at the next one
        key = self.key_at(tip.height)
        if key is None:
            return  # not a member at this height (removed, or not yet added): our signature is void
        sig = BlockSignature.create(key, self.cid, self.me, tip.hash)
        try:
            # One commit records the guard entry and our signature, before the signature leaves.
            self.store.guard_sign(tip.height, tip.round, tip.hash, signature=sig, others=self.unsaved_sigs)
            self.unsaved_sigs = []
        except DoubleSignRefused as exc:
            self._log_guard_refusal(tip, exc)
            return
        self._guard_refusal_logged = False
        self.tree.add_signature(tip.hash, self.me)
        self.counters.signed(self.me)
        self._send(SigsMsg((sig,)))
        self._sync_head(now_ms)

    def _object_if_attributable(self, proposal: ProposalMsg, reason: str) -> None:
        """A malformed body under a header its proposer really signed deserves an objection."""
        try:
            header = Block.peek_header(proposal.block)
        except (DecodeError, ValidationError):
            return
        if self._signed_by_proposer(header, proposal.signature):
            self._object(header.hash, reason)

    def _object(self, block_hash: bytes, reason: str) -> None:
        key = self.key_at(self.tree.best_tip.height + 1)
        if key is None:
            return  # no longer a member (or not yet): our objections would not verify
        objection = Objection.create(key, self.cid, self.me, block_hash, reason)
        self.store.add_objection(objection)
        self.objection_count += 1
        self.counters.objected(self.me)
        self._send(ObjectionMsg(objection))

    # --- signatures and evidence ----------------------------------------------------------------

    def on_sigs(self, peer: str | None, msg: SigsMsg, now_ms: int) -> None:
        self._accept_sigs(msg.sigs, peer, now_ms)
        self._after_change(now_ms)

    def _accept_sigs(self, sigs: Iterable[BlockSignature], peer: str | None, now_ms: int) -> None:
        fresh = []
        forged = 0
        first_forged: BlockSignature | None = None
        for sig in sigs:
            if sig.member not in self.gov.used_names:
                log.warning("rejected signature from %s: %s is not a member", peer, sig.member)
                continue
            if sig.member in self.tree.signers(sig.block_hash):
                if self.corrupt and sig.block_hash + sig.member.encode() in self.corrupt:
                    self._repair_signature(sig, peer)
                log.debug("ignored %s's signature on %s from %s: already known (duplicate or replay)",
                          sig.member, sig.block_hash.hex()[:16], peer)
                continue
            if sig.block_hash in self.tree:
                key = self._key_for(sig.member, sig.block_hash)
                ok = key is not None and sig.valid(self.cid, key)
            else:
                ok = self._signed_by_some_key(sig.member, lambda k: sig.valid(self.cid, k))
            if not ok:
                forged += 1
                if forged == 1:
                    first_forged = sig
                continue
            conflict = self.conflicts.get(sig.block_hash)
            if conflict is not None:
                self._conflict(SettledConflict("signed a block that leaves out the settled block", self.tree.final,
                                               conflict[0]), sig, peer)
                continue
            if sig.block_hash not in self.tree:
                waiting = self.pending_sigs.setdefault(sig.block_hash, {})
                waiting[sig.member] = sig
                while len(self.pending_sigs) > MAX_PENDING_SIG_BLOCKS:
                    self.pending_sigs.popitem(last=False)
                continue
            self._check_double_sign(self.tree.header(sig.block_hash), sig)
            self._tree_sign(sig.block_hash, sig.member)
            self.trace.signature_received(sig.block_hash, sig.member)
            fresh.append(sig)
        if first_forged is not None:  # one line per message, however many it carries
            log.warning("rejected %d signature(s) from %s that do not verify with the signer's key at that height "
                        "(first: %s's on %s)", forged, peer, first_forged.member, first_forged.block_hash.hex()[:16])
        if fresh:
            # Peers' signatures are durable at their signers (each persisted its own before
            # releasing it) and anti-entropy re-sends any we lose, so they ride along with our
            # next durable commit instead of costing an fsync each.
            self.unsaved_sigs.extend(fresh)
            if len(self.unsaved_sigs) >= UNSAVED_SIGS_MAX:
                self.flush_signatures()

    def _repair_signature(self, sig: BlockSignature, peer: str | None) -> None:
        """A good copy of a signature our store holds damaged: checked with the member's key at the
        block's height, it replaces ours."""
        key = self._key_for(sig.member, sig.block_hash)
        if key is None or not sig.valid(self.cid, key):
            return
        self.store.repair_signature(sig)
        del self.corrupt[sig.block_hash + sig.member.encode()]
        log.warning("repaired the stored signature of %s on block %d %s with a good copy from %s", sig.member,
                    self.tree.header(sig.block_hash).height, sig.block_hash.hex()[:16], peer)

    def flush_signatures(self) -> None:
        """Write peers' signatures still held in memory (called every heartbeat, and on demand)."""
        if self.unsaved_sigs:
            pending, self.unsaved_sigs = self.unsaved_sigs, []
            self.store.add_signatures(pending)

    def _served_signatures(self, block_hash: bytes) -> list[BlockSignature]:
        """A block's signatures for sending to peers, stored and not yet stored. Each stored one
        is checked with its member's key at the block's height first (one Ed25519 verify each), so that
        a signature the disk changed is never sent as the member's (the receiver would take us
        for a forger); one that fails is left out and reported as corrupt."""
        out = []
        stored = self.store.signatures(block_hash)
        for sig in stored:
            key = self._key_for(sig.member, block_hash)
            if key is not None and sig.valid(self.cid, key):
                out.append(sig)
            else:
                self.note_corruption(CorruptionError(
                    f"stored signature of {sig.member} on block {self.tree.header(block_hash).height} "
                    f"{block_hash.hex()[:16]} does not verify", "signature", block_hash + sig.member.encode()))
        have = {s.member for s in stored}
        return out + [s for s in self.unsaved_sigs if s.block_hash == block_hash and s.member not in have]

    def _take_unsaved(self) -> list[BlockSignature]:
        pending, self.unsaved_sigs = self.unsaved_sigs, []
        return pending

    def _check_double_sign(self, header: Header, sig: BlockSignature) -> None:
        for other in self.tree.signed_at(sig.member, header.height):
            if other == header.hash:
                continue
            known = list(self.store.signatures(other)) + [s for s in self.unsaved_sigs if s.block_hash == other]
            other_sig = next((s for s in known if s.member == sig.member), None)
            if other_sig is None:
                continue
            ev = Evidence.from_signatures(sig.member, header, sig.signature, self.tree.header(other),
                                          other_sig.signature)
            log.error("DOUBLE SIGN: %s signed blocks %s and %s at height %d", sig.member,
                      header.hash.hex()[:16], other.hex()[:16], header.height)
            self._accept_evidence(ev, None, 0)
            return

    def on_evidence(self, peer: str | None, msg: EvidenceMsg, now_ms: int) -> None:
        self._accept_evidence(msg.evidence, peer, now_ms)
        self._after_change(now_ms)

    def _accept_evidence(self, ev: Evidence, peer: str | None, now_ms: int) -> None:
        if ev.id in self.evidence:
            return
        try:
            check_evidence(ev, self.consortium, self.cid, consortium_state=self.gov)
        except (ValidationError, DecodeError) as exc:
            log.warning("rejected evidence from %s: %s", peer, exc)
            return
        self.evidence[ev.id] = ev
        self.store.add_evidence(ev)
        if self.tree.add_culprit(ev.member):
            log.error("evidence: %s double-signed at height %d; its signatures no longer count",
                      ev.member, ev.header_a.height)
        self._send(EvidenceMsg(ev))

    def on_objection(self, peer: str | None, msg: ObjectionMsg, now_ms: int) -> None:
        obj = msg.objection
        if not self._signed_by_some_key(obj.member, lambda k: obj.valid(self.cid, k)):
            log.warning("rejected objection from %s: bad signature or unknown member %s", peer, obj.member)
            return
        if self.store.add_objection(obj):
            self.counters.objected(obj.member)
            log.warning("objection by %s to block %s: %s", obj.member, obj.block_hash.hex()[:16], obj.reason)

    # --- transactions (admission rules: peerdb.node.mempool) -------------------------------------

    def submit(self, raws: Sequence[bytes], peer: str | None, now_ms: int) -> SubmitResult:
        """Admit transactions to the pool (from a client when ``peer`` is None, else from a peer)."""
        result = self.submit_many([raws], peer, now_ms)[0]
        if isinstance(result, MempoolFull):
            raise result
        return result

    def submit_many(self, requests: Sequence[Sequence[bytes]], peer: str | None, now_ms: int,
                    durable: Sequence[bool] | None = None) -> list[SubmitResult | MempoolFull]:
        """Admit several requests' transactions with one signature batch and one durable commit.

        Group commit: under load the client API hands over every request that arrived while the
        previous commit was in flight, so the fsync cost is shared instead of serialising them.
        ``durable[i]`` False skips persisting request i's transactions: its client waits for a
        view, whose answer comes only once they are in a durably stored block (the API persists
        them with :meth:`persist` if the wait times out, before answering).
        """
        checked = self.mempool.admit(requests, self.current, now_ms, self.store.included, self.verifier.verify)
        admitted = [tx for _, txs in checked for tx in txs]
        if admitted:
            if peer is None:
                # Durable before the client hears "accepted"; a forwarded copy needs no fsync
                # here because its origin member already made it durable.
                to_persist = [tx for r, (_, txs) in enumerate(checked) if durable is None or durable[r] for tx in txs]
                if to_persist:
                    self.store.mempool_add(to_persist)
                self._send(TxsMsg(tuple(tx.raw for tx in admitted)))
            for tx in admitted:
                self.mempool.put(tx)
        results = [result for result, _ in checked]
        rejected = [r for res in results if isinstance(res, SubmitResult) for r in res.rejected]
        if rejected and peer is not None:
            log.warning("rejected %d transactions from %s: %s", len(rejected), peer, rejected[0][1])
        duplicates = sum(len(res.duplicates) for res in results if isinstance(res, SubmitResult))
        if duplicates:
            log.debug("ignored %d transactions from %s: already pending or included (duplicate or replay)",
                      duplicates, peer or "a client")
        return results

    def persist(self, txids: Sequence[bytes]) -> int:
        """Make still-pending transactions durable (a waiting client is about to be answered)."""
        pending = [tx for t in txids if (tx := self.mempool.get(t)) is not None]
        return self.store.mempool_add(pending) if pending else 0

    def on_txs(self, peer: str | None, msg: TxsMsg, now_ms: int) -> None:
        try:
            self.submit(msg.txs, peer, now_ms)
        except MempoolFull as exc:
            log.warning("dropped %d forwarded transactions from %s: %s (the sender keeps them)",
                        len(msg.txs), peer, exc)

    # --- proposing -----------------------------------------------------------------------------

    def current_turn(self, now_ms: int) -> tuple[int, int, str]:
        tip = self.tree.best_tip
        here = self.gov.at(tip.height + 1)
        round_ = round_at(now_ms - self.tip_seen_ms, here.params.turn_timeout_ms)
        return tip.height + 1, round_, proposer_for(here.member_names, tip.height + 1, round_)

    def _idle_ms(self, params: Params) -> int:
        """How long the chain may rest without a block when nothing waits in the pool: the
        idle interval, but only a heartbeat while a member signed a block beside the tip
        (:meth:`BlockTree.stranded`). Its endorsement can then only come from a later block,
        and a write waiting for ``unanimous_signed`` would otherwise wait the idle interval
        (a minute by default) after every lost race for a height."""
        if self.idle_block_ms is None or self.tree.stranded():
            return params.heartbeat_ms
        return max(params.heartbeat_ms, self.idle_block_ms)

    def next_deadline_ms(self, now_ms: int) -> int:
        """When the turn situation next changes by itself (an empty block due, or a round timeout)."""
        params = self.params
        _, round_, _ = self.current_turn(now_ms)
        round_start = self.tip_seen_ms + round_ * params.turn_timeout_ms
        empty_due = max(round_start + params.heartbeat_ms, self.tip_seen_ms + self._idle_ms(params))
        round_end = round_start + params.turn_timeout_ms
        return empty_due if now_ms < empty_due < round_end else round_end

    def proposal_due(self, now_ms: int) -> bool:
        """Cheap check (no writes) whether :meth:`maybe_propose` would propose now."""
        height, round_, proposer = self.current_turn(now_ms)
        if proposer != self.me or (height, round_) in self.proposed or self.tree.signed_at(self.me, height):
            return False
        if self.key_at(height) is None:
            return False  # our turn, but not our key (logged): peers would refuse the block
        params = self.params
        tip = self.tree.best_tip
        round_start = self.tip_seen_ms + round_ * params.turn_timeout_ms
        pipeline_open = may_extend(tip.height, self.tree.heads().majority)
        empty_due = now_ms >= round_start + params.heartbeat_ms and now_ms >= self.tip_seen_ms + self._idle_ms(params)
        if not ((self.mempool and pipeline_open) or empty_due):
            return False
        if tip.time_ms + round_ * params.turn_timeout_ms - params.clock_skew_ms > now_ms:
            return False  # by the parent's clock this round has not begun: peers would refuse the block
        return not self.store.guard_locked()  # restored data directory: no signing until caught up

    def run_and_propose(self, now_ms: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (message handlers, an admission), then propose if that made our
        turn come, all as ONE durable store commit.

        A proposal that arrives and makes us the next proposer, transactions that fill an empty
        pool on our turn, a signature that opens the pipeline: each used to be one engine call
        (and one commit), and then another call from the turn loop to propose (a second commit,
        and a thread hop). Here the block we co-sign and the block we propose on it are written
        together. Signatures and proposals still leave only after the commit: the service sends
        the outbox when the call has returned. A write that fails inside (the signing guard's
        refusal) is undone alone, as each write is a child transaction of the batch."""
        try:
            with self.store.batch():
                result = fn(*args)
                self.maybe_propose(now_ms)
        except BaseException:
            self._uncommitted.clear()  # nothing of the batch was written
            raise
        self._committed()
        return result

    def _written(self, block_hash: bytes, stage: str, started: float) -> None:
        """A traced block's write (begun at ``started``) returned; it is durable now, or when
        the batch it is part of commits (:meth:`_committed`)."""
        if self.store.in_batch():
            self._uncommitted.append((block_hash, stage, started))
        else:
            self.trace.block_event(block_hash, "committed", self.trace.since(stage, started))

    def _committed(self) -> None:
        if self._uncommitted:
            done = self.trace.now()
            for block_hash, stage, started in self._uncommitted:
                self.trace.observe(stage, done - started)
                self.trace.block_event(block_hash, "committed", done)
            self._uncommitted.clear()

    def maybe_propose(self, now_ms: int) -> Block | None:
        if not self.proposal_due(now_ms):
            return None
        height, round_, _ = self.current_turn(now_ms)
        tip = self.tree.best_tip
        trace = self.trace
        started = trace.now()
        if self.mempool:
            trace.observe("pool.wait", started - max(self.tip_seen_at, started - self.mempool.oldest_age()))
        block = self._build_block(tip, height, round_, now_ms)
        trace.block_seen(block.hash, height, self.me, len(block.txs), own=True, at=started)
        built = trace.since("propose.build", started)
        self.proposed.add((height, round_))
        key = self.key_at(height)
        assert key is not None  # proposal_due checked it
        sig = BlockSignature.create(key, self.cid, self.me, block.hash)
        effects = self.effects_cache[block.hash]
        try:
            self._store_new_block(block, sig, effects, own=True)
        except DoubleSignRefused as exc:
            log.error("signing guard refused our own proposal at height %d: %s", height, exc)
            return None
        self._written(block.hash, "propose.commit", built)
        self._send(ProposalMsg(block.raw, sig))
        log.info("proposed block %d round %d with %d txs %s", height, round_, len(block.txs), block.hash.hex()[:16])
        self._after_change(now_ms)
        return block

    def _build_block(self, tip: Header, height: int, round_: int, now_ms: int) -> Block:
        params = self.gov.params_at(height)
        time_ms = max(now_ms, tip.time_ms)
        state = self.state_for(tip.hash, height)
        template = header_template(height, round_, tip.hash, self.me, time_ms)
        pending_evidence = [ev for ev in self.evidence.values() if not self._evidence_included(ev.id, tip.hash)]
        with self.store.state_reader_at(tip.hash, self.effects_cache) as reader:
            # Transactions are applied one at a time so that one that no longer applies (a vote on
            # a proposal decided meanwhile, a write its member may no longer make) is left out
            # instead of spoiling the block; the governance state is the tip's (exact at height).
            run = BlockRun(reader, self.consortium, self.cid, time_ms, height=height,
                           consortium_state=state)

            def admit(tx: Tx) -> Admit:
                try:
                    check_tx_time(tx, time_ms, params.tx_ttl_ms)
                except ValidationError:
                    return Admit.DROP if tx.expires_ms < time_ms else Admit.SKIP
                if self.store.tx_location(tx.txid) is not None:
                    return Admit.DROP
                refused = run.try_add(tx, signature_ok=lambda _tx: True)
                if refused is not None:
                    # Invalid on top of this tip: dropped, or it would be retried, and would
                    # trigger a new block, on every tip.
                    log.warning("dropped tx %s from the pool: invalid at height %d: %s", tx.txid.hex()[:16],
                                height, refused)
                    return Admit.DROP
                return Admit.TAKE

            body = select_body(template, params, self.mempool.values(), pending_evidence, admit)
            effects = run.effects(tip.state_root)
        if body.dropped:
            for txid in body.dropped:
                self.mempool.drop(txid)
            self.store.mempool_remove(list(body.dropped))
        tx_root = merkle_root([tx.txid for tx in body.txs])
        header = Header(height, round_, tip.hash, self.me, time_ms, tx_root, len(body.txs), effects.state_root,
                        merkle_root([e.id for e in body.evidence]), block_ns_tx_root(body.txs, tx_root))
        block = Block(header, body.txs, body.evidence)
        self._remember_effects(block.hash, effects)
        return block

    # --- catch-up and anti-entropy (peerdb.node.catchup) -----------------------------------------

    def _request_catchup(self, peer: str, to_height: int, now_ms: int) -> None:
        if self.catchup.may_ask(peer, now_ms):
            self.catchup.outstanding.add(peer)
            start = self.tree.heads().unanimous_signed + 1
            self._send(GetBlocksMsg(start, max(start, to_height)), to=peer)

    def on_get_blocks(self, peer: str | None, msg: GetBlocksMsg, now_ms: int) -> None:
        if peer is None:
            return  # an answer needs someone to go to
        answer = blocks_answer(self.tree, self.store, self._served_signatures, msg)
        if answer.corrupt is not None:
            self.note_corruption(answer.corrupt)
        self._send(answer.msg, to=peer)

    def note_corruption(self, exc: CorruptionError) -> None:
        """A stored item failed its check when read: remember it for the alert, and for a block
        on our chain ask every peer for a good copy (it replaces ours when it arrives)."""
        if exc.key in self.corrupt:
            return
        self.corrupt[exc.key] = exc
        while len(self.corrupt) > MAX_CORRUPT_ITEMS:
            self.corrupt.popitem(last=False)
        log.error("CORRUPT STORE: %s; refusing to serve it%s", exc, remedy(exc.item))
        block_hash = exc.key[:32] if exc.item == "signature" else exc.key
        if exc.item in REFETCHED and block_hash in self.tree:
            # A block answer carries the block and its signatures, each good copy checked on arrival.
            height = self.tree.header(block_hash).height
            self._send(GetBlocksMsg(height, height))

    def on_blocks(self, peer: str | None, msg: BlocksMsg, now_ms: int) -> None:
        last_height = 0
        progress = False
        started = self.trace.now()
        # Every block is decoded first and all their client signatures go to the checking pool in
        # one call, so the pool checks the next blocks while this thread applies the state of
        # the previous ones. The whole batch is one durable commit (not one per block); any
        # signature we release at the end leaves only after it, when the outbox is flushed.
        blocks: list[tuple[Block, tuple[BlockSignature, ...]]] = []
        for raw, sigs in msg.items:
            try:
                blocks.append((decode_block_fast(raw, self.mempool.by_raw), sigs))
            except (DecodeError, ValidationError) as exc:
                log.warning("catch-up from %s: bad block: %s", peer, exc)
                break
        self.verifier.prefetch([tx for block, _ in blocks if block.hash not in self.tree for tx in block.txs])
        try:
            with self.store.batch():
                for block, sigs in blocks:
                    progress |= self._accept_block(block, sigs, peer, now_ms, object_on_failure=False)
                    if block.hash not in self.tree:
                        break
                    last_height = block.height
                    # The governance state follows block by block (from the effects just
                    # computed), so the next block's rules and keys come from memory, not from
                    # a state read in the store.
                    self._follow_tip()
                self._after_change(now_ms)
        finally:
            self.verifier.drop_prefetched()
        if msg.items:
            self.trace.since("catchup.batch", started)
            log.info("catch-up from %s: now at height %d of %d", peer, self.tree.best_tip.height, msg.peer_height)
        asked_ahead = self.catchup.ahead.pop(peer, None) if peer is not None else None
        if progress and peer is not None:
            # Ask for the next batch at once only when this one moved us forward; otherwise the
            # retry interval applies (a peer advertising what it cannot deliver is not a loop).
            self.catchup.answered(peer)
            if last_height and msg.peer_height > last_height and asked_ahead != last_height + 1:
                self._request_catchup(peer, msg.peer_height, now_ms)
            elif asked_ahead == last_height + 1:
                self.catchup.asked[peer] = now_ms  # the next batch is on its way: that request stands
        elif peer is not None:
            # No progress: an answer still on its way asks for nothing more ahead; the retry
            # interval applies as for any answer that brought nothing.
            self.catchup.outstanding.discard(peer)

    def catchup_ahead(self, peer: str, msg: BlocksMsg, now_ms: int) -> GetBlocksMsg | None:
        """The request for the batch after ``msg``, to send before ``msg`` is handled, so that the
        peer reads and sends it while this member checks and applies ``msg`` (None: ``msg`` is the
        last batch, or empty). A cheap read, under the service lock, without a thread hop: the
        last block's header is peeked at, nothing is validated. If ``msg`` turns out bad, the
        next batch's blocks are orphans and catch-up asks again as usual."""
        if not msg.items or msg.peer_height <= self.tree.best_tip.height or peer not in self.catchup.outstanding:
            return None  # nothing more to ask for, or an answer we did not ask for
        try:
            header = peek_header_fast(msg.items[-1][0])
        except (DecodeError, ValidationError):
            return None
        last = header.height
        if msg.peer_height <= last or last < self.tree.best_tip.height or header.hash in self.tree:
            return None  # the last batch, or one that brings nothing new
        self.catchup.ahead[peer] = last + 1
        self.catchup.asked[peer] = now_ms
        return GetBlocksMsg(last + 1, msg.peer_height)

    def status_message(self) -> StatusMsg:
        return status_message(self.tree)

    def on_status(self, peer: str | None, msg: StatusMsg, now_ms: int) -> None:
        if self.store.guard_locked() and msg.tip in self.tree and msg.height <= self.tree.best_tip.height:
            # Restored data directory: we have caught up with a peer, so every height we might
            # have signed before the restore is at or below our tip. Never sign there again.
            floor = self.tree.best_tip.height
            self.store.set_guard_floor(floor)
            log.warning("restored data directory: caught up with %s; signing resumes above height %d", peer, floor)
        if peer is None:
            return  # catch-up and missing signatures are answers to a peer
        if msg.tip not in self.tree and msg.height >= self.tree.heads().unanimous_signed:
            self._request_catchup(peer, msg.height, now_ms)
        missing = missing_signatures(self.tree, msg, self._served_signatures)
        if missing:
            self._send(SigsMsg(tuple(missing)), to=peer)

    # --- alerts ---------------------------------------------------------------------------------

    def removed_at(self) -> int | None:
        """The height from which this member is removed, once that is settled enough to stop
        for (:func:`~peerdb.node.identity.removal_settled`); None while it is a member."""
        return removal_settled(self.gov, self.me, self.tree.best_tip.height, self.tree.heads().majority)

    def alert_conditions(self, now_ms: int, peers_up: Callable[[str], bool]) -> list[Alert]:
        removed = self.removed_at()
        if removed is not None:  # the one thing to say: not stalled, not peers down
            return [removed_alert(self.me, removed)]
        alerts = chain_alerts(self.tree, self.me)
        params = self.params
        majority = self.tree.heads().majority
        if majority != self._majority_height:
            self._majority_height, self._majority_seen_ms = majority, now_ms
        # Heartbeat blocks keep the tip moving even when too few members sign; progress is the
        # majority head moving, so that is what "stalled" watches.
        waited = now_ms - self._majority_seen_ms
        expected = params.turn_timeout_ms + params.heartbeat_ms
        # With nothing in the pool and every block endorsed, the chain rests up to the idle
        # interval: not a stall. Work waiting (a transaction, a block short of signatures) is.
        work_waits = bool(self.mempool) or self.tree.best_tip.height > majority
        if waited > expected and (work_waits or waited > expected + self._idle_ms(params)):
            alerts.append(waiting_for(self.tree, self.tip_seen_ms, now_ms, params.turn_timeout_ms))
        problem = self.key_problem()
        if problem is not None:
            alerts.append(Alert("key_missing", problem, subject=self.me))
        race = params.turn_race_problem
        if race is not None:
            alerts.append(Alert(TURN_RACE, race, subject="params",
                                details={"clock_skew_ms": params.clock_skew_ms,
                                         "turn_timeout_ms": params.turn_timeout_ms}))
        for key, exc in self.corrupt.items():
            alerts.append(Alert("corrupt_data", f"{exc}; refused to readers and peers{remedy(exc.item)}",
                                subject=key.hex(), details={"item": exc.item}))
        for block_hash, (header, signers) in self.conflicts.items():
            final = self.tree.final
            both = sorted(s for s in signers if s in self.tree.endorsers(final.hash) or s in final_signers(self, final))
            alerts.append(Alert(
                "settled_conflict",
                f"block {header.height} {block_hash.hex()[:16]} leaves out the settled block {final.height} "
                f"{final.hash.hex()[:16]}; refused. Signed by {', '.join(sorted(signers))}"
                + (f"; of them {', '.join(both)} also endorse the settled block (signatures on both sides)" if both else ""),
                subject=block_hash.hex(), details={"height": header.height, "signers": sorted(signers),
                                                   "both_sides": both, "final_height": final.height}))
        for member in self.current.member_names:
            if member != self.me and not peers_up(member):
                alerts.append(Alert("peer_down", f"peer {member} is not connected", subject=member))
        alerts.extend(not_signing(self.tree, self.me, peers_up))
        return alerts
