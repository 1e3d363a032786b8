"""``GET /v1/audit/bundle``: the member's books as an audit bundle, streamed (docs/auditor.md).

The node keeps running while the bundle streams out. The snapshot (which blocks, which signers,
the evidence, the claimed heads) is one short read under the engine's lock
(:meth:`NodeService.read`, about a microsecond per block held); blocks are then read from the store in bounded batches
(:data:`peerdb.audit.export.MAX_BATCH_BLOCKS` blocks, at most
:data:`peerdb.audit.export.MAX_BATCH_BYTES` of them) in a worker thread, without the lock: a
stored block never changes, the signatures are filtered to the snapshot (which also takes the
peers' signatures the engine has not written yet), and LMDB readers never
wait for the writer, so the engine is never held up by an export, however large. The response
header ``X-PeerDB-Audit-Blocks`` gives the number of blocks, for progress bars.

``?namespace=NS`` exports a namespace bundle: every block as a ``part`` item holding only the
transactions of ``NS`` and ``_gov``, with the proofs that they are all (docs/auditor.md).

If anything fails mid-stream the response simply ends without the trailer, which every reader
detects as a truncated bundle.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import trio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ...audit.bundle import BundleWriter
from ...audit.export import MAX_BATCH_BLOCKS, MAX_BATCH_BYTES, BtcNumbering, Snapshot, capture, encode_batch, finish, snapshot_from
from ...core.errors import CorruptionError
from ..identity import stored_item_check
from .context import ApiContext, check_name
from .errors import ApiError, error_response

log = logging.getLogger("peerdb.api")

BUNDLE_PATH = "/v1/audit/bundle"
"""The one path the auditor token opens (see :mod:`.app`)."""
BLOCKS_HEADER = "X-PeerDB-Audit-Blocks"
MEDIA_TYPE = "application/vnd.peerdb.audit-bundle"


def routes(ctx: ApiContext) -> list[Route]:
    engine = ctx.engine
    service = ctx.service

    async def bundle(request: Request) -> Response:
        namespace = request.query_params.get("namespace")
        if namespace is not None:
            try:
                check_name(namespace)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message)
        captured, gov = await service.read(
            lambda: (capture(engine.tree, engine.consortium, engine.me, engine.evidence.values(), service.clock_ms(),
                             engine.unsaved_sigs), engine.gov))
        stored_ok = stored_item_check(gov, engine.cid)  # a stored signature the disk changed is never exported
        snapshot: Snapshot = await trio.to_thread.run_sync(snapshot_from, captured, engine.store, namespace)

        async def body() -> AsyncIterator[bytes]:
            writer = BundleWriter()
            numbering = BtcNumbering()
            yield writer.start(snapshot.head)
            pending = list(snapshot.blocks)
            while pending:
                batch = pending[:MAX_BATCH_BLOCKS]
                try:
                    data, done = await trio.to_thread.run_sync(encode_batch, engine.store, batch, writer, numbering,
                                                               MAX_BATCH_BYTES, namespace, stored_ok)
                except CorruptionError as exc:
                    # Never export a damaged block as good: the bundle ends here, without its
                    # trailer (every reader reports it truncated), and the node alerts and
                    # fetches a good copy; export again once it is repaired.
                    log.error("audit export stopped at a corrupt stored item: %s", exc)
                    await service.call(engine.note_corruption, exc)
                    return
                del pending[:done]
                yield data
            yield finish(writer, snapshot.evidence)

        return StreamingResponse(body(), media_type=MEDIA_TYPE,
                                 headers={BLOCKS_HEADER: str(len(snapshot.blocks)),
                                          "Content-Disposition": f'attachment; filename="{engine.me}.pdbaudit"'})

    # Not behind the JSON error wrapper: nothing here is the client's input, so whatever fails
    # is ours (the app's 500), and once streaming has begun the status is already sent.
    return [Route(BUNDLE_PATH, bundle)]
