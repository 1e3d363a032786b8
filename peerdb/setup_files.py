"""Writing a whole consortium in one directory: every member's keys, the shared consortium file
and one node config per member — a pilot on one machine (a real consortium is founded across
firms, each keeping its own keys: :mod:`peerdb.founding`).

Used by ``peerdb consortium init --dir``, the demo, the benchmark and the tests, so that every
one of them starts from files an operator could have written by hand.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w

from .core.consortium import EVERYONE, Consortium, Member, NamespaceRule, check_name, founding_params
from .core.errors import ConfigError
from .core.keys import SigningKey
from .founding import write_consortium_file, write_private
from .keyfile import write_key
from .net.certs import member_certificate


def init_consortium(directory: Path, name: str, member_names: list[str], *, host: str = "127.0.0.1",
                    base_port: int = 7100, api_base_port: int = 8100, bitcoin_rpc: str | None = None,
                    params: dict[str, int] | None = None, overwrite: bool = False,
                    genesis_time_ms: int | None = None, sync: bool = True, ports: list[int] | None = None,
                    api_ports: list[int] | None = None, namespaces: Sequence[NamespaceRule] = (),
                    open_namespaces: bool = True) -> dict[str, Any]:
    """Write everything a consortium of ``member_names`` needs; ports default to base + index."""
    check_name(name, "consortium name")
    for member in member_names:
        check_name(member, "member name")
    if len(set(member_names)) != len(member_names):
        raise ConfigError(f"member names must differ: {member_names}")
    agreed = founding_params(params)  # validate everything before the first file is written
    for rule in namespaces:
        for who in rule.writers + rule.readers:
            if who != EVERYONE and who not in member_names:
                raise ConfigError(f"namespace {rule.name}: unknown member {who!r}")
    directory.mkdir(parents=True, exist_ok=True)
    consortium_file = directory / "consortium.toml"
    if consortium_file.exists() and not overwrite:
        raise ConfigError(f"{consortium_file}: already exists (use --force to overwrite, or another --dir)")
    ports = ports or [base_port + i for i in range(len(member_names))]
    api_ports = api_ports or [api_base_port + i for i in range(len(member_names))]
    if len(ports) != len(member_names) or len(api_ports) != len(member_names):
        raise ConfigError("one peer port and one API port per member are needed")
    members = []
    keys: dict[str, tuple[SigningKey, SigningKey]] = {}
    for i, member in enumerate(member_names):
        member_key, client_key = SigningKey.generate(), SigningKey.generate()
        keys[member] = (member_key, client_key)
        write_key(directory / "keys" / f"{member}.key", member_key, "member", overwrite=overwrite)
        write_key(directory / "keys" / f"{member}-client.key", client_key, "client", overwrite=overwrite)
        members.append(Member(member, member_key.public, f"{host}:{ports[i]}", (client_key.public,),
                              cert=member_certificate(member_key.seed, member),
                              api=f"{host}:{api_ports[i]}"))
    consortium = Consortium(name, genesis_time_ms if genesis_time_ms is not None else int(time.time() * 1000),
                            tuple(members), agreed, tuple(namespaces), open_namespaces)
    write_consortium_file(consortium_file, consortium, overwrite=True)
    configs = {}
    for i, member in enumerate(member_names):
        cfg: dict[str, Any] = {
            "node": {"member": member, "consortium": "consortium.toml", "key_file": f"keys/{member}.key",
                     "client_key_file": f"keys/{member}-client.key", "data_dir": f"data/{member}",
                     "sync": sync},
            "api": {"listen": f"{host}:{api_ports[i]}", "token": secrets.token_urlsafe(24),
                    "audit_token": secrets.token_urlsafe(24)},
        }
        if bitcoin_rpc:
            cfg["bitcoin"] = {"rpc_url": bitcoin_rpc}
        path = directory / f"{member}.toml"
        write_private(path, f"# PeerDB node config for {member}. Keep it private: it holds the API tokens.\n"
                      + tomli_w.dumps(cfg))
        configs[member] = str(path)
    from .core.model import consortium_id
    return {"consortium_file": str(consortium_file), "consortium_id": consortium_id(consortium).hex(),
            "configs": configs,
            "members": member_names}
