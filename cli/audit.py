"""``peerdb audit export|verify|diff`` and ``peerdb anchors verify``: the auditor's commands
(docs/auditor.md).

``export`` talks to a node (chosen like every other command, by ``--config`` or ``--api`` and
``--token``); ``verify`` and ``diff`` need nothing but bundle files (and, optionally, a Bitcoin
node). Exit codes: 0 when everything holds, 4 when a verification fails or two bundles diverge,
3 when the node or the Bitcoin node cannot be reached, 1 for other errors.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import click
import httpx

from peerdb.anchor.proof import AnchorProof
from peerdb.audit.bundle import BlockEntry, BundleParser, PartEntry
from peerdb.audit.errors import AuditFailure

from . import exitcodes
from .client import refusal
from .context import Ctx, json_option, pass_ctx
from .errors import CliError

F = TypeVar("F", bound=Callable[..., Any])

EXPORT_READ_TIMEOUT_S = 600.0
"""Longest pause between two chunks of a streamed export: a batch of blocks is read in well under
a second, but a node busy with a large reorg may take a while to answer the snapshot."""


@click.group()
def audit() -> None:
    """Export a member's books as a bundle; verify one trusting no member; compare two.

    \b
    Example:
      peerdb -c configs/firm-a.toml audit export --out firm-a.pdbaudit
      peerdb audit verify firm-a.pdbaudit --bitcoin-rpc http://user:pass@127.0.0.1:8332 --check-pow
      peerdb audit diff firm-a.pdbaudit firm-b.pdbaudit
    """


# --- export --------------------------------------------------------------------------------------

@audit.command("export")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Bundle file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--namespace", default=None, metavar="NS",
              help="Export a namespace bundle: every header, signature, evidence and anchor proof, but of the "
                   "transactions only those of NS (and of _gov), with what proves the others do not touch NS.")
@json_option
@pass_ctx
def export(ctx: Ctx, out: str, force: bool, namespace: str | None) -> None:
    """Stream the node's books (every block, signature, objection, evidence and anchor proof it
    holds, with the consortium file) into a bundle file, with a progress bar.

    The file is written next to OUT as OUT.part and renamed once the whole bundle arrived and
    its trailer checked out, so OUT is never a partial bundle.

    \b
    Example:
      peerdb -c configs/firm-a.toml audit export --out firm-a.bundle
      peerdb -c configs/firm-a.toml audit export --namespace exposures --out exposures.bundle
    """
    target = Path(out)
    if target.exists() and not force:
        raise CliError(f"{out}: exists; pass --force to overwrite it", exitcodes.USAGE)
    client = ctx.audit_client
    partial = target.with_name(target.name + ".part")
    parser = BundleParser()
    blocks = txs = 0
    try:
        path = "/v1/audit/bundle" if namespace is None else f"/v1/audit/bundle?namespace={namespace}"
        with client.stream(path, read_timeout=EXPORT_READ_TIMEOUT_S) as response:
            if response.status_code >= 400:
                response.read()
                _refused(response)
            total = int(response.headers.get("x-peerdb-audit-blocks", "0") or 0)
            with open(partial, "wb") as f, click.progressbar(length=total, label="exporting blocks",
                                                             file=sys.stderr, show_pos=True) as bar:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    done = [item for item in parser.feed(chunk) if isinstance(item, (BlockEntry, PartEntry))]
                    blocks += len(done)
                    txs += sum(item.header.tx_count if isinstance(item, BlockEntry) else len(item.txs)
                               for item in done)
                    bar.update(len(done))
        trailer = parser.finish()
    except httpx.TransportError as exc:
        partial.unlink(missing_ok=True)
        raise CliError(f"cannot reach the node at {client.url} or it stopped sending ({exc.__class__.__name__}: "
                       f"{exc})", exitcodes.UNREACHABLE) from None
    except AuditFailure as exc:
        partial.unlink(missing_ok=True)
        raise CliError(f"the node sent a broken bundle ({exc}); nothing was written") from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CliError(f"{out}: cannot write ({exc})") from None
    os.replace(partial, target)
    size = target.stat().st_size
    c = trailer.counts
    data = {"file": out, "bytes": size, "blocks": c.blocks, "transactions": txs, "signatures": c.signatures,
            "objections": c.objections, "evidence": c.evidence, "anchored_blocks": c.anchors,
            "bitcoin_transactions": c.btc}
    if namespace is not None:
        data["namespace"] = namespace
    ctx.emit(data, f"wrote {out}{'' if namespace is None else f' (namespace {namespace})'}: {c.blocks} blocks, "
             f"{txs} transactions, {c.signatures} signatures, "
             f"{c.evidence} evidence, {c.anchors} anchored blocks ({size / 1e6:.1f} MB)\n"
             f"verify it with: peerdb audit verify {out}")


def _refused(response: httpx.Response) -> None:
    if response.status_code == 404:
        raise CliError("node refused: this node has no audit endpoint (/v1/audit/bundle); upgrade it",
                       exitcodes.REJECTED)
    raise refusal(response)


def bitcoin_check_options(whose: str, of: str) -> Callable[[F], F]:
    """``--bitcoin-rpc``, ``--check-pow`` and ``--network``: how a command checks anchors
    against Bitcoin (``audit verify`` for every anchor, ``anchors verify`` for one)."""
    def decorate(f: F) -> F:
        f = click.option("--network", type=click.Choice(["main", "test", "testnet4", "signet", "regtest"]),
                         default=None, help="Bitcoin network whose proof-of-work limit --check-pow applies "
                                            "(default: the --bitcoin-rpc node's network, else main).")(f)
        f = click.option("--check-pow", is_flag=True, help=f"Check the proof of work of {of} Bitcoin headers "
                         "(Bitcoin networks; not the tests' scrypt regtest).")(f)
        return click.option("--bitcoin-rpc", metavar="URL",
                            help=f"Also check that {whose} Bitcoin headers are in this node's best chain "
                                 "(http://user:password@host:port).")(f)
    return decorate


# --- verify --------------------------------------------------------------------------------------

@audit.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@bitcoin_check_options("every anchor's", "the anchors'")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Signature-checking threads (default: one per CPU).")
@click.option("--processes", is_flag=True,
              help="Check signatures in worker processes instead of threads (no GIL hand-offs; "
                   "worth it for large bundles).")
@json_option
@pass_ctx
def verify(ctx: Ctx, file: str, bitcoin_rpc: str | None, check_pow: bool, network: str | None,
           threads: int | None, processes: bool) -> None:
    """Recompute everything the bundle FILE claims, trusting no member: hash links, turns, every
    signature, every transaction (replaying the state machine), evidence and exclusions, fork
    choice and views, anchor proofs down to the Bitcoin headers.

    Exit 0 only when everything holds; otherwise exit 4 naming the first failing item (block
    height, member, what failed).

    \b
    Example:
      peerdb audit verify firm-a.bundle --bitcoin-rpc http://user:pass@127.0.0.1:8332
    """
    from peerdb.anchor.errors import BitcoinRPCError, BitcoinUnavailable
    from peerdb.anchor.headers import POW_LIMITS
    from peerdb.audit.verify import AnchorChecker, VerifyOptions, verify_bundle
    from peerdb.core.errors import ConfigError

    rpc: AnchorChecker | None = None
    try:
        if bitcoin_rpc:
            from peerdb.anchor.rpc import BitcoinRPC
            client = BitcoinRPC(bitcoin_rpc)
            if network is None:
                network = client.chain()
            rpc = client
        limit = POW_LIMITS.get(network or "main")
        if limit is None:
            if check_pow:
                raise CliError(f"--check-pow: no proof-of-work limit known for network {network!r}; "
                               "pass --network", exitcodes.USAGE)
            limit = POW_LIMITS["main"]  # unused without --check-pow
        size = os.path.getsize(file)
        with open(file, "rb") as f, click.progressbar(length=size, label="verifying", file=sys.stderr) as bar:
            report = verify_bundle(f, VerifyOptions(check_pow=check_pow, pow_limit=limit, bitcoin=rpc,
                                                    threads=threads, processes=processes), progress=bar.update)
    except AuditFailure as exc:
        if ctx.as_json:
            click.echo(json.dumps({"ok": False, "file": file, "where": exc.where, "reason": exc.reason}, indent=2))
            sys.exit(exitcodes.VERIFY_FAILED)
        raise CliError(f"verification FAILED: {exc}", exitcodes.VERIFY_FAILED) from None
    except ConfigError as exc:
        raise CliError(str(exc), exitcodes.USAGE) from None
    except (BitcoinUnavailable, BitcoinRPCError) as exc:
        raise CliError(f"cannot check anchors against the Bitcoin node: {exc}", exitcodes.UNREACHABLE) from None
    except OSError as exc:
        raise CliError(f"{file}: cannot read ({exc})") from None
    ctx.emit({"file": file, **report.to_json()}, report.text())


# --- diff ----------------------------------------------------------------------------------------

@audit.command("diff")
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option("--strict", is_flag=True, help="Also fail (exit 4) on differing signature sets, anchors, "
              "exclusions, evidence or side branches, not only on diverging blocks.")
@click.option("--no-verify", "no_verify", is_flag=True,
              help="Do not verify the bundles first (for bundles `audit verify` already passed): only their "
                   "structure is checked, and an agreement says NOT VERIFIED.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Signature-checking threads for the verification (default: one per CPU).")
@json_option
@pass_ctx
def diff(ctx: Ctx, a: str, b: str, strict: bool, no_verify: bool, threads: int | None) -> None:
    """Compare two members' bundles A and B and report the first divergence ("two sets of books").

    Each bundle is verified in full (offline, as `peerdb audit verify` does) while it is read:
    a bundle that does not verify is not compared (exit 4, naming what failed). Exit 0 when both
    best chains hold the same blocks up to the lower of the two tips (one member may simply be
    ahead, or hold signatures the other has not received yet), 4 when they diverge.

    \b
    Example:
      peerdb audit diff firm-a.bundle firm-c.bundle
    """
    from peerdb.audit.diff import diff_bundles
    from peerdb.audit.verify import VerifyOptions

    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            result = diff_bundles(fa, fb, a, b, VerifyOptions(threads=threads), verify_first=not no_verify)
    except AuditFailure as exc:
        raise CliError(f"cannot compare: {exc}", exitcodes.VERIFY_FAILED) from None
    except OSError as exc:
        raise CliError(f"cannot read: {exc}") from None
    ctx.emit(result.to_json(), result.text())
    if result.diverged or (strict and result.differences):
        sys.exit(exitcodes.VERIFY_FAILED)


# --- anchors verify ------------------------------------------------------------------------------

@click.command("verify")
@click.argument("ref")
@click.option("--bundle", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Take the proof from this audit bundle instead of asking the node.")
@bitcoin_check_options("the anchor's", "the anchor's")
@json_option
@pass_ctx
def anchors_verify(ctx: Ctx, ref: str, bundle: str | None, bitcoin_rpc: str | None, check_pow: bool,
                   network: str | None) -> None:
    """Check the anchor proof of one best-chain block (REF: a height or a block hash).

    Offline: the Merkle path from the block hash to the anchored root, the Bitcoin transaction
    whose OP_RETURN carries that root, the txoutproof placing the transaction in a Bitcoin block,
    and the chain of Bitcoin headers above it (its depth; proof of work with --check-pow). With
    --bitcoin-rpc, also that those headers are in your own Bitcoin node's best chain. A block
    without a proof of its own is covered by the anchor of a descendant (a block hash commits
    to its ancestry): that one is checked. The proof comes from the node, or from --bundle.
    Exit 0 when the proof holds, 4 when it does not (or the block is not anchored).

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors verify 42 --bitcoin-rpc http://user:pass@127.0.0.1:8332 --check-pow
      peerdb anchors verify 42 --bundle firm-a.pdbaudit
    """
    from peerdb.anchor.errors import AnchorProofError, BitcoinRPCError, BitcoinUnavailable
    from peerdb.anchor.headers import POW_LIMITS
    from peerdb.anchor.proof import verify_anchor_proof
    from peerdb.core.errors import DecodeError

    if bundle is not None:
        found = _proof_from_bundle(bundle, ref)
    else:
        found = _proof_from_node(ctx, ref)
    try:
        rpc = None
        if bitcoin_rpc:
            from peerdb.anchor.rpc import BitcoinRPC
            rpc = BitcoinRPC(bitcoin_rpc)
            network = network or rpc.chain()
        limit = POW_LIMITS.get(network or "main")
        if limit is None:
            if check_pow:
                raise CliError(f"--check-pow: no proof-of-work limit known for network {network!r}; pass --network",
                               exitcodes.USAGE)
            limit = POW_LIMITS["main"]  # unused without --check-pow
        verified = verify_anchor_proof(found.proof, found.anchored_hash, check_pow=check_pow, pow_limit=limit)
        if rpc is not None:
            rpc.check_anchor_in_best_chain(verified)
    except (AnchorProofError, DecodeError) as exc:
        raise CliError(f"anchor proof of block {found.height} FAILED: {exc}", exitcodes.VERIFY_FAILED) from None
    except (BitcoinUnavailable, BitcoinRPCError) as exc:
        raise CliError(f"cannot check the anchor against the Bitcoin node: {exc}", exitcodes.UNREACHABLE) from None
    covered = found.anchored_height != found.height
    info = {"ok": True, "height": found.height, "block": found.block_hash.hex(),
            "anchored_by": {"height": found.anchored_height, "block": found.anchored_hash.hex()} if covered else None,
            "bitcoin_txid": verified.txid_hex, "bitcoin_block": verified.bitcoin_block_hash_hex,
            "bitcoin_height": verified.bitcoin_height, "depth": verified.depth, "pow_checked": check_pow,
            "bitcoin_checked": rpc is not None, "source": bundle or "node"}
    lines = [f"OK: block {found.height} ({found.block_hash.hex()[:16]}) is anchored"
             + (f" through its descendant at height {found.anchored_height} ({found.anchored_hash.hex()[:16]})"
                if covered else ""),
             f"  Bitcoin transaction {verified.txid_hex}",
             f"  in Bitcoin block {verified.bitcoin_block_hash_hex} at height {verified.bitcoin_height}, "
             f"{verified.depth} header(s) deep",
             "  checked offline: Merkle path, OP_RETURN root, txoutproof, header chain"
             + (", proof of work" if check_pow else " (not proof of work: --check-pow)")]
    if rpc is not None:
        lines.append("  checked against the Bitcoin node: the headers are in its best chain")
    ctx.emit(info, "\n".join(lines))


@dataclass(frozen=True)
class _Found:
    """The proof to check for block ``height``: its own, or a descendant's that covers it."""

    height: int
    block_hash: bytes
    anchored_height: int
    anchored_hash: bytes
    proof: AnchorProof


