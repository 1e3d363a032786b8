"""``peerdb``: every command registered explicitly, one context object, --json where data is printed.

Exit codes: 0 ok, 1 error, 2 usage, 3 node unreachable, 4 verification failed, 5 config or key
file problem, 6 refused by the node, 7 --wait timed out (see cli/exitcodes.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from peerdb.core.errors import ConfigError, PeerDBError

from . import exitcodes
from .client import ApiClient, CliError
from .params import VIEW, AddressType, HeightType

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclass
class Ctx:
    api: str | None = None
    token: str | None = None
    config: str | None = None
    as_json: bool = False
    _client: ApiClient | None = field(default=None, repr=False)

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient.from_options(self.api, self.token, self.config)
        return self._client

    def emit(self, data: Any, text: str | None = None) -> None:
        if self.as_json or text is None:
            click.echo(json.dumps(data, indent=2, sort_keys=True))
        else:
            click.echo(text)


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
"""Every command that prints data accepts --json here as well as on the group."""





@click.group(context_settings=CONTEXT_SETTINGS)
@click.option("--config", "-c", envvar="PEERDB_CONFIG", type=click.Path(dir_okay=False),
              help="Node config file (gives the API address and token). Env: PEERDB_CONFIG.")
@click.option("--api", envvar="PEERDB_API", type=AddressType(), metavar="HOST:PORT",
              help="Node API address. Env: PEERDB_API.")
@click.option("--token", envvar="PEERDB_TOKEN", help="Node API bearer token. Env: PEERDB_TOKEN.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(package_name="peerdb")
@click.pass_context
def main(ctx: click.Context, config: str | None, api: str | None, token: str | None, as_json: bool) -> None:
    """PeerDB: a peer database for consortia of competing firms.

    \b
    Operators:   peerdb keygen | consortium init | node run | status
    Data:        peerdb put | delete | get | history | propose
    Inspection:  peerdb blocks list|show | evidence list|show | anchors list|show
    Auditors:    peerdb audit export|verify|diff
    Governance:  peerdb governance propose|vote|list|show
    Try it:      peerdb demo

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 node unreachable, 4 verification failed,
    5 config/key problem, 6 refused by the node, 7 --wait timed out.
    Shell completion: eval "$(_PEERDB_COMPLETE=bash_source peerdb)"  (zsh: zsh_source).
    """
    ctx.obj = Ctx(api=api, token=token, config=config, as_json=as_json)


def _json_flag(ctx: Ctx, as_json: bool) -> None:
    if as_json:
        ctx.as_json = True


# --- keys and consortium ---------------------------------------------------------------------------

@click.command()
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Key file to write (mode 600).")
@click.option("--kind", type=click.Choice(["member", "client"]), default="member", show_default=True,
              help="A member key signs blocks; a client key signs transactions.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@click.option("--name", "member_name", default=None,
              help="Member keys: also write the member's TLS certificate for NAME next to the key "
                   "(OUT with .crt), to hand to the members in an add or rotate proposal.")
@json_option
@pass_ctx
def keygen(ctx: Ctx, out: str, kind: str, force: bool, member_name: str | None, as_json: bool) -> None:
    """Create an Ed25519 key pair in a file readable only by you; print its public key.

    \b
    Example:
      peerdb keygen --out keys/firm-a.key
      peerdb keygen --kind client --out keys/firm-a-app.key
      peerdb keygen --out keys/firm-e.key --name firm-e     # a firm joining: key + keys/firm-e.crt
      peerdb keygen --out keys/firm-a.2027.key --name firm-a  # the next key of a rotation
    """
    _json_flag(ctx, as_json)
    import ssl
    from pathlib import Path

    from peerdb.core.keys import SigningKey
    from peerdb.keyfile import write_key
    from peerdb.net.certs import member_certificate
    if member_name is not None and kind != "member":
        raise CliError("--name: only member keys have a certificate", exitcodes.USAGE)
    key = SigningKey.generate()
    info: dict[str, Any] = {"file": out, "kind": kind, "public": key.public.hex()}
    try:
        cert_path = None
        if member_name is not None:
            cert = member_certificate(key.seed, member_name)
            cert_path = Path(out).with_suffix(".crt")
            if cert_path.exists() and not force:
                raise ConfigError(f"{cert_path}: exists (use --force to overwrite)")
            info["certificate"] = str(cert_path)
        write_key(out, key, kind, overwrite=force)
        if cert_path is not None:
            cert_path.write_text(ssl.DER_cert_to_PEM_cert(cert), encoding="ascii")
    except (ConfigError, ValueError) as exc:
        raise CliError(str(exc), exitcodes.CONFIG) from None
    ctx.emit(info, key.public.hex() + (f"\ncertificate: {cert_path}" if cert_path else ""))


@click.group()
def consortium() -> None:
    """Found a consortium: keys, the shared consortium file, one node config per member."""


@consortium.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False), help="Where to write everything.")
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
def consortium_init(ctx: Ctx, directory: str, name: str, count: int, names: str | None, host: str,
                    base_port: int, api_base_port: int, bitcoin_rpc: str | None, heartbeat_ms: int | None,
                    turn_timeout_ms: int | None, anchor_interval_s: int | None, force: bool, as_json: bool) -> None:
    """Write keys, consortium.toml and one node config per member, ready for `peerdb node run`.

    \b
    Example:
      peerdb consortium init --dir ./consortium --members 4
      peerdb node run --config ./consortium/firm-a.toml
    """
    _json_flag(ctx, as_json)
    from peerdb.setup_files import init_consortium
    member_names = [n.strip() for n in names.split(",")] if names else [f"firm-{chr(ord('a') + i)}" if i < 26
                                                                         else f"firm-{i}" for i in range(count)]
    overrides = {k: v for k, v in (("heartbeat_ms", heartbeat_ms), ("turn_timeout_ms", turn_timeout_ms),
                                   ("anchor_interval_s", anchor_interval_s)) if v is not None}
    try:
        result = init_consortium(Path(directory), name, member_names, host=host, base_port=base_port,
                                 api_base_port=api_base_port, bitcoin_rpc=bitcoin_rpc, params=overrides,
                                 overwrite=force)
    except ConfigError as exc:
        raise CliError(str(exc), exitcodes.CONFIG) from None
    lines = [f"consortium {name} ({len(member_names)} members) written to {directory}",
             f"  consortium file: {result['consortium_file']}"]
    for member, cfg in result["configs"].items():
        lines.append(f"  {member}: peerdb node run --config {cfg}")
    ctx.emit(result, "\n".join(lines))


# --- node ----------------------------------------------------------------------------------------------

@click.group()
def node() -> None:
    """Run this firm's node daemon."""


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
    try:
        run_daemon(config_path, accept_restored=accept_restored)
    except ConfigError as exc:
        raise CliError(str(exc), exitcodes.CONFIG) from None
    except PeerDBError as exc:
        raise CliError(f"node stopped: {exc}") from None


