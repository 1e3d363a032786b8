"""A small HTTP client for the node API, translating failures into CLI errors with exit codes."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx

from . import exitcodes
from .errors import CliError, config_problems


def refusal(response: httpx.Response) -> CliError:
    """The error for a node's 4xx/5xx answer: its own message (from the API's error body, else the
    raw text); a 401 is a config problem (the token), anything else a refusal (exit 6)."""
    code: str | None = None
    try:
        error = response.json().get("error", {})
        message = str(error.get("message", response.text))
        code = str(error["code"]) if "code" in error else None
    except (ValueError, AttributeError):
        message = response.text
    if response.status_code == 401:
        return CliError(f"node refused: {message} (check the token)", exitcodes.CONFIG, code)
    return CliError(f"node refused: {message}", exitcodes.REJECTED, code)


@dataclass
class ApiClient:
    url: str
    token: str
    timeout: float = 30.0

    @classmethod
    def from_options(cls, api: str | None, token: str | None, config: str | None, *,
                     audit: bool = False) -> "ApiClient":
        """``audit``: the token is the auditor's (``api.audit_token`` of the config, unless
        ``token`` is given)."""
        if config:
            from peerdb.node.config import load_node_config
            with config_problems():
                cfg = load_node_config(config)
            if audit and token is None:
                if cfg.api_audit_token is None:
                    raise CliError(f"{config}: no api.audit_token: audit export takes the auditor token, not the "
                                   "application token; set api.audit_token in the node config (and restart "
                                   "the node), or pass --token AUDIT_TOKEN", exitcodes.CONFIG)
                token = cfg.api_audit_token
            if api is None and cfg.api_listen.endswith(":0"):
                raise CliError(f"{config}: api.listen is {cfg.api_listen} (any free port): the node logs the port "
                               "it got ('client API listening on ...'); pass --api HOST:PORT, or set a fixed port "
                               "in api.listen", exitcodes.CONFIG)
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

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        try:
            response = httpx.request(method, self.url + path, json=json, params=params, headers=self.headers,
                                     timeout=timeout or self.timeout)
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach the node at {self.url} ({exc.__class__.__name__}: {exc}); "
                           f"is `peerdb node run` running with this API address?", exitcodes.UNREACHABLE) from None
        try:
            body = response.json()
        except ValueError:
            raise CliError(f"the node answered {response.status_code} with a body that is not JSON") from None
        if response.status_code >= 400:
            raise refusal(response)
        if not isinstance(body, dict):
            raise CliError("the node answered with an unexpected JSON shape")
        return body

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.request("POST", path, json=body, timeout=timeout)

    def stream(self, path: str, *, read_timeout: float) -> AbstractContextManager[httpx.Response]:
        """A streamed GET (the caller reads the body in chunks); ``read_timeout`` bounds the pause
        between two chunks, the client's own timeout everything else."""
        return httpx.stream("GET", self.url + path, headers=self.headers,
                            timeout=httpx.Timeout(self.timeout, read=read_timeout))
