"""A small HTTP client for the node API, translating failures into CLI errors with exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
import httpx

from peerdb.core.errors import ConfigError

from . import exitcodes


class CliError(click.ClickException):
    """An error for a person: what went wrong and what to do next, with a documented exit code."""

    def __init__(self, message: str, code: int = exitcodes.ERROR) -> None:
        super().__init__(message)
        self.code = code
        vars(self)["exit_code"] = code  # click reads exit_code to choose the process exit status


@dataclass
class ApiClient:
    url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def from_options(cls, api: str | None, token: str | None, config: str | None) -> "ApiClient":
        if config:
            from peerdb.node.config import load_node_config
            try:
                cfg = load_node_config(config)
            except ConfigError as exc:
                raise CliError(str(exc), exitcodes.CONFIG) from None
            api = api or cfg.api_listen
            token = token or cfg.api_token
        if not api:
            raise CliError("no node to talk to: pass --config NODE.toml, or --api HOST:PORT with --token "
                           "(or set PEERDB_CONFIG / PEERDB_API and PEERDB_TOKEN)", exitcodes.USAGE)
        if not token:
            raise CliError("no API token: pass --token or --config NODE.toml (or set PEERDB_TOKEN)", exitcodes.USAGE)
        if not api.startswith("http"):
            api = f"http://{api}"
        return cls(api.rstrip("/"), token)

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        try:
            response = httpx.request(method, self.url + path, json=json, params=params,
                                     headers={"Authorization": f"Bearer {self.token}"},
                                     timeout=timeout or self.timeout)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the node at {self.url} ({exc.__class__.__name__}: {exc}); "
                           f"is `peerdb node run` running with this API address?", exitcodes.UNREACHABLE) from None
        try:
            body = response.json()
        except ValueError:
            raise CliError(f"the node answered {response.status_code} with a body that is not JSON") from None
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message", response.text)
            code = exitcodes.REJECTED
            if response.status_code == 401:
                message += " (check the token)"
                code = exitcodes.CONFIG
            raise CliError(f"node refused: {message}", code)
        if not isinstance(body, dict):
            raise CliError("the node answered with an unexpected JSON shape")
        return body

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.request("POST", path, json=body, timeout=timeout)