# --- data ------------------------------------------------------------------------------------------------

def _wait_result(ctx: Ctx, answer: dict[str, Any], what: str) -> None:
    wait = answer.get("wait")
    text = f"{what}: accepted {', '.join(t[:16] for t in answer.get('accepted', [])) or '(duplicate)'}"
    if wait:
        text += f"; {wait['view']} {'reached' if wait['reached'] else 'NOT reached yet (still pending)'}"
    ctx.emit(answer, text)
    if wait and not wait["reached"]:
        sys.exit(exitcodes.TIMEOUT)


def _write(ctx: Ctx, ops: list[dict[str, Any]], wait: str | None, timeout: float, what: str) -> None:
    body: dict[str, Any] = {"ops": ops}
    if wait:
        body.update(wait=wait, timeout_s=timeout)
    answer = ctx.client.post("/v1/write", body, timeout=timeout + 10)
    _wait_result(ctx, answer, what)


wait_option = click.option("--wait", type=VIEW, default=None,
                           help="Return only once the write is in this view (tentative|majority|unanimous_signed|unanimous).")
timeout_option = click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
                              help="Seconds to wait with --wait.")


@click.command()
@click.argument("namespace")
@click.argument("key")
@click.argument("value")
@wait_option
@timeout_option
@json_option
@pass_ctx
def put(ctx: Ctx, namespace: str, key: str, value: str, wait: str | None, timeout: float, as_json: bool) -> None:
    """Write VALUE under NAMESPACE/KEY (signed by the node's client key).

    \b
    Example:
      peerdb -c configs/firm-a.toml put books 2026-Q3 '{"cash": 1200000}' --wait majority
    """
    _json_flag(ctx, as_json)
    _write(ctx, [{"op": "put", "namespace": namespace, "key": key, "value": value}], wait, timeout, "put")


