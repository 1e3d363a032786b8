"""Writes: ``POST /v1/txs`` (transactions the client signed) and ``POST /v1/write`` (operations
the node signs with the firm's client key). Both may wait for a view (``wait``, ``timeout_s``).

A refusal by the pool is raised as :class:`~.errors.Refused` with the pool's error object, so
its status comes from the error table (a namespace write rule: 403), not from its text.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ...core.model import Op
from ...ops_json import op_from_json
from .context import ApiContext, json_body
from .errors import ApiError, Refused, json_endpoint

WRITE_NEEDS_KEY = "sign transactions yourself and POST them to /v1/txs"


def parse_ops(raw: Any) -> list[Op]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "bad_request", "ops: must be a non-empty list")
    try:
        return [op_from_json(item, f"ops[{i}]") for i, item in enumerate(raw)]
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def routes(ctx: ApiContext) -> list[Route]:
    async def post_txs(request: Request) -> Any:
        started = ctx.engine.trace.now()
        data = await json_body(request)
        items = data.get("txs")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "bad_request", "txs: must be a non-empty list of base64 transactions")
        try:
            raws = [base64.b64decode(str(t), validate=True) for t in items]
        except binascii.Error as exc:
            raise ApiError(400, "bad_request", f"txs: not base64 ({exc})") from None
        submitted = await ctx.submit_and_wait(raws, data, started)
        refusal = submitted.first_refusal
        if refusal is not None and not (submitted.result.accepted or submitted.result.duplicates):
            raise Refused(refusal, submitted.answer)  # every one refused: the request failed
        return submitted.answer

    async def post_write(request: Request) -> Any:
        ctx.require_client_key(WRITE_NEEDS_KEY)  # before the body: no key, nothing else matters
        started = ctx.engine.trace.now()
        data = await json_body(request)
        ops = parse_ops(data.get("ops"))
        ops = await ctx.service.read(ctx.private.seal_ops, ops)  # plaintext never reaches the pool or a peer
        submitted = await ctx.submit_and_wait([ctx.sign(ops, WRITE_NEEDS_KEY).raw], data, started)
        if submitted.first_refusal is not None:
            raise Refused(submitted.first_refusal)
        return submitted.answer

    return [Route("/v1/txs", json_endpoint(post_txs), methods=["POST"]),
            Route("/v1/write", json_endpoint(post_write), methods=["POST"])]
