"""A thin, typed client for the Bitcoin Core JSON-RPC calls anchoring needs.

Only Bitcoin Core RPCs are used, so the same code runs against mainnet, testnet, signet or
regtest Bitcoin Core, and against the regtest ``litecoind`` of the tests. Transport is
python-bitcoinlib's :class:`bitcoin.rpc.RawProxy` built from an explicit URL: nothing here calls
``bitcoin.SelectParams`` (global chain parameters would stop two networks living in one process).

Every failure to reach the node becomes :class:`BitcoinUnavailable` and every refusal by the node
becomes :class:`BitcoinRPCError`, so the anchoring service can show a reason instead of crashing.
Calls are blocking; the service runs them with ``trio.to_thread.run_sync``. A client is safe to
share between threads (every call has its own connection).
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from bitcoin.rpc import JSONRPCError, RawProxy

from peerdb.core.errors import ConfigError, DecodeError

from .anchortx import MAX_ANCHOR_TX_BYTES, parse_tx, txid
from .errors import AnchorProofError, BitcoinRPCError, BitcoinUnavailable, FeeOverBudget
from .hashes import to_display
from .headers import HEADER_LEN
from .proof import VerifiedAnchor
from .txoutproof import MAX_TXOUTPROOF_BYTES

T = TypeVar("T")

SATS_PER_BTC = 100_000_000

DEFAULT_RPC_TIMEOUT_S = 30.0
"""HTTP timeout per call: Bitcoin Core answers these calls in milliseconds unless it is busy
validating blocks; 30 s separates "busy" from "gone" without stalling the service for long."""

MAX_FEE_RATE_SAT_VB = Decimal(10_000)
"""Refuse configured fee rates above this (sat/vB): a typo guard, far above any real fee market."""

# JSON-RPC codes that mean "no usable answer" rather than "the node refused this call".
_UNAVAILABLE_CODES = {
    -342: "non-JSON answer (wrong URL, wrong credentials, or not a Bitcoin node)",
    -343: "answer without a result",
    -344: "malformed error object",
    -28: "node is warming up",
}
_RPC_INVALID_ADDRESS_OR_KEY = -5
"""Bitcoin Core's code for "no such transaction/block" (RPC_INVALID_ADDRESS_OR_KEY)."""


@dataclass(frozen=True)
class TxStatus:
    """Where a transaction stands in the node's view right now.

    ``confirmations`` > 0: in a block of the best chain, ``block_hash`` names it (display hex);
    0: not in the best chain; < 0: conflicted by a best-chain transaction (wallet view).
    """

    txid: str
    confirmations: int
    block_hash: str | None
    in_mempool: bool

    @property
    def dropped(self) -> bool:
        """Neither in the best chain nor waiting in the mempool: it will not confirm by itself."""
        return self.confirmations <= 0 and not self.in_mempool


@dataclass(frozen=True)
class PublishedAnchor:
    """An anchor transaction accepted by the node's mempool."""

    txid: str
    raw_tx: bytes
    fee_sat: int


@dataclass(frozen=True)
class AnchorMaterial:
    """What an :class:`~peerdb.anchor.proof.AnchorProof` needs from Bitcoin for one transaction."""

    txid: str
    raw_tx: bytes
    txoutproof: bytes
    headers: tuple[bytes, ...]
    block_hash: str
    height: int


class AnchorNotReady(BitcoinRPCError):
    """The transaction is not (or no longer) buried deep enough in the best chain."""

    def __init__(self, message: str) -> None:
        super().__init__("anchor_material", 0, message)


