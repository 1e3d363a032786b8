"""The client-side verifier of read proofs: trusts the consortium file and nothing else.

:func:`verify_read_proof` checks, in order (docs/verified-reads.md):

1. **the governance path**: from the genesis consortium, each checkpoint's signatures verify
   under the member keys in force at its height as known *before* it, a majority of those
   members endorse it, and the change entries it reveals hash to its state's counter and take
   effect only after it; so the members and keys at every height of the proof are derived from
   the consortium file alone, whatever changed since genesis;
2. **the chain**: each header is the parent of the next; every signature verifies under its
   member's key at the signed header's height (a signature by anyone else is refused, not
   ignored); evidence against a member is checked and excludes it;
3. **the state**: the tree path from the first header's state root to the key shows exactly
   the claimed value, or its absence;
4. **the anchor**, if any: the anchor proof of a chain header, offline (Merkle path, the
   Bitcoin transaction and its ``OP_RETURN``, the txoutproof, the header chain, its depth and,
   if asked, its proof of work).

Then it says which view the proof reaches at the read height: ``majority`` (more than half of
the eligible members endorse it), ``unanimous_signed`` (all of them), ``unanimous`` (that, and
anchored), or ``tentative`` (fewer). Any item that does not hold raises :class:`ProofError`
naming it; a decoding failure names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peerdb.anchor.errors import AnchorProofError
from peerdb.anchor.headers import POW_LIMITS
from peerdb.anchor.proof import verify_anchor_proof
from peerdb.core.chain import View
from peerdb.core.consortium import Consortium
from peerdb.core.errors import DecodeError, ValidationError
from peerdb.core.membership import CHANGES_KEY, ConsortiumState, ScheduledChange, next_digest, parse_counter
from peerdb.core.model import GOV_NAMESPACE, BlockSignature, Header, consortium_id
from peerdb.core.smt import ProofError
from peerdb.core.statetree import verify_key

from .format import ReadProof, SignedChain

__all__ = ["ProofError", "VerifiedRead", "verify_read_proof"]


@dataclass(frozen=True)
class VerifiedRead:
    """What a proof established."""

    namespace: str
    key: str
    value: bytes | None
    height: int
    block_hash: bytes
    view: View
    endorsers: tuple[str, ...]
    """Eligible members who signed the read block or a descendant in the proof."""
    eligible: tuple[str, ...]
    """The members at the read height, less those the proof's evidence excludes."""
    excluded: tuple[str, ...]
    private: bool
    """The namespace is private at the read height: ``value`` is the sealed envelope."""
    anchor: dict[str, Any] | None = None
    """The anchoring Bitcoin transaction and block (display byte order) and the proof's depth."""
    governance_changes: int = 0
    checkpoints: int = 0
    chain_headers: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.value is not None

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in self.eligible if m not in self.endorsers)

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "key": self.key, "found": self.found,
                "value": None if self.value is None else self.value.hex(), "height": self.height,
                "block": self.block_hash.hex(), "view": self.view.value, "endorsers": list(self.endorsers),
                "eligible": list(self.eligible), "missing": list(self.missing), "excluded": list(self.excluded),
                "private": self.private, "anchor": self.anchor, "governance_changes": self.governance_changes,
                "checkpoints": self.checkpoints, "chain_headers": self.chain_headers}


def _check_links(chain: SignedChain, where: str) -> None:
    for i in range(1, len(chain.headers)):
        prev, header = chain.headers[i - 1], chain.headers[i]
        if header.prev != prev.hash or header.height != prev.height + 1:
            raise ProofError(f"{where}.headers[{i}]", f"is not the child of headers[{i - 1}] (height "
                             f"{prev.height}, block {prev.hash.hex()[:16]})")


def _endorsers(chain: SignedChain, state: ConsortiumState, cid: bytes, where: str) -> set[str]:
    """Members whose signature on a chain header verifies under their key at its height; any
    signature that does not is refused, naming it."""
    signed: set[str] = set()
    last_signed = False
    for i, member, sig in chain.sigs:
        header = chain.headers[i]
        key = state.key_at(member, header.height)
        item = f"{where}.sigs[{member}]"
        if key is None:
            raise ProofError(item, f"{member} is not a member at height {header.height}")
        if not BlockSignature(header.hash, member, sig).valid(cid, key):
            raise ProofError(item, f"not {member}'s signature of the block at height {header.height}")
        signed.add(member)
        last_signed = last_signed or i == len(chain.headers) - 1
    if not chain.sigs:
        raise ProofError(f"{where}.sigs", "no signature: the proof is endorsed by no member")
    if not last_signed:
        raise ProofError(f"{where}.headers[{len(chain.headers) - 1}]", "carries no signature: a chain ends "
                         "at a signed header")
    return signed


def _majority(count: int, of: int) -> bool:
    return of > 0 and count >= of // 2 + 1


def _entries(raw: tuple[bytes, ...], upto: int, where: str) -> list[ScheduledChange]:
    try:
        return [ScheduledChange.decode(e) for e in raw[:upto]]
    except DecodeError as exc:
        raise ProofError(where, f"a change entry does not decode: {exc}") from None


def _counter(raw: bytes | None, where: str) -> tuple[int, bytes]:
    try:
        return parse_counter(raw)
    except DecodeError as exc:
        raise ProofError(where, str(exc)) from None


def _digest(entries: tuple[bytes, ...], count: int) -> bytes:
    digest = bytes(32)
    for entry in entries[:count]:
        digest = next_digest(digest, entry)
    return digest


