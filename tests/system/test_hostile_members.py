"""Hostile members as real processes: four member daemons over TLS (two of them hostile, started
with ``python -m tests.helpers.hostile``), anchoring into the session's regtest node, clients
writing through the honest members the whole time.

One hostile member, firm-d, goes through every misbehaviour in turn, each switched on until every
honest member has shown what docs/protocol.md says it does, then off:

- replaying old messages (proposals, signatures, statuses, transactions included long ago, a
  catch-up answer): ignored as already known; nothing is applied twice;
- lying in its status (a tip that does not exist, 1,000 heights ahead; false signer sets): every
  honest member asks it for those blocks (§17.5), at most once per catch-up retry interval, gets
  nothing new, and stays ready;
- forged anchor proofs: refused, each with its reason (§13.4);
- proposing out of turn (another member's round, or its own round before it began): every honest
  member objects, with the reason (§9.4);
- withholding its signatures and proposals: its turns pass (round 1), blocks carry no signature of
  it, so the unanimous views stop while the majority goes on (§8.2, §12.2);
- flooding oversized, zero-length, non-CBOR, wrongly shaped, unknown and mistyped frames between
  megabytes of junk transactions: each connection closed at the bad frame, the member barred with
  the reason (§17.1), ``peer_down`` raised, the junk refused;

and finally equivocates (two blocks at one height) while firm-c signs both forks: both are
convicted by evidence and excluded everywhere — and no honest member ever is.

Through all of it every honest member keeps making blocks, no write acknowledged at ``majority``
is lost or changed (tests/helpers/history.py), and each honest member's audit bundle verifies
against the Bitcoin node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from peerdb.anchor.regtest import RegtestNode
from peerdb.localnet import LocalConsortium, poll_until
from peerdb.node.catchup import CATCHUP_RETRY_MS
from tests.helpers.faults import Figure, LogWatch, Miner, audit, client, has_alert, report_figures, wait_all
from tests.helpers.history import History, Writer, check
from tests.helpers.hostile import HostileMember, start_hostile

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

PARAMS = {"heartbeat_ms": 200, "turn_timeout_ms": 1000, "clock_skew_ms": 500, "anchor_interval_s": 2,
          "anchor_confirmations": 1}
"""Quick turns and anchors. A small clock skew keeps "out of turn" out of turn: with the default
5 s against 1 s turns, claiming a round a few turns early would be within the tolerance."""
HONEST = ("firm-a", "firm-b")
WAIT_S = 30.0


def heads(net: LocalConsortium, name: str) -> dict[str, int]:
    result: dict[str, int] = net.status(name)["heads"]
    return result


class Run:
    """The consortium under test, and the figures of each phase."""

    def __init__(self, net: LocalConsortium, history: History) -> None:
        self.net = net
        self.history = history
        self.figures: list[Figure] = []

    def phase(self, name: str, hostile: HostileMember, switches: dict[str, Any], watchers: tuple[str, ...],
              detected: Callable[[str, LogWatch], bool], recovered: Callable[[str], bool] | None = None,
              convicted: tuple[str, ...] = ()) -> None:
        """Switch ``switches`` on at ``hostile`` until every watcher ``detected`` it, then off; the
        watchers must have made blocks meanwhile and make them again after, and exclude exactly
        ``convicted`` (only double-signers are ever excluded)."""
        net = self.net
        self.history.phase = name
        logs = {n: LogWatch(net.nodes[n]) for n in watchers}
        before = {n: heads(net, n)["majority"] for n in watchers}
        started = time.monotonic()
        hostile.set(**switches)
        hostile.wait_report(lambda r: True, WAIT_S, f"{name} on")
        detected_at = wait_all(watchers, lambda n: detected(n, logs[n]), WAIT_S, f"{name}: detected")
        hostile.set(**{k: type(v)() for k, v in switches.items()})
        hostile.wait_report(lambda r: True, WAIT_S, f"{name} off")
        off = time.monotonic()
        during = {n: heads(net, n)["majority"] for n in watchers}
        assert all(during[n] > before[n] for n in watchers), (name, before, during)  # kept making blocks
        wait_all(watchers, lambda n: heads(net, n)["majority"] >= during[n] + 2 and (recovered is None or recovered(n)),
                 WAIT_S, f"{name}: blocks after it")
        for n in watchers:
            assert net.status(n)["excluded"] == sorted(convicted), (name, n)
        acked = sum(w.acked("majority") for w in self.history.writes if w.phase == name)
        self.figures.append(Figure(f"{name} ({hostile.name})", len(net.nodes), acked, 0,
                                   round(detected_at - started, 2), round(time.monotonic() - off, 2)))


def objected(net: LocalConsortium, name: str, blocks: set[str], reason: str) -> bool:
    with net.nodes[name].client() as c:
        return any(o["member"] == name and o["block"] in blocks and reason in o["reason"]
                   for o in c.get("/v1/objections").json()["objections"])


def ready(net: LocalConsortium, name: str) -> bool:
    assert net.nodes[name].metrics is not None
    return httpx.get(f"http://{net.nodes[name].metrics}/readyz", timeout=10).status_code == 200


def test_four_members_detect_refuse_and_outlast_two_hostile_members(tmp_path: Path, regtest: RegtestNode) -> None:
    miner = Miner(regtest)
    history = History()
    with LocalConsortium(tmp_path / "c", params=PARAMS, bitcoin_rpc=regtest.wallet_url, metrics=True) as net:
        net.write_files()
        for name in HONEST:
            net.start(name)
        c = start_hostile(net, "firm-c")
        d = start_hostile(net, "firm-d")
        net.wait_ready()
        miner.start()
        clients = {n: client(net.nodes[n]) for n in HONEST}
        writers = [Writer(history, clients[n], n) for n in HONEST]
        for w in writers:
            w.start()
        run = Run(net, history)
        watchers = ("firm-a", "firm-b", "firm-c")  # firm-c behaves until the last phase
        try:
            history.phase = "start"
            wait_all(HONEST, lambda n: heads(net, n)["unanimous"] >= 2, WAIT_S * 2, "blocks settled (anchored)")

            run.phase("replay", d, {"replay": True}, watchers,
                      lambda n, log: sum(d.report()["replayed"].values()) >= 200 and log.count("peer_barred") == 0)

            def checked_the_lie(n: str, log: LogWatch) -> bool:
                asked = d.report()["asked"].get(n, 0)
                return asked >= 2 and ready(net, n) and heads(net, n)["tentative"] < d.report()["tip"] + 50
            lie_started = time.monotonic()
            asked_before = dict(d.report()["asked"])
            run.phase("lie in status", d, {"lie_status": True}, watchers, checked_the_lie)
            lasted = time.monotonic() - lie_started
            for n in watchers:  # checked, but no more often than the catch-up retry interval allows
                asked = d.report()["asked"].get(n, 0) - asked_before.get(n, 0)
                assert asked <= lasted / (CATCHUP_RETRY_MS / 1000) + 3, (n, asked, lasted)

            run.phase("forged anchor proofs", d, {"forge_anchors": True}, watchers,
                      lambda n, log: log.count("rejected anchor proof from firm-d", "unknown to the bitcoin node") > 0
                      and log.count("rejected anchor proof from firm-d", "anchor_proof.path") > 0
                      and log.count("rejected anchor proof from firm-d", "anchor_proof") >= 3)

            def objections(n: str, log: LogWatch) -> bool:
                report = d.report()["out_of_turn"]
                theirs = {b for _h, _r, b, kind in report if kind == "not_ours"}
                early = {b for _h, _r, b, kind in report if kind == "early"}
                return objected(net, n, theirs, "but the turn belongs to") and \
                    objected(net, n, early, "is before its round could start")
            run.phase("out of turn", d, {"out_of_turn": True}, watchers, objections)

            def withheld(n: str, log: LogWatch) -> bool:
                h = heads(net, n)
                if h["unanimous_signed"] >= h["majority"]:
                    return False
                with net.nodes[n].client() as api:
                    block = api.get(f"/v1/blocks/{h['majority']}").json()
                return not next(s["signed"] for s in block["signatures"] if s["member"] == "firm-d")
            run.phase("withhold signatures", d, {"withhold": True, "silent": True}, watchers, withheld,
                      recovered=lambda n: heads(net, n)["unanimous_signed"] >= heads(net, n)["majority"] - 2)

            run.phase("flood of bad frames", d, {"flood": True}, watchers,
                      lambda n, log: log.count("peer_barred", "peer=firm-d") >= 2
                      and log.count("rejected", "transactions from firm-d") > 0
                      and has_alert(net, n, "peer_down", "firm-d"),
                      recovered=lambda n: net.status(n)["peers"]["firm-d"])

            # Equivocation and a member signing both forks: evidence, exclusion of both, nobody else.
            c.set(sign_two_forks=True)
            run.phase("equivocate + sign two forks", d, {"equivocate": True}, HONEST,
                      lambda n, log: net.status(n)["excluded"] == ["firm-c", "firm-d"]
                      and has_alert(net, n, "double_sign", "firm-c") and has_alert(net, n, "double_sign", "firm-d"),
                      convicted=("firm-c", "firm-d"))
            assert d.report()["equivocated"] and c.report()["two_forks"]
            for n in HONEST:
                with net.nodes[n].client() as api:
                    convicted = {e["member"] for e in api.get("/v1/evidence").json()["evidence"]}
                assert convicted == {"firm-c", "firm-d"}, (n, convicted)
        finally:
            for w in writers:
                w.stop()
            miner.stop()
            for node_client in clients.values():
                node_client.close()

        # The honest members agree, lost nothing acknowledged, and their books verify.
        top = min(heads(net, n)["majority"] for n in HONEST)
        poll_until(lambda: len({net.status(n)["tip"] for n in HONEST}) == 1 or
                   min(heads(net, n)["unanimous_signed"] for n in HONEST) >= top, WAIT_S, "agreement")
        with_clients = {n: client(net.nodes[n]) for n in HONEST}
        findings = check(history, with_clients)
        for node_client in with_clients.values():
            node_client.close()
        assert findings.clean, findings
        assert findings.acked >= 20, history.figures()
        for n in HONEST:
            code, report = audit(net.nodes[n], tmp_path / f"{n}.pdbaudit", regtest.rpc_url)
            assert code == 0 and report["ok"] is True, (n, report)
            assert sorted(e["member"] for e in report["excluded"]) == ["firm-c", "firm-d"], report
            assert report["anchored_blocks"] >= 1, report
        for row in run.figures:
            row.lost = len(findings.lost)
        run.figures.append(Figure("whole run", 4, findings.acked, len(findings.lost), None, None,
                                  f"{findings.reads_checked} reads checked, {findings.accepted} writes accepted"))
        report_figures(run.figures)
    for name in net.nodes:
        proc = net.nodes[name].proc
        assert proc is not None and proc.returncode == 0, net.nodes[name].log_tail()


PARAMS_7 = {**PARAMS, "clock_skew_ms": 3000}
"""The colluders propose their fork blocks in whichever round is theirs, without waiting: a
3 s tolerated skew lets a block claim any of the seven rounds of 1 s at once."""
HONEST_7 = ("firm-a", "firm-c", "firm-e")
COLLUDERS = ("firm-b", "firm-d", "firm-f", "firm-g")
"""Four of seven: a majority. Spread over the turn order, so that while they are silent the
honest members' turns come often enough for the chain to keep growing."""


