"""Compact sparse Merkle trees: authenticated maps from 32-byte paths to 32-byte values.

CONSENSUS-CRITICAL: the hashes below are what block headers commit to (docs/protocol.md §7.3).

The tree is the binary trie over the 256 bits of each path in which every subtree holding one
entry is replaced by that entry's leaf, and every empty subtree by :data:`EMPTY`:

    root(S, depth) = EMPTY                                if S is empty
                   = leaf(path, value)                    if S = {(path, value)}
                   = node(root(S0, depth+1), root(S1, depth+1))   otherwise,

``S0``/``S1`` the entries whose path has bit ``depth`` (most significant first) 0/1. The root is
a function of the set alone, not of the order of inserts and deletes ("history independent"):
two members that hold the same map hold the same root, and an auditor who replays one
namespace alone gets the root the members committed to. A proof of a path is the siblings
from the root down to where the path ends (a leaf or an empty subtree): ``log2(n)`` hashes on
average for ``n`` entries, at most 256.

Why this structure (rather than a Merkle search tree or a Merkle B-tree): it is the smallest
definition that is history independent (both others need care to be so, and a B-tree is not),
its absence proofs need no neighbouring keys, and its updates touch exactly the nodes on the
changed paths, ``O(changed entries × log n)``. No maintained Python library offers one over a
versioned node store, which is what the node needs (proofs at any height, side branches
without copying): so it is here, small, with the reference definition above in the tests.

Why one module of this size: the hashing, the node records, the update walk and the proof
walk all read the same record layout and the same bit order; a split would put one
consensus-critical definition in several files that must change together.

Storage. A node is a record addressed by ``be64(version) || hash``; ``version`` is the height of
the block that wrote it, so that one block's new nodes sit together in the store's key order
(one run of pages per block instead of one random page per node). Records:

* inner node: ``left_hash || right_hash || be64(left_version) || be64(right_version)`` (80 bytes);
* leaf: ``path || value`` (64 bytes), or ``path || value || be64(aux)`` (72 bytes) when the value
  is itself the root of a tree stored at version ``aux`` (a namespace's root in the state tree).

Versions are the store's business, not consensus: hashes never include them. In-memory
stores ignore them and address nodes by hash alone (:class:`MemoryNodes`).
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .codec import expect_bytes, expect_list, tagged_hash
from .errors import DecodeError, LimitError, StorageError, ValidationError
from .limits import HASH_LEN

EMPTY = tagged_hash("smt-empty", b"")
"""The root of an empty tree, and the hash of every empty subtree."""

PATH_BITS = 8 * HASH_LEN
"""Paths are SHA-256 digests; no proof is longer than this many siblings."""

INNER_LEN = 2 * HASH_LEN + 16
LEAF_LEN = 2 * HASH_LEN
LEAF_AUX_LEN = 2 * HASH_LEN + 8

_LEAF_PREFIX = b"\x08smt-leaf"
_NODE_PREFIX = b"\x08smt-node"
_sha256 = hashlib.sha256
_BE64 = struct.Struct(">Q")
_pack = _BE64.pack
_unpack = _BE64.unpack_from
_HALF = 1 << (PATH_BITS - 1)


def leaf_hash(path: bytes, value: bytes) -> bytes:
    """``H("smt-leaf", path || value)``."""
    return _sha256(_LEAF_PREFIX + path + value).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H("smt-node", left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def node_key(version: int, node: bytes) -> bytes:
    """Where the store keeps a node: the writing block's height first, for locality."""
    return _pack(version) + node


def bit(path: bytes, depth: int) -> int:
    """Bit ``depth`` of ``path``, most significant first."""
    return (path[depth >> 3] >> (7 - (depth & 7))) & 1


class NodeSource(Protocol):
    """Where a tree's nodes are read from: the store (by version and hash), or memory.

    A source may also offer ``tree_getter()``, returning the fastest callable that does what
    :meth:`tree_node` does (the store's: LMDB's own ``get``, without a Python frame per read);
    an update reads one record per level per written key, so it uses it when there is one."""

    def tree_node(self, key: bytes) -> bytes | None:
        """The record stored under :func:`node_key`, or None."""
        ...


def _getter(source: NodeSource) -> Callable[[bytes], bytes | None]:
    fast = getattr(source, "tree_getter", None)
    if fast is not None:
        got: Callable[[bytes], bytes | None] = fast()
        return got
    return source.tree_node


