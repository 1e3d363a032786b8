"""Alerts as pure functions of the block tree (peerdb/node/alerts.py): which condition raises
which alert, and whom each alert names, so that a person reading it knows whom to call.
"""

from __future__ import annotations

from peerdb.core.chain import BlockTree
from peerdb.node.alerts import NOT_SIGNING_BLOCKS, Alert, chain_alerts, not_signing, waiting_for

from tests.helpers.core import GENESIS, MEMBER_NAMES, bare_header

A, B, C, D = MEMBER_NAMES


def tree() -> BlockTree:
    return BlockTree(GENESIS, MEMBER_NAMES)


def kinds(alerts: list[Alert]) -> list[str]:
    return [a.kind for a in alerts]


def test_quiet_tree_raises_nothing() -> None:
    assert chain_alerts(tree(), A) == []


def test_majority_signed_without_me() -> None:
    t = tree()
    b1 = bare_header(GENESIS)
    t.add_header(b1)
    for m in (B, C, D):
        t.add_signature(b1.hash, m)
    (alert,) = chain_alerts(t, A)
    assert alert.kind == "majority_without_me" and alert.subject == A
    assert alert.details == {"majority_height": 1, "my_height": 0}
    assert A in alert.message and "height 1" in alert.message
    assert chain_alerts(t, B) == []


def test_no_majority_alert_for_an_excluded_member() -> None:
    t = tree()
    b1 = bare_header(GENESIS)
    t.add_header(b1)
    for m in (B, C, D):
        t.add_signature(b1.hash, m)
    t.add_culprit(A)
    assert kinds(chain_alerts(t, A)) == ["double_sign"]


def test_my_signature_on_a_losing_fork() -> None:
    t = tree()
    mine, theirs = bare_header(GENESIS, salt=1), bare_header(GENESIS, salt=2)
    t.add_header(mine)
    t.add_header(theirs)
    t.add_signature(mine.hash, A)
    t.add_signature(theirs.hash, B)
    t.add_signature(theirs.hash, C)
    alerts = {a.kind: a for a in chain_alerts(t, A)}
    assert set(alerts) == {"minority_chain"}
    lost = alerts["minority_chain"]
    assert lost.subject == mine.hash.hex()
    assert lost.details == {"height": 1, "fork_height": 0}
    assert "lost after height 0" in lost.message


def test_my_chain_is_best_but_only_a_minority_endorses_it_and_a_fork_exists() -> None:
    t = tree()
    mine = bare_header(GENESIS, salt=1)
    t.add_header(mine)
    t.add_signature(mine.hash, A)
    assert chain_alerts(t, A) == []  # no competing fork: just slow co-signers
    rival = bare_header(GENESIS, salt=2)
    t.add_header(rival)
    (alert,) = chain_alerts(t, A)
    assert alert.kind == "minority_chain" and alert.subject == mine.hash.hex()
    assert alert.details == {"endorsers": [A]}
    assert "only 1 of 4 members" in alert.message


def test_every_culprit_gets_a_double_sign_alert() -> None:
    t = tree()
    t.add_culprit(D)
    t.add_culprit(B)
    alerts = chain_alerts(t, A)
    assert [(a.kind, a.subject) for a in alerts] == [("double_sign", B), ("double_sign", D)]
    assert alerts[0].key == ("double_sign", B)


def test_waiting_for_signatures_names_the_missing_members() -> None:
    t = tree()
    b1 = bare_header(GENESIS)
    t.add_header(b1)
    t.add_signature(b1.hash, A)
    t.add_signature(b1.hash, B)
    alert = waiting_for(t, tip_seen_ms=0, now_ms=10_000, turn_timeout_ms=3000)
    assert alert.kind == "stalled" and alert.subject == "1"
    assert alert.details["missing_signatures"] == [C, D]
    assert "firm-c, firm-d" in alert.message
    t.add_culprit(D)
    assert waiting_for(t, 0, 10_000, 3000).details["missing_signatures"] == [C]


def test_waiting_for_a_proposal_names_whose_turn_it_is() -> None:
    t = tree()
    alert = waiting_for(t, tip_seen_ms=1000, now_ms=1000, turn_timeout_ms=3000)
    assert alert.details == {"height": 1, "round": 0, "proposer": A}
    assert "waiting for firm-a's proposal" in alert.message
    b1 = bare_header(GENESIS)
    t.add_header(b1)
    for m in MEMBER_NAMES:
        t.add_signature(b1.hash, m)
    alert = waiting_for(t, tip_seen_ms=1000, now_ms=1000 + 7000, turn_timeout_ms=3000)
    # height 2 belongs to firm-b in round 0; two timeouts later it is firm-d's turn
    assert alert.details == {"height": 2, "round": 2, "proposer": D}
    assert alert.subject == "2"


def test_alert_identity_ignores_details() -> None:
    assert Alert("stalled", "m", "1", {"a": 1}) == Alert("stalled", "m", "1", {"a": 2})
    assert Alert("stalled", "m", "1").key == ("stalled", "1")


def _chain(t: BlockTree, length: int, signers: tuple[str, ...]) -> None:
    parent = GENESIS
    for _ in range(length):
        block = bare_header(parent)
        t.add_header(block)
        for m in signers:
            t.add_signature(block.hash, m)
        parent = block


def test_a_connected_member_that_signs_nothing_while_the_majority_moves_is_named() -> None:
    t = tree()
    _chain(t, NOT_SIGNING_BLOCKS + 1, (A, B, C))
    (alert,) = not_signing(t, A, lambda _m: True)
    assert alert.kind == "not_signing" and alert.subject == D and D in alert.message
    assert alert.details == {"endorses": 0, "tip": NOT_SIGNING_BLOCKS + 1}
    assert not_signing(t, A, lambda m: m != D) == []  # not connected: peer_down says it already


def test_a_member_a_few_blocks_behind_is_not_named() -> None:
    t = tree()
    _chain(t, NOT_SIGNING_BLOCKS, (A, B, C))
    assert not_signing(t, A, lambda _m: True) == []


def test_an_excluded_member_is_not_named_as_withholding() -> None:
    t = tree()
    _chain(t, NOT_SIGNING_BLOCKS + 1, (A, B, C))
    t.add_culprit(D)
    assert not_signing(t, A, lambda _m: True) == []
