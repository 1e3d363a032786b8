"""A running consortium's alerts, catch-up and mempool promises: each alert raised by the node
that sees its condition, catch-up that needs several batches, a transaction given to a
non-proposer forwarded and included exactly once, and a losing fork's transaction coming back
and included.

Four real engines and stores on the in-memory hub under the autojump clock
(:mod:`tests.helpers.node_harness`). A member that "cannot sign" is made with the store's own
guard floor (what an operator's restored data directory gets): it keeps following the chain but
never endorses, which is exactly the situation the alerts exist to show.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peerdb.core.model import Tx
from peerdb.node.messages import MAX_CATCHUP_BLOCKS, BlocksMsg
from peerdb.node.service import trio_clock_ms
from peerdb.store import Store
from tests.helpers.node_harness import Cluster, MemberNode

NEVER = 10**9
"""A guard floor no test chain reaches: the member refuses to sign at any height up to it."""


def alerts_of(node: MemberNode, kind: str) -> list[dict[str, Any]]:
    return [a for a in node.service.alerts.snapshot() if a["kind"] == kind]


def best_chain_blocks(node: MemberNode) -> list[bytes]:
    tree = node.engine.tree
    return [tree.best_chain_hash(h) or b"" for h in range(1, tree.best_tip.height + 1)]


def inclusions(node: MemberNode, tx: Tx) -> list[tuple[int, str]]:
    """(height, proposer) of every best-chain block of ``node`` that carries ``tx``."""
    out = []
    for block_hash in best_chain_blocks(node):
        block = node.store.block(block_hash)
        assert block is not None
        if any(t.txid == tx.txid for t in block.txs):
            out.append((block.height, block.header.proposer))
    return out


def lock_signing(cluster: Cluster, name: str) -> None:
    """Before ``name`` starts: its store refuses every signature (guard floor far above)."""
    with Store.open(cluster.tmp_path / name, cluster.consortium, name, sync=False) as store:
        store.set_guard_floor(NEVER)


def never_propose(node: MemberNode) -> None:
    """Skip ``node``'s turns, so that these alert tests see only the signatures it withholds, not
    its guard refusing its own proposals (tests/node/test_engine_signing_guard.py covers that)."""
    setattr(node.engine, "maybe_propose", lambda now_ms: None)


# --- alerts ---------------------------------------------------------------------------------------

async def test_majority_without_me_is_raised_by_the_member_left_out(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    lock_signing(cluster, "firm-c")
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        never_propose(cluster.nodes["firm-c"])
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(10)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: all(cluster.included(n, txs, "majority") for n in cluster.names),
                                 what="majority progress without firm-c's signatures")
        c = cluster.nodes["firm-c"]
        assert c.engine.tree.endorsement_height("firm-c") == 0
        await cluster.wait_until(lambda: bool(alerts_of(c, "majority_without_me")), what="alert at firm-c")
        [alert] = alerts_of(c, "majority_without_me")
        assert alert["subject"] == "firm-c" and "without firm-c's signature" in alert["message"]
        assert alert["details"]["my_height"] == 0 and alert["details"]["majority_height"] >= 1
        for other in ("firm-a", "firm-b", "firm-d"):  # only the member left out is told
            assert not alerts_of(cluster.nodes[other], "majority_without_me")
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_minority_chain_is_raised_when_my_signature_is_on_the_losing_fork(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.hub.isolate("firm-c")
        c = cluster.nodes["firm-c"]
        lone = cluster.tx("firm-c", "lonely")
        await cluster.submit("firm-c", [lone])
        await cluster.wait_until(lambda: c.store.tx_location(lone.txid) is not None, what="firm-c's own block")
        mine = c.engine.tree.latest_signed("firm-c")
        assert mine is not None
        others = [cluster.tx("firm-a", f"k{i}") for i in range(5)]
        await cluster.submit("firm-a", others)
        await cluster.wait_until(lambda: all(cluster.included(n, others, "majority") for n in ("firm-a", "firm-b", "firm-d")),
                                 what="the majority moves on without firm-c")
        await c.service.call(c.store.set_guard_floor, NEVER)  # firm-c can no longer move its signature
        never_propose(c)
        cluster.hub.heal()
        await cluster.wait_until(lambda: c.engine.tree.best_tip.height >= cluster.nodes["firm-a"].engine.tree.best_tip.height
                                 and not c.engine.tree.on_best_chain(mine), what="firm-c follows the heavier chain")
        await cluster.wait_until(lambda: bool(alerts_of(c, "minority_chain")), what="minority_chain at firm-c")
        [alert] = alerts_of(c, "minority_chain")
        assert alert["subject"] == mine.hex() and "on a fork that lost" in alert["message"]
        assert c.engine.tree.latest_signed("firm-c") == mine
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_stalled_names_the_cause_and_peer_down_names_the_peer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        txs = [cluster.tx("firm-a", "before")]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: cluster.included("firm-a", txs, "majority"), what="a first majority block")
        await cluster.crash("firm-c")
        await cluster.crash("firm-d")
        a = cluster.nodes["firm-a"]
        stuck = a.engine.heads().majority
        await cluster.submit("firm-a", [cluster.tx("firm-a", "after")])
        await cluster.wait_until(lambda: bool(alerts_of(a, "stalled")), what="stalled at firm-a")
        [stalled] = alerts_of(a, "stalled")
        details = stalled["details"]
        named = set(details.get("missing_signatures", [])) | {details.get("proposer")}
        assert named & {"firm-c", "firm-d"}, stalled
        assert f"height {details['height']}:" in stalled["message"]
        assert "firm-c" in stalled["message"] or "firm-d" in stalled["message"]
        assert a.engine.heads().majority == stuck  # two of four cannot make a majority
        await cluster.wait_until(lambda: {al["subject"] for al in alerts_of(a, "peer_down")} == {"firm-c", "firm-d"},
                                 what="peer_down for each crashed member")
        await cluster.close()
        nursery.cancel_scope.cancel()


# --- catch-up in batches --------------------------------------------------------------------------

async def test_member_that_was_down_catches_up_in_batches_to_the_same_state(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peerdb.node")
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        await cluster.crash("firm-d")
        a = cluster.nodes["firm-a"]
        target = 2 * MAX_CATCHUP_BLOCKS + 10
        written: list[Tx] = []
        batch = 0
        while a.engine.tree.best_tip.height < target:  # bounded: the tip grows every round
            txs = [cluster.tx("firm-a", f"k{batch}-{i}", f"v{batch}".encode()) for i in range(5)]
            written += txs
            await cluster.submit("firm-a", txs)
            await cluster.wait_until(lambda: cluster.included("firm-a", txs, "majority"), what=f"batch {batch}")
            batch += 1
            assert batch < 500
        # Restart firm-d with a probe on the catch-up answers it handles.
        node = cluster._build("firm-d")
        sizes: list[int] = []
        handle = node.engine.on_blocks

        def probe(peer: str | None, msg: BlocksMsg, now_ms: int) -> None:
            if msg.items:
                sizes.append(len(msg.items))
            handle(peer, msg, now_ms)

        node.engine.on_blocks = probe  # type: ignore[method-assign]
        cluster.nodes["firm-d"] = node
        assert cluster.nursery is not None
        await cluster.nursery.start(cluster._run, node)
        goal = a.engine.tree.best_tip.height
        d = node.engine
        await cluster.wait_until(lambda: d.tree.best_tip.height >= goal, what="firm-d caught up")
        await cluster.wait_until(cluster.same_tip, what="one tip")
        assert max(sizes) == MAX_CATCHUP_BLOCKS, sizes  # answers are cut at the batch limit ...
        assert len(sizes) >= 2 and sum(sizes) >= goal, sizes  # ... so it took several of them
        for name in ("firm-a", "firm-b", "firm-c"):
            other = cluster.nodes[name]
            assert best_chain_blocks(other)[:goal] == best_chain_blocks(node)[:goal]
        await cluster.wait_until(lambda: node.store.head().hash == a.store.head().hash
                                 and node.store.scan("ns") == a.store.scan("ns"), what="same store contents")
        for tx in written:
            assert node.store.tx_location(tx.txid) == a.store.tx_location(tx.txid) is not None
        progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("catch-up from ")]
        assert progress, "catch-up shows its progress"
        # It signs again: unanimity (which needs firm-d) moves past where it was down.
        await cluster.wait_until(lambda: a.engine.heads().unanimous_signed >= goal, what="firm-d endorses again")
        await cluster.close()
        nursery.cancel_scope.cancel()


# --- mempool --------------------------------------------------------------------------------------

async def test_transaction_given_to_a_non_proposer_is_included_once_by_the_proposer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        b = cluster.nodes["firm-b"]
        sent: list[Tx] = []
        for i in range(8):
            await cluster.wait_until(lambda: b.engine.current_turn(trio_clock_ms())[2] != "firm-b",
                                     what="another member's turn")
            tx = cluster.tx("firm-b", f"via-b{i}")
            await cluster.submit("firm-b", [tx])
            sent.append(tx)
            await cluster.wait_until(lambda: cluster.included("firm-b", [tx], "majority"), what=f"tx {i} included")
        await cluster.wait_until(lambda: all(cluster.included(n, sent) for n in cluster.names), what="everywhere")
        proposers = set()
        for name in cluster.names:
            node = cluster.nodes[name]
            for tx in sent:
                where = inclusions(node, tx)
                assert len(where) == 1, (name, where)  # exactly once on the best chain
                proposers.add(where[0][1])
                assert tx.txid not in node.engine.mempool
        assert proposers - {"firm-b"}, "the transactions reached other proposers"
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_transaction_of_a_losing_fork_comes_back_and_is_included(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """The transaction lives only in the losing fork's block (it was never gossiped), so the
    only way it reaches the winning chain is the reorg returning it to the pool."""
    caplog.set_level(logging.INFO, logger="peerdb.node")
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.hub.isolate("firm-c")
        c = cluster.nodes["firm-c"]
        lone = cluster.tx("firm-c", "from-the-fork")
        # Admitted as if forwarded by a peer: firm-c does not gossip it on.
        result = await c.service.call(c.engine.submit, [lone.raw], "firm-a", trio_clock_ms())
        assert result.accepted == [lone.txid]
        await cluster.wait_until(lambda: c.store.tx_location(lone.txid) is not None, what="in firm-c's own block")
        location = c.store.tx_location(lone.txid)
        assert location is not None
        fork_block = location.block_hash
        others = [cluster.tx("firm-a", f"k{i}") for i in range(5)]
        await cluster.submit("firm-a", others)
        await cluster.wait_until(lambda: all(cluster.included(n, others, "majority") for n in ("firm-a", "firm-b", "firm-d")),
                                 what="the majority moves on")
        for name in ("firm-a", "firm-b", "firm-d"):
            assert lone.txid not in cluster.nodes[name].engine.mempool
        cluster.hub.heal()
        await cluster.wait_until(lambda: all(cluster.included(n, [lone]) for n in cluster.names),
                                 what="the fork's transaction unanimous-signed on the winning chain")
        assert not c.engine.tree.on_best_chain(fork_block)
        for name in cluster.names:
            node = cluster.nodes[name]
            where = inclusions(node, lone)
            assert len(where) == 1, where
            assert where[0][1] == "firm-c"  # re-proposed from firm-c's pool: nobody else ever had it
            loc = node.store.tx_location(lone.txid)
            assert loc is not None and loc.block_hash != fork_block
        assert any("back to the pool" in r.getMessage() for r in caplog.records)
        await cluster.close()
        nursery.cancel_scope.cancel()
