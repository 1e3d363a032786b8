"""Reorg property: after any sequence of block arrivals and head switches, the store's state,
key history, transaction index and mempool equal what replaying the winning chain from genesis
on peerdb.core.state.MemoryState gives, and a state reader at any stored block equals the replay
up to that block."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from peerdb.core.model import Block, Tx
from peerdb.store import Store, TxLocation
from tests.helpers.chainbuilder import ChainBuilder

NAMESPACES = ("a", "b")
KEYS = ("k0", "k1", "k2", "k3")
MAX_STEPS = 24

op_strategy = st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(KEYS),
                        st.one_of(st.none(), st.binary(min_size=0, max_size=3)))


class Model:
    """What the store should hold, tracked from the builder and the sequence of calls."""

    def __init__(self, cb: ChainBuilder) -> None:
        self.cb = cb
        self.head: Block = cb.genesis
        self.stored: list[Block] = [cb.genesis]
        self.txs: list[Tx] = []
        self.mempool: set[bytes] = set()

    def chain(self) -> list[Block]:
        return self.cb.chain_to(self.head)


def check_store(store: Store, model: Model) -> None:
    cb = model.cb
    chain = model.chain()
    expected = cb.state_at(model.head)
    assert store.head() == model.head.header
    assert [store.block_hash_at(b.height) for b in chain] == [b.hash for b in chain]
    assert store.block_hash_at(len(chain)) is None
    for ns in NAMESPACES:
        got = {key: value for key, value, _h in store.scan(ns)}
        assert got == {k: v for (n, k), v in expected.values.items() if n == ns}
        for key in KEYS:
            history = cb.history_of(model.head, ns, key)
            assert store.history(ns, key) == history
            assert store.get(ns, key)[0] == expected.get(ns, key)
            for height in range(len(chain)):
                writes = [h for h in history if h[0] <= height]
                want = (writes[-1][2], writes[-1][0]) if writes else (None, None)
                assert store.get(ns, key, at_height=height) == want
    locations = {tx.txid: TxLocation(b.height, b.hash, i) for b in chain for i, tx in enumerate(b.txs)}
    for tx in model.txs:
        assert store.tx_location(tx.txid) == locations.get(tx.txid)
    assert {tx.txid for tx in store.mempool_items()} == model.mempool


def check_readers(store: Store, model: Model) -> None:
    for block in model.stored:
        expected = model.cb.state_at(block)
        with store.state_reader_at(block.hash) as reader:
            for ns in NAMESPACES:
                for key in KEYS:
                    assert reader.get(ns, key) == expected.get(ns, key)
            for tx in model.txs:
                assert reader.tx_seen(tx.txid) == (tx.txid in expected.seen)


def expect_move(model: Model, new_head: Block, result_rolled: list[bytes], result_applied: list[bytes],
                returned: list[Tx]) -> None:
    """Check a ReorgResult against the builder's view, and update the model's head and mempool."""
    old = {b.hash: b for b in model.chain()}
    new = {b.hash: b for b in model.cb.chain_to(new_head)}
    rolled = [b for b in reversed(model.chain()) if b.hash not in new]
    applied = [b for b in model.cb.chain_to(new_head) if b.hash not in old]
    event(f"head move: {len(rolled)} rolled back, {len(applied)} applied")
    assert result_rolled == [b.hash for b in rolled]
    assert result_applied == [b.hash for b in applied]
    applied_txids = {tx.txid for b in applied for tx in b.txs}
    want_returned = [tx.txid for b in reversed(rolled) for tx in b.txs if tx.txid not in applied_txids]
    assert [tx.txid for tx in returned] == want_returned
    model.mempool.difference_update(applied_txids)
    model.mempool.update(want_returned)
    model.head = new_head


@given(st.data())
def test_store_state_equals_replay_of_the_winning_chain(data: st.DataObject) -> None:
    cb = ChainBuilder(n_members=4)
    model = Model(cb)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "store", cb.consortium, "m0", sync=False)
        try:
            steps = data.draw(st.integers(min_value=1, max_value=MAX_STEPS), label="steps")
            for _ in range(steps):
                action = data.draw(st.sampled_from(["extend", "extend", "extend", "switch", "reopen"]))
                if action == "extend":
                    parent = data.draw(st.sampled_from(model.stored), label="parent")
                    seen = cb.state_at(parent).seen
                    reusable = [tx for tx in model.txs if tx.txid not in seen]
                    txs: list[Tx] = []
                    for _ in range(data.draw(st.integers(0, 3), label="n_txs")):
                        reuse: bool = data.draw(st.booleans(), label="reuse a tx from another branch")
                        if reuse and reusable:
                            tx = data.draw(st.sampled_from(reusable))
                            if tx in txs:
                                continue
                        else:
                            ops = data.draw(st.lists(op_strategy, min_size=1, max_size=3), label="ops")
                            tx = cb.tx(data.draw(st.sampled_from(cb.members)), ops)
                            model.txs.append(tx)
                        txs.append(tx)
                    block = cb.block(parent, txs, round=len([b for b in model.stored
                                                             if b.header.prev == parent.hash]))
                    make_head = data.draw(st.booleans(), label="make_head")
                    effects = cb.effects(block) if data.draw(st.booleans(), label="pass effects") else None
                    result = store.add_block(block, cb.sign_all(block, ["m0"]), effects=effects,
                                             make_head=make_head)
                    model.stored.append(block)
                    if make_head:
                        assert result is not None
                        expect_move(model, block, result.rolled_back, result.applied, result.returned_txs)
                    else:
                        assert result is None
                elif action == "switch":
                    target = data.draw(st.sampled_from(model.stored), label="new head")
                    use_cache = data.draw(st.booleans(), label="effects cache")
                    cache = {b.hash: cb.effects(b) for b in model.stored} if use_cache else None
                    result = store.set_head(target.hash, cache)
                    expect_move(model, target, result.rolled_back, result.applied, result.returned_txs)
                else:
                    store.close()
                    store = Store.open(Path(tmp) / "store", cb.consortium, "m0", sync=False)
                check_store(store, model)
            check_readers(store, model)
            assert sorted(h.hash for h in store.headers_iter()) == sorted(b.hash for b in model.stored)
        finally:
            store.close()
