"""The block explorer: ``GET /explorer`` (a static page) and the reads it shows.

The page (``explorer.html`` beside this module: plain HTML, CSS and JavaScript, no build step,
nothing fetched from elsewhere) holds no data and is served without a token; its script asks
for the API token or the read token (``[api] read_token``) and polls ``GET /v1/explorer``, one
read under the engine's lock that gathers what the page shows: recent best-chain blocks with
the signature matrix (members x heights: signed, endorsed through a later block, missing,
excluded) and the views each height reached, side branches and why they lost, recent reorgs,
anchors with their Bitcoin transactions, evidence, objections, alerts and pending governance.
A block's detail is ``GET /v1/blocks/{hash}``. ``GET /v1/forks`` is the side-branch part alone
(``peerdb forks``).
"""

from __future__ import annotations

import importlib.resources
import itertools
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from ...anchor.anchortx import parse_tx, txid
from ...anchor.hashes import to_display
from ...anchor.proof import AnchorProof
from ...core.chain import BlockTree
from ...core.errors import DecodeError
from ...core.model import Header
from ..engine import Engine
from .context import ApiContext, parse_int
from .errors import json_endpoint
from .routes_governance import pending_proposals

PAGE_PATH = "/explorer"
EXPLORER_HEIGHTS = 24
"""Best-chain heights the explorer shows by default: a screenful of matrix columns."""
MAX_EXPLORER_HEIGHTS = 200
"""Most heights one ``GET /v1/explorer`` reads under the engine's lock."""
MAX_BRANCH_BLOCKS = 50
"""Blocks of one side branch listed, newest first (its tip, weight and fork point are always given)."""
OBJECTIONS_SCANNED = 500
"""Stored objections read per request at most; the newest :data:`OBJECTIONS_SHOWN` are shown."""
OBJECTIONS_SHOWN = 30


def _page() -> str:
    return importlib.resources.files(__package__).joinpath("explorer.html").read_text(encoding="utf-8")


def cell(tree: BlockTree, block_hash: bytes, height: int, member: str) -> str:
    """One matrix cell: ``signed`` (its signature is on the block), ``endorsed`` (it signed a
    later best-chain block, which endorses this one), ``missing``, ``excluded`` (a culprit:
    its signatures no longer count) or ``none`` (not a member at that height)."""
    if member not in tree.members_at(height):
        return "none"
    if member in tree.culprits:
        return "excluded"
    if member in tree.signers(block_hash):
        return "signed"
    if tree.endorsement_height(member) >= height:
        return "endorsed"
    return "missing"


def why_lost(tree: BlockTree, tip: Header, weight: int, best: Header, best_weight: int) -> str:
    """The fork rule's verdict on a side branch, in words (docs/protocol.md: most counted
    signatures; ties to the lower tip height, then the lower tip hash). ``weight`` and
    ``best_weight`` count from the fork point up, where the two chains differ."""
    if weight < best_weight:
        return f"lighter: {weight} counted signatures above the fork against the best chain's {best_weight}"
    if weight == best_weight and tip.height > best.height:
        return f"tie at {weight} signatures, lost on height: the best tip is lower ({best.height} < {tip.height})"
    if weight == best_weight and tip.height == best.height:
        return f"tie at {weight} signatures and height {tip.height}, lost on hash: the best tip's hash is lower"
    final = tree.final
    return f"leaves out the settled block at height {final.height} ({final.hash.hex()[:16]}), which this node never leaves"


