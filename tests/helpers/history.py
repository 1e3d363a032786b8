"""A client-side record of every write and read, and a checker of it against every member's books.

Clients write through :meth:`History.write`: each write is one transaction putting a unique key
(its own value, never written again) and the writer's *register* key (the latest value of a
sequence), and the record keeps what the API answered: accepted or not, the view the write
reached (``wait.levels_ms``) and when. Reads through :meth:`History.read` record the value seen,
in which view and at which height.

After the run, :func:`check` asks every member named (``GET /v1/history``, ``GET /v1/kv`` with
``view`` and ``at``) and reports:

- **lost**: a write acknowledged at ``majority`` (or stronger) whose key has no version;
- **changed**: such a write whose key holds another value;
- **duplicated**: a key with more than one version (a transaction applied twice);
- **not_committed**: a write accepted (in some pool) but not at ``majority`` anywhere by the end,
  when every accepted write must have been re-proposed and committed (after a partition heals);
- **stale_reads**: a read at ``majority`` or stronger that saw a value the same view, asked
  *as of* the same height at the end, no longer shows: the view lost what it had shown.
  Reads at ``tentative`` may be rolled back; those are counted apart (``tentative_rolled_back``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peerdb.client import NodeClient, NodeError

NAMESPACE = "hist"
STRONG_VIEWS = ("majority", "unanimous_signed", "unanimous")
"""Views that must never lose what they showed (the ``tentative`` view may roll back)."""


@dataclass(frozen=True)
class Write:
    member: str
    key: str
    register: str
    value: str
    phase: str
    txid: str | None
    reached: tuple[str, ...]
    """Views the write reached before the answer (the keys of ``wait.levels_ms``)."""
    levels_ms: dict[str, float]
    error: str | None
    started: float
    answered: float

    @property
    def accepted(self) -> bool:
        return self.txid is not None

    def acked(self, view: str = "majority") -> bool:
        """The API answered that the write reached ``view`` (or a stronger one)."""
        order = ("tentative", *STRONG_VIEWS)
        return any(order.index(v) >= order.index(view) for v in self.reached)


@dataclass(frozen=True)
class Read:
    member: str
    key: str
    view: str
    found: bool
    value: str | None
    height: int
    phase: str


@dataclass
class History:
    """Thread-safe: writer threads record into one history."""

    namespace: str = NAMESPACE
    phase: str = "start"
    """Set by the test; every record carries the phase it was made in."""
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: Any = field(default_factory=itertools.count)

    def write(self, client: NodeClient, member: str, *, wait: str = "majority", timeout_s: float = 5.0) -> Write:
        n = next(self._seq)
        key, register, value = f"w{n}-{member}", f"reg-{member}", f"{member}:{n}"
        ops = [{"op": "put", "namespace": self.namespace, "key": key, "value": value},
               {"op": "put", "namespace": self.namespace, "key": register, "value": value}]
        phase, started = self.phase, time.monotonic()
        txid, levels, error = None, {}, None
        try:
            answer = client.write(ops, wait=wait, timeout_s=timeout_s)
            txid = answer["accepted"][0]
            levels = dict(answer.get("wait", {}).get("levels_ms", {}))
        except NodeError as exc:
            error = str(exc)
        record = Write(member, key, register, value, phase, txid, tuple(levels), levels, error, started,
                       time.monotonic())
        with self._lock:
            self.writes.append(record)
        return record

    def read(self, client: NodeClient, member: str, key: str, view: str = "majority") -> Read | None:
        try:
            answer = client.read(self.namespace, key, view=view)
        except NodeError:
            return None
        record = Read(member, key, view, bool(answer["found"]), answer.get("value_text"), int(answer["height"]),
                      self.phase)
        with self._lock:
            self.reads.append(record)
        return record

    def figures(self) -> dict[str, dict[str, int]]:
        """Per phase: writes sent, accepted, acknowledged at majority."""
        out: dict[str, dict[str, int]] = {}
        for w in self.writes:
            row = out.setdefault(w.phase, Counter())
            row["sent"] += 1
            row["accepted"] += w.accepted
            row["acked_majority"] += w.acked("majority")
        return {phase: dict(row) for phase, row in out.items()}


class Writer(threading.Thread):
    """A client of one member: writes (waiting for ``majority`` at most ``timeout_s``), then reads
    its register at ``majority`` and ``tentative``, until stopped. Paced by ``pause_s`` so that a
    2-core machine keeps room for the members."""

    def __init__(self, history: History, client: NodeClient, member: str, *, timeout_s: float = 3.0,
                 pause_s: float = 0.1) -> None:
        super().__init__(name=f"writer-{member}", daemon=True)
        self.history, self.client, self.member = history, client, member
        self.timeout_s, self.pause_s = timeout_s, pause_s
        self.stopping = threading.Event()

    def run(self) -> None:
        register = f"reg-{self.member}"
        while not self.stopping.is_set():
            self.history.write(self.client, self.member, timeout_s=self.timeout_s)
            for view in ("majority", "tentative"):
                self.history.read(self.client, self.member, register, view)
            self.stopping.wait(self.pause_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.timeout_s + 30)


@dataclass
class Findings:
    acked: int = 0
    accepted: int = 0
    lost: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    not_committed: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    tentative_rolled_back: int = 0
    reads_checked: int = 0

    @property
    def clean(self) -> bool:
        return not (self.lost or self.changed or self.duplicated or self.not_committed or self.stale_reads)

    def summary(self) -> dict[str, Any]:
        return {"acknowledged": self.acked, "accepted": self.accepted, "lost": len(self.lost),
                "changed": len(self.changed), "duplicated": len(self.duplicated),
                "not_committed": len(self.not_committed), "stale_reads": len(self.stale_reads),
                "tentative_rolled_back": self.tentative_rolled_back, "reads_checked": self.reads_checked}


def listing(client: NodeClient, namespace: str, prefix: str, view: str) -> tuple[int, dict[str, str]]:
    """(height, key -> value) of every key under ``prefix`` in ``view``, all pages."""
    out: dict[str, str] = {}
    after: str | None = None
    while True:
        page = client.get(f"/v1/kv/{namespace}", view=view, prefix=prefix, after=after, limit=1000)
        out.update({k["key"]: k["value_text"] for k in page["keys"]})
        after = page["next_after"]
        if after is None:
            return int(page["height"]), out


def check(history: History, clients: Mapping[str, NodeClient], *, all_accepted_committed: bool = False) -> Findings:
    """Compare the record with every member in ``clients`` (see the module docstring).

    A handful of requests per member: the ``majority`` listing of the unique keys, and each
    register's history (every write of one writer sets its register, so the register's versions
    are that writer's applied writes in chain order: a value twice is a transaction applied
    twice, and the version in force at a height is what any read at that height had to see)."""
    found = Findings()
    writes = [w for w in history.writes if w.accepted]
    reads = list(history.reads)
    found.acked = sum(w.acked("majority") for w in writes)
    found.accepted = len(writes)
    for member, client in clients.items():
        majority_height, committed = listing(client, history.namespace, "w", "majority")
        registers: dict[str, list[dict[str, Any]]] = {}
        for register in sorted({w.register for w in writes} | {r.key for r in reads}):
            registers[register] = client.history(history.namespace, register)
        for register, versions in registers.items():
            counts = Counter(v["value_text"] for v in versions)
            found.duplicated.extend(f"{member}: {register} holds {value!r} {n} times"
                                    for value, n in counts.items() if n > 1)
        for w in writes:
            where = f"{member}: {w.key} ({w.phase}, written at {w.member}, reached {list(w.reached) or 'no view'})"
            value = committed.get(w.key)
            applied = any(v["value_text"] == w.value for v in registers[w.register])
            if w.acked("majority") and value is None:
                found.lost.append(f"{where}: not at majority (height {majority_height})"
                                  + ("" if applied else ", nor anywhere on the best chain"))
            elif value is not None and value != w.value:
                found.changed.append(f"{where}: holds {value!r}, not {w.value!r}")
            elif all_accepted_committed and value is None:
                found.not_committed.append(f"{where}: not at majority (height {majority_height})")
        for r in reads:
            found.reads_checked += 1
            if r.view in STRONG_VIEWS and r.height > majority_height:
                found.stale_reads.append(f"{member}: cannot check a {r.view} read at height {r.height}: the "
                                         f"majority head is {majority_height}")
                continue
            shown = [v for v in registers[r.key] if v["height"] <= r.height]
            now = shown[-1]["value_text"] if shown else None
            if (now is not None) == r.found and (not r.found or now == r.value):
                continue
            if r.view in STRONG_VIEWS:
                found.stale_reads.append(f"{member}: {r.view} read at {r.member} of {r.key} at height {r.height} "
                                         f"saw {r.value!r}; as of that height the chain now holds {now!r}")
            else:
                found.tentative_rolled_back += 1
    return found
