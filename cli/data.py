"""``peerdb put | delete | get | history | propose``: reading and writing data through the node's API."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import click

from peerdb.client import (ACCEPTED, DUPLICATE, LOST, REFUSED, TIMEOUT, NodeRefused, NodeUnreachable, StreamClosed,
                           StreamStats, SyncStream, TxOutcome, TxSigner, ops_from_json)
from peerdb.consortium_file import load_consortium
from peerdb.core.consortium import Consortium
from peerdb.core.errors import ConfigError, PeerDBError
from peerdb.core.keys import SigningKey
from peerdb.core.model import Op
from peerdb.core.privacy import open_value
from peerdb.node.config import load_node_config
from peerdb.proofs.verify import ProofError, VerifiedRead, verify_read_proof

from . import exitcodes
from .client import refusal_error
from .context import Ctx, json_option, pass_ctx, wait_options
from .errors import CliError, config_problems
from .params import VIEW, HeightType


def _write(ctx: Ctx, ops: list[dict[str, Any]], wait: str | None, timeout: float, what: str) -> None:
    answer = ctx.post_waiting("/v1/write", {"ops": ops}, wait, timeout)
    ctx.emit_waited(answer, f"{what}: accepted {', '.join(t[:16] for t in answer.get('accepted', [])) or '(duplicate)'}")


@click.command()
@click.argument("namespace")
@click.argument("key")
@click.argument("value")
@wait_options("write")
@json_option
@pass_ctx
def put(ctx: Ctx, namespace: str, key: str, value: str, wait: str | None, timeout: float) -> None:
    """Write VALUE under NAMESPACE/KEY (signed by the node's client key).

    \b
    Example:
      peerdb -c configs/firm-a.toml put books 2026-Q3 '{"cash": 1200000}' --wait majority
    """
    _write(ctx, [{"op": "put", "namespace": namespace, "key": key, "value": value}], wait, timeout, "put")


@click.command()
@click.argument("namespace")
@click.argument("key")
@wait_options("write")
@json_option
@pass_ctx
def delete(ctx: Ctx, namespace: str, key: str, wait: str | None, timeout: float) -> None:
    """Delete NAMESPACE/KEY (the history keeps every earlier version).

    \b
    Example:
      peerdb -c configs/firm-a.toml delete books draft --wait majority
    """
    _write(ctx, [{"op": "delete", "namespace": namespace, "key": key}], wait, timeout, "delete")


def shown_value(answer: dict[str, Any]) -> str:
    """A value for a person: its text, else base64; in a private namespace the node could not
    open, the node's reason (docs/api.md, "Private namespaces")."""
    if answer.get("unavailable"):
        return f"(unavailable: {answer['unavailable']})"
    return str(answer["value_text"]) if answer["value_text"] is not None else f"(base64) {answer['value']}"


verify_option = click.option(
    "--verify", is_flag=True,
    help="Ask for a proof and check it with nothing but the consortium file: the signatures, the "
         "state tree path, the governance changes since genesis, the anchor (docs/verified-reads.md).")
consortium_option = click.option(
    "--consortium", "consortium_path", type=click.Path(dir_okay=False), default=None,
    help="With --verify: the consortium file to trust (default: the one the node config names).")
pow_option = click.option("--check-pow", is_flag=True,
                          help="With --verify: also check the anchor's Bitcoin proof of work (Bitcoin networks).")


def trusted_consortium(ctx: Ctx, path: str | None) -> Consortium:
    """The consortium file the verifier trusts: ``--consortium``, else the node config's."""
    with config_problems():
        if path is not None:
            return load_consortium(path)
        if ctx.config:
            return load_node_config(ctx.config).load_consortium()
    raise CliError("--verify needs the consortium file to trust: pass --consortium FILE or --config NODE.toml",
                   exitcodes.USAGE)


def member_keys(ctx: Ctx, consortium: Consortium) -> tuple[str, list[SigningKey]] | None:
    """This firm's member name and keys (to open private values), if the node config gives them."""
    if not ctx.config:
        return None
    try:
        cfg = load_node_config(ctx.config)
        return cfg.member, cfg.load_keys(consortium)
    except ConfigError:
        return None


def verified(ctx: Ctx, consortium: Consortium, answer: dict[str, Any], check_pow: bool) -> VerifiedRead:
    """Check the proof in a read answer, and that the answer says what the proof proves."""
    raw = answer.get("proof")
    if not isinstance(raw, str):
        raise CliError("verification FAILED: proof: the node sent no proof", exitcodes.VERIFY_FAILED)
    try:
        result = verify_read_proof(consortium, base64.b64decode(raw, validate=True), check_pow=check_pow)
    except ValueError:
        raise CliError("verification FAILED: proof: not base64", exitcodes.VERIFY_FAILED) from None
    except ProofError as exc:
        raise CliError(f"verification FAILED: {exc}", exitcodes.VERIFY_FAILED) from None
    if (result.namespace, result.key, result.height) != (answer["namespace"], answer["key"], answer["height"]):
        raise CliError(f"verification FAILED: proof: it is of {result.namespace}/{result.key} at height "
                       f"{result.height}, not of the answer", exitcodes.VERIFY_FAILED)
    if result.found != answer["found"]:
        raise CliError("verification FAILED: value: the node's answer says found="
                       f"{answer['found']}, its proof proves found={result.found}", exitcodes.VERIFY_FAILED)
    if result.value is not None:
        if result.private:
            check_private(ctx, consortium, result, answer)
        elif base64.b64decode(answer["value"]) != result.value:
            raise CliError("verification FAILED: value: the node's answer is not the value its proof proves",
                           exitcodes.VERIFY_FAILED)
    return result


def check_private(ctx: Ctx, consortium: Consortium, result: VerifiedRead, answer: dict[str, Any]) -> None:
    """The proof covers the sealed envelope; open it here (with this firm's member key, if the node
    config gives it) and compare with the plaintext the node answered."""
    assert result.value is not None
    mine = member_keys(ctx, consortium)
    if mine is None or answer.get("value") is None:
        result.notes.append("private value: the proof covers its sealed envelope; the plaintext was not "
                            "checked (no member key here)")
        return
    member, keys = mine
    for key in keys:
        try:
            plain = open_value(result.value, result.namespace, result.key, member, key)
        except PeerDBError:
            continue
        if plain != base64.b64decode(answer["value"]):
            raise CliError("verification FAILED: value: the node's plaintext is not what the proven envelope "
                           "holds", exitcodes.VERIFY_FAILED)
        result.notes.append("private value: the proven envelope opens to the value shown")
        return
    result.notes.append("private value: the proof covers its sealed envelope, which this member cannot open")


def verification_text(result: VerifiedRead) -> str:
    signed = f"signed by {', '.join(result.endorsers) or 'nobody'} of {', '.join(result.eligible)}"
    line = f"  VERIFIED: {result.view.value} at height {result.height} (block {result.block_hash.hex()[:16]}), {signed}"
    if result.excluded:
        line += f"; excluded: {', '.join(result.excluded)}"
    if result.anchor is not None:
        line += (f"; anchored in Bitcoin block {result.anchor['bitcoin_block']} "
                 f"({result.anchor['depth']} header(s) deep, proof of work "
                 f"{'checked' if result.anchor['pow_checked'] else 'not checked'})")
    if result.governance_changes:
        line += f"; {result.governance_changes} governance change(s) since genesis checked"
    return "\n".join([line] + [f"  note: {n}" for n in result.notes])


@click.command()
@click.argument("namespace")
@click.argument("key")
@click.option("--view", type=VIEW, default="majority", show_default=True, help="Which view to read.")
@click.option("--at", type=HeightType(), default=None, help="Read as of this height.")
@verify_option
@consortium_option
@pow_option
@json_option
@pass_ctx
def get(ctx: Ctx, namespace: str, key: str, view: str, at: int | None, verify: bool, consortium_path: str | None,
        check_pow: bool) -> None:
    """Read NAMESPACE/KEY from a view; says which height and view answered.

    With --verify the node sends a proof, checked here trusting only the consortium file; the
    command says which view the proof reaches and exits 4 naming the item that does not hold.

    \b
    Example:
      peerdb -c configs/firm-a.toml get books 2026-Q3 --view unanimous
      peerdb -c configs/firm-a.toml get books 2026-Q3 --verify
    """
    consortium = trusted_consortium(ctx, consortium_path) if verify else None
    answer = ctx.client.get(f"/v1/kv/{namespace}/{key}", view=view, at=at, proof="true" if verify else None)
    shown = shown_value(answer)
    text = (f"{shown}\n  ({answer['view']} view at height {answer['height']}, written at {answer['written_at']})"
            if answer["found"] else f"(not found in the {answer['view']} view at height {answer['height']})")
    if consortium is not None:
        result = verified(ctx, consortium, answer, check_pow)
        answer = {**answer, "verified": result.to_json()}
        answer["verified"]["notes"] = result.notes
        text += "\n" + verification_text(result)
    ctx.emit(answer, text)


@click.command()
@click.argument("namespace")
@click.argument("key")
@verify_option
@consortium_option
@pow_option
@json_option
@pass_ctx
def history(ctx: Ctx, namespace: str, key: str, verify: bool, consortium_path: str | None, check_pow: bool) -> None:
    """Every version of NAMESPACE/KEY with the block that wrote it.

    With --verify each of the newest 64 versions comes with a proof of the value at its height,
    checked here; the command exits 4 at the first that does not hold.

    \b
    Example:
      peerdb -c configs/firm-a.toml history books 2026-Q3 --verify
    """
    consortium = trusted_consortium(ctx, consortium_path) if verify else None
    answer = ctx.client.get(f"/v1/history/{namespace}/{key}", proof="true" if verify else None)
    lines = []
    for v in answer["versions"]:
        line = f"{v['height']:>8}  {v['status']:<16} {'(deleted)' if v['deleted'] else shown_value(v)}"
        if consortium is not None and "proof" in v:
            probe = {"namespace": namespace, "key": key, "height": v["height"], "found": not v["deleted"], **v}
            result = verified(ctx, consortium, probe, check_pow)
            v["verified"] = result.to_json()
            line += f"  [verified: {result.view.value}]"
        lines.append(line)
    ctx.emit(answer, "\n".join(lines or ["(no versions)"]))


@click.command()
@click.argument("file", type=click.File("r"))
@wait_options("write")
@json_option
@pass_ctx
def propose(ctx: Ctx, file: Any, wait: str | None, timeout: float) -> None:
    """Submit a batch of writes from a JSON file (or - for stdin) as one atomic transaction.

    \b
    Example:
      peerdb -c configs/firm-a.toml propose batch.json --wait majority

    \b
    The file holds a list of operations:
      [{"op": "put", "namespace": "books", "key": "cash", "value": "1200000"},
       {"op": "delete", "namespace": "books", "key": "draft"}]
    """
    try:
        ops = json.load(file)
    except ValueError as exc:
        raise CliError(f"{file.name}: not valid JSON ({exc}); expected a list of operations", exitcodes.USAGE) from None
    if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
        raise CliError(f"{file.name}: expected a non-empty JSON list of operation objects", exitcodes.USAGE)
    _write(ctx, ops, wait, timeout, "batch")


LOAD_CHUNK = 500
"""Lines signed and handed to the stream at a time: one hop to the stream's thread per chunk."""
LOAD_SHOWN_PROBLEMS = 10
"""Refused or unfinished lines named in the text output (``--json`` lists them all)."""


def load_signer(ctx: Ctx, client_key: str | None, consortium_path: str | None) -> TxSigner:
    """The client key to sign with: ``--client-key`` (with the consortium file), else the node
    config's ``client_key_file``."""
    with config_problems():
        if client_key is not None:
            consortium_file = consortium_path or (str(load_node_config(ctx.config).consortium_file)
                                                  if ctx.config else None)
            if consortium_file is None:
                raise CliError("--client-key needs the consortium file: pass --consortium FILE or --config NODE.toml",
                               exitcodes.USAGE)
            return TxSigner.from_files(client_key, consortium_file)
        if ctx.config:
            return TxSigner.from_node_config(ctx.config)
    raise CliError("load signs every line itself: pass --config NODE.toml (its client_key_file), or --client-key FILE "
                   "with --consortium FILE", exitcodes.USAGE)


def load_lines(file: Any) -> Iterator[tuple[int, list[Op]]]:
    """(line number, operations) of each non-blank line; a malformed line stops the load there."""
    for number, line in enumerate(file, 1):
        if not line.strip():
            continue
        try:
            yield number, ops_from_json(json.loads(line))
        except ValueError as exc:
            raise LoadLineError(number, str(exc)) from None


class LoadLineError(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


@click.command()
@click.argument("file", type=click.File("r"))
@click.option("--wait", type=VIEW, default=None,
              help="Finish only once every line is in this view (tentative|majority|unanimous_signed|unanimous); "
                   "without it, once every line is admitted (durable in the node's pool).")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=60.0, show_default=True,
              help="Seconds each frame of lines may wait for --wait, from its admission.")
@click.option("--client-key", type=click.Path(dir_okay=False), default=None,
              help="Client key file to sign with (default: the node config's client_key_file).")
@click.option("--consortium", "consortium_path", type=click.Path(dir_okay=False), default=None,
              help="With --client-key: the consortium file (default: the node config's).")
@json_option
@pass_ctx
def load(ctx: Ctx, file: Any, wait: str | None, timeout: float, client_key: str | None,
         consortium_path: str | None) -> None:
    """Write many records from a JSON-lines FILE (or - for stdin) through the write stream.

    Each line is one atomic transaction, signed here with a client key of the firm: one
    operation ({"namespace": ..., "key": ..., "value": ...}, or "value_b64", or "op": "delete")
    or {"ops": [...]}. Lines go to the node on one connection, many in flight (docs/stream.md);
    the summary counts what was accepted, refused (with the line and the reason) and reached
    --wait. A malformed line stops the load there (exit 2; the lines before it are submitted).
    Exit 6 if a line was refused, 7 if one did not reach --wait in time (it stays pending).

    \b
    Example:
      peerdb -c configs/firm-a.toml load exposures.jsonl --wait majority
    """
    signer = load_signer(ctx, client_key, consortium_path)
    client = ctx.client
    lines: dict[bytes, int] = {}
    started = time.monotonic()
    stopped: LoadLineError | None = None
    try:
        with SyncStream(client.url, client.token, views=(wait,) if wait else (), timeout_s=timeout,
                        signer=signer) as stream:
            def send(chunk: list[tuple[int, list[Op]]]) -> None:
                txs = [signer.sign(ops) for _, ops in chunk]
                lines.update((tx.txid, number) for tx, (number, _) in zip(txs, chunk))
                stream.submit_many(txs)
                chunk.clear()

            chunk: list[tuple[int, list[Op]]] = []
            try:
                for item in load_lines(file):
                    chunk.append(item)
                    if len(chunk) >= LOAD_CHUNK:
                        send(chunk)
            except LoadLineError as exc:
                stopped = exc
            send(chunk)  # the lines read before a malformed one go too
            outcomes = stream.drain()
            stats = stream.stats()
    except NodeUnreachable as exc:
        raise CliError(f"{exc}; is `peerdb node run` running with this API address?", exitcodes.UNREACHABLE) from None
    except NodeRefused as exc:
        raise refusal_error(exc) from None
    except StreamClosed as exc:
        raise CliError(str(exc)) from None
    elapsed = time.monotonic() - started
    _report_load(ctx, file.name, wait, outcomes, lines, stats, elapsed, stopped)


def _report_load(ctx: Ctx, name: str, wait: str | None, outcomes: list[TxOutcome], lines: dict[bytes, int],
                 stats: StreamStats, elapsed: float, stopped: LoadLineError | None) -> None:
    by_status = {s: [o for o in outcomes if o.status == s] for s in (ACCEPTED, DUPLICATE, REFUSED, TIMEOUT, LOST)}
    problems = sorted((lines.get(o.txid, 0), o) for s in (REFUSED, TIMEOUT, LOST) for o in by_status[s])
    answer: dict[str, Any] = {
        "file": name, "submitted": len(outcomes), "accepted": len(by_status[ACCEPTED]),
        "duplicates": len(by_status[DUPLICATE]), "refused": len(by_status[REFUSED]),
        "timed_out": len(by_status[TIMEOUT]), "lost": len(by_status[LOST]), "wait": wait,
        "reached": sum(1 for o in outcomes if o.ok) if wait else None,
        "elapsed_s": round(elapsed, 3), "tx_per_s": round(len(outcomes) / elapsed, 1) if elapsed > 0 else None,
        "frames": stats.frames_sent, "busy_frames": stats.busy_frames, "window_waits": stats.window_waits,
        "problems": [{"line": line, "txid": o.txid.hex(), "status": o.status, "code": o.code, "message": o.message}
                     for line, o in problems],
        "stopped_at_line": stopped.line if stopped else None,
    }
    text = (f"loaded {answer['submitted']} lines of {name} in {answer['elapsed_s']} s ({answer['tx_per_s']} tx/s, "
            f"{stats.frames_sent} frames): {answer['accepted']} accepted, {answer['duplicates']} duplicates, "
            f"{answer['refused']} refused")
    if wait:
        text += f"; {answer['reached']} reached {wait}"
    if stats.busy_frames or stats.window_waits:
        text += f"; back-pressure: {stats.busy_frames} busy frames, {stats.window_waits} window waits"
    for line, o in problems[:LOAD_SHOWN_PROBLEMS]:
        text += f"\n  line {line}: {o.status} {o.code or ''}: {o.message or ''}"
    if len(problems) > LOAD_SHOWN_PROBLEMS:
        text += f"\n  ... and {len(problems) - LOAD_SHOWN_PROBLEMS} more (--json lists them all)"
    ctx.emit(answer, text)
    if stopped is not None:
        raise CliError(f"{name}: {stopped}; the lines before it were submitted", exitcodes.USAGE)
    if by_status[REFUSED]:
        raise CliError(f"{len(by_status[REFUSED])} line(s) refused by the node", exitcodes.REJECTED)
    if by_status[TIMEOUT] or by_status[LOST]:
        raise CliError(f"{len(by_status[TIMEOUT]) + len(by_status[LOST])} line(s) not confirmed "
                       f"{'in ' + wait if wait else 'admitted'} (still pending, or unknown after the stream closed: "
                       "check with peerdb tx TXID)", exitcodes.TIMEOUT)
