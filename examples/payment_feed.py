"""A payment feed written at rate, read back by the counterparty.

A firm's payment system records every payment it sends as it happens: ``payments/<firm>/<id>``
with the amount, the payee and a reference. It writes far faster than one HTTP request per
payment would carry, so it keeps one **write stream** open to its own node (docs/stream.md):
every payment is a transaction the application signs with the firm's client key, thousands are
in flight at once, and each comes back acknowledged with its txid, first as admitted, then as
``majority`` (more than half of the firms have co-signed the block holding it). A full pool or a
full window makes the stream push back, and the script reports how often that happened.

The payee, another member, then reads a sample of the payments from *its own* node at the
``majority`` view and finds exactly what the payer wrote: a payment acknowledged to the payer
is one the counterparty can see and can hold it to.

    .venv/bin/python examples/payment_feed.py --dir DIR/consortium --payments 2000
"""

from __future__ import annotations

import json
import random
import statistics
import time

import click
from consortium_client import EXIT_CHECK_FAILED, ConsortiumDir, ExampleError, example_command

NAMESPACE = "payments"
VIEW = "majority"
SAMPLE = 20
"""Payments the payee reads back from its own node."""


def payment(payer: str, payee: str, n: int, rng: random.Random) -> dict[str, object]:
    return {"id": f"{payer}-{n:07d}", "payer": payer, "payee": payee,
            "amount_cents": rng.randint(100, 5_000_000), "reference": f"INV-{rng.randint(10_000, 99_999)}"}


@click.option("--payer", default=None, help="The member whose payment system writes (default: the first).")
@click.option("--payee", default=None, help="The member that reads its payments back (default: the second).")
@click.option("--payments", type=click.IntRange(1, 200_000), default=2000, show_default=True,
              help="How many payments to stream.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the made-up payments.")
@example_command
def main(net: ConsortiumDir, timeout: float, payer: str | None, payee: str | None, payments: int, seed: int) -> int:
    """Stream payments through the payer's node, then read them back from the payee's.

    \b
    Example:
      .venv/bin/python examples/payment_feed.py --dir ./demo-work --payments 5000
    """
    names = list(net.members)
    if len(names) < 2:
        raise ExampleError("the payment feed needs two members with node configs in --dir")
    sender = net.member(payer or names[0])
    receiver = net.member(payee or next(n for n in names if n != sender.name))
    rng = random.Random(seed)
    records = [payment(sender.name, receiver.name, n, rng) for n in range(payments)]
    print(f"{sender.name} streams {payments} payments to {receiver.name} through its own node, "
          f"each acknowledged at {VIEW}")
    started = time.monotonic()
    with sender.stream((VIEW,), timeout) as stream:
        for record in records:
            stream.put(NAMESPACE, f"{sender.name}/{record['id']}", json.dumps(record, sort_keys=True))
        outcomes = stream.drain()
        stats = stream.stats()
    elapsed = time.monotonic() - started
    failed = [o for o in outcomes if not o.ok]
    latencies = sorted(o.reached_s[VIEW] * 1000 for o in outcomes if o.ok)
    print(f"  {len(outcomes) - len(failed)}/{payments} in the {VIEW} view in {elapsed:.2f} s "
          f"({payments / elapsed:,.0f} payments/s) over {stats.frames_sent} frames")
    if latencies:
        print(f"  submit -> {VIEW}: p50 {statistics.median(latencies):.0f} ms, max {latencies[-1]:.0f} ms")
    print(f"  back-pressure: {stats.busy_frames} busy frame(s) (full pool), {stats.window_waits} wait(s) "
          f"for the window ({stats.window_wait_s:.2f} s)")
    for o in failed[:5]:
        print(f"  NOT CONFIRMED {o.txid.hex()[:16]}: {o.status} {o.code or ''} {o.message or ''}")
    if failed:
        return EXIT_CHECK_FAILED

    height = sender.head(VIEW)
    receiver.wait_head(VIEW, height, timeout)  # signatures travel by gossip: a moment later there
    sample = rng.sample(records, min(SAMPLE, len(records)))
    same = 0
    for record in sample:
        got = receiver.get(NAMESPACE, f"{sender.name}/{record['id']}", view=VIEW)
        if got["found"] and json.loads(got["value_text"]) == record:
            same += 1
        else:
            print(f"  MISMATCH {record['id']}: {receiver.name} reads {got.get('value_text')!r}")
    print(f"{receiver.name} reads {same}/{len(sample)} sampled payments from its own node at {VIEW}: "
          f"{'exactly what ' + sender.name + ' wrote' if same == len(sample) else 'NOT what was written'}")
    return 0 if same == len(sample) else EXIT_CHECK_FAILED


if __name__ == "__main__":
    main()