def _proof_from_node(ctx: Ctx, ref: str) -> _Found:
    import base64

    from peerdb.core.errors import DecodeError
    answer = ctx.client.get(f"/v1/anchors/{ref}")
    block_hash = bytes.fromhex(answer["block"])
    if not ref.isdigit() and ref.lower() != answer["block"]:
        raise CliError(f"the node answered for block {answer['block']}, not {ref}", exitcodes.VERIFY_FAILED)
    own = answer
    if answer.get("proof") is None:
        if not answer.get("covered_by"):
            raise CliError(f"block {answer['height']} is not anchored (yet): no proof of its own, and no anchored "
                           "descendant", exitcodes.VERIFY_FAILED)
        own = ctx.client.get(f"/v1/anchors/{answer['covered_by']}")
        if own.get("proof") is None:
            raise CliError(f"block {answer['height']} is said to be covered by {answer['covered_by'][:16]}, which "
                           "has no proof", exitcodes.VERIFY_FAILED)
    try:
        proof = AnchorProof.decode(base64.b64decode(own["proof"], validate=True))
    except (ValueError, DecodeError) as exc:
        raise CliError(f"the node's anchor proof does not decode: {exc}", exitcodes.VERIFY_FAILED) from None
    return _Found(int(answer["height"]), block_hash, int(own["height"]), bytes.fromhex(own["block"]), proof)


