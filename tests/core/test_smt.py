"""The compact sparse Merkle tree: batch updates equal the recursive definition, whatever the
order of changes (history independence), over a versioned node store; proofs of presence and
absence verify, and any change to a proof is refused naming the item."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from peerdb.core.codec import tagged_hash
from peerdb.core.smt import (
    EMPTY,
    EMPTY_REF,
    INNER_LEN,
    Change,
    MemoryNodes,
    Proof,
    ProofError,
    Ref,
    bit,
    build,
    leaf_hash,
    node_hash,
    node_key,
    prove,
    update,
    verify,
)


def ref_root(entries: Mapping[bytes, bytes], depth: int = 0) -> bytes:
    """The definition, written the slow recursive way."""
    if not entries:
        return EMPTY
    if len(entries) == 1:
        (path, value), = entries.items()
        return leaf_hash(path, value)
    zero = {p: v for p, v in entries.items() if not bit(p, depth)}
    one = {p: v for p, v in entries.items() if bit(p, depth)}
    return node_hash(ref_root(zero, depth + 1), ref_root(one, depth + 1))


def h(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(4, "big")).digest()


class VersionedNodes:
    """A store keyed like LMDB's (version, hash): reads at the wrong version find nothing."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}

    def tree_node(self, key: bytes) -> bytes | None:
        return self.records.get(key)


def apply(store: VersionedNodes, root: Ref, batch: Mapping[bytes, bytes | None], version: int) -> Ref:
    out: dict[bytes, bytes] = {}
    new = update(store, root, [Change(p, v) for p, v in sorted(batch.items())], version, out)
    assert all(k[:8] == node_key(version, b"")[:8] for k in out), "new records carry the batch's version"
    store.records.update(out)
    return new


def test_hashes_are_tagged() -> None:
    a, b = h(1), h(2)
    assert EMPTY == tagged_hash("smt-empty", b"")
    assert leaf_hash(a, b) == tagged_hash("smt-leaf", a + b)
    assert node_hash(a, b) == tagged_hash("smt-node", a + b)
    assert ref_root({}) == EMPTY and ref_root({a: b}) == leaf_hash(a, b)


def test_two_entries_sharing_a_prefix_hang_below_empty_siblings() -> None:
    # paths 0x00.. and 0x01..: 7 shared bits, so 7 inner nodes with an empty side above the split
    p, q = bytes(32), b"\x01" + bytes(31)
    v = h(9)
    expected = node_hash(leaf_hash(p, v), leaf_hash(q, v))
    for _ in range(7):
        expected = node_hash(expected, EMPTY)
    root, _ = build({p: v, q: v})
    assert root == expected == ref_root({p: v, q: v})


batches = st.lists(
    st.dictionaries(st.integers(0, 40).map(h), st.one_of(st.none(), st.integers(0, 3).map(h)), max_size=12),
    min_size=1, max_size=6)


@given(batches)
@example([{h(1): h(0)}, {h(1): None}])
@example([{h(i): h(0) for i in range(8)}, {h(i): None for i in range(7)}])
def test_batched_updates_equal_the_definition_at_every_version(seq: list[dict[bytes, bytes | None]]) -> None:
    store = VersionedNodes()
    root: Ref = EMPTY_REF
    model: dict[bytes, bytes] = {}
    for version, batch in enumerate(seq, start=1):
        root = apply(store, root, batch, version)
        for p, v in batch.items():
            if v is None:
                model.pop(p, None)
            else:
                model[p] = v
        assert root[0] == ref_root(model)
        for p in [h(i) for i in range(41)]:
            proof, _ = prove(store, root, p)
            assert verify(root[0], p, proof, "t") == model.get(p)


@given(st.dictionaries(st.integers(0, 60).map(h), st.integers(0, 3).map(h), max_size=30), st.randoms())
def test_the_root_does_not_depend_on_the_order_of_inserts_and_deletes(entries: dict[bytes, bytes], rnd: object) -> None:
    import random
    assert isinstance(rnd, random.Random)
    store = VersionedNodes()
    root: Ref = EMPTY_REF
    extra = {h(100 + i): h(7) for i in range(5)}
    order = list({**entries, **extra}.items())
    rnd.shuffle(order)
    for version, (p, v) in enumerate(order, start=1):
        root = apply(store, root, {p: v}, version)
    for version, p in enumerate(extra, start=len(order) + 1):
        root = apply(store, root, {p: None}, version)
    assert root[0] == build(entries)[0] == ref_root(entries)


def test_an_unchanged_tree_keeps_its_root_and_writes_nothing() -> None:
    store = VersionedNodes()
    root = apply(store, EMPTY_REF, {h(1): h(2), h(3): h(4)}, 1)
    out: dict[bytes, bytes] = {}
    assert update(store, root, [Change(h(1), h(2))], 2, out)[0] == root[0]
    assert update(store, root, [Change(h(99), None)], 2, out) == root
    assert out == {}


def test_deleting_down_to_one_entry_lifts_the_old_leaf() -> None:
    store = VersionedNodes()
    root = apply(store, EMPTY_REF, {h(1): h(2), h(3): h(4)}, 1)
    root = apply(store, root, {h(3): None}, 2)
    assert root == (leaf_hash(h(1), h(2)), 1)  # the leaf written at version 1, not a copy


