"""What a successful verification established, for people (text) and programs (JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Heads:
    tentative: int = 0
    majority: int = 0
    unanimous_signed: int = 0
    unanimous: int = 0
    anchored: int = 0

    def to_json(self) -> dict[str, int]:
        return {"tentative": self.tentative, "majority": self.majority, "unanimous_signed": self.unanimous_signed,
                "unanimous": self.unanimous, "anchored": self.anchored}


@dataclass
class Exclusion:
    member: str
    height: int
    source: str
    """``evidence <id>`` (an evidence item or one carried by a block), or ``signatures`` (the
    bundle holds the member's signatures on two blocks at one height)."""


@dataclass
class VerifyReport:
    consortium: str
    consortium_id: str
    exporter: str
    exported_ms: int
    members: list[str]
    blocks: int = 0
    best_chain_blocks: int = 0
    side_blocks: int = 0
    transactions: int = 0
    best_chain_transactions: int = 0
    signatures: dict[str, int] = field(default_factory=dict)
    objections: int = 0
    evidence: int = 0
    excluded: list[Exclusion] = field(default_factory=list)
    anchored_blocks: int = 0
    bitcoin_transactions: int = 0
    bitcoin_checked: bool = False
    pow_checked: bool = False
    heads: Heads = field(default_factory=Heads)
    tip: str = ""
    keys_in_state: int = 0
    key_history: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    """Per member, ``(from height, key hex or None while not a member)`` along the best chain:
    one entry from height 0 for a member of the genesis file that governance never touched."""
    bytes: int = 0
    threads: int = 1
    seconds: float = 0.0
    namespace: str | None = None
    """The audited namespace of a namespace bundle (``transactions`` and ``keys_in_state`` are
    then that namespace's and ``_gov``'s), None for a full bundle."""
    namespace_root: str = ""
    """The audited namespace's root after the best chain's tip, as replayed and proven."""

    @property
    def tx_per_s(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "consortium": self.consortium, "consortium_id": self.consortium_id,
            "exporter": self.exporter, "exported_ms": self.exported_ms,
            "blocks": self.blocks, "best_chain_blocks": self.best_chain_blocks, "side_blocks": self.side_blocks,
            "transactions": self.transactions, "best_chain_transactions": self.best_chain_transactions,
            "members": list(self.members),
            "key_history": {m: [[start, key] for start, key in h] for m, h in self.key_history.items()},
            "signatures": dict(self.signatures), "objections": self.objections, "evidence": self.evidence,
            "excluded": [{"member": e.member, "height": e.height, "source": e.source} for e in self.excluded],
            "anchored_blocks": self.anchored_blocks, "bitcoin_transactions": self.bitcoin_transactions,
            "bitcoin_node_checked": self.bitcoin_checked, "pow_checked": self.pow_checked,
            "heads": self.heads.to_json(), "tip": self.tip, "keys_in_state": self.keys_in_state,
            "bytes": self.bytes, "threads": self.threads, "seconds": round(self.seconds, 3),
            "tx_per_s": round(self.tx_per_s, 1),
            "namespace": self.namespace, "namespace_root": self.namespace_root or None,
        }

    def _governance_lines(self) -> list[str]:
        """Only when governance changed a member or a key: then, per such member, its keys by
        height (``from H key`` or ``from H not a member``)."""
        changed = {m: h for m, h in self.key_history.items() if len(h) > 1 or h[0][1] is None}
        if not changed:
            return []
        parts = ["; ".join(f"from {start} {key[:16] if key else 'not a member'}" for start, key in h)
                 for h in changed.values()]
        return ["  keys by height (governance): " + ", ".join(f"{m}: {p}" for m, p in zip(changed, parts))]

    def text(self) -> str:
        h = self.heads
        scope = "" if self.namespace is None else (
            f"\n  namespace audit of {self.namespace!r}: its transactions and _gov's only, each block's lists "
            f"proven complete; its root after the tip {self.namespace_root[:16]} replayed and proven")
        lines = [
            f"OK: bundle of {self.exporter} in consortium {self.consortium} ({self.consortium_id[:16]}) verifies"
            + scope,
            f"  blocks: {self.blocks} ({self.best_chain_blocks} on the best chain, {self.side_blocks} on side branches)",
            f"  transactions: {self.transactions} ({self.best_chain_transactions} on the best chain); "
            f"{self.keys_in_state} keys in the final state",
            "  signatures: " + ", ".join(f"{m} {self.signatures.get(m, 0)}" for m in self.members),
            *self._governance_lines(),
            f"  objections: {self.objections}   evidence: {self.evidence}",
            "  excluded (double-signed): " + (", ".join(f"{e.member} at height {e.height} ({e.source})"
                                                   for e in self.excluded) or "none"),
            f"  heads: tentative {h.tentative}  majority {h.majority}  unanimous-signed {h.unanimous_signed}  "
            f"unanimous {h.unanimous}  anchored {h.anchored}",
            f"  anchors: {self.anchored_blocks} blocks with proofs in {self.bitcoin_transactions} Bitcoin "
            f"transactions; proof of work {'checked' if self.pow_checked else 'not checked (--check-pow)'}; "
            f"{'headers checked against the Bitcoin node' if self.bitcoin_checked else 'no Bitcoin node asked (--bitcoin-rpc)'}",
            f"  time: {self.seconds:.2f} s, {self.tx_per_s:,.0f} tx/s, {self.threads} verification threads, "
            f"{self.bytes / 1e6:.1f} MB",
        ]
        return "\n".join(lines)
