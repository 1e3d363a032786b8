"""A consortium of real engines and stores in one process, joined by the in-memory hub.

Runs under trio's autojump MockClock: time moves only when every task waits, so turn timeouts,
heartbeats and reconnect backoff happen instantly and in the same order on every run. Engine
calls run inline (no worker threads), stores are real LMDB with sync off (tmp_path). The
consortium is :func:`tests.helpers.consortium.seeded_consortium` (fixed keys), founded at
virtual time 0.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from peerdb.core.consortium import Member, NamespaceRule, Params
from peerdb.core.keys import SigningKey
from peerdb.core.governance import PASSED, PENDING, propose_op, read_proposal, vote_op
from peerdb.core.membership import GOVERNANCE_DELAY
from peerdb.core.model import OP_PUT, Header, Op, Tx
from peerdb.core.proposals import Change, Proposal, Vote
from peerdb.net.memory import MemoryHub
from peerdb.net.peers import NetConfig, PeerNetwork
from peerdb.node.http import Api
from peerdb.node.engine import Engine
from peerdb.node.service import NodeService, trio_clock_ms
from peerdb.store import Store

from tests.helpers.consortium import MEMBER_NAMES, seeded_consortium

FAST_PARAMS = Params(heartbeat_ms=200, turn_timeout_ms=1000, clock_skew_ms=250, anchor_interval_s=60)
NET = NetConfig(backoff_initial=0.05, backoff_max=0.5, ping_interval=1.0, idle_timeout=4.0, stable_after=1.0,
                decode_offload_bytes=None)
"""Frames decoded inline, like engine calls (``offload=False``): on the autojump clock virtual
time would run ahead while a task waits for a worker thread."""


@dataclass
class MemberNode:
    name: str
    store: Store
    engine: Engine
    service: NodeService
    network: PeerNetwork
    """The node's network, as built here (the service sees only its Network protocol)."""
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)


