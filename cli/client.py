"""The CLI's client of the node API: :class:`peerdb.client.NodeClient`, its failures turned into
CLI errors with exit codes."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx

from peerdb.client import NodeClient, NodeError, NodeRefused, NodeUnreachable, refused

from . import exitcodes
from .errors import CliError, config_problems


def refusal(response: httpx.Response) -> CliError:
    """The error for a node's 4xx/5xx answer: its own message (from the API's error body, else the
    raw text); a 401 is a config problem (the token), anything else a refusal (exit 6)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return refusal_error(refused("the node", response.status_code, body, response.text))


def refusal_error(exc: NodeRefused) -> CliError:
    if exc.status == 401:
        return CliError(f"node refused: {exc.reason} (check the token)", exitcodes.CONFIG, exc.code)
    return CliError(f"node refused: {exc.reason}", exitcodes.REJECTED, exc.code)


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
        """One request (a command makes one or two: no connection is kept)."""
        try:
            with NodeClient(self.url, self.token, self.timeout) as node:
                return node.request(method, path, json=json, params=params, timeout=timeout)
        except NodeUnreachable as exc:
            raise CliError(f"{exc}; is `peerdb node run` running with this API address?",
                           exitcodes.UNREACHABLE) from None
        except NodeRefused as exc:
            raise refusal_error(exc) from None
        except NodeError as exc:
            raise CliError(str(exc)) from None

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.request("POST", path, json=body, timeout=timeout)

    def stream(self, path: str, *, read_timeout: float) -> AbstractContextManager[httpx.Response]:
        """A streamed GET (the caller reads the body in chunks); ``read_timeout`` bounds the pause
        between two chunks, the client's own timeout everything else."""
        return httpx.stream("GET", self.url + path, headers=self.headers,
                            timeout=httpx.Timeout(self.timeout, read=read_timeout))
