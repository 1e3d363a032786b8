"""One pysyncobj node with a replicated dict and a small TCP front, as its own process.

``python -m bench.pysyncobj_node --self 127.0.0.1:P --partner 127.0.0.1:Q --partner ... \
    --front-port F --journal PATH``

pysyncobj runs its Raft loop in its own thread (``autoTick``); the front is a trio server in the
main thread that turns each ``P`` frame into ``ReplDict.set(key, value, callback=...)`` and
answers once pysyncobj calls back, i.e. once the write is committed by a majority and applied on
this node. A node that is not the leader forwards the write to the leader (pysyncobj does this
itself), as an etcd follower does.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf  # type: ignore[import-untyped]
from pysyncobj.batteries import ReplDict  # type: ignore[import-untyped]

from bench import framing


_FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper() and isinstance(v, int)}
"""pysyncobj's failure codes by number, so errors in the JSON read LEADER_CHANGED, not 5."""


class Front:
    """Carries framed puts from TCP clients into the node and acknowledgements back."""

    def __init__(self, node: Any, store: Any, token: trio.lowlevel.TrioToken) -> None:
        self._node = node
        self._store = store
        self._token = token

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        reader = framing.FrameReader(stream)
        try:
            async with stream:
                # One frame per pass; ends at the client's end of stream.
                while (frame := await reader.read()) is not None:
                    kind, payload = frame
                    await stream.send_all(await self._answer(kind, payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError, framing.FrameError):
            return  # the client went away or spoke garbage: drop this connection only

    async def _answer(self, kind: bytes, payload: bytes) -> bytes:
        if kind == framing.STATUS:
            leader = self._node._getLeader()
            status = {"leader": None if leader is None else str(leader), "ready": bool(self._node.isReady())}
            return framing.encode(framing.OK, json.dumps(status).encode())
        if kind == framing.PUT:
            key, value = framing.decode_put(payload)
            error = await self._replicated_set(key, value)
            if error == FAIL_REASON.SUCCESS:
                return framing.encode(framing.OK)
            return framing.encode(framing.ERROR, f"pysyncobj {_FAIL_NAMES.get(error, error)}".encode())
        return framing.encode(framing.ERROR, f"unknown frame kind {kind!r}".encode())

    async def _replicated_set(self, key: bytes, value: bytes) -> int:
        done = trio.Event()
        outcome: list[int] = []

        def callback(_result: Any, error: int) -> None:  # runs in pysyncobj's thread
            outcome.append(error)
            try:
                self._token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the front is shutting down; nobody waits for this answer

        self._store.set(key, value, callback=callback)
        await done.wait()
        return outcome[0]


async def serve(args: argparse.Namespace) -> None:
    store = ReplDict()
    conf = SyncObjConf(journalFile=args.journal)
    node = SyncObj(args.self_addr, args.partners, conf=conf, consumers=[store])
    front = Front(node, store, trio.lowlevel.current_trio_token())
    await trio.serve_tcp(front.serve_connection, args.front_port, host="127.0.0.1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--self", dest="self_addr", required=True)
    parser.add_argument("--partner", dest="partners", action="append", required=True)
    parser.add_argument("--front-port", type=int, required=True)
    parser.add_argument("--journal", required=True)
    trio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
