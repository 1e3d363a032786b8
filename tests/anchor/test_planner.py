"""The anchoring state machine, pure: no node, no clock."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdb.anchor.anchortx import ANCHOR_TAG
from peerdb.anchor.planner import (
    AnchorItem,
    AnchorPlanner,
    AnchorPolicy,
    BatchState,
    Observation,
    PlannerError,
)
from peerdb.anchor.proof import batch_root
from peerdb.core.errors import ConfigError

MIN = 60_000


def items(lo: int, hi: int) -> list[AnchorItem]:
    return [AnchorItem(h, hashlib.sha256(b"block%d" % h).digest()) for h in range(lo, hi + 1)]


def planner(**policy: int | None) -> AnchorPlanner:
    defaults: dict[str, int | None] = dict(interval_ms=10 * MIN, confirmations=3, max_fee_sat=1000,
                                           retry_backoff_ms=1000, max_retry_backoff_ms=8000, drop_grace_ms=0)
    defaults.update(policy)
    return AnchorPlanner(AnchorPolicy(**defaults))  # type: ignore[arg-type]


def publish(p: AnchorPlanner, now: int, txid: str = "aa" * 32) -> int:
    plan = p.start_batch(now)
    p.published(plan.batch_id, txid, b"raw", 250, now)
    return plan.batch_id


def test_nothing_to_do_when_nothing_waits() -> None:
    p = planner()
    assert not p.due(0)
    assert p.status(0).state == "idle"
    assert p.next_due_ms(0) is None


def test_first_anchor_goes_out_at_once_then_one_per_interval() -> None:
    p = planner()
    p.add(items(1, 3), 0)
    assert p.due(0)
    plan = p.start_batch(0)
    assert plan.block_hashes == tuple(i.block_hash for i in items(1, 3))
    assert plan.payload == ANCHOR_TAG + batch_root(plan.block_hashes) == ANCHOR_TAG + plan.root
    assert not p.due(0)  # publishing in progress
    p.published(plan.batch_id, "aa" * 32, b"raw", 250, 5)
    p.add(items(4, 4), 6)
    assert not p.due(5 + 10 * MIN - 1)
    assert p.next_due_ms(6) == 5 + 10 * MIN
    assert p.due(5 + 10 * MIN)


def test_one_transaction_per_interval_whatever_the_block_rate() -> None:
    p = planner()
    published: list[int] = []
    height = 0
    for now in range(0, 60 * MIN, 100):  # ten blocks a second for an hour
        p.add(items(height, height), now)
        height += 1
        if p.due(now):
            plan = p.start_batch(now)
            p.published(plan.batch_id, f"{len(published):064x}", b"raw", 250, now)
            published.append(len(plan.items))
    assert len(published) == 6  # at 0, 10, 20, 30, 40, 50 min
    assert published[0] == 1 and all(n == 6000 for n in published[1:])


def test_interval_in_blocks() -> None:
    p = planner(interval_ms=None, interval_blocks=5)
    p.add(items(1, 4), 0)
    assert not p.due(10**9)
    p.add(items(5, 5), 1)
    assert p.due(1)
    assert len(p.start_batch(1).items) == 5


def test_seconds_or_blocks_whichever_comes_first() -> None:
    p = planner(interval_ms=10 * MIN, interval_blocks=100)
    p.add(items(1, 1), 0)
    publish(p, 0)
    p.add(items(2, 101), 1)
    assert p.due(1)  # 100 blocks waiting before the ten minutes are up


def test_confirmation_depth_then_delivery() -> None:
    p = planner()
    p.add(items(100, 140), 0)
    bid = publish(p, 0)
    assert p.observe(bid, confirmations=0, in_mempool=True, now_ms=MIN) is Observation.UNCHANGED
    assert p.observe(bid, confirmations=2, in_mempool=False, now_ms=2 * MIN) is Observation.UNCHANGED
    assert p.status(25 * MIN).lines() == [
        f"anchor for heights 100-140 pending 25 min (2/3 confirmations, tx {'aa' * 32})"
    ]
    assert p.observe(bid, confirmations=3, in_mempool=False, now_ms=3 * MIN) is Observation.CONFIRMED
    assert [b.batch_id for b in p.confirmed()] == [bid]
    p.delivered(bid, 4 * MIN)
    status = p.status(5 * MIN)
    assert status.state == "idle" and status.batches == ()
    assert status.last_anchored is not None and status.last_anchored.heights == (100, 140)


def test_reorg_that_drops_the_tx_re_anchors_at_once() -> None:
    p = planner()
    p.add(items(1, 2), 0)
    first = publish(p, 0, "aa" * 32)
    p.observe(first, confirmations=1, in_mempool=False, now_ms=MIN)
    p.add(items(3, 3), MIN)
    # reorg: the tx is neither in the best chain nor in the mempool
    assert p.observe(first, confirmations=0, in_mempool=False, now_ms=2 * MIN) is Observation.DROPPED
    status = p.status(2 * MIN)
    assert status.state == "failed"
    assert status.reason == f"bitcoin tx {'aa' * 32} dropped from the best chain and the mempool; re-anchoring"
    assert p.due(2 * MIN)  # no waiting for the interval or a backoff
    plan = p.start_batch(2 * MIN)
    assert [i.height for i in plan.items] == [1, 2, 3]
    p.published(plan.batch_id, "bb" * 32, b"raw", 250, 2 * MIN)
    batch = p.batch(plan.batch_id)
    assert batch is not None and batch.attempts == 2 and batch.first_queued_ms == 0


def test_a_missing_tx_gets_a_grace_period_before_re_anchoring() -> None:
    p = planner(drop_grace_ms=MIN)
    p.add(items(1, 1), 0)
    bid = publish(p, 0)
    # e.g. mined a moment ago, but the wallet has not caught up with the block yet
    assert p.observe(bid, confirmations=0, in_mempool=False, now_ms=1000) is Observation.UNCHANGED
    assert p.status(1000).reason == (f"bitcoin tx {'aa' * 32} is in neither the best chain nor the mempool; "
                                     "re-anchoring if still missing after 60 s")
    assert p.observe(bid, confirmations=1, in_mempool=False, now_ms=2000) is Observation.UNCHANGED
    assert p.status(2000).reason is None
    assert p.observe(bid, confirmations=0, in_mempool=False, now_ms=3000) is Observation.UNCHANGED
    assert p.observe(bid, confirmations=0, in_mempool=False, now_ms=3000 + MIN - 1) is Observation.UNCHANGED
    assert p.observe(bid, confirmations=0, in_mempool=False, now_ms=3000 + MIN) is Observation.DROPPED


def test_conflicted_tx_counts_as_dropped() -> None:
    p = planner()
    p.add(items(1, 1), 0)
    bid = publish(p, 0)
    assert p.observe(bid, confirmations=-1, in_mempool=False, now_ms=1) is Observation.DROPPED


def test_reorg_after_depth_but_before_delivery_goes_back_to_pending() -> None:
    p = planner()
    p.add(items(1, 1), 0)
    bid = publish(p, 0)
    p.observe(bid, confirmations=3, in_mempool=False, now_ms=1)
    assert p.observe(bid, confirmations=1, in_mempool=False, now_ms=2) is Observation.UNCONFIRMED
    assert p.confirmed() == []
    with pytest.raises(PlannerError, match="is pending, expected confirmed"):
        p.delivered(bid, 3)


def test_fee_over_budget_fails_with_reason_and_backs_off() -> None:
    p = planner()
    p.add(items(7, 7), 0)
    plan = p.start_batch(0)
    p.publish_failed(plan.batch_id, "fee 3000 sat over budget 1000", 0)
    status = p.status(0)
    assert status.state == "failed" and status.reason == "fee 3000 sat over budget 1000"
    assert status.lines() == ["anchor for height 7 failed 0 s: fee 3000 sat over budget 1000 (retry in 1 s)"]
    p.add(items(8, 8), 1)
    assert not p.due(999)  # backoff holds new anchors back too
    assert p.next_due_ms(1) == 1000
    retry = p.start_batch(1000)
    assert [i.height for i in retry.items] == [7, 8]
    p.publish_failed(retry.batch_id, "fee 3000 sat over budget 1000", 1000)
    assert not p.due(2999) and p.due(3000)  # doubled


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = AnchorPolicy(retry_backoff_ms=1000, max_retry_backoff_ms=5000)
    assert [policy.backoff_ms(a) for a in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]


def test_unreachable_node_keeps_a_pending_batch_visible() -> None:
    p = planner()
    p.add(items(1, 1), 0)
    bid = publish(p, 0)
    p.observe_failed(bid, "cannot check anchor tx: connection refused", MIN)
    status = p.status(2 * MIN)
    assert status.state == "pending" and status.reason == "cannot check anchor tx: connection refused"
    assert status.lines()[0].endswith("pending 2 min (0/3 confirmations, tx " + "aa" * 32 + "): "
                                      "cannot check anchor tx: connection refused")
    p.observe(bid, confirmations=1, in_mempool=False, now_ms=3 * MIN)
    assert p.status(3 * MIN).reason is None  # cleared once the node answers


def test_waiting_blocks_are_shown() -> None:
    p = planner()
    p.add(items(1, 1), 0)
    publish(p, 0)
    p.add(items(2, 9), MIN)
    status = p.status(4 * MIN)
    assert status.waiting_since_ms == MIN
    assert status.lines()[-1] == "heights 2-9 waiting for the next anchor 3 min"


def test_duplicates_are_ignored() -> None:
    p = planner()
    assert p.add(items(1, 3), 0) == 3
    assert p.add(items(2, 4), 0) == 1
    bid = publish(p, 0)
    assert p.add(items(1, 4), 1) == 0  # all in the live batch
    p.observe(bid, confirmations=3, in_mempool=False, now_ms=2)
    p.delivered(bid, 3)
    assert p.add(items(5, 5), 4) == 1


def test_misuse_is_a_planner_error() -> None:
    p = planner()
    with pytest.raises(PlannerError, match="no anchor is due"):
        p.start_batch(0)
    with pytest.raises(PlannerError, match="unknown"):
        p.published(99, "aa" * 32, b"", 1, 0)
    p.add(items(1, 1), 0)
    plan = p.start_batch(0)
    with pytest.raises(PlannerError, match="is publishing, expected pending/confirmed"):
        p.observe(plan.batch_id, confirmations=1, in_mempool=False, now_ms=0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(interval_ms=None, interval_blocks=None), dict(interval_ms=-1), dict(interval_blocks=0),
     dict(confirmations=0), dict(max_fee_sat=-1), dict(retry_backoff_ms=10, max_retry_backoff_ms=5),
     dict(drop_grace_ms=-1)],
)
def test_bad_policies_are_config_errors(kwargs: dict[str, int | None]) -> None:
    with pytest.raises(ConfigError, match="anchor"):
        AnchorPolicy(**kwargs)  # type: ignore[arg-type]


ACTIONS = st.lists(
    st.tuples(st.sampled_from(["add", "tick", "publish", "fail", "observe", "drop", "deliver"]),
              st.integers(0, 5)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_no_block_hash_is_ever_lost_or_doubled(actions: list[tuple[str, int]]) -> None:
    """Whatever happens, every block hash is in exactly one place until its proof is delivered."""
    p = planner(interval_ms=1000)
    now, next_height = 0, 0
    delivered: list[int] = []
    for action, arg in actions:
        now += 100
        if action == "add":
            p.add(items(next_height, next_height + arg), now)
            next_height += arg + 1
        elif action == "tick":
            now += arg * 1000
        elif action in ("publish", "fail") and p.due(now):
            plan = p.start_batch(now)
            if action == "publish":
                p.published(plan.batch_id, f"{plan.batch_id:064x}", b"raw", 1, now)
            else:
                p.publish_failed(plan.batch_id, "node down", now)
        elif action in ("observe", "drop") and p.tracked():
            batch = p.tracked()[arg % len(p.tracked())]
            p.observe(batch.batch_id, confirmations=0 if action == "drop" else arg, in_mempool=False, now_ms=now)
        elif action == "deliver" and p.confirmed():
            batch = p.confirmed()[0]
            delivered += [i.height for i in batch.items]
            p.delivered(batch.batch_id, now)
        status = p.status(now)
        live = [i.height for b in status.batches for i in b.items] + [i.height for i in status.waiting]
        assert sorted(live + delivered) == list(range(next_height))
        assert all(b.state in BatchState for b in status.batches)
        assert sum(b.state is BatchState.PUBLISHING for b in status.batches) <= 1
