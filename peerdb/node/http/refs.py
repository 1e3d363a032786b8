"""What an id in a request names: a block (height, hash or hash prefix), a transaction (txid or
prefix), a governance proposal (id or prefix).

People copy the first characters of an id from a screen, as they do with git: any unambiguous
prefix of at least :data:`MIN_ID_PREFIX` hex digits names its record, and an ambiguous one is
refused with the candidates it matches. Call these under ``service.read``.
"""

from __future__ import annotations

import string

from ...core.model import GOV_NAMESPACE
from ..engine import Engine
from .errors import ApiError

MIN_ID_PREFIX = 4
"""Hex digits an id prefix needs: fewer would match a large share of any table (1 in 65,536 at 4)."""
SHOWN_CANDIDATES = 5
"""Ids an ambiguity error lists."""
ID_HEX = 64


SHOWN_REF_CHARS = 80
"""Characters of a request's id quoted back in an error (a request may carry a huge one)."""


def _prefix(ref: str, what: str) -> str:
    text = ref.strip().lower()
    shown = ref[:SHOWN_REF_CHARS]
    if not text or len(text) > ID_HEX or any(c not in string.hexdigits for c in text):
        raise ApiError(400, "bad_parameter", f"{what}: {shown!r} is not a hex id or id prefix")
    if len(text) < MIN_ID_PREFIX:
        raise ApiError(400, "bad_parameter", f"{what}: give at least {MIN_ID_PREFIX} hex digits of the id, got {shown!r}")
    return text


def _one(ref: str, what: str, found: list[bytes]) -> bytes | None:
    if len(found) > 1:
        shown = ", ".join(f.hex()[:16] for f in found[:SHOWN_CANDIDATES])
        more = "" if len(found) <= SHOWN_CANDIDATES else ", ..."
        raise ApiError(400, "ambiguous_id", f"{what} {ref[:SHOWN_REF_CHARS]!r} matches several: {shown}{more}; "
                       "give more digits")
    return found[0] if found else None


def block_ref(engine: Engine, ref: str, hint: str) -> bytes:
    """The block ``ref`` names: a height on the best chain (digits, up to the tip), else the hex
    hash of a known block or a prefix of one; ``hint`` says what to give instead."""
    tree = engine.tree
    decimal = ref.isascii() and ref.isdigit() and len(ref) < ID_HEX  # 64 digits are always a hash
    if decimal and int(ref) <= tree.best_tip.height:
        block_hash = tree.best_chain_hash(int(ref))
    elif decimal and len(ref) < MIN_ID_PREFIX:
        raise ApiError(404, "not_found", f"no block {ref} (the tip is at height {tree.best_tip.height})")
    else:
        try:
            prefix = _prefix(ref, "block")
        except ApiError as exc:
            raise ApiError(400, "bad_parameter", f"{exc.message} ({hint})") from None
        if len(prefix) == ID_HEX:
            block_hash = bytes.fromhex(prefix)
        else:
            found = [h for h in engine.store.ids_with_prefix("block", prefix, SHOWN_CANDIDATES + 1) if h in tree]
            block_hash = _one(ref, "block", found)
    if block_hash is None or block_hash not in tree:
        raise ApiError(404, "not_found", f"no block {ref[:SHOWN_REF_CHARS]}")
    return block_hash


def tx_ref(engine: Engine, ref: str) -> bytes:
    """The txid ``ref`` names: a full txid, or a prefix of one pending or on the best chain (a
    full txid nobody knows is returned as it is: the caller says it is unknown)."""
    prefix = _prefix(ref, "txid")
    if len(prefix) == ID_HEX:
        return bytes.fromhex(prefix)
    found = engine.store.ids_with_prefix("tx", prefix, SHOWN_CANDIDATES + 1)
    found += [t for t in engine.mempool if t.hex().startswith(prefix) and t not in found][:SHOWN_CANDIDATES + 1]
    txid = _one(ref, "transaction", found)
    if txid is None:
        raise ApiError(404, "not_found", f"no transaction {ref[:SHOWN_REF_CHARS]} is pending or on the best chain")
    return txid


def proposal_ref(engine: Engine, ref: str) -> bytes:
    """The proposal id ``ref`` names: a full id, or a prefix of a proposal recorded at the head."""
    prefix = _prefix(ref, "proposal")
    if len(prefix) == ID_HEX:
        return bytes.fromhex(prefix)
    keys = [k for k, _v, _h in engine.store.scan(GOV_NAMESPACE, f"proposal/{prefix}", limit=SHOWN_CANDIDATES + 1)]
    found = [bytes.fromhex(k.removeprefix("proposal/")) for k in keys]
    pid = _one(ref, "proposal", found)
    if pid is None:
        raise ApiError(404, "not_found", f"no proposal {ref[:SHOWN_REF_CHARS]} on the best chain")
    return pid

