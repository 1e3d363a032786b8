"""Real partitions: four member daemons, each in its own network namespace, connected by veth
pairs to one bridge; the test cuts and heals links with nftables drop rules on the bridge
(tests/helpers/netns.py: the packets vanish, the members see only silence), while clients write
through every member and record what each write reached (tests/helpers/history.py).

Scenarios, one after the other on the same consortium, each cut then healed:

- a 2/2 split: neither side has a majority; every member's ``stalled`` alert names the two it
  waits for, and ``peer_down`` names them too; writes on both sides stay tentative; after the
  heal the fork rule picks one chain and every write of the losing side is proposed again;
- a 3/1 split: the three keep a majority and acknowledge writes; the one alone stalls, naming the
  other three; after the heal it catches up and its writes are committed;
- a flapping link (firm-a to firm-b, down and up three times): the others carry on, and each of
  the two raises ``peer_down`` for the other once, not once per flap;
- a one-way cut (firm-a to firm-b only): both ends lose the connection and say so; the others
  see nothing wrong; everyone keeps making blocks.

After each heal: every member on one chain, no block that was unanimous (anchored) before the cut
lost, every write acknowledged at ``majority`` kept, every write accepted anywhere committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peerdb.anchor.regtest import RegtestNode
from peerdb.localnet import LocalConsortium, poll_until
from tests.helpers.faults import Figure, LogWatch, Miner, audit, client, report_figures, wait_all
from tests.helpers.history import NAMESPACE, History, Writer, check, listing
from tests.helpers.netns import Forwarder, Lab, Unavailable, place

pytestmark = [pytest.mark.slow, pytest.mark.bitcoin]

MEMBERS = ("firm-a", "firm-b", "firm-c", "firm-d")
PARAMS = {"heartbeat_ms": 200, "turn_timeout_ms": 1000, "anchor_interval_s": 2, "anchor_confirmations": 1}
IDLE_TIMEOUT_S = 2.0
"""``[net] idle_timeout_s``: a silent peer is down after 2 s instead of 20, so each scenario takes
seconds. The status gossip (every 200 ms) keeps a healthy link far from it."""
WAIT_S = 30.0
FLAPS = 3


@pytest.fixture
def lab() -> Iterator[Lab]:
    made = Lab(list(MEMBERS))
    try:
        made.setup()
    except Unavailable as exc:
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield made
    finally:
        made.teardown()


def heads(net: LocalConsortium, name: str) -> dict[str, int]:
    result: dict[str, int] = net.status(name)["heads"]
    return result


def hash_at(net: LocalConsortium, name: str, height: int) -> str:
    with net.nodes[name].client() as api:
        found: str = api.get(f"/v1/blocks/{height}").json()["hash"]
        return found


def alert_now(net: LocalConsortium, name: str, kind: str, since_ms: int, *mentions: str) -> bool:
    """An active alert of ``kind`` naming ``mentions`` whose condition was seen after ``since_ms``."""
    return any(a["kind"] == kind and a["last_seen_ms"] >= since_ms and all(m in a["message"] for m in mentions)
               for a in net.status(name)["alerts"])


class Partitions:
    def __init__(self, net: LocalConsortium, lab: Lab, history: History) -> None:
        self.net, self.lab, self.history = net, lab, history
        self.figures: list[Figure] = []

    def scenario(self, name: str, cut: Callable[[], object], detected: Callable[[str, int], bool],
                 hold: Callable[[], bool], note: str = "", *, majority_during_cut: bool = True) -> None:
        """Cut, wait until every member ``detected`` it (given the cut's wall-clock time) and
        ``hold`` holds, heal, and wait until the consortium is whole again; then check that
        nothing settled was lost. ``cut`` may return when the cut was first detected (a cut made
        in steps); ``majority_during_cut`` False: no write sent during the cut may reach it."""
        net = self.net
        self.history.phase = name
        settled_at = {n: heads(net, n)["unanimous"] for n in MEMBERS}
        settled = {n: hash_at(net, n, h) for n, h in settled_at.items() if h > 0}
        since_ms = int(time.time() * 1000)
        started = time.monotonic()
        first = cut()
        detected_at = wait_all(MEMBERS, lambda n: detected(n, since_ms), WAIT_S, f"{name}: detected")
        detected_at = first if isinstance(first, float) else detected_at
        poll_until(hold, WAIT_S, f"{name}: writes during the cut")
        accepted = {w.key for w in self.history.writes if w.accepted}
        top = max(heads(net, n)["tentative"] for n in MEMBERS)
        self.lab.heal()
        healed = time.monotonic()
        if not majority_during_cut:
            early = [w for w in self.history.writes if started <= w.started and w.answered < healed and w.acked("majority")]
            assert not early, (name, early)
        recovered = self.wait_whole(accepted, top)
        for n, h in settled_at.items():  # nothing that was settled is lost, anywhere
            if h > 0:
                assert all(hash_at(net, m, h) == settled[n] and heads(net, m)["unanimous"] >= h for m in MEMBERS), \
                    (name, n, h)
        acked = sum(w.acked("majority") for w in self.history.writes if w.phase == name)
        self.figures.append(Figure(name, len(MEMBERS), acked, 0, round(detected_at - started, 2),
                                   round(recovered - healed, 2), note))

    def wait_whole(self, accepted: set[str], top: int) -> float:
        """Every member connected to every other, on one chain up to at least ``top``, and every
        write accepted before the heal committed (``majority``) everywhere."""
        net = self.net
        wait_all(MEMBERS, lambda n: all(net.status(n)["peers"].values()), WAIT_S, "reconnected")
        wait_all(MEMBERS, lambda n: heads(net, n)["majority"] >= top, WAIT_S, f"majority at height {top}")
        poll_until(lambda: len({hash_at(net, n, top) for n in MEMBERS}) == 1, WAIT_S, f"one chain at height {top}")

        def committed(n: str) -> bool:
            with client(net.nodes[n]) as api:
                return accepted <= set(listing(api, NAMESPACE, "w", "majority")[1])
        return wait_all(MEMBERS, committed, WAIT_S, "every accepted write committed")


def test_partitions_heal_onto_one_chain_losing_nothing(tmp_path: Path, regtest: RegtestNode, lab: Lab) -> None:
    forwarder = Forwarder(lab.gateway, ("127.0.0.1", regtest.rpc_port))
    forwarder.start()
    rpc_url = f"http://{regtest.rpc_user}:{regtest.rpc_password}@{lab.gateway}:{forwarder.port}/wallet/{regtest.wallet}"
    miner = Miner(regtest)
    history = History()
    a, b, c, d = MEMBERS
    try:
        with LocalConsortium(tmp_path / "c", params=PARAMS, idle_timeout_s=IDLE_TIMEOUT_S) as net:
            net.write_files()
            place(net, lab, rpc_url)
            for m in MEMBERS:
                net.start(m, launcher=lab.launcher(m, ("cli", "node", "run")))
            net.wait_ready()
            miner.start()
            clients = {n: client(net.nodes[n]) for n in MEMBERS}
            writers = [Writer(history, clients[n], n) for n in MEMBERS]
            for w in writers:
                w.start()
            run = Partitions(net, lab, history)
            try:
                wait_all(MEMBERS, lambda n: heads(net, n)["unanimous"] >= 2, WAIT_S * 2, "blocks settled (anchored)")

                def during(phase: str, member: str, acked: bool) -> bool:
                    return any(w.phase == phase and w.member == member and w.accepted and w.acked("majority") == acked
                               for w in history.writes)

                def names_the_other_side(n: str, since: int) -> bool:
                    others = (c, d) if n in (a, b) else (a, b)
                    return all(alert_now(net, n, "peer_down", since, o) for o in others) and \
                        alert_now(net, n, "stalled", since, *others)
                run.scenario("2/2 split", lambda: lab.split([a, b], [c, d]), names_the_other_side,
                             lambda: all(during("2/2 split", n, acked=False) for n in MEMBERS),
                             "no side has a majority; the lighter side's writes are proposed again",
                             majority_during_cut=False)

                def names_the_cut(n: str, since: int) -> bool:
                    if n == d:
                        return all(alert_now(net, d, "peer_down", since, o) for o in (a, b, c)) and \
                            alert_now(net, d, "stalled", since, a, b, c)
                    return alert_now(net, n, "peer_down", since, d)
                run.scenario("3/1 split", lambda: lab.split([a, b, c], [d]), names_the_cut,
                             lambda: during("3/1 split", d, acked=False) and
                             all(during("3/1 split", n, acked=True) for n in (a, b, c)),
                             "the three keep a majority; the one's writes are committed after the heal")

                logs = {n: LogWatch(net.nodes[n]) for n in (a, b)}

                def flap() -> float:
                    for i in range(FLAPS):
                        lab.cut(a, b)
                        if i == 0:
                            poll_until(lambda: alert_now(net, a, "peer_down", 0, b) and alert_now(net, b, "peer_down", 0, a),
                                       WAIT_S, "the first flap raised peer_down")
                            first = time.monotonic()
                        else:
                            poll_until(lambda: not net.status(a)["peers"][b], WAIT_S, "firm-a sees firm-b down")
                        lab.heal()
                        poll_until(lambda: net.status(a)["peers"][b], WAIT_S, "firm-a sees firm-b up")
                    lab.cut(a, b)
                    return first
                run.scenario("flapping link", flap,
                             lambda n, since: n in (c, d) or alert_now(net, n, "peer_down", since, b if n == a else a),
                             lambda: all(during("flapping link", n, acked=True) for n in MEMBERS),
                             f"firm-a to firm-b down and up {FLAPS} times; the others unaffected")
                for n, other in ((a, b), (b, a)):  # a flapping link is one incident, raised once
                    assert logs[n].count("ALERT peer_down", f"peer {other} is not connected") == 1, logs[n].text()[-3000:]

                def one_way(n: str, since: int) -> bool:
                    if n in (c, d):
                        return all(net.status(n)["peers"].values())
                    return alert_now(net, n, "peer_down", since, b if n == a else a)
                run.scenario("one-way cut", lambda: lab.cut(a, b, one_way=True), one_way,
                             lambda: all(during("one-way cut", n, acked=True) for n in MEMBERS),
                             "firm-a to firm-b only: both ends lose the connection; the others see nothing")
            finally:
                lab.heal()
                for w in writers:
                    w.stop()
                miner.stop()
                for node_client in clients.values():
                    node_client.close()

            final = {n: client(net.nodes[n]) for n in MEMBERS}
            findings = check(history, final, all_accepted_committed=True)
            for node_client in final.values():
                node_client.close()
            assert findings.clean, findings
            code, report = audit(net.nodes[a], tmp_path / "firm-a.pdbaudit", regtest.rpc_url)
            assert code == 0 and report["ok"] is True and report["excluded"] == [], report
            for row in run.figures:
                row.lost = len(findings.lost)
            run.figures.append(Figure("partitions, whole run", 4, findings.acked, len(findings.lost), None, None,
                                      f"{findings.accepted} writes accepted, all committed; "
                                      f"{findings.reads_checked} reads checked, "
                                      f"{findings.tentative_rolled_back} tentative reads rolled back"))
            report_figures(run.figures)
        for name in net.nodes:
            proc = net.nodes[name].proc
            assert proc is not None and proc.returncode == 0, net.nodes[name].log_tail()
    finally:
        forwarder.stop()

