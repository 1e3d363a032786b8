"""Bad input and equivocation through the running node: real services, real network code, a
hostile member played by the test on raw in-memory connections.

``tests/node/test_engine_protocol.py`` drives engines directly and checks state only;
``tests/net/test_peer_network.py`` checks framing on a bare network. Here each bad message
travels the production path (hello, frames, :class:`~peerdb.net.peers.PeerNetwork`, the
service's inbox, the engine) into a node of a running consortium, and each test asserts both halves of the promise: the logged reason on
``peerdb.node`` / ``peerdb.net``, and no change to the chain state of any member.

The consortium is firm-a, firm-b, firm-c (real nodes) and firm-d, whose identity the test
holds. For the bad-input tests the parameters are "quiet" (heartbeat one minute): once the chain
reached height 3 nothing moves by itself for minutes of virtual time, so any change would be
the hostile message's doing. Height 4, round 0 is firm-d's turn.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peerdb.core.codec import encode
from peerdb.core.consortium import Params
from peerdb.core.keys import SigningKey
from peerdb.core.limits import MAX_BLOCK_BYTES, MAX_FRAME_BYTES, MAX_FRAME_ITEMS
from peerdb.core.merkle import merkle_root
from peerdb.core.model import OP_PUT, Block, BlockSignature, Evidence, Header, Objection, Op, Tx, body_header
from peerdb.core.state import apply_txs
from peerdb.core.validate import proposer_for
from peerdb.net.frames import FrameReader, send_frame
from peerdb.net.hello import make_hello
from peerdb.node.messages import (
    EvidenceMsg,
    GetBlocksMsg,
    Message,
    ObjectionMsg,
    ProposalMsg,
    SigsMsg,
    TxsMsg,
    to_wire,
)
from peerdb.node.service import INBOX_BATCH_BYTES, trio_clock_ms
from tests.helpers.node_harness import FAST_PARAMS, NET, MemberNode, Cluster

HOSTILE = "firm-d"
LIVE = ("firm-a", "firm-b", "firm-c")
QUIET = Params(heartbeat_ms=60_000, turn_timeout_ms=120_000, clock_skew_ms=1000, anchor_interval_s=60)
"""Nothing is proposed without transactions for a minute, and firm-d's turn lasts two."""
KEEPALIVE_S = 1.0
"""The hostile peer pings this often: the nodes drop a silent connection after 4 s (NET)."""


# --- a hostile member on raw connections --------------------------------------------------------

