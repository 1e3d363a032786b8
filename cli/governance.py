"""``peerdb governance propose|vote|list|show``: change members, keys, parameters and namespace
rules by member votes (docs/governance.md, docs/cli.md "Governance").

Every command talks to the member's own node: a proposal travels in a transaction signed by the
node's client key; a vote is signed by the node's member key (only the firm itself votes).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from . import exitcodes
from .context import Ctx, json_option, pass_ctx, wait_options
from .errors import CliError

KIND_HELP = """\b
KIND and its options:
  remove   --member NAME (repeat to remove several together)
  add      --card FILE  (the joining firm's member card), or
           --name NAME --cert FILE --address HOST:PORT [--client HEX ...] [--api HOST:PORT]
  rotate   --name NAME --cert FILE
  update   --name NAME --address HOST:PORT [--client HEX ...] [--api HOST:PORT]
  params   --set NAME=VALUE (repeat), e.g. --set heartbeat_ms=2000
  namespace --namespace NS --writer NAME ... [--reader NAME ...] [--private]
"""

NEEDS_CONFIRMATION = "needs_confirmation"
"""The node's error code for a vote it takes only once confirmed (docs/api.md, governance vote)."""


def interactive() -> bool:
    """Whether a person can answer a question here (stdin is a terminal)."""
    return sys.stdin.isatty()


KINDS = {"remove": "remove_members", "add": "add_member", "rotate": "rotate_key", "update": "update_member",
         "params": "set_params", "namespace": "set_namespace"}


@click.group()
def governance() -> None:
    """Propose and vote on changes to the consortium; list and show proposals.

    \b
    A change passes when every current member approved it (removing members: every other
    member; a proposal counts as its proposer's yes), and takes effect two blocks later on
    every member.
    """


def read_certificate(path: str) -> bytes:
    """A member certificate file (PEM as `peerdb keygen --name` writes it, or DER) as DER."""
    import ssl

    from peerdb.core.errors import DecodeError
    from peerdb.net.certs import certificate_public_key
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CliError(f"--cert {path}: {exc.strerror or exc}", exitcodes.CONFIG) from None
    try:
        der = ssl.PEM_cert_to_DER_cert(data.decode("ascii")) if data.lstrip().startswith(b"-----BEGIN") else data
        certificate_public_key(der)
    except (ValueError, UnicodeDecodeError, DecodeError) as exc:
        raise CliError(f"--cert {path}: not a member certificate ({exc})", exitcodes.CONFIG) from None
    return der


def body_for(kind: str, members: tuple[str, ...], name: str | None, key: str | None, address: str | None,
             clients: tuple[str, ...], api: str | None, settings: tuple[str, ...], namespace: str | None,
             writers: tuple[str, ...], readers: tuple[str, ...], private: bool,
             cert: str | None = None) -> dict[str, Any]:
    """The request body of ``POST /v1/governance/propose`` (the node checks every field)."""
    body: dict[str, Any] = {"kind": KINDS[kind]}
    if cert is not None:
        import base64

        from peerdb.net.certs import certificate_public_key
        der = read_certificate(cert)
        carried = certificate_public_key(der).hex()
        if key is not None and key.lower() != carried:
            raise CliError(f"--cert {cert} carries key {carried[:16]}..., not the --key given", exitcodes.USAGE)
        key = carried
        body["cert_b64"] = base64.b64encode(der).decode("ascii")
    elif kind in ("add", "rotate"):
        raise CliError(f"{kind}: give --cert FILE (written by `peerdb keygen --name NAME`): without the "
                       "certificate the member's node cannot connect to the others", exitcodes.USAGE)
    if kind == "remove":
        if not members:
            raise CliError("remove: name the member(s) with --member NAME", exitcodes.USAGE)
        body["members"] = list(members)
    elif kind in ("add", "update", "rotate"):
        body.update(name=name, key=key, address=address, clients=list(clients), api=api)
    elif kind == "params":
        if not settings:
            raise CliError("params: give --set NAME=VALUE at least once", exitcodes.USAGE)
        params: dict[str, Any] = {}
        for item in settings:
            pname, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise CliError(f"--set {item!r}: expected NAME=INTEGER, e.g. heartbeat_ms=2000", exitcodes.USAGE)
            params[pname.strip()] = int(value)
        body["params"] = params
    else:
        body.update(namespace=namespace, writers=list(writers), readers=list(readers), private=private)
    return {k: v for k, v in body.items() if v is not None}


def card_body(kind: str, card: str, given: tuple[str | None, ...]) -> dict[str, Any]:
    """The add_member body from a member card (the card says everything: no other member option)."""
    import base64

    from peerdb.founding import read_card
    from .errors import config_problems
    if kind != "add":
        raise CliError(f"--card: only for `add` (a joining firm's card), not {kind!r}", exitcodes.USAGE)
    if any(v is not None for v in given):
        raise CliError("--card: the card gives the name, key, certificate, address, clients and API address; "
                       "leave those options out", exitcodes.USAGE)
    with config_problems():
        member = read_card(card)
    assert member.cert is not None  # read_card requires it
    body: dict[str, Any] = {"kind": KINDS["add"], "name": member.name, "key": member.key.hex(),
                            "address": member.address, "clients": [k.hex() for k in member.clients],
                            "cert_b64": base64.b64encode(member.cert).decode("ascii")}
    if member.api:
        body["api"] = member.api
    return body


@governance.command("propose", epilog=KIND_HELP)
@click.argument("kind", type=click.Choice(sorted(KINDS)))
@click.option("--member", "members", multiple=True, help="remove: a member to remove (repeatable).")
@click.option("--name", help="add/rotate/update: the member's name.")
@click.option("--key", help="add/rotate: the member key, 64 hex digits (optional with --cert, which carries it).")
@click.option("--cert", "cert", type=click.Path(dir_okay=False), default=None,
              help="add/rotate/update: the member's certificate file (`peerdb keygen --name NAME` writes it).")
@click.option("--card", type=click.Path(dir_okay=False), default=None,
              help="add: the joining firm's member card (`peerdb member init` writes it): name, key, certificate, "
                   "address, client keys and API address from it.")
@click.option("--address", help="add/update: the member's peer address HOST:PORT.")
@click.option("--client", "clients", multiple=True, help="add/update: a client key in hex (repeatable).")
@click.option("--api", "api_address", help="add/update: the member's API address HOST:PORT.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE", help="params: a new value (repeatable).")
@click.option("--namespace", help="namespace: the namespace the rule is for.")
@click.option("--writer", "writers", multiple=True, help="namespace: a member that may write ('*': everyone).")
@click.option("--reader", "readers", multiple=True, help="namespace: a member that may read ('*': everyone).")
@click.option("--private", is_flag=True, help="namespace: values are encrypted for the readers.")
@click.option("--note", default="", help="Why: shown to the members asked to vote.")
@click.option("--confirm", is_flag=True,
              help="Propose even what the node warns about (a clock skew or turn that lets a member take the "
                   "turns of those before it), without being asked.")
@wait_options("proposal")
@json_option
@pass_ctx
def propose_cmd(ctx: Ctx, kind: str, members: tuple[str, ...], name: str | None, key: str | None, cert: str | None,
                card: str | None, address: str | None,
                clients: tuple[str, ...], api_address: str | None, settings: tuple[str, ...],
                namespace: str | None, writers: tuple[str, ...], readers: tuple[str, ...], private: bool,
                note: str, confirm: bool, wait: str | None, timeout: float) -> None:
    """Propose a change KIND (remove, add, rotate, update, params, namespace).

    \b
    Examples:
      peerdb -c configs/firm-a.toml governance propose remove --member firm-d --note "left the market"
      peerdb -c configs/firm-a.toml governance propose params --set heartbeat_ms=2000
      peerdb -c configs/firm-a.toml governance propose add --name firm-e --cert firm-e.crt \\
          --address 10.0.0.5:7400 --client <firm-e client key hex> --note "firm-e joins"
      peerdb -c configs/firm-b.toml governance propose rotate --name firm-b --cert keys/firm-b.2027.crt
      peerdb -c configs/firm-a.toml governance propose add --card firm-e.card --note "firm-e joins"
    """
    if card is not None:
        body = card_body(kind, card, (name, key, cert, address, api_address, *clients))
    else:
        body = body_for(kind, members, name, key, address, clients, api_address, settings, namespace, writers,
                        readers, private, cert)
    body["note"] = note
    answer = post_confirming(ctx, "/v1/governance/propose", body, confirm, wait, timeout, "Propose it anyway?",
                             "not proposed")
    ctx.emit_waited(answer, f"proposed {answer['kind']}: {answer['proposal']}\n"
                         f"members vote with: peerdb governance vote {answer['proposal']} --yes|--no")


@governance.command("vote")
@click.argument("proposal")
@click.option("--yes/--no", "approve", default=None, help="Approve or reject (required).")
@click.option("--confirm", is_flag=True,
              help="Approve even what the node warns about (rotating this member's key to one its node does "
                   "not hold; a clock skew or turn that lets a member take the turns of those before it), "
                   "without being asked.")
@wait_options("vote")
@json_option
@pass_ctx
def vote_cmd(ctx: Ctx, proposal: str, approve: bool | None, confirm: bool, wait: str | None, timeout: float) -> None:
    """Vote on PROPOSAL (its hex id, or a prefix of it) with this member's key.

    A yes to rotating this member's own key to one its node does not hold is warned about and
    must be confirmed (asked at a terminal, or --confirm): once in force, the node could sign
    nothing until it holds the key.

    \b
    Example:
      peerdb -c configs/firm-b.toml governance vote 3f2a...c1 --yes --wait majority
    """
    if approve is None:
        raise CliError("say --yes or --no", exitcodes.USAGE)
    body: dict[str, Any] = {"proposal": proposal, "approve": approve}
    answer = post_confirming(ctx, "/v1/governance/vote", body, confirm, wait, timeout, "Vote yes anyway?", "not voted")
    ctx.emit_waited(answer, f"voted {'yes' if approve else 'no'} on {answer['proposal'][:16]}")


def post_confirming(ctx: Ctx, path: str, body: dict[str, Any], confirm: bool, wait: str | None, timeout: float,
                    question: str, declined: str) -> dict[str, Any]:
    """POST a governance request; one the node warns about (409 needs_confirmation) is asked
    about at a terminal and sent again with "confirm": true, or refused with the warning."""
    if confirm:
        body = {**body, "confirm": True}
    try:
        return ctx.post_waiting(path, body, wait, timeout)
    except CliError as exc:
        if exc.api_code != NEEDS_CONFIRMATION:
            raise
        if ctx.as_json or not interactive():
            raise CliError(f"{exc.message}\n(pass --confirm to go ahead anyway)", exc.code, exc.api_code) from None
        click.echo(f"WARNING: {exc.message.removeprefix('node refused: ')}", err=True)
        if not click.confirm(question, default=False, err=True):
            raise CliError(declined, exitcodes.ERROR) from None
        return ctx.post_waiting(path, {**body, "confirm": True}, wait, timeout)


def _short(key: str | None) -> str:
    return f"{key[:16]}..." if key else "-"


def _who(names: list[str]) -> str:
    return "everyone" if "*" in names else ", ".join(names) or "nobody"


def describe_change(kind: str, change: Any) -> str:
    """A proposal's change in words (the API gives it as the proposal's positional body)."""
    try:
        if kind == "add_member":
            name, key, address, clients, cert, api = change
            return (f"add member {name} (key {_short(key)}, address {address}, {len(clients)} client key(s)"
                    f"{f', API {api}' if api else ''}{', certificate given' if cert else ', NO certificate'})")
        if kind == "remove_members":
            return "remove " + ", ".join(change)
        if kind == "rotate_key":
            name, key, cert = change
            return f"rotate {name}'s member key to {_short(key)}{'' if cert else ' (NO certificate)'}"
        if kind == "update_member":
            name, address, clients, cert, api = change
            return (f"update {name}: address {address}, {len(clients)} client key(s)"
                    f"{f', API {api}' if api else ''}{', new certificate' if cert else ''}")
        if kind == "set_params":
            return "set " + ", ".join(f"{name} = {value}" for name, value in change)
        if kind == "set_namespace":
            name, writers, readers, private = change
            return (f"namespace {name}: writers {_who(writers)}; readers {_who(readers)}"
                    f"{'; private (encrypted for its readers)' if private else ''}")
    except (TypeError, ValueError):
        pass
    return str(change)  # a kind this CLI does not know (a newer node): as the node gave it


def _line(p: dict[str, Any]) -> str:
    when = f"effective at {p['effective_height']}" if p.get("effective_height") is not None else ""
    return (f"{p['id'][:16]}  {p['status']:<8} {p['kind']:<15} by {p['proposer']} at {p['height']}  "
            f"{when}  {p['note']}").rstrip()


@governance.command("list")
@json_option
@pass_ctx
def list_cmd(ctx: Ctx) -> None:
    """Pending proposals, then recently decided ones.

    \b
    Example:
      peerdb -c configs/firm-a.toml governance list
    """
    answer = ctx.client.get("/v1/governance")
    lines = ["pending:"] + ([f"  {_line(p)}" for p in answer["pending"]] or ["  (none)"])
    lines += ["recent:"] + ([f"  {_line(p)}" for p in answer["recent"]] or ["  (none)"])
    ctx.emit(answer, "\n".join(lines))


@governance.command("show")
@click.argument("proposal")
@json_option
@pass_ctx
def show_cmd(ctx: Ctx, proposal: str) -> None:
    """One proposal: the change, its status and the votes. PROPOSAL is its id or a prefix of it.

    \b
    Example:
      peerdb -c configs/firm-a.toml governance show 3f2a...c1
    """
    p = ctx.client.get(f"/v1/governance/{proposal}")
    lines = [_line(p), f"proposal {p['id']}", f"change: {describe_change(p['kind'], p['change'])}"]
    lines += [f"vote: {v['member']} {'yes' if v['approve'] else 'no'}" for v in p["votes"]]
    if p.get("waiting_for"):
        lines.append("waiting for: " + ", ".join(p["waiting_for"]))
    if p.get("reason"):
        lines.append(f"reason: {p['reason']}")
    ctx.emit(p, "\n".join(lines))
