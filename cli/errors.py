"""How a failure reaches the person at the terminal: one line on stderr and a documented exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def config_problems(*also: type[Exception]) -> Iterator[None]:
    """Report a ``ConfigError`` raised in the block (and errors of the kinds in ``also``) as exit 5,
    with the error's own text: it names the file and says what to fix."""
    kinds: tuple[type[Exception], ...] = (ConfigError, *also)
    try:
        yield
    except kinds as exc:
        raise CliError(str(exc), exitcodes.CONFIG) from None
