"""A supply-chain ledger: each firm writes only its own namespace; anyone reads the whole chain.

Every firm in the chain records its custody of a shipment in its own namespace
``chain.<firm>``, under the shipment id: what it did, whom it received the goods from, whom it
handed them to, and the SHA-256 of the previous holder's record. Reading the chain of custody
means starting at the producer and following ``handed_to`` from namespace to namespace, checking
at each step that the record links to the one before it and that the transaction writing it was
signed by the firm whose namespace it is.

"Only its own namespace" is a consensus rule when the consortium file says so:

    [[namespaces]]
    name = "chain.firm-a"
    writers = ["firm-a"]

With such rules, a block carrying a write by firm-b into ``chain.firm-a`` is invalid for every
member, and firm-b's own node refuses the write up front; this script shows that refusal. The
rules are fixed when the consortium is founded (they are part of its id: ``peerdb consortium
init --namespace chain.firm-a:writers=firm-a ...``), so the script reads consortium.toml to see
whether they exist and says so when they do not (and then does not attempt the forged write).

Run against a running consortium of at least two members:

    .venv/bin/python examples/supply_chain.py --dir DIR/consortium
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import click
from consortium_client import EXIT_CHECK_FAILED, ConsortiumDir, ExampleError, Member, NodeRefused, example_command

STEPS = ("produced", "shipped", "cleared customs", "delivered", "received", "stored")
"""What each successive holder does; the n-th member of the chain does STEPS[n]."""


def namespace(firm: str) -> str:
    return f"chain.{firm}"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_custody(net: ConsortiumDir, shipment: str, view: str, timeout: float) -> list[str]:
    """Each member in turn writes its custody record into its own namespace, through its own node."""
    firms = list(net.members)
    previous_text: str | None = None
    for i, firm in enumerate(firms):
        record: dict[str, Any] = {
            "shipment": shipment, "firm": firm, "step": STEPS[i % len(STEPS)],
            "received_from": firms[i - 1] if i > 0 else None,
            "handed_to": firms[i + 1] if i + 1 < len(firms) else None,
            "previous_sha256": sha256(previous_text) if previous_text is not None else None,
        }
        text = json.dumps(record, sort_keys=True)
        answer = net.members[firm].write([{"op": "put", "namespace": namespace(firm), "key": shipment,
                                           "value": text}], wait=view, timeout_s=timeout)
        if not answer.get("wait", {}).get("reached"):
            raise ExampleError(f"{firm}'s custody record did not reach {view} after {timeout} s")
        print(f"  {firm:<10} writes {namespace(firm)}/{shipment}: {record['step']}"
              f"{' <- ' + record['received_from'] if record['received_from'] else ''}"
              f"{' -> ' + record['handed_to'] if record['handed_to'] else ''}")
        previous_text = text
    return firms


def writer_of(reader: Member, ns: str, key: str, height: int) -> str | None:
    """The member whose client signed the transaction that wrote ``ns/key`` in block ``height``."""
    block = reader.block(height)
    for tx in block["txs"]:
        for op in tx["ops"]:
            if op["namespace"] == ns and op["key"] == key:
                member: str = tx["member"]
                return member
    return None


def read_chain(reader: Member, shipment: str, start: str, view: str) -> list[str]:
    """Follow the custody records from ``start``; returns the failures (empty if it all links)."""
    failures = []
    as_of = reader.head(view)
    print(f"\n{reader.name} reads the chain of custody of {shipment} at the {view} view (height {as_of}):")
    firm: str | None = start
    previous_text: str | None = None
    seen: set[str] = set()
    while firm is not None and firm not in seen:
        seen.add(firm)
        answer = reader.get(namespace(firm), shipment, view=view, at=as_of)
        if not answer["found"]:
            failures.append(f"{namespace(firm)}/{shipment}: no record at height {as_of}")
            break
        text = answer["value_text"]
        record = json.loads(text)
        link_ok = record["previous_sha256"] == (sha256(previous_text) if previous_text is not None else None)
        author = writer_of(reader, namespace(firm), shipment, answer["written_at"])
        print(f"  {namespace(firm)}/{shipment}: {record['step']:<16} written at height {answer['written_at']} "
              f"by {author}; links to the previous record: {'yes' if link_ok else 'NO'}")
        if not link_ok:
            failures.append(f"{namespace(firm)}/{shipment}: previous_sha256 does not match the previous record")
        if author != firm:
            failures.append(f"{namespace(firm)}/{shipment}: written by {author}, not by {firm}")
        previous_text = text
        firm = record["handed_to"]
    return failures


def try_forgery(net: ConsortiumDir, forger: Member, victim: str, shipment: str) -> list[str]:
    """firm-b tries to write into firm-a's namespace; returns the failures (empty if refused)."""
    ns = namespace(victim)
    rule = net.consortium.rule(ns)
    print(f"\n{forger.name} tries to write a record into {ns} (someone else's namespace):")
    if rule is None or rule.may_write(forger.name):
        who = "no rule for it" if rule is None else f"its writers are {list(rule.writers)}"
        print(f"  NOTE: consortium.toml has {who}, so every member may write {ns} and this write would be "
              f"accepted. Nothing attempted. To make 'each firm writes only its own namespace' a consensus "
              f"rule, found the consortium with a [[namespaces]] rule per firm (name = \"{ns}\", "
              f"writers = [\"{victim}\"]): `peerdb consortium init --namespace {ns}:writers={victim}` "
              f"for each firm. (The reader above still checks who signed each record, so a forged record "
              f"would be caught when read.)")
        return []
    forged = json.dumps({"shipment": shipment, "firm": victim, "step": "lost in transit", "forged_by": forger.name})
    try:
        answer = forger.write([{"op": "put", "namespace": ns, "key": shipment, "value": forged}])
    except NodeRefused as exc:
        print(f"  REFUSED by {forger.name}'s own node: HTTP {exc.status} {exc.code}: {exc.reason}")
        print(f"  (the rule for {ns} allows writers {list(rule.writers)}; every member would also refuse a "
              f"block carrying such a write)")
        return []
    return [f"{forger.name}'s write into {ns} was accepted ({answer}); the namespace rule did not hold"]


