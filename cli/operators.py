"""``peerdb keygen | consortium init | node run | demo``: the operator's commands, which set up and
run nodes rather than talk to one (founding across firms: :mod:`.founding`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from peerdb.core.errors import ConfigError, PeerDBError, RestoredDataDir

from click.core import ParameterSource

from . import exitcodes
from .context import Ctx, json_option, pass_ctx
from .errors import CliError, config_problems
from .founding import NamespaceSpec, ParamSetting, consortium_show, init_from_cards, node_init


@click.command()
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Key file to write (mode 600).")
@click.option("--kind", type=click.Choice(["member", "client"]), default="member", show_default=True,
              help="A member key signs blocks; a client key signs transactions.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@click.option("--name", "member_name", default=None,
              help="Member keys: also write the member's TLS certificate for NAME next to the key "
                   "(OUT with .crt, PEM), to hand to the members in a rotate proposal; --json also gives it "
                   "as the consortium file takes it (cert_b64). A firm that founds or joins: `peerdb member init`.")
@json_option
@pass_ctx
def keygen(ctx: Ctx, out: str, kind: str, force: bool, member_name: str | None) -> None:
    """Create an Ed25519 key pair in a file readable only by you; print its public key.

    \b
    Example:
      peerdb keygen --out keys/firm-a.key
      peerdb keygen --kind client --out keys/firm-a-app.key
      peerdb keygen --out keys/firm-e.key --name firm-e     # a firm joining: key + keys/firm-e.crt
      peerdb keygen --out keys/firm-a.2027.key --name firm-a  # the next key of a rotation
    """
    import base64
    import ssl

    from peerdb.core.keys import SigningKey
    from peerdb.keyfile import write_key
    from peerdb.net.certs import member_certificate
    if member_name is not None and kind != "member":
        raise CliError("--name: only member keys have a certificate", exitcodes.USAGE)
    key = SigningKey.generate()
    info: dict[str, Any] = {"file": out, "kind": kind, "public": key.public.hex()}
    with config_problems(ValueError):
        cert_path = None
        if member_name is not None:
            cert = member_certificate(key.seed, member_name)
            cert_path = Path(out).with_suffix(".crt")
            if cert_path.exists() and not force:
                raise ConfigError(f"{cert_path}: exists (use --force to overwrite)")
            info["certificate"] = str(cert_path)
            info["cert_b64"] = base64.b64encode(cert).decode("ascii")  # as the consortium file takes it
        write_key(out, key, kind, overwrite=force)
        if cert_path is not None:
            cert_path.write_text(ssl.DER_cert_to_PEM_cert(cert), encoding="ascii")
    ctx.emit(info, key.public.hex() + (f"\ncertificate: {cert_path}" if cert_path else ""))


@click.group()
def consortium() -> None:
    """Found a consortium: the shared consortium file (from the firms' member cards, or a whole
    pilot consortium on one machine), and its id."""


PILOT_ONLY = ("directory", "count", "names", "host", "base_port", "api_base_port", "bitcoin_rpc")
"""Options of the one-machine pilot that make no sense with member cards (each firm has its own
machine, keys and node config)."""


@consortium.command("init")
@click.option("--member-card", "cards", multiple=True, type=click.Path(dir_okay=False),
              help="A firm's member card (`peerdb member init` writes it); repeat, in turn order. Writes only "
                   "the consortium file (--out).")
@click.option("--out", type=click.Path(dir_okay=False), default="consortium.toml", show_default=True,
              help="With --member-card: the consortium file to write.")
@click.option("--namespace", "namespaces", multiple=True, type=NamespaceSpec(),
              help="A namespace rule NAME[:writers=A,B][:readers=A,B][:private] ('*': every member); repeatable.")
@click.option("--param", "settings", multiple=True, type=ParamSetting(), metavar="NAME=VALUE",
              help="A consortium parameter, e.g. anchor_interval_s=600; repeatable.")
@click.option("--closed-namespaces", "closed", is_flag=True,
              help="A namespace without a rule is closed to every member (default: open).")
@click.option("--genesis-time-ms", type=click.IntRange(0), default=None,
              help="The founding time, ms since the epoch (default: now).")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Pilot (without --member-card): where to write everything.")
@click.option("--name", default="example", show_default=True, help="Consortium name.")
@click.option("--members", "count", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Number of members (named firm-a, firm-b, ... unless --names is given).")
@click.option("--names", help="Comma-separated member names, e.g. bank-a,bank-b,regulator.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Host every member listens on.")
@click.option("--base-port", type=click.IntRange(1, 65000), default=7100, show_default=True,
              help="Member i listens on base-port + i for peers.")
@click.option("--api-base-port", type=click.IntRange(1, 65000), default=8100, show_default=True,
              help="Member i serves its client API on api-base-port + i.")
@click.option("--bitcoin-rpc", metavar="URL", help="Bitcoin Core RPC URL for anchoring (http://user:pass@host:port).")
@click.option("--heartbeat-ms", type=int, default=None, help="Override params.heartbeat_ms.")
@click.option("--turn-timeout-ms", type=int, default=None, help="Override params.turn_timeout_ms.")
@click.option("--anchor-interval-s", type=int, default=None, help="Override params.anchor_interval_s.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@json_option
@pass_ctx
@click.pass_context
def consortium_init(click_ctx: click.Context, ctx: Ctx, cards: tuple[str, ...], out: str, namespaces: tuple[Any, ...],
                    settings: tuple[tuple[str, int], ...], closed: bool, genesis_time_ms: int | None,
                    directory: str | None, name: str, count: int, names: str | None, host: str,
                    base_port: int, api_base_port: int, bitcoin_rpc: str | None, heartbeat_ms: int | None,
                    turn_timeout_ms: int | None, anchor_interval_s: int | None, force: bool) -> None:
    """Write the consortium file from the firms' member cards (a consortium across firms); or,
    with --dir, a whole pilot consortium on this machine: every member's keys, consortium.toml
    and one node config per member, ready for `peerdb node run`.

    \b
    Example (across firms, see docs/operations.md):
      peerdb consortium init --name trade-finance --member-card firm-a.card --member-card firm-b.card \
          --member-card firm-c.card --namespace 'deals:writers=*:readers=firm-a,firm-b:private'
      peerdb consortium show consortium.toml
    Example (a pilot on one machine):
      peerdb consortium init --dir ./consortium --members 4
      peerdb node run --config ./consortium/firm-a.toml
    """
    overrides = {k: v for k, v in (("heartbeat_ms", heartbeat_ms), ("turn_timeout_ms", turn_timeout_ms),
                                   ("anchor_interval_s", anchor_interval_s)) if v is not None}
    if cards:
        given = [p for p in PILOT_ONLY if click_ctx.get_parameter_source(p) is not ParameterSource.DEFAULT]
        if given:
            raise CliError(f"--member-card: {', '.join('--' + p.replace('_', '-') for p in given)} belong to a pilot "
                           "on one machine (--dir); with member cards each firm writes its own node config with "
                           "`peerdb node init`", exitcodes.USAGE)
        init_from_cards(ctx, cards, name, out, namespaces, (*settings, *overrides.items()), closed,
                        genesis_time_ms, force)
        return
    if directory is None:
        raise CliError("give --member-card FILE for each firm (a consortium across firms), or --dir DIR for a "
                       "pilot on this machine", exitcodes.USAGE)
    from peerdb.setup_files import init_consortium
    member_names = [n.strip() for n in names.split(",")] if names else [f"firm-{chr(ord('a') + i)}" if i < 26
                                                                         else f"firm-{i}" for i in range(count)]
    with config_problems():
        result = init_consortium(Path(directory), name, member_names, host=host, base_port=base_port,
                                 api_base_port=api_base_port, bitcoin_rpc=bitcoin_rpc,
                                 params={**dict(settings), **overrides}, overwrite=force,
                                 namespaces=namespaces, open_namespaces=not closed,
                                 genesis_time_ms=genesis_time_ms)
    lines = [f"consortium {name} ({len(member_names)} members) written to {directory}",
             f"  consortium file: {result['consortium_file']}"]
    for member, cfg in result["configs"].items():
        lines.append(f"  {member}: peerdb node run --config {cfg}")
    from peerdb.core.consortium import founding_params
    race = founding_params({**dict(settings), **overrides}).turn_race_problem
    ctx.emit({**result, "turn_race": race}, "\n".join(lines))
    if race is not None:
        click.echo(f"warning: {race}", err=True)


consortium.add_command(consortium_show)


@click.group()
def node() -> None:
    """Write this firm's node config; run its node daemon."""


