"""One log line per network event, as ``event key=value ...`` on the ``peerdb.net`` logger.

Values a peer controls (reasons in its error frames, its claimed name) are ``repr``-quoted when
they are not plain tokens, so a peer cannot forge extra log lines with embedded newlines. The
same fields ride along as ``record.net`` (a dict) for handlers that emit JSON.
"""

from __future__ import annotations

import logging
import re
import ssl

import trio

logger = logging.getLogger("peerdb.net")

_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+-]{1,200}")


def _format(value: object) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else repr(text)


def log_event(level: int, event: str, **fields: object) -> None:
    if not logger.isEnabledFor(level):
        return
    line = " ".join([event] + [f"{key}={_format(value)}" for key, value in fields.items() if value is not None])
    logger.log(level, line, extra={"net": {"event": event, **fields}})


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed or lost connection; OpenSSL's reason hides in ``__cause__``."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, trio.EndOfChannel):
        return "closed by peer"
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"tls: certificate verify failed ({cause.verify_message})"
    if isinstance(cause, ssl.SSLError):
        return f"tls: {cause.reason or cause}"
    if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)) and cause is not None:
        return f"connection lost: {type(cause).__name__}: {cause}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
