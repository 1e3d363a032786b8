"""The client API: HTTP/JSON for the firm's applications, served by hypercorn on trio.

Bound to 127.0.0.1 by default and guarded by the bearer token of the node config: the API
speaks for the firm (it can sign with the firm's client key), so it is as private as the key.
Every read names the view it was answered from and the height of that view's head; every
error is ``{"error": {"code": ..., "message": ...}}`` with a matching HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets

import trio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.chain import View
from ..core.consortium import NAME_RE
from ..core.limits import MAX_NAMESPACE_LEN
from ..core.errors import AccessError, ConfigError, DecodeError, RemoteError, ValidationError
from ..core.governance import read_pending, read_proposal, read_votes
from ..core.keys import SigningKey
from ..core.model import OP_DELETE, OP_PUT, Block, Op, Tx
from .api_audit import audit_routes
from .api_governance import governance_routes
from .api_private import PrivateValues, private_routes
from .mempool import MempoolFull
from .service import NodeService

log = logging.getLogger("peerdb.api")

DEFAULT_VIEW = View.MAJORITY
"""Reads default to the majority view: tentative can roll back on a fork, unanimous waits for
Bitcoin confirmations; majority is what most of the consortium has already signed."""
MAX_WAIT_S = 600.0
"""Longest a client may ask the node to hold a request open waiting for a view."""
MAX_BLOCKS_PER_PAGE = 500
MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_TX_TTL_MS = 10 * 60 * 1000
"""Expiry the node gives transactions it signs for clients (``/v1/write``)."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def value_json(value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {"value": None, "value_text": None}
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"value": base64.b64encode(value).decode("ascii"), "value_text": text}


def tx_json(tx: Tx, private: Callable[[Op], dict[str, Any] | None] = lambda op: None) -> dict[str, Any]:
    """``private`` gives the value fields of an op in a private namespace (its envelope, marked)."""
    return {
        "txid": tx.txid.hex(), "member": tx.member, "client": tx.client.hex(), "nonce": tx.nonce,
        "expires_ms": tx.expires_ms,
        "ops": [{"op": "put" if op.kind == OP_PUT else "delete", "namespace": op.namespace, "key": op.key,
                 **(private(op) or value_json(op.value))} for op in tx.ops],
    }


def parse_view(text: str | None) -> View:
    if text is None:
        return DEFAULT_VIEW
    try:
        return View.parse(text)
    except ValidationError as exc:
        raise ApiError(400, "bad_view", str(exc)) from None


def parse_int(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise ApiError(400, "bad_parameter", f"{name}: must be a non-negative integer, got {text!r}")
    return int(text)


def parse_ops(raw: Any) -> list[Op]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "bad_request", "ops: must be a non-empty list")
    ops = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ApiError(400, "bad_request", f"ops[{i}]: must be an object")
        kind = item.get("op", "put")
        try:
            if kind == "put":
                if "value_b64" in item:
                    value = base64.b64decode(str(item["value_b64"]), validate=True)
                elif isinstance(item.get("value"), str):
                    value = item["value"].encode("utf-8")
                else:
                    raise ApiError(400, "bad_request", f"ops[{i}]: a put needs 'value' (text) or 'value_b64'")
                ops.append(Op(OP_PUT, item.get("namespace"), item.get("key"), value))  # type: ignore[arg-type]
            elif kind == "delete":
                ops.append(Op(OP_DELETE, item.get("namespace"), item.get("key")))  # type: ignore[arg-type]
            else:
                raise ApiError(400, "bad_request", f"ops[{i}].op: must be 'put' or 'delete', got {kind!r}")
        except (DecodeError, binascii.Error) as exc:
            raise ApiError(400, "bad_request", f"ops[{i}]: {exc}") from None
    return ops


