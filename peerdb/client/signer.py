"""Signing transactions on the client side, for the write stream and ``POST /v1/txs``.

A firm's application that writes at rate signs its own transactions with one of the firm's
client keys (listed under the member in the consortium file), so the node only checks them:
:class:`TxSigner` holds the key, the consortium id the signature is bound to and the member the
transactions are written for. :func:`ops_from_json` reads operations in the API's JSON shape
(``{"op": "put", "namespace", "key", "value" | "value_b64"}``), as ``peerdb load`` does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..consortium_file import load_consortium
from ..core.errors import ConfigError
from ..core.keys import SigningKey
from ..core.model import OP_DELETE, OP_PUT, Op, Tx, consortium_id
from ..keyfile import read_key
from ..node.config import load_node_config
from ..ops_json import op_from_json

DEFAULT_TTL_MS = 10 * 60 * 1000
"""Expiry of the transactions a signer makes, from the moment it signs them (as the node gives
the transactions it signs for ``POST /v1/write``): long enough for any wait a client asks for,
short enough that the members remember the txid only briefly."""


@dataclass(frozen=True)
class TxSigner:
    """Signs transactions for ``member`` of the consortium ``cid`` with a client ``key``."""

    key: SigningKey
    cid: bytes
    member: str
    ttl_ms: int = DEFAULT_TTL_MS

    @classmethod
    def from_node_config(cls, path: str | Path) -> "TxSigner":
        """The node config's client key (``client_key_file``), member and consortium."""
        cfg = load_node_config(path)
        key = cfg.load_client_key()
        if key is None:
            raise ConfigError(f"{path}: no client_key_file: client-signed writes need one of the firm's client keys "
                              "(peerdb keygen --kind client; listed under the member's clients in the consortium file)")
        return cls(key, consortium_id(cfg.load_consortium()), cfg.member)

    @classmethod
    def from_files(cls, key_file: str | Path, consortium_file: str | Path, member: str | None = None) -> "TxSigner":
        """A client key file and the consortium file; ``member`` defaults to the member that lists the key."""
        key = read_key(key_file)[0]
        consortium = load_consortium(consortium_file)
        owners = [m.name for m in consortium.members if key.public in m.clients or key.public == m.key]
        if member is None:
            if not owners:
                raise ConfigError(f"{key_file}: this key is no member's client key in {consortium_file}")
            member = owners[0]
        return cls(key, consortium_id(consortium), member)

    def sign(self, ops: Sequence[Op], *, now_ms: int | None = None) -> Tx:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return Tx.create(self.key, self.cid, self.member, secrets.randbits(63), now + self.ttl_ms, ops)

    def put(self, namespace: str, key: str, value: bytes | str) -> Tx:
        data = value.encode("utf-8") if isinstance(value, str) else value
        return self.sign([Op(OP_PUT, namespace, key, data)])

    def delete(self, namespace: str, key: str) -> Tx:
        return self.sign([Op(OP_DELETE, namespace, key)])


def ops_from_json(raw: Any) -> list[Op]:
    """Operations from the API's JSON shape: one operation object, a list of them, or
    ``{"ops": [...]}``; ValueError naming what is wrong."""
    if isinstance(raw, dict) and "ops" in raw:
        raw = raw["ops"]
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ValueError("no operations")
    return [op_from_json(item, f"ops[{i}]" if isinstance(raw, list) else "operation")
            for i, item in enumerate(items)]
