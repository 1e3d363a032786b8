"""Private namespaces through the client API, on running members (memory hub, autojump clock).

Above all: a member that is not a reader cannot read a private namespace through its API, and
its store holds only ciphertext for it. Also: the node seals ``/v1/write`` puts itself, readers'
nodes open them, a client that signs its own transactions learns whom to seal for, plaintext is
refused, blocks show ciphertext only, and a namespace made private by a vote, a later change of
its readers, and a member-key rotation all behave the same way.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from cli.data import shown_value as _shown_value
from cli.inspection import block_value as _block_value
from peerdb.core.consortium import NamespaceRule
from peerdb.core.errors import ValidationError
from peerdb.core.governance import PASSED, read_proposal
from peerdb.core.keys import SigningKey
from peerdb.core.model import OP_PUT, Op, Tx
from peerdb.core.privacy import Envelope, open_value, seal_value
from peerdb.node.engine import Engine
from peerdb.node.service import trio_clock_ms
from peerdb.store.identity import DATA_FILE
from peerdb.net.certs import member_certificate
from tests.helpers.node_harness import Cluster, api_clients

NAMES = ("firm-a", "firm-b", "firm-c")
DEALS = NamespaceRule("deals", readers=("firm-a", "firm-b"), private=True)
BOARD = NamespaceRule("board", writers=("firm-a",), readers=("firm-a", "firm-b"), private=True)




async def write(client: httpx.AsyncClient, ns: str, key: str, value: str) -> str:
    r = await client.post("/v1/write", json={"ops": [{"op": "put", "namespace": ns, "key": key, "value": value}],
                                              "wait": "majority", "timeout_s": 60})
    assert r.status_code == 200, r.text
    assert r.json()["wait"]["reached"] is True, r.text
    txid: str = r.json()["accepted"][0]
    return txid


async def stored_everywhere(cluster: Cluster, ns: str, key: str) -> None:
    await cluster.wait_until(lambda: all(n.store.get(ns, key)[0] is not None for n in cluster.nodes.values()),
                             what=f"{ns}/{key} in every store")


async def kv(client: httpx.AsyncClient, ns: str, key: str) -> dict[str, Any]:
    r = await client.get(f"/v1/kv/{ns}/{key}", params={"view": "tentative"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def data_file(cluster: Cluster, name: str) -> bytes:
    return (cluster.tmp_path / name / DATA_FILE).read_bytes()


def assert_only_ciphertext(cluster: Cluster, ns: str, key: str, marker: bytes, reader: str, non_reader: str) -> None:
    """The stored value is an envelope the reader's key opens and the non-reader's does not, and
    the plaintext is in no member's LMDB file."""
    for name in cluster.names:
        stored, _ = cluster.nodes[name].store.get(ns, key)
        assert stored is not None and marker not in stored
        envelope = Envelope.decode(stored)
        assert non_reader not in {m for m, _, _ in envelope.recipients}
        with pytest.raises(ValidationError, match=f"not addressed to {non_reader}"):
            open_value(stored, ns, key, non_reader, cluster.keys[non_reader])
        assert marker in open_value(stored, ns, key, reader, cluster.keys[reader])
        assert marker not in data_file(cluster, name), f"plaintext of {ns}/{key} in {name}'s store file"


def client_tx(cluster: Cluster, member: str, ops: list[Op]) -> str:
    tx = Tx.create(cluster.client_keys[member], cluster.cid, member, next(cluster._nonce),
                   trio_clock_ms() + 600_000, ops)
    return base64.b64encode(tx.raw).decode()


