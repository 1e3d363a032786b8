"""Liveness and readiness of a node, as ``/healthz`` and ``/readyz`` answer them.

*Healthy* (``/healthz``): the process runs and its periodic loops go round. A loop that has
not turned for :data:`LOOP_STALE_HEARTBEATS` heartbeats is stuck (an engine call holding the
lock for that long stops the alert and status loops too), and a supervisor should restart the
node. The check never takes the engine's lock, so it answers even when the engine is stuck.

*Ready* (``/readyz``): the node can serve reads that mean something and take part: it is not
locked by a restored data directory, it is connected to enough members that it and they form a
majority, and it is not behind the tips most of its connected peers advertise by more than
:data:`READY_MAX_LAG_BLOCKS`. Each reason it is not is named in the answer.

:func:`health` and :func:`readiness` are pure functions of values the caller gathers (the
service's loop times, peer states and heights, the engine's tip), tested without a node;
:func:`read_readiness` gathers them from a running node (``/readyz`` and the metrics).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .service import NodeService

LOOP_STALE_HEARTBEATS = 10
"""A periodic loop goes round once per heartbeat (the turn loop at least once per turn); ten
heartbeats without a turn is no scheduling hiccup but a loop that is stuck."""
LOOP_STALE_MIN_S = 10.0
"""Never call a loop stuck sooner than this: a fast heartbeat (tests use 200 ms) must not make a
long fsync under load look like a hang."""
READY_MAX_LAG_BLOCKS = 16
"""Behind a connected peer's advertised tip by more than this many blocks: catching up. Status
messages go out every heartbeat, so a node that follows the chain is at most the few blocks
made in one heartbeat behind."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def body(self, what: str) -> dict[str, Any]:
        return {what: self.ok, "reasons": self.reasons, **self.details}


def health(loop_turned: Mapping[str, float], now: float, heartbeat_s: float, turn_timeout_s: float) -> Verdict:
    """``loop_turned``: loop name -> time it last went round (same clock as ``now``)."""
    limit = max(LOOP_STALE_MIN_S, LOOP_STALE_HEARTBEATS * max(heartbeat_s, 0.0), 2 * turn_timeout_s)
    ages = {name: round(now - at, 3) for name, at in sorted(loop_turned.items())}
    reasons = [f"the {name} loop has not turned for {age:.1f} s (limit {limit:.0f} s)"
               for name, age in ages.items() if age > limit]
    if not loop_turned:
        reasons.append("the node's loops have not started")
    return Verdict(not reasons, reasons, {"loops_last_turned_s_ago": ages, "limit_s": limit})


def readiness(*, locked: bool, members: int, peers_up: list[str], peers_down: list[str], tip_height: int,
              peer_heights: Mapping[str, int], key_problem: str | None = None) -> Verdict:
    """``members``: members in force (this node included); ``peer_heights``: the tips the
    connected peers advertised."""
    reasons = []
    if locked:
        reasons.append("restored data directory: signing is locked until the node has caught up with a peer "
                       "(see docs/operations-restore.md)")
    need = members // 2 + 1
    if 1 + len(peers_up) < need:
        alone = "alone: no member is connected" if not peers_up else \
            f"connected to {len(peers_up)} of {members - 1} members ({', '.join(peers_up)})"
        reasons.append(f"{alone}; a majority needs {need} of {members} members"
                       + (f"; down: {', '.join(peers_down)}" if peers_down else ""))
    ahead = {p: h for p, h in peer_heights.items() if p in peers_up and h > tip_height + READY_MAX_LAG_BLOCKS}
    # A status is a claim: one member advertising a tip far ahead (a lie, or a fork of its own)
    # must not take every other member out of service. Behind means most connected peers say so.
    if 2 * len(ahead) > len(peers_up):
        top = max(ahead.values())
        reasons.append(f"catching up: tip at height {tip_height}, {', '.join(sorted(ahead))} at {top}")
    if key_problem is not None:
        reasons.append(key_problem)
    return Verdict(not reasons, reasons, {"tip_height": tip_height, "peers_up": peers_up, "peers_down": peers_down,
                                          "locked": locked})


def read_readiness(service: NodeService) -> Verdict:
    """Readiness from the node's state; call through ``service.read`` (under the lock)."""
    engine = service.engine
    members = engine.current.member_names
    others = [m for m in members if m != engine.me]
    up = [m for m in others if service.is_up(m)]
    return readiness(locked=engine.store.guard_locked(), members=len(members), peers_up=up,
                     peers_down=[m for m in others if m not in up], tip_height=engine.tree.best_tip.height,
                     peer_heights=dict(service.peer_heights), key_problem=engine.key_problem())
