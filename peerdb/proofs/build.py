"""Making read proofs from a node's store (the node side of docs/verified-reads.md).

A proof is read at a best-chain height ``h`` (the head of the view the client asked for) from
what the store holds, in a few dozen point reads:

* the header at ``h`` and the state tree path to the key (:meth:`Store.state_proof`);
* the chain: the headers from ``h`` upwards until the members who signed one of them reach the
  view's requirement (a majority, or every eligible member), and the first of them with an
  anchor proof for ``unanimous``; each member's lowest signature in it;
* the evidence against members at ``h`` (they are excluded, as the node excludes them);
* the governance path: the change entries recorded in the state of the chain's last block,
  and per distinct effective height ``e`` a checkpoint at ``e - 2`` (the block that passed the
  change, whose state records it) signed within ``e - 2 .. e - 1``, before the change applies.

The builder never decides what is true: it assembles what the verifier will check, and a proof
that falls short (a block without enough signatures yet) verifies to a lower view.
"""

from __future__ import annotations

from collections.abc import Iterable

from peerdb.anchor.proof import AnchorProof
from peerdb.core.chain import View
from peerdb.core.errors import CorruptionError, DecodeError, StorageError, ValidationError
from peerdb.core.membership import CHANGES_KEY, ConsortiumState, ScheduledChange, change_key, parse_counter
from peerdb.core.model import GOV_NAMESPACE, BlockSignature, Evidence, Header, consortium_id
from peerdb.store import Store

from .format import MAX_CHAIN_HEADERS, AnchorPart, Checkpoint, GovPath, ReadProof, SignedChain

HISTORY_PROOFS_MAX = 64
"""Versions of a key proven in one history answer (each proof carries its own chain)."""

ANCHOR_SEARCH_MAX = 64
"""Headers looked at beyond the endorsement for one with an anchor proof: every block of an
anchor batch has its own proof, so the read block itself usually has one; a proof without an
anchor still says which view it reaches."""