Ref = tuple[bytes, int]
"""A node as its parent refers to it: (hash, version)."""

EMPTY_REF: Ref = (EMPTY, 0)


class Change(NamedTuple):
    """Set ``path`` to ``value`` (None: delete it). ``aux`` is the version of the tree whose root
    ``value`` is, if it is one (stored in the leaf record, never hashed). A named tuple: a block
    makes one per written key, on the hot path."""

    path: bytes
    value: bytes | None
    aux: int | None = None


def missing(key: bytes) -> StorageError:
    return StorageError(f"state tree: node {key[8:].hex()[:16]} (version {_unpack(key)[0]}) is not stored; "
                        "the store is incomplete or the state root is not one it computed")


_Sub = tuple[bytes, bytes, bool | None]
"""A subtree during an update: (hash, be64 version, is a leaf: True / False / None unknown)."""
_NO_VERSION = bytes(8)
_EMPTY_SUB: _Sub = (EMPTY, _NO_VERSION, None)


class _Updater:
    """One batch update: the changes sorted by path, the new records gathered in ``out``.

    Versions travel as their 8 stored bytes (a record holds them, a key starts with them), so
    the hot loop neither packs nor unpacks integers."""

    def __init__(self, source: NodeSource, changes: Sequence[Change], version: int,
                 out: MutableMapping[bytes, bytes]) -> None:
        self.source = source
        self.get = _getter(source)
        self.changes = changes
        self.ints = [int.from_bytes(c.path, "big") for c in changes]
        self.vkey = _pack(version)
        self.out = out

    def load(self, h: bytes, vb: bytes) -> bytes:
        key = vb + h
        rec = self.out.get(key) if vb == self.vkey else None
        if rec is None:
            rec = self.get(key)
            if rec is None:
                raise missing(key)
        return rec

    def inner(self, lh: bytes, lvb: bytes, rh: bytes, rvb: bytes) -> _Sub:
        h = _sha256(_NODE_PREFIX + lh + rh).digest()
        self.out[self.vkey + h] = lh + rh + lvb + rvb
        return h, self.vkey, False

    def is_leaf(self, sub: _Sub) -> bool:
        if sub[2] is not None:
            return sub[2]
        return len(self.load(sub[0], sub[1])) != INNER_LEN

    def update(self, h: bytes, vb: bytes, depth: int, lo: int, hi: int) -> _Sub:
        """The subtree at ``depth`` (now ``(h, vb)``) with changes [lo, hi) applied."""
        if hi - lo == 1:
            return self.single(h, vb, depth, lo)
        if h == EMPTY:
            changes = self.changes
            return self.build(depth, [(self.ints[i], changes[i], None) for i in range(lo, hi)
                                      if changes[i].value is not None])
        rec = self.load(h, vb)
        if len(rec) != INNER_LEN:
            return self.update_leaf(h, vb, rec, depth, lo, hi)
        ints = self.ints
        shift = PATH_BITS - depth
        mid = bisect.bisect_left(ints, ((ints[lo] >> shift) << shift) | (_HALF >> depth), lo, hi)
        lh = rec[:32]
        rh = rec[32:64]
        lvb = rec[64:72]
        rvb = rec[72:]
        left: _Sub = self.update(lh, lvb, depth + 1, lo, mid) if mid > lo else (lh, lvb, None)
        right: _Sub = self.update(rh, rvb, depth + 1, mid, hi) if mid < hi else (rh, rvb, None)
        nlh = left[0]
        nrh = right[0]
        if nlh == lh and nrh == rh and left[1] == lvb and right[1] == rvb:
            return h, vb, False
        # Canonical form: an empty side next to a lone leaf lifts the leaf.
        if nlh == EMPTY:
            if nrh == EMPTY:
                return _EMPTY_SUB
            if self.is_leaf(right):
                return right
        elif nrh == EMPTY and self.is_leaf(left):
            return left
        return self.inner(nlh, left[1], nrh, right[1])

    def single(self, h: bytes, vb: bytes, depth: int, i: int) -> _Sub:
        """One change below ``depth``: the common case under the first few levels of a batch.
        The same result as :meth:`update`, by a loop down the change's path to where it ends
        (a leaf or an empty subtree) and back up, instead of one recursive call per level."""
        path = self.changes[i].path
        vkey = self.vkey
        out = self.out
        get = self.get
        start = (h, vb)
        below: list[tuple[bytes, bytes, int]] = []  # per level: sibling hash, its version, our bit
        rec = b""
        while h != EMPTY:
            key = vb + h
            found = out.get(key) if vb == vkey else None
            if found is None:
                found = get(key)
                if found is None:
                    raise missing(key)
            rec = found
            if len(rec) != INNER_LEN:
                break
            if (path[depth >> 3] >> (7 - (depth & 7))) & 1:
                below.append((rec[:32], rec[64:72], 1))
                h, vb = rec[32:64], rec[72:]
            else:
                below.append((rec[32:64], rec[72:], 0))
                h, vb = rec[:32], rec[64:72]
            depth += 1
        change = self.changes[i]
        if h == EMPTY:
            sub = self.build(depth, [] if change.value is None else [(self.ints[i], change, None)])
        elif change.value is not None and change.aux is None and len(rec) == LEAF_LEN and rec[:HASH_LEN] != path:
            sub = self.insert_beside(rec, h, vb, depth, i)
        else:
            sub = self.update_leaf(h, vb, rec, depth, i, i + 1)
        if sub[0] == h and sub[1] == vb:
            return start[0], start[1], None  # nothing changed below, so nothing above
        nh, nvb, is_leaf = sub
        for sibling, svb, b in reversed(below):
            if sibling == EMPTY and (nh == EMPTY or is_leaf):
                continue  # canonical form: a lone leaf (or nothing) next to an empty side rises
            if nh == EMPTY and len(self.load(sibling, svb)) != INNER_LEN:
                nh, nvb, is_leaf = sibling, svb, True  # the sibling is now a lone leaf: it rises
                continue
            if b:
                nh, rec = _sha256(_NODE_PREFIX + sibling + nh).digest(), sibling + nh + svb + nvb
            else:
                nh, rec = _sha256(_NODE_PREFIX + nh + sibling).digest(), nh + sibling + nvb + svb
            out[vkey + nh] = rec
            nvb, is_leaf = vkey, False
        return nh, nvb, is_leaf

    def insert_beside(self, rec: bytes, h: bytes, vb: bytes, depth: int, i: int) -> _Sub:
        """A new key whose path meets another key's leaf at ``depth``: both leaves hang below
        the inner node at the first bit where their paths differ, with an empty sibling at each
        level between (what :meth:`build` makes of the two, without sorting or recursing)."""
        change = self.changes[i]
        assert change.value is not None
        mine = self.ints[i]
        split = PATH_BITS - (mine ^ int.from_bytes(rec[:HASH_LEN], "big")).bit_length()
        vkey = self.vkey
        new = _sha256(_LEAF_PREFIX + change.path + change.value).digest()
        self.out[vkey + new] = change.path + change.value
        if mine & (_HALF >> split):
            node, rec2 = _sha256(_NODE_PREFIX + h + new).digest(), h + new + vb + vkey
        else:
            node, rec2 = _sha256(_NODE_PREFIX + new + h).digest(), new + h + vkey + vb
        self.out[vkey + node] = rec2
        for d in range(split - 1, depth - 1, -1):
            if mine & (_HALF >> d):
                node, rec2 = _sha256(_NODE_PREFIX + EMPTY + node).digest(), EMPTY + node + _NO_VERSION + vkey
            else:
                node, rec2 = _sha256(_NODE_PREFIX + node + EMPTY).digest(), node + EMPTY + vkey + _NO_VERSION
            self.out[vkey + node] = rec2
        return node, vkey, False

    def update_leaf(self, h: bytes, vb: bytes, rec: bytes, depth: int, lo: int, hi: int) -> _Sub:
        """Changes reaching a leaf: the subtree becomes whatever entries remain below it."""
        mine = int.from_bytes(rec[:HASH_LEN], "big")
        entries: list[tuple[int, Change | None, _Sub | None]] = []
        kept = True
        for i in range(lo, hi):
            change = self.changes[i]
            if self.ints[i] == mine:
                kept = False
                if change.value == rec[HASH_LEN:LEAF_LEN] and \
                        (change.aux is None) == (len(rec) == LEAF_LEN) and \
                        (change.aux is None or _pack(change.aux) == rec[LEAF_LEN:]):
                    entries.append((mine, None, (h, vb, True)))  # rewritten as it was
                    continue
            if change.value is not None:
                entries.append((self.ints[i], change, None))
        if kept:
            entries.append((mine, None, (h, vb, True)))
            entries.sort(key=lambda e: e[0])
        if len(entries) == 1 and entries[0][2] is not None:
            return entries[0][2]
        return self.build(depth, entries)

    def build(self, depth: int, entries: list[tuple[int, Change | None, _Sub | None]]) -> _Sub:
        """A fresh subtree over ``entries`` (sorted; each a change to write or an existing leaf)."""
        if not entries:
            return _EMPTY_SUB
        if len(entries) == 1:
            _, change, existing = entries[0]
            if existing is not None:
                return existing
            assert change is not None and change.value is not None
            h = _sha256(_LEAF_PREFIX + change.path + change.value).digest()
            rec = change.path + change.value
            if change.aux is not None:
                rec += _pack(change.aux)
            self.out[self.vkey + h] = rec
            return h, self.vkey, True
        if depth >= PATH_BITS:  # two entries with one path: a SHA-256 collision, or a caller bug
            raise StorageError("state tree: two entries with the same path")
        bitmask = _HALF >> depth
        mid = 0
        while mid < len(entries) and not entries[mid][0] & bitmask:
            mid += 1
        left = self.build(depth + 1, entries[:mid]) if mid else _EMPTY_SUB
        right = self.build(depth + 1, entries[mid:]) if mid < len(entries) else _EMPTY_SUB
        return self.inner(left[0], left[1], right[0], right[1])