@dataclass
class HostileLink:
    """One raw connection from firm-d into a node, after a correct hello."""

    target: str
    stream: trio.abc.Stream
    reader: FrameReader
    messages: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    closed: trio.Event = field(default_factory=trio.Event)
    _arrived: trio.Event = field(default_factory=trio.Event)
    _send_lock: trio.Lock = field(default_factory=trio.Lock)

    async def send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_frame(self, value: Any) -> None:
        async with self._send_lock:
            await send_frame(self.stream, value)

    async def send(self, msg: Message | dict[str, Any]) -> None:
        await self.send_frame({"msg": msg if isinstance(msg, dict) else to_wire(msg)})

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("t") == kind]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                arrived = self._arrived
                await arrived.wait()

    async def barrier(self) -> None:
        """Return once the node has handled everything sent before: it answers an empty
        ``get_blocks`` on this connection, after every earlier message of ours."""
        answered = len(self.of_type("blocks"))
        await self.send(GetBlocksMsg(10**9, 10**9))
        await self.wait_for(lambda: len(self.of_type("blocks")) > answered)
        assert self.of_type("blocks")[-1]["items"] == []

    async def pump(self) -> None:
        """Read until the node closes the connection; keep it alive meanwhile."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive)
            try:
                async for frame in self.reader:
                    if "msg" in frame:
                        self.messages.append(frame["msg"])
                    elif "error" in frame:
                        self.error = frame["error"]
                    self._arrived.set()
                    self._arrived = trio.Event()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self.closed.set()
                self._arrived.set()
                nursery.cancel_scope.cancel()

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_S)  # a periodic ping, not a synchronisation
            try:
                await self.send_frame({"ping": 0})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def hostile_link(cluster: Cluster, nursery: trio.Nursery, target: str) -> HostileLink:
    stream = await cluster.hub.connect_raw(HOSTILE, target)
    await send_frame(stream, make_hello(cluster.cid, HOSTILE))
    reader = FrameReader(stream)
    with trio.fail_after(30):
        assert await reader.receive() == make_hello(cluster.cid, target)
    link = HostileLink(target, stream, reader)
    await link.send_frame({"ping": 0})  # the dialler's confirmation: the node installs us now
    nursery.start_soon(link.pump)
    await cluster.wait_until(lambda: cluster.nodes[target].service.is_up(HOSTILE), what=f"{target} sees {HOSTILE}")
    return link


# --- building blocks as firm-d ----------------------------------------------------------------

def craft(cluster: Cluster, parent: Header, txs: list[Tx], *, proposer: str = HOSTILE, round_: int = 0,
          state_root: bytes | None = None, evidence: tuple[Evidence, ...] = ()) -> tuple[Block, BlockSignature]:
    """A block on ``parent`` signed by ``proposer``'s real key; valid unless the arguments say
    otherwise (``state_root`` given: its transactions need not apply)."""
    time_ms = max(trio_clock_ms(), parent.time_ms)
    if state_root is None:
        with cluster.nodes["firm-a"].store.state_reader_at(parent.hash) as reader:
            state_root = apply_txs(reader, txs, cluster.consortium, cluster.cid, time_ms, parent.state_root,
                                   signature_ok=lambda tx: True, height=parent.height + 1).state_root
    header = body_header(parent.height + 1, round_, parent.hash, proposer, time_ms, txs, state_root, evidence)
    block = Block(header, tuple(txs), evidence)
    return block, BlockSignature.create(cluster.keys[proposer], cluster.cid, proposer, block.hash)


_NONCES = itertools.count(1_000_000)


def client_tx(cluster: Cluster, member: str, key: str, *, signer: SigningKey | None = None) -> Tx:
    """A transaction for ``member``, signed by ``signer`` (default: the member's client key)."""
    return Tx.create(signer or cluster.client_keys[member], cluster.cid, member, next(_NONCES),
                     trio_clock_ms() + 600_000, [Op(OP_PUT, "ns", key, b"evil")])


# --- the quiet consortium ---------------------------------------------------------------------

@dataclass
class World:
    cluster: Cluster
    nursery: trio.Nursery
    caplog: pytest.LogCaptureFixture
    link: HostileLink | None = None

    @property
    def a(self) -> MemberNode:
        return self.cluster.nodes["firm-a"]

    @property
    def tip(self) -> Header:
        return self.a.engine.tree.best_tip

    async def connect(self, target: str = "firm-a") -> HostileLink:
        self.link = await hostile_link(self.cluster, self.nursery, target)
        return self.link

    async def expect_log(self, logger: str, pattern: str, *, node: str | None = None) -> str:
        """Wait for the log line that gives the reason (virtual-time deadline); return it."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [r.getMessage() for r in self.caplog.records if r.name == logger
                        and re.search(pattern, r.getMessage()) and r.levelno >= logging.WARNING
                        and (node is None or f"node={node}" in r.getMessage())]
            return bool(found)

        await self.cluster.wait_until(seen, timeout=30, what=f"a {logger} warning matching {pattern!r}")
        return found[0]


def chain_state(node: MemberNode) -> tuple[object, ...]:
    """Everything a bad message must not change (objections are checked on their own)."""
    engine, store = node.engine, node.store
    tip = engine.tree.best_tip
    return (
        tip.hash, store.head().hash, sum(1 for _ in engine.tree.headers()), sum(1 for _ in store.headers_iter()),
        tuple(sorted(engine.mempool)), tuple(tx.txid for tx in store.mempool_items()),
        tuple(store.scan("ns")), tuple(sorted(engine.tree.signers(tip.hash))),
        tuple(sorted(len(store.signatures(h.hash)) for h in engine.tree.headers())),
        tuple(sorted(engine.evidence)), len(store.evidence_list()), tuple(sorted(engine.tree.culprits)),
        len(engine.orphans), len(engine.pending_sigs), engine.heads(),
    )


def states(cluster: Cluster) -> dict[str, tuple[object, ...]]:
    return {name: chain_state(cluster.nodes[name]) for name in LIVE}


@asynccontextmanager
async def quiet_world(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[World]:
    """firm-a, b, c running, the chain at height 3 endorsed by all three, nothing moving."""
    caplog.set_level(logging.INFO, logger="peerdb")
    cluster = Cluster(tmp_path, params=QUIET)
    async with trio.open_nursery() as nursery:
        cluster.nursery = nursery
        for name in LIVE:
            await cluster.start_node(name)
        for i in range(3):  # one transaction per height: firm-a, b and c propose heights 1, 2, 3
            tx = cluster.tx("firm-a", f"honest{i}")
            await cluster.submit("firm-a", [tx])
            await cluster.wait_until(lambda: all(cluster.included(n, [tx], "majority") for n in LIVE),
                                     what=f"height {i + 1}")
        await cluster.wait_until(
            lambda: all(cluster.nodes[n].engine.tree.best_tip.height == 3 and not cluster.nodes[n].engine.mempool
                        and cluster.nodes[n].engine.tree.signers(cluster.nodes[n].engine.tree.best_tip.hash) == set(LIVE)
                        for n in LIVE) and cluster.same_tip(LIVE), what="quiet at height 3")
        assert proposer_for(cluster.consortium.member_names, 4, 0) == HOSTILE
        world = World(cluster, nursery, caplog)
        try:
            yield world
        finally:
            await cluster.close()
            nursery.cancel_scope.cancel()


# --- the bad-input table ----------------------------------------------------------------------

Attack = Callable[[World, HostileLink], Awaitable[bytes | None]]
"""Sends the bad input; returns the hash of the block it proposed, if any."""


@dataclass(frozen=True)
class Case:
    attack: Attack
    logger: str
    reason: str
    closes: bool = False
    objection: str | None = None
    """If the proposer really signed the bad block, the objection reason recorded everywhere."""


async def _garbage_frame(w: World, link: HostileLink) -> bytes | None:
    await link.send_raw(b"\x00\x00\x00\x03\xff\xff\xff")
    return None


async def _oversized_frame(w: World, link: HostileLink) -> bytes | None:
    await link.send_raw((MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"\xa0" * 64)
    return None


async def _tiny_items_frame(w: World, link: HostileLink) -> bytes | None:
    count = MAX_FRAME_BYTES - 16
    body = b"\xa1\x63msg" + b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count  # {"msg": [[], [], ...]}
    await link.send_raw(len(body).to_bytes(4, "big") + body)
    return None


async def _non_canonical_frame(w: World, link: HostileLink) -> bytes | None:
    body = b"\xa1\x63msg\x18\x05"  # {"msg": 5} with 5 encoded in two bytes: not canonical
    await link.send_raw(len(body).to_bytes(4, "big") + body)
    return None


async def _unknown_message(w: World, link: HostileLink) -> bytes | None:
    await link.send({"t": "take_over", "block": b"\x00"})
    return None


async def _mistyped_field(w: World, link: HostileLink) -> bytes | None:
    await link.send({"t": "sigs", "sigs": "all of them"})
    return None


async def _oversized_block(w: World, link: HostileLink) -> bytes | None:
    sig = BlockSignature.create(w.cluster.keys[HOSTILE], w.cluster.cid, HOSTILE, b"\x01" * 32)
    await link.send({"t": "proposal", "block": b"\x00" * (MAX_BLOCK_BYTES + 1), "sig": sig.to_cbor()})
    return None


async def _forged_signature(w: World, link: HostileLink) -> bytes | None:
    await link.send(SigsMsg((BlockSignature(w.tip.hash, HOSTILE, bytes(64)),)))
    return None


async def _signature_by_another_key(w: World, link: HostileLink) -> bytes | None:
    c = w.cluster
    wrong = BlockSignature.create(c.keys["firm-c"], c.cid, HOSTILE, w.tip.hash)  # firm-c's key, firm-d's name
    await link.send(SigsMsg((wrong,)))
    return None


async def _non_member_signature(w: World, link: HostileLink) -> bytes | None:
    await link.send(SigsMsg((BlockSignature.create(SigningKey.generate(), w.cluster.cid, "mallory", w.tip.hash),)))
    return None


async def _forged_proposer_signature(w: World, link: HostileLink) -> bytes | None:
    block, _ = craft(w.cluster, w.tip, [client_tx(w.cluster, HOSTILE, "forged-proposer")])
    forged = BlockSignature.create(w.cluster.keys["firm-c"], w.cluster.cid, HOSTILE, block.hash)
    await link.send(ProposalMsg(block.raw, forged))
    return block.hash


async def _wrong_turn(w: World, link: HostileLink) -> bytes | None:
    block, sig = craft(w.cluster, w.tip, [client_tx(w.cluster, HOSTILE, "wrong-turn")], round_=1)
    await link.send(ProposalMsg(block.raw, sig))
    return block.hash


async def _invalid_tx_signature(w: World, link: HostileLink) -> bytes | None:
    good = client_tx(w.cluster, HOSTILE, "forged-client")
    forged = Tx(good.member, good.client, good.nonce, good.expires_ms, good.ops, bytes(64), good.body)
    block, sig = craft(w.cluster, w.tip, [forged], state_root=w.tip.state_root)
    await link.send(ProposalMsg(block.raw, sig))
    return block.hash


async def _tx_of_another_members_client(w: World, link: HostileLink) -> bytes | None:
    tx = client_tx(w.cluster, "firm-a", "impersonated", signer=w.cluster.client_keys[HOSTILE])
    block, sig = craft(w.cluster, w.tip, [tx], state_root=w.tip.state_root)
    await link.send(ProposalMsg(block.raw, sig))
    return block.hash


async def _replayed_tx_in_block(w: World, link: HostileLink) -> bytes | None:
    old = w.a.store.block(w.a.engine.tree.best_chain_hash(1) or b"")
    assert old is not None and old.txs
    block, sig = craft(w.cluster, w.tip, [old.txs[0]], state_root=w.tip.state_root)
    await link.send(ProposalMsg(block.raw, sig))
    return block.hash


async def _wrong_state_root(w: World, link: HostileLink) -> bytes | None:
    block, sig = craft(w.cluster, w.tip, [client_tx(w.cluster, HOSTILE, "bad-root")], state_root=b"\x07" * 32)
    await link.send(ProposalMsg(block.raw, sig))
    return block.hash


async def _body_swapped_under_signed_header(w: World, link: HostileLink) -> bytes | None:
    block, sig = craft(w.cluster, w.tip, [client_tx(w.cluster, HOSTILE, "signed-body")])
    swapped = encode([block.header.raw, [client_tx(w.cluster, HOSTILE, "swapped-body").raw], []])
    await link.send(ProposalMsg(swapped, sig))
    return block.hash


async def _bad_evidence(w: World, link: HostileLink) -> bytes | None:
    c = w.cluster
    x, _ = craft(c, w.a.engine.tree.header(w.tip.prev), [], proposer="firm-c", state_root=w.tip.state_root)
    await link.send(EvidenceMsg(Evidence.from_signatures("firm-c", x.header, bytes(64), w.tip, bytes(64))))
    return None


async def _forged_objection(w: World, link: HostileLink) -> bytes | None:
    c = w.cluster
    real = Objection.create(c.keys[HOSTILE], c.cid, HOSTILE, w.tip.hash, "I object")
    await link.send(ObjectionMsg(Objection(real.block_hash, "firm-b", real.reason, real.signature)))
    return None


async def _invalid_gossiped_tx(w: World, link: HostileLink) -> bytes | None:
    tx = client_tx(w.cluster, "firm-a", "gossip-impersonated", signer=w.cluster.client_keys[HOSTILE])
    await link.send(TxsMsg((tx.raw,)))
    return None


PROPOSAL = r"rejected block 4 round {round} by firm-d \(from firm-d\): .*"
MALFORMED = r"rejected malformed message from firm-d, closing the connection: "
CASES: dict[str, Case] = {
    "malformed frame (not CBOR)": Case(_garbage_frame, "peerdb.net", r"peer_down .*peer=firm-d .*malformed CBOR",
                                       closes=True),
    "oversized frame": Case(_oversized_frame, "peerdb.net", r"peer_down .*peer=firm-d .*exceeds the limit", closes=True),
    "frame of sixteen million tiny items": Case(
        _tiny_items_frame, "peerdb.net", rf"peer_down .*peer=firm-d .*more than {MAX_FRAME_ITEMS} CBOR items",
        closes=True),
    "non-canonical frame": Case(_non_canonical_frame, "peerdb.net", r"peer_down .*peer=firm-d .*canonical",
                                closes=True),
    "unknown message type (a newer protocol's, skipped)": Case(
        _unknown_message, "peerdb.node", r"skipped a message of unknown type 'take_over' from firm-d"),
    "mistyped message field": Case(_mistyped_field, "peerdb.node", MALFORMED + r".*sigs: expected", closes=True),
    "oversized block in a proposal": Case(_oversized_block, "peerdb.node", MALFORMED + r".*proposal\.block",
                                          closes=True),
    "forged block signature": Case(_forged_signature, "peerdb.node",
                                   r"rejected 1 signature\(s\) from firm-d that do not verify .*first: firm-d's on "
                                   r"[0-9a-f]{16}"),
    "block signature made with another member's key": Case(
        _signature_by_another_key, "peerdb.node", r"rejected 1 signature\(s\) from firm-d that do not verify"),
    "block signature by a non-member": Case(_non_member_signature, "peerdb.node",
                                            r"rejected signature from firm-d: mallory is not a member"),
    "forged proposer signature": Case(_forged_proposer_signature, "peerdb.node",
                                      r"rejected proposal 4 [0-9a-f]{16} from firm-d: not signed by its proposer firm-d"),
    "wrong-turn proposal": Case(_wrong_turn, "peerdb.node", PROPOSAL.format(round=1) + "turn belongs to firm-a",
                                objection="turn belongs to firm-a"),
    "block with a forged client signature": Case(
        _invalid_tx_signature, "peerdb.node", PROPOSAL.format(round=0) + "client signature does not verify",
        objection="client signature does not verify"),
    "block with a transaction signed by another member's client": Case(
        _tx_of_another_members_client, "peerdb.node", PROPOSAL.format(round=0) + "firm-d",
        objection="firm-d"),
    "block replaying an included transaction": Case(
        _replayed_tx_in_block, "peerdb.node", PROPOSAL.format(round=0) + "already included",
        objection="already included"),
    "block with a wrong state root": Case(_wrong_state_root, "peerdb.node", PROPOSAL.format(round=0) + "state_root",
                                          objection="state_root"),
    "body swapped under a signed header": Case(_body_swapped_under_signed_header, "peerdb.node",
                                               r"rejected proposal from firm-d: .*tx_root", objection="tx_root"),
    "evidence with forged signatures": Case(_bad_evidence, "peerdb.node",
                                            r"rejected evidence from firm-d: evidence\.sig_a: not firm-c's signature"),
    "objection with a forged signature": Case(_forged_objection, "peerdb.node",
                                              r"rejected objection from firm-d: bad signature .* firm-b"),
    "gossiped transaction that fails validation": Case(_invalid_gossiped_tx, "peerdb.node",
                                                       r"rejected 1 transactions from firm-d: .*firm-d"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_bad_input_is_rejected_with_a_logged_reason_and_changes_no_state(
        name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    case = CASES[name]
    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        before = states(w.cluster)
        sent_at = len(caplog.records)
        bad_block = await case.attack(w, link)
        line = await w.expect_log(case.logger, case.reason)
        if case.closes:
            # The connection is closed, the peer is told why, and firm-a logs it down, naming the reason.
            with trio.fail_after(30):
                await link.closed.wait()
            assert link.error is not None
            down = await w.expect_log("peerdb.net", r"peer_down node=firm-a peer=firm-d ")
            assert link.error in down, (link.error, down)
            assert line == down or line.split(": ", 1)[1] in link.error, (line, link.error)
            await w.cluster.wait_until(lambda: not w.a.service.is_up(HOSTILE), what="firm-d down at firm-a")
        else:
            await link.barrier()  # everything sent before was handled; the connection lives on
            assert not link.closed.is_set()
        if bad_block is not None:
            for name_ in LIVE:
                node = w.cluster.nodes[name_]
                assert bad_block not in node.engine.tree and not node.store.has_block(bad_block)
        if case.objection is not None:
            # Attributable (its proposer signed it): firm-a objects with the reason, and the
            # objection reaches every member, firm-d included.
            assert bad_block is not None
            objection = case.objection
            await w.cluster.wait_until(lambda: all(
                [(o.member, objection in o.reason) for o in w.cluster.nodes[n].store.objections(bad_block)]
                == [("firm-a", True)] for n in LIVE), what="firm-a's objection at every member")
            await link.wait_for(lambda: any(m["obj"][0] == bad_block for m in link.of_type("objection")))
        elif bad_block is not None:
            assert all(not w.cluster.nodes[n].store.objections(bad_block) for n in LIVE), \
                "a block its proposer did not sign is nobody's to object to"
        assert states(w.cluster) == before, f"{name}: chain state changed"
        errors = [r.getMessage() for r in caplog.records[sent_at:] if r.levelno >= logging.ERROR]
        assert not errors, errors


# --- bounded work: a barred member, sliced messages -------------------------------------------------

async def test_member_closed_for_a_bad_frame_is_refused_until_its_bar_ends(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        await _tiny_items_frame(w, link)
        with trio.fail_after(30):
            await link.closed.wait()
        barred = await w.expect_log("peerdb.net", r"peer_barred node=firm-a peer=firm-d .*CBOR items")
        assert f"seconds={NET.backoff_initial}" in barred
        # Straight back, with a correct hello: refused, and told why.
        stream = await w.cluster.hub.connect_raw(HOSTILE, "firm-a")
        await send_frame(stream, make_hello(w.cluster.cid, HOSTILE))
        with trio.fail_after(30):
            answer = await FrameReader(stream).receive()
        assert "barred for" in answer["error"] and "CBOR items" in answer["error"]
        await trio.sleep(NET.backoff_initial)  # the bar is over: firm-d is a member like any other
        again = await w.connect()
        await again.barrier()


async def test_a_large_txs_message_is_handled_in_slices(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    """Each slice is one engine call of at most INBOX_BATCH_BYTES of the message, so the engine
    lock is released between them (for the API, and for other members' messages in their turn)."""
    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        before = states(w.cluster)
        junk = tuple(i.to_bytes(4, "big") * 50 for i in range(6000))  # 200 bytes each, none a transaction
        size = len(encode(to_wire(TxsMsg(junk))))
        assert size > 4 * INBOX_BATCH_BYTES
        sent_at = len(caplog.records)
        await link.send(TxsMsg(junk))
        await link.barrier()
        counts = [int(m.group(1)) for r in caplog.records[sent_at:]
                  if (m := re.match(r"rejected (\d+) transactions from firm-d", r.getMessage()))]
        assert sum(counts) == len(junk)
        assert len(counts) >= size // INBOX_BATCH_BYTES
        assert max(counts) <= len(junk) * INBOX_BATCH_BYTES // size + 1
        assert not link.closed.is_set()
        assert states(w.cluster) == before


# --- replays --------------------------------------------------------------------------------------

async def _replay_everything(w: World, link: HostileLink) -> None:
    """Send again what the members already have: a stored proposal (relayed), its signatures,
    an included transaction."""
    a = w.a
    old_hash = a.engine.tree.best_chain_hash(2)
    assert old_hash is not None
    old = a.store.block(old_hash)
    assert old is not None
    sigs = tuple(a.store.signatures(old_hash))
    proposer_sig = next(s for s in sigs if s.member == old.header.proposer)
    await link.send(ProposalMsg(old.raw, proposer_sig))
    await link.send(SigsMsg(sigs))
    await link.send(TxsMsg((old.txs[0].raw,)))


async def test_replayed_messages_change_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                autojump_clock: trio.testing.MockClock) -> None:
    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        before = states(w.cluster)
        await _replay_everything(w, link)
        await link.barrier()
        assert not link.closed.is_set()
        assert states(w.cluster) == before
        assert not w.a.store.objections(w.a.engine.tree.best_chain_hash(2) or b"")


async def test_replayed_messages_leave_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 autojump_clock: trio.testing.MockClock) -> None:
    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        caplog.set_level(logging.DEBUG, logger="peerdb.node")
        sent_at = len(caplog.records)
        await _replay_everything(w, link)
        await link.barrier()
        lines = [r.getMessage() for r in caplog.records[sent_at:] if r.name == "peerdb.node"]
        assert any("firm-d" in line and re.search(r"replay|duplicate|already", line) for line in lines), lines


