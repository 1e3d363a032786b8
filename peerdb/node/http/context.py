"""What every route module works with: :class:`ApiContext`, and the request parsing they share.

A route module gets one :class:`ApiContext` (``routes(ctx) -> list[Route]``) and nothing else
of the app: the node's service (and through it the engine and the clock), the firm's client
key, the sealing and opening of private values, and the status extras of the daemon. The
helpers here are the steps several endpoints take alike: read a JSON body within its size
limit, check a namespace name and the read rule, sign for the firm, and submit-and-wait.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.requests import Request

from ...anchor.planner import AnchorStatus
from ...core.chain import View
from ...core.consortium import NAME_RE
from ...core.errors import ConfigError, RemoteError, ValidationError
from ...core.keys import SigningKey
from ...core.limits import MAX_NAMESPACE_LEN
from ...core.model import Op, Tx
from ..engine import Engine
from ..mempool import SubmitResult
from ..service import NodeService
from .errors import ApiError
from .private import PrivateValues

DEFAULT_VIEW = View.MAJORITY
"""Reads default to the majority view: tentative can roll back on a fork, unanimous waits for
Bitcoin confirmations; majority is what most of the consortium has already signed."""
MAX_WAIT_S = 600.0
"""Longest a client may ask the node to hold a request open waiting for a view."""
DEFAULT_WAIT_S = 30.0
"""How long a request that asks to wait (``"wait": VIEW``) waits without ``timeout_s``."""
MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Largest request body the API reads; a larger one is refused with 413 before it is parsed."""
CLIENT_TX_TTL_MS = 10 * 60 * 1000
"""Expiry the node gives the transactions it signs for its clients (``/v1/write``, governance)."""


def parse_view(text: str | None) -> View:
    if text is None:
        return DEFAULT_VIEW
    try:
        return View.parse(text)
    except ValidationError as exc:
        raise ApiError(400, "bad_view", str(exc)) from None


MAX_INT_PARAMETER = 2**63 - 1
"""Largest integer a query parameter may carry (heights, limits): the store keys heights as
unsigned 64-bit, and nothing a client asks for is larger."""


