"""How a failure reaches the person at the terminal: one line on stderr and a documented exit code;
under ``--json``, one JSON object on stderr, for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from peerdb.core.errors import ConfigError

from . import exitcodes


class CliError(click.ClickException):
    """An error for a person: what went wrong and what to do next, with a documented exit code;
    ``api_code`` is the node's error code when the node refused (``forbidden``, ...)."""

    def __init__(self, message: str, code: int = exitcodes.ERROR, api_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.api_code = api_code
        vars(self)["exit_code"] = code  # click reads exit_code to choose the process exit status


EXIT_CODE_NAMES = {exitcodes.ERROR: "error", exitcodes.USAGE: "usage", exitcodes.UNREACHABLE: "unreachable",
                   exitcodes.VERIFY_FAILED: "verification_failed", exitcodes.CONFIG: "config",
                   exitcodes.REJECTED: "rejected", exitcodes.TIMEOUT: "timeout",
                   exitcodes.RESTORED: "restored_data_dir", exitcodes.REMOVED: "member_removed"}
"""The ``code`` of a JSON error without a more precise one from the node (``forbidden``, ...)."""


class JsonError(click.ClickException):
    """A failure under ``--json``: ``{"error": {"code", "exit_code", "message"}}`` on stderr, so
    a script reads why as it reads every answer; the exit code is the same as without
    ``--json``."""

    def __init__(self, original: click.ClickException) -> None:
        super().__init__(original.format_message())
        vars(self)["exit_code"] = original.exit_code  # click reads exit_code for the process exit status
        api_code = original.api_code if isinstance(original, CliError) else None
        self.error: dict[str, Any] = {"code": api_code or EXIT_CODE_NAMES.get(self.exit_code, "error"),
                                      "exit_code": self.exit_code, "message": self.message}

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(json.dumps({"error": self.error}), err=True)


@contextmanager
def config_problems(*also: type[Exception]) -> Iterator[None]:
    """Report a ``ConfigError`` raised in the block (and errors of the kinds in ``also``) as exit 5,
    with the error's own text: it names the file and says what to fix."""
    kinds: tuple[type[Exception], ...] = (ConfigError, *also)
    try:
        yield
    except kinds as exc:
        raise CliError(str(exc), exitcodes.CONFIG) from None
