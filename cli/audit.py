"""``peerdb audit export|verify|diff``: the auditor's commands (docs/auditor.md).

``export`` talks to a node (chosen like every other command, by ``--config`` or ``--api`` and
``--token``); ``verify`` and ``diff`` need nothing but bundle files (and, optionally, a Bitcoin
node). Exit codes: 0 when everything holds, 4 when a verification fails or two bundles diverge,
3 when the node or the Bitcoin node cannot be reached, 1 for other errors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import httpx

from peerdb.audit.bundle import BlockEntry, BundleParser, PartEntry
from peerdb.audit.errors import AuditFailure

from . import exitcodes
from .client import refusal
from .context import Ctx, json_option, pass_ctx
from .errors import CliError

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
    client = ctx.client
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


# --- verify --------------------------------------------------------------------------------------

@audit.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--bitcoin-rpc", metavar="URL",
              help="Also check that every anchor's Bitcoin headers are in this node's best chain "
                   "(http://user:password@host:port).")
@click.option("--check-pow", is_flag=True, help="Check the proof of work of the anchors' Bitcoin headers "
              "(Bitcoin networks; not the tests' scrypt regtest).")
@click.option("--network", type=click.Choice(["main", "test", "testnet4", "signet", "regtest"]), default=None,
              help="Bitcoin network whose proof-of-work limit --check-pow applies "
                   "(default: the --bitcoin-rpc node's network, else main).")
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
@json_option
@pass_ctx
def diff(ctx: Ctx, a: str, b: str, strict: bool) -> None:
    """Compare two members' bundles A and B and report the first divergence ("two sets of books").

    Exit 0 when both best chains hold the same blocks up to the lower of the two tips (one
    member may simply be ahead, or hold signatures the other has not received yet), 4 when they
    diverge. Integrity (framing, trailer hash) is checked; signatures are not: run
    `peerdb audit verify` on each bundle for that.

    \b
    Example:
      peerdb audit diff firm-a.bundle firm-c.bundle
    """
    from peerdb.audit.diff import diff_bundles

    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            result = diff_bundles(fa, fb, a, b)
    except AuditFailure as exc:
        raise CliError(f"cannot compare: {exc}", exitcodes.VERIFY_FAILED) from None
    except OSError as exc:
        raise CliError(f"cannot read: {exc}") from None
    ctx.emit(result.to_json(), result.text())
    if result.diverged or (strict and result.differences):
        sys.exit(exitcodes.VERIFY_FAILED)
