"""Four engines joined by a synchronous, in-process network: messages go through the wire
encoding, time is passed in, nothing runs in the background.

    net = Net(tmp_path)
    net.step(50)                      # time passes; whoever's turn it is proposes; all delivered
    net.cut.add("firm-d")             # a partition: firm-d neither sends nor receives
    block, sig = net.craft("firm-b", txs, parent=header, round_=1)   # any proposer, any parent
    net.restart("firm-c")             # close its store and engine, open them again

Engine-level protocol tests drive it step by step, so that they can inject exactly the message
they are about; the randomized fork test drives it through random interleavings.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from peerdb.core.consortium import Params
from peerdb.core.governance import propose_op, vote_op
from peerdb.core.keys import SigningKey
from peerdb.core.membership import ConsortiumState
from peerdb.core.model import OP_PUT, Block, BlockSignature, Header, Op, Tx, body_header
from peerdb.core.proposals import Change, Proposal, Vote
from peerdb.core.state import apply_txs
from peerdb.node.engine import Engine
from peerdb.node.messages import Message, StatusMsg, from_wire, to_wire
from peerdb.store import Store

from tests.helpers.consortium import MEMBER_NAMES, seeded_consortium

NAMES = MEMBER_NAMES
PARAMS = Params(heartbeat_ms=200, turn_timeout_ms=1000, clock_skew_ms=1000)


class Net:
    def __init__(self, tmp_path: Path, mempool_max: int = 1000, params: Params = PARAMS,
                 extra_keys: Mapping[str, Iterable[SigningKey]] | None = None,
                 idle_block_ms: int | None = None) -> None:
        seeded = seeded_consortium(NAMES, name="test", genesis_time_ms=0, params=params)
        self.keys = seeded.keys
        self.keyrings: dict[str, list[SigningKey]] = {
            n: [self.keys[n], *((extra_keys or {}).get(n, ()))] for n in NAMES}
        """Every member key each engine holds (the first is the genesis key)."""
        self.clients = seeded.client_keys
        self.consortium = seeded.consortium
        self.cid = seeded.cid
        self.now = 1000
        self.mempool_max = mempool_max
        self.idle_block_ms = idle_block_ms
        self.paths = {n: tmp_path / n for n in NAMES}
        self.stores = {n: Store.open(self.paths[n], self.consortium, n, sync=False) for n in NAMES}
        self.engines = {n: self._engine(n) for n in NAMES}
        self.cut: set[str] = set()
        self.nonce = itertools.count(1)

    def _engine(self, name: str) -> Engine:
        keys = self.keyrings[name]
        return Engine(self.consortium, name, keys[0] if len(keys) == 1 else keys, self.stores[name], self.now,
                      mempool_max=self.mempool_max, idle_block_ms=self.idle_block_ms)

    def close(self) -> None:
        for e in self.engines.values():
            e.verifier.close()
        for s in self.stores.values():
            s.close()

    def restart(self, name: str) -> Engine:
        """Stop ``name``'s engine as a crash would (peers' signatures held in memory are lost)
        and start it again from its store."""
        self.engines[name].verifier.close()
        self.stores[name].close()
        self.stores[name] = Store.open(self.paths[name], self.consortium, name, sync=False)
        self.engines[name] = self._engine(name)
        return self.engines[name]

    def deliver(self) -> None:
        """Deliver every queued message (through the wire encoding) until nothing moves."""
        for _ in range(1000):
            moved = False
            for sender, engine in self.engines.items():
                for out in engine.take_outbox():
                    moved = True
                    if sender in self.cut:
                        continue
                    targets = [out.to] if out.to else [n for n in NAMES if n != sender]
                    for target in targets:
                        if target in self.cut:
                            continue
                        msg = from_wire(to_wire(out.msg))
                        self.dispatch(target, sender, msg)
            if not moved:
                return
        raise AssertionError("messages never settled")

    def dispatch(self, target: str, sender: str, msg: Message) -> None:
        self.engines[target].handle(sender, msg, self.now)

    def step(self, ms: int = 10) -> None:
        """Advance time; let whoever's turn it is propose; deliver everything."""
        self.now += ms
        for name, engine in self.engines.items():
            if name not in self.cut:
                engine.maybe_propose(self.now)
        self.deliver()

    def exchange_status(self) -> None:
        """Anti-entropy, as the service runs it every heartbeat: each member tells the others
        its tip, and they fetch the blocks and send the signatures it lacks."""
        for sender, engine in self.engines.items():
            if sender in self.cut:
                continue
            status = engine.status_message()
            for target in NAMES:
                if target != sender and target not in self.cut:
                    self.dispatch(target, sender, from_wire(to_wire(status)))
        self.deliver()

    def tx(self, member: str, key: str) -> Tx:
        return Tx.create(self.clients[member], self.cid, member, next(self.nonce), self.now + 600_000,
                         [Op(OP_PUT, "ns", key, b"v")])

    def gov_tx(self, member: str, op: Op) -> Tx:
        return Tx.create(self.clients[member], self.cid, member, next(self.nonce), self.now + 600_000, [op])

    def approved_but_one(self, change: Change, note: str) -> Tx:
        """``change`` proposed by firm-a and approved by firm-b and firm-c, each in a block of
        its own; returns firm-d's yes vote, the last one needed, unsent."""
        proposal = Proposal(change, note)
        self.engines["firm-a"].submit([self.gov_tx("firm-a", propose_op(proposal)).raw], None, self.now)
        run_until(self, lambda: len(self.engines["firm-a"].mempool) == 0)
        for voter in ("firm-b", "firm-c"):
            vote = Vote.create(self.keys[voter], self.cid, proposal.id, voter, True)
            self.engines[voter].submit([self.gov_tx(voter, vote_op(vote)).raw], None, self.now)
        run_until(self, lambda: all(len(e.mempool) == 0 for e in self.engines.values()))
        return self.gov_tx("firm-d", vote_op(Vote.create(self.keys["firm-d"], self.cid, proposal.id, "firm-d", True)))

    def state_of(self, name: str, block_hash: bytes) -> ConsortiumState:
        """The governance state after ``block_hash`` as ``name``'s store records it (the oracle
        for :meth:`Engine.state_for`)."""
        with self.stores[name].state_reader_at(block_hash) as reader:
            return ConsortiumState.load(self.consortium, reader)

    def member_key(self, name: str, public: bytes) -> SigningKey:
        return next(k for k in self.keyrings[name] if k.public == public)

    def craft(self, proposer: str, txs: list[Tx], *, height: int | None = None, round_: int = 0,
              parent: Header | None = None, time_ms: int | None = None,
              key: SigningKey | None = None) -> tuple[Block, BlockSignature]:
        """A block signed by ``proposer``'s key (or ``key``), valid unless the arguments make it
        otherwise. Its effects are computed in the store of ``proposer``, or of any member that
        holds ``parent``."""
        engine = self.engines[proposer]
        parent = parent or engine.tree.best_tip
        height = parent.height + 1 if height is None else height
        time_ms = self.now if time_ms is None else time_ms
        store = next(self.stores[n] for n in (proposer, *NAMES) if self.stores[n].header(parent.hash) is not None)
        with store.state_reader_at(parent.hash) as reader:
            effects = apply_txs(reader, txs, self.consortium, self.cid, time_ms, parent.state_root,
                                signature_ok=lambda tx: True, height=parent.height + 1)
        header = body_header(height, round_, parent.hash, proposer, time_ms, txs, effects.state_root)
        block = Block(header, tuple(txs))
        return block, BlockSignature.create(key or self.keys[proposer], self.cid, proposer, block.hash)

    def snapshot(self, name: str) -> tuple[bytes, int, int]:
        e = self.engines[name]
        return e.tree.best_tip.hash, sum(1 for _ in e.tree.headers()), len(e.mempool)


def run_until(net: Net, predicate: Callable[[], bool], steps: int = 500) -> None:
    for _ in range(steps):
        if predicate():
            return
        net.step(50)
    raise AssertionError("condition not reached")
