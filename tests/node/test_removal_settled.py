"""When a removed member's node stops: once the removal is in force on its best chain *and* the
block that passed it is endorsed by a majority. A node that stopped (exit 9, not restarted) for a
removal only a losing branch passed would leave the consortium a member short for good."""

from __future__ import annotations

from peerdb.core.membership import GOVERNANCE_DELAY, ConsortiumState, ScheduledChange
from peerdb.core.proposals import Proposal, RemoveMembers
from peerdb.node.identity import removal_settled

from tests.helpers.core import CONSORTIUM

PASSED = 10
EFFECTIVE = PASSED + GOVERNANCE_DELAY
STATE = ConsortiumState(CONSORTIUM, [ScheduledChange(EFFECTIVE, Proposal(RemoveMembers(("firm-d",)), "leaving"))])


def test_a_removal_in_force_and_passed_in_a_majority_endorsed_block_is_settled() -> None:
    assert removal_settled(STATE, "firm-d", EFFECTIVE - 1, PASSED) == EFFECTIVE
    assert removal_settled(STATE, "firm-d", EFFECTIVE + 5, EFFECTIVE + 3) == EFFECTIVE


def test_a_removal_passed_above_the_majority_head_is_not_settled_yet() -> None:
    assert removal_settled(STATE, "firm-d", EFFECTIVE + 5, PASSED - 1) is None


def test_a_removal_not_yet_in_force_or_of_another_member_is_not_this_members() -> None:
    assert removal_settled(STATE, "firm-d", EFFECTIVE - 2, EFFECTIVE) is None
    assert removal_settled(STATE, "firm-a", EFFECTIVE + 5, EFFECTIVE + 5) is None
