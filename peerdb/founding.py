"""Founding a consortium across firms, each firm's keys staying on its own machine.

The procedure of docs/operations.md, one function per step:

1. each firm: :func:`init_member` writes its member key, its client key(s) and its **member
   card**, the public half: name, member key, TLS certificate (base64 DER, as the consortium
   file takes it), addresses and client keys;
2. the coordinator: :func:`consortium_from_cards` builds the consortium from the cards (their
   order is the turn order) and :func:`write_consortium_file` writes it;
3. each firm: compares the consortium id (``peerdb consortium show``) with the others over a
   channel it trusts, then :func:`init_node_config` writes its node config, checked against its
   own keys and the consortium file.

Nothing here talks to a network; everything a firm writes it checks the way the node will read
it, so a mistake is found on the machine that made it.
"""

from __future__ import annotations

import os
import secrets
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from .core.consortium import (
    EVERYONE,
    MEMBER_FIELDS,
    Consortium,
    Member,
    NamespaceRule,
    founding_params,
    check_name,
    consortium_to_toml_data,
    member_to_toml_data,
    parse_address,
    parse_member,
)
from .core.errors import ConfigError
from .core.keys import SigningKey
from .core.limits import MAX_NAMESPACE_LEN
from .core.model import consortium_id
from .keyfile import read_key, write_key
from .net.certs import check_member_certificate, member_certificate

CARD_VERSION = 1
"""``card`` in a member card: the format of the file, so a later format can be told apart."""

MAX_CLIENT_KEYS = 16
"""Client keys ``init_member`` writes at most: one per application that signs for the firm is
plenty, and more can be added later by an update_member vote."""

CONSORTIUM_FILE_HEADER = (
    "# PeerDB consortium file: the founding contract, identical for every member.\n"
    "# Its hash (without addresses and certs) is the consortium id; see docs/protocol.md.\n")


# --- 1. a firm's keys and member card -----------------------------------------------------------

@dataclass(frozen=True)
class MemberFiles:
    card: Path
    member_key_file: Path
    client_key_files: tuple[Path, ...]
    member: Member

    def to_json(self) -> dict[str, Any]:
        return {"card": str(self.card), "member": self.member.name, "public": self.member.key.hex(),
                "member_key_file": str(self.member_key_file),
                "client_key_files": [str(p) for p in self.client_key_files],
                "clients": [k.hex() for k in self.member.clients]}


def card_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.card"


def member_key_path(directory: Path, name: str) -> Path:
    return directory / "keys" / f"{name}.key"


def client_key_path(directory: Path, name: str, i: int = 0) -> Path:
    return directory / "keys" / (f"{name}-client.key" if i == 0 else f"{name}-client-{i + 1}.key")


def init_member(directory: Path, name: str, address: str, *, clients: int = 1, api: str | None = None,
                overwrite: bool = False) -> MemberFiles:
    """Write ``name``'s member key, ``clients`` client keys (under ``directory/keys``, mode 600)
    and its member card (``directory/NAME.card``). Every check runs before the first file is
    written."""
    check_name(name, "member name")
    parse_address(address, "address")
    if api is not None:
        parse_address(api, "api")
    if not 0 <= clients <= MAX_CLIENT_KEYS:
        raise ConfigError(f"clients: 0..{MAX_CLIENT_KEYS} client keys")
    card = card_path(directory, name)
    key_file = member_key_path(directory, name)
    client_files = tuple(client_key_path(directory, name, i) for i in range(clients))
    if not overwrite:
        for path in (card, key_file, *client_files):
            if path.exists():
                raise ConfigError(f"{path}: already exists (use --force to replace it, or another --dir)")
    key = SigningKey.generate()
    client_keys = [SigningKey.generate() for _ in client_files]
    member = Member(name, key.public, address, tuple(k.public for k in client_keys),
                    cert=member_certificate(key.seed, name), api=api)
    write_key(key_file, key, "member", overwrite=overwrite)
    for path, client in zip(client_files, client_keys):
        write_key(path, client, "client", overwrite=overwrite)
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(card_text(member))
    return MemberFiles(card, key_file, client_files, member)


def card_text(member: Member) -> str:
    return (f"# PeerDB member card of {member.name}: public. Send it to the consortium's coordinator,\n"
            "# who adds it to the consortium file with `peerdb consortium init --member-card`.\n"
            + tomli_w.dumps({"card": CARD_VERSION, "member": member_to_toml_data(member)}))