def test_old_versions_stay_readable() -> None:
    store = VersionedNodes()
    r1 = apply(store, EMPTY_REF, {h(i): h(0) for i in range(10)}, 1)
    r2 = apply(store, r1, {h(i): h(1) for i in range(5)}, 2)
    assert verify(r1[0], h(0), prove(store, r1, h(0))[0], "t") == h(0)
    assert verify(r2[0], h(0), prove(store, r2, h(0))[0], "t") == h(1)


def test_a_missing_node_is_a_storage_error_not_a_wrong_root() -> None:
    from peerdb.core.errors import StorageError
    store = VersionedNodes()
    root = apply(store, EMPTY_REF, {h(i): h(0) for i in range(4)}, 1)
    with pytest.raises(StorageError, match="not stored"):
        update(store, (root[0], 7), [Change(h(9), h(9))], 8, {})


def test_inner_records_hold_children_and_their_versions() -> None:
    store = VersionedNodes()
    root = apply(store, EMPTY_REF, {h(1): h(0), h(2): h(0)}, 5)
    rec = store.records[node_key(5, root[0])]
    assert len(rec) == INNER_LEN and node_hash(rec[:32], rec[32:64]) == root[0]
    assert rec[64:72] in (bytes(8), (5).to_bytes(8, "big"))


# --- proofs --------------------------------------------------------------------------------------

def some_tree() -> tuple[MemoryNodes, bytes, dict[bytes, bytes]]:
    entries = {h(i): h(1000 + i) for i in range(50)}
    root, records = build(entries)
    nodes = MemoryNodes()
    nodes.add(records)
    return nodes, root, entries


def test_absence_is_proven_by_an_empty_subtree_or_another_leaf() -> None:
    nodes, root, entries = some_tree()
    kinds = set()
    for i in range(50, 400):
        proof, _ = prove(nodes, (root, 0), h(i))
        assert verify(root, h(i), proof, "t") is None
        kinds.add(proof.leaf is None)
    assert kinds == {True, False}


def test_a_proof_for_one_path_is_refused_for_another() -> None:
    nodes, root, entries = some_tree()
    proof, _ = prove(nodes, (root, 0), h(3))
    with pytest.raises(ProofError):
        verify(root, h(4), proof, "t")


def test_an_absence_proof_whose_leaf_is_off_the_path_is_refused() -> None:
    nodes, root, entries = some_tree()
    target = next(h(i) for i in range(50, 400) if prove(nodes, (root, 0), h(i))[0].leaf is not None)
    proof, _ = prove(nodes, (root, 0), target)
    other_leaf = prove(nodes, (root, 0), h(0))[0].leaf
    assert other_leaf is not None
    with pytest.raises(ProofError, match="leaf"):
        verify(root, target, Proof(proof.siblings, other_leaf), "t")


@given(st.integers(0, 120), st.data())
def test_every_change_to_a_proof_is_refused(index: int, data: st.DataObject) -> None:
    nodes, root, entries = some_tree()
    path = h(index)
    proof, _ = prove(nodes, (root, 0), path)
    truth = entries.get(path)
    parts: list[str] = [f"s{i}" for i in range(len(proof.siblings))]
    if proof.leaf is not None:
        parts += ["lp", "lv"]
    parts += ["drop", "add", "leaf"]
    which = data.draw(st.sampled_from(parts))
    flip = data.draw(st.integers(0, 255))
    sibs = list(proof.siblings)
    leaf = proof.leaf

    def flipped(b: bytes) -> bytes:
        return b[:flip // 8] + bytes([b[flip // 8] ^ (1 << (flip % 8))]) + b[flip // 8 + 1:]
    if which.startswith("s"):
        sibs[int(which[1:])] = flipped(sibs[int(which[1:])])
    elif which == "lp":
        assert leaf is not None
        leaf = (flipped(leaf[0]), leaf[1])
    elif which == "lv":
        assert leaf is not None
        leaf = (leaf[0], flipped(leaf[1]))
    elif which == "drop":
        if not sibs:
            sibs = [EMPTY]
        else:
            sibs.pop()
    elif which == "add":
        sibs.append(EMPTY)
    else:
        leaf = None if leaf is not None else (path, h(5))
    tampered = Proof(tuple(sibs), leaf)
    try:
        found = verify(root, path, tampered, "t")
    except ProofError:
        return
    # The only change that may still verify is one that proves the same thing the same way.
    assert tampered == proof and found == truth


def test_collect_keeps_what_kept_roots_reach() -> None:
    nodes = MemoryNodes()
    out: dict[bytes, bytes] = {}
    r1 = update(nodes, EMPTY_REF, [Change(h(i), h(0)) for i in sorted(range(20), key=h)], 1, out)
    nodes.add(out)
    out = {}
    r2 = update(nodes, r1, [Change(h(1), h(1))], 2, out)
    nodes.add(out)
    before = len(nodes)
    nodes.collect([r2[0]])
    assert len(nodes) < before
    assert verify(r2[0], h(3), prove(nodes, r2, h(3))[0], "t") == h(0)
