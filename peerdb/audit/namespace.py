"""Namespace audits: checking a block of which the bundle holds one namespace's transactions.

A namespace bundle's ``part`` item (:class:`~.bundle.PartEntry`) carries a block's header and
signatures, but of its transactions only those touching the audited namespace ``NS`` or the
governance namespace ``_gov``. :func:`check_part` establishes, for such a block, everything a
full replay would about ``NS`` (docs/auditor.md, "Namespace audits"):

1. the header's own rules against its parent (linkage, turn, time) and its evidence;
2. the transactions offered are *exactly* the block's transactions touching ``NS``, and exactly
   those touching ``_gov``, in block order: each list hashes to the root the header's
   ``ns_tx_root`` proves for it (so none was left out, none slipped in, none reordered), and
   every transaction offered touches one of the two;
3. replayed through the state machine (client signatures, write rules, replay window, envelopes
   of private namespaces, governance) on the state of ``NS`` and ``_gov`` after the parent;
4. the roots of ``NS`` and ``_gov`` after the block, recomputed from the replayed writes
   (:class:`NamespaceRoots`), are those the header's ``state_root`` proves for them.

So a namespace's whole history and its running root are checked against headers signed by the
members, without one byte of another namespace's data (a transaction that writes both is whole,
being signed whole). What the other namespaces hold, and whether their transactions are valid,
is outside such an audit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peerdb.core.consortium import Consortium
from peerdb.core.errors import DecodeError, RemoteError, ValidationError
from peerdb.core.membership import ConsortiumState
from peerdb.core.merkle import merkle_root
from peerdb.core.model import GOV_NAMESPACE, Evidence, Header, Tx, tx_namespaces
from peerdb.core.smt import EMPTY, Change, MemoryNodes, update
from peerdb.core.state import BlockRun, Effects, StateReader, Write
from peerdb.core.statetree import final_writes, key_path, value_hash, verify_namespace, verify_ns_txs
from peerdb.core.validate import check_header

from .bundle import PartEntry
from .errors import AuditFailure


@dataclass(frozen=True)
class PartBlock:
    """The decoded content of a part item."""

    header: Header
    txs: tuple[Tx, ...]
    evidence: tuple[Evidence, ...]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height


def decode_part(entry: PartEntry, where: str) -> PartBlock:
    txs = []
    for i, raw in enumerate(entry.txs):
        try:
            txs.append(Tx.decode(raw))
        except DecodeError as exc:
            raise AuditFailure(where, f"transaction {i} does not decode: {exc}") from None
    return PartBlock(entry.header, tuple(txs), entry.evidence)


class NamespaceRoots:
    """The audited namespace's and ``_gov``'s key trees after every replayed block, in memory.

    Records are shared by hash between versions; what no block at the newest two heights can
    build on (a block's parent is one height below it, and blocks come by height) is collected
    once the records have doubled."""

    def __init__(self, genesis: bytes) -> None:
        self.nodes = MemoryNodes()
        self.roots: dict[bytes, tuple[bytes, bytes]] = {genesis: (EMPTY, EMPTY)}
        self.heights: dict[bytes, int] = {genesis: 0}
        self._kept = 0

    def after(self, block: bytes, parent: bytes, height: int, writes: list[Write], namespace: str) -> tuple[bytes, bytes]:
        grouped = final_writes(writes)
        new = []
        for ns, root in zip((namespace, GOV_NAMESPACE), self.roots[parent]):
            changes = sorted((Change(key_path(k), None if v is None else value_hash(v))
                              for k, v in grouped.get(ns, {}).items()), key=lambda c: c.path)
            out: dict[bytes, bytes] = {}
            new.append(update(self.nodes, (root, 0), changes, 0, out)[0])
            self.nodes.add(out)
        roots = (new[0], new[1])
        self.roots[block] = roots
        self.heights[block] = height
        if len(self.nodes) > max(100_000, 2 * self._kept):
            live = [r for b, rs in self.roots.items() if self.heights[b] >= height - 1 for r in rs]
            self.nodes.collect(live)
            self._kept = len(self.nodes)
        return roots


def check_part(part: PartBlock, entry: PartEntry, namespace: str, parent: Header, reader: StateReader,
               consortium: Consortium, cid: bytes, state: ConsortiumState, evidence_known: Callable[[bytes], bool],
               signature_ok: Callable[[Tx], bool] | None, roots: NamespaceRoots) -> Effects:
    """Check a part against its parent (see the module docstring); ValidationError names the rule.
    Returns the effects of its transactions on ``NS`` and ``_gov`` (and on whatever else they
    write), with the header's state root."""
    header = part.header
    where = f"block at height {header.height}"
    here = state.at(header.height)
    check_header(header, parent, here, header.time_ms)
    ids: set[bytes] = set()
    for ev in part.evidence:
        if ev.id in ids or evidence_known(ev.id):
            raise ValidationError(f"{where}: evidence against {ev.member} is already recorded")
        ids.add(ev.id)
        state.check_evidence(ev, cid)
    if merkle_root([ev.id for ev in part.evidence]) != header.evidence_root:
        raise ValidationError(f"{where}: evidence_root does not match the evidence")
    lists: dict[str, list[bytes]] = {namespace: [], GOV_NAMESPACE: []}
    for tx in part.txs:
        touched = tx_namespaces(tx)
        if namespace not in touched and GOV_NAMESPACE not in touched:
            raise ValidationError(f"{where}: transaction {tx.txid.hex()[:16]} touches neither {namespace!r} nor "
                                  f"{GOV_NAMESPACE} ({', '.join(sorted(touched))}): it is not this namespace's")
        for ns in (namespace, GOV_NAMESPACE):
            if ns in touched:
                lists[ns].append(tx.txid)
    for i, ns in enumerate((namespace, GOV_NAMESPACE)):
        verify_ns_txs(header.ns_tx_root, ns, lists[ns], entry.ns_txs[i], f"{where}: transactions of {ns!r}")
    run = BlockRun(reader, consortium, cid, header.time_ms, height=header.height, consortium_state=state)
    for tx in part.txs:
        try:
            run.add(tx, signature_ok)
        except RemoteError as exc:
            raise ValidationError(str(exc)) from None
    replayed = roots.after(header.hash, header.prev, header.height, run.writes, namespace)
    for i, ns in enumerate((namespace, GOV_NAMESPACE)):
        proven = verify_namespace(header.state_root, ns, entry.ns_roots[i], f"{where}: root of {ns!r}")
        if proven != replayed[i]:
            raise ValidationError(f"{where}: the root of {ns!r} after replaying its transactions is not the one "
                                  "its state_root commits to")
    return Effects(tuple(run.writes), tuple(run.txids), header.state_root)
