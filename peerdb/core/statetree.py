"""The authenticated state: one sparse Merkle tree per namespace, under one tree of namespaces.

CONSENSUS-CRITICAL (docs/protocol.md §7.3). A block's ``state_root`` is the root of the
*namespace tree*, whose entries are ``ns_path(namespace) -> namespace root`` for every namespace
holding at least one key; a *namespace root* is the root of that namespace's *key tree*, whose
entries are ``key_path(key) -> value_hash(value)``. Both are :mod:`peerdb.core.smt` trees. So:

* a proof of one key is two tree proofs: the namespace's root under the state root, then the
  key under the namespace root (:class:`StateProof`);
* a namespace's root is provable on its own, and an auditor who replays one namespace's writes
  recomputes exactly that root, whatever the other namespaces hold;
* a block's header commits to the state after it, not to how it got there: the transactions
  (``tx_root``, and per namespace ``ns_tx_root``, :func:`ns_tx_root`) commit to the history.

A block costs ``O(changed keys × log n)``: each touched namespace's key tree is updated in one
batch (:func:`peerdb.core.smt.update`), then the namespace tree with the touched namespaces' new
roots. New records are keyed by the block's height (:func:`peerdb.core.smt.node_key`), and the
state root's own record is always (re)written at the block's height, so the store finds the
root of the state after the block at height ``h`` as ``node_key(h, state_root)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from .codec import expect_list, tagged_hash
from .merkle import merkle_root
from .smt import (
    EMPTY,
    Change,
    MemoryNodes,
    NodeSource,
    Proof,
    ProofError,
    build,
    load_record,
    node_key,
    prove,
    update,
    verify,
)

EMPTY_STATE_ROOT = EMPTY
"""The state root of an empty state (genesis)."""

Write = tuple[str, str, bytes | None]


_KEY_PREFIX = b"\x07smt-key"
_VALUE_PREFIX = b"\x09smt-value"
_sha256 = hashlib.sha256


def ns_path(namespace: str) -> bytes:
    """Where a namespace sits in the namespace tree (and in a block's namespace transaction map)."""
    return tagged_hash("smt-ns", namespace.encode("utf-8"))


def key_path(key: str) -> bytes:
    """Where a key sits in its namespace's key tree: ``H("smt-key", key)`` (the prefix of
    :func:`peerdb.core.codec.tagged_hash` written out, as this runs once per written key)."""
    return _sha256(_KEY_PREFIX + key.encode("utf-8")).digest()


def value_hash(value: bytes) -> bytes:
    """What a key tree's leaf holds for a value: ``H("smt-value", value)``."""
    return _sha256(_VALUE_PREFIX + value).digest()


def final_writes(writes: Iterable[Write]) -> dict[str, dict[str, bytes | None]]:
    """The last write to each key, grouped by namespace (a block may write a key twice)."""
    out: dict[str, dict[str, bytes | None]] = {}
    for ns, key, value in writes:
        bucket = out.get(ns)
        if bucket is None:
            bucket = out[ns] = {}
        bucket[key] = value
    return out


def namespace_root(source: NodeSource, state_root: bytes, version: int, namespace: str,
                   pending: Mapping[bytes, bytes] | None = None) -> tuple[bytes, int]:
    """(root, version) of a namespace's key tree in the state at ``(version, state_root)``."""
    path = ns_path(namespace)
    h, v = state_root, version
    depth = 0
    while h != EMPTY:
        rec = load_record(source, (h, v), pending)
        if len(rec) != 80:
            if rec[:32] == path:
                return rec[32:64], int.from_bytes(rec[64:72], "big")
            return EMPTY, 0
        if (path[depth >> 3] >> (7 - (depth & 7))) & 1:
            h, v = rec[32:64], int.from_bytes(rec[72:80], "big")
        else:
            h, v = rec[:32], int.from_bytes(rec[64:72], "big")
        depth += 1
    return EMPTY, 0


def update_state(source: NodeSource, parent_root: bytes, parent_version: int, writes: Sequence[Write],
                 version: int, out: MutableMapping[bytes, bytes]) -> bytes:
    """The state root after ``writes`` on the state at ``(parent_version, parent_root)``; the
    new records go to ``out``. The returned root's record is always in ``out`` or stored at
    ``version`` (copied if the block changed nothing), unless the state is empty."""
    grouped = final_writes(writes)
    top: list[Change] = []
    for ns, keys in grouped.items():
        ns_root = namespace_root(source, parent_root, parent_version, ns)
        # Paths are distinct, so the tuples sort by path alone.
        changes = sorted([Change(key_path(k), None if v is None else value_hash(v)) for k, v in keys.items()])
        new_root, new_version = update(source, ns_root, changes, version, out)
        if new_root == ns_root[0]:
            continue
        top.append(Change(ns_path(ns), None if new_root == EMPTY else new_root, new_version))
    top.sort()
    root, root_version = update(source, (parent_root, parent_version), top, version, out)
    if root != EMPTY and root_version != version:
        out[node_key(version, root)] = load_record(source, (root, root_version), out)
    return root


# --- proofs of keys -----------------------------------------------------------------------------

@dataclass(frozen=True)
class StateProof:
    """A key's value, or its absence, under a state root: the namespace's root under the state
    root (``namespace``), then the key under that root (``key``; None when the namespace holds
    nothing, which the first proof shows)."""

    namespace: Proof
    key: Proof | None

    def to_cbor(self) -> list[Any]:
        return [self.namespace.to_cbor(), None if self.key is None else self.key.to_cbor()]

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "StateProof":
        items = expect_list(raw, where, 2)
        return cls(Proof.from_cbor(items[0], f"{where}.namespace"),
                   None if items[1] is None else Proof.from_cbor(items[1], f"{where}.key"))


def prove_key(source: NodeSource, state_root: bytes, version: int, namespace: str, key: str) -> StateProof:
    ns_proof, aux = prove(source, (state_root, version), ns_path(namespace))
    if ns_proof.leaf is None or ns_proof.leaf[0] != ns_path(namespace):
        return StateProof(ns_proof, None)
    return StateProof(ns_proof, prove(source, (ns_proof.leaf[1], aux or 0), key_path(key))[0])


def verify_key(state_root: bytes, namespace: str, key: str, value: bytes | None, proof: StateProof,
               where: str = "state") -> None:
    """Raise :class:`ProofError` naming the item unless ``proof`` shows that under
    ``state_root`` the key holds ``value`` (None: is absent)."""
    ns_root = verify(state_root, ns_path(namespace), proof.namespace, f"{where}.namespace")
    if ns_root is None:
        if proof.key is not None:
            raise ProofError(f"{where}.key", "a key proof for a namespace the state does not hold")
        if value is not None:
            raise ProofError("value", f"the state holds nothing in namespace {namespace!r}, so no value")
        return
    if proof.key is None:
        raise ProofError(f"{where}.key", "missing: the namespace is in the state")
    found = verify(ns_root, key_path(key), proof.key, f"{where}.key")
    if value is None:
        if found is not None:
            raise ProofError("value", "absent in the answer, but the state holds a value for the key")
    elif found is None:
        raise ProofError("value", "the state holds no value for the key")
    elif found != value_hash(value):
        raise ProofError("value", "is not the value the state holds for the key")


def prove_namespace(source: NodeSource, state_root: bytes, version: int, namespace: str) -> Proof:
    """The proof of a namespace's root (or its absence: no keys) under a state root."""
    return prove(source, (state_root, version), ns_path(namespace))[0]


def verify_namespace(state_root: bytes, namespace: str, proof: Proof, where: str) -> bytes:
    """The namespace's root under ``state_root`` (:data:`EMPTY` when it holds no key)."""
    found = verify(state_root, ns_path(namespace), proof, where)
    return EMPTY if found is None else found


# --- namespace roots from scratch (the auditor of one namespace) --------------------------------

class NamespaceState:
    """One namespace's keys and key tree, in memory: what an auditor of that namespace replays.
    Its :attr:`root` must equal what the header's state root proves for the namespace."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.nodes = MemoryNodes()
        self.root = EMPTY

    def apply(self, writes: Mapping[str, bytes | None]) -> bytes:
        changes = sorted((Change(key_path(k), None if v is None else value_hash(v)) for k, v in writes.items()),
                         key=lambda c: c.path)
        out: dict[bytes, bytes] = {}
        self.root = update(self.nodes, (self.root, 0), changes, 0, out)[0]
        self.nodes.add(out)
        for k, v in writes.items():
            if v is None:
                self.values.pop(k, None)
            else:
                self.values[k] = v
        if len(self.nodes) > 4 * max(1024, 2 * len(self.values)):
            self.nodes.collect([self.root])
        return self.root


# --- per-namespace transaction roots ----------------------------------------------------------

def ns_tx_lists(txs: Iterable[tuple[bytes, Iterable[str]]]) -> dict[str, list[bytes]]:
    """Each namespace's transaction ids, in block order, from ``(txid, namespaces of its ops)``."""
    out: dict[str, list[bytes]] = {}
    for txid, namespaces in txs:
        for ns in set(namespaces):
            bucket = out.get(ns)
            if bucket is None:
                bucket = out[ns] = []
            bucket.append(txid)
    return out


def ns_tx_entries(lists: Mapping[str, Sequence[bytes]], tx_root: bytes | None = None,
                  tx_count: int = -1) -> dict[bytes, bytes]:
    """``ns_path -> merkle_root(txids)``; a list of all ``tx_count`` transactions has root ``tx_root``."""
    return {ns_path(ns): tx_root if tx_root is not None and len(txids) == tx_count else merkle_root(txids)
            for ns, txids in lists.items()}


def ns_tx_root(txs: Iterable[tuple[bytes, Iterable[str]]], tx_root: bytes | None = None, tx_count: int = -1) -> bytes:
    """A block's ``ns_tx_root``: the tree of ``ns_path(ns) -> merkle_root(txids touching ns)``
    (``tx_root``: the root of all ``tx_count`` txids, reused for a namespace all of them touch)."""
    return build(ns_tx_entries(ns_tx_lists(txs), tx_root, tx_count))[0]


def prove_ns_txs(txs: Iterable[tuple[bytes, Iterable[str]]], namespace: str) -> Proof:
    """The proof of a namespace's transaction list root (or that no transaction touches it)."""
    root, records = build(ns_tx_entries(ns_tx_lists(txs)))
    nodes = MemoryNodes()
    nodes.add(records)
    return prove(nodes, (root, 0), ns_path(namespace))[0]


def verify_ns_txs(ns_tx_root_: bytes, namespace: str, txids: Sequence[bytes], proof: Proof, where: str) -> None:
    """Raise :class:`ProofError` unless ``txids`` are exactly the block's transactions touching
    ``namespace``, in block order."""
    found = verify(ns_tx_root_, ns_path(namespace), proof, where)
    if found is None:
        if txids:
            raise ProofError(where, f"the block has no transaction touching {namespace!r}, but "
                             f"{len(txids)} are offered")
        return
    if not txids:
        raise ProofError(where, f"the block's transactions touching {namespace!r} are missing")
    if merkle_root(txids) != found:
        raise ProofError(where, f"the transactions offered are not exactly the block's transactions "
                         f"touching {namespace!r} (one is missing, foreign, or out of order)")