node.add_command(node_init)


@node.command("check")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="This member's node config.")
@click.option("--deep", is_flag=True,
              help="Check every block, transaction signature, block signature and stored value against what "
                   "commits to it, replaying the chain from genesis (the node must be stopped; takes time).")
@json_option
@pass_ctx
def node_check(ctx: Ctx, config_path: str, deep: bool) -> None:
    """Check this member's store offline: exit 0 if sound, 4 naming what is wrong.

    Without --deep: the start-up check (the store's structure and its most recent blocks).

    \b
    Example:
      peerdb node check --config configs/firm-a.toml --deep
    """
    from peerdb.node.config import load_node_config
    from peerdb.store import Store
    from peerdb.store.deepcheck import deep_check
    with config_problems():
        cfg = load_node_config(config_path)
        consortium = cfg.load_consortium()
    try:
        store = Store.open(cfg.data_dir, consortium, cfg.member, sync=False, joining=cfg.joining)
    except PeerDBError as exc:
        ctx.emit({"ok": False, "problems": [str(exc)]}, f"store refused: {exc}")
        raise SystemExit(exitcodes.VERIFY_FAILED) from None
    with store:
        if not deep:
            head = store.head()
            ctx.emit({"ok": True, "height": head.height, "deep": False},
                     f"store sound at height {head.height} (start-up check; use --deep for the whole store)")
            return

        def progress(done: int, total: int) -> None:
            if not ctx.as_json:
                click.echo(f"  checked {done:,} of {total:,} blocks", err=True)
        report = deep_check(store, consortium, progress)
    answer = {"ok": report.ok, "deep": True, "blocks": report.blocks, "transactions": report.transactions,
              "signatures": report.signatures, "keys": report.keys, "problems": report.problems}
    text = (f"store sound: {report.blocks:,} blocks, {report.transactions:,} transactions, {report.signatures:,} "
            f"signatures and {report.keys:,} keys checked" if report.ok else
            "store damaged:\n" + "\n".join(f"  {p}" for p in report.problems))
    ctx.emit(answer, text)
    if not report.ok:
        raise SystemExit(exitcodes.VERIFY_FAILED)


