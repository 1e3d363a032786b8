"""Reads of the data: a transaction's status, a key's value in a view, a namespace's keys, a
key's history. Every data read checks the read rule in force; in a private namespace the
value is opened here, for this firm's clients (:class:`~.private.PrivateValues`).

With ``proof=true`` a key read (and each version of a history) also carries a read proof
(:mod:`peerdb.proofs`, base64 of its canonical CBOR) that the client checks with the
consortium file alone; the node only assembles it from its store."""

from __future__ import annotations

import base64
from typing import Any

import trio
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.routing import Route

from ...core.chain import View
from ...core.state import Effects
from ...proofs.build import HISTORY_PROOFS_MAX, ProofBuilder
from .context import ApiContext, parse_int, parse_view
from .errors import ApiError, json_endpoint
from .refs import tx_ref
from .render import value_json
from .scan import page_at, touched_keys

class KeyConvertor(Convertor[str]):
    """A key is any UTF-8 text (``/`` and line breaks included): the path's rest, whatever it holds
    (starlette's ``path`` convertor stops at a line break)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", KeyConvertor())

HISTORY_PER_PAGE = 500
"""Versions of a key per ``GET /v1/history`` page (``next_from`` gives the next): each value is
checked against the state tree (~0.1 ms), so a page holds the lock for tens of milliseconds."""

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

    def tx_info(ref: str) -> dict[str, Any]:
        txid = tx_ref(engine, ref)
        height, level = ctx.service.tx_level(txid)
        if height is None:
            if txid in engine.mempool:
                return {"txid": txid.hex(), "status": "pending"}
            raise ApiError(404, "not_found", f"transaction {txid.hex()} is neither pending nor on the best chain")
        location = engine.store.tx_location(txid)
        assert location is not None
        header = engine.tree.header(location.block_hash)
        heads = engine.heads()
        return {"txid": txid.hex(), "status": level or "tentative", "height": height,
                "block": location.block_hash.hex(), "index": location.index, "round": header.round,
                "proposer": header.proposer, "time_ms": header.time_ms,
                "views": {view.value: heads.height(view) >= height for view in View},
                "anchored": heads.anchored >= height}

    async def get_tx(request: Request) -> Any:
        return await ctx.service.read(tx_info, request.path_params["txid"])

    def kv(ns: str, key: str, view: View, at: int | None, with_proof: bool) -> dict[str, Any]:
        head_height = engine.heads().height(view)
        height = head_height if at is None else at
        if height > head_height:
            raise ApiError(400, "beyond_view", f"height {height} is above the {view.value} head ({head_height})")
        value, written = engine.store.get_checked(ns, key, height)  # never a value the disk changed
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
        """Keys of a namespace in a view, or as of a height ``at`` at or below its head, paged.
        Without ``view`` it lists the tentative view, the head, as docs/api.md states (a read of
        one key defaults to majority)."""
        ns = request.path_params["ns"]
        ctx.check_read(ns)
        view = parse_view(request.query_params.get("view") or View.TENTATIVE.value)
        at = parse_int(request.query_params.get("at"), "at")
        prefix = request.query_params.get("prefix", "")
        after = request.query_params.get("after")
        limit = min(parse_int(request.query_params.get("limit"), "limit") or SCAN_DEFAULT_KEYS, SCAN_MAX_KEYS)

        def plan() -> tuple[int, int, list[bytes], dict[bytes, Effects]]:
            head_height = engine.heads().height(view)
            height = head_height if at is None else at
            if height > head_height:
                raise ApiError(400, "beyond_view", f"height {height} is above the {view.value} head ({head_height})")
            above = [engine.tree.best_chain_hash(h) for h in range(height + 1, engine.tree.best_tip.height + 1)]
            hashes = [h for h in above if h is not None]
            return height, head_height, hashes, {h: e for h in hashes if (e := engine.effects_cache.get(h))}

        height, head_height, hashes, cached = await ctx.service.read(plan)
        touched = await trio.to_thread.run_sync(touched_keys, engine.store, hashes, cached, ns, prefix)

        def read() -> dict[str, Any]:
            tree = engine.tree
            above = [tree.best_chain_hash(h) for h in range(height + 1, tree.best_tip.height + 1)]
            if above[:len(hashes)] != hashes:  # the best chain moved under the blocks read: read them again
                more = touched_keys(engine.store, [h for h in above if h is not None], engine.effects_cache, ns, prefix)
            else:  # at most a few blocks arrived meanwhile
                more = touched_keys(engine.store, [h for h in above[len(hashes):] if h is not None],
                                    engine.effects_cache, ns, prefix)
            rows, next_after = page_at(engine.store, ns, prefix, after, limit, height, touched | more)
            return {"namespace": ns, "prefix": prefix, "view": view.value, "height": height,
                    "head_height": head_height,
                    "keys": [{"key": k, "written_at": h, **shown(ns, k, v, h)} for k, v, h in rows],
                    "next_after": next_after}
        return await ctx.service.read(read)

    async def get_history(request: Request) -> Any:
        ns, key = request.path_params["ns"], request.path_params["key"]
        ctx.check_read(ns)
        with_proof = parse_flag(request.query_params.get("proof"), "proof")
        if with_proof:
            await ctx.service.call(engine.flush_signatures)

        start = parse_int(request.query_params.get("from"), "from") or 0

        def read() -> dict[str, Any]:
            heads = engine.heads()
            versions = []
            builder = ProofBuilder(engine.store)
            # One page, from the version at or above ``from``: a request costs the same on a key
            # written a million times as on a new one.
            history = engine.store.history(ns, key, start_height=start, limit=HISTORY_PER_PAGE + 1)
            more = len(history) > HISTORY_PER_PAGE
            history = history[:HISTORY_PER_PAGE]
            proven = {h for h, _b, _v in history[-HISTORY_PROOFS_MAX:]} if with_proof else set()
            for height, block_hash, value in history:
                engine.store.check_value(ns, key, value, height)  # never a value the disk changed
                version = {"height": height, "block": block_hash.hex(), "deleted": value is None,
                           "status": engine.tree.status(block_hash, heads).value, **shown(ns, key, value, height)}
                if height in proven:
                    version["proof"] = encoded(builder.read_proof(ns, key, height, View.UNANIMOUS).encode())
                versions.append(version)
            answer: dict[str, Any] = {"namespace": ns, "key": key, "versions": versions,
                                      "next_from": history[-1][0] + 1 if more else None}
            if with_proof and len(history) > HISTORY_PROOFS_MAX:
                answer["proofs_from"] = history[-HISTORY_PROOFS_MAX][0]
            return answer
        return await ctx.service.read(read)

    return [Route("/v1/tx/{txid}", json_endpoint(get_tx)),
            Route("/v1/kv/{ns}", json_endpoint(get_scan)),
            Route("/v1/kv/{ns}/{key:anything}", json_endpoint(get_kv)),
            Route("/v1/history/{ns}/{key:anything}", json_endpoint(get_history))]