async def test_non_reader_cannot_read_a_private_namespace_and_stores_only_ciphertext(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, names=NAMES, namespaces=(DEALS, BOARD))
    marker = b"MARKER-acme-merger-price-41.50"
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        async with api_clients(cluster) as api:
            txid = await write(api["firm-a"], "deals", "acme", marker.decode())
            await write(api["firm-a"], "ns", "public", "MARKER-public-plaintext")  # the file check can see plaintext
            await stored_everywhere(cluster, "deals", "acme")
            await stored_everywhere(cluster, "ns", "public")

            # Readers' nodes open it for their clients: the writer's own and another reader's.
            for reader in ("firm-a", "firm-b"):
                body = await kv(api[reader], "deals", "acme")
                assert body["found"] is True and body["private"] is True and "unavailable" not in body
                assert body["value_text"] == marker.decode()
                assert base64.b64decode(body["value"]) == marker
            scan = (await api["firm-b"].get("/v1/kv/deals")).json()
            assert [(k["key"], k["value_text"]) for k in scan["keys"]] == [("acme", marker.decode())]
            history = (await api["firm-b"].get("/v1/history/deals/acme")).json()
            assert [v["value_text"] for v in history["versions"]] == [marker.decode()]

            # The non-reader's API refuses every read, naming the member and the namespace.
            for path in ("/v1/kv/deals/acme", "/v1/kv/deals", "/v1/history/deals/acme"):
                r = await api["firm-c"].get(path)
                assert r.status_code == 403, (path, r.text)
                assert r.json()["error"]["message"] == "firm-c may not read namespace 'deals'"
                assert marker.decode() not in r.text

            # Every store, the readers' included, holds the envelope; no file holds the plaintext.
            assert_only_ciphertext(cluster, "deals", "acme", marker, reader="firm-b", non_reader="firm-c")
            assert all(b"MARKER-public-plaintext" in data_file(cluster, n) for n in cluster.names)

            # Blocks show what every member holds: the envelope, marked private, never opened.
            height = (await api["firm-a"].get(f"/v1/tx/{txid}")).json()["height"]
            r = await api["firm-a"].get(f"/v1/blocks/{height}")
            assert r.status_code == 200 and marker.decode() not in r.text
            [op] = [op for tx in r.json()["txs"] if tx["txid"] == txid for op in tx["ops"]]
            assert op["private"] is True and op["value_text"] is None
            assert base64.b64decode(op["value"]) == cluster.nodes["firm-a"].store.get("deals", "acme")[0]
            assert _block_value(op).startswith("(private: encrypted for its readers")  # `peerdb blocks show`

            # A writer that is not a reader writes, and cannot read its own write.
            await write(api["firm-c"], "deals", "from-c", "MARKER-written-by-c")
            await stored_everywhere(cluster, "deals", "from-c")
            assert (await kv(api["firm-b"], "deals", "from-c"))["value_text"] == "MARKER-written-by-c"
            assert (await api["firm-c"].get("/v1/kv/deals/from-c")).status_code == 403
            # A member that may not write the namespace gets the write rule's 403, nothing sealed.
            r = await api["firm-b"].post("/v1/write", json={"ops": [{"namespace": "board", "key": "k", "value": "x"}]})
            assert r.status_code == 403 and "firm-b may not write namespace 'board'" in r.json()["error"]["message"]

            # A client signing its own transactions: plaintext is refused with the rule ...
            plain = client_tx(cluster, "firm-b", [Op(OP_PUT, "deals", "raw", b"MARKER-raw-plaintext")])
            r = await api["firm-b"].post("/v1/txs", json={"txs": [plain]})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "rejected"
            assert "namespace 'deals' is private: the value must be an envelope" in r.json()["error"]["message"]
            # ... alone, in a batch whose other transactions go through (indices as sent) ...
            other = client_tx(cluster, "firm-b", [Op(OP_PUT, "ns", "fine", b"ok")])
            r = await api["firm-b"].post("/v1/txs", json={"txs": [other, plain]})
            assert r.status_code == 200 and len(r.json()["accepted"]) == 1, r.text
            assert [x["index"] for x in r.json()["rejected"]] == [1]
            # ... and so is an envelope that leaves out a reader.
            short = seal_value("deals", "raw", b"MARKER-raw-plaintext", {"firm-a": [cluster.keys["firm-a"].public]})
            r = await api["firm-b"].post("/v1/txs", json={"txs": [client_tx(cluster, "firm-b",
                                                                            [Op(OP_PUT, "deals", "raw", short)])]})
            assert r.status_code == 400 and "not sealed to firm-b with the key in force" in r.text
            assert not any(op.namespace == "deals" for tx in cluster.nodes["firm-b"].engine.mempool.values()
                           for op in tx.ops)

            # ... and seals for the recipients its node lists.
            readers = (await api["firm-c"].get("/v1/namespaces/deals/readers")).json()
            assert readers["private"] is True and readers["readers"] == ["firm-a", "firm-b"]
            recipients = {r["member"]: [bytes.fromhex(k) for k in r["keys"]] for r in readers["recipients"]}
            assert recipients == {n: [cluster.keys[n].public] for n in ("firm-a", "firm-b")}
            sealed = seal_value("deals", "raw", b"MARKER-client-sealed", recipients)
            r = await api["firm-c"].post("/v1/txs", json={
                "txs": [client_tx(cluster, "firm-c", [Op(OP_PUT, "deals", "raw", sealed)])],
                "wait": "majority", "timeout_s": 60})
            assert r.status_code == 200 and r.json()["wait"]["reached"] is True, r.text
            await stored_everywhere(cluster, "deals", "raw")
            assert (await kv(api["firm-a"], "deals", "raw"))["value_text"] == "MARKER-client-sealed"

            consortium = (await api["firm-c"].get("/v1/consortium")).json()
            assert {(n["name"], n.get("private")) for n in consortium["namespaces"]} == \
                {("deals", True), ("board", True)}
        await cluster.close()
        nursery.cancel_scope.cancel()


