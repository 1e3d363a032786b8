"""``peerdb put | delete | get | history | propose``: reading and writing data through the node's API."""

from __future__ import annotations

import json
from typing import Any

import click

from . import exitcodes
from .context import Ctx, json_option, pass_ctx, wait_options
from .errors import CliError
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


@click.command()
@click.argument("namespace")
@click.argument("key")
@click.option("--view", type=VIEW, default="majority", show_default=True, help="Which view to read.")
@click.option("--at", type=HeightType(), default=None, help="Read as of this height.")
@json_option
@pass_ctx
def get(ctx: Ctx, namespace: str, key: str, view: str, at: int | None) -> None:
    """Read NAMESPACE/KEY from a view; says which height and view answered.

    \b
    Example:
      peerdb -c configs/firm-a.toml get books 2026-Q3 --view unanimous
    """
    answer = ctx.client.get(f"/v1/kv/{namespace}/{key}", view=view, at=at)
    shown = shown_value(answer)
    text = (f"{shown}\n  ({answer['view']} view at height {answer['height']}, written at {answer['written_at']})"
            if answer["found"] else f"(not found in the {answer['view']} view at height {answer['height']})")
    ctx.emit(answer, text)


@click.command()
@click.argument("namespace")
@click.argument("key")
@json_option
@pass_ctx
def history(ctx: Ctx, namespace: str, key: str) -> None:
    """Every version of NAMESPACE/KEY with the block that wrote it.

    \b
    Example:
      peerdb -c configs/firm-a.toml history books 2026-Q3
    """
    answer = ctx.client.get(f"/v1/history/{namespace}/{key}")
    lines = [f"{v['height']:>8}  {v['status']:<16} {'(deleted)' if v['deleted'] else shown_value(v)}"
             for v in answer["versions"]] or ["(no versions)"]
    ctx.emit(answer, "\n".join(lines))


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