def update(source: NodeSource, root: Ref, changes: Sequence[Change], version: int,
           out: MutableMapping[bytes, bytes]) -> Ref:
    """Apply ``changes`` (sorted by path, one per path) to the tree at ``root``; new records go
    to ``out`` under :func:`node_key` (``version``). Returns the new root as a reference: the
    same as ``root`` when nothing changed, an older leaf when a deletion left one entry."""
    if not changes:
        return root
    for a, b in zip(changes, changes[1:]):
        if not a.path < b.path:
            raise ValueError("smt.update: changes must be sorted by path, one per path")
    updater = _Updater(source, changes, version, out)
    h, vb, _ = updater.update(root[0], _pack(root[1]), 0, 0, len(changes))
    return h, _unpack(vb)[0]


def load_record(source: NodeSource, ref: Ref, pending: Mapping[bytes, bytes] | None = None) -> bytes:
    key = node_key(ref[1], ref[0])
    rec = pending.get(key) if pending is not None else None
    if rec is None:
        rec = source.tree_node(key)
    if rec is None:
        raise missing(key)
    return rec


# --- proofs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proof:
    """Where a path ends in a tree: the siblings from the root down, and the leaf found there
    (its path and value), or None for an empty subtree. Proves the path's value (the leaf's
    path is the path) or its absence (an empty subtree, or a leaf with another path: the only
    entry under the prefix they share)."""

    siblings: tuple[bytes, ...]
    leaf: tuple[bytes, bytes] | None

    def to_cbor(self) -> list[Any]:
        return [list(self.siblings), None if self.leaf is None else list(self.leaf)]

    @classmethod
    def from_cbor(cls, raw: Any, where: str) -> "Proof":
        items = expect_list(raw, where, 2)
        sibs = expect_list(items[0], f"{where}.siblings")
        if len(sibs) > PATH_BITS:
            raise LimitError(f"{where}.siblings: {len(sibs)} siblings, more than {PATH_BITS}")
        siblings = tuple(expect_bytes(s, f"{where}.siblings[{i}]", HASH_LEN) for i, s in enumerate(sibs))
        leaf = None
        if items[1] is not None:
            pair = expect_list(items[1], f"{where}.leaf", 2)
            leaf = (expect_bytes(pair[0], f"{where}.leaf.path", HASH_LEN),
                    expect_bytes(pair[1], f"{where}.leaf.value", HASH_LEN))
        return cls(siblings, leaf)


