"""Alerts a member must raise (seed 001, protocol steps 2 and 3): what the condition is, and when
to shout about it.

The conditions (:func:`chain_alerts`, :func:`waiting_for`) are pure functions of the block tree
and the times passed in: they decide *what* is wrong and name its cause, so that a person reading
the alert knows whom to call. :class:`AlertBook` decides *when* a condition has lasted long
enough to raise, repeats standing alerts in the log and clears them; the service owns it and
feeds it the conditions with its clock's time, and hands the events it returns
(:class:`AlertEvent`: raised, cleared) to the hooks. Node-local policy, not consensus: members may alert
differently without disagreeing on any block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.chain import BlockTree
from ..core.validate import proposer_for, round_at

log = logging.getLogger("peerdb.node")

ALERT_REPEAT_MS = 60_000
"""A standing alert is logged again this often, so it cannot scroll away unnoticed."""


@dataclass(frozen=True)
class Alert:
    kind: str
    """majority_without_me | minority_chain | double_sign | stalled | peer_down | anchor_pending |
    key_missing | removed | not_signing | settled_conflict | corrupt_data | turn_race"""
    message: str
    subject: str = ""
    """What the alert is about (a member name, a block hash), so repeats can be told apart."""
    details: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)


REMOVED = "removed"
TURN_RACE = "turn_race"
"""The consortium's parameters let a member take the turns of those before it
(:attr:`peerdb.core.consortium.Params.turn_race_problem`): a standing fact until a vote changes them."""
IMMEDIATE = frozenset({"double_sign", REMOVED, TURN_RACE})
"""Kinds raised at once, without waiting for the condition to last: facts on the chain, not
states that may pass."""


def removed_alert(me: str, height: int) -> Alert:
    """This node's member is no longer one: the only alert such a node raises."""
    return Alert(REMOVED, f"{me} was removed from the consortium at height {height}: this node takes no part "
                 "any more, and stops", subject=me, details={"height": height})


def chain_alerts(tree: BlockTree, me: str) -> list[Alert]:
    """Conditions visible in the tree itself: majority without me, minority chain, double-signs."""
    alerts: list[Alert] = []
    heads = tree.heads()
    mine = tree.endorsement_height(me)
    if me not in tree.culprits and me in tree.members_at(tree.best_tip.height) and heads.majority > mine:
        alerts.append(Alert(
            "majority_without_me",
            f"blocks up to height {heads.majority} are endorsed by a majority without {me}'s signature "
            f"(latest height {me} endorses: {mine}); you may be being cheated, or just slow",
            subject=me, details={"majority_height": heads.majority, "my_height": mine}))
    latest = tree.latest_signed(me)
    if latest is not None:
        header = tree.header(latest) if latest in tree else None
        if header is not None and not tree.on_best_chain(latest):
            fork = tree.fork_point(latest)
            alerts.append(Alert(
                "minority_chain",
                f"{me}'s latest signature (height {header.height}, block {latest.hex()[:16]}) is on a fork "
                f"that lost after height {fork.height}; treat the database as not up to date",
                subject=latest.hex(), details={"height": header.height, "fork_height": fork.height}))
        elif header is not None:
            endorsers = tree.endorsers(latest)
            eligible = tree.eligible(header.height)
            if 2 * len(endorsers) <= len(eligible) and header.height > heads.majority:
                competing = [h for h in tree.leaves() if not tree.on_best_chain(h.hash)
                             and tree.fork_point(h.hash).height < header.height]
                if competing:
                    alerts.append(Alert(
                        "minority_chain",
                        f"only {len(endorsers)} of {len(eligible)} members endorse the chain carrying "
                        f"{me}'s signature at height {header.height}, and a competing fork exists",
                        subject=latest.hex(), details={"endorsers": list(endorsers)}))
    for culprit in sorted(tree.culprits):
        alerts.append(Alert("double_sign", f"{culprit} signed two different blocks at one height; "
                            f"its signatures no longer count", subject=culprit))
    return alerts


NOT_SIGNING_BLOCKS = 16
"""Best-chain blocks a connected member may leave unsigned before :func:`not_signing` names it.
An honest member endorses within a block or two of the tip; sixteen is well past a slow
member's lag and still minutes, not hours, at a block a second."""


