"""The state machine: access rules, replay protection, signatures; effects returned, never half-applied."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdb.core.errors import AccessError, ReplayError, SignatureError, ValidationError
from peerdb.core.model import Op, Tx, consortium_id
from peerdb.core.smt import build as smt_build
from peerdb.core.state import Effects, MemoryState, apply_txs, check_tx_time, state_effects
from peerdb.core.statetree import EMPTY_STATE_ROOT, key_path, ns_path, value_hash

from tests.helpers.core import (
    CID,
    CONSORTIUM,
    GENESIS_MS,
    OUTSIDER_KEY,
    assert_names,
    client_key,
    expected_state_root,
    delete,
    make_consortium,
    make_tx,
    member_key,
    put,
)

NOW = GENESIS_MS + 1000
TTL = CONSORTIUM.params.tx_ttl_ms


def apply(state: MemoryState, txs: list[Tx], *, time_ms: int = NOW, prev: bytes = EMPTY_STATE_ROOT,
          **kw: object) -> Effects:
    return apply_txs(state, txs, kw.pop("consortium", CONSORTIUM), CID, time_ms, prev, **kw)  # type: ignore[arg-type]


def test_state_root_formula() -> None:
    writes = [("books", "a", b"1"), ("books", "b", None), ("notes", "n", b"2")]
    root = state_effects(MemoryState(), EMPTY_STATE_ROOT, writes, [], 1).state_root
    books = smt_build({key_path("a"): value_hash(b"1")})[0]
    notes = smt_build({key_path("n"): value_hash(b"2")})[0]
    assert root == smt_build({ns_path("books"): books, ns_path("notes"): notes})[0]
    # The root is the state's, not the history's: writes to distinct keys commute, and a block
    # that changes nothing keeps its parent's root.
    assert state_effects(MemoryState(), EMPTY_STATE_ROOT, writes[::-1], [], 1).state_root == root
    assert state_effects(MemoryState(), EMPTY_STATE_ROOT, [], [], 1).state_root == EMPTY_STATE_ROOT
    # A deleted last key takes its namespace out of the state.
    assert state_effects(MemoryState(), EMPTY_STATE_ROOT, [("books", "b", None)], [], 1).state_root == EMPTY_STATE_ROOT


def test_puts_and_deletes_in_order() -> None:
    state = MemoryState()
    t1 = make_tx("firm-a", 1, [put("books", "a", b"1"), put("books", "b", b"2")])
    t2 = make_tx("firm-b", 2, [delete("books", "a"), put("books", "b", b"3"), delete("books", "never")])
    effects = apply(state, [t1, t2])
    assert effects.writes == (("books", "a", b"1"), ("books", "b", b"2"), ("books", "a", None),
                              ("books", "b", b"3"), ("books", "never", None))
    assert effects.txids == (t1.txid, t2.txid)
    assert effects.state_root == expected_state_root({("books", "b"): b"3"})
    assert state.values == {} and state.seen == set()  # nothing applied yet
    state.apply(effects)
    assert state.values == {("books", "b"): b"3"}
    assert state.get("books", "b") == b"3" and state.get("books", "a") is None
    assert state.tx_seen(t1.txid) and state.tx_seen(t2.txid)


def test_member_key_may_sign_its_own_transactions() -> None:
    tx = make_tx("firm-a", key=member_key("firm-a"))
    assert apply(MemoryState(), [tx]).txids == (tx.txid,)


def test_unregistered_client_key() -> None:
    tx = make_tx("firm-a", key=OUTSIDER_KEY)
    with pytest.raises(ValidationError) as info:
        apply(MemoryState(), [tx])
    assert_names(info.value, f"tx {tx.txid.hex()[:16]}", "client key is not registered")


def test_client_key_of_another_member() -> None:
    tx = make_tx("firm-a", key=client_key("firm-b"))
    with pytest.raises(ValidationError) as info:
        apply(MemoryState(), [tx])
    assert_names(info.value, "client key belongs to firm-b, not firm-a")


def test_write_access_rules() -> None:
    with pytest.raises(AccessError) as info:
        apply(MemoryState(), [make_tx("firm-c", ops=[put("books", "k", b"")])])
    assert_names(info.value, "firm-c may not write namespace 'books'")
    with pytest.raises(AccessError):
        apply(MemoryState(), [make_tx("firm-b", ops=[put("other", "k", b""), delete("private", "k")])])
    assert apply(MemoryState(), [make_tx("firm-c", ops=[put("anything", "k", b"")])]).writes


def test_closed_namespaces() -> None:
    closed = make_consortium(open_namespaces=False)
    cid = consortium_id(closed)
    tx = make_tx("firm-a", ops=[put("unruled", "k", b"")], cid=cid)
    with pytest.raises(AccessError):
        apply_txs(MemoryState(), [tx], closed, cid, NOW, EMPTY_STATE_ROOT)


def test_expiry_bounds() -> None:
    assert apply(MemoryState(), [make_tx(expires_ms=NOW)]).txids  # expiring at the block's time is fine
    assert apply(MemoryState(), [make_tx(expires_ms=NOW + TTL)]).txids
    with pytest.raises(ReplayError) as info:
        apply(MemoryState(), [make_tx(expires_ms=NOW - 1)])
    assert_names(info.value, "expired at", str(NOW - 1), f"block time {NOW}")
    with pytest.raises(ValidationError) as info2:
        apply(MemoryState(), [make_tx(expires_ms=NOW + TTL + 1)])
    assert type(info2.value) is ValidationError
    assert_names(info2.value, f"more than tx_ttl_ms={TTL}")


def test_check_tx_time_directly() -> None:
    check_tx_time(make_tx(expires_ms=10), 10, 5)
    with pytest.raises(ReplayError):
        check_tx_time(make_tx(expires_ms=9), 10, 5)


def test_replay_of_an_included_transaction() -> None:
    state = MemoryState()
    tx = make_tx()
    state.apply(apply(state, [tx]))
    with pytest.raises(ReplayError) as info:
        apply(state, [tx])
    assert_names(info.value, f"tx {tx.txid.hex()[:16]}", "already included")


def test_duplicate_inside_one_block() -> None:
    tx = make_tx()
    with pytest.raises(ReplayError):
        apply(MemoryState(), [tx, tx])


def test_bad_signature() -> None:
    tx = make_tx()
    forged = Tx.from_parts(tx.body, client_key("firm-a").sign("tx", bytes(32), tx.txid))
    with pytest.raises(SignatureError) as info:
        apply(MemoryState(), [forged])
    assert_names(info.value, f"tx {tx.txid.hex()[:16]}", "client signature does not verify")
    replayed_domain = Tx.from_parts(tx.body, client_key("firm-a").sign("block", CID, tx.txid))
    with pytest.raises(SignatureError):
        apply(MemoryState(), [replayed_domain])


def test_signature_ok_callback_replaces_verification() -> None:
    tx = make_tx()
    forged = Tx.from_parts(tx.body, bytes(64))
    seen: list[bytes] = []

    def trust(t: Tx) -> bool:
        seen.append(t.txid)
        return True

    assert apply(MemoryState(), [forged], signature_ok=trust).txids == (tx.txid,)
    assert seen == [tx.txid]
    with pytest.raises(SignatureError):
        apply(MemoryState(), [tx], signature_ok=lambda t: False)


def test_a_block_with_one_bad_transaction_changes_nothing() -> None:
    state = MemoryState()
    state.apply(apply(state, [make_tx("firm-a", 1, [put("books", "x", b"old")])]))
    before_values, before_seen = copy.deepcopy(state.values), set(state.seen)
    good = make_tx("firm-a", 2, [put("books", "x", b"new"), delete("books", "y")])
    bad = make_tx("firm-c", 3, [put("books", "x", b"evil")])
    with pytest.raises(AccessError):
        apply(state, [good, bad])
    assert state.values == before_values and state.seen == before_seen
    assert state.get("books", "x") == b"old"


# --- properties ----------------------------------------------------------------------------------

writers = st.sampled_from(["firm-a", "firm-b"])
keys = st.sampled_from(["a", "b", "c"])
op_strategy = st.one_of(
    st.builds(lambda k, v: put("books", k, v), keys, st.binary(max_size=4)),
    st.builds(lambda k: delete("books", k), keys),
)


@given(st.lists(st.lists(st.tuples(writers, st.lists(op_strategy, min_size=1, max_size=3)), max_size=3),
                min_size=1, max_size=4))
def test_property_applied_effects_match_a_plain_dict(blocks: list[list[tuple[str, list[Op]]]]) -> None:
    state, root, nonce = MemoryState(), EMPTY_STATE_ROOT, 0
    model: dict[tuple[str, str], bytes] = {}
    for height, block in enumerate(blocks, 1):
        txs = []
        for member, ops in block:
            nonce += 1
            txs.append(make_tx(member, nonce, ops))
            for op in ops:
                if op.value is None:
                    model.pop(("books", op.key), None)
                else:
                    model[("books", op.key)] = op.value
        effects = apply(state, txs, time_ms=NOW + height, prev=root)
        assert effects.state_root == expected_state_root(model)
        root = effects.state_root
        state.apply(effects)
        assert state.values == model


@given(st.integers(0, 3), st.sampled_from(["access", "expired", "replay", "signature", "client"]))
def test_property_one_bad_transaction_anywhere_leaves_state_untouched(position: int, fault: str) -> None:
    state = MemoryState()
    old = make_tx("firm-a", 100)
    state.apply(apply(state, [old]))
    snapshot = (copy.deepcopy(state.values), set(state.seen))
    txs = [make_tx("firm-b", i, [put("books", f"k{i}", b"v")]) for i in range(3)]
    bad = {
        "access": make_tx("firm-d", 50),
        "expired": make_tx("firm-a", 51, expires_ms=NOW - 1),
        "replay": old,
        "signature": replace(make_tx("firm-a", 52), signature=bytes(64)),
        "client": make_tx("firm-a", 53, key=client_key("firm-c")),
    }[fault]
    txs.insert(position, bad)
    with pytest.raises(ValidationError):
        apply(state, txs)
    assert (state.values, state.seen) == snapshot