def _proof_from_bundle(path: str, ref: str) -> _Found:
    """The proof of a best-chain block in a bundle (whole bundle read: its trailer is checked),
    or of the first anchored best-chain block above it, whose ancestry links down to it."""
    from peerdb.audit.bundle import BtcPart, read_items
    btc: list[BtcPart] = []
    chain: list[BlockEntry] = []  # best-chain blocks from the one asked for up
    try:
        with open(path, "rb") as f:
            for item in read_items(f):
                if isinstance(item, BtcPart):
                    btc.append(item)
                elif isinstance(item, BlockEntry) and item.best:
                    if chain and chain[-1].anchor is not None:
                        continue  # found; the rest is read for the trailer's check only
                    if chain or (str(item.header.height) == ref if ref.isdigit() else item.hash.hex() == ref.lower()):
                        if chain and item.header.prev != chain[-1].hash:
                            raise CliError(f"{path}: the best chain is broken at height {item.header.height}",
                                           exitcodes.VERIFY_FAILED)
                        chain.append(item)
    except AuditFailure as exc:
        raise CliError(f"{path}: {exc}", exitcodes.VERIFY_FAILED) from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read ({exc})") from None
    if not chain:
        raise CliError(f"{path}: no best-chain block {ref}", exitcodes.VERIFY_FAILED)
    anchored = next((entry for entry in chain if entry.anchor is not None), None)
    if anchored is None or anchored.anchor is None:
        raise CliError(f"block {chain[0].header.height} is not anchored in this bundle: no proof of its own, and no "
                       "anchored descendant", exitcodes.VERIFY_FAILED)
    proof = btc[anchored.anchor.btc].proof(anchored.hash, anchored.anchor)
    return _Found(chain[0].header.height, chain[0].hash, anchored.header.height, anchored.hash, proof)