async def pass_change(cluster: Cluster, api: dict[str, httpx.AsyncClient], body: dict[str, Any]) -> None:
    """Propose ``body`` from firm-a and have every member approve; returns once it is in force everywhere."""
    r = await api["firm-a"].post("/v1/governance/propose", json={**body, "wait": "majority", "timeout_s": 60})
    assert r.status_code == 200, r.text
    pid = r.json()["proposal"]
    await cluster.wait_until(lambda: all(n.store.get("_gov", f"proposal/{pid}")[0] is not None
                                         for n in cluster.nodes.values()), what="proposal everywhere")
    for voter in cluster.names:
        r = await api[voter].post("/v1/governance/vote", json={"proposal": pid, "approve": True})
        assert r.status_code == 200, r.text

    await cluster.wait_until(lambda: all(in_force(n.engine, pid) for n in cluster.nodes.values()),
                             what=f"{body['kind']} in force everywhere")


def in_force(engine: Engine, pid: str) -> bool:
    """Passed, and in force from the next height on (what new writes and reads follow)."""
    with engine.store.state_reader_at(engine.tree.best_tip.hash) as reader:
        record = read_proposal(reader, bytes.fromhex(pid))
    return record is not None and record.status == PASSED and record.effective_height is not None \
        and record.effective_height <= engine.tree.best_tip.height + 1