def block_hash(net: LocalConsortium, name: str, height: int) -> str:
    with net.nodes[name].client() as api:
        found: str = api.get(f"/v1/blocks/{height}").json()["hash"]
        return found


def test_a_colluding_majority_cannot_orphan_a_settled_block(tmp_path: Path, regtest: RegtestNode) -> None:
    """Four of seven members try to orphan an anchored block every member endorsed, by signing a
    longer fork that leaves it out — never two blocks at one height, so there is no evidence
    against them (docs/protocol.md §11.2-11.3). They prepare it by withholding their signatures
    for a few heights and then each endorsing the chain once, at different heights, so that the
    fork can have a proposer and co-signers at every height without a double-sign.

    Every honest member refuses the fork and raises ``settled_conflict`` naming the four, who are
    on both sides; nobody is excluded; the honest chain keeps the settled block and its books
    verify; a colluder's own books, whose best chain is the fork, fail ``audit verify`` naming the
    settled block they leave out; no write acknowledged at ``majority`` is lost."""
    miner = Miner(regtest)
    history = History()
    figures: list[Figure] = []
    with LocalConsortium(tmp_path / "c", members=7, params=PARAMS_7, bitcoin_rpc=regtest.wallet_url) as net:
        net.write_files()
        for name in HONEST_7:
            net.start(name)
        colluders = [start_hostile(net, name) for name in COLLUDERS]
        for colluder in colluders:
            colluder.set(finality=False)  # they follow the seed's weights alone, to adopt their fork
        net.wait_ready()
        miner.start()
        clients = {n: client(net.nodes[n]) for n in HONEST_7}
        writers = [Writer(history, clients[n], n) for n in HONEST_7]
        for w in writers:
            w.start()
        try:
            wait_all(HONEST_7, lambda n: heads(net, n)["unanimous"] >= 2, WAIT_S * 2, "blocks settled (anchored)")

            # Preparation: silent for a few heights, then one endorsement each, at rising heights.
            history.phase = "colluders withhold"
            for colluder in colluders:
                colluder.set(withhold=True, silent=True)
            fork_from = max(x.wait_report(lambda r: True, WAIT_S, "withholding")["last_signed"] for x in colluders)
            wait_all(HONEST_7, lambda n: heads(net, n)["tentative"] >= fork_from + 3, WAIT_S,
                     "three heights without a colluder's signature")
            history.phase = "colluders endorse once each"
            endorsed: list[int] = []
            for colluder in colluders:
                floor = max(endorsed, default=fork_from)
                poll_until(lambda: colluder.report()["tip"] > floor, WAIT_S, f"{colluder.name} sees a new tip")
                colluder.set(endorse=1)
                endorsed.append(colluder.wait_report(lambda r: bool(r["endorsed"]), WAIT_S, "endorsed")["endorsed"][0])
            assert len(set(endorsed)) == len(endorsed) and min(endorsed) > fork_from, endorsed
            wait_all(HONEST_7, lambda n: heads(net, n)["unanimous"] >= min(endorsed), WAIT_S * 2,
                     "the endorsed stretch settled: endorsed by all seven, anchored")
            settled = min(heads(net, n)["unanimous"] for n in HONEST_7)
            settled_hashes = {h: block_hash(net, "firm-a", h) for h in range(fork_from + 1, settled + 1)}

            # The attack: a fork from below the settled blocks, heavier by the seed's weights.
            history.phase = "orphan attack"
            started = time.monotonic()
            for colluder in colluders:
                colluder.set(orphan_from=fork_from, colluders=list(COLLUDERS))
            tentative = {n: heads(net, n)["tentative"] for n in HONEST_7}

            def refused_and_named(n: str) -> bool:
                conflicts = [a for a in net.status(n)["alerts"] if a["kind"] == "settled_conflict"]
                return any(a["details"]["signers"] == sorted(COLLUDERS) and a["details"]["both_sides"] == sorted(COLLUDERS)
                           for a in conflicts)
            detected = wait_all(HONEST_7, refused_and_named, WAIT_S, "settled_conflict naming the four colluders")
            turned = [x for x in colluders if x.wait_report(lambda r: r["best_leaves_settled"], WAIT_S,
                                                            "its best chain leaves out the settled blocks")]
            fork = turned[0].report()["fork"]
            assert len(fork) >= 3 and all(set(signers) <= set(COLLUDERS) for _h, _b, signers in fork), fork

            # The honest members hold on: settled blocks kept, nobody excluded, blocks still made
            # (tentative: a majority needs a colluder).
            for n in HONEST_7:
                s = net.status(n)
                assert s["excluded"] == [] and s["heads"]["unanimous"] >= settled, (n, s["heads"])
                assert all(block_hash(net, n, h) == b for h, b in settled_hashes.items()), n
            wait_all(HONEST_7, lambda n: heads(net, n)["tentative"] > tentative[n], WAIT_S, "blocks after the attack")
            figures.append(Figure("orphan a settled block (4 of 7 collude)", 7, 0, 0, round(detected - started, 2),
                                  None, "refused by every honest member; the colluders keep a majority "
                                  "from signing anything else"))
        finally:
            for w in writers:
                w.stop()
            miner.stop()
            for node_client in clients.values():
                node_client.close()

        # The books: each honest member's verify; a colluder's does not, and says why.
        for n in HONEST_7:
            code, report = audit(net.nodes[n], tmp_path / f"{n}.pdbaudit", regtest.rpc_url)
            assert code == 0 and report["ok"] is True and report["excluded"] == [], (n, report)
        colluder = turned[0]
        code, report = audit(colluder.node, tmp_path / f"{colluder.name}.pdbaudit", regtest.rpc_url)
        assert code == 4 and report["ok"] is False and report["where"] == "settled history", report
        named = next((h, b) for h, b in settled_hashes.items() if f"leaves out block {h} {b[:16]}" in report["reason"])
        assert all(c in report["reason"] for c in COLLUDERS), report["reason"]

        with_clients = {n: client(net.nodes[n]) for n in HONEST_7}
        findings = check(history, with_clients)
        for node_client in with_clients.values():
            node_client.close()
        assert findings.clean, findings
        figures[0].acknowledged = findings.acked
        figures[0].note += f"; the colluder's books fail verify naming settled block {named[0]}"
        report_figures(figures)
