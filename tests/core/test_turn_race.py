"""Parameters under which a later round's member could take an earlier member's turn.

A round-``r`` block is valid once ``now >= parent time + r * turn - 2 * skew`` (protocol.md §8.3).
With ``2 * clock_skew_ms >= turn_timeout_ms`` the round-1 member may propose beside the round-0
proposer at once; unless ``4 * clock_skew_ms <= turn_timeout_ms`` it may within the first half of
round 0. The founding commands write parameters without that window and a node whose consortium
has it raises ``turn_race``.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from peerdb.core.consortium import FOUNDING_CLOCK_SKEW_MS, Params, founding_params, safe_clock_skew_ms
from peerdb.core.errors import ConfigError, ValidationError
from peerdb.core.model import Header
from peerdb.core.validate import check_header, proposer_for

from tests.helpers.core import CONSORTIUM, GENESIS, MEMBER_NAMES


def round_one_at_once(params: Params) -> Header:
    """The round-1 member's block dated as early as the rules allow, sent the moment the parent exists."""
    return Header(1, 1, GENESIS.hash, proposer_for(MEMBER_NAMES, 1, 1),
                  max(GENESIS.time_ms, GENESIS.time_ms + params.turn_timeout_ms - params.clock_skew_ms),
                  GENESIS.tx_root, 0, GENESIS.state_root, GENESIS.evidence_root)


def test_with_the_old_default_skew_a_round_one_block_is_valid_as_soon_as_its_parent_exists() -> None:
    legacy = Params()  # clock_skew_ms 5000, turn_timeout_ms 3000: what files without the field get
    consortium = dataclasses.replace(CONSORTIUM, params=legacy)
    check_header(round_one_at_once(legacy), GENESIS, consortium, now_ms=GENESIS.time_ms)
    problem = legacy.turn_race_problem
    assert problem is not None
    assert "clock_skew_ms (5000) is more than a quarter of turn_timeout_ms (3000)" in problem
    assert f"--set clock_skew_ms={FOUNDING_CLOCK_SKEW_MS}" in problem  # says what to vote for


def test_with_founding_params_a_round_one_block_waits_until_round_zero_has_had_its_time() -> None:
    params = founding_params(None)
    assert params.clock_skew_ms == FOUNDING_CLOCK_SKEW_MS and params.turn_race_problem is None
    consortium = dataclasses.replace(CONSORTIUM, params=params)
    early = round_one_at_once(params)
    with pytest.raises(ValidationError, match="in the future"):
        check_header(early, GENESIS, consortium, now_ms=GENESIS.time_ms)
    # accepted only from parent time + turn - 2 * skew: half-way through round 0 with the founding values
    opens = GENESIS.time_ms + params.turn_timeout_ms - 2 * params.clock_skew_ms
    assert opens - GENESIS.time_ms == params.turn_timeout_ms // 2 == 1500
    with pytest.raises(ValidationError, match="in the future"):
        check_header(early, GENESIS, consortium, now_ms=opens - 1)
    check_header(early, GENESIS, consortium, now_ms=opens)


def test_founders_choices_are_kept_and_a_short_turn_gets_a_smaller_skew() -> None:
    assert founding_params({"clock_skew_ms": 2500}).clock_skew_ms == 2500  # their choice, alert and all
    short = founding_params({"heartbeat_ms": 200, "turn_timeout_ms": 1000})
    assert short.clock_skew_ms == 250 and short.turn_race_problem is None
    assert founding_params({"heartbeat_ms": 200, "turn_timeout_ms": 2000}).clock_skew_ms == 500
    with pytest.raises(ConfigError, match="params.turn_timeout_ms"):
        founding_params({"turn_timeout_ms": 0})  # out of range: Params names it, skew or not
    with pytest.raises(ConfigError, match="params.turn_timeout_ms"):
        founding_params({"turn_timeout_ms": "slow"})  # type: ignore[dict-item]


@given(st.integers(min_value=2, max_value=3_600_000))
@example(2)
@example(3)
@example(2001)
@example(3000)
def test_the_founding_skew_never_leaves_a_race_at_any_turn(turn: int) -> None:
    skew = safe_clock_skew_ms(turn)
    assert 0 <= skew <= FOUNDING_CLOCK_SKEW_MS
    assert Params(heartbeat_ms=1, turn_timeout_ms=turn, clock_skew_ms=skew).turn_race_problem is None


@given(st.integers(min_value=2, max_value=100_000), st.integers(min_value=0, max_value=60_000))
def test_a_round_keeps_at_least_half_of_itself_exactly_when_there_is_no_problem(turn: int, skew: int) -> None:
    params = Params(heartbeat_ms=1, turn_timeout_ms=turn, clock_skew_ms=skew)
    own = turn - 2 * skew  # how long round 0 has before a round-1 block can be valid
    assert (params.turn_race_problem is None) == (2 * own >= turn)
