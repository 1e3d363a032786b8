"""The client API as one ASGI app: the bearer-token check, the routes of every route module,
and the JSON answers for what no route answers (404, 405) and for our own failures (500).

Bound to 127.0.0.1 by default and guarded by the bearer tokens of the node config. The
application token (``api.token``) speaks for the firm (it can sign with the firm's client key),
so it is as private as the key. The auditor token (``api.audit_token``) exports the books
(``GET /v1/audit/bundle``) and does nothing else; the application token cannot export them. The
two are kept apart because a bundle holds every value the member stores, including those of
namespaces its read rules keep from its own applications (read rules are a serving policy:
only private namespaces keep data off members' disks).
Every read names the view it was answered from and the height of that view's head; every
error is ``{"error": {"code": ..., "message": ...}}`` with a matching HTTP status (the table
is :data:`.errors.ERRORS`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ...core.keys import SigningKey
from ..service import NodeService
from ...anchor.planner import AnchorStatus
from . import explorer, routes_audit, routes_chain, routes_governance, routes_private, routes_read, routes_write
from .context import ApiContext
from .errors import error_response
from .private import PrivateValues

log = logging.getLogger("peerdb.api")

ROUTE_MODULES = (routes_write, routes_read, routes_chain, routes_audit, routes_governance, routes_private, explorer)
"""Every route module, each with ``routes(ctx) -> list[Route]``."""

HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
"""Codes of the router's own answers: no route has the path, or none takes the method."""

AUDIT_PATHS = frozenset({routes_audit.BUNDLE_PATH})
"""What the auditor token opens, and the application token does not."""


PUBLIC_PATHS = frozenset({explorer.PAGE_PATH})
"""Answered without a token: the explorer page holds no data (its script asks for the token and
reads everything through the API with it)."""
READ_METHODS = frozenset({"GET", "HEAD"})
"""What the read token may do."""


class Api:
    """The ASGI app :mod:`.server` serves (``Api(service, token, client_key, extras, audit_token)``).

    ``extras`` are sections the daemon adds to ``GET /v1/status`` (name → function);
    ``read_token`` is a second token that may only read (GET); ``audit_token`` opens
    :data:`AUDIT_PATHS` and nothing else (None: audit export is off); ``anchor_status`` gives the
    node's own anchoring state (the explorer shows its anchor transactions in flight).
    """

    def __init__(self, service: NodeService, token: str, client_key: SigningKey | None,
                 extras: dict[str, Callable[[], Any]] | None = None, *, read_token: str | None = None,
                 anchor_status: Callable[[], AnchorStatus] | None = None, audit_token: str | None = None) -> None:
        self.token = token
        self.read_token = read_token
        self.audit_token = audit_token
        self.context = ApiContext(service, client_key, PrivateValues(service.engine), dict(extras or {}),
                                  anchor_status)
        routes = [route for module in ROUTE_MODULES for route in module.routes(self.context)]
        self.app = Starlette(routes=routes, exception_handlers={
            HTTPException: self._http_error, Exception: self._server_error})

    @staticmethod
    async def _http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = HTTP_ERROR_CODES.get(status, "http_error")
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error_response(status, code, f"{request.method} {request.url.path}: {detail}")

    @staticmethod
    async def _server_error(request: Request, exc: Exception) -> Response:
        log.exception("API error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error: {type(exc).__name__}; see the node log")

    def _refusal(self, scope: Any) -> Response | None:
        """Why this bearer may not make this request (None: it may). The API token opens
        everything but the books; the read token only reads (GET); the auditor token opens only
        the books (:data:`AUDIT_PATHS`)."""
        path = str(scope.get("path", ""))
        if path in PUBLIC_PATHS:
            return None
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1").encode()
        app = hmac.compare_digest(header, f"Bearer {self.token}".encode())
        reader = self.read_token is not None and hmac.compare_digest(header, f"Bearer {self.read_token}".encode())
        auditor = self.audit_token is not None and hmac.compare_digest(header, f"Bearer {self.audit_token}".encode())
        if not (app or reader or auditor):
            return error_response(401, "unauthorized", "missing or wrong bearer token (see api.token in the node "
                                  "config; api.read_token reads only, api.audit_token exports the books)")
        if path in AUDIT_PATHS:
            if auditor:
                return None
            if self.audit_token is None:
                return error_response(403, "forbidden", "audit export is off on this node: its operator sets "
                                      "api.audit_token in the node config and gives it to the auditor")
            return error_response(403, "forbidden", "the books are exported with the auditor token "
                                  "(api.audit_token), not an application token")
        if auditor and not app:
            return error_response(403, "forbidden", f"the auditor token opens only {', '.join(sorted(AUDIT_PATHS))}")
        if reader and not app and scope.get("method") not in READ_METHODS:
            return error_response(401, "unauthorized", "the read token only reads (GET); writes need api.token")
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            response = self._refusal(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
