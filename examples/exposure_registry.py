"""An interbank exposure registry that a regulator member reads.

Banks (every member but the regulator) post their exposures to counterparties under
``exposures/<bank>/<counterparty>`` (namespace ``exposures``, key ``<bank>/<counterparty>``),
each bank in one atomic transaction through its own node. The regulator, itself a member
(by default the last one), reads the whole registry at the ``unanimous_signed`` view: every
figure it uses was co-signed by every bank, so no bank can later claim it reported something
else, and the regulator sees exactly what the banks see.

The regulator then computes each bank's total exposure, flags any counterparty that makes up
more than ``--threshold`` of a bank's total (a concentration), and shows the system-wide
exposure to each counterparty, which no single bank can see from its own books.

The client API has no key listing, so the regulator discovers the registry's keys the way an
auditor would: by walking the blocks of the chain up to the height it reads at, collecting the
keys written in ``exposures`` and checking that each bank's figures were signed by that bank.

A production registry would also restrict reading: a rule ``exposures.<bank>`` with
``readers = ["<bank>", "<regulator>"]`` per bank (read rules are enforced by each serving node;
in protocol v1 every member still stores every value).

    .venv/bin/python examples/exposure_registry.py --dir DIR/consortium
"""

from __future__ import annotations

import json
import random
from datetime import date
from typing import Any

import click
from consortium_client import EXIT_CHECK_FAILED, ConsortiumDir, ExampleError, Member, example_command

NAMESPACE = "exposures"
COUNTERPARTIES = ("acme-industrial", "globex-shipping", "initech-software", "umbrella-pharma", "stark-energy")
DEFAULT_THRESHOLD = 0.25
"""Share of a bank's total exposure above which one counterparty counts as a concentration
(large-exposure rules use 25% of capital; here, of the reported total)."""


def exposures_of(bank: str, others: list[str], as_of: str) -> dict[str, int]:
    """A bank's exposures in EUR thousands: to corporates and to the other banks. Deterministic
    per bank and date. Every figure is 20-30 million, so none is over 25% of a total of six or
    more; the second bank is made to lean on one name (half its book), so there is one thing to flag."""
    rng = random.Random(f"{bank}/{as_of}")
    figures = {cp: rng.randint(20_000, 30_000) for cp in COUNTERPARTIES}
    figures.update({other: rng.randint(20_000, 30_000) for other in others if other != bank})
    if others.index(bank) == 1:
        figures[COUNTERPARTIES[0]] = sum(figures.values())
    return figures


def post_exposures(bank: Member, banks: list[str], as_of: str, view: str, timeout: float) -> int:
    figures = exposures_of(bank.name, banks, as_of)
    ops = [{"op": "put", "namespace": NAMESPACE, "key": f"{bank.name}/{cp}",
            "value": json.dumps({"bank": bank.name, "counterparty": cp, "amount_keur": amount, "as_of": as_of})}
           for cp, amount in sorted(figures.items())]
    answer = bank.write(ops, wait=view, timeout_s=timeout)
    if not answer.get("wait", {}).get("reached"):
        raise ExampleError(f"{bank.name}'s exposures did not reach {view} after {timeout} s")
    height = int(bank.request("GET", f"/v1/tx/{answer['accepted'][0]}")["height"])
    print(f"  {bank.name:<10} posts {len(ops)} exposures, total {sum(figures.values()):>9,} kEUR, "
          f"one transaction, {view} at height {height}")
    return height


def discover_keys(regulator: Member, as_of_height: int) -> dict[str, str]:
    """Every key written in the registry up to ``as_of_height`` -> the member that signed its
    latest write (block walk: the API has no key listing)."""
    writers: dict[str, str] = {}
    for summary in regulator.blocks(1, as_of_height):
        if not summary["tx_count"]:
            continue
        for tx in regulator.block(summary["height"])["txs"]:
            for op in tx["ops"]:
                if op["namespace"] == NAMESPACE:
                    writers[op["key"]] = tx["member"]
    return writers


