"""``GET /v1/namespaces/{ns}/readers``: who a client must seal a value for before it signs the
transaction itself and posts it to ``/v1/txs`` (docs/api.md, "Private namespaces")."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ...core.consortium import EVERYONE
from ...core.privacy import readers_at
from .context import ApiContext, check_name
from .errors import json_endpoint


def routes(ctx: ApiContext) -> list[Route]:
    async def readers(request: Request) -> Any:
        ns = request.path_params["ns"]
        check_name(ns)

        def read() -> dict[str, Any]:
            engine = ctx.engine
            current, latest = engine.current, engine.gov.latest()
            rule = current.rule(ns)
            recipients = ctx.private.recipients(ns)
            return {
                "namespace": ns, "height": engine.tree.best_tip.height + 1,
                "private": ctx.private.private_soon(ns),
                "writers": [EVERYONE] if rule is None else list(rule.writers),
                "readers": sorted(readers_at(current, ns)),
                "readers_after_changes": sorted(readers_at(latest, ns)),
                "recipients": [{"member": m, "keys": [k.hex() for k in keys]}
                               for m, keys in sorted(recipients.items())],
            }
        return await ctx.service.read(read)

    return [Route("/v1/namespaces/{ns}/readers", json_endpoint(readers))]