class ProofBuilder:
    """Read proofs of one store's best chain. Every method reads the store only."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._gov: ConsortiumState | None = None
        self._cid = consortium_id(store.consortium)

    # --- one key at one height -----------------------------------------------------------------

    def read_proof(self, namespace: str, key: str, height: int, want: View = View.UNANIMOUS) -> ReadProof:
        store = self.store
        head = store.head()
        if not 0 < height <= head.height:
            raise ValidationError(f"height {height}: a proof needs a block between 1 and the head ({head.height})")
        header, state_proof = store.state_proof(namespace, key, height)
        value, _written = store.get(namespace, key, height)
        gov = self._consortium_state()
        evidence = evidence_for(gov.members_at(height), store.evidence_list())
        culprits = {ev.member for ev in evidence}
        eligible = [m for m in gov.members_at(height) if m not in culprits]
        need = len(eligible) if want in (View.UNANIMOUS, View.UNANIMOUS_SIGNED) else len(eligible) // 2 + 1
        chain, anchor = self._chain(header, set(eligible), need, want is View.UNANIMOUS, head.height)
        return ReadProof(namespace, key, value, chain, state_proof, evidence, anchor,
                         self._gov_path(chain.headers[-1].height, gov))

    # --- parts ---------------------------------------------------------------------------------

    def _consortium_state(self) -> ConsortiumState:
        """The best chain's governance state (exact for every height up to the head + 2)."""
        if self._gov is None:
            with self.store.state_reader_at(self.store.head().hash) as reader:
                self._gov = ConsortiumState.load(self.store.consortium, reader, self.store.gov_states)
        return self._gov

    def _header_at(self, height: int) -> Header:
        block_hash = self.store.block_hash_at(height)
        header = None if block_hash is None else self.store.header(block_hash)
        if header is None:
            raise StorageError(f"the best chain has no block at height {height}")
        return header

    def _chain(self, first: Header, eligible: set[str], need: int, want_anchor: bool,
               top: int, stop_before: int | None = None) -> tuple[SignedChain, AnchorPart | None]:
        """Headers from ``first`` up until ``need`` of ``eligible`` signed one of them (and one has
        an anchor proof, if wanted), within the head, ``stop_before`` and the chain limit."""
        headers: list[Header] = []
        sigs: dict[str, tuple[int, str, bytes]] = {}
        anchor: AnchorPart | None = None
        last_signed = 0
        endorsed_at: int | None = None
        header = first
        limit = min(top, (stop_before - 1) if stop_before is not None else top, first.height + MAX_CHAIN_HEADERS - 1)
        while True:
            index = len(headers)
            headers.append(header)
            for sig in self._signatures(header):
                if sig.member not in sigs:
                    sigs[sig.member] = (index, sig.member, sig.signature)
                    last_signed = index
            if anchor is None and (want_anchor or index == 0):
                anchor = self._anchor(index, header)
            endorsed = sum(1 for m in sigs if m in eligible)
            if endorsed >= need and endorsed_at is None:
                endorsed_at = index
            if endorsed_at is not None and (anchor is not None or not want_anchor
                                            or index - endorsed_at >= ANCHOR_SEARCH_MAX):
                break
            if header.height >= limit:
                break
            header = self._header_at(header.height + 1)
        cut = max(last_signed, 0)
        if anchor is not None and anchor.index > cut:
            anchor = None
        chain = SignedChain(tuple(headers[:cut + 1]),
                            tuple(sorted((s for s in sigs.values() if s[0] <= cut), key=lambda s: s[1])))
        return chain, anchor

    def _signatures(self, header: Header) -> list[BlockSignature]:
        """The stored signatures of a best-chain block, each checked with its member's key at that
        height: one the disk changed is refused as corrupt, never put in a proof as the member's."""
        gov = self._consortium_state()
        sigs = self.store.signatures(header.hash)
        for sig in sigs:
            key = gov.key_at(sig.member, header.height)
            if key is None or not sig.valid(self._cid, key):
                raise CorruptionError(f"stored signature of {sig.member} on block {header.height} "
                                      f"{header.hash.hex()[:16]} does not verify", "signature",
                                      header.hash + sig.member.encode())
        return sigs

    def _anchor(self, index: int, header: Header) -> AnchorPart | None:
        raw = self.store.anchor(header.hash)
        if raw is None:
            return None
        try:
            return AnchorPart.of(index, AnchorProof.decode(raw))
        except DecodeError as exc:
            raise StorageError(f"stored anchor proof of block {header.height} is corrupt: {exc}") from None

    def _gov_path(self, top: int, gov: ConsortiumState) -> GovPath:
        store = self.store
        counter, _ = store.get(GOV_NAMESPACE, CHANGES_KEY, top)
        count, _digest = parse_counter(counter)
        entries = []
        for i in range(count):
            raw, _ = store.get(GOV_NAMESPACE, change_key(i), top)
            if raw is None:
                raise StorageError(f"governance change {i} of {count} is missing from the state at height {top}")
            entries.append(raw)
        _header, proof = store.state_proof(GOV_NAMESPACE, CHANGES_KEY, top)
        checkpoints = [self._checkpoint(e, gov) for e in _effective_heights(entries) if e <= top]
        return GovPath(tuple(entries), tuple(checkpoints), counter, proof)

    def _checkpoint(self, effective: int, gov: ConsortiumState) -> Checkpoint:
        """The block that passed the changes taking effect at ``effective`` (its state records
        them), endorsed by a majority of the members before them, by signatures on it or its
        child only (both are still checked under the earlier member set)."""
        height = effective - 2
        header, proof = self.store.state_proof(GOV_NAMESPACE, CHANGES_KEY, height)
        counter, _ = self.store.get(GOV_NAMESPACE, CHANGES_KEY, height)
        if counter is None:
            raise StorageError(f"no governance change is recorded at height {height}, two below the effective "
                               f"height {effective} of one")
        members = set(gov.members_at(height))
        chain, _ = self._chain(header, members, len(members) // 2 + 1, False, self.store.head().height,
                               stop_before=effective)
        return Checkpoint(chain, counter, proof)


def _effective_heights(entries: Iterable[bytes]) -> list[int]:
    heights: list[int] = []
    for raw in entries:
        e = ScheduledChange.decode(raw).effective_height
        if not heights or heights[-1] != e:
            heights.append(e)
    return heights


def evidence_for(members: Iterable[str], evidence: Iterable[Evidence]) -> tuple[Evidence, ...]:
    """One evidence object (the lowest id) against each of ``members`` who has any."""
    wanted = set(members)
    out: dict[str, Evidence] = {}
    for ev in sorted(evidence, key=lambda e: e.id):
        if ev.member in wanted:
            out.setdefault(ev.member, ev)
    return tuple(out[m] for m in sorted(out))