def read_card(path: str | Path) -> Member:
    """A member card, checked as the consortium file's member entry is, and its certificate
    against its key and name. Every problem is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: member card not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a member card ({exc})") from None
    if set(data) != {"card", "member"} or data["card"] != CARD_VERSION:
        raise ConfigError(f"{path}: not a member card (version {CARD_VERSION}: `card = {CARD_VERSION}` and a "
                          f"[member] table with {', '.join(MEMBER_FIELDS)}; `peerdb member init` writes one)")
    try:
        member = parse_member(data["member"], "[member]")
        if member.cert is None:
            raise ConfigError(f"member {member.name}.cert: missing (the node needs it to connect)")
        check_member_certificate(member.cert, member.key, member.name, field=f"member {member.name}.cert")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return member


# --- 2. the consortium file from the cards -------------------------------------------------------

def parse_namespace_spec(text: str) -> NamespaceRule:
    """``NAME[:writers=A,B][:readers=A,B][:private]`` (``*``: every member), e.g.
    ``deals:writers=*:readers=firm-a,firm-b:private``. Omitted writers or readers are ``*``."""
    name, *parts = text.split(":")
    check_name(name, "namespace name", MAX_NAMESPACE_LEN)
    lists: dict[str, tuple[str, ...]] = {}
    private = False
    for part in parts:
        role, sep, value = part.partition("=")
        if part == "private":
            private = True
        elif sep and role in ("writers", "readers") and role not in lists:
            names = tuple(n.strip() for n in value.split(",") if n.strip())
            if not names:
                raise ConfigError(f"namespace {name}: {role}= names no member (use * for every member)")
            lists[role] = names
        else:
            raise ConfigError(f"namespace {name}: {part!r} is not writers=..., readers=... or private "
                              "(NAME[:writers=A,B][:readers=A,B][:private])")
    return NamespaceRule(name, lists.get("writers", (EVERYONE,)), lists.get("readers", (EVERYONE,)), private)


def consortium_from_cards(name: str, cards: Sequence[Member], *, params: dict[str, int] | None = None,
                          namespaces: Sequence[NamespaceRule] = (), open_namespaces: bool = True,
                          genesis_time_ms: int | None = None) -> Consortium:
    """The consortium of the members on ``cards``, in that order (the turn order)."""
    check_name(name, "consortium name")
    return Consortium(name, int(time.time() * 1000) if genesis_time_ms is None else genesis_time_ms,
                      tuple(cards), founding_params(params), tuple(namespaces), open_namespaces)


def write_consortium_file(path: Path, consortium: Consortium, *, overwrite: bool = False) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists (use --force to overwrite, or another --out)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONSORTIUM_FILE_HEADER + tomli_w.dumps(consortium_to_toml_data(consortium)))


def describe(consortium: Consortium) -> dict[str, Any]:
    """What ``peerdb consortium show`` prints: the id first, then everything it covers, and
    each certificate's check (outside the id, but a node cannot connect without a good one)."""
    members = []
    for m in consortium.members:
        if m.cert is None:
            cert = "missing"
        else:
            try:
                check_member_certificate(m.cert, m.key, m.name)
                cert = "ok"
            except ConfigError as exc:
                cert = f"BAD: {exc}"
        members.append({"name": m.name, "key": m.key.hex(), "address": m.address, "api": m.api,
                        "clients": [k.hex() for k in m.clients], "cert": cert})
    return {"name": consortium.name, "id": consortium_id(consortium).hex(), "protocol": consortium.protocol,
            "genesis_time_ms": consortium.genesis_time_ms, "members": members,
            "params": {k: getattr(consortium.params, k) for k in consortium.params.__dataclass_fields__},
            "turn_race": consortium.params.turn_race_problem,
            "open_namespaces": consortium.open_namespaces,
            "namespaces": [{"name": r.name, "writers": list(r.writers), "readers": list(r.readers),
                            "private": r.private} for r in consortium.namespaces]}


# --- 3. a firm's node config ---------------------------------------------------------------------

@dataclass(frozen=True)
class BitcoinSettings:
    rpc_url: str
    check_pow: bool = True
    fee_budget_sat: int | None = None


def init_node_config(path: Path, member: str, consortium: Consortium, *, consortium_file: Path, key_file: Path,
                     client_key_file: Path | None, data_dir: Path, api_listen: str, listen: str | None = None,
                     bitcoin: BitcoinSettings | None = None, overwrite: bool = False) -> Path:
    """Write ``member``'s node config at ``path`` (mode 600, fresh API and auditor tokens),
    after checking the keys against ``consortium``: the member key is the member's, its
    certificate in the file carries it, the client key is one of the member's. Paths are
    written relative to the config's directory when they are below it."""
    entry = consortium.member(member)
    if entry is None:
        raise ConfigError(f"{member!r} is not a member of consortium {consortium.name} "
                          f"({', '.join(consortium.member_names)})")
    key, _ = read_key(key_file)
    if key.public != entry.key:
        raise ConfigError(f"{key_file}: this key ({key.public.hex()[:16]}...) is not {member}'s member key in the "
                          f"consortium file ({entry.key.hex()[:16]}...)")
    if entry.cert is None:
        raise ConfigError(f"member {member}: no cert in the consortium file; the node cannot connect without it")
    check_member_certificate(entry.cert, entry.key, member, field=f"member {member}.cert")
    if client_key_file is not None:
        client, _ = read_key(client_key_file)
        if client.public not in entry.clients:
            raise ConfigError(f"{client_key_file}: this client key is not one of {member}'s clients in the "
                              "consortium file")
    parse_address(api_listen, "api listen address", any_port=True)
    if listen is not None:
        parse_address(listen, "listen address")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists (use --force to overwrite)")
    base = path.parent.resolve()

    def rel(p: Path) -> str:
        full = p.resolve()
        return str(full.relative_to(base)) if full.is_relative_to(base) else str(full)

    node: dict[str, Any] = {"member": member, "consortium": rel(consortium_file), "key_file": rel(key_file),
                            "data_dir": rel(data_dir)}
    if client_key_file is not None:
        node["client_key_file"] = rel(client_key_file)
    if listen is not None:
        node["listen"] = listen
    cfg: dict[str, Any] = {"node": node, "api": {"listen": api_listen, "token": secrets.token_urlsafe(24),
                                                 "audit_token": secrets.token_urlsafe(24)}}
    if bitcoin is not None:
        btc: dict[str, Any] = {"rpc_url": bitcoin.rpc_url, "check_pow": bitcoin.check_pow}
        if bitcoin.fee_budget_sat is not None:
            btc["fee_budget_sat"] = bitcoin.fee_budget_sat
        cfg["bitcoin"] = btc
    write_private(path, f"# PeerDB node config for {member}. Keep it private (mode 600): it holds the API "
                        "tokens.\n" + tomli_w.dumps(cfg))
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, from its first byte (not chmod after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
