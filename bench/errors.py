"""The harness's own failures, kept apart from bugs so one system failing does not hide the others.

``run.py`` records a ``SystemSkipped`` under ``skipped`` and a ``BenchError`` under ``failed`` in the
JSON and goes on with the next system; any other exception is a bug and stops the run (after every
process it started has been stopped).
"""


class BenchError(Exception):
    """A measurement could not be made: a cluster did not come up, a load step timed out."""


class SystemSkipped(BenchError):
    """A system cannot be measured on this machine or in this mode (binary missing, not wired)."""


class SubmitError(Exception):
    """One write was refused or lost by the system under test: counted, not raised further."""
