"""What every ``peerdb`` command shares: the context object, its pass decorator, the one ``--json``
option, the ``--wait``/``--timeout`` pair, and how results are printed.

The command modules import from here and never from ``cli/main.py``, which imports them to
register their commands: the dependencies run one way, so there is no import cycle to dodge.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from . import exitcodes
from .client import ApiClient
from .params import VIEW

F = TypeVar("F", bound=Callable[..., Any])

WAIT_ANSWER_MARGIN_S = 10.0
"""How much longer than its ``--timeout`` the HTTP request of a ``--wait`` write may take: the node
answers when the write reached the view or when the timeout passed, and the margin lets that
answer arrive from a busy node instead of the client giving up first."""


@dataclass
class Ctx:
    """The main group's options, shared by every command: which node to talk to and whether to
    print JSON. The API client is made on first use, so that commands which need no node
    (``keygen``, ``audit verify``) never fail for want of one."""

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

    @property
    def audit_client(self) -> ApiClient:
        """A client with the auditor token: ``--token``, or ``api.audit_token`` of ``--config``
        (the application token cannot export the books)."""
        return ApiClient.from_options(self.api, self.token, self.config, audit=True)

    def emit(self, data: Any, text: str | None = None) -> None:
        """Print ``data`` as JSON (pretty, keys sorted) with ``--json`` or when there is no text for
        people, else ``text``."""
        if self.as_json or text is None:
            click.echo(json.dumps(data, indent=2, sort_keys=True))
        else:
            click.echo(text)

    def post_waiting(self, path: str, body: dict[str, Any], wait: str | None, timeout: float) -> dict[str, Any]:
        """POST a write; with ``wait`` the node answers once the write is in that view or
        ``timeout`` seconds passed (its answer says which)."""
        if wait:
            body = {**body, "wait": wait, "timeout_s": timeout}
        return self.client.post(path, body, timeout=timeout + WAIT_ANSWER_MARGIN_S)

    def emit_waited(self, answer: dict[str, Any], text: str) -> None:
        """Print the answer of :meth:`post_waiting`, saying whether the awaited view was reached;
        exit 7 when it was not (the write is accepted and still pending)."""
        wait = answer.get("wait")
        if wait:
            text += f"; {wait['view']} {'reached' if wait['reached'] else 'NOT reached yet (still pending)'}"
        self.emit(answer, text)
        if wait and not wait["reached"]:
            sys.exit(exitcodes.TIMEOUT)


pass_ctx = click.make_pass_decorator(Ctx, ensure=True)


def _json_requested(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Ctx).as_json = True


json_option = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_json_requested,
                           help="Print machine-readable JSON.")
"""``--json``, the same option on the main group and on every command that prints data: given in
either place (``peerdb --json status``, ``peerdb status --json``), it sets ``Ctx.as_json``."""


def wait_options(what: str) -> Callable[[F], F]:
    """``--wait VIEW`` and ``--timeout SECONDS`` for a command that writes ``what`` (a write, a
    proposal, a vote) and can wait until it is in a view; see :meth:`Ctx.post_waiting`."""
    wait = click.option("--wait", type=VIEW, default=None,
                        help=f"Return only once the {what} is in this view "
                             "(tentative|majority|unanimous_signed|unanimous).")
    timeout = click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
                           help="Seconds to wait with --wait.")

    def decorate(f: F) -> F:
        return wait(timeout(f))
    return decorate