@node.command("run")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False),
              help="This member's node config (see `peerdb consortium init`).")
@click.option("--accept-restored", is_flag=True,
              help="Start from a data directory that was copied or restored from a backup (see docs/operations-restore.md).")
def node_run(config_path: str, accept_restored: bool) -> None:
    """Run the node daemon in the foreground; logs go to stderr; SIGINT/SIGTERM stop it cleanly.

    \b
    Example:
      peerdb node run --config configs/firm-a.toml
    """
    from peerdb.node.daemon import run_daemon
    from peerdb.node.identity import MemberRemoved
    try:
        with config_problems():
            run_daemon(config_path, accept_restored=accept_restored)
    except RestoredDataDir as exc:
        raise CliError(f"node not started: {exc}", exitcodes.RESTORED) from None
    except MemberRemoved as exc:
        raise CliError(f"node stopped: {exc}", exitcodes.REMOVED) from None
    except PeerDBError as exc:
        raise CliError(f"node stopped: {exc}") from None


@click.command()
@click.option("--members", type=click.IntRange(1, 26), default=4, show_default=True, help="Member firms to start.")
@click.option("--txs", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
              help="Transactions in the workload.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where to put keys, configs, data, logs and the audit bundle (default: a new temp dir).")
@click.option("--keep-running", is_flag=True, help="Leave the consortium running until Ctrl-C or SIGTERM.")
def demo(members: int, txs: int, workdir: str | None, keep_running: bool) -> None:
    """The whole story in one command: a local consortium anchoring into a regtest Bitcoin node.

    \b
    Starts a regtest node and the member daemons on 127.0.0.1, submits a workload through the
    API, waits until every block is signed by every member and anchored, exports an audit bundle
    and verifies it, prints a summary, and stops everything it started. Exit 0 only if all held.
    \b
    Example:
      peerdb demo --members 4 --txs 500 --workdir ./demo-work
    """
    from peerdb.demo import run_demo

    sys.exit(run_demo(members, txs, workdir, keep_running, echo=click.echo))
