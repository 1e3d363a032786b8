"""An alert's life (peerdb/node/alerts.py ``AlertBook``): raised once its condition has lasted the
grace, cleared only once the condition has been absent for ``ALERT_CLEAR_HOLD_MS``, and never
raised or cleared twice for one incident however its condition flaps, because every raise and
clear reaches the operator's webhook or command, and a hook that fires every few seconds is a
hook people stop reading.

The book is pure (time passed in); the cluster tests drive it through the service's alert loop
and hook on four (or three) real engines under the autojump clock, so a 60 s outage takes no
wall-clock time.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from peerdb.node.alerts import (
    ALERT_CLEAR_HOLD_MS,
    ALERT_HISTORY,
    CLEARED,
    RAISED,
    Alert,
    AlertBook,
    AlertEvent,
)
from tests.helpers.node_harness import Cluster

GRACE = 1000
PEER_D = Alert("peer_down", "peer firm-d is not connected", subject="firm-d")


def steps(book: AlertBook, timeline: list[tuple[int, list[Alert]]]) -> list[tuple[int, str, str, str]]:
    """Feed (time, conditions) steps; (time, event, kind, subject) of every event."""
    out: list[tuple[int, str, str, str]] = []
    for now, conditions in timeline:
        out.extend((now, e.event, e.kind, e.subject) for e in book.update(conditions, now))
    return out


def test_a_condition_is_raised_once_it_lasted_the_grace() -> None:
    book = AlertBook(grace_ms=GRACE)
    assert steps(book, [(0, [PEER_D]), (500, [PEER_D]), (1000, [PEER_D]), (1500, [PEER_D])]) == \
        [(1000, RAISED, "peer_down", "firm-d")]
    [active] = book.snapshot()
    assert active["since_ms"] == 0 and active["raised_ms"] == 1000


def test_a_condition_shorter_than_the_grace_is_never_raised_nor_cleared() -> None:
    book = AlertBook(grace_ms=GRACE)
    assert steps(book, [(0, [PEER_D]), (500, []), (ALERT_CLEAR_HOLD_MS + 1000, [])]) == []
    assert book.snapshot() == [] and book.history == []


def test_clearing_waits_for_the_hold_and_reports_how_long_the_condition_lasted() -> None:
    book = AlertBook(grace_ms=GRACE)
    events: list[AlertEvent] = []
    for now, conditions in [(0, [PEER_D]), (1000, [PEER_D]), (5000, [PEER_D]), (6000, []),
                            (5000 + ALERT_CLEAR_HOLD_MS - 1, []), (5000 + ALERT_CLEAR_HOLD_MS, [])]:
        events.extend(book.update(conditions, now))
    raised, cleared = events
    assert (raised.event, cleared.event) == (RAISED, CLEARED)
    assert cleared.at_ms == 5000 + ALERT_CLEAR_HOLD_MS  # not a moment before the hold ran out
    assert (cleared.since_ms, cleared.ended_ms, cleared.duration_s) == (0, 5000, 5.0)
    assert cleared.fields()["duration_s"] == 5.0 and "duration_s" not in raised.fields()
    assert book.snapshot() == []
    [past] = book.history
    assert past["kind"] == "peer_down" and past["raised_ms"] == 1000 and past["cleared_ms"] == cleared.at_ms


def test_a_flapping_condition_stays_one_alert() -> None:
    """Present 2 s, absent 2 s, for ten minutes: raised once, and cleared once, after it stops."""
    book = AlertBook(grace_ms=GRACE)
    timeline = [(t, [PEER_D] if (t // 2000) % 2 == 0 else []) for t in range(0, 600_000, 200)]
    timeline += [(600_000 + t, []) for t in range(0, ALERT_CLEAR_HOLD_MS + 1000, 200)]
    events = steps(book, timeline)
    assert [e[1] for e in events] == [RAISED, CLEARED]


def test_a_stalled_chain_whose_awaited_height_moves_is_one_alert() -> None:
    """Heartbeat blocks move the stalled height (the subject); the incident is the stall."""
    book = AlertBook(grace_ms=GRACE)
    timeline = [(t, [Alert("stalled", f"height {10 + t // 3000}: waiting for firm-b's proposal",
                           subject=str(10 + t // 3000))]) for t in range(0, 60_000, 200)]
    events = steps(book, timeline)
    assert [e[1:] for e in events] == [(RAISED, "stalled", "10")]
    [active] = book.snapshot()
    assert active["subject"] == "29" and "height 29" in active["message"]  # follows the latest condition
    events = steps(book, [(60_000 + ALERT_CLEAR_HOLD_MS, [])])
    assert [e[1:] for e in events] == [(CLEARED, "stalled", "29")]


def test_different_subjects_of_a_fixed_kind_are_separate_alerts() -> None:
    book = AlertBook(grace_ms=GRACE)
    peer_c = Alert("peer_down", "peer firm-c is not connected", subject="firm-c")
    events = steps(book, [(0, [PEER_D]), (1000, [PEER_D, peer_c]), (2000, [PEER_D, peer_c])])
    assert [e[1:] for e in events] == [(RAISED, "peer_down", "firm-d"), (RAISED, "peer_down", "firm-c")]
    assert book.raised_total == {"peer_down": 2}


def test_a_double_sign_is_raised_at_once() -> None:
    book = AlertBook(grace_ms=GRACE)
    events = steps(book, [(0, [Alert("double_sign", "firm-c signed two blocks", subject="firm-c")])])
    assert [e[1:] for e in events] == [(RAISED, "double_sign", "firm-c")]


def test_a_new_outage_after_the_clear_is_a_new_alert() -> None:
    book = AlertBook(grace_ms=GRACE)
    quiet: list[tuple[int, list[Alert]]] = [(t, []) for t in range(2000, 2000 + ALERT_CLEAR_HOLD_MS + 1, 1000)]
    again = [(t, [PEER_D]) for t in range(40_000, 42_000, 500)]
    events = steps(book, [(0, [PEER_D]), (1000, [PEER_D]), *quiet, *again])
    assert [e[1] for e in events] == [RAISED, CLEARED, RAISED]
    assert book.raised_total == {"peer_down": 2} and book.cleared_total == {"peer_down": 1}


def test_history_keeps_the_newest_cleared_alerts() -> None:
    book = AlertBook(grace_ms=0, clear_hold_ms=0)
    for i in range(ALERT_HISTORY + 5):
        book.update([Alert("peer_down", "m", subject=f"m{i}")], 2 * i)
        book.update([], 2 * i + 1)
    assert len(book.history) == ALERT_HISTORY
    assert [h["subject"] for h in book.recent(2)] == [f"m{ALERT_HISTORY + 4}", f"m{ALERT_HISTORY + 3}"]


# --- through the service's alert loop and hook ------------------------------------------------------

def recorder(log: list[AlertEvent]):
    async def hook(event: AlertEvent) -> None:
        log.append(event)
    return hook


def of(events: list[AlertEvent], kind: str, subject: str | None = None) -> list[str]:
    return [e.event for e in events if e.kind == kind and (subject is None or e.subject == subject)]


async def test_a_single_outage_raises_once_and_clears_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(tmp_path)
    events: list[AlertEvent] = []
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        cluster.nodes["firm-a"].service.on_alert = recorder(events)
        await cluster.crash("firm-d")
        await cluster.wait_until(lambda: of(events, "peer_down", "firm-d") == [RAISED], what="peer_down raised")
        await trio.sleep(60)  # a minute of outage: the hook hears nothing more
        assert of(events, "peer_down", "firm-d") == [RAISED]
        await cluster.start_node("firm-d")
        await cluster.wait_until(lambda: of(events, "peer_down", "firm-d") == [RAISED, CLEARED],
                                 what="peer_down cleared")
        await trio.sleep(2 * ALERT_CLEAR_HOLD_MS / 1000)
        assert of(events, "peer_down", "firm-d") == [RAISED, CLEARED]
        [cleared] = [e for e in events if e.event == CLEARED]
        assert cleared.duration_s is not None and cleared.duration_s >= 60
        assert [h["subject"] for h in cluster.nodes["firm-a"].service.alerts.history] == ["firm-d"]
        await cluster.close()
        nursery.cancel_scope.cancel()


async def test_two_of_three_members_down_is_one_stalled_alert_until_they_return(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The failure an operator saw: with two of three members down, the live member's heartbeat
    blocks moved the awaited height, and every move raised and cleared ``stalled`` again."""
    cluster = Cluster(tmp_path, names=("firm-a", "firm-b", "firm-c"))
    events: list[AlertEvent] = []
    async with trio.open_nursery() as nursery:
        await cluster.start(nursery)
        a = cluster.nodes["firm-a"]
        await cluster.wait_until(lambda: a.engine.heads().majority >= 2, what="a first majority")
        a.service.on_alert = recorder(events)
        await cluster.crash("firm-b")
        await cluster.crash("firm-c")
        await cluster.wait_until(lambda: of(events, "stalled") == [RAISED], what="stalled raised")
        stalled_at = a.engine.tree.best_tip.height
        await trio.sleep(120)
        assert a.engine.tree.best_tip.height > stalled_at  # the awaited height did move meanwhile
        assert of(events, "stalled") == [RAISED]
        assert of(events, "peer_down", "firm-b") == [RAISED] and of(events, "peer_down", "firm-c") == [RAISED]
        await cluster.start_node("firm-b")
        await cluster.start_node("firm-c")
        await cluster.wait_until(lambda: of(events, "stalled") == [RAISED, CLEARED], what="stalled cleared")
        await cluster.wait_until(lambda: of(events, "peer_down") == [RAISED, RAISED, CLEARED, CLEARED],
                                 what="both peer_down cleared")
        await trio.sleep(2 * ALERT_CLEAR_HOLD_MS / 1000)
        assert of(events, "stalled") == [RAISED, CLEARED]
        await cluster.close()
        nursery.cancel_scope.cancel()
