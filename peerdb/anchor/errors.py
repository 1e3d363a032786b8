"""Errors of the Bitcoin side of anchoring, placed in PeerDB's one error tree.

The Bitcoin node is our own environment (the operator runs it or chose it), so failures to
reach it or refusals from it are :class:`LocalError`: the anchoring service shows them as a
failed/pending state with the reason and retries. Bad proofs handed to us are
:class:`ValidationError` / :class:`DecodeError` from the core tree (the peer or bundle broke them).
"""

from __future__ import annotations

from peerdb.core.errors import LocalError, ValidationError


class BitcoinUnavailable(LocalError):
    """The Bitcoin node cannot be reached, is warming up, or does not speak JSON-RPC to us."""


class BitcoinRPCError(LocalError):
    """The Bitcoin node answered with an error (insufficient funds, unknown tx, bad params...)."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"bitcoin rpc {method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.rpc_message = message


class FeeOverBudget(LocalError):
    """Funding the anchor transaction would cost more than the configured budget."""

    def __init__(self, fee_sat: int, budget_sat: int) -> None:
        super().__init__(f"fee {fee_sat} sat over budget {budget_sat}")
        self.fee_sat = fee_sat
        self.budget_sat = budget_sat


class AnchorProofError(ValidationError):
    """An anchor proof (path, transaction, txoutproof, header chain) does not hold."""