class Cluster:
    def __init__(self, tmp_path: Path, names: tuple[str, ...] = MEMBER_NAMES, params: Params = FAST_PARAMS,
                 namespaces: tuple[NamespaceRule, ...] = (), offload: bool = False,
                 idle_block_ms: int | None = None) -> None:
        self.tmp_path = tmp_path
        self.offload = offload
        self.idle_block_ms = idle_block_ms
        """Run engine calls in worker threads, as a daemon does (use with the real clock)."""
        self.names = names
        self.seeded = seeded_consortium(names, name="test", genesis_time_ms=0, params=params,
                                        namespaces=namespaces)
        self.keys = self.seeded.keys
        self.client_keys = self.seeded.client_keys
        self.consortium = self.seeded.consortium
        self.cid = self.seeded.cid
        self.hub = MemoryHub()
        self.nodes: dict[str, MemberNode] = {}
        self.nursery: trio.Nursery | None = None
        self._nonce = itertools.count(1)
        self.more_keys: dict[str, list[SigningKey]] = {}
        """Further member keys a node holds (the next key of a rotation)."""

    def newcomer(self, name: str) -> Member:
        """Keys for a firm that is not a founding member; the Member to propose adding."""
        self.keys[name] = self.seeded.member_key(name)
        self.client_keys[name] = self.seeded.client_key(name)
        return Member(name, self.keys[name].public, f"127.0.0.1:{7000 + len(self.keys)}",
                      (self.client_keys[name].public,))

    def _build(self, name: str) -> MemberNode:
        joining = name not in self.names
        store = Store.open(self.tmp_path / name, self.consortium, name, sync=False, joining=joining)
        engine = Engine(self.consortium, name, [self.keys[name], *self.more_keys.get(name, [])], store,
                        trio_clock_ms(), verifier=None, idle_block_ms=self.idle_block_ms)
        members = (*self.names, name) if joining else self.names
        network = PeerNetwork(name, members, self.cid, self.hub.transport(name), config=NET)
        service = NodeService(engine, network, clock_ms=trio_clock_ms, offload=self.offload)
        return MemberNode(name, store, engine, service, network)

    async def start(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        for name in self.names:
            await self.start_node(name)

    async def start_node(self, name: str) -> None:
        assert self.nursery is not None
        node = self._build(name)
        self.nodes[name] = node
        await self.nursery.start(self._run, node)

    async def _run(self, node: MemberNode, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            node.scope = scope
            try:
                await node.service.run(task_status=task_status)
            finally:
                node.stopped.set()

    async def crash(self, name: str) -> None:
        """Stop a member abruptly (its store keeps what it committed) and close its store."""
        node = self.nodes[name]
        assert node.scope is not None
        node.scope.cancel()
        await node.stopped.wait()
        node.engine.verifier.close()
        node.store.close()

    def tx(self, member: str, key: str, value: bytes = b"v", namespace: str = "ns") -> Tx:
        return Tx.create(self.client_keys[member], self.cid, member, next(self._nonce),
                         trio_clock_ms() + 600_000, [Op(OP_PUT, namespace, key, value)])

    async def submit(self, member: str, txs: list[Tx]) -> None:
        result = await self.nodes[member].service.submit([tx.raw for tx in txs])
        assert len(result.accepted) == len(txs), result

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
        """Poll a condition in virtual time (autojump clock: no wall-clock waiting)."""
        with trio.move_on_after(timeout) as scope:
            while not predicate():
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise AssertionError(f"timed out (virtual {timeout} s) waiting for {what or predicate}\n{self.describe()}")

    def describe(self) -> str:
        lines = []
        for name, node in self.nodes.items():
            h = node.engine.heads()
            lines.append(f"{name}: {h} tip={node.engine.tree.best_tip.hash.hex()[:12]} mempool={len(node.engine.mempool)}")
        return "\n".join(lines)

    def included(self, member: str, txs: list[Tx], level: str = "unanimous_signed") -> bool:
        node = self.nodes[member]
        heads = node.engine.heads()
        target = getattr(heads, level)
        for tx in txs:
            loc = node.store.tx_location(tx.txid)
            if loc is None or loc.height > target:
                return False
        return True

    def live(self) -> list[MemberNode]:
        return [n for n in self.nodes.values() if not n.stopped.is_set()]

    def same_tip(self, names: tuple[str, ...] | None = None) -> bool:
        nodes = [self.nodes[n] for n in names] if names else self.live()
        return len({n.engine.tree.best_tip.hash for n in nodes}) == 1

    async def close(self) -> None:
        for node in self.nodes.values():
            if not node.stopped.is_set():
                await self.crash(node.name)


def best_chain_header(engine: Engine, height: int) -> Header:
    """The header at ``height`` on ``engine``'s best chain (which must reach that height)."""
    block_hash = engine.tree.best_chain_hash(height)
    assert block_hash is not None, f"the best chain does not reach height {height}"
    return engine.tree.header(block_hash)


API_TOKEN = "t" * 32


@asynccontextmanager
async def api_clients(cluster: Cluster) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """An in-process HTTP client for each member's API (ASGI, no sockets), token API_TOKEN."""
    async with AsyncExitStack() as stack:
        clients = {}
        for name in cluster.names:
            app = Api(cluster.nodes[name].service, API_TOKEN, cluster.client_keys[name])
            clients[name] = await stack.enter_async_context(httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://node",
                headers={"Authorization": f"Bearer {API_TOKEN}"}))
        yield clients


# --- governance on a running cluster -----------------------------------------------------------

def gov_tx(cluster: Cluster, member: str, op: object) -> Tx:
    """A transaction by ``member``'s client carrying one governance op (a proposal or a vote)."""
    return Tx.create(cluster.client_keys[member], cluster.cid, member, next(cluster._nonce),
                     trio_clock_ms() + 600_000, [op])  # type: ignore[list-item]


def record_status(cluster: Cluster, member: str, proposal: Proposal | bytes) -> str | None:
    """The proposal's status in ``member``'s state at its best tip (None: not recorded there)."""
    engine = cluster.nodes[member].engine
    with engine.store.state_reader_at(engine.tree.best_tip.hash) as reader:
        record = read_proposal(reader, proposal if isinstance(proposal, bytes) else proposal.id)
    return None if record is None else record.status


async def propose(cluster: Cluster, proposer: str, change: Change, note: str = "") -> Proposal:
    """Submit a proposal and wait until every live member has recorded it as pending."""
    proposal = Proposal(change, note)
    await cluster.submit(proposer, [gov_tx(cluster, proposer, propose_op(proposal))])
    await cluster.wait_until(lambda: all(record_status(cluster, n.name, proposal) == PENDING for n in cluster.live()),
                             what="proposal recorded everywhere")
    return proposal


async def vote(cluster: Cluster, voters: tuple[str, ...], proposal: Proposal, approve: bool = True) -> None:
    """Each voter submits its signed vote through its own node."""
    for voter in voters:
        v = Vote.create(cluster.keys[voter], cluster.cid, proposal.id, voter, approve)
        await cluster.submit(voter, [gov_tx(cluster, voter, vote_op(v))])


def passed_height(cluster: Cluster, member: str, proposal: Proposal) -> int:
    """The height from which a passed proposal applies, as ``member`` recorded it."""
    engine = cluster.nodes[member].engine
    with engine.store.state_reader_at(engine.tree.best_tip.hash) as reader:
        record = read_proposal(reader, proposal.id)
    assert record is not None and record.status == PASSED and record.effective_height is not None
    assert record.decided_height is not None and record.effective_height == record.decided_height + GOVERNANCE_DELAY
    return record.effective_height
