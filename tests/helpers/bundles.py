"""Audit bundles for the verifier's tests: a node's books without a node, and a forger's tools.

:func:`build_books` fills a :class:`~peerdb.audit.export.MemorySource` from
:class:`~tests.helpers.chainbuilder.ChainBuilder` blocks with side branches, an objection,
evidence and anchors (:mod:`tests.helpers.anchor_proofs`), so an exported bundle holds every kind
of item. :func:`items_of` and :func:`assemble` take a bundle apart and put it back together with
a matching trailer, as a forger would, so a test can change one item and see what the verifier
says.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from peerdb.anchor.headers import POW_LIMITS
from peerdb.audit.bundle import MAGIC, BlockEntry, Counts, Item, Trailer, read_items
from peerdb.audit.export import MemorySource
from peerdb.audit.report import VerifyReport
from peerdb.audit.verify import VerifyOptions, verify_bundle
from peerdb.core import codec
from peerdb.core.model import Block, Evidence, Objection
from tests.helpers.anchor_proofs import make_anchor
from tests.helpers.chainbuilder import ChainBuilder

OPTIONS = VerifyOptions(check_pow=True, pow_limit=POW_LIMITS["regtest"], threads=2)
"""Verify as for regtest (the anchors here meet the regtest target), with two worker threads."""


@dataclass
class Books:
    cb: ChainBuilder
    source: MemorySource
    main: list[Block]
    side: Block
    evidence: Evidence

    def bundle(self) -> bytes:
        return self.source.bundle("m0", now_ms=1_700_000_100_000)


def build_books() -> Books:
    """Six best-chain blocks with transactions; a side block at height 3 (round 1, by m3) that
    m0 objected to; gossiped evidence that m1 double-signed; blocks 1..4 anchored."""
    cb = ChainBuilder(4)
    src = MemorySource(cb.consortium)
    b1 = cb.block(cb.genesis, [cb.tx("m0", [("books", "a", b"1")]), cb.tx("m1", [("books", "b", b"2")])])
    b2 = cb.block(b1, [cb.tx("m2", [("books", "a", b"3"), ("books", "b", None)])])
    b3 = cb.block(b2, [cb.tx("m3", [("books", "d", b"4")])])
    side = cb.block(b2, [cb.tx("m1", [("books", "x", b"side")])], round=1)
    rest = cb.chain(3, parent=b3, txs_per_block=3)
    main = [b1, b2, b3, *rest]
    proofs = {p.block_hash: p for p in make_anchor([b.hash for b in main[:4]])}
    for block in main:
        signers = ["m0", "m1", "m2"] if block is b3 else cb.members
        src.add_block(block, cb.sign_all(block, signers), anchor=proofs.get(block.hash))
    objection = Objection.create(cb.keys["m0"], cb.cid, "m0", side.hash, "tx 1: not what we agreed")
    src.add_block(side, cb.sign_all(side, ["m3"]), objections=[objection])
    _, _, evidence = cb.double_sign("m1", rest[1])
    src.add_evidence(evidence)
    return Books(cb, src, main, side, evidence)


def verify(data: bytes, options: VerifyOptions = OPTIONS) -> VerifyReport:
    return verify_bundle(io.BytesIO(data), options)


# --- rewriting bundles -----------------------------------------------------------------------

def items_of(data: bytes) -> list[Item]:
    return list(read_items(io.BytesIO(data)))


def frame(value: dict[str, object]) -> bytes:
    data = codec.encode(value)
    return struct.pack(">I", len(data)) + data


def assemble(items: list[Item]) -> bytes:
    """Frame items in the order given, with a trailer that matches them (as a forger would
    write it), without the writer's own order checks."""
    digest = hashlib.sha256(MAGIC)
    out = [MAGIC]
    counts = Counts()
    for item in items:
        if isinstance(item, Trailer):
            continue
        item_frame = frame(item.to_cbor())
        digest.update(item_frame)
        out.append(item_frame)
        counts.add(item)
    out.append(frame(Trailer(counts, digest.digest()).to_cbor()))
    return b"".join(out)


def block_item(items: list[Item], height: int, best: bool = True) -> int:
    return next(i for i, it in enumerate(items) if isinstance(it, BlockEntry) and it.header.height == height
                and it.best == best)


def change_block(height: int, fn: Callable[[BlockEntry], BlockEntry], best: bool = True) -> Callable[[list[Item]], None]:
    def apply(items: list[Item]) -> None:
        i = block_item(items, height, best)
        entry = items[i]
        assert isinstance(entry, BlockEntry)
        items[i] = fn(entry)
    return apply