@click.command()
@click.argument("namespace")
@click.argument("key")
@wait_option
@timeout_option
@json_option
@pass_ctx
def delete(ctx: Ctx, namespace: str, key: str, wait: str | None, timeout: float, as_json: bool) -> None:
    """Delete NAMESPACE/KEY (the history keeps every earlier version).

    \b
    Example:
      peerdb -c configs/firm-a.toml delete books draft --wait majority
    """
    _json_flag(ctx, as_json)
    _write(ctx, [{"op": "delete", "namespace": namespace, "key": key}], wait, timeout, "delete")


def _shown_value(answer: dict[str, Any]) -> str:
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
def get(ctx: Ctx, namespace: str, key: str, view: str, at: int | None, as_json: bool) -> None:
    """Read NAMESPACE/KEY from a view; says which height and view answered.

    \b
    Example:
      peerdb -c configs/firm-a.toml get books 2026-Q3 --view unanimous
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get(f"/v1/kv/{namespace}/{key}", view=view, at=at)
    shown = _shown_value(answer)
    text = (f"{shown}\n  ({answer['view']} view at height {answer['height']}, written at {answer['written_at']})"
            if answer["found"] else f"(not found in the {answer['view']} view at height {answer['height']})")
    ctx.emit(answer, text)


@click.command()
@click.argument("namespace")
@click.argument("key")
@json_option
@pass_ctx
def history(ctx: Ctx, namespace: str, key: str, as_json: bool) -> None:
    """Every version of NAMESPACE/KEY with the block that wrote it.

    \b
    Example:
      peerdb -c configs/firm-a.toml history books 2026-Q3
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get(f"/v1/history/{namespace}/{key}")
    lines = [f"{v['height']:>8}  {v['status']:<16} {'(deleted)' if v['deleted'] else _shown_value(v)}"
             for v in answer["versions"]] or ["(no versions)"]
    ctx.emit(answer, "\n".join(lines))


def _block_value(op: dict[str, Any]) -> str:
    if op["op"] != "put":
        return ""
    if op.get("private"):
        return "(private: encrypted for its readers; read it with `peerdb get`)"
    if op.get("redacted"):
        return "(not shown: this member may not read the namespace)"
    return str(op["value_text"])


@click.command()
@click.argument("file", type=click.File("r"))
@wait_option
@timeout_option
@json_option
@pass_ctx
def propose(ctx: Ctx, file: Any, wait: str | None, timeout: float, as_json: bool) -> None:
    """Submit a batch of writes from a JSON file (or - for stdin) as one atomic transaction.

    \b
    Example:
      peerdb -c configs/firm-a.toml propose batch.json --wait majority

    \b
    The file holds a list of operations:
      [{"op": "put", "namespace": "books", "key": "cash", "value": "1200000"},
       {"op": "delete", "namespace": "books", "key": "draft"}]
    """
    _json_flag(ctx, as_json)
    try:
        ops = json.load(file)
    except ValueError as exc:
        raise CliError(f"{file.name}: not valid JSON ({exc}); expected a list of operations", exitcodes.USAGE) from None
    if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
        raise CliError(f"{file.name}: expected a non-empty JSON list of operation objects", exitcodes.USAGE)
    _write(ctx, ops, wait, timeout, "batch")


