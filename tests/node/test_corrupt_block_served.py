"""A corrupt stored block on a running node: never served as good, never a crash, repaired.

A block below the start-up check's reach is damaged in firm-a's store while it runs. A peer's
request for blocks then gets an answer that stops before it (firm-a keeps running: this once
killed the daemon), the API answers 503 naming the block, an alert names it, and firm-a fetches a
good copy from its peers, checks that it hashes to the block's id, and replaces its own.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import trio

from peerdb.audit.bundle import read_items
from peerdb.audit.errors import AuditFailure
from peerdb.node.engine import Engine
from peerdb.node.http import Api
from peerdb.node.messages import BlocksMsg, GetBlocksMsg
from peerdb.store import layout
from tests.helpers.node_harness import Cluster

TOKEN = "t" * 32
AUDIT_TOKEN = "a" * 32


def spy_on_sends(engine: Engine) -> list[tuple[str | None, object]]:
    """Every message the engine sends from now on, as (to, message), still sent."""
    sent: list[tuple[str | None, object]] = []
    original = engine._send

    def spy(msg: object, to: str | None = None) -> None:
        sent.append((to, msg))
        original(msg, to)  # type: ignore[arg-type]
    engine._send = spy  # type: ignore[method-assign]
    return sent


async def test_a_corrupt_block_is_refused_alerted_and_repaired_from_peers(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        txs = [cluster.tx("firm-a", f"k{i}") for i in range(3)]
        await cluster.submit("firm-a", txs)
        await cluster.wait_until(lambda: cluster.included("firm-a", txs, "unanimous_signed")
                                 and a.engine.tree.best_tip.height >= 6, what="a few blocks")
        location = a.store.tx_location(txs[0].txid)
        assert location is not None
        victim, height = location.block_hash, location.height
        good = a.store.block_raw(victim)
        assert good is not None
        # The disk flips a byte of the block's first transaction (the store is open: write in place).
        damaged = bytearray(good)
        damaged[good.index(txs[0].raw) + len(txs[0].raw) // 2] ^= 0x40

        def damage() -> None:
            with a.store._environment().begin(write=True) as txn:
                txn.put(victim, bytes(damaged), db=a.store._t.blocks)

        sent = spy_on_sends(a.engine)

        # The API refuses it by name, and the node asks its peers for a good copy.
        damage()
        app = Api(a.service, TOKEN, None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            r = await client.get(f"/v1/blocks/{height}")
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "corrupt_data" and victim.hex()[:16] in r.json()["error"]["message"]
            assert any(isinstance(m, GetBlocksMsg) and m.from_height == height and to is None for to, m in sent)
            await cluster.wait_until(lambda: a.store.block_raw(victim) == good, what="the block repaired")
            assert victim not in a.engine.corrupt
            r = await client.get(f"/v1/blocks/{height}")
            assert r.status_code == 200 and r.json()["hash"] == victim.hex()

        # A peer asks for blocks: the answer stops before the damaged one; the node goes on,
        # raises an alert naming it, and repairs it again.
        damage()
        sent.clear()
        await a.service.call(a.engine.handle, "firm-b", GetBlocksMsg(1, height + 2), a.service.clock_ms())
        answers = [m for to, m in sent if to == "firm-b" and isinstance(m, BlocksMsg)]
        assert len(answers) == 1 and len(answers[0].items) == height - 1  # everything below it, nothing after
        assert victim in a.engine.corrupt
        alerts = await a.service.read(a.engine.alert_conditions, a.service.clock_ms(), lambda _m: True)
        assert any(x.kind == "corrupt_data" and x.subject == victim.hex() for x in alerts)
        await cluster.wait_until(lambda: a.store.block_raw(victim) == good, what="the block repaired again")
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_value_the_disk_changed_is_never_served_as_good(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The state table holds a key's latest value and the history its versions; neither is
    hashed by itself, but the state tree under each block's signed state root commits to every
    value: a read checks the value against it."""
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        tx = cluster.tx("firm-a", "balance", b"100")
        await cluster.submit("firm-a", [tx])
        await cluster.wait_until(lambda: cluster.included("firm-a", [tx], "unanimous_signed"), what="the write")
        skey = layout.state_key("ns", "balance")
        with a.store._environment().begin(write=True) as txn:  # the disk flips the value in every copy
            record = txn.get(skey, db=a.store._t.state)
            assert record is not None
            height, _value = layout.parse_state_record(record)
            txn.put(skey, layout.state_record(height, b"999", "ns", "balance", skey), db=a.store._t.state)
            txn.put(layout.history_key(skey, height), layout.history_record(b"999"), db=a.store._t.history)
        app = Api(a.service, TOKEN, None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for path in ("/v1/kv/ns/balance?view=tentative", "/v1/kv/ns?view=tentative", "/v1/history/ns/balance"):
                r = await client.get(path)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["code"] == "corrupt_data" and "ns/balance" in r.json()["error"]["message"]
        assert skey in a.engine.corrupt
        alerts = await a.service.read(a.engine.alert_conditions, a.service.clock_ms(), lambda _m: True)
        value_alert = next(x for x in alerts if x.kind == "corrupt_data")
        assert "node check --deep" in value_alert.message and "restore" in value_alert.message
        await cluster.close()
        nursery.cancel_scope.cancel()


async def damage_a_signature(cluster: Cluster) -> tuple[bytes, int, bytes, bytes]:
    """firm-b's stored signature on the block of a fresh write, flipped in firm-a's store:
    (block hash, height, store key, the good signature bytes)."""
    a = cluster.nodes["firm-a"]
    tx = cluster.tx("firm-a", "balance", b"100")
    await cluster.submit("firm-a", [tx])
    await cluster.wait_until(lambda: cluster.included("firm-a", [tx], "unanimous_signed"), what="the write")
    location = a.store.tx_location(tx.txid)
    assert location is not None
    await a.service.call(a.engine.flush_signatures)
    key = location.block_hash + b"firm-b"
    with a.store._environment().begin(write=True) as txn:
        good = txn.get(key, db=a.store._t.signatures)
        assert good is not None
        txn.put(key, bytes([good[0] ^ 0x01]) + good[1:], db=a.store._t.signatures)
    return location.block_hash, location.height, key, bytes(good)


async def test_a_signature_the_disk_changed_is_never_sent_proven_or_exported_as_the_members(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A co-signature verified when it arrived; read back damaged, it would make firm-a look like
    a forger to whoever receives it. Catch-up answers leave it out, read proofs and audit exports
    refuse it by name, and an alert says what to do (the peers are stopped here, so no good copy
    arrives: the next test shows the repair)."""
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        victim, height, key, _good = await damage_a_signature(cluster)
        for name in ("firm-b", "firm-c", "firm-d"):
            await cluster.crash(name)

        sent = spy_on_sends(a.engine)
        await a.service.call(a.engine.handle, "firm-c", GetBlocksMsg(height, height), a.service.clock_ms())
        answer = next(m for to, m in sent if to == "firm-c" and isinstance(m, BlocksMsg))
        (_raw, sigs), = answer.items
        assert {s.member for s in sigs} == {"firm-a", "firm-c", "firm-d"}  # firm-b's damaged one left out
        assert key in a.engine.corrupt

        app = Api(a.service, TOKEN, None, audit_token=AUDIT_TOKEN)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            r = await client.get(f"/v1/kv/ns/balance?proof=1&view=unanimous_signed&at={height}")
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "corrupt_data" and "firm-b" in r.json()["error"]["message"]
            r = await client.get("/v1/audit/bundle", headers={"Authorization": f"Bearer {AUDIT_TOKEN}"})
            with pytest.raises(AuditFailure, match="truncated|trailer"):  # ends before the block, no trailer
                list(read_items(io.BytesIO(r.content)))
        alerts = await a.service.read(a.engine.alert_conditions, a.service.clock_ms(), lambda _m: True)
        alert = next(x for x in alerts if x.kind == "corrupt_data")
        assert "firm-b" in alert.message and "left out of what the node sends" in alert.message
        assert "fetched from peers" in alert.message
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_a_signature_the_disk_changed_is_replaced_by_a_good_copy_from_a_peer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Found damaged, the signature is asked for again (the block's answer carries every
    signature the peers hold); a copy that verifies with firm-b's key replaces firm-a's, the alert
    clears, and firm-a serves it again."""
    cluster = Cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        victim, height, key, good = await damage_a_signature(cluster)
        sent = spy_on_sends(a.engine)
        await a.service.call(a.engine.handle, "firm-c", GetBlocksMsg(height, height), a.service.clock_ms())
        assert any(isinstance(m, GetBlocksMsg) and m.from_height == height and to is None for to, m in sent)

        def stored() -> bytes | None:
            with a.store._environment().begin() as txn:
                value = txn.get(key, db=a.store._t.signatures)
                return None if value is None else bytes(value)
        await cluster.wait_until(lambda: stored() == good and key not in a.engine.corrupt,
                                 what="the signature repaired from a peer")
        alerts = await a.service.read(a.engine.alert_conditions, a.service.clock_ms(), lambda _m: True)
        assert not any(x.kind == "corrupt_data" for x in alerts)
        sent.clear()
        await a.service.call(a.engine.handle, "firm-c", GetBlocksMsg(height, height), a.service.clock_ms())
        answer = next(m for to, m in sent if to == "firm-c" and isinstance(m, BlocksMsg))
        (_raw, sigs), = answer.items
        assert {s.member for s in sigs} == {"firm-a", "firm-b", "firm-c", "firm-d"}
        await cluster.close()
        nursery.cancel_scope.cancel()
