"""The consensus engine: one member's protocol logic, without sockets or timers.

The engine takes messages and ticks, consults the pure core for every decision, persists through
the store, and answers with the messages to send. It never blocks on the network and never
reads a clock of its own: ``now_ms`` is passed in. The trio layer (:mod:`peerdb.node.service`)
feeds it, serialised by one lock, and runs it in a worker thread in production because store
writes fsync.

Invariants it keeps:
* a block enters the tree only after full validation against its parent's state;
* a signature leaves the engine only after the store's signing guard durably recorded it;
* the store's head always equals the tree's best tip after every handler returns.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..core.blockbody import Admit, header_template, select_body
from ..core.chain import BlockTree, SettledConflict, TreeSnapshot, ViewHeads
from ..core.consortium import Consortium, Params
from ..core.errors import (
    DecodeError,
    DoubleSignRefused,
    SignatureError,
    ValidationError,
)
from ..core.keys import SigningKey
from ..core.membership import GOVERNANCE_DELAY, ConsortiumState, StateCache
from ..core.merkle import merkle_root
from ..core.model import (Block, BlockSignature, Evidence, Header, Objection, Tx, block_ns_tx_root, consortium_id,
                          genesis_header)
from ..core.state import BlockRun, Effects, check_tx_time
from ..core.validate import check_block, check_evidence, check_proposer_signature, proposer_for, round_at
from ..store import Store
from ..store.archive import SavedTree, StoreArchive, load_tree, tree_record
from ..store.layout import META_TREE
from .alerts import Alert, chain_alerts, waiting_for
from .identity import Identity, network_members, signed_by_some_key
from .mempool import DEFAULT_MEMPOOL_TXS, Mempool, MempoolFull, SubmitResult
from .messages import (
    MAX_CATCHUP_BLOCKS,
    MAX_CATCHUP_BYTES,
    STATUS_RECENT,
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

MAX_ORPHANS = 256
"""Proposals whose parent we lack, kept until catch-up brings the parent."""
MAX_PENDING_SIG_BLOCKS = 4096
"""Unknown blocks for which we hold early signatures (signatures can overtake their block)."""
EFFECTS_CACHE = 256
"""Effects of recently validated blocks, so applying them to the head does not recompute them."""
CATCHUP_RETRY_MS = 2000
"""Do not ask the same peer for blocks again sooner than this while a request is outstanding."""
UNSAVED_SIGS_MAX = 4096
"""Peers' signatures held in memory before a write of their own is forced (see _accept_sigs)."""
TREE_KEEP = 4096
"""Best-chain blocks below the tip the block tree keeps in memory while the final block lags
further behind (a member down, Bitcoin slow, no anchoring at all): ~6 MB of headers and
signatures. A fork deeper than this is still settled by the fork rule: the tree is re-rooted at
the fork point from the store (:meth:`Engine._reroot`)."""
TREE_PRUNE_STEP = 1024
"""The root moves up in steps of at least this many blocks, so pruning (O(blocks held)) and the
snapshot commit it writes cost O(1) per block."""
MAX_CONFLICTS = 64
"""Blocks leaving out our final block whose signers we remember for the finality alert."""

__all__ = ["Engine", "Outgoing"]


@dataclass(frozen=True)
class Outgoing:
    to: str | None  # None: every other member
    msg: Message


