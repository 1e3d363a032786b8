"""The state machine: how a block's transactions change the key/value state.

Pure: it reads the state before the block through a :class:`StateReader` (the store's view of
the parent, or a dict in tests) and returns the block's :class:`Effects` without applying them,
so a block that fails half way changes nothing. The caller applies the effects atomically.

The state root is the root of the authenticated state (:mod:`peerdb.core.statetree`): a tree
of namespaces, each a sparse Merkle tree of its keys. The effects carry the tree records the
block adds (keyed by its height), which the store writes with the block; computing them costs
``O(changed keys × log n)`` tree nodes, read from the parent's tree through the reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from .consortium import Consortium
from .errors import AccessError, RemoteError, ReplayError, SignatureError, ValidationError
from .governance import GovernanceBlock
from .membership import ConsortiumState
from .model import GOV_NAMESPACE, OP_PUT, Tx
from .privacy import check_envelope
from .smt import MemoryNodes
from .statetree import update_state

Write = tuple[str, str, bytes | None]
"""(namespace, key, new value or None for a delete)."""


class StateReader(Protocol):
    """The state as of the parent block."""

    def get(self, namespace: str, key: str) -> bytes | None: ...

    def tx_seen(self, txid: bytes) -> bool:
        """True if a transaction with this id is already in the chain (and not yet expired)."""
        ...

    def tree_node(self, key: bytes) -> bytes | None:
        """A record of the parent's state tree (:func:`peerdb.core.smt.node_key`), or None."""
        ...


@dataclass(frozen=True)
class Effects:
    writes: tuple[Write, ...]
    txids: tuple[bytes, ...]
    state_root: bytes
    nodes: Mapping[bytes, bytes] = field(default_factory=dict, compare=False, repr=False)
    """The state tree records the block adds (node key -> record), for the store to write with
    the block; emptied (:meth:`without_nodes`) once they are stored."""

    def without_nodes(self) -> "Effects":
        """The same effects without the tree records: what a cache keeps once the block is stored."""
        return replace(self, nodes={}) if self.nodes else self


def tree_version(height: int | None) -> tuple[int, int]:
    """(parent's version, block's version) of the state tree records: the heights, when known
    (the store needs them); 0 and 0 for readers that address records by hash alone."""
    return (0, 0) if height is None else (height - 1, height)


def state_effects(reader: StateReader, prev_state_root: bytes, writes: list[Write], txids: list[bytes],
                  height: int | None) -> Effects:
    """The effects of a block whose writes and transaction ids are known: the new state root
    and the tree records it adds, read from the parent's tree through ``reader``."""
    parent_version, version = tree_version(height)
    nodes: dict[bytes, bytes] = {}
    root = update_state(reader, prev_state_root, parent_version, writes, version, nodes)
    return Effects(tuple(writes), tuple(txids), root, nodes)


def check_tx_static(tx: Tx, consortium: Consortium, *, governance: bool = False) -> None:
    """Checks that need only the consortium: client key, member, write access.

    Governance requests (ops on ``_gov``) pass only with ``governance=True``: a caller that does
    not follow the consortium by height (pass ``ConsortiumState.at(height)`` as ``consortium``)
    must not admit them to its pool or its blocks.
    """
    owner = consortium.member_of_client(tx.client)
    if owner is None:
        raise ValidationError(f"tx {tx.txid.hex()[:16]}: client key is not registered to any member")
    if owner != tx.member:
        raise ValidationError(f"tx {tx.txid.hex()[:16]}: client key belongs to {owner}, not {tx.member}")
    for op in tx.ops:
        if op.namespace == GOV_NAMESPACE:
            if not governance:
                raise ValidationError(f"tx {tx.txid.hex()[:16]}: a governance request needs a caller that "
                                      "follows governance (the block height is unknown here)")
            continue  # the governance rules decide (peerdb.core.governance)
        if not consortium.may_write(tx.member, op.namespace):
            raise AccessError(f"tx {tx.txid.hex()[:16]}: {tx.member} may not write namespace {op.namespace!r}")


def check_tx_envelopes(tx: Tx, consortium: Consortium) -> None:
    """Admission check (the block-time rule is in :class:`BlockRun`): puts into namespaces that
    are private in ``consortium`` carry envelopes sealed to every reader there. A pool that
    admitted plaintext would only drop it later, after telling the client "accepted"."""
    for op in tx.ops:
        if op.value is None or op.namespace == GOV_NAMESPACE:
            continue
        rule = consortium.rule(op.namespace)
        if rule is not None and rule.private:
            try:
                check_envelope(op.value, consortium, op.namespace)
            except ValidationError as exc:
                raise ValidationError(f"tx {tx.txid.hex()[:16]}: {exc}") from None


def check_tx_time(tx: Tx, block_time_ms: int, tx_ttl_ms: int) -> None:
    if tx.expires_ms < block_time_ms:
        raise ReplayError(f"tx {tx.txid.hex()[:16]}: expired at {tx.expires_ms}, block time {block_time_ms}")
    if tx.expires_ms - block_time_ms > tx_ttl_ms:
        raise ValidationError(
            f"tx {tx.txid.hex()[:16]}: expires {tx.expires_ms - block_time_ms} ms after the block, more than tx_ttl_ms={tx_ttl_ms}")


