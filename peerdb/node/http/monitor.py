"""The monitoring app on ``[metrics] listen``: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

No token: these are for the firm's monitoring (Prometheus, a load balancer, systemd or
Kubernetes probes) and tell nothing a member's data is made of — heights, counts, member names,
durations. Keep the address on loopback or the monitoring network like any exporter. Health and
readiness answer 200 with ``{"healthy"|"ready": true, ...}`` or 503 with the same body naming
every reason (:mod:`peerdb.node.health`).
"""

from __future__ import annotations

from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...core.consortium import Params
from ..health import health, read_readiness
from ..metrics import NodeMetrics
from ..service import NodeService


HEALTH_LOCK_WAIT_S = 1.0
"""``/healthz`` waits this long for the engine's lock to read the current parameters, then
judges with the last ones it read: a probe must answer promptly, above all when the node hangs."""


class MonitorApp:
    def __init__(self, service: NodeService, metrics: NodeMetrics, params: Params) -> None:
        self.service = service
        self.metrics = metrics
        self._params = params
        self.app = Starlette(routes=[Route("/metrics", self.get_metrics), Route("/healthz", self.get_health),
                                     Route("/readyz", self.get_ready)])

    async def get_metrics(self, request: Request) -> Response:
        return Response(await self.metrics.scrape(self.service), media_type=CONTENT_TYPE_LATEST)

    async def get_health(self, request: Request) -> Response:
        # The parameters (governance may change them) are read under the lock, but a stuck engine
        # holding the lock is what this check must report, not wait for: the last ones read do.
        with trio.move_on_after(HEALTH_LOCK_WAIT_S):
            self._params = await self.service.read(lambda: self.service.engine.params)
        verdict = health(self.service.loop_turned, trio.current_time(), self._params.heartbeat_ms / 1000,
                         self._params.turn_timeout_ms / 1000)
        return JSONResponse(verdict.body("healthy"), status_code=200 if verdict.ok else 503)

    async def get_ready(self, request: Request) -> Response:
        verdict = await self.service.read(read_readiness, self.service)
        return JSONResponse(verdict.body("ready"), status_code=200 if verdict.ok else 503)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
