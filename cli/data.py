"""``peerdb put | delete | get | history | propose``: reading and writing data through the node's API."""

from __future__ import annotations

import base64
import json
from typing import Any

import click

from peerdb.consortium_file import load_consortium
from peerdb.core.consortium import Consortium
from peerdb.core.errors import ConfigError, PeerDBError
from peerdb.core.keys import SigningKey
from peerdb.core.privacy import open_value
from peerdb.node.config import load_node_config
from peerdb.proofs.verify import ProofError, VerifiedRead, verify_read_proof

from . import exitcodes
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
