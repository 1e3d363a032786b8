"""The node config: one firm's local settings (the consortium file is shared by all firms).

Paths in the file are relative to the file itself, so a config directory can be moved whole.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..consortium_file import load_consortium
from ..core.consortium import Consortium, check_name, parse_address
from ..core.errors import ConfigError
from ..core.keys import SigningKey
from ..keyfile import read_key
from ..net.config import IDLE_TIMEOUT, PING_INTERVAL, NetConfig
from .mempool import DEFAULT_MEMPOOL_TXS

DEFAULT_IDLE_BLOCK_S = 60
"""An idle consortium stores one empty block a minute (1,440 a day, about 2 MB) instead of one per
heartbeat (86,400 a day at the default 1 s, about 130 MB): proposers still take their turns the
moment a transaction arrives, and a peer's liveness shows in its connection and status gossip."""
MAX_IDLE_BLOCK_S = 600
"""At most ten minutes: the round counter of an idle height grows by one per turn timeout, and
the idle block keeps it small (MAX_ROUND in peerdb/core/limits.py)."""
IDLE_TIMEOUT_RANGE_S = (1.0, 600.0)
"""``[net] idle_timeout_s`` bounds: at least a second (pings go out four times per timeout), at most
ten minutes (a silent partition must still be reported)."""
DEFAULT_API_LISTEN = "127.0.0.1:0"
"""Loopback, any free port (the node logs the one it got): the API is reachable only from this
machine unless the operator says otherwise."""


@dataclass(frozen=True)
class BitcoinConfig:
    rpc_url: str
    confirmations: int | None = None
    """Overrides the consortium's anchor_confirmations for this node's own anchoring only."""
    fee_budget_sat: int = 20_000
    """Most this node pays for one anchor transaction; a costlier anchor fails with that reason."""
    check_pow: bool = False
    """Check proof of work on anchor headers (true for Bitcoin networks; regtest on litecoind: false)."""


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    member: str
    consortium_file: Path
    key_file: Path
    extra_key_files: tuple[Path, ...]
    """Member keys held besides ``key_file``: the next key of a rotation that is being voted
    on, or a previous key (still needed to open private values sealed to it)."""
    joining: bool
    """This member is not in the consortium file: it was (or is being) admitted by votes."""
    data_dir: Path
    listen: str | None
    api_listen: str
    api_token: str
    api_audit_token: str | None
    """The auditor's credential: the only one that exports the books (``GET /v1/audit/bundle``),
    and all it can do. None: audit export is off on this node."""
    client_key_file: Path | None
    bitcoin: BitcoinConfig | None
    alert_webhook: str | None
    alert_command: str | None
    mempool_max_txs: int
    sync: bool
    log_level: str
    idle_block_s: int = 60
    """With nothing to propose, an empty block only after this many seconds without a block
    (0: every heartbeat). Liveness shows in the status gossip and connections meanwhile."""
    log_format: str = "text"
    """``text`` (one line per event) or ``json`` (one JSON object per line, the same fields)."""
    metrics_listen: str | None = None
    """``host:port`` of the Prometheus metrics and health endpoints (no token); None: off."""
    api_read_token: str | None = None
    """A second API token that may only read (GET): for the explorer page and dashboards."""
    net_idle_timeout_s: float = IDLE_TIMEOUT
    """``[net] idle_timeout_s``: seconds without a byte from a peer before it is declared gone
    (``peer_down``); the ping interval follows it (a quarter of it, at most the default's)."""

    def net_config(self) -> NetConfig:
        """The peer network's tunables this config sets (the rest are the defaults)."""
        idle = self.net_idle_timeout_s
        return NetConfig(idle_timeout=idle, ping_interval=min(PING_INTERVAL, idle / 4))

    def load_consortium(self) -> Consortium:
        consortium = load_consortium(self.consortium_file)
        founding = consortium.member(self.member) is not None
        if not founding and not self.joining:
            raise ConfigError(f"{self.path}: node.member {self.member!r} is not a member of consortium "
                              f"{consortium.name} ({', '.join(consortium.member_names)}); if it was admitted "
                              "later by an add_member proposal, set node.joining = true")
        if founding and self.joining:
            raise ConfigError(f"{self.path}: node.joining is true, but {self.member!r} is a founding member "
                              f"in {self.consortium_file}; remove node.joining")
        return consortium

    def load_keys(self, consortium: Consortium) -> list[SigningKey]:
        """The member keys this node holds, ``key_file`` first. Which one signs at a height is
        decided by the chain (the key in force there); the node checks at start-up that it
        holds a key its member ever had (see :func:`peerdb.node.daemon.check_keys`)."""
        keys = [read_key(self.key_file)[0]]
        for path in self.extra_key_files:
            key = read_key(path)[0]
            if any(k.public == key.public for k in keys):
                raise ConfigError(f"{path}: the same key is configured twice")
            keys.append(key)
        member = consortium.member(self.member)
        if member is not None and not self.extra_key_files and member.key != keys[0].public:
            # The common case, checked before anything starts: no rotation, so the one key must
            # be the founding one.
            raise ConfigError(f"{self.key_file}: this key is not {self.member}'s member key in the consortium "
                              "file (after a key rotation, list the keys in node.extra_key_files)")
        return keys

    def load_key(self, consortium: Consortium) -> SigningKey:
        """The first configured member key (tools that sign as the member, e.g. votes)."""
        return self.load_keys(consortium)[0]

    def load_client_key(self) -> SigningKey | None:
        if self.client_key_file is None:
            return None
        return read_key(self.client_key_file)[0]

    def listen_address(self, consortium: Consortium) -> tuple[str, int]:
        if self.listen is not None:
            return parse_address(self.listen, "node.listen")
        member = consortium.member(self.member)
        assert member is not None  # load_consortium checked membership
        return member.host_port


