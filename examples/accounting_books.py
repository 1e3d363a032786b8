"""Anchored accounting books: a firm commits its books every period; an auditor later proves
there were never two sets of books.

The firm keeps its full books (every journal entry) in its own systems. At each period close it
commits to the shared ledger, under ``books/<firm>/<period>`` (namespace ``books``, key ``<firm>/<period>``), a small record: the closing balances and
the SHA-256 of the full books document. Every member co-signs the block carrying it (and, in a
consortium that anchors, the block hash goes into Bitcoin), so the firm cannot later show one
auditor one version of a period and someone else another: any second version would be a second,
visible, signed entry in the key's history.

Later an auditor, trusting none of the members:
  1. reads every period from two different members' nodes at the ``unanimous_signed`` view (as
     of the same height) and checks that they return the same record;
  2. checks that each period has exactly one version in the history, written by the firm;
  3. re-hashes the books documents the firm hands over and checks them against the digests.

Run against a running consortium (for example ``peerdb demo --keep-running --workdir DIR``):

    .venv/bin/python examples/accounting_books.py --dir DIR/consortium
    .venv/bin/python examples/accounting_books.py --dir DIR/consortium --wait-anchor

Re-running is safe: a period already committed is not written again (writing it again would
create exactly the second version the audit looks for).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import click
from consortium_client import EXIT_CHECK_FAILED, ConsortiumDir, ExampleError, Member, example_command

NAMESPACE = "books"
DEFAULT_PERIODS = "2025-Q1,2025-Q2,2025-Q3,2025-Q4"
OPENING = {"cash": 2_000_000, "receivables": 0, "inventory": 500_000, "payables": 0, "revenue": 0,
           "expenses": 0, "equity": -2_500_000}
"""Opening balances (debit positive, credit negative), as in any double-entry ledger."""
POSTINGS = (("receivables", "revenue", 90_000), ("cash", "receivables", 80_000), ("inventory", "payables", 40_000),
            ("payables", "cash", 35_000), ("expenses", "cash", 20_000))
"""Kinds of journal entry: (debit account, credit account, typical amount)."""
ENTRIES_PER_PERIOD = 40


def full_books(firm: str, period: str) -> dict[str, Any]:
    """The firm's complete books for a period. Deterministic here, so a re-run (or the auditor
    in this script) gets back exactly what the firm kept; in real life it is the firm's ledger."""
    rng = random.Random(f"{firm}/{period}")
    entries = []
    for i in range(ENTRIES_PER_PERIOD):
        debit, credit, typical = rng.choice(POSTINGS)
        entries.append({"n": i + 1, "debit": debit, "credit": credit, "amount": rng.randint(typical // 2, typical * 3 // 2)})
    return {"firm": firm, "period": period, "currency": "EUR", "opening": OPENING, "entries": entries}


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def books_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def closing_record(doc: dict[str, Any]) -> dict[str, Any]:
    """What goes on the shared ledger: balances and a digest, never the books themselves."""
    balances = dict(doc["opening"])
    for entry in doc["entries"]:
        balances[entry["debit"]] += entry["amount"]
        balances[entry["credit"]] -= entry["amount"]
    return {"firm": doc["firm"], "period": doc["period"], "currency": doc["currency"],
            "balances": balances, "entries": len(doc["entries"]), "books_sha256": books_digest(doc)}


def choose_wait_view(net: ConsortiumDir, wait_anchor: bool) -> str:
    if not wait_anchor:
        return "unanimous_signed"
    anchoring = [m.name for m in net.members.values() if m.status().get("anchoring") is not None]
    if anchoring:
        print(f"--wait-anchor: {', '.join(anchoring)} anchor into Bitcoin; waiting for the unanimous view "
              f"(signed by every member and anchored)")
        return "unanimous"
    print("--wait-anchor: no member here has a [bitcoin] section, so nothing gets anchored; "
          "waiting for unanimous_signed instead")
    return "unanimous_signed"


def commit_period(firm: Member, period: str, view: str, timeout: float) -> int:
    """Commit one period's closing record; returns the height of the block holding it."""
    doc = full_books(firm.name, period)
    record = closing_record(doc)
    key = f"{firm.name}/{period}"
    existing = firm.history(NAMESPACE, key)
    if existing:
        print(f"  {period}: already committed at height {existing[0]['height']} "
              f"({len(existing)} version(s)); not writing it again")
        height: int = existing[-1]["height"]
        return height
    answer = firm.write([{"op": "put", "namespace": NAMESPACE, "key": key, "value": json.dumps(record)}],
                        wait=view, timeout_s=timeout)
    wait = answer.get("wait", {})
    if not wait.get("reached"):
        raise ExampleError(f"{period}: not {view} after {timeout} s ({wait.get('message', 'no answer')})")
    txid = answer["accepted"][0] if answer["accepted"] else answer["duplicates"][0]
    height = firm.request("GET", f"/v1/tx/{txid}")["height"]
    print(f"  {period}: committed books_sha256 {record['books_sha256'][:16]}... "
          f"cash {record['balances']['cash']:>10} EUR  -> {view} at height {height} (tx {txid[:12]})")
    return int(height)


def rewrite_period(firm: Member, period: str, view: str, timeout: float) -> int:
    """What a cheating firm would do: commit a second, 'improved' version of a closed period."""
    doc = full_books(firm.name, period)
    doc["entries"][0]["amount"] += 1_000_000
    record = closing_record(doc)
    answer = firm.write([{"op": "put", "namespace": NAMESPACE, "key": f"{firm.name}/{period}",
                          "value": json.dumps(record)}], wait=view, timeout_s=timeout)
    if not answer.get("wait", {}).get("reached"):
        raise ExampleError(f"{period}: the rewrite did not reach {view} after {timeout} s")
    height = int(firm.request("GET", f"/v1/tx/{answer['accepted'][0]}")["height"])
    print(f"  {period}: {firm.name} REWRITES the closed period (books_sha256 now "
          f"{record['books_sha256'][:16]}...) at height {height}")
    return height


def audit(net: ConsortiumDir, firm: Member, periods: list[str], view: str, committed_height: int,
          timeout: float) -> list[str]:
    """The auditor's checks; returns the failures (empty if the books are consistent)."""
    others = [m for m in net.members.values() if m.name != firm.name]
    readers = (others if len(others) >= 2 else list(net.members.values()))[-2:]
    failures = []
    heights = {m.name: m.wait_head(view, committed_height, timeout) for m in readers}
    as_of = min(heights.values())
    names = " and ".join(m.name for m in readers)
    print(f"\nAuditor: reading every period from {names} at the {view} view, as of height {as_of}")
    for period in periods:
        key = f"{firm.name}/{period}"
        answers = {m.name: m.get(NAMESPACE, key, view=view, at=as_of) for m in readers}
        values = {name: a["value_text"] for name, a in answers.items()}
        if not all(a["found"] for a in answers.values()):
            failures.append(f"{period}: not found at every member ({', '.join(n for n, a in answers.items() if not a['found'])})")
            continue
        if len(set(values.values())) != 1:
            failures.append(f"{period}: the members disagree: {values}")
            continue
        record = json.loads(next(iter(values.values())))
        rehashed = books_digest(full_books(firm.name, period))
        if rehashed != record["books_sha256"]:
            failures.append(f"{period}: the books handed to the auditor hash to {rehashed[:16]}..., "
                            f"the ledger says {record['books_sha256'][:16]}...")
        versions = {m.name: m.history(NAMESPACE, key) for m in readers}
        counts = {name: len(v) for name, v in versions.items()}
        if set(counts.values()) != {1}:
            heights_seen = sorted({v["height"] for vs in versions.values() for v in vs})
            failures.append(f"{period}: {max(counts.values())} versions in the history (heights "
                            f"{', '.join(map(str, heights_seen))}), each signed into the ledger: two sets of books")
            continue
        version = next(iter(versions.values()))[0]
        block = readers[0].block(version["height"])
        writers = {tx["member"] for tx in block["txs"] for op in tx["ops"]
                   if op["namespace"] == NAMESPACE and op["key"] == key}
        if writers != {firm.name}:
            failures.append(f"{period}: written by {sorted(writers)}, not {firm.name}")
        signed = sum(1 for s in block["signatures"] if s["signed"])
        print(f"  {period}: {names} agree; exactly one version (height {version['height']}, "
              f"status {version['status']}, written by {', '.join(sorted(writers))}, block signed by {signed}/{len(block['signatures'])} "
              f"members); books re-hash to the committed digest: {'yes' if rehashed == record['books_sha256'] else 'NO'}")
    return failures


@click.option("--firm", help="The member committing its books (default: the first member).")
@click.option("--periods", default=DEFAULT_PERIODS, show_default=True, help="Comma-separated periods.")
@click.option("--rewrite", metavar="PERIOD",
              help="Simulate cheating: after committing, write a second version of PERIOD (the audit must then fail).")
@click.option("--wait-anchor", is_flag=True,
              help="Wait until each period is unanimous (anchored in Bitcoin), if the consortium anchors.")
@example_command
def main(net: ConsortiumDir, timeout: float, firm: str | None, periods: str, rewrite: str | None,
         wait_anchor: bool) -> int:
    """A firm commits its books each period; an auditor proves there were never two sets of books.

    \b
    Example:
      .venv/bin/python examples/accounting_books.py --dir DIR/consortium --wait-anchor
    """
    member = net.member(firm or next(iter(net.members)))
    chosen = [p.strip() for p in periods.split(",") if p.strip()]
    print(f"Consortium {net.consortium.name}: {', '.join(net.consortium.member_names)}")
    view = choose_wait_view(net, wait_anchor)
    print(f"{member.name} closes {len(chosen)} periods and commits its books to '{NAMESPACE}/{member.name}/<period>':")
    committed = max((commit_period(member, period, view, timeout) for period in chosen), default=0)
    if rewrite:
        committed = max(committed, rewrite_period(member, rewrite, view, timeout))
    failures = audit(net, member, chosen, view, committed, timeout)
    firm_name = member.name
    if failures:
        print("\nAUDIT FAILED:")
        for failure in failures:
            print(f"  {failure}")
        return EXIT_CHECK_FAILED
    print(f"\nAudit passed: {firm_name} cannot be accused of keeping two sets of books: every period has "
          f"exactly one version, signed into the shared ledger by every member, and the books match it.")
    return 0


if __name__ == "__main__":
    main()
