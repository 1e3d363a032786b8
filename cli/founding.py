"""Founding a consortium across firms (docs/operations.md): ``peerdb member init`` (a firm's keys
and member card), ``peerdb consortium init --member-card ...`` (the coordinator's consortium
file, in :mod:`.operators`), ``peerdb consortium show`` (the id every firm compares) and
``peerdb node init`` (a firm's node config, checked against its keys)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import click

from . import exitcodes
from .context import Ctx, json_option, pass_ctx
from .errors import CliError, config_problems
from .params import AddressType


class NamespaceSpec(click.ParamType[Any]):
    """``NAME[:writers=A,B][:readers=A,B][:private]``."""

    name = "namespace"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from peerdb.core.consortium import NamespaceRule
        from peerdb.core.errors import ConfigError
        from peerdb.founding import parse_namespace_spec
        if isinstance(value, NamespaceRule):
            return value
        try:
            return parse_namespace_spec(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class ParamSetting(click.ParamType[tuple[str, int]]):
    """``NAME=INTEGER`` for a consortium parameter."""

    name = "name=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        from peerdb.core.consortium import Params
        if isinstance(value, tuple):
            return value
        name, sep, number = str(value).partition("=")
        name = name.strip()
        if not sep or not number.strip().isdigit():
            self.fail(f"{value!r}: expected NAME=INTEGER, e.g. heartbeat_ms=2000", param, ctx)
        if name not in Params.__dataclass_fields__:
            self.fail(f"{name!r} is not a parameter (one of {', '.join(Params.__dataclass_fields__)})", param, ctx)
        return name, int(number)


# --- peerdb member init --------------------------------------------------------------------------

@click.group()
def member() -> None:
    """A firm's own keys and member card, for founding a consortium across firms."""


