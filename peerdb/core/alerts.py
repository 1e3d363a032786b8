"""Alerts a member must raise (seed 001, protocol steps 2 and 3), as pure functions of the tree.

The node decides *when* a condition has lasted long enough to shout about (it owns the clock);
this module decides *what* the condition is and names its cause, so that a person reading the
alert knows whom to call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .chain import BlockTree
from .validate import proposer_for, round_at


@dataclass(frozen=True)
class Alert:
    kind: str
    """majority_without_me | minority_chain | double_sign | stalled | peer_down | anchor_pending"""
    message: str
    subject: str = ""
    """What the alert is about (a member name, a block hash), so repeats can be told apart."""
    details: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)


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
