"""Governance state lives in the key/value state, so the LMDB store persists it, serves it on any
branch, and undoes and re-applies it on a reorg with everything else (no store change needed)."""

from __future__ import annotations

from pathlib import Path


from peerdb.core.governance import PASSED, PENDING, proposal_key, read_proposal
from peerdb.core.membership import CHANGES_KEY, ConsortiumState
from peerdb.core.model import GOV_NAMESPACE, Block
from peerdb.core.proposals import RemoveMembers
from peerdb.core.state import Effects
from peerdb.store import Store

from tests.helpers.governance import Chain

ALL = ("firm-a", "firm-b", "firm-c", "firm-d")


def governed_with_fork() -> tuple[Chain, Chain, int, bytes]:
    """A chain where removing firm-d passes, and a fork from before the deciding vote."""
    chain = Chain()
    proposal = chain.propose("firm-a", RemoveMembers(("firm-d",)))
    chain.vote(["firm-a", "firm-b"], proposal)
    fork_at = chain.height
    fork = Chain(chain.consortium)
    for block in chain.blocks:
        fork.add(block)
    chain.vote(["firm-c"], proposal)
    for _ in range(4):
        chain.step()
    for _ in range(3):
        fork.step(time_ms=fork.next_time() + 1)  # different times: different blocks
    return chain, fork, fork_at, proposal.id


def store_all(store: Store, chain: Chain) -> dict[bytes, Effects]:
    cache = {}
    for block, effects in zip(chain.blocks, chain.effects):
        if not store.has_block(block.hash):
            store.add_block(block, (), effects=effects, make_head=False)
        cache[block.hash] = effects
    return cache


def head_state(store: Store, chain: Chain) -> ConsortiumState:
    with store.state_reader_at(store.head().hash) as reader:
        return ConsortiumState.load(chain.consortium, reader)


def test_store_keeps_and_reorgs_governance(tmp_path: Path) -> None:
    chain, fork, fork_at, pid = governed_with_fork()
    with Store.open(tmp_path / "a", chain.consortium, "firm-a", sync=False) as store:
        cache = store_all(store, chain) | store_all(store, fork)
        store.set_head(chain.tip.hash, cache)
        assert head_state(store, chain).member_epochs() == chain.cs().member_epochs()
        value, _height = store.get(GOV_NAMESPACE, proposal_key(pid))
        assert value == chain.state.get(GOV_NAMESPACE, proposal_key(pid))
        assert [k for k, _v, _h in store.scan(GOV_NAMESPACE, "proposal/")] == [proposal_key(pid)]
        record = read_proposal(_Get(store), pid)
        assert record is not None and record.status == PASSED
        # the losing branch never passed it: a reorg undoes the change with everything else
        store.set_head(fork.tip.hash, cache)
        assert head_state(store, fork).changes == ()
        record = read_proposal(_Get(store), pid)
        assert record is not None and record.status == PENDING
        assert store.get(GOV_NAMESPACE, CHANGES_KEY)[0] is None
        # any branch can be read without moving the head
        with store.state_reader_at(chain.tip.hash, cache) as reader:
            assert ConsortiumState.load(chain.consortium, reader).members_at(chain.height) == ALL[:3]
        store.set_head(chain.tip.hash, cache)
        assert head_state(store, chain).members_at(chain.height) == ALL[:3]
        # history: the state as of the fork height, before the deciding vote
        value, _ = store.get(GOV_NAMESPACE, CHANGES_KEY, at_height=fork_at)
        assert value is None
    assert fork_at < chain.height


def test_reorg_without_cached_effects_recomputes_governance_blocks(tmp_path: Path) -> None:
    chain, fork, _fork_at, _pid = governed_with_fork()
    with Store.open(tmp_path / "a", chain.consortium, "firm-a", sync=False) as store:
        store_all(store, fork)
        store_all(store, chain)
        store.set_head(fork.tip.hash, store_all(store, fork))
        store.set_head(chain.tip.hash)  # recomputes the winning branch's effects
        assert head_state(store, chain).members_at(chain.height) == ALL[:3]


class _Get:
    """The store's head state as a governance reader."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.store.get(namespace, key)[0]


def test_blocks_round_trip_through_the_store(tmp_path: Path) -> None:
    chain, _fork, _, _pid = governed_with_fork()
    with Store.open(tmp_path / "a", chain.consortium, "firm-a", sync=False) as store:
        store_all(store, chain)
        for block in chain.blocks:
            stored = store.block(block.hash)
            assert isinstance(stored, Block) and stored.raw == block.raw
