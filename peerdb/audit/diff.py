"""``peerdb audit diff A B``: do two members keep the same books?

Two honest members exported at different moments agree on every best-chain block both hold; one
is merely ahead, or holds signatures and anchors the other has not received yet. Two sets of
books — different blocks at one height on the best chains — is a **divergence**: someone showed
different members different histories, or a fork has not been settled.

A comparison is only as good as what it compares: a bundle with a best-chain block left out, or
a transaction's bytes changed, must never be found "in agreement". So each bundle is verified
in full (:class:`~.verify.BundleVerifier`, offline) in the same pass that collects what is
compared, and a bundle that does not verify cannot be compared (``peerdb audit diff`` does so
unless told ``--no-verify``; :func:`diff_bundles` when given ``verify_first``). Without
verification (for bundles already verified) the reading still checks what the comparison rests
on: every block's body matches its header (so its hash covers its transactions), and the
best chain runs from the genesis without a gap, each block the child of the one before.

Reported, first the divergence if any, then the first instance of each kind of difference:

* ``consortium`` — the bundles are of different consortia (a divergence);
* ``block`` — the first height where the best-chain blocks differ (a divergence);
* ``missing`` — best-chain heights one bundle has and the other does not (one is ahead);
* ``signatures`` — a common block with different signer sets;
* ``anchor`` — a common block anchored in one bundle only, or by different Bitcoin transactions;
* ``excluded`` — different excluded members; ``side`` — side-branch blocks only one holds;
* ``settled`` — a block one exporter held settled (its ``unanimous`` head) that the other's best
  chain leaves out: settled history was rewritten.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from peerdb.anchor.anchortx import parse_tx, txid
from peerdb.anchor.hashes import to_display
from peerdb.core.blockdecode import decode_block_fast
from peerdb.core.errors import DecodeError, ValidationError
from peerdb.core.model import genesis_header

from .bundle import BlockEntry, BtcPart, EvidenceEntry, Head, Item, PartEntry, read_items
from .errors import AuditFailure, block_where
from .report import VerifyReport
from .verify import BundleVerifier, VerifyOptions


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
    verified: VerifyReport | None = None
    """The verifier's report, when the bundle was verified as it was read."""

    @property
    def height(self) -> int:
        return max(self.best, default=0)


class BooksReader:
    """Collects :class:`Books` from a bundle's items, in order (:meth:`add`), checking what the
    comparison rests on: each block's body matches its header, and the best chain links from
    the genesis block without a gap."""

    def __init__(self) -> None:
        self.books: Books | None = None
        self._btc_txids: list[str] = []
        self._best_tip: bytes = b""

    def add(self, item: Item) -> None:
        if isinstance(item, Head):
            self.books = Books(item)
            self._best_tip = genesis_header(item.consortium).hash
            return
        books = self.books
        if books is None:
            return  # the parser refuses any item before the head
        if isinstance(item, BtcPart):
            try:
                self._btc_txids.append(to_display(txid(parse_tx(item.bitcoin_tx))))
            except DecodeError:
                self._btc_txids.append(f"(unparsable transaction in btc item {item.n})")
        elif isinstance(item, (BlockEntry, PartEntry)):  # a namespace bundle's blocks compare alike
            where = block_where(item.header.height, item.hash, item.header.proposer)
            if isinstance(item, BlockEntry):  # a part's transactions are proven by the verifier
                try:
                    decode_block_fast(item.raw)
                except (DecodeError, ValidationError) as exc:
                    raise AuditFailure(where, f"its body does not match its header: {exc}") from None
            anchor = self._btc_txids[item.anchor.btc] if item.anchor is not None else None
            block = BookBlock(item.hash, item.header.proposer, frozenset(m for m, _ in item.sigs), anchor)
            if item.best:
                height = item.header.height
                if height in books.best:
                    raise AuditFailure(where, "two blocks marked best at one height")
                if height != books.height + 1 or item.header.prev != self._best_tip:
                    raise AuditFailure(where, f"marked best, but it is not the child of the best block at height "
                                       f"{books.height}: the bundle's best chain is broken")
                books.best[height] = block
                self._best_tip = item.hash
            else:
                books.side[item.hash] = item.header.height
        elif isinstance(item, EvidenceEntry):
            books.evidence.add(item.evidence.id)

    def finish(self, name: str) -> Books:
        if self.books is None:
            raise AuditFailure(name, "no head item")
        return self.books


def read_books(stream: BinaryIO, name: str = "bundle", verify: VerifyOptions | None = None) -> Books:
    """The books of one bundle; with ``verify``, only once the whole bundle verified (then
    ``verified`` is its report). Every failure is an AuditFailure whose ``where`` starts with
    ``name``."""
    reader = BooksReader()
    try:
        if verify is not None:
            report = BundleVerifier(verify, on_item=reader.add).verify(stream)
        else:
            for item in read_items(stream):
                reader.add(item)
            report = None
    except AuditFailure as exc:
        raise AuditFailure(f"{name}: {exc.where}", exc.reason) from None
    books = reader.finish(name)
    books.verified = report
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
    verified: bool = False
    """Both bundles were verified in full before they were compared."""

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    def to_json(self) -> dict[str, Any]:
        return {"agree": not self.diverged, "verified": self.verified,
                "a": {"file": self.name_a, "member": self.member_a, "height": self.height_a},
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
                     f"(A's tip {self.height_a}, B's tip {self.height_b})"
                     + ("" if self.verified else "; NOT VERIFIED: signatures and state were not checked")]
        lines += [f"  {d.kind}: {d.message}" for d in self.differences]
        return "\n".join(lines)


def _short(h: bytes) -> str:
    return h.hex()[:16]


def _first(items: Iterable[Difference]) -> Difference | None:
    return next(iter(items), None)


def diff_books(a: Books, b: Books, name_a: str = "A", name_b: str = "B") -> DiffResult:
    result = DiffResult(name_a, name_b, a.head.member, b.head.member, 0, a.height, b.height,
                        verified=a.verified is not None and b.verified is not None)
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
    for mine, theirs, me, other in ((a, b, "A", "B"), (b, a, "B", "A")):
        # A block the exporter held settled (anchored, endorsed by every member) that the other
        # best chain leaves out: settled history was rewritten (docs/protocol.md §11.3).
        for height in range(1, min(mine.head.claims.unanimous, mine.height) + 1):
            block, there = mine.best.get(height), theirs.best.get(height)
            if block is not None and there is not None and there.hash != block.hash:
                diffs.append(Difference(
                    "settled", height, f"block {height} {_short(block.hash)} is settled in {me} (anchored"
                    f"{' in Bitcoin tx ' + block.anchor_txid if block.anchor_txid else ''}, endorsed by every "
                    f"member), but {other}'s best chain leaves it out for {_short(there.hash)}: settled history "
                    "was rewritten"))
                break
            if there is None and height <= theirs.height:
                break
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


def diff_bundles(a: BinaryIO, b: BinaryIO, name_a: str = "A", name_b: str = "B",
                 verify: VerifyOptions | None = None, *, verify_first: bool = False) -> DiffResult:
    """Compare two bundles. With ``verify_first`` (what ``peerdb audit diff`` does unless told
    otherwise) each is verified in full as it is read, with ``verify`` or the default offline
    options; without, only their structure is checked and the result says ``verified`` False
    (see the module docstring)."""
    options = (verify or VerifyOptions()) if verify_first else None
    return diff_books(read_books(a, name_a, options), read_books(b, name_b, options), name_a, name_b)