def _redact(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    return f"{parsed.hostname}:{parsed.port}{parsed.path}"


class UnexpectedAnswer(BitcoinRPCError):
    """The node answered, but not in the shape Bitcoin Core's documentation gives."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(method, 0, f"unexpected answer: {message}")


def _hex_bytes(value: Any, method: str, max_len: int) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * max_len:
        raise UnexpectedAnswer(method, f"expected hex of at most {max_len} bytes")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UnexpectedAnswer(method, "not hex") from None


def _field(answer: Any, key: str, kind: type[T], method: str) -> T:
    """``answer[key]`` checked to be a ``kind``, so a strange node fails as an RPC error, not a crash."""
    value = answer.get(key) if isinstance(answer, dict) else None
    if kind is int and isinstance(value, bool):
        value = None
    if not isinstance(value, kind):
        raise UnexpectedAnswer(method, f"field {key!r} missing or not {kind.__name__}")
    return value


def sats(amount: Any, what: str) -> int:
    """A BTC amount from JSON (parsed as Decimal) → integer satoshis, exactly."""
    if not isinstance(amount, (Decimal, int)):
        raise DecodeError(f"{what}: expected an amount, got {type(amount).__name__}")
    value = Decimal(amount) * SATS_PER_BTC
    if value != value.to_integral_value():
        raise DecodeError(f"{what}: {amount} BTC is not a whole number of satoshis")
    return int(value)


class BitcoinRPC:
    """Blocking Bitcoin Core JSON-RPC client (thread-safe)."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_RPC_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        try:
            parsed.port
        except ValueError:
            raise ConfigError("bitcoin rpc url: the port is not a number") from None
        if parsed.scheme != "http" or not parsed.hostname:
            raise ConfigError(f"bitcoin rpc url: expected http://user:password@host:port, got {_redact(url)}")
        self._url = url
        self.endpoint = _redact(url)
        self._timeout = timeout

    def close(self) -> None:
        """Nothing to release: each call uses its own connection (kept for API symmetry)."""

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; raises :class:`BitcoinUnavailable` or :class:`BitcoinRPCError`.

        Each call opens and closes its own HTTP connection. An idle keep-alive connection makes
        Bitcoin Core 0.21's shutdown wait for it (a stopped node would hang for its full timeout),
        a connection broken by a node restart would fail the next call, and sharing one between
        worker threads would need a lock; a loopback connect costs far less than any of these.
        """
        proxy = RawProxy(service_url=self._url, timeout=self._timeout)
        try:
            return proxy._call(method, *params)
        except JSONRPCError as exc:
            raw_code = exc.error.get("code")
            code = raw_code if isinstance(raw_code, int) else 0
            message = str(exc.error.get("message", ""))
            if code in _UNAVAILABLE_CODES:
                raise BitcoinUnavailable(
                    f"bitcoin node {self.endpoint}: {method}: {_UNAVAILABLE_CODES[code]}: {message}"
                ) from None
            raise BitcoinRPCError(method, code, message) from None
        except (OSError, http.client.HTTPException) as exc:
            # Connection refused or reset, timeouts, a server that closed on us.
            reason = str(exc) or type(exc).__name__
            raise BitcoinUnavailable(f"bitcoin node {self.endpoint}: {method}: {reason}") from None
        finally:
            proxy.close()

    # -- chain --------------------------------------------------------------------------------

    def chain(self) -> str:
        """Network name as Bitcoin Core reports it: main, test, signet or regtest."""
        return _field(self.call("getblockchaininfo"), "chain", str, "getblockchaininfo")

    def get_block_count(self) -> int:
        count = self.call("getblockcount")
        if not isinstance(count, int):
            raise UnexpectedAnswer("getblockcount", "not an integer")
        return count

    def get_best_block_hash(self) -> str:
        return str(self.call("getbestblockhash"))

    def get_block_hash(self, height: int) -> str:
        return str(self.call("getblockhash", height))

    def get_block_header(self, block_hash: str) -> bytes:
        """The raw 80-byte header (``getblockheader hash false``)."""
        raw = _hex_bytes(self.call("getblockheader", block_hash, False), "getblockheader", HEADER_LEN)
        if len(raw) != HEADER_LEN:
            raise UnexpectedAnswer("getblockheader", f"{len(raw)} bytes, a header is {HEADER_LEN}")
        return raw

    def get_block_header_info(self, block_hash: str) -> dict[str, Any]:
        """Verbose header: height, confirmations (-1 when not in the best chain), ..."""
        info = self.call("getblockheader", block_hash, True)
        if not isinstance(info, dict):
            raise UnexpectedAnswer("getblockheader", "not an object")
        return info

    def in_best_chain(self, block_hash: str) -> bool:
        """Whether the node knows this block and it is on its best chain."""
        try:
            info = self.get_block_header_info(block_hash)
        except BitcoinRPCError as exc:
            if exc.code == _RPC_INVALID_ADDRESS_OR_KEY:
                return False
            raise
        return _field(info, "confirmations", int, "getblockheader") > 0

    def check_anchor_in_best_chain(self, verified: VerifiedAnchor) -> None:
        """The online half of verifying an anchor proof (after :func:`~.proof.verify_anchor_proof`).

        Every header of the proof must be in this node's best chain at the claimed heights, and
        the Bitcoin block must hold as many transactions as the txoutproof says (Core's
        ``verifytxoutproof`` makes the same count check). Raises :class:`AnchorProofError`.
        """
        for i, header_hash in enumerate(verified.header_hashes):
            shown = to_display(header_hash)
            try:
                info = self.get_block_header_info(shown)
            except BitcoinRPCError as exc:
                if exc.code != _RPC_INVALID_ADDRESS_OR_KEY:
                    raise
                raise AnchorProofError(f"anchor_proof.headers[{i}]: block {shown} is unknown to the bitcoin node") from None
            if _field(info, "confirmations", int, "getblockheader") <= 0:
                raise AnchorProofError(f"anchor_proof.headers[{i}]: block {shown} is not in the bitcoin node's best chain")
            height = _field(info, "height", int, "getblockheader")
            if height != verified.bitcoin_height + i:
                raise AnchorProofError(
                    f"anchor_proof.bitcoin_height: claims {verified.bitcoin_height + i} for headers[{i}], "
                    f"the bitcoin node says {height}"
                )
            if i == 0:
                n_tx = _field(info, "nTx", int, "getblockheader")
                if n_tx != verified.block_tx_count:
                    raise AnchorProofError(
                        f"anchor_proof.txoutproof: claims {verified.block_tx_count} transactions, block {shown} has {n_tx}"
                    )

    # -- transactions -------------------------------------------------------------------------

    def get_raw_transaction(self, tx_id: str, block_hash: str | None = None) -> bytes:
        """Raw transaction bytes; with ``block_hash`` this works without ``-txindex``."""
        params: tuple[Any, ...] = (tx_id, False) if block_hash is None else (tx_id, False, block_hash)
        return _hex_bytes(self.call("getrawtransaction", *params), "getrawtransaction", MAX_ANCHOR_TX_BYTES)

    def get_tx_out_proof(self, tx_ids: list[str], block_hash: str | None = None) -> bytes:
        """Serialized CMerkleBlock proving ``tx_ids`` are in a block (see :mod:`.txoutproof`)."""
        params: tuple[Any, ...] = (tx_ids,) if block_hash is None else (tx_ids, block_hash)
        return _hex_bytes(self.call("gettxoutproof", *params), "gettxoutproof", MAX_TXOUTPROOF_BYTES)

    def verify_tx_out_proof(self, proof: bytes) -> list[str]:
        """The node's own check of a proof: matched txids, or [] if its block is not in the best chain."""
        matched = self.call("verifytxoutproof", proof.hex())
        if not isinstance(matched, list):
            raise UnexpectedAnswer("verifytxoutproof", "not a list")
        return [str(t) for t in matched]

    def in_mempool(self, tx_id: str) -> bool:
        try:
            self.call("getmempoolentry", tx_id)
        except BitcoinRPCError as exc:
            if exc.code == _RPC_INVALID_ADDRESS_OR_KEY:
                return False
            raise
        return True

    def tx_status(self, tx_id: str) -> TxStatus:
        """Confirmations, block and mempool presence of a transaction.

        Asks the wallet first (it knows its own transactions without ``-txindex`` and reports
        conflicts); falls back to ``getrawtransaction`` (mempool, or ``-txindex``) for a txid the
        wallet does not know. Not in a block and not in the mempool is asked twice, because a
        block can take the transaction out of the mempool between the two questions.
        """
        first = self._lookup(tx_id)
        if first.confirmations > 0:
            return first
        if self.in_mempool(tx_id):
            return TxStatus(tx_id, first.confirmations, None, True)
        return self._lookup(tx_id)

    def _lookup(self, tx_id: str) -> TxStatus:
        for method, params in (("gettransaction", (tx_id,)), ("getrawtransaction", (tx_id, True))):
            info = self._known_tx(method, *params)
            if info is None:
                continue
            # Absent "confirmations" means not in a block (getrawtransaction of a mempool tx).
            confirmations = _field(info, "confirmations", int, method) if "confirmations" in info else 0
            block_hash = _field(info, "blockhash", str, method) if confirmations > 0 else None
            return TxStatus(tx_id, confirmations, block_hash, False)
        return TxStatus(tx_id, 0, None, False)

    def _known_tx(self, method: str, *params: Any) -> dict[str, Any] | None:
        try:
            info = self.call(method, *params)
        except BitcoinRPCError as exc:
            if exc.code == _RPC_INVALID_ADDRESS_OR_KEY:
                return None
            raise
        if not isinstance(info, dict):
            raise UnexpectedAnswer(method, "not an object")
        return info

    def abandon_transaction(self, tx_id: str) -> None:
        """Tell the wallet a dropped transaction will never confirm, freeing its inputs."""
        self.call("abandontransaction", tx_id)

    def publish_anchor(
        self,
        payload: bytes,
        *,
        max_fee_sat: int,
        fee_rate_sat_vb: Decimal | None = None,
    ) -> PublishedAnchor:
        """Fund, sign and broadcast a transaction with one OP_RETURN output carrying ``payload``.

        The wallet picks inputs and change. The fee is checked against ``max_fee_sat`` *before*
        signing, so an over-budget anchor never leaves the node (:class:`FeeOverBudget`). With no
        ``fee_rate_sat_vb`` the node's own estimate (or ``-fallbackfee``) applies.
        """
        unfunded = self.call("createrawtransaction", [], [{"data": payload.hex()}])
        options: dict[str, Any] = {}
        if fee_rate_sat_vb is not None:
            if not Decimal(0) < fee_rate_sat_vb <= MAX_FEE_RATE_SAT_VB:
                raise ConfigError(f"fee_rate_sat_vb: {fee_rate_sat_vb} outside (0, {MAX_FEE_RATE_SAT_VB}]")
            # feeRate is BTC per 1000 vbytes in every Bitcoin Core version since 0.15;
            # sent as a string because JSON floats cannot carry it exactly.
            options["feeRate"] = format(fee_rate_sat_vb * 1000 / SATS_PER_BTC, "f")
        funded = self.call("fundrawtransaction", unfunded, options)
        try:
            fee_sat = sats(funded.get("fee") if isinstance(funded, dict) else None, "fee")
        except DecodeError as exc:
            raise UnexpectedAnswer("fundrawtransaction", str(exc)) from None
        if fee_sat > max_fee_sat:
            raise FeeOverBudget(fee_sat, max_fee_sat)
        signed = self.call("signrawtransactionwithwallet", _field(funded, "hex", str, "fundrawtransaction"))
        if _field(signed, "complete", bool, "signrawtransactionwithwallet") is not True:
            errors = signed.get("errors") or "incomplete signature"
            raise BitcoinRPCError("signrawtransactionwithwallet", 0, f"could not sign: {errors}")
        signed_hex = _field(signed, "hex", str, "signrawtransactionwithwallet")
        raw = _hex_bytes(signed_hex, "signrawtransactionwithwallet", MAX_ANCHOR_TX_BYTES)
        try:
            expected = to_display(txid(parse_tx(raw)))
        except DecodeError as exc:
            raise UnexpectedAnswer("signrawtransactionwithwallet", str(exc)) from None
        sent = str(self.call("sendrawtransaction", signed_hex))
        if sent != expected:
            raise BitcoinRPCError("sendrawtransaction", 0, f"node reports txid {sent}, expected {expected}")
        return PublishedAnchor(sent, raw, fee_sat)

    def anchor_material(self, tx_id: str, depth: int) -> AnchorMaterial:
        """Transaction, txoutproof and ``depth`` headers from its block upward, as one snapshot.

        A reorg between the calls can make the pieces disagree; the caller verifies the result
        (:func:`~peerdb.anchor.proof.verify_anchor_proof`) and simply asks again later.
        """
        if depth < 1:
            raise ValueError("depth must be at least 1")
        status = self.tx_status(tx_id)
        if status.block_hash is None or status.confirmations < depth:
            raise AnchorNotReady(f"tx {tx_id} has {status.confirmations} confirmations, {depth} needed")
        block_hash = status.block_hash
        height = _field(self.get_block_header_info(block_hash), "height", int, "getblockheader")
        raw_tx = self.get_raw_transaction(tx_id, block_hash)
        proof = self.get_tx_out_proof([tx_id], block_hash)
        headers = [self.get_block_header(block_hash)]
        for h in range(height + 1, height + depth):
            headers.append(self.get_block_header(self.get_block_hash(h)))
        return AnchorMaterial(tx_id, raw_tx, proof, tuple(headers), block_hash, height)