@click.option("--shipment", help="Shipment id (default: a new random one).")
@click.option("--view", default="unanimous_signed", show_default=True,
              help="View each custody write waits for and the reader reads.")
@example_command
def main(net: ConsortiumDir, timeout: float, shipment: str | None, view: str) -> int:
    """Each firm writes only its own namespace chain.<firm>; a reader follows the chain of custody.

    \b
    Example:
      .venv/bin/python examples/supply_chain.py --dir DIR/consortium
    """
    if len(net.members) < 2:
        raise ExampleError("a supply chain needs at least two members with node configs here")
    shipment = shipment or f"shp-{secrets.token_hex(4)}"
    ruled = [m for m in net.members if net.consortium.rule(namespace(m)) is not None]
    print(f"Consortium {net.consortium.name}; namespace rules for chain.*: "
          f"{', '.join(namespace(m) for m in ruled) if ruled else 'none'}")
    print(f"Shipment {shipment} passes through {' -> '.join(net.members)}; each firm records its custody:")
    firms = record_custody(net, shipment, view, timeout)
    reader = net.members[firms[-1]]
    failures = read_chain(reader, shipment, firms[0], view)
    failures += try_forgery(net, net.members[firms[1]], firms[0], shipment)
    if failures:
        print("\nFAILED:")
        for failure in failures:
            print(f"  {failure}")
        return EXIT_CHECK_FAILED
    print(f"\nChain of custody verified: {len(firms)} records, each in its holder's own namespace, each signed "
          f"by that holder and linked to the one before.")
    return 0


if __name__ == "__main__":
    main()
