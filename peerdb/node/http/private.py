"""Private namespaces at the client API (docs/api.md, "Private namespaces"; peerdb.core.privacy).

Every member stores the envelopes of a private namespace, so the store can never be the place
where the plaintext lives: the node seals a value on its way in (``POST /v1/write``) and opens
it on its way out, for this firm's clients only, and only when this member is a reader in force
(the read rule of :meth:`.context.ApiContext.check_read`). Which consortium decides:

* **Writing**, the block height is not known yet: the value is sealed to the readers of the
  consortium in force at the next height *and* of the one after every passed change
  (``recipients_for_write``), so a rotation or membership change taking effect meanwhile does
  not make the write invalid, and new writes follow the new reader set as soon as it passed.
* **Reading**, a value is an envelope exactly when its namespace was private at the height that
  wrote it (consensus checked that), so that rule decides whether to open it. A value this node
  cannot open (sealed before this member became a reader, or to a member key it no longer
  holds) is answered as unavailable with the reason, never as an error for the whole read.
* **Blocks** show what every member holds anyway: the envelope, marked private, never opened.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from ...core.errors import DecodeError, ValidationError
from ...core.model import OP_PUT, Op
from ...core.privacy import Envelope, open_value, recipients_for_write, seal_value
from ..engine import Engine


class PrivateValues:
    """Sealing and opening for one node; every method runs inside ``service.read`` (it reads the
    governance state and the keyring, and opening is CPU)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def private_at(self, namespace: str, height: int) -> bool:
        rule = self.engine.gov.at(height).rule(namespace)
        return rule is not None and rule.private

    def private_soon(self, namespace: str) -> bool:
        """Private at the next height or after a passed change: a write may land under either."""
        gov = self.engine.gov
        return any((rule := c.rule(namespace)) is not None and rule.private
                   for c in (self.engine.current, gov.latest()))

    def recipients(self, namespace: str) -> dict[str, tuple[bytes, ...]]:
        return recipients_for_write([self.engine.current, self.engine.gov.latest()], namespace)

    # --- writes ---------------------------------------------------------------------------------

    def seal_ops(self, ops: Sequence[Op]) -> list[Op]:
        """``ops`` with every put into a private namespace sealed to its readers. A put this member
        may not make is left as it is, so the pool refuses it with the write rule (403)."""
        current = self.engine.current
        out = []
        for op in ops:
            if op.kind != OP_PUT or op.value is None or not self.private_soon(op.namespace) \
                    or not current.may_write(self.engine.me, op.namespace):
                out.append(op)
                continue
            recipients = self.recipients(op.namespace)
            if not recipients:
                raise ValidationError(f"namespace {op.namespace!r} is private and has no readers in force: "
                                      "a value written there could never be read")
            out.append(Op(OP_PUT, op.namespace, op.key, seal_value(op.namespace, op.key, op.value, recipients)))
        return out

    # --- reads ----------------------------------------------------------------------------------

    def open(self, namespace: str, key: str, value: bytes | None,
             height: int | None) -> tuple[bytes | None, dict[str, Any]]:
        """(the value to show, extra answer fields) for a value written at ``height``: the
        plaintext and ``{"private": true}``, or None and an ``unavailable`` reason; unchanged
        with no extra fields outside private namespaces."""
        if height is None or not self.private_at(namespace, height):
            return value, {}
        if value is None:
            return None, {"private": True}
        engine = self.engine
        me = engine.me
        try:
            envelope = Envelope.decode(value)
        except DecodeError as exc:
            return None, {"private": True, "unavailable": f"the value written at height {height} is not an "
                                                          f"envelope ({exc})"}
        held = [engine.keyring[k] for m, k, _ in envelope.recipients if m == me and k in engine.keyring]
        if not held:
            sealed_to = ", ".join(sorted({m for m, _, _ in envelope.recipients}))
            return None, {"private": True, "unavailable": (
                f"not sealed to {me} with a key this node holds (sealed to {sealed_to}); it was written at "
                f"height {height}, before {me} became a reader of {namespace!r} or for a member key of "
                f"{me} this node no longer holds")}
        problems = []
        for signing_key in held:
            try:
                return open_value(value, namespace, key, me, signing_key), {"private": True}
            except (ValidationError, DecodeError) as exc:
                problems.append(str(exc))
        return None, {"private": True, "unavailable": (
            f"sealed to {me} but it does not open ({problems[0]}); the writer sealed a broken value")}

    def op_fields(self, op: Op, height: int) -> dict[str, Any] | None:
        """The value fields of an operation in a block at ``height`` if its namespace was private
        there: the envelope as stored (ciphertext every member holds), never opened; none at
        all (``redacted``) if this member may not read the namespace there."""
        if not self.private_at(op.namespace, height):
            if op.value is not None and not self.engine.gov.at(height).may_read(self.engine.me, op.namespace):
                # A read rule without encryption: the node holds the value but serves it only
                # to readers' clients, here as in /v1/kv.
                return {"value": None, "value_text": None, "redacted": True}
            return None
        value = None if op.value is None else base64.b64encode(op.value).decode("ascii")
        return {"value": value, "value_text": None, "private": True}