def not_signing(tree: BlockTree, me: str, peers_up: Callable[[str], bool]) -> list[Alert]:
    """Members who are connected and not excluded but endorse nothing in the last
    NOT_SIGNING_BLOCKS best-chain blocks: withholding signatures, or unable to validate what
    the others sign. While a majority signs without them nothing else shows it (the views
    move), yet unanimity, and so settlement, waits for them."""
    tip = tree.best_tip.height
    alerts = []
    for member in tree.eligible():
        if member == me or not peers_up(member):
            continue
        endorses = tree.endorsement_height(member)
        if tip - endorses > NOT_SIGNING_BLOCKS:
            alerts.append(Alert(
                "not_signing", f"{member} is connected but endorses no block above height {endorses} "
                f"(tip {tip}): it withholds its signatures, or refuses what the others sign "
                f"(look for its objections: `peerdb objections`)",
                subject=member, details={"endorses": endorses, "tip": tip}))
    return alerts


def waiting_for(tree: BlockTree, tip_seen_ms: int, now_ms: int, turn_timeout_ms: int) -> Alert:
    """Why the chain is not moving: whose proposal or whose signatures it waits for."""
    tip = tree.best_tip
    missing = [m for m in tree.eligible() if m not in tree.signers(tip.hash)]
    if tip.height > 0 and missing:
        return Alert("stalled", f"height {tip.height}: block {tip.hash.hex()[:16]} waits for signatures "
                     f"from {', '.join(missing)}", subject=f"{tip.height}",
                     details={"height": tip.height, "missing_signatures": missing})
    round_ = round_at(now_ms - tip_seen_ms, turn_timeout_ms)
    proposer = proposer_for(tree.members_at(tip.height + 1), tip.height + 1, round_)
    return Alert("stalled", f"height {tip.height + 1}: waiting for {proposer}'s proposal, round {round_}",
                 subject=f"{tip.height + 1}", details={"height": tip.height + 1, "round": round_,
                                                       "proposer": proposer})


ALERT_CLEAR_HOLD_MS = 30_000
"""An active alert clears only once its condition has been absent this long; a condition that
comes back within it is the same incident (the alert stays active, nothing is sent again), so
the same cause is never raised twice within 30 s. Why 30 s: it outlasts the network's longest
reconnect backoff (``peerdb.net.config.BACKOFF_MAX``, 30 s), so a peer that drops again before
its redial is one ``peer_down``; it spans ten default turns (3 s), so a chain that moves one
block and stalls again (a lone proposer's heartbeat turn) is one ``stalled``; and a person
hears "cleared" half a minute after the fact, which is soon enough to stop calling a firm."""

ALERT_HISTORY = 100
"""Cleared alerts the book remembers (``GET /v1/alerts``; ``peerdb status`` shows the newest)."""

MOVING_SUBJECT = frozenset({"stalled", "minority_chain"})
"""Kinds whose subject moves while one cause lasts: a stalled chain's awaited height advances
with every heartbeat block, and a member on a losing fork keeps signing new blocks of it. The
book follows these by kind alone, so a moving subject neither clears the alert nor raises a new
one; the alert's message and subject follow the latest condition."""


def incident_key(alert: Alert) -> tuple[str, str]:
    """What one incident of ``alert`` is tracked by: its :attr:`Alert.key`, or its kind alone
    for :data:`MOVING_SUBJECT` kinds."""
    return (alert.kind, "") if alert.kind in MOVING_SUBJECT else alert.key


@dataclass(frozen=True)
class AlertEvent:
    """A step in an alert's life, as hooks (webhook, command) and the log receive it."""

    event: str
    """``raised`` or ``cleared``."""
    alert: Alert
    """The alert (for ``cleared``: as last seen)."""
    since_ms: int
    """When its condition was first seen."""
    at_ms: int
    """When it was raised, or cleared."""
    ended_ms: int | None = None
    """``cleared``: when the condition was last seen (it cleared :data:`ALERT_CLEAR_HOLD_MS` later)."""

    @property
    def kind(self) -> str:
        return self.alert.kind

    @property
    def subject(self) -> str:
        return self.alert.subject

    @property
    def duration_s(self) -> float | None:
        """``cleared``: how long the condition lasted, first seen to last seen."""
        return None if self.ended_ms is None else (self.ended_ms - self.since_ms) / 1000

    def fields(self) -> dict[str, Any]:
        """The event as JSON fields (hooks, JSON log lines)."""
        out: dict[str, Any] = {"event": self.event, "kind": self.kind, "message": self.alert.message,
                               "subject": self.subject, "since_ms": self.since_ms, "at_ms": self.at_ms}
        if self.event == CLEARED:
            out["ended_ms"] = self.ended_ms
            out["duration_s"] = self.duration_s
        return out


RAISED = "raised"
CLEARED = "cleared"


