"""Valid anchor proofs made by hand, without a Bitcoin node: an anchor transaction, headers
that meet the regtest target, and a txoutproof built by :func:`tests.helpers.bitcoin_node.build_txoutproof`.
"""

from __future__ import annotations

import struct

from bitcoin.core import COutPoint, CScript, CTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness
from bitcoin.core.script import CScriptWitness

from peerdb.anchor.anchortx import anchor_script, parse_tx, txid
from peerdb.anchor.hashes import sha256d
from peerdb.anchor.headers import POW_LIMITS, compact_to_target
from peerdb.anchor.proof import AnchorProof, batch_root, build_anchor_proofs
from tests.helpers.bitcoin_node import bitcoin_merkle_root, build_txoutproof

REGTEST_BITS = 0x207FFFFF
"""Regtest's compact target: about one header in two meets it, so mining takes no time."""


def anchor_tx(root: bytes, *, prevout: bytes = b"\x01" * 32, extra_anchor: bytes | None = None,
              witness: bool = False) -> bytes:
    """``witness``: the input spends a segwit output, as a wallet's change does, so the
    transaction's txid (without witness) and wtxid (with it) differ."""
    outs = [CTxOut(0, CScript(anchor_script(root))), CTxOut(90_000, CScript(b"\x51"))]
    if extra_anchor is not None:
        outs.append(CTxOut(0, CScript(anchor_script(extra_anchor))))
    if witness:
        stack = CTxWitness([CTxInWitness(CScriptWitness([b"\x30" * 71, b"\x02" * 33]))])
        tx = CTransaction([CTxIn(COutPoint(prevout, 0), CScript(), 0xFFFFFFFF)], outs, witness=stack)
    else:
        tx = CTransaction([CTxIn(COutPoint(prevout, 0), CScript(b"\x51"), 0xFFFFFFFF)], outs)
    raw: bytes = tx.serialize()
    return raw


def mined_header(prev: bytes, root: bytes, time: int) -> bytes:
    """A header meeting the regtest target (about two tries on average)."""
    for nonce in range(1000):
        raw = struct.pack("<i32s32sIII", 0x20000000, prev, root, time, REGTEST_BITS, nonce)
        if int.from_bytes(sha256d(raw), "little") <= compact_to_target(REGTEST_BITS):
            return raw
    raise RuntimeError("no nonce found in 1000 tries")  # probability 2**-1000


def make_anchor(block_hashes: list[bytes], depth: int = 3, height: int = 500,
                prevout: bytes = b"\x01" * 32, witness: bool = False) -> list[AnchorProof]:
    """Proofs that ``block_hashes`` were anchored in one transaction, ``depth`` headers deep
    (``witness``: see :func:`anchor_tx`)."""
    raw_tx = anchor_tx(batch_root(block_hashes), prevout=prevout, witness=witness)
    txids = [sha256d(b"coinbase" + prevout), txid(parse_tx(raw_tx)), sha256d(b"other")]
    headers = [mined_header(b"\x09" * 32, bitcoin_merkle_root(txids), 1_700_000_000)]
    for i in range(1, depth):
        headers.append(mined_header(sha256d(headers[-1]), sha256d(b"root%d" % i), 1_700_000_000 + i))
    txoutproof = build_txoutproof(headers[0], txids, [False, True, False])
    return build_anchor_proofs(block_hashes, bitcoin_tx=raw_tx, txoutproof=txoutproof, headers=headers,
                               bitcoin_height=height, check_pow=True, pow_limit=POW_LIMITS["regtest"])