# --- inspection ----------------------------------------------------------------------------------------

@click.command()
@json_option
@pass_ctx
def status(ctx: Ctx, as_json: bool) -> None:
    """Heads per view, peers, whose turn it is, anchoring, and alerts with their causes.

    \b
    Example:
      peerdb -c configs/firm-a.toml status --json
    """
    _json_flag(ctx, as_json)
    s = ctx.client.get("/v1/status")
    heads = s["heads"]
    lines = [
        f"{s['member']} in consortium {s['consortium']} ({s['consortium_id'][:16]})",
        f"heads: tentative {heads['tentative']}  majority {heads['majority']}  "
        f"unanimous-signed {heads['unanimous_signed']}  unanimous {heads['unanimous']}  anchored {heads['anchored']}",
        f"up to date: {'yes' if s['up_to_date'] else 'no (not every block is unanimous yet)'}",
        f"turn: height {s['turn']['height']} round {s['turn']['round']} -> {s['turn']['proposer']}",
        "peers: " + ", ".join(f"{m} {'up' if up else 'DOWN'}" for m, up in s["peers"].items()),
        f"pending transactions: {s['mempool']}",
    ]
    if s.get("excluded"):
        lines.append("excluded (double-signed): " + ", ".join(s["excluded"]))
    for p in s.get("governance", {}).get("pending", []):
        waiting = ", ".join(p["waiting_for"]) or "nobody"
        lines.append(f"proposal {p['id'][:16]} {p['kind']} by {p['proposer']}: waiting for {waiting}")
    if s.get("anchoring"):
        lines.append(f"anchoring: {s['anchoring'].get('summary', s['anchoring'])}")
    for alert in s["alerts"]:
        lines.append(f"ALERT {alert['kind']}: {alert['message']}")
    ctx.emit(s, "\n".join(lines))


@click.group()
def blocks() -> None:
    """List and show blocks of the best chain."""


@blocks.command("list")
@click.option("--from", "start", type=HeightType(), default=None, help="First height (default: the last 20).")
@click.option("--to", "end", type=HeightType(), default=None, help="Last height (default: the tip).")
@json_option
@pass_ctx
def blocks_list(ctx: Ctx, start: int | None, end: int | None, as_json: bool) -> None:
    """One line per block: height, hash, proposer, transactions, status, signers.

    \b
    Example:
      peerdb -c configs/firm-a.toml blocks list --from 100 --to 120
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get("/v1/blocks", **{"from": start, "to": end})
    lines = [f"{b['height']:>8}  {b['hash'][:16]}  {b['proposer']:<12} {b['tx_count']:>6} txs  "
             f"{b['status']:<16} {','.join(b['signers'])}{'  anchored' if b['anchored'] else ''}"
             for b in answer["blocks"]]
    ctx.emit(answer, "\n".join(lines) or "(no blocks yet)")


@blocks.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def blocks_show(ctx: Ctx, ref: str, as_json: bool) -> None:
    """Header, transactions, member-by-member signatures, objections, status and anchor of a block.

    \b
    Example:
      peerdb -c configs/firm-a.toml blocks show 42
    """
    _json_flag(ctx, as_json)
    b = ctx.client.get(f"/v1/blocks/{ref}")
    lines = [f"block {b['height']} {b['hash']}", f"  proposer {b['proposer']} round {b['round']} time_ms {b['time_ms']}",
             f"  prev {b['prev']}", f"  status {b['status']}{' (anchored)' if b['anchored'] else ''}",
             "  signatures:"]
    for s in b["signatures"]:
        mark = "signed" if s["signed"] else "-"
        lines.append(f"    {s['member']:<14} {mark}{'  (excluded: double-signed)' if s['excluded'] else ''}")
    for o in b["objections"]:
        lines.append(f"  objection by {o['member']}: {o['reason']}")
    lines.append(f"  transactions ({b['tx_count']}):")
    for tx in b["txs"][:50]:
        for op in tx["ops"]:
            lines.append(f"    {tx['txid'][:12]} {tx['member']:<10} {op['op']:<6} {op['namespace']}/{op['key']}"
                         f" = {_block_value(op)}")
    if len(b["txs"]) > 50:
        lines.append(f"    ... {len(b['txs']) - 50} more (use --json)")
    ctx.emit(b, "\n".join(lines))


@click.group()
def evidence() -> None:
    """Double-sign evidence this node holds."""


@evidence.command("list")
@json_option
@pass_ctx
def evidence_list(ctx: Ctx, as_json: bool) -> None:
    """Every member proven to have signed two blocks at one height.

    \b
    Example:
      peerdb -c configs/firm-a.toml evidence list
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get("/v1/evidence")
    lines = [f"{e['id'][:16]}  {e['member']} at height {e['height']}: {e['block_a'][:16]} vs {e['block_b'][:16]}"
             for e in answer["evidence"]]
    ctx.emit(answer, "\n".join(lines) or "(no evidence: nobody double-signed)")