def parse_int(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_INT_PARAMETER:
        raise ApiError(400, "bad_parameter", f"{name}: must be a non-negative integer below 2^63, got {text[:40]!r}")
    return int(text)


def check_name(ns: str) -> None:
    if len(ns) > MAX_NAMESPACE_LEN or not NAME_RE.match(ns):
        raise ApiError(400, "bad_namespace", f"namespace {ns!r}: lowercase letters, digits, '_', '.', '-' "
                       f"(at most {MAX_NAMESPACE_LEN})")


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, at most :data:`MAX_REQUEST_BYTES`; none is ``{}``."""
    raw = await request.body()
    if len(raw) > MAX_REQUEST_BYTES:
        raise ApiError(413, "too_large", f"request body over {MAX_REQUEST_BYTES} bytes")
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "request body is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    return data


def wait_options(data: dict[str, Any]) -> tuple[View | None, float]:
    """``wait`` and ``timeout_s`` of a write, checked before anything is submitted, so a bad
    option writes nothing."""
    wait = data.get("wait")
    try:
        timeout = float(data.get("timeout_s", DEFAULT_WAIT_S))
    except (TypeError, ValueError, OverflowError):
        raise ApiError(400, "bad_parameter", "timeout_s: must be a number of seconds") from None
    if not 0 < timeout <= MAX_WAIT_S:
        raise ApiError(400, "bad_parameter", f"timeout_s: must be in (0, {MAX_WAIT_S}]")
    return (parse_view(str(wait)) if wait else None), timeout


@dataclass(frozen=True)
class Submitted:
    """What a submission did: the JSON answer and the pool's result behind it."""

    answer: dict[str, Any]
    """``accepted``, ``duplicates``, ``rejected`` (index and reason) and, if asked, ``wait``."""
    result: SubmitResult

    @property
    def first_refusal(self) -> RemoteError | None:
        return self.result.rejected[0][1] if self.result.rejected else None


@dataclass(frozen=True)
class ApiContext:
    service: NodeService
    client_key: SigningKey | None
    """The firm's client key, which signs ``/v1/write`` and governance requests; None if the
    node config names no ``client_key_file``."""
    private: PrivateValues
    extras: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    """Sections the daemon adds to ``GET /v1/status`` (``anchoring``: also ``GET /v1/anchors``)."""
    anchor_status: Callable[[], AnchorStatus] | None = None
    """This node's own anchoring state (its anchor transactions in flight), when it anchors."""

    @property
    def engine(self) -> Engine:
        return self.service.engine

    def now_ms(self) -> int:
        return self.service.clock_ms()

    # --- reads ----------------------------------------------------------------------------------

    def check_read(self, ns: str) -> None:
        """A namespace this member may read under the rules in force at the next height."""
        check_name(ns)
        if not self.service.view.current.may_read(self.engine.me, ns):
            raise ApiError(403, "forbidden", f"{self.engine.me} may not read namespace {ns!r}")

    # --- writes ---------------------------------------------------------------------------------

    def require_client_key(self, why: str) -> SigningKey:
        """The client key; without one, a :class:`ConfigError` that says ``why`` it is needed."""
        if self.client_key is None:
            raise ConfigError(f"this node has no client_key_file configured; {why}")
        return self.client_key

    def sign(self, ops: list[Op], why: str) -> Tx:
        """A transaction of ``ops`` signed by the firm's client key, expiring in :data:`CLIENT_TX_TTL_MS`."""
        engine = self.engine
        return Tx.create(self.require_client_key(why), engine.cid, engine.me, secrets.randbits(63),
                         self.now_ms() + CLIENT_TX_TTL_MS, ops)

    async def submit_and_wait(self, raws: list[bytes], data: dict[str, Any], started: float | None = None) -> Submitted:
        """Submit transactions; if the body asks (``wait``, ``timeout_s``), wait until they are
        in that view. The refusals keep their error objects (:attr:`Submitted.first_refusal`):
        the caller raises what its endpoint answers with. ``started``: when the request's
        handler began, on the trace's clock (for the ``tx.*`` stages)."""
        view, timeout = wait_options(data)
        trace = self.engine.trace
        if started is not None:
            trace.since("tx.parse", started)
        # A waiting client is answered only once its transactions are in a durably stored block
        # (or, on timeout, after they were persisted below), so admission need not fsync.
        result = await self.service.submit(raws, durable=view is None)
        answer: dict[str, Any] = {
            "accepted": [t.hex() for t in result.accepted],
            "duplicates": [t.hex() for t in result.duplicates],
            "rejected": [{"index": i, "reason": str(r)} for i, r in result.rejected],
        }
        if view is not None and (result.accepted or result.duplicates):
            levels: dict[str, float] = {}
            waited = trio.current_time()
            try:
                reached = await self.service.wait_for(result.accepted + result.duplicates, view, timeout, levels)
            finally:
                await self.make_durable(result.accepted)
            answer["wait"] = {"view": view.value, "reached": reached, "levels_ms": levels}
            if not reached:
                answer["wait"]["message"] = f"not yet in the {view.value} view after {timeout} s; it is still pending"
            elif view.value in levels:
                trace.observe("tx.answer", trio.current_time() - waited - levels[view.value] / 1000)
        if started is not None:
            trace.since("tx.total", started)
        return Submitted(answer, result)

    async def make_durable(self, txids: list[bytes]) -> None:
        """Persist those of ``txids`` still pending, unless all are in stored blocks: a client
        that waited for a view is answered (or left) only once what it was told is accepted is
        durable. Shielded: it runs also when the waiting client was cancelled or went away."""
        if not txids:
            return
        with trio.CancelScope(shield=True):
            if not await self.service.read(self._all_in_blocks, txids):
                await self.service.call(self.engine.persist, txids)

    def _all_in_blocks(self, txids: list[bytes]) -> bool:
        return len(self.engine.store.included(txids)) == len(txids)
