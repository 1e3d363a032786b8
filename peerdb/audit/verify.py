"""``peerdb audit verify``: recompute everything a bundle claims, trusting no member.

Per block, in bundle order (docs/auditor.md lists the checks):

1. it decodes (canonically, through the hardened decoder) and its parent is in the bundle;
2. every signer is a member at the block's height, and the proposer's signature is there and
   verifies;
3. :func:`peerdb.core.validate.check_block` against the parent's state, with the block's own time
   as "now": linkage, turn, time rules, size, evidence, every transaction (client signatures,
   access rules, replay window) replayed through :func:`peerdb.core.state.apply_txs`, state root;
4. every co-signature verifies; a member signing two blocks at one height is excluded;
5. objections verify; the anchor proof verifies (offline, at the least ``anchor_confirmations``
   in force from the block's height on; and against a Bitcoin node when one is given);
6. a block marked best extends the previous best block.

Then evidence items are checked, every member with evidence against it is excluded, the block
tree is rebuilt from all blocks, signatures and exclusions, and the fork choice, exclusions and
views it gives are compared with the head's claims.

A namespace bundle (the head names a namespace) holds ``part`` items instead of blocks; step 3
is then :func:`.namespace.check_part`: the header's rules, the proof that the transactions offered
are exactly the block's transactions of the namespace and of ``_gov``, their replay, and the two
namespaces' roots against the state root. Everything else is the same. The first failure stops the audit with an
:class:`~.errors.AuditFailure` naming the item.

Governance (docs/protocol.md §20): members, keys and parameters vary by height. The verifier
keeps the :class:`~peerdb.core.membership.ConsortiumState` after every replayed block (states are
immutable and shared: a block that passes no change keeps its parent's object), checks each block
against its parent's, verifies each signature with the signer's key at the signed block's height
on the block's own branch, and gives the block tree the best chain's member schedule, as a node
does.

Speed: signatures are verified in worker threads (:mod:`.sigpool`) while the main thread decodes
the next blocks (:mod:`peerdb.core.blockdecode`) and replays the previous ones; the pipeline holds about
:data:`WINDOW_SIGS` signatures in flight.

Why one module of this size: it is the auditor's checklist, step by step in the order above;
split, the order that makes each check sound would be spread over files.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from peerdb.anchor.errors import AnchorProofError
from peerdb.anchor.headers import POW_LIMITS
from peerdb.anchor.proof import VerifiedAnchor, verify_anchor_proof
from peerdb.core.chain import BlockTree
from peerdb.core.blockdecode import decode_block_fast
from peerdb.core.codec import signing_prefix
from peerdb.core.consortium import Consortium
from peerdb.core.errors import DecodeError, ValidationError
from peerdb.core.membership import ConsortiumState
from peerdb.core.merkle import root_from_path
from peerdb.core.model import DOMAIN_BLOCK, DOMAIN_TX, GOV_NAMESPACE, Block, BlockSignature, Header, Objection, Tx, genesis_header
from peerdb.core.validate import check_block

from .bundle import AnchorRef, AnyBlockEntry, BlockEntry, BtcPart, EvidenceEntry, Head, Item, PartEntry, read_items
from .errors import AuditFailure, block_where
from .namespace import NamespaceRoots, PartBlock, check_part, decode_part
from .replay import ChainState
from .settled import check_settled
from .report import Exclusion, Heads, VerifyReport
from .sigpool import SignaturePool

WINDOW_SIGS = 16_384
"""Signatures decoded ahead of the replay: eight chunks, enough to keep every worker busy while
the main thread replays, small enough that memory stays a few blocks' worth."""

MAX_PENDING_ITEMS = 512
"""Items decoded ahead of the replay, whatever their signature count (empty blocks)."""

SWITCH_INTERVAL_S = 0.0005
"""While verifying, the interpreter hands the GIL over every 0.5 ms instead of 5 ms, so a worker
coming back from a signature check is not kept waiting by the main thread's decoding."""


class AnchorChecker(Protocol):
    """The online half of anchor verification (:class:`peerdb.anchor.rpc.BitcoinRPC`)."""

    def check_anchor_in_best_chain(self, verified: VerifiedAnchor) -> None: ...


@dataclass
class VerifyOptions:
    check_pow: bool = False
    pow_limit: int = POW_LIMITS["main"]
    bitcoin: AnchorChecker | None = None
    threads: int | None = None
    processes: bool = False
    """Check signatures in worker processes rather than threads (see :class:`SignaturePool`)."""


@dataclass
class _Pending:
    item: Item
    index: int
    block: Block | PartBlock | None = None
    error: AuditFailure | None = None
    lo: int = 0
    hi: int = 0
    jobs: list[str] = field(default_factory=list)
    """Member names of the block signatures submitted, in job order after the transactions."""
    guessed: list[bytes | None] = field(default_factory=list)
    """Per block signature (in ``sigs`` order), the key its job was checked with (None: not
    queued). Stage A may run ahead of the governance state of the block's parent, so stage B
    compares it with the exact key and checks the signature again when they differ."""


def _trusted(_tx: Tx) -> bool:
    return True


class BundleVerifier:
    """Verifies a bundle read from a stream (:func:`verify_bundle`): decodes blocks and queues
    their signatures ahead (stage A), replays them in order (stage B), then judges the fork
    choice and the claims."""

    def __init__(self, options: VerifyOptions | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_item: Callable[[Item], None] | None = None) -> None:
        """``on_item`` sees every item as it is read (``peerdb audit diff`` collects the books
        it compares from the same pass that verifies them)."""
        self.options = options or VerifyOptions()
        self.progress = progress
        self.on_item = on_item
        self.head: Head | None = None
        self.report: VerifyReport | None = None

    # --- entry point -------------------------------------------------------------------------

    def verify(self, stream: BinaryIO) -> VerifyReport:
        started = time.perf_counter()
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        pool = SignaturePool(self.options.threads, processes=self.options.processes)
        try:
            report = self._run(stream, pool)
        finally:
            pool.close()
            sys.setswitchinterval(old_switch)
        report.seconds = time.perf_counter() - started
        report.threads = pool.threads
        return report

    def _run(self, stream: BinaryIO, pool: SignaturePool) -> VerifyReport:
        self.pool = pool
        self.pending: deque[_Pending] = deque()
        self.nbytes = 0
        items = read_items(stream, self._progress)
        index = 0
        deferred: AuditFailure | None = None
        try:
            while deferred is None:
                try:
                    item = next(items)
                except StopIteration:
                    break
                except AuditFailure as exc:
                    deferred = exc  # a parse failure comes after every item parsed before it
                    break
                if self.on_item is not None:
                    self.on_item(item)
                self.pending.append(self._stage_a(item, index))
                index += 1
                while self.pending and (pool.in_flight > WINDOW_SIGS or len(self.pending) > MAX_PENDING_ITEMS):
                    self._stage_b(self.pending.popleft())
            while self.pending:
                self._stage_b(self.pending.popleft())
        except AuditFailure as exc:
            integrity = deferred if deferred is not None else _integrity(items)
            if integrity is None:
                raise
            raise AuditFailure(exc.where, f"{exc.reason} (also {integrity.where}: {integrity.reason})") from None
        if deferred is not None:
            raise deferred
        return self._finish()

    def _progress(self, n: int) -> None:
        self.nbytes += n
        if self.progress is not None:
            self.progress(n)

    # --- stage A: decode and queue signatures --------------------------------------------------

    def _stage_a(self, item: Item, index: int) -> _Pending:
        p = _Pending(item, index)
        if isinstance(item, Head):
            self._start(item)
            return p
        if not isinstance(item, (BlockEntry, PartEntry)) or self.head is None:
            return p
        where = block_where(item.header.height, item.hash, item.header.proposer)
        block: Block | PartBlock
        try:
            block = decode_block_fast(item.raw) if isinstance(item, BlockEntry) else decode_part(item, where)
        except (DecodeError, ValidationError) as exc:
            p.error = AuditFailure(where, f"does not decode: {exc}")
            return p
        except AuditFailure as exc:
            p.error = exc
            return p
        p.block = block
        pool = self.pool
        tx_prefix = self.tx_prefix
        txs = block.txs
        p.lo = pool.extend([tx.signature + tx_prefix + tx.txid for tx in txs], [tx.client for tx in txs])
        add = pool.add
        message = self.block_prefix + block.hash
        # The parent's governance state if stage B has replayed the parent, else the best
        # chain's latest: exact unless a change takes effect in between (stage B checks).
        keys = self._keys_at(self.gov.get(block.header.prev) or self.best_gov, block.header.height)
        guessed = p.guessed
        for member, sig in item.sigs:
            key = keys.get(member)
            guessed.append(key)
            if key is not None:
                add(sig, message, key)
                p.jobs.append(member)
        p.hi = pool.next_index
        return p

    def _keys_at(self, state: ConsortiumState, height: int) -> dict[str, bytes]:
        """Member name -> key at ``height`` on the branch ``state`` describes; one dict per
        consortium epoch, built once (a chain without governance uses the genesis dict)."""
        if not state.changes:
            return self.genesis_keys
        consortium = state.at(height)
        cached = self._key_maps.get(id(consortium))
        if cached is None or cached[0] is not consortium:
            cached = (consortium, {m.name: m.key for m in consortium.members})
            self._key_maps[id(consortium)] = cached
        return cached[1]

    def _start(self, head: Head) -> None:
        self.head = head
        c = head.consortium
        self.consortium: Consortium = c
        self.cid = head.cid
        self.genesis_keys: dict[str, bytes] = {m.name: m.key for m in c.members}
        self._key_maps: dict[int, tuple[Consortium, dict[str, bytes]]] = {}
        self.tx_prefix = signing_prefix(DOMAIN_TX, head.cid)
        self.block_prefix = signing_prefix(DOMAIN_BLOCK, head.cid)
        genesis = genesis_header(c)
        self.tree = BlockTree(genesis, c.member_names)
        self.state = ChainState(genesis)
        self.best_gov = ConsortiumState(c)
        """The governance state after the best chain's latest replayed block."""
        self.gov: dict[bytes, ConsortiumState] = {genesis.hash: self.best_gov}
        """The governance state after each replayed block (shared objects: one per change)."""
        self.uncounted: list[tuple[bytes, str]] = []
        """Verified signatures the tree refused: by members the best chain's governance did not
        know (yet) when they were replayed; offered again at the end (:meth:`_finish`)."""
        self.shallow_anchors: list[tuple[str, int, int]] = []
        """(where, depth, block height) of anchor proofs below the depth required at the time."""
        self.late_objections: list[tuple[str, Objection, int]] = []
        """Objections whose signature is not by the key at the objected block's height: a node
        signs with its key at its own next height, so they are checked at the end against the
        member's later keys on the best chain."""
        self.culprits: dict[str, Exclusion] = {}
        self.block_evidence: dict[bytes, str] = {}  # evidence id carried by a block -> where
        self.evidence_ids: set[bytes] = set()
        self.height_signers: dict[str, bytes] = {}  # member -> block signed at self.signer_height
        self.signer_height = 0
        self.btc: list[BtcPart] = []
        self.anchor_cache: dict[tuple[int, bytes], VerifiedAnchor] = {}
        self.btc_checked: set[int] = set()
        self.anchored: dict[bytes, str] = {}
        """Blocks with a verified anchor proof -> how to name the anchor (for settled blocks)."""
        self.signed_by: dict[str, list[bytes]] = {}
        """Member -> blocks carrying its verified signature (for settled blocks off the best chain)."""
        self.report = VerifyReport(c.name, head.cid.hex(), head.member, head.exported_ms, list(c.member_names),
                                   signatures={m: 0 for m in c.member_names},
                                   pow_checked=self.options.check_pow,
                                   bitcoin_checked=self.options.bitcoin is not None,
                                   namespace=head.namespace)
        self.ns_roots = NamespaceRoots(genesis.hash) if head.namespace is not None else None
        """The audited namespace's and _gov's trees, replayed (namespace bundles only)."""

    # --- stage B: replay, in order -------------------------------------------------------------

    def _stage_b(self, p: _Pending) -> None:
        item = p.item
        if isinstance(item, (BlockEntry, PartEntry)):
            self._block(p, item)
        elif isinstance(item, BtcPart):
            self.btc.append(item)
        elif isinstance(item, EvidenceEntry):
            self._evidence(item)

    def _block(self, p: _Pending, entry: AnyBlockEntry) -> None:
        header = entry.header
        where = block_where(header.height, entry.hash, header.proposer)
        if p.error is not None:
            raise p.error
        block = p.block
        assert block is not None  # stage A either decoded it or recorded an error
        report = self.report
        assert report is not None
        parent = self.state.header(header.prev)
        if parent is None:
            raise AuditFailure(where, f"its parent {header.prev.hex()[:16]} is not in the bundle")
        height = header.height
        gov = self.gov[header.prev]  # every replayed block has its state
        keys = self._keys_at(gov, height)
        # Signers: members at this height only; the proposer's signature first (docs/protocol.md
        # §7.4, §20.6).
        signers = [m for m, _ in entry.sigs]
        for member in signers:
            if member not in keys:
                raise AuditFailure(where, f"signature by {member!r}, who is not a member at height {height}")
        if header.proposer not in signers:
            raise AuditFailure(where, f"no signature by its proposer {header.proposer}")
        failed = self.pool.failed(p.lo, p.hi)
        n_txs = len(block.txs)
        bad_sigs = {p.jobs[i - p.lo - n_txs] for i in failed if i - p.lo >= n_txs}
        for (member, sig), guessed in zip(entry.sigs, p.guessed):
            key = keys[member]
            if key != guessed:  # stage A ran ahead of a governance change: check with the right key
                if BlockSignature(entry.hash, member, sig).valid(self.cid, key):
                    bad_sigs.discard(member)
                else:
                    bad_sigs.add(member)
        if header.proposer in bad_sigs:
            raise AuditFailure(where, f"the proposer's ({header.proposer}) signature does not verify")
        bad_txids = {block.txs[i - p.lo].txid for i in failed if i - p.lo < n_txs}
        reader = self.state.reader_for(header.prev)
        signature_ok = (lambda tx: tx.txid not in bad_txids) if bad_txids else _trusted
        try:
            if isinstance(block, Block):
                effects = check_block(
                    block, parent, parent.state_root, reader, self.consortium, self.cid, header.time_ms,
                    evidence_known=reader.evidence_included, signature_ok=signature_ok, consortium_state=gov)
            else:
                assert isinstance(entry, PartEntry) and self.ns_roots is not None and self.head is not None
                assert self.head.namespace is not None
                effects = check_part(block, entry, self.head.namespace, parent, reader, self.consortium, self.cid,
                                     gov, reader.evidence_included, signature_ok, self.ns_roots)
        except ValidationError as exc:
            raise AuditFailure(where, str(exc)) from None
        for member, _ in entry.sigs:
            if member in bad_sigs:
                raise AuditFailure(where, f"{member}'s signature does not verify")
        for member, reason, sig in entry.objections:
            objector_key = keys.get(member)
            if objector_key is None:
                raise AuditFailure(where, f"objection by {member!r}, who is not a member at height {height}")
            try:
                objection = Objection(entry.hash, member, reason, sig)
                valid = objection.valid(self.cid, objector_key)
            except DecodeError as exc:
                raise AuditFailure(where, f"objection by {member}: {exc}") from None
            if not valid:
                self.late_objections.append((where, objection, height))
        if entry.anchor is not None:
            self._anchor(where, entry.hash, entry.anchor, height)
        # Record: state, tree, signatures, exclusions.
        ev_ids = [ev.id for ev in block.evidence]
        for ev in block.evidence:
            self.block_evidence.setdefault(ev.id, where)
            self._exclude(ev.member, ev.header_a.height, f"evidence {ev.id.hex()[:16]}")
        after = gov.after_writes(effects.writes)
        self.gov[entry.hash] = after
        if entry.best:
            if header.prev != self.state.tip.hash:
                raise AuditFailure(where, f"marked best, but it does not extend the best block at height "
                                   f"{self.state.tip.height} ({self.state.tip.hash.hex()[:16]}): the bundle's "
                                   "best chain is broken")
            self.state.apply_main(header, effects, ev_ids)
            report.best_chain_transactions += n_txs
            if after is not self.best_gov:
                self._set_best_gov(after)
        else:
            self.state.add_side(header, effects, ev_ids)
        self.tree.add_header(header)
        if height != self.signer_height:
            self.signer_height, self.height_signers = height, {}
        counts = report.signatures
        for member in signers:
            other = self.height_signers.setdefault(member, entry.hash)
            if other != entry.hash:
                self._exclude(member, height, "signatures")
            try:
                self.tree.add_signature(entry.hash, member)
            except ValidationError:  # a member only this side branch's governance knows, so far
                self.uncounted.append((entry.hash, member))
            counts[member] = counts.get(member, 0) + 1
            self.signed_by.setdefault(member, []).append(entry.hash)
        report.blocks += 1
        report.transactions += n_txs
        report.objections += len(entry.objections)

    def _set_best_gov(self, state: ConsortiumState) -> None:
        """Follow the best chain's governance as a node does (``Engine._set_gov``): the tree's
        eligible members and view denominators by height come from it."""
        self.best_gov = state
        self.tree.set_schedule(state if state.changes else None)

    def _anchor(self, where: str, block_hash: bytes, anchor: AnchorRef, height: int) -> None:
        if anchor.btc >= len(self.btc):  # the parser checks this; kept for direct callers
            raise AuditFailure(where, f"anchor refers to btc item {anchor.btc}, which is not in the bundle")
        part = self.btc[anchor.btc]
        cached = self.anchor_cache.get((anchor.btc, anchor.root))
        try:
            if cached is None:
                verified = verify_anchor_proof(
                    part.proof(block_hash, anchor), block_hash, check_pow=self.options.check_pow,
                    pow_limit=self.options.pow_limit, min_depth=1)
                self.anchor_cache[(anchor.btc, anchor.root)] = verified
            elif root_from_path(block_hash, anchor.path) != anchor.root:
                # Everything but the path was verified for this (transaction, root) already.
                raise AnchorProofError("anchor_proof.path: Merkle path from the block hash does not lead "
                                       "to the anchored root")
            else:
                verified = cached
            if self.options.bitcoin is not None and anchor.btc not in self.btc_checked:
                self.options.bitcoin.check_anchor_in_best_chain(verified)
                self.btc_checked.add(anchor.btc)
        except (AnchorProofError, DecodeError, ValidationError) as exc:
            raise AuditFailure(where, f"anchor proof: {exc}") from None
        if verified.depth < self._required_depth(height):
            self.shallow_anchors.append((where, verified.depth, height))
        self.tree.set_anchored(block_hash)
        self.anchored[block_hash] = f"Bitcoin block {verified.bitcoin_height}, tx {verified.txid_hex}"
        assert self.report is not None
        self.report.anchored_blocks += 1

    def _required_depth(self, height: int) -> int:
        """The least ``anchor_confirmations`` in force on the best chain from ``height`` on (as
        far as replayed): a node checks a proof with the parameters in force when it arrives,
        at or above the block's height. Later changes can only lower this, so a proof deep
        enough now stays so, and a shallower one is judged at the end (:meth:`_finish`)."""
        epochs = self.best_gov.epochs()
        return min(c.params.anchor_confirmations for i, (_start, c) in enumerate(epochs)
                   if i + 1 == len(epochs) or epochs[i + 1][0] > height)

    def _evidence(self, entry: EvidenceEntry) -> None:
        """Checked with the key the member held at the evidenced height, so a double-sign made
        with a key rotated away since still convicts (docs/protocol.md §20.6): that key comes
        from the best chain's final state, as the exporting node checked it, or else from the
        state of the branch the evidenced blocks are on, when the bundle holds their parents."""
        ev = entry.evidence
        where = f"evidence {ev.id.hex()[:16]} against {ev.member}"
        states = [self.best_gov]
        for header in (ev.header_a, ev.header_b):
            branch = self.gov.get(header.prev)
            if branch is not None and all(branch is not s for s in states):
                states.append(branch)
        error: ValidationError | None = None
        for state in states:
            try:
                state.check_evidence(ev, self.cid)
                break
            except ValidationError as exc:
                error = error or exc
        else:
            raise AuditFailure(where, str(error)) from None
        self.evidence_ids.add(ev.id)
        self._exclude(ev.member, ev.header_a.height, f"evidence {ev.id.hex()[:16]}")

    def _exclude(self, member: str, height: int, source: str) -> None:
        if member not in self.culprits:
            self.culprits[member] = Exclusion(member, height, source)

    # --- the end: fork choice and claims -------------------------------------------------------

    def _finish(self) -> VerifyReport:
        head, report = self.head, self.report
        if head is None or report is None:
            raise AuditFailure("bundle", "no head item")
        for ev_id, where in self.block_evidence.items():
            if ev_id not in self.evidence_ids:
                raise AuditFailure(where, f"carries evidence {ev_id.hex()[:16]}, which is missing from the "
                                   "bundle's evidence items")
        self._check_late_objections()
        for where, depth, height in self.shallow_anchors:
            required = self._required_depth(height)
            if depth < required:
                raise AuditFailure(where, f"anchor proof: anchor_proof.headers: depth {depth} below the required "
                                   f"{required} (anchor_confirmations in force from height {height} on)")
        for block_hash, member in self.uncounted:
            try:
                self.tree.add_signature(block_hash, member)
            except ValidationError:
                pass  # a member only a side branch's governance has: not counted, as by a node
        for member in self.culprits:
            self.tree.add_culprit(member)
        self.tree = check_settled(self.tree, self.state.main, self.anchored, self.signed_by, self._eligible,
                                  self._tree_of)
        self._check_fork_choice()
        tree_heads = self.tree.heads()
        claims = head.claims
        excluded = sorted(self.culprits)
        if list(claims.excluded) != excluded:
            raise AuditFailure("claims", f"the exporter excluded {list(claims.excluded) or 'nobody'}, the bundle's "
                               f"evidence and signatures exclude {excluded or 'nobody'}")
        for name, claimed, computed, exact in (
                ("majority", claims.majority, tree_heads.majority, True),
                ("unanimous_signed", claims.unanimous_signed, tree_heads.unanimous_signed, True),
                ("anchored", claims.anchored, tree_heads.anchored, False),
                ("unanimous", claims.unanimous, tree_heads.unanimous, False)):
            if computed < claimed or (exact and computed != claimed):
                raise AuditFailure("claims", f"the exporter's {name} head is height {claimed}, the bundle's "
                                   f"blocks, signatures and anchors give {computed}")
        state = self.state
        report.best_chain_blocks = state.tip.height
        report.side_blocks = report.blocks - state.tip.height
        report.evidence = len(self.evidence_ids)
        report.excluded = [self.culprits[m] for m in excluded]
        report.bitcoin_transactions = len({k[0] for k in self.anchor_cache})
        report.heads = Heads(tree_heads.tentative, tree_heads.majority, tree_heads.unanimous_signed,
                             tree_heads.unanimous, tree_heads.anchored)
        report.tip = state.tip.hash.hex()
        report.keys_in_state = len(state.values)
        if self.ns_roots is not None and self.head is not None:
            report.keys_in_state = sum(1 for ns, _k in state.values if ns in (self.head.namespace, GOV_NAMESPACE))
            report.namespace_root = self.ns_roots.roots[state.tip.hash][0].hex()
        report.bytes = self.nbytes
        self._members(report)
        return report

    def _eligible(self, header: Header) -> list[str]:
        """Non-excluded members at a block's height on its own branch."""
        gov = self.gov.get(header.prev, self.best_gov)
        return [m for m in gov.members_at(header.height) if m not in self.culprits]

    def _tree_of(self, keep: Iterable[bytes]) -> BlockTree:
        """A block tree of only the ``keep`` blocks (the settled block's ancestors and
        descendants), with their signatures, anchors and the exclusions: the fork choice a node
        that holds the settled block final makes."""
        kept = set(keep)
        tree = BlockTree(self.tree.genesis, self.tree.members, self.tree.schedule)
        for header in sorted((h for h in self.tree.headers() if h.hash in kept and h.height > 0),
                             key=lambda h: h.height):
            tree.add_header(header)
            for member in self.tree.signers(header.hash):
                tree.add_signature(header.hash, member)
            if header.hash in self.anchored:
                tree.set_anchored(header.hash)
        for member in self.culprits:
            tree.add_culprit(member)
        return tree

    def _members(self, report: VerifyReport) -> None:
        """Everyone who was a member at any height of the best chain, in order of joining, then
        anyone else with a verified signature (a member only a side branch's governance added);
        and each best-chain member's keys by height."""
        gov = self.best_gov
        members: list[str] = []
        for _start, names in gov.member_epochs():
            members.extend(name for name in names if name not in members)
        on_best = set(members)
        members.extend(sorted(m for m in report.signatures if m not in on_best))
        report.members = members
        report.signatures = {m: report.signatures.get(m, 0) for m in members}
        report.key_history = {m: [(start, key.hex() if key is not None else None)
                                  for start, key in gov.key_history(m)] for m in members if m in on_best}

    def _check_late_objections(self) -> None:
        """An objection not signed by the key at its block's height must be signed by a key the
        member held at that height or later on the best chain (a node signs objections with its
        key at its own next height); a key already rotated away at that height is refused."""
        for where, objection, height in self.late_objections:
            history = self.best_gov.key_history(objection.member)
            keys = [key for i, (_start, key) in enumerate(history) if key is not None
                    and (i + 1 == len(history) or history[i + 1][0] > height)]
            if not any(objection.valid(self.cid, key) for key in keys):
                raise AuditFailure(where, f"{objection.member}'s objection signature does not verify with its key "
                                   f"at height {height} or a later one")

    def _check_fork_choice(self) -> None:
        assert self.head is not None
        main = self.state.main
        tree = self.tree
        best = tree.best_tip
        for height in range(1, max(len(main), best.height + 1)):
            ours = main[height] if height < len(main) else None
            theirs_hash = tree.best_chain_hash(height)
            if ours is not None and theirs_hash == ours.hash:
                continue
            theirs = tree.header(theirs_hash) if theirs_hash is not None else None
            marked = f"block {ours.hash.hex()[:16]} by {ours.proposer}" if ours else "no block"
            chosen = f"block {theirs.hash.hex()[:16]} by {theirs.proposer}" if theirs else "no block"
            raise AuditFailure("fork choice", f"at height {height} the bundle marks {marked} as best; the fork "
                               f"rule over the bundle's blocks, signatures and evidence chooses {chosen}")
        claims = self.head.claims
        if claims.tip != best.hash or claims.height != best.height:
            raise AuditFailure("claims", f"the exporter's best tip is {claims.tip.hex()[:16]} at height "
                               f"{claims.height}; the bundle's is {best.hash.hex()[:16]} at height {best.height}")


def _integrity(items: Iterator[Item]) -> AuditFailure | None:
    """Read the rest of a bundle whose verification already failed, for its framing and
    trailer: the failure of those (the bytes were changed after export), or None."""
    try:
        for _ in items:
            pass
    except AuditFailure as exc:
        return exc
    return None


def verify_bundle(stream: BinaryIO, options: VerifyOptions | None = None,
                  progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Verify a bundle read from ``stream``; raises :class:`AuditFailure` at the first failure.
    Errors reaching a Bitcoin node (:class:`peerdb.anchor.errors.BitcoinUnavailable`) propagate."""
    return BundleVerifier(options, progress).verify(stream)
