"""The follower registry (peerdb/node/waiters.py) against a reference that recomputes every
follower's views from the chain after each change, for any sequence of blocks, head moves,
reorganisations, new followers and followers giving up."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given
from hypothesis import strategies as st

from peerdb.core.chain import View, ViewHeads
from peerdb.node.waiters import LEVELS, STALE_COMPACT_MIN, Follower, FollowerBook

TXIDS = [bytes([i]) * 32 for i in range(6)]


@dataclass(frozen=True)
class Location:
    height: int
    block_hash: bytes


@dataclass(frozen=True)
class FakeTx:
    txid: bytes


@dataclass(frozen=True)
class FakeBlock:
    height: int
    hash: bytes
    txs: tuple[FakeTx, ...]


@dataclass
class Chain:
    """The best chain as the store sees it: blocks of transaction ids, and the view heads."""

    blocks: list[FakeBlock] = field(default_factory=list)
    heads: ViewHeads = ViewHeads(0, 0, 0, 0, 0)
    made: int = 0

    where: dict[bytes, Location] = field(default_factory=dict)

    def tx_location(self, txid: bytes) -> Location | None:
        return self.where.get(txid)

    def append(self, txids: list[bytes]) -> FakeBlock:
        self.made += 1
        block = FakeBlock(len(self.blocks) + 1, self.made.to_bytes(32, "big"),
                          tuple(FakeTx(t) for t in txids if self.tx_location(t) is None))
        self.blocks.append(block)
        for tx in block.txs:
            self.where[tx.txid] = Location(block.height, block.hash)
        self.heads = ViewHeads(len(self.blocks), self.heads.majority, self.heads.unanimous_signed,
                               self.heads.unanimous, 0)
        return block

    def clamp(self) -> None:
        t = len(self.blocks)
        m = min(self.heads.majority, t)
        us = min(self.heads.unanimous_signed, m)
        self.heads = ViewHeads(t, m, us, min(self.heads.unanimous, us), 0)


def expected_level(follower_txids: tuple[bytes, ...], chain: Chain) -> int:
    heights = [chain.tx_location(t) for t in follower_txids]
    if any(h is None for h in heights):
        return -1
    top = max(h.height for h in heights if h is not None)
    heads = (chain.heads.tentative, chain.heads.majority, chain.heads.unanimous_signed, chain.heads.unanimous)
    return max((i for i, h in enumerate(heads) if h >= top), default=-1)


OPS = st.lists(st.tuples(st.sampled_from(("follow", "block", "raise", "reorg", "cancel")),
                         st.integers(0, 2**16)), max_size=60)


@given(OPS)
@example([("follow", 1), ("block", 0b111111), ("raise", 3), ("reorg", 1), ("block", 1), ("raise", 7)])
@example([("follow", 0), ("cancel", 0), ("block", 63), ("raise", 63)])
@example([("follow", 65), ("block", 1), ("block", 0), ("raise", 296)])  # heads jump past the goal
def test_followers_are_told_exactly_the_views_the_chain_shows(ops: list[tuple[str, int]]) -> None:
    chain = Chain()
    book = FollowerBook()
    told: dict[int, list[View]] = {}
    expected: dict[int, list[View]] = {}
    followers: list[Follower] = []
    live: set[int] = set()

    def check() -> None:
        for i in sorted(live):
            follower = followers[i]
            level = expected_level(follower.txids, chain)
            for view in LEVELS[:min(level, follower.goal) + 1]:  # told up to the view it waits for
                if view not in expected[i]:
                    expected[i].append(view)
            if level >= follower.goal:
                live.discard(i)
                assert follower.done.is_set()
            else:
                assert not follower.done.is_set()
        assert told == expected

    for op, n in ops:
        if op == "follow":
            txids = tuple(t for k, t in enumerate(TXIDS) if n >> k & 1) or (TXIDS[n % len(TXIDS)],)
            i = len(followers)
            told[i], expected[i] = [], []
            def tell(_f: Follower, view: View, _height: int, i: int = i) -> None:
                told[i].append(view)
            follower = Follower(txids, (n >> 6) % len(LEVELS), tell)
            followers.append(follower)
            live.add(i)
            book.add(follower, chain, chain.heads)
        elif op == "block":
            block = chain.append([t for k, t in enumerate(TXIDS) if n >> k & 1])
            book.update([block], False, chain, chain.heads)
        elif op == "raise":
            t = chain.heads.tentative
            m = min(t, chain.heads.majority + n % 3)
            us = min(m, chain.heads.unanimous_signed + (n >> 2) % 3)
            u = min(us, chain.heads.unanimous + (n >> 4) % 2)
            chain.heads = ViewHeads(t, m, us, u, 0)
            book.update([], False, chain, chain.heads)
        elif op == "reorg":
            del chain.blocks[max(0, len(chain.blocks) - 1 - n % 3):]
            chain.where = {tx.txid: Location(b.height, b.hash) for b in chain.blocks for tx in b.txs}
            chain.clamp()
            book.update([], True, chain, chain.heads)
        elif op == "cancel" and live:
            i = sorted(live)[n % len(live)]
            book.cancel(followers[i])
            live.discard(i)
            assert followers[i].done.is_set()
        check()
    for i in live:
        book.cancel(followers[i])
    assert book.idle()


def test_a_new_follower_is_told_at_once_what_is_already_true() -> None:
    chain = Chain()
    block = chain.append(TXIDS[:2])
    chain.heads = ViewHeads(1, 1, 0, 0, 0)
    told: list[tuple[View, int]] = []
    follower = Follower(tuple(TXIDS[:2]), LEVELS.index(View.UNANIMOUS_SIGNED),
                        lambda _f, view, height: told.append((view, height)))
    book = FollowerBook()
    book.add(follower, chain, chain.heads)
    assert told == [(View.TENTATIVE, block.height), (View.MAJORITY, block.height)]
    assert not follower.done.is_set()
    chain.heads = ViewHeads(1, 1, 1, 0, 0)
    book.update([], False, chain, chain.heads)
    assert told[-1] == (View.UNANIMOUS_SIGNED, 1) and follower.done.is_set() and book.idle()


def test_followers_that_give_up_on_a_view_that_never_comes_leave_bounded_memory() -> None:
    """Clients waiting for `unanimous` on a consortium that does not anchor time out and give
    up; the heap entries they leave are compacted away."""
    chain = Chain()
    book = FollowerBook()
    for round_ in range(5):
        for i in range(STALE_COMPACT_MIN):
            txid = (round_ * STALE_COMPACT_MIN + i).to_bytes(32, "big")
            block = chain.append([txid])
            chain.heads = ViewHeads(block.height, block.height, block.height, 0, 0)
            follower = Follower((txid,), LEVELS.index(View.UNANIMOUS))
            book.add(follower, chain, chain.heads)
            assert follower.reached == [View.TENTATIVE, View.MAJORITY, View.UNANIMOUS_SIGNED]
            book.cancel(follower)
        assert book.idle()
        assert book.queued() <= 2 * STALE_COMPACT_MIN + 1
