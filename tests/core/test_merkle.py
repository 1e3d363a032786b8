"""Merkle roots and audit paths (RFC 6962 shape: tagged leaves and nodes, odd node promoted)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.codec import tagged_hash
from peerdb.core.errors import ValidationError
from peerdb.core.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    merkle_path,
    merkle_root,
    node_hash,
    root_from_path,
    verify_path,
)

from tests.helpers.core import assert_names

leaf_lists = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


def rfc6962_root(items: Sequence[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written the recursive way: split at the largest power of 2 < n."""
    if not items:
        return EMPTY_ROOT
    if len(items) == 1:
        return leaf_hash(items[0])
    k = 1
    while k * 2 < len(items):
        k *= 2
    return node_hash(rfc6962_root(items[:k]), rfc6962_root(items[k:]))


def h(i: int) -> bytes:
    return hashlib.sha256(bytes([i])).digest()


def test_small_trees_by_hand() -> None:
    a, b, c = h(1), h(2), h(3)
    assert merkle_root([]) == EMPTY_ROOT == tagged_hash("merkle-empty", b"")
    assert merkle_root([a]) == leaf_hash(a) == tagged_hash("merkle-leaf", a)
    assert merkle_root([a, b]) == node_hash(leaf_hash(a), leaf_hash(b))
    assert node_hash(a, b) == tagged_hash("merkle-node", a + b)
    # the odd leaf is promoted, not paired with itself
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))


def test_duplicating_the_last_leaf_changes_the_root() -> None:
    # Bitcoin's tree gives [a, b, c] and [a, b, c, c] one root (CVE-2012-2459); this one must not
    a, b, c = h(1), h(2), h(3)
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])
    assert merkle_root([a]) != merkle_root([a, a])


def test_a_leaf_cannot_pose_as_an_inner_node() -> None:
    a, b = h(1), h(2)
    assert merkle_root([leaf_hash(a) + leaf_hash(b)]) != merkle_root([a, b])


def test_path_index_out_of_range() -> None:
    with pytest.raises(IndexError, match="leaf index 3 outside 0..2"):
        merkle_path([h(1), h(2), h(3)], 3)
    with pytest.raises(IndexError):
        merkle_path([h(1)], -1)
    with pytest.raises(IndexError):
        merkle_path([], 0)


def test_single_leaf_path_is_empty() -> None:
    assert merkle_path([h(1)], 0) == ()
    assert verify_path(h(1), (), merkle_root([h(1)]))


def test_path_with_a_short_sibling_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        root_from_path(h(1), ((False, b"short"),))
    assert_names(info.value, "merkle path", "32 bytes")


@given(leaf_lists)
def test_property_root_matches_rfc6962(items: list[bytes]) -> None:
    assert merkle_root(items) == rfc6962_root(items)


@given(leaf_lists)
def test_property_every_leaf_has_a_verifying_path(items: list[bytes]) -> None:
    root = merkle_root(items)
    for i, item in enumerate(items):
        path = merkle_path(items, i)
        assert root_from_path(item, path) == root
        assert verify_path(item, path, root)


@given(leaf_lists, st.data())
def test_property_wrong_leaf_or_tampered_path_is_rejected(items: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(items)
    i = data.draw(st.integers(0, len(items) - 1))
    item, path = items[i], merkle_path(items, i)
    wrong_leaf = data.draw(st.binary(min_size=32, max_size=32).filter(lambda x: x != item))
    assert not verify_path(wrong_leaf, path, root)
    assert not verify_path(item, path, bytes(32))
    if path:
        step = data.draw(st.integers(0, len(path) - 1))
        is_left, sibling = path[step]
        flipped = path[:step] + ((not is_left, sibling),) + path[step + 1:]
        if sibling != root_from_path(item, path[:step]):  # swapping equal halves changes nothing
            assert not verify_path(item, flipped, root)
        bit = data.draw(st.integers(0, 255))
        tampered_sibling = bytearray(sibling)
        tampered_sibling[bit // 8] ^= 1 << (bit % 8)
        tampered = path[:step] + ((is_left, bytes(tampered_sibling)),) + path[step + 1:]
        assert not verify_path(item, tampered, root)
        assert not verify_path(item, path[:-1], root)
    assert not verify_path(item, path + ((False, item),), root)
    j = data.draw(st.integers(0, len(items) - 1))
    if items[j] != item:
        assert not verify_path(items[j], path, root)
