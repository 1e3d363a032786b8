"""``peerdb status | blocks | evidence | anchors``: what the node knows about the chain, read-only."""

from __future__ import annotations

import json
from typing import Any

import click

from . import exitcodes
from .context import Ctx, json_option, pass_ctx
from .errors import CliError
from .params import HeightType

SHOWN_TXS = 50
"""Transactions `blocks show` prints as text: enough to see what a block holds on one screen or
two; --json gives them all."""


@click.command()
@json_option
@pass_ctx
def status(ctx: Ctx) -> None:
    """Heads per view, peers, whose turn it is, anchoring, and alerts with their causes.

    \b
    Example:
      peerdb -c configs/firm-a.toml status --json
    """
    s = ctx.client.get("/v1/status")
    heads = s["heads"]
    lines = [
        f"{s['member']} in consortium {s['consortium']} ({s['consortium_id'][:16]})",
        f"heads: tentative {heads['tentative']}  majority {heads['majority']}  "
        f"unanimous-signed {heads['unanimous_signed']}  unanimous {heads['unanimous']}  anchored {heads['anchored']}",
        f"up to date: {'yes' if s['up_to_date'] else 'no (not every block is unanimous yet)'}",
        f"turn: height {s['turn']['height']} round {s['turn']['round']} -> {s['turn']['proposer']}",
        "peers: " + ", ".join(f"{m} {'up' if up else 'DOWN'}" for m, up in s["peers"].items()),
        f"pending transactions: {s['mempool']}",
    ]
    data_dir = s.get("data_dir")
    if data_dir:
        locked = " (signing LOCKED until caught up: restored data directory)" if data_dir["signing_locked"] else ""
        floor = f", signs only above height {data_dir['guard_floor']}" if data_dir["guard_floor"] is not None else ""
        lines.append(f"data directory: instance {data_dir['instance_id']}{floor}{locked}")
    if s.get("excluded"):
        lines.append("excluded (double-signed): " + ", ".join(s["excluded"]))
    for p in s.get("governance", {}).get("pending", []):
        waiting = ", ".join(p["waiting_for"]) or "nobody"
        lines.append(f"proposal {p['id'][:16]} {p['kind']} by {p['proposer']}: waiting for {waiting}")
    if s.get("anchoring"):
        lines.append(f"anchoring: {s['anchoring'].get('summary', s['anchoring'])}")
    for alert in s["alerts"]:
        lines.append(f"ALERT {alert['kind']}: {alert['message']}")
    ctx.emit(s, "\n".join(lines))


@click.group()
def blocks() -> None:
    """List and show blocks of the best chain."""


@blocks.command("list")
@click.option("--from", "start", type=HeightType(), default=None, help="First height (default: the last 20).")
@click.option("--to", "end", type=HeightType(), default=None, help="Last height (default: the tip).")
@json_option
@pass_ctx
def blocks_list(ctx: Ctx, start: int | None, end: int | None) -> None:
    """One line per block: height, hash, proposer, transactions, status, signers.

    \b
    Example:
      peerdb -c configs/firm-a.toml blocks list --from 100 --to 120
    """
    answer = ctx.client.get("/v1/blocks", **{"from": start, "to": end})
    lines = [f"{b['height']:>8}  {b['hash'][:16]}  {b['proposer']:<12} {b['tx_count']:>6} txs  "
             f"{b['status']:<16} {','.join(b['signers'])}{'  anchored' if b['anchored'] else ''}"
             for b in answer["blocks"]]
    ctx.emit(answer, "\n".join(lines) or "(no blocks yet)")


def block_value(op: dict[str, Any]) -> str:
    """What `blocks show` prints for an operation's value: the text of a put, unless the
    namespace is private (ciphertext only) or this member may not read it."""
    if op["op"] != "put":
        return ""
    if op.get("private"):
        return "(private: encrypted for its readers; read it with `peerdb get`)"
    if op.get("redacted"):
        return "(not shown: this member may not read the namespace)"
    return str(op["value_text"])


@blocks.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def blocks_show(ctx: Ctx, ref: str) -> None:
    """Header, transactions, member-by-member signatures, objections, status and anchor of a block.

    \b
    Example:
      peerdb -c configs/firm-a.toml blocks show 42
    """
    b = ctx.client.get(f"/v1/blocks/{ref}")
    lines = [f"block {b['height']} {b['hash']}", f"  proposer {b['proposer']} round {b['round']} time_ms {b['time_ms']}",
             f"  prev {b['prev']}", f"  status {b['status']}{' (anchored)' if b['anchored'] else ''}",
             "  signatures:"]
    for s in b["signatures"]:
        mark = "signed" if s["signed"] else "-"
        lines.append(f"    {s['member']:<14} {mark}{'  (excluded: double-signed)' if s['excluded'] else ''}")
    for o in b["objections"]:
        lines.append(f"  objection by {o['member']}: {o['reason']}")
    lines.append(f"  transactions ({b['tx_count']}):")
    for tx in b["txs"][:SHOWN_TXS]:
        for op in tx["ops"]:
            lines.append(f"    {tx['txid'][:12]} {tx['member']:<10} {op['op']:<6} {op['namespace']}/{op['key']}"
                         f" = {block_value(op)}")
    if len(b["txs"]) > SHOWN_TXS:
        lines.append(f"    ... {len(b['txs']) - SHOWN_TXS} more (use --json)")
    ctx.emit(b, "\n".join(lines))


@click.group()
def evidence() -> None:
    """Double-sign evidence this node holds."""


@evidence.command("list")
@json_option
@pass_ctx
def evidence_list(ctx: Ctx) -> None:
    """Every member proven to have signed two blocks at one height.

    \b
    Example:
      peerdb -c configs/firm-a.toml evidence list
    """
    answer = ctx.client.get("/v1/evidence")
    lines = [f"{e['id'][:16]}  {e['member']} at height {e['height']}: {e['block_a'][:16]} vs {e['block_b'][:16]}"
             for e in answer["evidence"]]
    ctx.emit(answer, "\n".join(lines) or "(no evidence: nobody double-signed)")


@evidence.command("show")
@click.argument("evidence_id")
@json_option
@pass_ctx
def evidence_show(ctx: Ctx, evidence_id: str) -> None:
    """One piece of evidence, with its encoding (anyone can re-check it).

    \b
    Example:
      peerdb -c configs/firm-a.toml evidence show 3fa1c2
    """
    answer = ctx.client.get("/v1/evidence")
    for e in answer["evidence"]:
        if e["id"].startswith(evidence_id.lower()):
            ctx.emit(e, "\n".join(f"{k}: {v}" for k, v in e.items()))
            return
    raise CliError(f"no evidence with id {evidence_id}", exitcodes.ERROR)


@click.group()
def anchors() -> None:
    """Bitcoin anchors of this node's chain."""


def _emit_anchors(ctx: Ctx, path: str) -> None:
    """The node's anchor answer as it is: its text form is the same JSON, in the API's key order."""
    answer = ctx.client.get(path)
    ctx.emit(answer, json.dumps(answer, indent=2))


@anchors.command("list")
@json_option
@pass_ctx
def anchors_list(ctx: Ctx) -> None:
    """Anchoring state: anchored height, pending and confirmed anchor transactions.

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors list
    """
    _emit_anchors(ctx, "/v1/anchors")


@anchors.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def anchors_show(ctx: Ctx, ref: str) -> None:
    """The anchor of one block (height or hash): Bitcoin transaction, height, depth, proof.

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors show 42
    """
    _emit_anchors(ctx, f"/v1/anchors/{ref}")
