"""Alerts a member must raise (seed 001, protocol steps 2 and 3): what the condition is, and when
to shout about it.

The conditions (:func:`chain_alerts`, :func:`waiting_for`) are pure functions of the block tree
and the times passed in: they decide *what* is wrong and name its cause, so that a person reading
the alert knows whom to call. :class:`AlertBook` decides *when* a condition has lasted long
enough to raise, repeats standing alerts in the log and clears them; the service owns it and
feeds it the conditions with its clock's time. Node-local policy, not consensus: members may
alert differently without disagreeing on any block.
"""

from __future__ import annotations

import logging
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
    key_missing | removed"""
    message: str
    subject: str = ""
    """What the alert is about (a member name, a block hash), so repeats can be told apart."""
    details: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)


REMOVED = "removed"
IMMEDIATE = frozenset({"double_sign", REMOVED})
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


@dataclass
class AlertBook:
    """Debounces alert conditions into raised alerts, repeats and clears them, and logs each step."""

    grace_ms: int
    first_seen: dict[tuple[str, str], int] = field(default_factory=dict)
    active: dict[tuple[str, str], tuple[Alert, int, int]] = field(default_factory=dict)  # alert, since, last log
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, conditions: list[Alert], now_ms: int) -> list[Alert]:
        """Returns alerts newly raised (for webhooks/commands)."""
        raised = []
        keys = {a.key for a in conditions}
        for key in list(self.first_seen):
            if key not in keys:
                del self.first_seen[key]
        for key in list(self.active):
            if key not in keys:
                alert, since, _ = self.active.pop(key)
                log.warning("alert cleared: %s (%s) after %.1f s", alert.kind, alert.subject, (now_ms - since) / 1000)
                self.history.append({"kind": alert.kind, "subject": alert.subject, "cleared_ms": now_ms})
        for alert in conditions:
            since = self.first_seen.setdefault(alert.key, now_ms)
            if alert.key in self.active:
                _, since_raised, last = self.active[alert.key]
                if now_ms - last >= ALERT_REPEAT_MS:
                    log.warning("ALERT still active: %s: %s", alert.kind, alert.message)
                    last = now_ms
                self.active[alert.key] = (alert, since_raised, last)
            elif now_ms - since >= self.grace_ms or alert.kind in IMMEDIATE:
                self.active[alert.key] = (alert, since, now_ms)
                log.warning("ALERT %s: %s", alert.kind, alert.message)
                raised.append(alert)
        del self.history[:-100]
        return raised

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"kind": a.kind, "message": a.message, "subject": a.subject, "since_ms": since,
                 "details": a.details} for a, since, _ in self.active.values()]
