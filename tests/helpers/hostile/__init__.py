"""A hostile member you can run: a real member daemon with misbehaviour switches.

Why under ``tests/``: nothing here may ever run in production, so it lives outside the
``peerdb`` package; the daemon runs as ``python -m tests.helpers.hostile`` from the repository
root (the way the tests start ``python -m cli``). It is the production daemon
(:func:`peerdb.node.daemon.run_node`: TLS with its own member key, LMDB, the API, anchoring) with
two parts swapped at the seams ``run_node`` offers: :class:`.engine.HostileEngine` (signing,
proposing, status, what it sends) and :class:`.network.HostileNetwork` (bytes on the wire).

A test starts it with :func:`start_hostile` and steers it with :meth:`HostileMember.set`; the
member answers in its report (:class:`.switches.Report`), which :meth:`HostileMember.wait_report`
polls with a deadline.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerdb.localnet import LocalConsortium, NodeProcess, poll_until

from .switches import Switches, read_json, write_json

MODULE = "tests.helpers.hostile"


@dataclass
class HostileMember:
    net: LocalConsortium
    name: str
    control: Path
    report_path: Path
    switches: Switches = Switches()

    @property
    def node(self) -> NodeProcess:
        return self.net.nodes[self.name]

    def set(self, **changes: Any) -> None:
        """Change some switches (the others stay as they are)."""
        data = {**self.switches.to_json(), **changes}
        self.switches = Switches.from_json(data)
        write_json(self.control, self.switches.to_json())

    def report(self) -> dict[str, Any]:
        try:
            return read_json(self.report_path)
        except FileNotFoundError:
            return {}

    def wait_report(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Poll the report until ``predicate`` holds (the member's switches as set must be in force)."""
        want = self.switches.to_json()

        def holds() -> bool:
            if not self.node.running():
                raise AssertionError(f"hostile {self.name} exited:\n{self.node.log_tail()}")
            report = self.report()
            return report.get("switches") == want and predicate(report)
        poll_until(holds, timeout, f"{self.name}: {what}")
        return self.report()


def start_hostile(net: LocalConsortium, name: str, switches: Switches = Switches(),
                  prefix: tuple[str, ...] = ()) -> HostileMember:
    """Start ``name``'s node as a hostile member (``prefix``: e.g. ``ip netns exec NS``)."""
    member = HostileMember(net, name, net.directory / f"{name}.control.json",
                           net.directory / f"{name}.report.json", switches)
    write_json(member.control, switches.to_json())
    net.start(name, ("--control", str(member.control), "--report", str(member.report_path)),
              launcher=[*prefix, sys.executable, "-m", MODULE])
    return member