def prove(source: NodeSource, root: Ref, path: bytes) -> tuple[Proof, int | None]:
    """The proof of ``path`` in the tree at ``root``, and the found leaf's ``aux`` (if any)."""
    h, v = root
    siblings: list[bytes] = []
    depth = 0
    while h != EMPTY:
        rec = load_record(source, (h, v))
        if len(rec) != INNER_LEN:
            aux = _unpack(rec, LEAF_LEN)[0] if len(rec) == LEAF_AUX_LEN else None
            return Proof(tuple(siblings), (rec[:HASH_LEN], rec[HASH_LEN:LEAF_LEN])), aux
        if bit(path, depth):
            siblings.append(rec[:32])
            h, v = rec[32:64], _unpack(rec, 72)[0]
        else:
            siblings.append(rec[32:64])
            h, v = rec[:32], _unpack(rec, 64)[0]
        depth += 1
    return Proof(tuple(siblings), None), None


class ProofError(ValidationError):
    """A proof that does not hold; the message names the item at fault."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"{item}: {reason}")
        self.item = item
        self.reason = reason


def root_from_proof(path: bytes, proof: Proof, where: str) -> bytes:
    """The root a proof leads to (checking that its leaf lies on ``path``'s way)."""
    depth = len(proof.siblings)
    if depth > PATH_BITS:
        raise ProofError(f"{where}.siblings", f"{depth} siblings, more than {PATH_BITS}")
    if proof.leaf is None:
        acc = EMPTY
    else:
        leaf_path, value = proof.leaf
        for d in range(depth):
            if bit(leaf_path, d) != bit(path, d):
                raise ProofError(f"{where}.leaf.path", f"does not share the first {depth} bits of the path "
                                 f"it is offered for (differs at bit {d})")
        acc = leaf_hash(leaf_path, value)
    for d in range(depth - 1, -1, -1):
        sibling = proof.siblings[d]
        acc = node_hash(sibling, acc) if bit(path, d) else node_hash(acc, sibling)
    return acc


def verify(root: bytes, path: bytes, proof: Proof, where: str) -> bytes | None:
    """The value of ``path`` under ``root`` (None: proven absent); :class:`ProofError` naming
    ``where`` if the proof does not lead to ``root``."""
    if root_from_proof(path, proof, where) != root:
        raise ProofError(f"{where}.siblings", "the path does not lead to the committed root")
    if proof.leaf is not None and proof.leaf[0] == path:
        return proof.leaf[1]
    return None


# --- in memory ----------------------------------------------------------------------------------

class MemoryNodes:
    """Nodes in a dict by hash (versions ignored): for tests, transient trees (a block's
    namespace map) and the auditor's replay, with :meth:`collect` to drop what no kept root
    reaches."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def tree_node(self, key: bytes) -> bytes | None:
        return self.nodes.get(key[8:])

    def tree_getter(self) -> Callable[[bytes], bytes | None]:
        """:meth:`tree_node` in one frame, for one update (:meth:`collect` replaces the dict)."""
        get = self.nodes.get
        return lambda key: get(key[8:])

    def add(self, records: Mapping[bytes, bytes]) -> None:
        nodes = self.nodes
        for key, rec in records.items():
            nodes[key[8:]] = rec

    def __len__(self) -> int:
        return len(self.nodes)

    def collect(self, roots: Iterable[bytes]) -> None:
        """Keep only the nodes reachable from ``roots`` (namespace roots under leaves with an
        ``aux`` included): a mark and sweep, linear in what is kept."""
        keep: dict[bytes, bytes] = {}
        old = self.nodes
        stack = [r for r in roots if r != EMPTY]
        while stack:
            h = stack.pop()
            if h in keep:
                continue
            rec = old.get(h)
            if rec is None:
                continue
            keep[h] = rec
            if len(rec) == INNER_LEN:
                for child in (rec[:32], rec[32:64]):
                    if child != EMPTY:
                        stack.append(child)
            elif len(rec) == LEAF_AUX_LEN:
                inner = rec[HASH_LEN:LEAF_LEN]
                if inner != EMPTY:
                    stack.append(inner)
        self.nodes = keep


def build(entries: Mapping[bytes, bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """A tree built from scratch over ``path -> value`` (in memory): its root and records."""
    out: dict[bytes, bytes] = {}
    changes = [Change(p, v) for p, v in sorted(entries.items())]
    h, _ = update(MemoryNodes(), EMPTY_REF, changes, 0, out)
    return h, out


def check_path(path: Any, where: str) -> bytes:
    if type(path) is not bytes or len(path) != HASH_LEN:
        raise DecodeError(f"{where}: expected a {HASH_LEN}-byte path")
    return path
