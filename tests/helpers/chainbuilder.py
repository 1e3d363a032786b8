"""Build consortia, transactions and valid signed blocks for tests, without a node.

    cb = ChainBuilder(n_members=4)              # members m0..m3, keys from fixed seeds
    tx = cb.tx("m1", [cb.put("books", "k", b"v")])
    b1 = cb.block(cb.genesis, txs=[tx])         # right proposer, roots and state_root
    sigs = cb.sign_all(b1)                      # every member's BlockSignature
    cb.state_at(b1).get("books", "k")           # the oracle: replay from genesis on MemoryState

The consortium is :func:`tests.helpers.consortium.seeded_consortium` with members m0, m1, ...
Everything is deterministic for a given ``seed`` (keys, times, nonces), so two processes building
the same sequence get byte-identical blocks. Blocks are built on any known parent, so forks are
one call away; the builder remembers every block it built or was given (:meth:`adopt`) and can
replay any of them from genesis with :mod:`peerdb.core.state`, which is what store and node
tests compare against.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from peerdb.core.consortium import NamespaceRule, Params
from peerdb.core.limits import MAX_TX_TTL_MS
from peerdb.core.model import (
    OP_DELETE,
    OP_PUT,
    Block,
    BlockSignature,
    Evidence,
    Header,
    Op,
    Tx,
    body_header,
)
from peerdb.core.state import Effects, MemoryState, StateReader, Write, apply_txs, state_effects
from peerdb.core.validate import proposer_for

from tests.helpers.consortium import GENESIS_MS, SEED, seeded_consortium

BLOCK_SPACING_MS = 1000
"""Default time between a block and its parent (plus the turn timeouts of skipped rounds)."""
DEFAULT_PORT_BASE = 47100
"""Placeholder member addresses 127.0.0.1:47100, :47101, ...; tests that open sockets pass
``addresses``."""
STATE_CACHE = 64
"""Replayed states kept, newest first; older ones are replayed again from a cached ancestor."""

OpSpec = Op | tuple[str, str, bytes | None]
BlockRef = Block | Header | bytes


def _trusted(_tx: Tx) -> bool:
    return True


def copy_state(state: MemoryState) -> MemoryState:
    """A copy of the values and seen ids; the (immutable) state tree records are shared."""
    out = MemoryState(state.nodes)
    out.values = dict(state.values)
    out.seen = set(state.seen)
    return out


class ChainBuilder:
    def __init__(self, n_members: int = 4, *, seed: bytes = SEED, name: str = "testnet",
                 params: Params | None = None, namespaces: Sequence[NamespaceRule] = (),
                 open_namespaces: bool = True, genesis_time_ms: int = GENESIS_MS,
                 addresses: Mapping[str, str] | None = None) -> None:
        self.params = params if params is not None else Params(tx_ttl_ms=MAX_TX_TTL_MS)
        seeded = seeded_consortium(tuple(f"m{i}" for i in range(n_members)), seed=seed, name=name,
                                   genesis_time_ms=genesis_time_ms, params=self.params,
                                   namespaces=namespaces, open_namespaces=open_namespaces,
                                   addresses=addresses, port_base=DEFAULT_PORT_BASE)
        self.consortium = seeded.consortium
        self.members: tuple[str, ...] = seeded.names
        self.keys = seeded.keys
        self.client_keys = seeded.client_keys
        self.cid = seeded.cid
        self.genesis = Block(seeded.genesis, ())
        self.blocks: dict[bytes, Block] = {self.genesis.hash: self.genesis}
        self._effects: dict[bytes, Effects] = {self.genesis.hash: Effects((), (), self.genesis.header.state_root)}
        self._states: OrderedDict[bytes, MemoryState] = OrderedDict({self.genesis.hash: MemoryState()})
        self._nonces = itertools.count(1)

    # --- transactions ----------------------------------------------------------------------

    @staticmethod
    def put(namespace: str, key: str, value: bytes) -> Op:
        return Op(OP_PUT, namespace, key, value)

    @staticmethod
    def delete(namespace: str, key: str) -> Op:
        return Op(OP_DELETE, namespace, key)

    def tx(self, member: str, ops: Iterable[OpSpec], *, nonce: int | None = None,
           expires_ms: int | None = None, use_member_key: bool = False) -> Tx:
        """A transaction signed by ``member``'s client key (or its member key). Ops may be
        :class:`Op` or (namespace, key, value-or-None) tuples. Default expiry: as late as the
        consortium's tx_ttl_ms allows for blocks from genesis on."""
        op_list = [o if isinstance(o, Op) else (self.put(o[0], o[1], o[2]) if o[2] is not None
                                                else self.delete(o[0], o[1])) for o in ops]
        key = self.keys[member] if use_member_key else self.client_keys[member]
        return Tx.create(key, self.cid, member, next(self._nonces) if nonce is None else nonce,
                         self.consortium.genesis_time_ms + self.params.tx_ttl_ms if expires_ms is None
                         else expires_ms, op_list)

    # --- blocks ----------------------------------------------------------------------------

    def _hash(self, ref: BlockRef) -> bytes:
        return ref if isinstance(ref, bytes) else ref.hash

    def header(self, ref: BlockRef) -> Header:
        return self.blocks[self._hash(ref)].header

    def block(self, parent: BlockRef, txs: Sequence[Tx] = (), *, round: int = 0, time_ms: int | None = None,
              evidence: Sequence[Evidence] = (), proposer: str | None = None, check: bool = True,
              parent_state: StateReader | None = None) -> Block:
        """A block on ``parent`` with the right proposer for (height, round), roots and state
        root. ``check=False`` skips the state machine's checks (to build invalid blocks on
        purpose; the state root is then computed from the writes as given). ``parent_state``:
        the parent's state (its state tree) when the builder does not know the parent's
        ancestry (a block read back from a store); by default it is replayed."""
        ph = self.header(parent)
        height = ph.height + 1
        if time_ms is None:
            time_ms = ph.time_ms + round * self.params.turn_timeout_ms + BLOCK_SPACING_MS
        if check:
            effects = apply_txs(parent_state or self.state_at(ph.hash), txs, self.consortium, self.cid, time_ms,
                                ph.state_root, signature_ok=_trusted, height=height)
        else:
            writes: list[Write] = [(op.namespace, op.key, op.value if op.kind == OP_PUT else None)
                                   for tx in txs for op in tx.ops]
            effects = state_effects(parent_state or self.state_at(ph.hash), ph.state_root, writes,
                                    [tx.txid for tx in txs], height)
        header = body_header(height, round, ph.hash, proposer or proposer_for(self.members, height, round), time_ms,
                             txs, effects.state_root, evidence)
        block = Block(header, tuple(txs), tuple(evidence))
        self.blocks[block.hash] = block
        self._effects[block.hash] = effects
        return block

    def chain(self, n: int, parent: BlockRef | None = None, txs_per_block: int = 0,
              member: str | None = None) -> list[Block]:
        """``n`` blocks in a row on ``parent`` (default genesis), each with ``txs_per_block``
        transactions putting unique keys in namespace ``data``."""
        out = []
        tip: BlockRef = parent if parent is not None else self.genesis
        for _ in range(n):
            txs = [self.tx(member or self.members[0], [("data", f"k{next(self._nonces)}", b"v")])
                   for _ in range(txs_per_block)]
            tip = self.block(tip, txs)
            out.append(tip)
        return out

    def adopt(self, block: Block) -> None:
        """Remember a block built elsewhere (its parent must be known); computes its effects."""
        if block.hash in self.blocks:
            return
        ph = self.header(block.header.prev)
        self.blocks[block.hash] = block
        self._effects[block.hash] = apply_txs(self.state_at(ph.hash), block.txs, self.consortium, self.cid,
                                              block.header.time_ms, ph.state_root, signature_ok=_trusted,
                                              height=block.height)

    # --- signatures and evidence -----------------------------------------------------------

    def sign(self, block: BlockRef, member: str) -> BlockSignature:
        return BlockSignature.create(self.keys[member], self.cid, member, self._hash(block))

    def sign_all(self, block: BlockRef, members: Iterable[str] | None = None) -> list[BlockSignature]:
        return [self.sign(block, m) for m in (self.members if members is None else members)]

    def double_sign(self, member: str, parent: BlockRef) -> tuple[Block, Block, Evidence]:
        """Two different blocks on ``parent`` and evidence that ``member`` signed both."""
        a = self.block(parent)
        b = self.block(parent, time_ms=a.header.time_ms + 1)
        ev = Evidence.from_signatures(member, a.header, self.sign(a, member).signature,
                                      b.header, self.sign(b, member).signature)
        return a, b, ev

    # --- the oracle ------------------------------------------------------------------------

    def effects(self, block: BlockRef) -> Effects:
        return self._effects[self._hash(block)]

    def chain_to(self, tip: BlockRef) -> list[Block]:
        """Genesis .. tip, in height order."""
        out = []
        h = self._hash(tip)
        while True:
            block = self.blocks[h]
            out.append(block)
            if block.height == 0:
                break
            h = block.header.prev
        out.reverse()
        return out

    def state_at(self, ref: BlockRef) -> MemoryState:
        """The state after block ``ref``, replayed from genesis (or from a cached ancestor).
        Returns the cached object: copy it (:func:`copy_state`) before changing it."""
        h = self._hash(ref)
        cached = self._states.get(h)
        if cached is not None:
            self._states.move_to_end(h)
            return cached
        path = []
        while h not in self._states:
            path.append(h)
            h = self.blocks[h].header.prev
        state = copy_state(self._states[h])
        for bh in reversed(path):
            state.apply(self._effects[bh])
        self._states[path[0]] = state
        while len(self._states) > STATE_CACHE:
            self._states.popitem(last=False)
        if self.genesis.hash not in self._states:
            self._states[self.genesis.hash] = MemoryState()
        return state

    def history_of(self, tip: BlockRef, namespace: str, key: str) -> list[tuple[int, bytes, bytes | None]]:
        """Versions of a key along genesis..tip: (height, block hash, final value in that block)."""
        out = []
        for block in self.chain_to(tip):
            last: tuple[bool, bytes | None] = (False, None)
            for ns, k, value in self._effects[block.hash].writes:
                if ns == namespace and k == key:
                    last = (True, value)
            if last[0]:
                out.append((block.height, block.hash, last[1]))
        return out
