"""Custom click parameter types that fail with a message saying what was expected."""

from __future__ import annotations

from typing import Any

import click

VIEW_NAMES = ("tentative", "majority", "unanimous_signed", "unanimous")


class ViewType(click.ParamType[str]):
    name = "view"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).replace("-", "_")
        if text not in VIEW_NAMES:
            self.fail(f"{value!r} is not a view; use one of {', '.join(VIEW_NAMES)}", param, ctx)
        return text


class HeightType(click.ParamType[int]):
    name = "height"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and value >= 0:
            return value
        text = str(value)
        if not text.isdigit():
            self.fail(f"{value!r} is not a block height (a non-negative integer)", param, ctx)
        return int(text)


class AddressType(click.ParamType[str]):
    """``HOST:PORT``; ``allow_any_port``: port 0 too (any free port, for an address this
    machine binds)."""

    name = "host:port"

    def __init__(self, allow_any_port: bool = False) -> None:
        self.low = 0 if allow_any_port else 1

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not self.low <= int(port) < 65536:
            self.fail(f"{value!r} is not HOST:PORT with a port in {self.low}..65535", param, ctx)
        return text


VIEW = ViewType()
