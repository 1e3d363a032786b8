"""JSON shapes shared by several endpoints: a value, a transaction, a block's summary line.

Bytes are base64 (``value``, always) with the UTF-8 text beside them where they are text
(``value_text``); hashes and keys are lowercase hex (docs/api.md).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from ...core.model import OP_PUT, Op, Tx
from ..engine import Engine


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


def block_summary(engine: Engine, block_hash: bytes) -> dict[str, Any]:
    """A block as ``GET /v1/blocks`` lists it (``GET /v1/blocks/{ref}`` adds the body)."""
    tree = engine.tree
    h = tree.header(block_hash)
    return {"height": h.height, "hash": block_hash.hex(), "round": h.round, "proposer": h.proposer,
            "time_ms": h.time_ms, "tx_count": h.tx_count, "status": tree.status(block_hash).value,
            "signers": sorted(tree.signers(block_hash)),
            "anchored": engine.store.anchor(block_hash) is not None}