# --- objections are visible -----------------------------------------------------------------------

async def test_objection_to_an_invalid_block_is_visible_through_the_api(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    """The block objected to was never accepted, so it is in no member's block tree; the
    objection must still be listed: the others must be able to see why a member refused a
    signed proposal."""
    import httpx

    from peerdb.node.http import Api

    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        bad = await _wrong_turn(w, link)
        assert bad is not None
        b = w.cluster.nodes["firm-b"]
        await w.cluster.wait_until(lambda: bool(b.store.objections(bad)), what="firm-a's objection stored at firm-b")
        token = "t" * 32
        transport = httpx.ASGITransport(app=Api(b.service, token, w.cluster.client_keys["firm-b"]))
        async with httpx.AsyncClient(transport=transport, base_url="http://node",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            listed = (await client.get("/v1/objections")).json()["objections"]
        assert any(o["block"] == bad.hex() and o["member"] == "firm-a" for o in listed), listed


# --- equivocation through the running consortium ------------------------------------------------

async def test_equivocating_member_is_convicted_everywhere_and_excluded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    """firm-d, in its own turn, sends one valid block to firm-a and another to firm-b. The
    members find the double-sign themselves (gossip, catch-up), every one of them stores the
    evidence and raises the alert, a later block carries it, and unanimity resumes without
    firm-d."""
    caplog.set_level(logging.INFO, logger="peerdb")
    assert FAST_PARAMS.heartbeat_ms < FAST_PARAMS.turn_timeout_ms
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        cluster.nursery = nursery
        for name in LIVE:
            await cluster.start_node(name)
        links = {n: await hostile_link(cluster, nursery, n) for n in ("firm-a", "firm-b")}
        txs = [cluster.tx("firm-a", f"before{i}") for i in range(5)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: all(cluster.included(n, txs, "majority") for n in LIVE), what="progress")
        a = cluster.nodes["firm-a"].engine

        def my_turn() -> bool:
            return cluster.same_tip(LIVE) and a.current_turn(trio_clock_ms())[1:] == (0, HOSTILE)

        await cluster.wait_until(my_turn, what="firm-d's turn")
        tip = a.tree.best_tip
        x, sig_x = craft(cluster, tip, [client_tx(cluster, HOSTILE, "x")])
        y, sig_y = craft(cluster, tip, [client_tx(cluster, HOSTILE, "y")])
        assert x.hash != y.hash and x.height == y.height
        await links["firm-a"].send(ProposalMsg(x.raw, sig_x))
        await links["firm-b"].send(ProposalMsg(y.raw, sig_y))

        nodes = [cluster.nodes[n] for n in LIVE]
        await cluster.wait_until(lambda: all(HOSTILE in n.engine.tree.culprits for n in nodes),
                                 what="firm-d convicted at every member")
        for n in nodes:
            [ev] = n.store.evidence_list()
            assert ev.member == HOSTILE and {ev.header_a.hash, ev.header_b.hash} == {x.hash, y.hash}
            assert HOSTILE not in n.engine.tree.eligible()

        def carried_on_best_chain(n: MemberNode) -> bool:
            return any(n.engine.tree.on_best_chain(h) for hs in n.engine.chain.evidence_in_block.values() for h in hs)

        await cluster.wait_until(lambda: all(carried_on_best_chain(n) for n in nodes), what="evidence in a block")
        await cluster.wait_until(lambda: all(any(al["kind"] == "double_sign" and al["subject"] == HOSTILE
                                                 for al in n.service.alerts.snapshot()) for n in nodes),
                                 what="double_sign alert at every member")
        # Excluded: unanimity no longer waits for firm-d's signature.
        await cluster.wait_until(lambda: all(n.engine.heads().unanimous_signed > x.height for n in nodes),
                                 what="unanimous-signed past the double-sign without firm-d")
        await cluster.wait_until(lambda: cluster.same_tip(LIVE), what="one tip")
        for n in nodes:  # firm-d's signatures no longer weigh anything in fork choice
            tree = n.engine.tree
            chain = [tree.best_chain_hash(h) or b"" for h in range(1, tree.best_tip.height + 1)]
            assert tree.weight(tree.best_tip.hash) == sum(len(tree.signers(h) - {HOSTILE}) for h in chain)
            assert any(HOSTILE in tree.signers(h) for h in chain + [x.hash, y.hash] if h in tree)
        lines = [r.getMessage() for r in caplog.records if r.name == "peerdb.node"]
        assert any(re.search(r"DOUBLE SIGN: firm-d signed blocks|evidence: firm-d double-signed", m) for m in lines)
        for link in links.values():
            assert any(m["ev"][0] == HOSTILE for m in link.of_type("evidence"))  # gossiped to firm-d too
        await cluster.close()
        nursery.cancel_scope.cancel()


# --- catch-up that makes no progress ------------------------------------------------------------

async def test_catch_up_that_brings_nothing_new_is_not_repeated_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    from peerdb.node.catchup import CATCHUP_RETRY_MS
    from peerdb.node.messages import BlocksMsg, StatusMsg

    async with quiet_world(tmp_path, caplog) as w:
        link = await w.connect()
        a = w.a
        known = []
        for height in (1, 2, 3):
            block_hash = a.engine.tree.best_chain_hash(height)
            block = a.store.block(block_hash or b"")
            assert block is not None
            known.append((block.raw, tuple(a.store.signatures(block.hash))))
        answer = BlocksMsg(tuple(known), 50)  # "I have 50 blocks" - and sends the three it has
        await link.send(StatusMsg(b"\x42" * 32, 50, ()))
        asked: list[float] = []
        with trio.move_on_after(30):
            while len(asked) < 10:
                await link.wait_for(lambda: len(link.of_type("get_blocks")) > len(asked), timeout=60)
                asked.append(trio.current_time())
                await link.send(answer)
        assert asked, "the status made firm-a ask firm-d for blocks"
        gaps = [later - earlier for earlier, later in zip(asked, asked[1:])]
        assert all(gap >= CATCHUP_RETRY_MS / 1000 for gap in gaps), f"{len(asked)} requests, gaps {gaps}"
