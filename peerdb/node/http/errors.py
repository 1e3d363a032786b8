"""The API's error edge: which error answers with which HTTP status and code, in one table.

Route handlers raise; they never build an error response. An error object travels unchanged
from where it was raised (the engine's admission, a governance check, a config lookup) to
:func:`json_endpoint`, which maps its *type* through :data:`ERRORS` — never its text. Every error
is ``{"error": {"code": ..., "message": ...}}`` with the status of its row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...core.errors import AccessError, ConfigError, CorruptionError, DiskFullError, RemoteError
from ..mempool import MempoolFull, NeverIncluded


class ApiError(Exception):
    """An answer the API decides itself (a malformed parameter, no such record), with its
    status and code given where it is raised."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Refused(Exception):
    """Admission refused a transaction the client submitted (for ``POST /v1/txs``: every one).

    ``error`` is the refusal's error object from the pool; ``answer`` is sent beside the error
    (the per-transaction outcome, so a client sees every reason, not only the first).
    """

    def __init__(self, error: RemoteError, answer: dict[str, Any] | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.answer = answer or {}


BAD_REQUEST = (400, "bad_request")

ERRORS: dict[type[Exception], tuple[int, str]] = {
    AccessError: (403, "forbidden"),         # a namespace rule denies this member (read or write)
    MempoolFull: (503, "mempool_full"),      # back-pressure: retry after the next blocks
    NeverIncluded: BAD_REQUEST,              # no block could ever include it (answered "rejected")
    ConfigError: (409, "not_configured"),    # the node lacks what the request needs (a client key)
    RemoteError: BAD_REQUEST,                # the request (or what it carries) breaks a rule
    ValueError: BAD_REQUEST,                 # a field the request gave that does not parse
    CorruptionError: (503, "corrupt_data"),  # our stored copy failed its hash check: refused, alerted, refetched
    DiskFullError: (507, "disk_full"),       # the node's disk is full: nothing was written
}
"""Status and code per error type. The most specific class in an error's MRO that has a row
decides (an :class:`AccessError` is a :class:`RemoteError`, and answers 403); a type with no
row is our own failure and answers 500 (see :mod:`.app`)."""

REJECTED = "rejected"
"""The code of a refused transaction whose error has only the generic 400 row: the request
was well-formed, the transaction it carried broke a rule."""


def status_of(exc: BaseException) -> tuple[int, str] | None:
    """(status, code) of ``exc`` by :data:`ERRORS`, or None if it is not an error we answer."""
    for cls in type(exc).__mro__:
        row = ERRORS.get(cls)
        if row is not None:
            return row
    return None


def error_response(status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({**(extra or {}), "error": {"code": code, "message": message}}, status_code=status)


def response_for(exc: Exception) -> Response | None:
    """The JSON error answering ``exc``, or None if the API has none (then it is a 500)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, Refused):
        status, code = status_of(exc.error) or BAD_REQUEST
        return error_response(status, REJECTED if (status, code) == BAD_REQUEST else code, str(exc.error),
                              exc.answer)
    row = status_of(exc)
    return None if row is None else error_response(*row, str(exc))


Handler = Callable[[Request], Awaitable[Any]]


def json_endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The one wrapper around every JSON endpoint: a returned dict becomes a 200 JSON answer,
    a raised error the response :func:`response_for` gives it; any other error propagates to
    the app's 500 handler."""
    async def endpoint(request: Request) -> Response:
        try:
            body = await handler(request)
        except Exception as exc:
            response = response_for(exc)
            if response is None:
                raise
            return response
        return body if isinstance(body, Response) else JSONResponse(body)
    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint
