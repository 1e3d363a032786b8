"""Operations in the API's JSON shape, read the same way by the node and by the client library.

``{"op": "put" | "delete", "namespace": ..., "key": ..., "value": text | "value_b64": base64}``
is what ``POST /v1/write`` takes and what ``peerdb load`` reads from a file: one reader, so that a
line the client accepts is one the node would accept, with the same message when it is not.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .core.errors import DecodeError
from .core.model import OP_DELETE, OP_PUT, Op


def op_from_json(item: Any, where: str) -> Op:
    """One operation; ValueError starting with ``where`` (``ops[3]``) naming what is wrong."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be an object")
    kind = item.get("op", "put")
    if kind not in ("put", "delete"):
        raise ValueError(f"{where}.op: must be 'put' or 'delete', got {kind!r}")
    namespace, key = item.get("namespace"), item.get("key")
    if not isinstance(namespace, str) or not isinstance(key, str):
        raise ValueError(f"{where}: 'namespace' and 'key' must be text")
    try:
        if kind == "put":
            if "value_b64" in item:
                if not isinstance(item["value_b64"], str):
                    raise ValueError(f"{where}: 'value_b64' must be text (base64)")
                value = base64.b64decode(item["value_b64"], validate=True)
            elif isinstance(item.get("value"), str):
                value = item["value"].encode("utf-8")
            else:
                raise ValueError(f"{where}: a put needs 'value' (text) or 'value_b64'")
            return Op(OP_PUT, namespace, key, value)
        return Op(OP_DELETE, namespace, key)
    except (DecodeError, binascii.Error, UnicodeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