def side_branches(engine: Engine) -> list[dict[str, Any]]:
    """Side branches held in the block tree, highest tip first (``held``: fork choice may still
    move onto them), then the branches recent reorgs left behind that the tree has forgotten
    because they fork below the settled block (read back from the store)."""
    tree = engine.tree
    best = tree.best_tip
    total = tree.weight(best.hash)
    out: list[dict[str, Any]] = []
    for tip in sorted(tree.side_tips(), key=lambda h: (-h.height, h.hash)):
        fork = tree.fork_point(tip.hash)
        above = tree.weight(fork.hash)
        blocks: list[dict[str, Any]] = []
        excluded_sigs, h = 0, tip
        while not tree.on_best_chain(h.hash) and len(blocks) < MAX_BRANCH_BLOCKS:
            signers = tree.signers(h.hash)
            excluded_sigs += len(signers & tree.culprits)
            blocks.append({"height": h.height, "hash": h.hash.hex(), "round": h.round, "proposer": h.proposer,
                           "tx_count": h.tx_count, "signers": sorted(signers)})
            if not tree.held(h.prev):
                break
            h = tree.header(h.prev)
        weight, best_weight = tree.weight(tip.hash) - above, total - above
        out.append({"tip": tip.hash.hex(), "height": tip.height, "fork_height": fork.height,
                    "fork_block": fork.hash.hex(), "length": tip.height - fork.height, "held": True, "weight": weight,
                    "best_weight": best_weight, "excluded_signatures": excluded_sigs,
                    "why_lost": why_lost(tree, tip, weight, best, best_weight), "blocks": blocks})
    shown = {b["hash"] for branch in out for b in branch["blocks"]}
    for reorg in reversed(engine.counters.recent_reorgs):
        if reorg.old_tip.hex() in shown or tree.held(reorg.old_tip) or tree.on_best_chain(reorg.old_tip):
            continue
        branch = _forgotten_branch(engine, reorg.old_tip, reorg.rolled_back)
        if branch is not None:
            shown.update(b["hash"] for b in branch["blocks"])
            out.append(branch)
    return out


def _forgotten_branch(engine: Engine, tip_hash: bytes, rolled_back: int) -> dict[str, Any] | None:
    """A branch a reorg left and the tree has since forgotten, from the store."""
    tree, store = engine.tree, engine.store
    header = store.header(tip_hash)
    if header is None:
        return None
    blocks: list[dict[str, Any]] = []
    weight = excluded_sigs = 0
    h: Header | None = header
    while h is not None and not tree.on_best_chain(h.hash) and len(blocks) < MAX_BRANCH_BLOCKS:
        signers = set(store.signers(h.hash))
        weight += len(signers - tree.culprits)
        excluded_sigs += len(signers & tree.culprits)
        blocks.append({"height": h.height, "hash": h.hash.hex(), "round": h.round, "proposer": h.proposer,
                       "tx_count": h.tx_count, "signers": sorted(signers)})
        h = store.header(h.prev)
    fork_height = h.height if h is not None and tree.on_best_chain(h.hash) else header.height - len(blocks)
    return {"tip": tip_hash.hex(), "height": header.height, "fork_height": fork_height,
            "fork_block": h.hash.hex() if h is not None else None, "length": header.height - fork_height,
            "held": False, "weight": weight, "best_weight": None, "excluded_signatures": excluded_sigs,
            "why_lost": f"lost at a reorg ({rolled_back} block(s) rolled back) to a heavier chain; it forks below the "
                        f"settled block at height {tree.final.height}, so it can never be best again",
            "blocks": blocks}


def forks(engine: Engine) -> dict[str, Any]:
    """``GET /v1/forks``: side branches, blocks refused for leaving out the settled block, reorgs."""
    tree = engine.tree
    return {
        "tip": tree.best_tip.hash.hex(), "height": tree.best_tip.height,
        "best_weight": tree.weight(tree.best_tip.hash), "final_height": tree.final.height,
        "side_branches": side_branches(engine),
        "refused": [{"height": header.height, "hash": header.hash.hex(), "proposer": header.proposer,
                     "signers": sorted(signers),
                     "why": f"leaves out the settled block at height {tree.final.height}"}
                    for header, signers in engine.conflicts.values()],
        "reorgs": [{"at_ms": r.at_ms, "fork_height": r.fork_height, "rolled_back": r.rolled_back,
                    "applied": r.applied, "old_tip": r.old_tip.hex(), "new_tip": r.new_tip.hex(),
                    "returned_txs": r.returned_txs} for r in reversed(engine.counters.recent_reorgs)],
    }


def _anchor_of(engine: Engine, block_hash: bytes) -> tuple[str, int, int] | None:
    """(Bitcoin txid, Bitcoin height, depth at proof time) of a block's stored anchor proof."""
    raw = engine.store.anchor(block_hash)
    if raw is None:
        return None
    try:
        proof = AnchorProof.decode(raw)
    except DecodeError:
        return None
    return to_display(txid(parse_tx(proof.bitcoin_tx))), proof.bitcoin_height, len(proof.headers)