@dataclass
class _Incident:
    alert: Alert
    since_ms: int
    """The condition was first seen."""
    last_seen_ms: int
    raised_ms: int | None = None
    last_logged_ms: int = 0


@dataclass
class AlertBook:
    """Turns alert conditions into raised and cleared alerts, with damping, and logs each step.

    A condition is *raised* once it has lasted ``grace_ms`` (``double_sign`` at once). A raised
    alert is logged again every :data:`ALERT_REPEAT_MS` while it lasts, and *cleared* only once
    its condition has been absent for ``clear_hold_ms`` (:data:`ALERT_CLEAR_HOLD_MS`): a
    condition that flaps stays one alert, raised once and cleared once. Time is passed in.
    """

    grace_ms: int
    clear_hold_ms: int = ALERT_CLEAR_HOLD_MS
    incidents: dict[tuple[str, str], _Incident] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    """Cleared alerts, oldest first, at most :data:`ALERT_HISTORY`."""
    raised_total: dict[str, int] = field(default_factory=dict)
    cleared_total: dict[str, int] = field(default_factory=dict)

    def update(self, conditions: list[Alert], now_ms: int) -> list[AlertEvent]:
        """Feed the conditions seen now; returns the alerts raised and cleared by this step (for
        the hooks), raised ones first in the order of ``conditions``."""
        raised: list[AlertEvent] = []
        seen: set[tuple[str, str]] = set()
        for alert in conditions:
            key = incident_key(alert)
            if key in seen:
                continue  # one incident per key; the first condition describes it
            seen.add(key)
            incident = self.incidents.get(key)
            if incident is None:
                incident = self.incidents[key] = _Incident(alert, now_ms, now_ms)
            incident.alert, incident.last_seen_ms = alert, now_ms
            if incident.raised_ms is None:
                if now_ms - incident.since_ms >= self.grace_ms or alert.kind in IMMEDIATE:
                    incident.raised_ms = incident.last_logged_ms = now_ms
                    event = AlertEvent(RAISED, alert, incident.since_ms, now_ms)
                    self.raised_total[alert.kind] = self.raised_total.get(alert.kind, 0) + 1
                    log.warning("ALERT %s: %s", alert.kind, alert.message, extra={"fields": event.fields()})
                    raised.append(event)
            elif now_ms - incident.last_logged_ms >= ALERT_REPEAT_MS:
                log.warning("ALERT still active: %s: %s", alert.kind, alert.message)
                incident.last_logged_ms = now_ms
        cleared: list[AlertEvent] = []
        for key, incident in list(self.incidents.items()):
            if key in seen:
                continue
            if incident.raised_ms is None:
                del self.incidents[key]  # gone before it lasted the grace: never raised
            elif now_ms - incident.last_seen_ms >= self.clear_hold_ms:
                del self.incidents[key]
                cleared.append(self._clear(incident, now_ms))
        return raised + cleared

    def _clear(self, incident: _Incident, now_ms: int) -> AlertEvent:
        alert = incident.alert
        event = AlertEvent(CLEARED, alert, incident.since_ms, now_ms, ended_ms=incident.last_seen_ms)
        self.cleared_total[alert.kind] = self.cleared_total.get(alert.kind, 0) + 1
        log.warning("alert cleared: %s (%s) after %.1f s", alert.kind, alert.subject, event.duration_s or 0.0,
                    extra={"fields": event.fields()})
        self.history.append({"kind": alert.kind, "subject": alert.subject, "message": alert.message,
                             "since_ms": incident.since_ms, "raised_ms": incident.raised_ms,
                             "ended_ms": incident.last_seen_ms, "cleared_ms": now_ms,
                             "duration_s": event.duration_s})
        del self.history[:-ALERT_HISTORY]
        return event

    def active(self) -> list[_Incident]:
        return [i for i in self.incidents.values() if i.raised_ms is not None]

    def snapshot(self) -> list[dict[str, Any]]:
        """The active (raised, not yet cleared) alerts: ``since_ms`` when the condition was first
        seen, ``raised_ms`` when it was raised, ``last_seen_ms`` when it was last seen (older
        than now while the clear hold runs)."""
        return [{"kind": i.alert.kind, "message": i.alert.message, "subject": i.alert.subject,
                 "since_ms": i.since_ms, "raised_ms": i.raised_ms, "last_seen_ms": i.last_seen_ms,
                 "details": i.alert.details} for i in self.active()]

    def recent(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` most recently cleared alerts, newest first."""
        return self.history[::-1][:n]
