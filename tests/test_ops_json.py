"""Operations in the API's JSON shape (peerdb/ops_json.py), read alike by ``POST /v1/write`` and
the client library: every malformed operation is refused with its place and what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from peerdb.core.model import OP_DELETE, OP_PUT, Op
from peerdb.ops_json import op_from_json


def test_puts_and_deletes_in_every_documented_form() -> None:
    assert op_from_json({"namespace": "ns", "key": "k", "value": "hé"}, "ops[0]") == Op(OP_PUT, "ns", "k", "hé".encode())
    assert op_from_json({"op": "put", "namespace": "ns", "key": "k", "value_b64": "AAE="}, "ops[0]") \
        == Op(OP_PUT, "ns", "k", b"\x00\x01")
    assert op_from_json({"op": "delete", "namespace": "ns", "key": "k"}, "ops[0]") == Op(OP_DELETE, "ns", "k")


@pytest.mark.parametrize("item, message", [
    ([], "ops[3]: must be an object"),
    ({"op": "frob", "namespace": "ns", "key": "k"}, "ops[3].op: must be 'put' or 'delete', got 'frob'"),
    ({"op": "frob"}, "ops[3].op: must be 'put' or 'delete'"),
    ({"namespace": 1, "key": "k", "value": "v"}, "ops[3]: 'namespace' and 'key' must be text"),
    ({"namespace": "ns", "value": "v"}, "ops[3]: 'namespace' and 'key' must be text"),
    ({"namespace": "ns", "key": "k"}, "ops[3]: a put needs 'value' (text) or 'value_b64'"),
    ({"namespace": "ns", "key": "k", "value": 5}, "ops[3]: a put needs 'value' (text) or 'value_b64'"),
    ({"namespace": "ns", "key": "k", "value_b64": None}, "ops[3]: 'value_b64' must be text"),
    ({"namespace": "ns", "key": "k", "value_b64": 1234}, "ops[3]: 'value_b64' must be text"),
    ({"namespace": "ns", "key": "k", "value_b64": "not base64!"}, "ops[3]: "),
    ({"namespace": "ns", "key": "k", "value": "\ud800"}, "ops[3]: "),
])
def test_a_malformed_operation_is_refused_with_its_place(item: Any, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        op_from_json(item, "ops[3]")
    assert str(refused.value).startswith(message)