def _get(table: dict[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key}: must be a {kind.__name__}, got {value!r}")
    return value


MIN_TOKEN_LEN = 16
"""Shortest bearer token accepted: 16 characters of a random token are beyond guessing."""


def _token(api: dict[str, Any], name: str, base: Path, path: Path) -> str | None:
    """``api.<name>`` or the contents of ``api.<name>_file`` (None if neither is given)."""
    token: str | None = _get(api, name, str, "api", None)
    token_file = _get(api, f"{name}_file", str, "api", None)
    if token is None and token_file is not None:
        try:
            token = (base / token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: api.{name}_file: {exc}") from None
    if token is not None and len(token) < MIN_TOKEN_LEN:
        raise ConfigError(f"{path}: api.{name} (or api.{name}_file) must give a bearer token of at least "
                          f"{MIN_TOKEN_LEN} characters")
    return token


def load_node_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: node config not found (create configs with `peerdb consortium init`)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read node config ({exc})") from None
    base = path.parent
    allowed = {"node", "api", "bitcoin", "alerts", "metrics", "log", "net"}
    if set(data) - allowed:
        raise ConfigError(f"{path}: unknown section(s) {sorted(set(data) - allowed)}")
    node = data.get("node")
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: [node] section missing")
    known = {"member", "consortium", "key_file", "extra_key_files", "joining", "data_dir", "listen",
             "client_key_file", "mempool_max_txs", "sync", "log_level", "idle_block_s"}
    if set(node) - known:
        raise ConfigError(f"{path}: [node] unknown field(s) {sorted(set(node) - known)}")
    member = check_name(_get(node, "member", str, "node"), "node.member")
    listen = _get(node, "listen", str, "node", None)
    if listen is not None:
        parse_address(listen, "node.listen")
    api = data.get("api", {})
    if not isinstance(api, dict) or set(api) - {"listen", "token", "token_file", "read_token", "read_token_file",
                                                "audit_token", "audit_token_file"}:
        raise ConfigError(f"{path}: [api] must have only listen, token or token_file, read_token or read_token_file, "
                          "audit_token or audit_token_file")
    api_listen = _get(api, "listen", str, "api", DEFAULT_API_LISTEN)
    parse_address(api_listen, "api.listen", any_port=True)
    token = _token(api, "token", base, path)
    if token is None:
        raise ConfigError(f"{path}: api.token (or api.token_file) must give a bearer token of at least "
                          f"{MIN_TOKEN_LEN} characters")
    audit_token = _token(api, "audit_token", base, path)
    if audit_token is not None and audit_token == token:
        raise ConfigError(f"{path}: api.audit_token must differ from api.token: it is the auditor's credential, "
                          "and an application must not be able to export the books")
    read_token = _token(api, "read_token", base, path)
    if read_token is not None and read_token in (token, audit_token):
        raise ConfigError(f"{path}: api.read_token (or api.read_token_file) must differ from api.token and "
                          "api.audit_token")
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or set(metrics) - {"listen"}:
        raise ConfigError(f"{path}: [metrics] must have only listen")
    metrics_listen = _get(metrics, "listen", str, "metrics", None)
    if metrics_listen is not None:
        parse_address(metrics_listen, "metrics.listen")
    log_table = data.get("log", {})
    if not isinstance(log_table, dict) or set(log_table) - {"format"}:
        raise ConfigError(f"{path}: [log] must have only format")
    log_format = _get(log_table, "format", str, "log", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"{path}: log.format must be \"text\" or \"json\", got {log_format!r}")
    net = data.get("net", {})
    if not isinstance(net, dict) or set(net) - {"idle_timeout_s"}:
        raise ConfigError(f"{path}: [net] must have only idle_timeout_s")
    idle_timeout = net.get("idle_timeout_s", IDLE_TIMEOUT)
    low, high = IDLE_TIMEOUT_RANGE_S
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) or not low <= idle_timeout <= high:
        raise ConfigError(f"{path}: net.idle_timeout_s must be a number of seconds in {low:g}..{high:g}")
    bitcoin = None
    btc = data.get("bitcoin")
    if btc is not None:
        if not isinstance(btc, dict) or set(btc) - {"rpc_url", "confirmations", "fee_budget_sat", "check_pow"}:
            raise ConfigError(f"{path}: [bitcoin] has unknown fields")
        bitcoin = BitcoinConfig(
            rpc_url=_get(btc, "rpc_url", str, "bitcoin"),
            confirmations=_get(btc, "confirmations", int, "bitcoin", None),
            fee_budget_sat=_get(btc, "fee_budget_sat", int, "bitcoin", 20_000),
            check_pow=_get(btc, "check_pow", bool, "bitcoin", False),
        )
    alerts = data.get("alerts", {})
    if not isinstance(alerts, dict) or set(alerts) - {"webhook", "command"}:
        raise ConfigError(f"{path}: [alerts] must have only webhook or command")
    client_key = _get(node, "client_key_file", str, "node", None)
    extra_keys = _get(node, "extra_key_files", list, "node", [])
    if not all(isinstance(k, str) and k for k in extra_keys):
        raise ConfigError(f"{path}: node.extra_key_files must be a list of key file paths")
    idle_block_s = _get(node, "idle_block_s", int, "node", DEFAULT_IDLE_BLOCK_S)
    if not 0 <= idle_block_s <= MAX_IDLE_BLOCK_S:
        raise ConfigError(f"{path}: node.idle_block_s must be in 0..{MAX_IDLE_BLOCK_S} seconds")
    level = _get(node, "log_level", str, "node", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{path}: node.log_level must be DEBUG, INFO, WARNING or ERROR")
    return NodeConfig(
        path=path,
        member=member,
        consortium_file=base / _get(node, "consortium", str, "node"),
        key_file=base / _get(node, "key_file", str, "node"),
        extra_key_files=tuple(base / k for k in extra_keys),
        joining=_get(node, "joining", bool, "node", False),
        data_dir=base / _get(node, "data_dir", str, "node"),
        listen=listen,
        api_listen=api_listen,
        api_token=token,
        api_audit_token=audit_token,
        client_key_file=base / client_key if client_key else None,
        bitcoin=bitcoin,
        alert_webhook=_get(alerts, "webhook", str, "alerts", None),
        alert_command=_get(alerts, "command", str, "alerts", None),
        mempool_max_txs=_get(node, "mempool_max_txs", int, "node", DEFAULT_MEMPOOL_TXS),
        sync=_get(node, "sync", bool, "node", True),
        log_level=level,
        idle_block_s=idle_block_s,
        log_format=log_format,
        metrics_listen=metrics_listen,
        api_read_token=read_token,
        net_idle_timeout_s=float(idle_timeout),
    )