@member.command("init")
@click.option("--name", required=True, help="This firm's member name (lowercase a-z 0-9 _ . -).")
@click.option("--address", required=True, type=AddressType(),
              help="HOST:PORT where this firm's node will accept the other members.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="This firm's PeerDB directory: keys go to DIR/keys/, the card to DIR/NAME.card.")
@click.option("--clients", type=click.IntRange(0, 16), default=1, show_default=True,
              help="Client keys to create (they sign the firm's transactions).")
@click.option("--api", "api_address", type=AddressType(), default=None,
              help="The node's client API address, if the card should publish it (usually not).")
@click.option("--force", is_flag=True, help="Replace existing keys and card.")
@json_option
@pass_ctx
def member_init(ctx: Ctx, name: str, address: str, directory: str, clients: int, api_address: str | None,
                force: bool) -> None:
    """Write this firm's member key, client key(s) and member card.

    The keys stay on this machine (mode 600). The card is public: send it to the coordinator,
    who writes the consortium file from every firm's card.

    \b
    Example:
      peerdb member init --name firm-a --address peerdb.firm-a.example:7101 --dir /etc/peerdb
    """
    from peerdb.founding import init_member
    with config_problems():
        files = init_member(Path(directory), name, address, clients=clients, api=api_address, overwrite=force)
    ctx.emit(files.to_json(), "\n".join([
        f"member key {files.member.key.hex()} (kept in {files.member_key_file})",
        *(f"client key {k.hex()} (kept in {p})" for k, p in zip(files.member.clients, files.client_key_files)),
        f"member card: {files.card}",
        "send the card to the coordinator (it is public); keep keys/ on this machine",
    ]))


# --- peerdb consortium init --member-card ... ----------------------------------------------------

def init_from_cards(ctx: Ctx, cards: tuple[str, ...], name: str, out: str, namespaces: tuple[Any, ...],
                    settings: tuple[tuple[str, int], ...], closed: bool, genesis_time_ms: int | None,
                    force: bool) -> None:
    """The coordinator's step: the consortium file from the firms' member cards."""
    from peerdb.founding import consortium_from_cards, describe, read_card, write_consortium_file
    params = dict(settings)
    if len(params) != len(settings):
        raise CliError("--param: a parameter is given twice", exitcodes.USAGE)
    with config_problems():
        members = [read_card(card) for card in cards]
        consortium = consortium_from_cards(name, members, params=params, namespaces=namespaces,
                                           open_namespaces=not closed, genesis_time_ms=genesis_time_ms)
        write_consortium_file(Path(out), consortium, overwrite=force)
    info = describe(consortium)
    ctx.emit({"consortium_file": out, **info}, "\n".join([
        f"consortium {name} ({len(members)} members, in turn order: {', '.join(m.name for m in members)}) "
        f"written to {out}",
        f"consortium id: {info['id']}",
        "send the file to every firm; each runs `peerdb consortium show FILE` and compares the id over a "
        "channel it trusts",
    ]))
    if info["turn_race"]:
        click.echo(f"warning: {info['turn_race']}", err=True)


# --- peerdb consortium show ----------------------------------------------------------------------

@click.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@pass_ctx
def consortium_show(ctx: Ctx, file: str) -> None:
    """The consortium id of FILE, and everything it covers.

    Every firm runs this on the consortium file it received and compares the id with the
    others over a channel it trusts (a call, a signed letter): equal ids mean identical
    consensus rules. Certificates are outside the id; each is checked against its key.

    \b
    Example:
      peerdb consortium show /etc/peerdb/consortium.toml
    """
    from peerdb.consortium_file import load_consortium
    from peerdb.founding import describe
    with config_problems():
        info = describe(load_consortium(file))
    when = datetime.datetime.fromtimestamp(info["genesis_time_ms"] / 1000, datetime.timezone.utc)
    lines = [f"consortium id: {info['id']}",
             f"name {info['name']}, protocol {info['protocol']}, founded {when.isoformat(timespec='seconds')} "
             f"(genesis_time_ms {info['genesis_time_ms']})",
             "members, in turn order:"]
    for i, m in enumerate(info["members"]):
        lines.append(f"  {i + 1}. {m['name']:<14} key {m['key']}  at {m['address']}  "
                     f"{len(m['clients'])} client key(s)  cert {m['cert']}")
    lines.append("params: " + ", ".join(f"{k}={v}" for k, v in info["params"].items()))
    if info["turn_race"]:
        lines.append(f"WARNING: {info['turn_race']}")
    rules = [f"  {r['name']}: writers {','.join(r['writers'])}  readers {','.join(r['readers'])}"
             f"{'  PRIVATE (encrypted for its readers)' if r['private'] else ''}" for r in info["namespaces"]]
    lines.append(f"namespaces without a rule: {'open to every member' if info['open_namespaces'] else 'closed'}")
    lines += ["namespace rules:", *rules] if rules else ["namespace rules: none"]
    ctx.emit({"file": file, **info}, "\n".join(lines))
    bad = [m["name"] for m in info["members"] if m["cert"] != "ok"]
    if bad:
        raise CliError(f"{file}: member(s) {', '.join(bad)} have a missing or bad certificate: their nodes cannot "
                       "connect", exitcodes.CONFIG)


# --- peerdb node init ----------------------------------------------------------------------------

@click.command("init")
@click.option("--member", "member_name", required=True, help="This firm's member name in the consortium file.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="This firm's PeerDB directory (where `peerdb member init` wrote keys/ and the card).")
@click.option("--consortium", "consortium_file", type=click.Path(dir_okay=False), default=None,
              help="The consortium file [default: DIR/consortium.toml].")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="The member key [default: DIR/keys/MEMBER.key].")
@click.option("--client-key-file", type=click.Path(dir_okay=False), default=None,
              help="The client key `peerdb put` signs with [default: DIR/keys/MEMBER-client.key if it exists].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The LMDB data directory [default: DIR/data/MEMBER]; use an absolute path in production.")
@click.option("--api-listen", type=AddressType(allow_any_port=True), default=None,
              help="HOST:PORT of the client API [default: the member's api in the consortium file, "
                   "else 127.0.0.1:8100]. Keep it on loopback.")
@click.option("--listen", type=AddressType(), default=None,
              help="HOST:PORT to accept the other members on, if not the member's address (e.g. 0.0.0.0:7101).")
@click.option("--bitcoin-rpc", metavar="URL", default=None,
              help="This firm's Bitcoin Core RPC with its wallet, http://user:pass@host:8332/wallet/NAME; "
                   "without it the node anchors nothing (it still checks the others' anchors).")
@click.option("--check-pow/--no-check-pow", default=True, show_default=True,
              help="Check proof of work on anchor headers: on for Bitcoin networks, off only for the "
                   "litecoind regtest of the tests and the demo.")
@click.option("--fee-budget-sat", type=click.IntRange(1, 10**8), default=None,
              help="Most this node pays for one anchor transaction [node default: 20000].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="The config to write [default: DIR/MEMBER.toml].")
@click.option("--force", is_flag=True, help="Overwrite an existing config.")
@json_option
@pass_ctx
def node_init(ctx: Ctx, member_name: str, directory: str, consortium_file: str | None, key_file: str | None,
              client_key_file: str | None, data_dir: str | None, api_listen: str | None, listen: str | None,
              bitcoin_rpc: str | None, check_pow: bool, fee_budget_sat: int | None, out: str | None,
              force: bool) -> None:
    """Write this firm's node config, checked against its keys and the consortium file.

    Fresh API and auditor tokens are generated; the file is written with mode 600. Compare the
    consortium id it prints with the other firms' before you start the node.

    \b
    Example:
      peerdb node init --member firm-a --dir /etc/peerdb --data-dir /var/lib/peerdb/firm-a \\
          --api-listen 127.0.0.1:8101 --bitcoin-rpc http://peerdb:PASS@127.0.0.1:8332/wallet/peerdb
      peerdb node run --config /etc/peerdb/firm-a.toml
    """
    from peerdb.consortium_file import load_consortium
    from peerdb.core.model import consortium_id
    from peerdb.founding import BitcoinSettings, client_key_path, init_node_config, member_key_path
    from peerdb.node.config import load_node_config
    base = Path(directory)
    client: Path | None = Path(client_key_file) if client_key_file else client_key_path(base, member_name)
    if client_key_file is None and not client_key_path(base, member_name).exists():
        client = None
    path = Path(out) if out else base / f"{member_name}.toml"
    cfile = Path(consortium_file) if consortium_file else base / "consortium.toml"
    with config_problems():
        consortium = load_consortium(cfile)
        entry = consortium.member(member_name)
        api = api_listen or (entry.api if entry is not None and entry.api else "127.0.0.1:8100")
        bitcoin = BitcoinSettings(bitcoin_rpc, check_pow, fee_budget_sat) if bitcoin_rpc else None
        init_node_config(path, member_name, consortium, consortium_file=cfile,
                         key_file=Path(key_file) if key_file else member_key_path(base, member_name),
                         client_key_file=client, data_dir=Path(data_dir) if data_dir else base / "data" / member_name,
                         api_listen=api, listen=listen, bitcoin=bitcoin, overwrite=force)
        cfg = load_node_config(path)  # read back exactly as `node run` will
        cfg.load_keys(cfg.load_consortium())
    cid = consortium_id(consortium).hex()
    info = {"config": str(path), "member": member_name, "consortium_id": cid, "api_listen": cfg.api_listen,
            "data_dir": str(cfg.data_dir), "client_key_file": str(cfg.client_key_file) if cfg.client_key_file else None,
            "bitcoin": cfg.bitcoin is not None}
    ctx.emit(info, "\n".join([
        f"wrote {path} (mode 600: it holds the API token and the auditor token)",
        f"consortium id: {cid} (compare it with the other firms before you start)",
        f"client API on {cfg.api_listen}; data in {cfg.data_dir}"
        + ("" if cfg.bitcoin else "; no [bitcoin]: this node anchors nothing"),
        f"start it with: peerdb node run --config {path}",
    ]))