def _governance(proof: ReadProof, genesis: Consortium, cid: bytes) -> tuple[ConsortiumState, int]:
    """The consortium at every height the proof spans, from the genesis file and the checkpoints."""
    gov = proof.gov
    entries = gov.entries
    decoded = _entries(entries, len(entries), "gov.entries")
    state = ConsortiumState(genesis)
    known = 0  # entries attested so far
    last_height = -1
    for n, cp in enumerate(gov.checkpoints):
        where = f"gov.checkpoints[{n}]"
        _check_links(cp.chain, f"{where}.chain")
        first, top = cp.chain.headers[0], cp.chain.headers[-1]
        if first.height <= last_height:
            raise ProofError(f"{where}.chain.headers[0]", "checkpoints must ascend by height")
        last_height = first.height
        signed = _endorsers(cp.chain, state, cid, f"{where}.chain")
        members = set(state.members_at(first.height))
        if not _majority(len(signed & members), len(members)):
            raise ProofError(f"{where}.chain.sigs", f"{len(signed & members)} of the {len(members)} members at "
                             f"height {first.height} endorse it: not a majority")
        try:
            verify_key(first.state_root, GOV_NAMESPACE, CHANGES_KEY, cp.counter, cp.proof, f"{where}.proof")
        except ProofError as exc:
            raise ProofError(exc.item if exc.item.startswith(where) else f"{where}.counter", exc.reason) from None
        count, digest = _counter(cp.counter, f"{where}.counter")
        if count < known or count > len(entries):
            raise ProofError(f"{where}.counter", f"counts {count} changes; the proof carries {len(entries)} and "
                             f"earlier checkpoints attest {known}")
        if _digest(entries, count) != digest:
            raise ProofError("gov.entries", f"the first {count} entries do not hash to the digest checkpoint {n} "
                             "attests")
        changes = decoded[:count]
        for i in range(known, count):
            if changes[i].effective_height <= top.height:
                raise ProofError("gov.entries", f"change {i} takes effect at height {changes[i].effective_height}, "
                                 f"within checkpoint {n}, which was checked without it")
        try:
            state = ConsortiumState(genesis, changes, digest)
        except ValidationError as exc:
            raise ProofError("gov.entries", str(exc)) from None
        known = count
    return state, known


def verify_read_proof(consortium: Consortium, proof: ReadProof | bytes, *, check_pow: bool = False,
                      pow_limit: int = POW_LIMITS["main"]) -> VerifiedRead:
    """Check ``proof`` against the genesis ``consortium``; :class:`ProofError` names what fails."""
    if not isinstance(proof, ReadProof):
        try:
            proof = ReadProof.decode(proof)
        except DecodeError as exc:
            raise ProofError("proof", f"does not decode: {exc}") from None
    cid = consortium_id(consortium)
    chain = proof.chain
    read, top = chain.headers[0], chain.headers[-1]
    _check_links(chain, "chain")
    state, attested = _governance(proof, consortium, cid)
    gov = proof.gov
    verify_key(top.state_root, GOV_NAMESPACE, CHANGES_KEY, gov.counter, gov.proof, "gov.proof")
    count, digest = _counter(gov.counter, "gov.counter")
    if count != len(gov.entries) or _digest(gov.entries, count) != digest:
        raise ProofError("gov.entries", f"are not the {count} change entries the state at height {top.height} "
                         "records")
    changes = _entries(gov.entries, count, "gov.entries")
    for i in range(attested, count):
        if changes[i].effective_height <= top.height:
            raise ProofError("gov.checkpoints", f"change {i} takes effect at height {changes[i].effective_height}, "
                             "but no checkpoint attests it")
    if count > attested:
        try:
            state = ConsortiumState(consortium, changes, digest)
        except ValidationError as exc:
            raise ProofError("gov.entries", str(exc)) from None
    excluded: set[str] = set()
    for i, ev in enumerate(proof.evidence):
        try:
            state.check_evidence(ev, cid)
        except ValidationError as exc:
            raise ProofError(f"evidence[{i}]", str(exc)) from None
        excluded.add(ev.member)
    signed = _endorsers(chain, state, cid, "chain")
    members = state.members_at(read.height)
    eligible = [m for m in members if m not in excluded]
    endorsers = tuple(m for m in eligible if m in signed)
    here = state.at(read.height)
    verify_key(read.state_root, proof.namespace, proof.key, proof.value, proof.state, "state")
    anchor_info = None
    if proof.anchor is not None:
        part = proof.anchor
        if part.index >= len(chain.headers):
            raise ProofError("anchor.index", f"{part.index} is past the chain's {len(chain.headers)} headers")
        anchored = chain.headers[part.index]
        try:
            verified = verify_anchor_proof(part.anchor_proof(anchored.hash), anchored.hash, check_pow=check_pow,
                                           pow_limit=pow_limit,
                                           min_depth=state.params_at(anchored.height).anchor_confirmations)
        except (AnchorProofError, DecodeError) as exc:
            raise ProofError("anchor", str(exc)) from None
        anchor_info = {"block_height": anchored.height, "bitcoin_txid": verified.txid_hex,
                       "bitcoin_block": verified.bitcoin_block_hash_hex, "depth": verified.depth,
                       "pow_checked": check_pow}
    if len(endorsers) == len(eligible) and eligible:
        view = View.UNANIMOUS if anchor_info is not None else View.UNANIMOUS_SIGNED
    elif _majority(len(endorsers), len(eligible)):
        view = View.MAJORITY
    else:
        view = View.TENTATIVE
    rule = here.rule(proof.namespace)
    return VerifiedRead(proof.namespace, proof.key, proof.value, read.height, read.hash, view, endorsers,
                        tuple(eligible), tuple(sorted(excluded)), rule is not None and rule.private, anchor_info,
                        count, len(gov.checkpoints), len(chain.headers))


def header_of(proof: ReadProof) -> Header:
    return proof.chain.headers[0]