def read_registry(regulator: Member, view: str, min_height: int,
                  timeout: float) -> tuple[int, list[dict[str, Any]], list[str]]:
    as_of = regulator.wait_head(view, min_height, timeout)
    failures = []
    rows = []
    for key, signer in sorted(discover_keys(regulator, as_of).items()):
        answer = regulator.get(NAMESPACE, key, view=view, at=as_of)
        if not answer["found"]:
            continue  # deleted since
        row = json.loads(answer["value_text"])
        bank = key.split("/", 1)[0]
        if signer != bank or row.get("bank") != bank:
            failures.append(f"{NAMESPACE}/{key}: signed by {signer}, claims bank {row.get('bank')}: not {bank}'s own figure")
            continue
        rows.append(row)
    return as_of, rows, failures


def report(rows: list[dict[str, Any]], banks: list[str], as_of: str, threshold: float) -> list[str]:
    rows = [r for r in rows if r["as_of"] == as_of and r["bank"] in banks]
    totals: dict[str, int] = {}
    per_cp: dict[str, int] = {}
    for r in rows:
        totals[r["bank"]] = totals.get(r["bank"], 0) + r["amount_keur"]
        per_cp[r["counterparty"]] = per_cp.get(r["counterparty"], 0) + r["amount_keur"]
    flags = []
    print(f"\n  {'bank':<10} {'total kEUR':>12}  largest counterparty")
    for bank in banks:
        mine = [r for r in rows if r["bank"] == bank]
        if not mine:
            print(f"  {bank:<10} {'(nothing reported)':>12}")
            flags.append(f"{bank} reported no exposures for {as_of}")
            continue
        top = max(mine, key=lambda r: r["amount_keur"])
        share = top["amount_keur"] / totals[bank]
        mark = "  <-- CONCENTRATION" if share > threshold else ""
        print(f"  {bank:<10} {totals[bank]:>12,}  {top['counterparty']} {top['amount_keur']:,} ({share:.0%}){mark}")
        if share > threshold:
            flags.append(f"{bank}: {top['counterparty']} is {share:.0%} of its exposure (threshold {threshold:.0%})")
    print("\n  system-wide exposure per counterparty (what no single bank sees):")
    for cp, amount in sorted(per_cp.items(), key=lambda item: -item[1])[:8]:
        print(f"    {cp:<18} {amount:>12,} kEUR")
    return flags


@click.option("--regulator", help="The regulator member (default: the last member).")
@click.option("--as-of", default=date.today().isoformat(), show_default="today", help="Reporting date.")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Concentration threshold as a share of a bank's total.")
@example_command
def main(net: ConsortiumDir, timeout: float, regulator: str | None, as_of: str, threshold: float) -> int:
    """Banks post their exposures; the regulator member reads the whole registry and flags
    concentrations.

    \b
    Example:
      .venv/bin/python examples/exposure_registry.py --dir DIR/consortium --as-of 2025-12-31
    """
    view = "unanimous_signed"
    reader = net.member(regulator or list(net.members)[-1])
    banks = [m for m in net.members if m != reader.name]
    if not banks:
        raise ExampleError("the registry needs at least one bank besides the regulator")
    print(f"Consortium {net.consortium.name}: banks {', '.join(banks)}; regulator {reader.name}")
    print(f"Banks report their exposures as of {as_of}:")
    written = max(post_exposures(net.members[b], banks, as_of, view, timeout) for b in banks)
    as_of_height, rows, failures = read_registry(reader, view, written, timeout)
    print(f"\n{reader.name} (regulator) reads the registry at the {view} view, height {as_of_height}: "
          f"{len(rows)} entries, each signed by the bank it concerns and co-signed by every member")
    flags = report(rows, banks, as_of, threshold)
    if failures:
        print("\nFAILED:")
        for failure in failures:
            print(f"  {failure}")
        return EXIT_CHECK_FAILED
    print()
    for flag in flags:
        print(f"FLAG {flag}")
    print(f"Registry read: {len(banks)} banks, {len(flags)} concentration flag(s) over {threshold:.0%}.")
    return 0


if __name__ == "__main__":
    main()
