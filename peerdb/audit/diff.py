"""``peerdb audit diff A B``: do two members keep the same books?

Two honest members exported at different moments agree on every best-chain block both hold; one
is merely ahead, or holds signatures and anchors the other has not received yet. Two sets of
books — different blocks at one height on the best chains — is a **divergence**: someone showed
different members different histories, or a fork has not been settled. The comparison reads
each bundle's structure and integrity (framing, order, trailer hash) but does not re-verify
signatures: run ``peerdb audit verify`` on each bundle for that.

Reported, first the divergence if any, then the first instance of each kind of difference:

* ``consortium`` — the bundles are of different consortia (a divergence);
* ``block`` — the first height where the best-chain blocks differ (a divergence);
* ``missing`` — best-chain heights one bundle has and the other does not (one is ahead);
* ``signatures`` — a common block with different signer sets;
* ``anchor`` — a common block anchored in one bundle only, or by different Bitcoin transactions;
* ``excluded`` — different excluded members; ``side`` — side-branch blocks only one holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from peerdb.anchor.anchortx import parse_tx, txid
from peerdb.anchor.hashes import to_display
from peerdb.core.errors import DecodeError

from .bundle import BlockEntry, BtcPart, EvidenceEntry, Head, PartEntry, read_items
from .errors import AuditFailure


@dataclass(frozen=True)
class BookBlock:
    hash: bytes
    proposer: str
    signers: frozenset[str]
    anchor_txid: str | None


@dataclass
class Books:
    """What a bundle says, reduced to what two bundles are compared on."""

    head: Head
    best: dict[int, BookBlock] = field(default_factory=dict)
    side: dict[bytes, int] = field(default_factory=dict)
    evidence: set[bytes] = field(default_factory=set)

    @property
    def height(self) -> int:
        return max(self.best, default=0)


def read_books(stream: BinaryIO, name: str = "bundle") -> Books:
    head: Head | None = None
    books: Books | None = None
    btc_txids: list[str] = []
    try:
        for item in read_items(stream):
            if isinstance(item, Head):
                head = item
                books = Books(item)
            elif books is None:
                continue  # the parser refuses any item before the head
            elif isinstance(item, BtcPart):
                try:
                    btc_txids.append(to_display(txid(parse_tx(item.bitcoin_tx))))
                except DecodeError:
                    btc_txids.append(f"(unparsable transaction in btc item {item.n})")
            elif isinstance(item, (BlockEntry, PartEntry)):  # a namespace bundle's blocks compare alike
                anchor = btc_txids[item.anchor.btc] if item.anchor is not None else None
                block = BookBlock(item.hash, item.header.proposer, frozenset(m for m, _ in item.sigs), anchor)
                if item.best:
                    if item.header.height in books.best:
                        raise AuditFailure(f"block {item.header.height}", "two blocks marked best at one height")
                    books.best[item.header.height] = block
                else:
                    books.side[item.hash] = item.header.height
            elif isinstance(item, EvidenceEntry):
                books.evidence.add(item.evidence.id)
    except AuditFailure as exc:
        raise AuditFailure(f"{name}: {exc.where}", exc.reason) from None
    if books is None or head is None:
        raise AuditFailure(name, "no head item")
    return books


@dataclass(frozen=True)
class Difference:
    kind: str
    height: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "height": self.height, "message": self.message}


@dataclass
class DiffResult:
    name_a: str
    name_b: str
    member_a: str
    member_b: str
    agreed_height: int
    """Highest height up to which both best chains hold the same blocks."""
    height_a: int
    height_b: int
    divergence: Difference | None = None
    differences: list[Difference] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    def to_json(self) -> dict[str, Any]:
        return {"agree": not self.diverged, "a": {"file": self.name_a, "member": self.member_a, "height": self.height_a},
                "b": {"file": self.name_b, "member": self.member_b, "height": self.height_b},
                "agreed_height": self.agreed_height,
                "divergence": self.divergence.to_json() if self.divergence else None,
                "differences": [d.to_json() for d in self.differences]}

    def text(self) -> str:
        a, b = f"A ({self.member_a})", f"B ({self.member_b})"
        if self.divergence is not None:
            lines = [f"DIVERGED: {self.divergence.message}",
                     f"  {a} and {b} agree up to height {self.agreed_height}"]
        else:
            lines = [f"AGREE: {a} and {b} hold the same best-chain blocks up to height {self.agreed_height} "
                     f"(A's tip {self.height_a}, B's tip {self.height_b})"]
        lines += [f"  {d.kind}: {d.message}" for d in self.differences]
        return "\n".join(lines)


def _short(h: bytes) -> str:
    return h.hex()[:16]


def _first(items: Iterable[Difference]) -> Difference | None:
    return next(iter(items), None)


def diff_books(a: Books, b: Books, name_a: str = "A", name_b: str = "B") -> DiffResult:
    result = DiffResult(name_a, name_b, a.head.member, b.head.member, 0, a.height, b.height)
    if a.head.cid != b.head.cid:
        result.divergence = Difference("consortium", None, f"different consortia: A is {a.head.consortium.name} "
                                       f"({_short(a.head.cid)}), B is {b.head.consortium.name} ({_short(b.head.cid)})")
        return result
    common = min(a.height, b.height)
    agreed = 0
    for height in range(1, common + 1):
        x, y = a.best.get(height), b.best.get(height)
        if x is None or y is None:
            break
        if x.hash != y.hash:
            result.divergence = Difference(
                "block", height, f"two sets of books at height {height}: A's best chain has block {_short(x.hash)} "
                f"proposed by {x.proposer}, B's has {_short(y.hash)} proposed by {y.proposer}")
            break
        agreed = height
    result.agreed_height = agreed
    diffs = result.differences
    if result.divergence is None and a.height != b.height:
        ahead, behind, top = ("A", "B", a.height) if a.height > b.height else ("B", "A", b.height)
        diffs.append(Difference("missing", agreed + 1, f"{behind} lacks best-chain heights {agreed + 1}..{top} "
                                f"that {ahead} holds ({top - agreed} blocks)"))
    sig = _first(Difference("signatures", h, f"block {h} ({_short(a.best[h].hash)}): A holds signatures of "
                            f"{', '.join(sorted(a.best[h].signers))}; B of {', '.join(sorted(b.best[h].signers))}")
                 for h in range(1, agreed + 1) if a.best[h].signers != b.best[h].signers)
    if sig is not None:
        count = sum(1 for h in range(1, agreed + 1) if a.best[h].signers != b.best[h].signers)
        diffs.append(Difference(sig.kind, sig.height, f"{sig.message} ({count} blocks differ so)"))
    anchor = _first(Difference("anchor", h, f"block {h} ({_short(a.best[h].hash)}): A's anchor "
                               f"{a.best[h].anchor_txid or 'none'}, B's {b.best[h].anchor_txid or 'none'}")
                    for h in range(1, agreed + 1) if a.best[h].anchor_txid != b.best[h].anchor_txid)
    if anchor is not None:
        diffs.append(anchor)
    if a.head.claims.excluded != b.head.claims.excluded:
        diffs.append(Difference("excluded", None, f"A excludes {', '.join(a.head.claims.excluded) or 'nobody'}, "
                                f"B excludes {', '.join(b.head.claims.excluded) or 'nobody'}"))
    if a.evidence != b.evidence:
        diffs.append(Difference("evidence", None, f"A holds {len(a.evidence - b.evidence)} evidence items B lacks, "
                                f"B holds {len(b.evidence - a.evidence)} A lacks"))
    only_a = sorted((height, h) for h, height in a.side.items() if h not in b.side)
    only_b = sorted((height, h) for h, height in b.side.items() if h not in a.side)
    if only_a or only_b:
        first = min(only_a + only_b)
        diffs.append(Difference("side", first[0], f"side-branch blocks only A holds: {len(only_a)}, only B holds: "
                                f"{len(only_b)} (first at height {first[0]}, {_short(first[1])})"))
    return result


def diff_bundles(a: BinaryIO, b: BinaryIO, name_a: str = "A", name_b: str = "B") -> DiffResult:
    return diff_books(read_books(a, name_a), read_books(b, name_b), name_a, name_b)
