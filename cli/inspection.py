"""``peerdb status | blocks | evidence | anchors | forks | objections | tx``: what the node knows
about the chain, read-only. Ids may be given by any unambiguous prefix (4 hex digits at least);
the node resolves them."""

from __future__ import annotations

import time
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
    now_ms = time.time() * 1000
    for alert in s["alerts"]:
        lines.append(f"ALERT {alert['kind']}: {alert['message']} (for {ago(now_ms - alert['since_ms'])})")
    for past in s.get("alert_history", []):
        lines.append(f"cleared {ago(now_ms - past['cleared_ms'])} ago: {past['kind']} ({past['subject']}), "
                     f"lasted {ago(past['duration_s'] * 1000)}: {past['message']}")
    ctx.emit(s, "\n".join(lines))


def ago(ms: float) -> str:
    """A duration for people: 45 s, 12 min, 3 h."""
    seconds = max(0, int(ms // 1000))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


@click.group()
def blocks() -> None:
    """List and show blocks of the best chain."""


@blocks.command("list")
@click.option("--from", "start", type=HeightType(), default=None, help="First height (default: the last 20).")
@click.option("--to", "end", type=HeightType(), default=None, help="Last height (default: the tip).")
@json_option
@pass_ctx
def blocks_list(ctx: Ctx, start: int | None, end: int | None) -> None:
    """One line per block: height, hash, proposer, transactions, status, signers, round.

    The round is the turn the block was made in: 0 when its first proposer made it, 1 or more
    when earlier proposers of that height were silent past the turn timeout.

    \b
    Example:
      peerdb -c configs/firm-a.toml blocks list --from 100 --to 120
    """
    answer = ctx.client.get("/v1/blocks", **{"from": start, "to": end})
    lines = [f"{b['height']:>8}  {b['hash'][:16]}  {b['proposer']:<12} {b['tx_count']:>6} txs  "
             f"{b['status']:<16} {','.join(b['signers']):<24} round {b['round']}{'  anchored' if b['anchored'] else ''}"
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

    REF is a height on the best chain, a block hash, or a hash prefix.

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


@anchors.command("list")
@json_option
@pass_ctx
def anchors_list(ctx: Ctx) -> None:
    """Anchoring state: anchored height, whose anchoring turn it is, anchor transactions in flight.

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors list
    """
    answer = ctx.client.get("/v1/anchors")
    lines = [f"anchored height: {answer['anchored_height']}"]
    anchoring = answer.get("anchoring")
    if anchoring is None:
        lines.append("this node does not anchor (no [bitcoin] section); it verifies the anchor proofs other "
                     "members send")
    else:
        lines.append(f"anchoring: {anchoring['state']}, this interval's anchorer: {anchoring['duty']}")
        if anchoring.get("reason"):
            lines.append(f"  last problem: {anchoring['reason']}")
        lines += [f"  {line}" for line in anchoring.get("lines", [])] or ["  (nothing in flight)"]
    ctx.emit(answer, "\n".join(lines))


@anchors.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def anchors_show(ctx: Ctx, ref: str) -> None:
    """The anchor of one block (height, hash or hash prefix): Bitcoin transaction, height, depth, proof.

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors show 42
    """
    a = ctx.client.get(f"/v1/anchors/{ref}")
    lines = [f"block {a['height']} {a['block']}"]
    if a.get("bitcoin_txid"):
        lines += [f"  anchored in Bitcoin transaction {a['bitcoin_txid']}",
                  f"  in Bitcoin block {a['bitcoin_height']}, {a['depth']} confirmation(s) when the proof was made",
                  f"  Merkle root {a['merkle_root']}, path of {a['path_length']} hash(es) to this block",
                  "  the proof (base64) is in --json; `peerdb audit verify` checks it against Bitcoin"]
    elif a["anchored"]:
        lines.append(f"  anchored through a later block: {a.get('covered_by')} carries the anchor proof")
    else:
        lines.append("  not anchored yet: no Bitcoin transaction covers it (see `peerdb anchors list`)")
    ctx.emit(a, "\n".join(lines))


@click.command()
@json_option
@pass_ctx
def forks(ctx: Ctx) -> None:
    """Side branches (forks that lost) with their weight and why they lost, refused blocks, reorgs.

    The fork rule: the chain with the most signatures wins, not counting members excluded for
    double-signing; ties go to the lower tip height, then the lower tip hash.

    \b
    Example:
      peerdb -c configs/firm-a.toml forks
    """
    f = ctx.client.get("/v1/forks")
    lines = [f"best chain: tip {f['height']} {f['tip'][:16]}, weight {f['best_weight']} signatures; "
             f"final (settled) height {f['final_height']}"]
    for s in f["side_branches"]:
        against = "" if s["best_weight"] is None else f" against the best chain's {s['best_weight']}"
        lines.append(f"side branch {s['tip'][:16]} at height {s['height']}: {s['length']} block(s) from the fork at "
                     f"{s['fork_height']}, {s['weight']} counted signature(s) above the fork{against}"
                     f"{'' if s['held'] else ' (forgotten by the block tree; read from the store)'}")
        lines.append(f"  why it lost: {s['why_lost']}")
        if s["excluded_signatures"]:
            lines.append(f"  {s['excluded_signatures']} signature(s) on it are by excluded members and do not count")
        for b in s["blocks"]:
            lines.append(f"    {b['height']:>8}  {b['hash'][:16]}  {b['proposer']:<12} round {b['round']}  "
                         f"signed by {','.join(b['signers']) or 'nobody'}")
    if not f["side_branches"]:
        lines.append("no side branch: every block this node holds is on its best chain")
    for r in f["refused"]:
        lines.append(f"refused block {r['height']} {r['hash'][:16]} by {r['proposer']} "
                     f"(signed by {','.join(r['signers'])}): {r['why']}")
    for r in f["reorgs"]:
        lines.append(f"reorg {ago(time.time() * 1000 - r['at_ms'])} ago: rolled back {r['rolled_back']} block(s) "
                     f"above height {r['fork_height']} ({r['old_tip'][:16]} -> {r['new_tip'][:16]}), "
                     f"{r['returned_txs']} transaction(s) back to the pool")
    ctx.emit(f, "\n".join(lines))


@click.command()
@json_option
@pass_ctx
def objections(ctx: Ctx) -> None:
    """Objections: signed refusals of a proposed block by a member, with the reason.

    Objections inform; they do not change which chain wins. A block never accepted (invalid) has
    no height.

    \b
    Example:
      peerdb -c configs/firm-a.toml objections
    """
    answer = ctx.client.get("/v1/objections")
    lines = [f"{'-' if o['height'] is None else o['height']:>8}  {o['block'][:16]}  {o['member']:<12} "
             f"{'' if o['accepted'] else '(never accepted) '}{o['reason']}" for o in answer["objections"]]
    ctx.emit(answer, "\n".join(lines) or "(no objections)")


@click.command("tx")
@click.argument("txid")
@json_option
@pass_ctx
def tx_cmd(ctx: Ctx, txid: str) -> None:
    """Where a transaction is (block, height, round) and which views it has reached.

    TXID is a transaction id or a prefix of one (at least 4 hex digits).

    \b
    Example:
      peerdb -c configs/firm-a.toml tx 3fa1c2d4
    """
    t = ctx.client.get(f"/v1/tx/{txid}")
    if t["status"] == "pending":
        ctx.emit(t, f"transaction {t['txid']}\n  pending: waiting in the pool for a block")
        return
    reached = [v for v, yes in t["views"].items() if yes]
    lines = [f"transaction {t['txid']}",
             f"  in block {t['height']} {t['block']} (round {t['round']}, proposed by {t['proposer']}), "
             f"position {t['index']}",
             f"  status {t['status']}; views reached: {', '.join(reached) or 'none'}"
             f"{'; anchored' if t['anchored'] else '; not anchored yet'}"]
    ctx.emit(t, "\n".join(lines))