def apply_txs(
    reader: StateReader,
    txs: Iterable[Tx],
    consortium: Consortium,
    cid: bytes,
    block_time_ms: int,
    prev_state_root: bytes,
    signature_ok: Callable[[Tx], bool] | None = None,
    *,
    height: int | None = None,
    consortium_state: ConsortiumState | None = None,
) -> Effects:
    """Validate every transaction against the parent state and return the block's effects.

    ``signature_ok`` lets the caller supply signatures it already verified (in parallel threads);
    by default each signature is verified here.

    ``height`` (the block's height; the state tree's records are keyed by it) turns governance
    on: ``consortium`` is then the *genesis*
    consortium, and the members, keys, parameters and rules in force at ``height`` are read
    from the governance state in ``reader`` (or taken from ``consortium_state``, which must be
    the state of that same parent). Without it, governance requests are refused and
    ``consortium`` is used as it is, exactly as before governance existed.
    """
    run = BlockRun(reader, consortium, cid, block_time_ms, height=height, consortium_state=consortium_state)
    for tx in txs:
        run.add(tx, signature_ok)
    return run.effects(prev_state_root)


class BlockRun:
    """A block's transactions applied one at a time: :func:`apply_txs` for a received block,
    and, for a proposer filling a block from its pool, :meth:`try_add`, which leaves out a
    transaction that does not apply (a vote on a proposal that was just decided) instead of
    failing the whole block."""

    def __init__(self, reader: StateReader, consortium: Consortium, cid: bytes, block_time_ms: int, *,
                 height: int | None = None, consortium_state: ConsortiumState | None = None) -> None:
        self.reader = reader
        self.cid = cid
        self.block_time_ms = block_time_ms
        self.height = height
        self.writes: list[Write] = []
        self.txids: list[bytes] = []
        self._seen: set[bytes] = set()
        self.governance: GovernanceBlock | None = None
        self.consortium = consortium
        if height is not None:
            state = consortium_state if consortium_state is not None else ConsortiumState.load(consortium, reader)
            self.consortium = state.at(height)
            self.governance = GovernanceBlock(reader, state, cid, height, block_time_ms, self.writes)
            self.governance.start()
        self._private = frozenset(r.name for r in self.consortium.namespaces if r.private)
        """Namespaces whose values must be envelopes for their readers (:mod:`peerdb.core.privacy`)."""

    @property
    def consortium_state(self) -> ConsortiumState | None:
        """The governance state after the transactions added so far (None without governance)."""
        return None if self.governance is None else self.governance.state

    def add(self, tx: Tx, signature_ok: Callable[[Tx], bool] | None = None) -> None:
        """Apply one transaction; on an error the run is left half-applied (use :meth:`try_add`)."""
        consortium = self.consortium
        check_tx_static(tx, consortium, governance=self.governance is not None)
        check_tx_time(tx, self.block_time_ms, consortium.params.tx_ttl_ms)
        if tx.txid in self._seen or self.reader.tx_seen(tx.txid):
            raise ReplayError(f"tx {tx.txid.hex()[:16]}: already included in the chain")
        ok = signature_ok(tx) if signature_ok is not None else tx.signature_valid(self.cid)
        if not ok:
            raise SignatureError(f"tx {tx.txid.hex()[:16]}: client signature does not verify")
        self._seen.add(tx.txid)
        self.txids.append(tx.txid)
        for op in tx.ops:
            if op.namespace == GOV_NAMESPACE and self.governance is not None:
                self.governance.apply(tx.member, op, f"tx {tx.txid.hex()[:16]}")
                continue
            if op.value is not None and op.namespace in self._private:
                try:
                    check_envelope(op.value, consortium, op.namespace)
                except ValidationError as exc:
                    raise ValidationError(f"tx {tx.txid.hex()[:16]}: {exc}") from None
            self.writes.append((op.namespace, op.key, op.value if op.kind == OP_PUT else None))

    def try_add(self, tx: Tx, signature_ok: Callable[[Tx], bool] | None = None) -> RemoteError | None:
        """Apply one transaction if it is valid here; otherwise change nothing and return why."""
        n_writes, n_txids = len(self.writes), len(self.txids)
        mark = self.governance.mark() if self.governance is not None else None
        try:
            self.add(tx, signature_ok)
        except RemoteError as exc:
            del self.writes[n_writes:]
            if len(self.txids) > n_txids:  # it got past the replay check, so it was not seen before
                del self.txids[n_txids:]
                self._seen.discard(tx.txid)
            if self.governance is not None and mark is not None:
                self.governance.reset(mark)
            return exc
        return None

    def effects(self, prev_state_root: bytes) -> Effects:
        """The block's effects on the parent's state, whose root is ``prev_state_root``."""
        return state_effects(self.reader, prev_state_root, self.writes, self.txids, self.height)


class MemoryState:
    """A dict-backed :class:`StateReader` with apply, for tests and tools. Its tree records are
    kept by hash (:class:`peerdb.core.smt.MemoryNodes`) and may be shared between copies:
    records never change, so a copy that sees more of them than its own state needs is still
    exact."""

    def __init__(self, nodes: MemoryNodes | None = None) -> None:
        self.values: dict[tuple[str, str], bytes] = {}
        self.seen: set[bytes] = set()
        self.nodes = nodes if nodes is not None else MemoryNodes()

    def tree_node(self, key: bytes) -> bytes | None:
        return self.nodes.tree_node(key)

    def tree_getter(self) -> Callable[[bytes], bytes | None]:
        return self.nodes.tree_getter()

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.values.get((namespace, key))

    def tx_seen(self, txid: bytes) -> bool:
        return txid in self.seen

    def apply(self, effects: Effects) -> None:
        for ns, key, value in effects.writes:
            if value is None:
                self.values.pop((ns, key), None)
            else:
                self.values[(ns, key)] = value
        self.seen.update(effects.txids)
        self.nodes.add(effects.nodes)
