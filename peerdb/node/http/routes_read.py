"""Reads of the data: a transaction's status, a key's value in a view, a namespace's keys, a
key's history. Every data read checks the read rule in force; in a private namespace the
value is opened here, for this firm's clients (:class:`~.private.PrivateValues`).

With ``proof=true`` a key read (and each version of a history) also carries a read proof
(:mod:`peerdb.proofs`, base64 of its canonical CBOR) that the client checks with the
consortium file alone; the node only assembles it from its store."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ...core.chain import View
from ...proofs.build import HISTORY_PROOFS_MAX, ProofBuilder
from .context import ApiContext, parse_int, parse_view
from .errors import ApiError, json_endpoint
from .render import value_json

SCAN_DEFAULT_KEYS = 100
"""Keys per page of ``GET /v1/kv/{ns}`` without ``limit``."""
SCAN_MAX_KEYS = 1000
"""Most keys per page, whatever ``limit`` asks: one read under the engine's lock."""


def parse_flag(text: str | None, name: str) -> bool:
    if text is None or text in ("false", "0"):
        return False
    if text in ("true", "1"):
        return True
    raise ApiError(400, "bad_parameter", f"{name}: must be true or false, got {text!r}")


def encoded(proof_bytes: bytes) -> str:
    return base64.b64encode(proof_bytes).decode("ascii")


def routes(ctx: ApiContext) -> list[Route]:
    engine = ctx.engine

    def shown(ns: str, key: str, value: bytes | None, written: int | None) -> dict[str, Any]:
        """:func:`value_json`, for a private namespace of the plaintext (opened here, in the read
        worker) plus ``private`` and, if this node cannot open it, ``unavailable``."""
        value, extra = ctx.private.open(ns, key, value, written)
        return {**value_json(value), **extra}

    def tx_info(txid: bytes) -> dict[str, Any]:
        height, level = ctx.service.tx_level(txid)
        if height is None:
            if txid in engine.mempool:
                return {"txid": txid.hex(), "status": "pending"}
            raise ApiError(404, "not_found", f"transaction {txid.hex()} is neither pending nor on the best chain")
        location = engine.store.tx_location(txid)
        assert location is not None
        return {"txid": txid.hex(), "status": level or "tentative", "height": height,
                "block": location.block_hash.hex()}

    async def get_tx(request: Request) -> Any:
        try:
            txid = bytes.fromhex(request.path_params["txid"])
        except ValueError:
            raise ApiError(400, "bad_parameter", "txid: must be hex") from None
        return await ctx.service.read(tx_info, txid)

    def kv(ns: str, key: str, view: View, at: int | None, with_proof: bool) -> dict[str, Any]:
        head_height = engine.heads().height(view)
        height = head_height if at is None else at
        if height > head_height:
            raise ApiError(400, "beyond_view", f"height {height} is above the {view.value} head ({head_height})")
        value, written = engine.store.get(ns, key, height)
        answer = {"namespace": ns, "key": key, "found": value is not None, **shown(ns, key, value, written),
                  "written_at": written, "view": view.value, "height": height, "head_height": head_height}
        if with_proof:
            if height == 0:
                raise ApiError(409, "no_block", "no block yet: there is nothing to prove a read against")
            answer["proof"] = encoded(ProofBuilder(engine.store).read_proof(ns, key, height, view).encode())
        return answer

    async def get_kv(request: Request) -> Any:
        ns, key = request.path_params["ns"], request.path_params["key"]
        ctx.check_read(ns)
        view = parse_view(request.query_params.get("view"))
        at = parse_int(request.query_params.get("at"), "at")
        with_proof = parse_flag(request.query_params.get("proof"), "proof")
        if with_proof:  # a proof carries the signatures the node holds: those still in memory too
            await ctx.service.call(engine.flush_signatures)
        return await ctx.service.read(kv, ns, key, view, at, with_proof)

    async def get_scan(request: Request) -> Any:
        """Keys of a namespace at the head (the tentative view), paged."""
        ns = request.path_params["ns"]
        ctx.check_read(ns)
        prefix = request.query_params.get("prefix", "")
        after = request.query_params.get("after")
        limit = min(parse_int(request.query_params.get("limit"), "limit") or SCAN_DEFAULT_KEYS, SCAN_MAX_KEYS)

        def read() -> dict[str, Any]:
            rows = engine.store.scan(ns, prefix, start_after=after, limit=limit)
            return {"namespace": ns, "prefix": prefix, "view": View.TENTATIVE.value,
                    "height": engine.tree.best_tip.height,
                    "keys": [{"key": k, "written_at": h, **shown(ns, k, v, h)} for k, v, h in rows],
                    "next_after": rows[-1][0] if len(rows) >= limit else None}
        return await ctx.service.read(read)

    async def get_history(request: Request) -> Any:
        ns, key = request.path_params["ns"], request.path_params["key"]
        ctx.check_read(ns)
        with_proof = parse_flag(request.query_params.get("proof"), "proof")
        if with_proof:
            await ctx.service.call(engine.flush_signatures)

        def read() -> dict[str, Any]:
            heads = engine.heads()
            versions = []
            builder = ProofBuilder(engine.store)
            history = engine.store.history(ns, key)
            proven = {h for h, _b, _v in history[-HISTORY_PROOFS_MAX:]} if with_proof else set()
            for height, block_hash, value in history:
                version = {"height": height, "block": block_hash.hex(), "deleted": value is None,
                           "status": engine.tree.status(block_hash, heads).value, **shown(ns, key, value, height)}
                if height in proven:
                    version["proof"] = encoded(builder.read_proof(ns, key, height, View.UNANIMOUS).encode())
                versions.append(version)
            answer: dict[str, Any] = {"namespace": ns, "key": key, "versions": versions}
            if with_proof and len(history) > HISTORY_PROOFS_MAX:
                answer["proofs_from"] = history[-HISTORY_PROOFS_MAX][0]
            return answer
        return await ctx.service.read(read)

    return [Route("/v1/tx/{txid}", json_endpoint(get_tx)),
            Route("/v1/kv/{ns}", json_endpoint(get_scan)),
            Route("/v1/kv/{ns}/{key:path}", json_endpoint(get_kv)),
            Route("/v1/history/{ns}/{key:path}", json_endpoint(get_history))]
