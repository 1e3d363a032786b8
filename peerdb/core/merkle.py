"""Merkle trees over 32-byte hashes (transaction roots, evidence roots, anchor batches).

The shape follows RFC 6962 (Certificate Transparency) rather than Bitcoin: leaves and inner
nodes are hashed with different tags, and an odd node is promoted instead of paired with
itself. Bitcoin's duplication rule lets two different lists share a root (CVE-2012-2459); this
shape does not, so a root commits to exactly one list.
"""

from __future__ import annotations

from collections.abc import Sequence

from .codec import tagged_hash
from .errors import ValidationError

EMPTY_ROOT = tagged_hash("merkle-empty", b"")


def leaf_hash(item: bytes) -> bytes:
    return tagged_hash("merkle-leaf", item)


def node_hash(left: bytes, right: bytes) -> bytes:
    return tagged_hash("merkle-node", left + right)


def merkle_root(items: Sequence[bytes]) -> bytes:
    """Root of the tree whose leaves are ``items`` in order."""
    if not items:
        return EMPTY_ROOT
    level = [leaf_hash(item) for item in items]
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


Path = tuple[tuple[bool, bytes], ...]
"""Steps from a leaf to the root: (sibling_is_left, sibling_hash) per level that has a sibling."""


def merkle_path(items: Sequence[bytes], index: int) -> Path:
    """The audit path proving ``items[index]`` is under :func:`merkle_root` of ``items``."""
    if not 0 <= index < len(items):
        raise IndexError(f"leaf index {index} outside 0..{len(items) - 1}")
    level = [leaf_hash(item) for item in items]
    steps: list[tuple[bool, bytes]] = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            steps.append((sibling < index, level[sibling]))
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        index //= 2
    return tuple(steps)


def root_from_path(item: bytes, path: Path) -> bytes:
    acc = leaf_hash(item)
    for sibling_is_left, sibling in path:
        if len(sibling) != 32:
            raise ValidationError("merkle path: sibling is not 32 bytes")
        acc = node_hash(sibling, acc) if sibling_is_left else node_hash(acc, sibling)
    return acc


def verify_path(item: bytes, path: Path, root: bytes) -> bool:
    return root_from_path(item, path) == root
