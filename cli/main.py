"""``peerdb``: the main group, its global options, and every command registered explicitly.

The commands live in modules named for who uses them (operators, data, inspection, audit,
governance); they share the context object of cli/context.py. Exit codes: 0 ok, 1 error,
2 usage, 3 node unreachable, 4 verification failed, 5 config or key file problem, 6 refused by
the node, 7 --wait timed out, 8 restored data directory, 9 member removed (see cli/exitcodes.py).
"""

from __future__ import annotations

from typing import Any

import click

from .audit import anchors_verify, audit
from .context import Ctx, json_option, pass_ctx
from .errors import JsonError
from .data import delete, get, history, load, propose, put
from .founding import member
from .governance import governance
from .inspection import anchors, blocks, evidence, forks, objections, status, tx_cmd
from .operators import consortium, demo, keygen, node
from .params import AddressType

anchors.add_command(anchors_verify)  # the auditor's check, kept with the other audit code

COMMANDS = (keygen, member, consortium, node, demo, put, delete, get, history, propose, load, status, blocks, evidence,
            anchors, forks, objections, tx_cmd, audit, governance)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class PeerdbGroup(click.Group):
    """The main group: a failure of any command run with ``--json`` is reported as JSON on
    stderr (:class:`~.errors.JsonError`), with the same exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            options = ctx.find_object(Ctx)
            if options is not None and options.as_json and not isinstance(exc, JsonError):
                raise JsonError(exc) from None
            raise


@click.group(cls=PeerdbGroup, context_settings=CONTEXT_SETTINGS, commands=COMMANDS)
@click.option("--config", "-c", envvar="PEERDB_CONFIG", type=click.Path(dir_okay=False),
              help="Node config file (gives the API address and token). Env: PEERDB_CONFIG.")
@click.option("--api", envvar="PEERDB_API", type=AddressType(), metavar="HOST:PORT",
              help="Node API address. Env: PEERDB_API.")
@click.option("--token", envvar="PEERDB_TOKEN", help="Node API bearer token. Env: PEERDB_TOKEN.")
@json_option
@click.version_option(package_name="peerdb")
@pass_ctx
def main(ctx: Ctx, config: str | None, api: str | None, token: str | None) -> None:
    """PeerDB: a peer database for consortia of competing firms.

    \b
    Founding:    peerdb member init | consortium init|show | node init
    Operators:   peerdb keygen | node run | status
    Data:        peerdb put | delete | get | history | propose | load
    Inspection:  peerdb blocks list|show | evidence list|show | anchors list|show
                 | forks | objections | tx TXID
    Auditors:    peerdb audit export|verify|diff | anchors verify
    Governance:  peerdb governance propose|vote|list|show
    Try it:      peerdb demo

    \b
    Exit codes: 0 ok, 1 error, 2 usage, 3 node unreachable, 4 verification failed,
    5 config/key problem, 6 refused by the node, 7 --wait timed out.
    node run: 8 restored data directory, 9 this member was removed.
    Shell completion: eval "$(_PEERDB_COMPLETE=bash_source peerdb)"  (zsh: zsh_source).
    """
    ctx.api, ctx.token, ctx.config = api, token, config