class Api:
    def __init__(self, service: NodeService, token: str, client_key: SigningKey | None,
                 extras: dict[str, Callable[[], Any]] | None = None) -> None:
        self.service = service
        self.engine = service.engine
        self.token = token
        self.client_key = client_key
        self.extras = extras or {}
        self.private = PrivateValues(self.engine)
        routes = [
            Route("/v1/txs", self.post_txs, methods=["POST"]),
            Route("/v1/write", self.post_write, methods=["POST"]),
            Route("/v1/tx/{txid}", self.get_tx),
            Route("/v1/kv/{ns}", self.get_scan),
            Route("/v1/kv/{ns}/{key:path}", self.get_kv),
            Route("/v1/history/{ns}/{key:path}", self.get_history),
            Route("/v1/blocks", self.get_blocks),
            Route("/v1/blocks/{ref}", self.get_block),
            Route("/v1/status", self.get_status),
            Route("/v1/alerts", self.get_alerts),
            Route("/v1/peers", self.get_peers),
            Route("/v1/evidence", self.get_evidence),
            Route("/v1/objections", self.get_objections),
            Route("/v1/anchors", self.get_anchors),
            Route("/v1/anchors/{ref}", self.get_anchor),
            Route("/v1/consortium", self.get_consortium),
            *audit_routes(self),
            *governance_routes(self),
            *private_routes(self),
        ]
        self.app = Starlette(routes=routes, exception_handlers={
            HTTPException: self._http_error, Exception: self._server_error})

    @staticmethod
    async def _http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error_response(status, code, f"{request.method} {request.url.path}: {detail}")

    @staticmethod
    async def _server_error(request: Request, exc: Exception) -> Response:
        log.exception("API error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error: {type(exc).__name__}; see the node log")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(header.encode(), expected.encode()):
                response = error_response(401, "unauthorized", "missing or wrong bearer token "
                                          "(see api.token in the node config)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    # Each endpoint is wrapped so that every failure becomes a JSON error.
    def _wrap(fn: Callable[["Api", Request], Awaitable[Any]]) -> Callable[["Api", Request], Awaitable[Response]]:  # type: ignore[misc]
        async def wrapper(self: "Api", request: Request) -> Response:
            try:
                body = await fn(self, request)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except MempoolFull as exc:
                return error_response(503, "mempool_full", str(exc))
            except AccessError as exc:
                return error_response(403, "forbidden", str(exc))
            except (RemoteError, ValueError) as exc:
                return error_response(400, "bad_request", str(exc))
            except ConfigError as exc:
                return error_response(409, "not_configured", str(exc))
            if isinstance(body, Response):
                return body
            return JSONResponse(body)
        return wrapper

    def _wrap_fn(self, fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        """:meth:`_wrap` for a handler defined outside the class (api_governance)."""
        wrapped = Api._wrap(lambda _api, request: fn(request))

        async def handler(request: Request) -> Response:
            return await wrapped(self, request)
        return handler

    async def _json_body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_REQUEST_BYTES:
            raise ApiError(413, "too_large", f"request body over {MAX_REQUEST_BYTES} bytes")
        try:
            import json
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, "bad_json", f"request body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", "request body must be a JSON object")
        return data

    @staticmethod
    def _wait_options(data: dict[str, Any]) -> tuple[View | None, float]:
        """Check --wait options before anything is submitted, so a bad option writes nothing."""
        wait = data.get("wait")
        try:
            timeout = float(data.get("timeout_s", 30))
        except (TypeError, ValueError):
            raise ApiError(400, "bad_parameter", "timeout_s: must be a number of seconds") from None
        if not 0 < timeout <= MAX_WAIT_S:
            raise ApiError(400, "bad_parameter", f"timeout_s: must be in (0, {MAX_WAIT_S}]")
        return (parse_view(str(wait)) if wait else None), timeout

    async def _submit_and_wait(self, raws: list[bytes], data: dict[str, Any]
                               ) -> tuple[dict[str, Any], Exception | None]:
        view, timeout = self._wait_options(data)
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
            try:
                reached = await self.service.wait_for(result.accepted + result.duplicates, view, timeout, levels)
            finally:
                with trio.CancelScope(shield=True):
                    if not await self.service.read(self._all_in_blocks, result.accepted):
                        await self.service.call(self.engine.persist, result.accepted)
            answer["wait"] = {"view": view.value, "reached": reached, "levels_ms": levels}
            if not reached:
                answer["wait"]["message"] = f"not yet in the {view.value} view after {timeout} s; it is still pending"
        return answer, (result.rejected[0][1] if result.rejected else None)

    def _all_in_blocks(self, txids: list[bytes]) -> bool:
        return len(self.engine.store.included(txids)) == len(txids)

    @_wrap
    async def post_txs(self, request: Request) -> Any:
        data = await self._json_body(request)
        items = data.get("txs")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "bad_request", "txs: must be a non-empty list of base64 transactions")
        try:
            raws = [base64.b64decode(str(t), validate=True) for t in items]
        except binascii.Error as exc:
            raise ApiError(400, "bad_request", f"txs: not base64 ({exc})") from None
        answer, first_error = await self._submit_and_wait(raws, data)
        if answer["rejected"] and not answer["accepted"] and not answer["duplicates"]:
            reason = answer["rejected"][0]["reason"]
            forbidden = isinstance(first_error, AccessError)
            return JSONResponse({**answer, "error": {"code": "forbidden" if forbidden else "rejected",
                                                     "message": reason}}, status_code=403 if forbidden else 400)
        return answer

    @_wrap
    async def post_write(self, request: Request) -> Any:
        if self.client_key is None:
            raise ConfigError("this node has no client_key_file configured; sign transactions yourself "
                              "and POST them to /v1/txs")
        data = await self._json_body(request)
        ops = parse_ops(data.get("ops"))
        ops = await self.service.read(self.private.seal_ops, ops)  # plaintext never reaches the pool or a peer
        now = self.service.clock_ms()
        tx = Tx.create(self.client_key, self.engine.cid, self.engine.me, secrets.randbits(63),
                       now + DEFAULT_TX_TTL_MS, ops)
        answer, first_error = await self._submit_and_wait([tx.raw], data)
        if answer["rejected"]:
            reason = answer["rejected"][0]["reason"]
            if isinstance(first_error, AccessError):
                raise ApiError(403, "forbidden", reason)
            raise ApiError(400, "rejected", reason)
        return answer

    def _tx_info(self, txid: bytes) -> dict[str, Any]:
        store = self.engine.store
        height, level = self.service.tx_level(txid)
        if height is None:
            if txid in self.engine.mempool:
                return {"txid": txid.hex(), "status": "pending"}
            raise ApiError(404, "not_found", f"transaction {txid.hex()} is neither pending nor on the best chain")
        location = store.tx_location(txid)
        assert location is not None
        return {"txid": txid.hex(), "status": level or "tentative", "height": height,
                "block": location.block_hash.hex()}

    @_wrap
    async def get_tx(self, request: Request) -> Any:
        try:
            txid = bytes.fromhex(request.path_params["txid"])
        except ValueError:
            raise ApiError(400, "bad_parameter", "txid: must be hex") from None
        return await self.service.read(self._tx_info, txid)

    @staticmethod
    def _check_name(ns: str) -> None:
        if len(ns) > MAX_NAMESPACE_LEN or not NAME_RE.match(ns):
            raise ApiError(400, "bad_namespace", f"namespace {ns!r}: lowercase letters, digits, '_', '.', '-' "
                           f"(at most {MAX_NAMESPACE_LEN})")

    def _check_read(self, ns: str) -> None:
        self._check_name(ns)
        if not self.engine.current.may_read(self.engine.me, ns):
            raise ApiError(403, "forbidden", f"{self.engine.me} may not read namespace {ns!r}")

    def _kv(self, ns: str, key: str, view: View, at: int | None) -> dict[str, Any]:
        heads = self.engine.heads()
        head_height = heads.height(view)
        height = head_height if at is None else at
        if height > head_height:
            raise ApiError(400, "beyond_view", f"height {height} is above the {view.value} head ({head_height})")
        value, written = self.engine.store.get(ns, key, height)
        return {"namespace": ns, "key": key, "found": value is not None, **self._value(ns, key, value, written),
                "written_at": written, "view": view.value, "height": height, "head_height": head_height}

    @_wrap
    async def get_kv(self, request: Request) -> Any:
        ns, key = request.path_params["ns"], request.path_params["key"]
        self._check_read(ns)
        view = parse_view(request.query_params.get("view"))
        at = parse_int(request.query_params.get("at"), "at")
        return await self.service.read(self._kv, ns, key, view, at)

    @_wrap
    async def get_scan(self, request: Request) -> Any:
        """Keys of a namespace at the head (the tentative view), paged."""
        ns = request.path_params["ns"]
        self._check_read(ns)
        prefix = request.query_params.get("prefix", "")
        after = request.query_params.get("after")
        limit = parse_int(request.query_params.get("limit"), "limit") or 100

        def read() -> dict[str, Any]:
            rows = self.engine.store.scan(ns, prefix, start_after=after, limit=min(limit, 1000))
            return {"namespace": ns, "prefix": prefix, "view": View.TENTATIVE.value,
                    "height": self.engine.tree.best_tip.height,
                    "keys": [{"key": k, "written_at": h, **self._value(ns, k, v, h)} for k, v, h in rows],
                    "next_after": rows[-1][0] if len(rows) >= min(limit, 1000) else None}
        return await self.service.read(read)

    @_wrap
    async def get_history(self, request: Request) -> Any:
        ns, key = request.path_params["ns"], request.path_params["key"]
        self._check_read(ns)

        def read() -> dict[str, Any]:
            heads = self.engine.heads()
            versions = []
            for height, block_hash, value in self.engine.store.history(ns, key):
                versions.append({"height": height, "block": block_hash.hex(), "deleted": value is None,
                                 "status": self.engine.tree.status(block_hash, heads).value,
                                 **self._value(ns, key, value, height)})
            return {"namespace": ns, "key": key, "versions": versions}
        return await self.service.read(read)

    def _value(self, ns: str, key: str, value: bytes | None, written: int | None) -> dict[str, Any]:
        """:func:`value_json`, for a private namespace of the plaintext (opened here, in the read
        worker) plus ``private`` and, if this node cannot open it, ``unavailable``."""
        shown, extra = self.private.open(ns, key, value, written)
        return {**value_json(shown), **extra}

    def _block_summary(self, block_hash: bytes) -> dict[str, Any]:
        tree = self.engine.tree
        h = tree.header(block_hash)
        return {"height": h.height, "hash": block_hash.hex(), "round": h.round, "proposer": h.proposer,
                "time_ms": h.time_ms, "tx_count": h.tx_count, "status": tree.status(block_hash).value,
                "signers": sorted(tree.signers(block_hash)),
                "anchored": self.engine.store.anchor(block_hash) is not None}

    @_wrap
    async def get_blocks(self, request: Request) -> Any:
        def read() -> dict[str, Any]:
            tip = self.engine.tree.best_tip.height
            to = parse_int(request.query_params.get("to"), "to")
            to = tip if to is None else min(to, tip)
            start = parse_int(request.query_params.get("from"), "from")
            start = max(1, to - 19) if start is None else max(1, start)
            start = max(start, to - MAX_BLOCKS_PER_PAGE + 1)
            blocks = []
            for height in range(start, to + 1):
                block_hash = self.engine.tree.best_chain_hash(height)
                if block_hash is not None:
                    blocks.append(self._block_summary(block_hash))
            return {"tip": tip, "blocks": blocks}
        return await self.service.read(read)

    @_wrap
    async def get_block(self, request: Request) -> Any:
        ref = request.path_params["ref"]

        def read() -> dict[str, Any]:
            tree = self.engine.tree
            if ref.isdigit():
                block_hash = tree.best_chain_hash(int(ref))
            else:
                try:
                    block_hash = bytes.fromhex(ref)
                except ValueError:
                    raise ApiError(400, "bad_parameter", "block: give a height or a hex hash") from None
            if block_hash is None or block_hash not in tree:
                raise ApiError(404, "not_found", f"no block {ref}")
            block: Block | None = self.engine.store.block(block_hash)
            if block is None:
                raise ApiError(404, "not_found", f"block {ref} has no stored body")
            h = block.header
            signers = tree.signers(block_hash)
            info = self._block_summary(block_hash)
            info.update({
                "prev": h.prev.hex(), "tx_root": h.tx_root.hex(), "state_root": h.state_root.hex(),
                "evidence_root": h.evidence_root.hex(),
                "signatures": [{"member": m, "signed": m in signers, "excluded": m in tree.culprits}
                               for m in self.engine.state_for(h.prev, h.height).members_at(h.height)],
                "objections": [{"member": o.member, "reason": o.reason} for o in self.engine.store.objections(block_hash)],
                "evidence": [{"id": e.id.hex(), "member": e.member, "height": e.header_a.height} for e in block.evidence],
                "txs": [tx_json(tx, lambda op: self.private.op_fields(op, h.height)) for tx in block.txs],
            })
            return info
        return await self.service.read(read)

    def status_dict(self) -> dict[str, Any]:
        engine = self.engine
        heads = engine.heads()
        now = self.service.clock_ms()
        height, round_, proposer = engine.current_turn(now)
        status: dict[str, Any] = {
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
            "governance": {"pending": self._pending_proposals(now)},
            "peers": {m: self.service.is_up(m) for m in engine.current.member_names if m != engine.me},
            "alerts": self.service.alerts.snapshot(),
            "uptime_s": (now - self.service.started_ms) / 1000,
        }
        for name, fn in self.extras.items():
            status[name] = fn()
        return status

    def _pending_proposals(self, now_ms: int) -> list[dict[str, Any]]:
        """Open proposals at the head, each with the members whose vote it still waits for."""
        engine = self.engine

        def get(namespace: str, key: str) -> bytes | None:
            return engine.store.get(namespace, key)[0]
        reader = _GetReader(get)
        out = []
        required = engine.current.member_names
        for pid in read_pending(reader):
            record = read_proposal(reader, pid)
            if record is None or record.status_at(now_ms) != "pending":
                continue
            voters = tuple(m for m in required if m not in record.proposal.excluded_voters())
            voted = read_votes(reader, pid, voters)
            out.append({"id": pid.hex(), "kind": record.proposal.kind, "proposer": record.proposer,
                        "note": record.proposal.note, "expires_ms": record.expires_ms,
                        "waiting_for": [m for m in voters if m not in voted]})
        return out

    @_wrap
    async def get_status(self, request: Request) -> Any:
        return await self.service.read(self.status_dict)

    @_wrap
    async def get_alerts(self, request: Request) -> Any:
        return {"active": self.service.alerts.snapshot(), "cleared": self.service.alerts.history}

    @_wrap
    async def get_peers(self, request: Request) -> Any:
        return {"peers": [{"member": m, "up": self.service.is_up(m)}
                          for m in self.engine.current.member_names if m != self.engine.me]}

    @_wrap
    async def get_evidence(self, request: Request) -> Any:
        return {"evidence": [{"id": e.id.hex(), "member": e.member, "height": e.header_a.height,
                              "block_a": e.header_a.hash.hex(), "block_b": e.header_b.hash.hex(),
                              "encoded": base64.b64encode(e.encode()).decode()}
                             for e in self.engine.evidence.values()]}

    @_wrap
    async def get_objections(self, request: Request) -> Any:
        def read() -> dict[str, Any]:
            tree = self.engine.tree
            return {"objections": [
                {"block": o.block_hash.hex(), "member": o.member, "reason": o.reason,
                 "height": tree.header(o.block_hash).height if o.block_hash in tree else None,
                 "accepted": o.block_hash in tree}
                for o in self.engine.store.all_objections()]}
        return await self.service.read(read)

    @_wrap
    async def get_anchors(self, request: Request) -> Any:
        fn = self.extras.get("anchoring")
        return {"anchoring": fn() if fn else None,
                "anchored_height": self.engine.heads().anchored}

    @_wrap
    async def get_anchor(self, request: Request) -> Any:
        ref = request.path_params["ref"]

        def read() -> dict[str, Any]:
            tree = self.engine.tree
            block_hash = tree.best_chain_hash(int(ref)) if ref.isdigit() else None
            if block_hash is None and not ref.isdigit():
                try:
                    block_hash = bytes.fromhex(ref)
                except ValueError:
                    raise ApiError(400, "bad_parameter", "anchor: give a block height or hash") from None
            if block_hash is None or block_hash not in tree:
                raise ApiError(404, "not_found", f"no block {ref}")
            raw = self.engine.store.anchor(block_hash)
            height = tree.header(block_hash).height
            if raw is None:
                anchored_by = tree.best_chain_hash(tree.heads().anchored)
                return {"block": block_hash.hex(), "height": height, "anchored": height <= tree.heads().anchored,
                        "proof": None, "covered_by": anchored_by.hex() if anchored_by and
                        height <= tree.heads().anchored else None}
            from ..anchor.proof import AnchorProof
            from ..anchor.hashes import sha256d, to_display
            proof = AnchorProof.decode(raw)
            return {"block": block_hash.hex(), "height": height, "anchored": True,
                    "bitcoin_txid": to_display(sha256d(proof.bitcoin_tx)),
                    "bitcoin_height": proof.bitcoin_height, "depth": len(proof.headers),
                    "merkle_root": proof.root.hex(), "path_length": len(proof.path),
                    "proof": base64.b64encode(raw).decode()}
        return await self.service.read(read)

    @_wrap
    async def get_consortium(self, request: Request) -> Any:
        c = self.engine.current  # in force at the next height, after every change passed so far
        return {"name": c.name, "id": self.engine.cid.hex(), "genesis_time_ms": c.genesis_time_ms,
                "members": [{"name": m.name, "key": m.key.hex(), "address": m.address, "api": m.api,
                             "clients": [k.hex() for k in m.clients]} for m in c.members],
                "params": {k: getattr(c.params, k) for k in c.params.__dataclass_fields__},
                "open_namespaces": c.open_namespaces,
                "namespaces": [{"name": r.name, "writers": list(r.writers), "readers": list(r.readers),
                                **({"private": True} if r.private else {})} for r in c.namespaces]}


class _GetReader:
    """A :class:`peerdb.core.membership.GovReader` over a ``get`` function."""

    def __init__(self, get: Callable[[str, str], bytes | None]) -> None:
        self.get = get