def explorer_view(ctx: ApiContext, count: int) -> dict[str, Any]:
    """Everything the explorer page shows; call through ``service.read``."""
    engine, service = ctx.engine, ctx.service
    tree = engine.tree
    heads = engine.heads()
    now = ctx.now_ms()
    tip = tree.best_tip.height
    members: list[str] = []
    blocks = []
    anchors: dict[str, dict[str, Any]] = {}
    heights = list(range(tip, max(0, tip - count), -1))
    if 0 < heads.anchored < tip - count + 1:
        heights.append(heads.anchored)  # the anchor covering the anchored head, below the window
    for height in heights:
        block_hash = tree.best_chain_hash(height)
        if block_hash is None:
            continue
        anchor = _anchor_of(engine, block_hash)
        if anchor is not None:
            txid, btc_height, depth = anchor
            entry = anchors.setdefault(txid, {"txid": txid, "bitcoin_height": btc_height, "depth": depth,
                                              "heights": []})
            entry["heights"].append(height)
        if height < tip - count + 1:
            continue
        h = tree.header(block_hash)
        at = tree.members_at(height)
        members.extend(m for m in at if m not in members)
        blocks.append({"height": height, "hash": block_hash.hex(), "round": h.round, "proposer": h.proposer,
                       "time_ms": h.time_ms, "tx_count": h.tx_count, "status": tree.status(block_hash, heads).value,
                       "anchored": height <= heads.anchored, "anchor_txid": anchor[0] if anchor else None,
                       "cells": {m: cell(tree, block_hash, height, m) for m in at}})
    in_flight = []
    if ctx.anchor_status is not None:
        status = ctx.anchor_status()
        for batch in status.batches:
            lo, hi = batch.heights
            in_flight.append({"txid": batch.txid, "state": batch.state.value, "confirmations": batch.confirmations,
                              "needed": status.confirmations_needed, "heights": [lo, hi], "fee_sat": batch.fee_sat})
    objections: list[dict[str, Any]] = []
    for o in itertools.islice(engine.store.all_objections(), OBJECTIONS_SCANNED):
        known = o.block_hash in tree
        objections.append({"block": o.block_hash.hex(), "member": o.member, "reason": o.reason,
                           "height": tree.header(o.block_hash).height if known else None, "accepted": known})
    objections.sort(key=lambda o: -int(o["height"] or 0))
    return {
        "member": engine.me, "consortium": engine.consortium.name, "now_ms": now,
        "heads": {"tentative": heads.tentative, "majority": heads.majority, "unanimous_signed": heads.unanimous_signed,
                  "unanimous": heads.unanimous, "anchored": heads.anchored, "final": tree.final.height},
        "up_to_date": heads.unanimous == heads.tentative,
        "members": members, "excluded": sorted(tree.culprits),
        "peers": {m: service.is_up(m) for m in engine.current.member_names if m != engine.me},
        "blocks": blocks,
        **forks(engine),
        "anchors": sorted(anchors.values(), key=lambda a: -max(a["heights"])),
        "anchors_in_flight": in_flight,
        "evidence": [{"id": e.id.hex(), "member": e.member, "height": e.header_a.height,
                      "block_a": e.header_a.hash.hex(), "block_b": e.header_b.hash.hex()}
                     for e in engine.evidence.values()],
        "objections": objections[:OBJECTIONS_SHOWN],
        "alerts": {"active": service.alerts.snapshot(), "recent": service.alerts.recent(10)},
        "governance": pending_proposals(engine, now),
    }


def routes(ctx: ApiContext) -> list[Route]:
    page = _page()

    async def get_page(request: Request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                           "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"})

    async def get_explorer(request: Request) -> Any:
        count = parse_int(request.query_params.get("heights"), "heights") or EXPLORER_HEIGHTS
        return await ctx.service.read(explorer_view, ctx, min(count, MAX_EXPLORER_HEIGHTS))

    async def get_forks(request: Request) -> Any:
        return await ctx.service.read(forks, ctx.engine)

    return [Route(PAGE_PATH, get_page),
            Route("/v1/explorer", json_endpoint(get_explorer)),
            Route("/v1/forks", json_endpoint(get_forks))]
