"""The example systemd unit (examples/systemd/peerdb-node@.service) and the exit codes it
relies on: a start that can only fail again is not restarted in a loop."""

from __future__ import annotations

from pathlib import Path

from cli import exitcodes

UNIT = Path(__file__).resolve().parents[2] / "examples" / "systemd" / "peerdb-node@.service"


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (a key may repeat), comments left out."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_restarts_on_failure_but_not_what_would_only_fail_again() -> None:
    settings = unit_settings()
    assert settings["Restart"] == ["on-failure"]
    prevented = {int(code) for value in settings["RestartPreventExitStatus"] for code in value.split()}
    assert {exitcodes.CONFIG, exitcodes.RESTORED, exitcodes.REMOVED} <= prevented
    assert exitcodes.ERROR not in prevented  # a crash is restarted