async def test_namespace_made_private_by_a_vote_then_readers_and_keys_change(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path, names=NAMES)
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        async with api_clients(cluster) as api:
            await write(api["firm-a"], "secret", "before", "public-before-the-vote")
            await pass_change(cluster, api, {"kind": "set_namespace", "namespace": "secret", "writers": ["*"],
                                             "readers": ["firm-a", "firm-c"], "private": True})
            for node in cluster.nodes.values():
                rule = node.engine.current.rule("secret")
                assert rule is not None and rule.private

            # Sealed by firm-b's node, which may write but not read.
            await write(api["firm-b"], "secret", "s1", "MARKER-sealed-to-a-and-c")
            await stored_everywhere(cluster, "secret", "s1")
            for reader in ("firm-a", "firm-c"):
                assert (await kv(api[reader], "secret", "s1"))["value_text"] == "MARKER-sealed-to-a-and-c"
            assert (await api["firm-b"].get("/v1/kv/secret/s1")).status_code == 403
            assert_only_ciphertext(cluster, "secret", "s1", b"MARKER-sealed-to-a-and-c", reader="firm-c",
                                   non_reader="firm-b")
            # Written while the namespace was public: plaintext, served to its readers as it is.
            before = await kv(api["firm-a"], "secret", "before")
            assert before["value_text"] == "public-before-the-vote" and "private" not in before

            # firm-b becomes a reader: what was sealed before is unavailable to it (with the
            # reason), what is written from now on is sealed to it too.
            await pass_change(cluster, api, {"kind": "set_namespace", "namespace": "secret", "writers": ["*"],
                                             "readers": ["firm-a", "firm-b", "firm-c"], "private": True})
            old = await kv(api["firm-b"], "secret", "s1")
            assert old["found"] is True and old["value"] is None and old["value_text"] is None
            assert old["private"] is True
            assert "not sealed to firm-b" in old["unavailable"]
            assert "before firm-b became a reader" in old["unavailable"]
            assert _shown_value(old) == f"(unavailable: {old['unavailable']})"  # `peerdb get`
            await write(api["firm-a"], "secret", "s2", "MARKER-sealed-to-all")
            await stored_everywhere(cluster, "secret", "s2")
            assert (await kv(api["firm-b"], "secret", "s2"))["value_text"] == "MARKER-sealed-to-all"
            scan = (await api["firm-b"].get("/v1/kv/secret")).json()
            assert {k["key"]: k.get("unavailable") is None for k in scan["keys"]} == \
                {"before": True, "s1": False, "s2": True}
            history = (await api["firm-b"].get("/v1/history/secret/s1")).json()
            assert history["versions"][0]["value"] is None and "unavailable" in history["versions"][0]

            # firm-c's member key rotates; its node holds both keys. New writes are sealed to the
            # new key, and firm-c still opens what was sealed to the old one.
            new_key = SigningKey.generate()
            cluster.nodes["firm-c"].engine.keyring[new_key.public] = new_key
            await pass_change(cluster, api, {"kind": "rotate_key", "name": "firm-c", "key": new_key.public.hex(),
                                                 "cert_b64": base64.b64encode(member_certificate(new_key.seed, "firm-c")).decode()})
            await write(api["firm-a"], "secret", "s3", "MARKER-after-rotation")
            await stored_everywhere(cluster, "secret", "s3")
            stored, _ = cluster.nodes["firm-c"].store.get("secret", "s3")
            assert stored is not None
            assert ("firm-c", new_key.public) in Envelope.decode(stored).addressed_to()
            assert (await kv(api["firm-c"], "secret", "s3"))["value_text"] == "MARKER-after-rotation"
            assert (await kv(api["firm-c"], "secret", "s1"))["value_text"] == "MARKER-sealed-to-a-and-c"
            # Without the old key, the old value is unavailable, and the reason says why.
            del cluster.nodes["firm-c"].engine.keyring[cluster.keys["firm-c"].public]
            gone = await kv(api["firm-c"], "secret", "s1")
            assert gone["value"] is None and "member key of firm-c this node no longer holds" in gone["unavailable"]

            for name in cluster.names:
                file = data_file(cluster, name)
                for marker in (b"MARKER-sealed-to-a-and-c", b"MARKER-sealed-to-all", b"MARKER-after-rotation"):
                    assert marker not in file, f"{marker!r} in {name}'s store file"
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_plaintext_forwarded_by_a_peer_is_refused_at_admission(
        tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A peer (or a client of another member's node) that forwards a plaintext put into a
    private namespace: the pool refuses it with the rule, nothing enters the pool or a block."""
    cluster = Cluster(tmp_path, names=NAMES, namespaces=(DEALS,))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        engine = cluster.nodes["firm-a"].engine
        tx = Tx.create(cluster.client_keys["firm-c"], cluster.cid, "firm-c", 7, trio_clock_ms() + 60_000,
                       [Op(OP_PUT, "deals", "d1", b"plaintext price 99")])
        [result] = engine.submit_many([[tx.raw]], "firm-c", trio_clock_ms())
        assert not isinstance(result, Exception)
        assert result.accepted == [] and len(result.rejected) == 1
        assert "namespace 'deals' is private" in str(result.rejected[0][1])
        assert tx.txid not in engine.mempool
        assert any("rejected 1 transactions from firm-c" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()
    await cluster.close()


async def test_blocks_do_not_show_values_of_namespaces_the_member_may_not_read(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    memo = NamespaceRule("memo", readers=("firm-a", "firm-b"))  # a read rule, not encrypted
    cluster = Cluster(tmp_path, names=NAMES, namespaces=(memo,))
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        async with api_clients(cluster) as clients:
            txid = await write(clients["firm-a"], "memo", "m1", "board minutes")
            await stored_everywhere(cluster, "memo", "m1")
            height = (await clients["firm-a"].get(f"/v1/tx/{txid}")).json()["height"]
            views = {}
            for name in NAMES:
                r = await clients[name].get(f"/v1/blocks/{height}")
                assert r.status_code == 200, r.text
                [op] = [op for tx in r.json()["txs"] if tx["txid"] == txid for op in tx["ops"]]
                views[name] = op
            assert views["firm-a"]["value_text"] == "board minutes"
            assert views["firm-b"]["value_text"] == "board minutes"
            assert views["firm-c"]["value"] is None and views["firm-c"]["redacted"] is True
            assert (await clients["firm-c"].get("/v1/kv/memo/m1")).status_code == 403
        nursery.cancel_scope.cancel()
    await cluster.close()
