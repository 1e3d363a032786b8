"""Reads of the chain and the node: blocks, status, alerts, peers, evidence, objections,
Bitcoin anchors, the consortium in force and the block-cycle trace."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ...anchor.anchortx import parse_tx, txid
from ...anchor.hashes import to_display
from ...anchor.proof import AnchorProof
from ...core.model import Block
from ..trace import TIMELINES
from .context import ApiContext, parse_int
from .errors import ApiError, json_endpoint
from .refs import block_ref
from .render import block_summary, tx_json
from .routes_governance import pending_proposals

BLOCKS_PER_PAGE = 20
"""Blocks ``GET /v1/blocks`` lists without ``from``: the newest screenful."""
MAX_BLOCKS_PER_PAGE = 500
"""Most blocks one ``GET /v1/blocks`` lists, whatever ``from`` and ``to`` ask."""
STATUS_ALERT_HISTORY = 10
"""Recently cleared alerts ``GET /v1/status`` shows (``GET /v1/alerts`` has the whole history)."""


def routes(ctx: ApiContext) -> list[Route]:
    engine = ctx.engine
    service = ctx.service

    async def get_blocks(request: Request) -> Any:
        def read() -> dict[str, Any]:
            tip = engine.tree.best_tip.height
            to = parse_int(request.query_params.get("to"), "to")
            to = tip if to is None else min(to, tip)
            start = parse_int(request.query_params.get("from"), "from")
            start = max(1, to - BLOCKS_PER_PAGE + 1) if start is None else max(1, start)
            start = max(start, to - MAX_BLOCKS_PER_PAGE + 1)
            blocks = []
            for height in range(start, to + 1):
                block_hash = engine.tree.best_chain_hash(height)
                if block_hash is not None:
                    blocks.append(block_summary(engine, block_hash))
            return {"tip": tip, "blocks": blocks}
        return await service.read(read)

    async def get_block(request: Request) -> Any:
        ref = request.path_params["ref"]

        def read() -> dict[str, Any]:
            tree = engine.tree
            block_hash = block_ref(engine, ref, "block: give a height, a hex hash or a hash prefix")
            block: Block | None = engine.store.block(block_hash)
            if block is None and tree.header(block_hash).height == 0:
                block = Block(tree.header(block_hash), ())  # genesis: a header that commits to the consortium
            if block is None:
                raise ApiError(404, "not_found", f"block {ref} has no stored body")
            h = block.header
            signers = tree.signers(block_hash)
            info = block_summary(engine, block_hash)
            info.update({
                "prev": h.prev.hex(), "tx_root": h.tx_root.hex(), "state_root": h.state_root.hex(),
                "evidence_root": h.evidence_root.hex(),
                "signatures": [{"member": m, "signed": m in signers, "excluded": m in tree.culprits}
                               for m in (engine.gov if h.height == 0 else engine.state_for(h.prev, h.height))
                               .members_at(h.height)],
                "objections": [{"member": o.member, "reason": o.reason} for o in engine.store.objections(block_hash)],
                "evidence": [{"id": e.id.hex(), "member": e.member, "height": e.header_a.height} for e in block.evidence],
                "txs": [tx_json(tx, lambda op: ctx.private.op_fields(op, h.height)) for tx in block.txs],
            })
            return info
        return await service.read(read)

    def status() -> dict[str, Any]:
        heads = engine.heads()
        now = ctx.now_ms()
        height, round_, proposer = engine.current_turn(now)
        answer: dict[str, Any] = {
            "member": engine.me, "consortium": engine.consortium.name, "consortium_id": engine.cid.hex(),
            "heads": {"tentative": heads.tentative, "majority": heads.majority,
                      "unanimous_signed": heads.unanimous_signed, "unanimous": heads.unanimous,
                      "anchored": heads.anchored},
            "tip": engine.tree.best_tip.hash.hex(),
            "turn": {"height": height, "round": round_, "proposer": proposer},
            "up_to_date": heads.unanimous == heads.tentative,
            "mempool": len(engine.mempool),
            "excluded": sorted(engine.tree.culprits),
            "members": list(engine.current.member_names),
            "governance": {"pending": pending_proposals(engine, now)},
            "peers": {m: service.is_up(m) for m in engine.current.member_names if m != engine.me},
            "alerts": service.alerts.snapshot(),
            "alert_history": service.alerts.recent(STATUS_ALERT_HISTORY),
            "uptime_s": (now - service.started_ms) / 1000,
            "data_dir": {"instance_id": engine.store.instance_id.hex(), "signing_locked": engine.store.guard_locked(),
                         "guard_floor": engine.store.guard_floor()},
            "removed_at": engine.removed_at(),
        }
        for name, fn in ctx.extras.items():
            answer[name] = fn()
        return answer

    async def get_status(request: Request) -> Any:
        return await service.read(status)

    async def get_alerts(request: Request) -> Any:
        return {"active": service.alerts.snapshot(), "cleared": list(service.alerts.history)}

    async def get_peers(request: Request) -> Any:
        return {"peers": [{"member": m, "up": service.is_up(m)}
                          for m in service.view.current.member_names if m != engine.me]}

    def evidence() -> dict[str, Any]:
        return {"evidence": [{"id": e.id.hex(), "member": e.member, "height": e.header_a.height,
                              "block_a": e.header_a.hash.hex(), "block_b": e.header_b.hash.hex(),
                              "encoded": base64.b64encode(e.encode()).decode()}
                             for e in engine.evidence.values()]}

    async def get_evidence(request: Request) -> Any:
        return await service.read(evidence)

    async def get_objections(request: Request) -> Any:
        def read() -> dict[str, Any]:
            tree = engine.tree
            return {"objections": [
                {"block": o.block_hash.hex(), "member": o.member, "reason": o.reason,
                 "height": tree.header(o.block_hash).height if o.block_hash in tree else None,
                 "accepted": o.block_hash in tree}
                for o in engine.store.all_objections()]}
        return await service.read(read)

    async def get_anchors(request: Request) -> Any:
        fn = ctx.extras.get("anchoring")
        return {"anchoring": fn() if fn else None,
                "anchored_height": service.view.heads.anchored}

    async def get_anchor(request: Request) -> Any:
        ref = request.path_params["ref"]

        def read() -> dict[str, Any]:
            tree = engine.tree
            block_hash = block_ref(engine, ref, "anchor: give a block height, hash or hash prefix")
            raw = engine.store.anchor(block_hash)
            height = tree.header(block_hash).height
            if raw is None:
                anchored_by = tree.best_chain_hash(tree.heads().anchored)
                return {"block": block_hash.hex(), "height": height, "anchored": height <= tree.heads().anchored,
                        "proof": None, "covered_by": anchored_by.hex() if anchored_by and
                        height <= tree.heads().anchored else None}
            proof = AnchorProof.decode(raw)
            return {"block": block_hash.hex(), "height": height, "anchored": True,
                    "bitcoin_txid": to_display(txid(parse_tx(proof.bitcoin_tx))),
                    "bitcoin_height": proof.bitcoin_height, "depth": len(proof.headers),
                    "merkle_root": proof.root.hex(), "path_length": len(proof.path),
                    "proof": base64.b64encode(raw).decode()}
        return await service.read(read)

    async def get_consortium(request: Request) -> Any:
        c = service.view.current  # in force at the next height, after every change passed so far
        return {"name": c.name, "id": engine.cid.hex(), "genesis_time_ms": c.genesis_time_ms,
                "members": [{"name": m.name, "key": m.key.hex(), "address": m.address, "api": m.api,
                             "clients": [k.hex() for k in m.clients]} for m in c.members],
                "params": {k: getattr(c.params, k) for k in c.params.__dataclass_fields__},
                "open_namespaces": c.open_namespaces,
                "namespaces": [{"name": r.name, "writers": list(r.writers), "readers": list(r.readers),
                                **({"private": True} if r.private else {})} for r in c.namespaces]}

    async def get_trace(request: Request) -> Any:
        # The trace is thread-safe on its own (its lock, not the engine's): no engine read.
        blocks = parse_int(request.query_params.get("blocks"), "blocks")
        return engine.trace.snapshot(TIMELINES if blocks is None else min(blocks, TIMELINES))

    return [Route("/v1/blocks", json_endpoint(get_blocks)),
            Route("/v1/trace", json_endpoint(get_trace)),
            Route("/v1/blocks/{ref}", json_endpoint(get_block)),
            Route("/v1/status", json_endpoint(get_status)),
            Route("/v1/alerts", json_endpoint(get_alerts)),
            Route("/v1/peers", json_endpoint(get_peers)),
            Route("/v1/evidence", json_endpoint(get_evidence)),
            Route("/v1/objections", json_endpoint(get_objections)),
            Route("/v1/anchors", json_endpoint(get_anchors)),
            Route("/v1/anchors/{ref}", json_endpoint(get_anchor)),
            Route("/v1/consortium", json_endpoint(get_consortium))]