class Engine:
    def __init__(self, consortium: Consortium, me: str, keys: SigningKey | Iterable[SigningKey], store: Store,
                 now_ms: int, *, mempool_max: int = DEFAULT_MEMPOOL_TXS, verifier: TxSignatureChecker | None = None) -> None:
        self.consortium = consortium
        self.cid = consortium_id(consortium)
        self.me = me
        self.identity = Identity(me, keys)
        self.keyring = self.identity.keyring
        self.store = store
        self.mempool = Mempool(mempool_max)
        self.verifier = verifier or TxSignatureChecker(self.cid)
        self.archive = StoreArchive(store)
        self.tree = BlockTree(genesis_header(consortium), consortium.member_names, settle=True)
        self.gov_states = StateCache(consortium)
        """Governance states loaded from the store, by digest (used under the service's lock)."""
        self.gov = ConsortiumState(consortium)
        """The governance state after the best tip: members, keys and parameters at every height
        up to the tip's height + GOVERNANCE_DELAY on the best chain (see :meth:`_follow_tip`)."""
        self._gov_tip = b""
        self.outbox: list[Outgoing] = []
        self.recent_blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.unsaved_sigs: list[BlockSignature] = []
        self.orphans: OrderedDict[bytes, tuple[Block, BlockSignature]] = OrderedDict()
        self.pending_sigs: OrderedDict[bytes, dict[str, BlockSignature]] = OrderedDict()
        self.effects_cache: OrderedDict[bytes, Effects] = OrderedDict()
        self.evidence: dict[bytes, Evidence] = {}
        self.evidence_in_block: dict[bytes, list[bytes]] = {}
        """Evidence id -> held blocks that include it."""
        self.settled_evidence: set[bytes] = set()
        """Evidence included in best-chain blocks below the tree's root (so in every chain we follow)."""
        self.conflicts: OrderedDict[bytes, tuple[Header, set[str]]] = OrderedDict()
        """Blocks refused for leaving out our final block: header, and who signed it."""
        self.proposed: set[tuple[int, int]] = set()
        self.catchup_asked: dict[str, int] = {}
        self.tip_seen_ms = now_ms
        self.objection_count = 0
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
        saved = load_tree(self.store)
        self.settled_evidence = set(saved.settled_evidence) if saved is not None else set()
        self.tree = self._build_tree(saved.snapshot if saved is not None else None)
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

    def _build_tree(self, snapshot: TreeSnapshot | None) -> BlockTree:
        """The block tree from a snapshot of what lies below its root plus the stored blocks above
        it: start-up reads O(blocks held), not O(chain)."""
        tree = BlockTree(genesis_header(self.consortium), self.consortium.member_names, settle=True,
                         archive=self.archive, snapshot=snapshot)
        tree.set_schedule(self.gov if self.gov.changes else None)
        for culprit in self.tree.culprits:
            tree.add_culprit(culprit)
        root = tree.root
        for member in self.store.signers(root.hash):
            self._tree_sign(root.hash, member, tree)
        empty = merkle_root([])
        for header in self.store.headers_iter(start_height=root.height + 1):
            try:
                tree.add_header(header)
            except ValidationError:
                continue  # a fork below the root or leaving out the final block: out of reach
            for member in self.store.signers(header.hash):
                self._tree_sign(header.hash, member, tree)
            if self.store.anchor(header.hash) is not None:
                tree.set_anchored(header.hash)
            if header.evidence_root != empty:
                block = self.store.block(header.hash)
                if block is not None:
                    for ev in block.evidence:
                        self.evidence_in_block.setdefault(ev.id, []).append(header.hash)
        return tree

    def _reroot(self, height: int) -> None:
        """Hold the tree from the best-chain block at ``height`` again (a fork from below the
        root that fork choice must weigh): floors and counts carried over, blocks reloaded."""
        current = self.tree.snapshot()
        root_hash = self.tree.best_chain_hash(height)
        if root_hash is None or height >= current.root.height:
            return
        reloaded = {m: 0 for m, _ in current.signed_below}
        for h in range(height, current.root.height):
            at = self.tree.best_chain_hash(h)
            for member in self.store.signers(at) if at is not None else ():
                reloaded[member] = reloaded.get(member, 0) + 1
        snapshot = TreeSnapshot(
            self.tree.header(root_hash), current.final,
            tuple((m, min(f, height)) for m, f in current.endorse_floor),
            tuple((m, max(0, n - reloaded.get(m, 0))) for m, n in current.signed_below),
            min(current.anchored_floor, height))
        log.warning("a fork from height %d (below the tree's root at %d): reloading the tree from there",
                    height, current.root.height)
        self.evidence_in_block = {}
        self.tree = self._build_tree(snapshot)

    def _maybe_prune(self) -> None:
        tree = self.tree
        if tree.best_tip.height - tree.root.height <= TREE_KEEP + TREE_PRUNE_STEP \
                and tree.final.height - tree.root.height <= TREE_PRUNE_STEP:
            return
        snapshot = tree.prune(TREE_KEEP)
        if snapshot is None:
            return
        for ev_id, blocks in list(self.evidence_in_block.items()):
            kept = [b for b in blocks if tree.held(b)]
            if len(kept) < len(blocks) and any(tree.on_best_chain(b) for b in blocks if not tree.held(b)):
                self.settled_evidence.add(ev_id)
            if kept:
                self.evidence_in_block[ev_id] = kept
            else:
                del self.evidence_in_block[ev_id]
        tip = tree.best_tip.height
        self.proposed = {p for p in self.proposed if p[0] > tip - TREE_KEEP}
        self.store.save_meta(META_TREE, tree_record(SavedTree(snapshot, frozenset(self.settled_evidence))))
        log.info("block tree root moved to height %d (final %d, tip %d)", snapshot.root.height,
                 snapshot.final.height, tip)

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
        """A governance state exact at ``height`` for a block whose parent is ``parent``.

        :attr:`gov` (the state after block G) serves it when G and ``parent`` share an ancestor
        F with ``height <= F.height + GOVERNANCE_DELAY``: a change passed above F takes effect
        after that. So every child of a best-chain block, and children up to two heights above
        G, are answered from memory; other branches read their own state from the store
        (cached by its digest)."""
        g = self._gov_tip
        if parent == g:
            return self.gov
        if g == self.tree.best_tip.hash:
            if self.tree.on_best_chain(parent):
                return self.gov
        elif g in self.tree and self._is_ancestor(parent, g):
            return self.gov
        if g in self.tree and height <= self.tree.header(g).height + GOVERNANCE_DELAY \
                and self._is_ancestor(g, parent):
            return self.gov
        with self.store.state_reader_at(parent, self.effects_cache) as reader:
            return ConsortiumState.load(self.consortium, reader, self.gov_states)

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

    def _tree_sign(self, block_hash: bytes, member: str, tree: BlockTree | None = None) -> bool:
        try:
            return (tree or self.tree).add_signature(block_hash, member)
        except ValidationError:  # a member only another branch's governance added
            log.debug("signature of %s on %s not counted: not a member on the best chain", member,
                      block_hash.hex()[:16])
            return False

    # --- helpers ---------------------------------------------------------------------------------

    def _send(self, msg: Message, to: str | None = None) -> None:
        self.outbox.append(Outgoing(to, msg))

    def take_outbox(self) -> list[Outgoing]:
        out, self.outbox = self.outbox, []
        return out

    def heads(self) -> ViewHeads:
        return self.tree.heads()

    def _is_ancestor(self, ancestor: bytes, block_hash: bytes) -> bool:
        if ancestor not in self.tree or block_hash not in self.tree:
            return False
        target = self.tree.header(ancestor).height
        h = block_hash
        while True:
            header = self.tree.header(h)
            if header.height <= target:
                return h == ancestor
            h = header.prev

    def _evidence_included(self, ev_id: bytes, parent: bytes) -> bool:
        if ev_id in self.settled_evidence:
            return True
        return any(self._is_ancestor(b, parent) for b in self.evidence_in_block.get(ev_id, ()))

    def _remember_effects(self, block_hash: bytes, effects: Effects) -> None:
        self.effects_cache[block_hash] = effects
        while len(self.effects_cache) > EFFECTS_CACHE:
            self.effects_cache.popitem(last=False)

    # --- blocks --------------------------------------------------------------------------------

    def on_proposal(self, peer: str | None, proposal: ProposalMsg, now_ms: int) -> None:
        try:
            block = Block.decode(proposal.block, self.mempool.by_raw)
        except (DecodeError, ValidationError) as exc:
            log.warning("rejected proposal from %s: %s", peer, exc)
            if peer is None or proposal.signature.member == peer:
                self._object_if_attributable(proposal, str(exc))
            return
        # Only the proposer's own copy is attributable to it: a relayer could swap a transaction
        # signature without changing the block hash (txids cover bodies, not signatures).
        self._accept_block(block, (proposal.signature,), peer, now_ms,
                           object_on_failure=peer in (None, block.header.proposer))
        self._after_change(now_ms)

    def _accept_block(self, block: Block, sigs: Sequence[BlockSignature], peer: str | None, now_ms: int,
                      object_on_failure: bool) -> bool:
        """Validate and store one block; returns True if it was new and valid."""
        if block.hash in self.tree:
            log.debug("ignored block %d %s from %s: already known (duplicate or replay)", block.height,
                      block.hash.hex()[:16], peer)
            self._accept_sigs(sigs, peer, now_ms)
            return False
        proposer_sig = next((s for s in sigs if s.member == block.header.proposer and s.block_hash == block.hash), None)
        if proposer_sig is None:
            log.warning("rejected block %d %s from %s: no proposer signature", block.height,
                        block.hash.hex()[:16], peer)
            return False
        try:
            if block.header.prev in self.tree:
                here = self.state_for(block.header.prev, block.height).at(block.height)
                check_proposer_signature(block, proposer_sig, here, self.cid)
            elif not self._signed_by_some_key(proposer_sig.member,
                                              lambda k: proposer_sig.valid(self.cid, k)):
                raise SignatureError(f"block at height {block.height}: proposer signature of "
                                     f"{proposer_sig.member} does not verify")
        except (ValidationError, DecodeError) as exc:
            log.warning("rejected block %d from %s: %s", block.height, peer, exc)
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
        self._store_new_block(block, proposer_sig, effects, cosign_now=object_on_failure)
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
        if header.prev in self.tree and not self.tree.held(header.prev):
            fork = self.tree.fork_point(header.prev).height
            if fork >= self.tree.final.height:
                self._reroot(fork)
        try:
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
            self._send(SigsMsg((cosign,)))
        log.debug("stored block %d round %d by %s (%d txs) %s", block.height, block.header.round,
                  block.header.proposer, len(block.txs), block.hash.hex()[:16])

    def _remember_block(self, block: Block, proposer_sig: BlockSignature, effects: Effects) -> None:
        for ev in block.evidence:
            self.evidence_in_block.setdefault(ev.id, []).append(block.hash)
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
        if self.store.head().hash == tip.hash:
            return
        result = self.store.set_head(tip.hash, self.effects_cache)
        if result.rolled_back:
            log.warning("reorg: rolled back %d blocks, applied %d; new tip %d %s; %d txs back to the pool",
                        len(result.rolled_back), len(result.applied), tip.height, tip.hash.hex()[:16],
                        len(result.returned_txs))
        self._applied(result.applied, result.rolled_back, result.returned_txs)
        self._follow_tip()

    def _applied(self, applied: Sequence[bytes], rolled_back: Sequence[bytes], returned: Sequence[Tx]) -> None:
        for block_hash in applied:
            block = self.recent_blocks.get(block_hash) or self.store.block(block_hash)
            if block is not None:
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
        self._send(SigsMsg((sig,)))
        self._sync_head(now_ms)

    def _object_if_attributable(self, proposal: ProposalMsg, reason: str) -> None:
        """A malformed body under a header its proposer really signed deserves an objection."""
        try:
            header = Block.peek_header(proposal.block)
        except (DecodeError, ValidationError):
            return
        sig = proposal.signature
        if sig.member == header.proposer and sig.block_hash == header.hash \
                and self._signed_by_some_key(sig.member, lambda k: sig.valid(self.cid, k)):
            self._object(header.hash, reason)

    def _object(self, block_hash: bytes, reason: str) -> None:
        key = self.key_at(self.tree.best_tip.height + 1)
        if key is None:
            return  # no longer a member (or not yet): our objections would not verify
        objection = Objection.create(key, self.cid, self.me, block_hash, reason)
        self.store.add_objection(objection)
        self.objection_count += 1
        self._send(ObjectionMsg(objection))

    # --- signatures and evidence ----------------------------------------------------------------

    def on_sigs(self, peer: str | None, msg: SigsMsg, now_ms: int) -> None:
        self._accept_sigs(msg.sigs, peer, now_ms)
        self._after_change(now_ms)

    def _accept_sigs(self, sigs: Iterable[BlockSignature], peer: str | None, now_ms: int) -> None:
        fresh = []
        for sig in sigs:
            if sig.member not in self.gov.used_names:
                log.warning("rejected signature from %s: %s is not a member", peer, sig.member)
                continue
            if sig.member in self.tree.signers(sig.block_hash):
                log.debug("ignored %s's signature on %s from %s: already known (duplicate or replay)",
                          sig.member, sig.block_hash.hex()[:16], peer)
                continue
            if sig.block_hash in self.tree:
                key = self._key_for(sig.member, sig.block_hash)
                ok = key is not None and sig.valid(self.cid, key)
            else:
                ok = self._signed_by_some_key(sig.member, lambda k: sig.valid(self.cid, k))
            if not ok:
                log.warning("rejected signature from %s: %s's signature on %s does not verify with its key "
                            "at that height", peer, sig.member, sig.block_hash.hex()[:16])
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
            fresh.append(sig)
        if fresh:
            # Peers' signatures are durable at their signers (each persisted its own before
            # releasing it) and anti-entropy re-sends any we lose, so they ride along with our
            # next durable commit instead of costing an fsync each.
            self.unsaved_sigs.extend(fresh)
            if len(self.unsaved_sigs) >= UNSAVED_SIGS_MAX:
                self.flush_signatures()

    def flush_signatures(self) -> None:
        """Write peers' signatures still held in memory (called every heartbeat, and on demand)."""
        if self.unsaved_sigs:
            pending, self.unsaved_sigs = self.unsaved_sigs, []
            self.store.add_signatures(pending)

    def _signatures(self, block_hash: bytes) -> list[BlockSignature]:
        """Stored and not-yet-stored signatures of a block."""
        stored = self.store.signatures(block_hash)
        have = {s.member for s in stored}
        return stored + [s for s in self.unsaved_sigs if s.block_hash == block_hash and s.member not in have]

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

    def next_deadline_ms(self, now_ms: int) -> int:
        """When the turn situation next changes by itself (heartbeat or round timeout)."""
        params = self.params
        _, round_, _ = self.current_turn(now_ms)
        round_start = self.tip_seen_ms + round_ * params.turn_timeout_ms
        heartbeat = round_start + params.heartbeat_ms
        return heartbeat if heartbeat > now_ms else round_start + params.turn_timeout_ms

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
        parent_endorsed = tip.height == 0 or self.tree.heads().majority >= tip.height
        if not ((self.mempool and parent_endorsed) or now_ms >= round_start + params.heartbeat_ms):
            return False
        if tip.time_ms + round_ * params.turn_timeout_ms - params.clock_skew_ms > now_ms:
            return False  # by the parent's clock this round has not begun: peers would refuse the block
        return not self.store.guard_locked()  # restored data directory: no signing until caught up

    def maybe_propose(self, now_ms: int) -> Block | None:
        if not self.proposal_due(now_ms):
            return None
        height, round_, _ = self.current_turn(now_ms)
        tip = self.tree.best_tip
        block = self._build_block(tip, height, round_, now_ms)
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

    # --- catch-up and anti-entropy ---------------------------------------------------------------

    def _request_catchup(self, peer: str, to_height: int, now_ms: int) -> None:
        last = self.catchup_asked.get(peer)
        if last is not None and now_ms - last < CATCHUP_RETRY_MS:
            return
        self.catchup_asked[peer] = now_ms
        start = self.tree.heads().unanimous_signed + 1
        self._send(GetBlocksMsg(start, max(start, to_height)), to=peer)

    def on_get_blocks(self, peer: str | None, msg: GetBlocksMsg, now_ms: int) -> None:
        if peer is None:
            return  # an answer needs someone to go to
        items: list[tuple[bytes, tuple[BlockSignature, ...]]] = []
        size = 0
        height = max(1, msg.from_height)
        while height <= msg.to_height and len(items) < MAX_CATCHUP_BLOCKS:
            block_hash = self.tree.best_chain_hash(height)
            if block_hash is None:
                break
            block = self.store.block(block_hash)
            if block is None:
                break
            if items and size + len(block.raw) > MAX_CATCHUP_BYTES:
                break
            size += len(block.raw)
            items.append((block.raw, tuple(self._signatures(block_hash))))
            height += 1
        self._send(BlocksMsg(tuple(items), self.tree.best_tip.height), to=peer)

    def on_blocks(self, peer: str | None, msg: BlocksMsg, now_ms: int) -> None:
        last_height = 0
        progress = False
        # The whole batch is one durable commit (not one per block); any signature we release at
        # the end leaves only after it, when the outbox is flushed.
        with self.store.batch():
            for raw, sigs in msg.items:
                try:
                    block = Block.decode(raw, self.mempool.by_raw)
                except (DecodeError, ValidationError) as exc:
                    log.warning("catch-up from %s: bad block: %s", peer, exc)
                    break
                progress |= self._accept_block(block, sigs, peer, now_ms, object_on_failure=False)
                if block.hash not in self.tree:
                    break
                last_height = block.height
            self._after_change(now_ms)
        if msg.items:
            log.info("catch-up from %s: now at height %d of %d", peer, self.tree.best_tip.height, msg.peer_height)
        if progress and peer is not None:
            # Ask for the next batch at once only when this one moved us forward; otherwise the
            # retry interval applies (a peer advertising what it cannot deliver is not a loop).
            self.catchup_asked.pop(peer, None)
            if last_height and msg.peer_height > last_height:
                self._request_catchup(peer, msg.peer_height, now_ms)

    def status_message(self) -> StatusMsg:
        tip = self.tree.best_tip
        recent = []
        for height in range(tip.height, max(0, tip.height - STATUS_RECENT), -1):
            block_hash = self.tree.best_chain_hash(height)
            if block_hash is None:
                break
            recent.append((block_hash, tuple(sorted(self.tree.signers(block_hash)))))
        return StatusMsg(tip.hash, tip.height, tuple(recent))

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
        missing: list[BlockSignature] = []
        for block_hash, signers in msg.recent:
            if block_hash not in self.tree:
                continue
            ours = self.tree.signers(block_hash) - set(signers)
            if ours:
                missing.extend(s for s in self._signatures(block_hash) if s.member in ours)
        if missing:
            self._send(SigsMsg(tuple(missing)), to=peer)

    # --- alerts ---------------------------------------------------------------------------------

    def alert_conditions(self, now_ms: int, peers_up: Callable[[str], bool]) -> list[Alert]:
        alerts = chain_alerts(self.tree, self.me)
        params = self.params
        majority = self.tree.heads().majority
        if majority != self._majority_height:
            self._majority_height, self._majority_seen_ms = majority, now_ms
        # Heartbeat blocks keep the tip moving even when too few members sign; progress is the
        # majority head moving, so that is what "stalled" watches.
        if now_ms - self._majority_seen_ms > params.turn_timeout_ms + params.heartbeat_ms:
            alerts.append(waiting_for(self.tree, self.tip_seen_ms, now_ms, params.turn_timeout_ms))
        problem = self.key_problem()
        if problem is not None:
            alerts.append(Alert("key_missing", problem, subject=self.me))
        for member in self.current.member_names:
            if member != self.me and not peers_up(member):
                alerts.append(Alert("peer_down", f"peer {member} is not connected", subject=member))
        return alerts