@evidence.command("show")
@click.argument("evidence_id")
@json_option
@pass_ctx
def evidence_show(ctx: Ctx, evidence_id: str, as_json: bool) -> None:
    """One piece of evidence, with its encoding (anyone can re-check it).

    \b
    Example:
      peerdb -c configs/firm-a.toml evidence show 3fa1c2
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get("/v1/evidence")
    for e in answer["evidence"]:
        if e["id"].startswith(evidence_id.lower()):
            ctx.emit(e, "\n".join(f"{k}: {v}" for k, v in e.items()))
            return
    raise CliError(f"no evidence with id {evidence_id}", exitcodes.ERROR)


@click.group()
def anchors() -> None:
    """Bitcoin anchors of this node's chain."""


@anchors.command("list")
@json_option
@pass_ctx
def anchors_list(ctx: Ctx, as_json: bool) -> None:
    """Anchoring state: anchored height, pending and confirmed anchor transactions.

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors list
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get("/v1/anchors")
    ctx.emit(answer, json.dumps(answer, indent=2))


@anchors.command("show")
@click.argument("ref")
@json_option
@pass_ctx
def anchors_show(ctx: Ctx, ref: str, as_json: bool) -> None:
    """The anchor of one block (height or hash): Bitcoin transaction, height, depth, proof.

    \b
    Example:
      peerdb -c configs/firm-a.toml anchors show 42
    """
    _json_flag(ctx, as_json)
    answer = ctx.client.get(f"/v1/anchors/{ref}")
    ctx.emit(answer, json.dumps(answer, indent=2))


@click.command()
@click.option("--members", type=click.IntRange(1, 26), default=4, show_default=True, help="Member firms to start.")
@click.option("--txs", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
              help="Transactions in the workload.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where to put keys, configs, data, logs and the audit bundle (default: a new temp dir).")
@click.option("--keep-running", is_flag=True, help="Leave the consortium running until Ctrl-C.")
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

    def wait_forever() -> None:
        import time
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping ...")
    code = run_demo(members, txs, workdir, keep_running, echo=click.echo, wait_forever=wait_forever)
    sys.exit(code)


for command in (demo, keygen, consortium, node, put, delete, get, history, propose, status, blocks, evidence, anchors):
    main.add_command(command)

from .audit import audit  # noqa: E402  (registered like the commands above; defined in its own module)
from .governance import governance  # noqa: E402
main.add_command(audit)
main.add_command(governance)


def run() -> None:  # pragma: no cover - console entry point alias
    main()
