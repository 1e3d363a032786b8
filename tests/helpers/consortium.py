"""The test consortium: four members (by default) whose keys come from fixed seeds.

    sc = seeded_consortium()                        # firm-a..firm-d, keys from SEED
    sc.consortium, sc.cid, sc.genesis               # what a founding consortium file gives
    sc.member_key("firm-a"), sc.client_key("firm-a")
    sc.member_key("firm-e")                         # a newcomer's key, from the same seed

Every key is ``sha256(seed / kind / name)``, so the same arguments give the same consortium,
byte for byte, in every process and on every run: a failure reproduces, and two processes
(a test and a worker it kills) build the same blocks. What tests need to vary is a parameter
(member names, seed, consortium name, genesis time, parameters, namespace rules, addresses);
everything else is fixed here, in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from peerdb.core.consortium import Consortium, Member, NamespaceRule, Params
from peerdb.core.keys import SigningKey
from peerdb.core.model import Header, consortium_id, genesis_header

MEMBER_NAMES = ("firm-a", "firm-b", "firm-c", "firm-d")
SEED = b"peerdb-tests"
GENESIS_MS = 1_700_000_000_000
"""A fixed founding time (November 2023), so that block times are constants too."""
PORT_BASE = 7000
"""Placeholder member addresses 127.0.0.1:7000, :7001, ...; tests that open sockets pass
``addresses`` (port 0 would be nicer, but Member refuses it)."""


def seed_key(label: str, seed: bytes = SEED) -> SigningKey:
    """The key for ``label`` under ``seed``: ``sha256(seed + "/" + label)``."""
    return SigningKey(hashlib.sha256(seed + b"/" + label.encode()).digest())


@dataclass(frozen=True)
class SeededConsortium:
    """A consortium and the seed its members' keys come from."""

    consortium: Consortium
    seed: bytes

    def member_key(self, name: str) -> SigningKey:
        """``name``'s member key (also for a firm that is not a member yet)."""
        return seed_key("member/" + name, self.seed)

    def client_key(self, name: str) -> SigningKey:
        """``name``'s client key (also for a firm that is not a member yet)."""
        return seed_key("client/" + name, self.seed)

    @property
    def names(self) -> tuple[str, ...]:
        return self.consortium.member_names

    @property
    def keys(self) -> dict[str, SigningKey]:
        """Member keys by member name (a new dict each time: callers may change theirs)."""
        return {name: self.member_key(name) for name in self.names}

    @property
    def client_keys(self) -> dict[str, SigningKey]:
        """Client keys by member name (a new dict each time)."""
        return {name: self.client_key(name) for name in self.names}

    @property
    def cid(self) -> bytes:
        return consortium_id(self.consortium)

    @property
    def genesis(self) -> Header:
        return genesis_header(self.consortium)


def seeded_consortium(names: Sequence[str] = MEMBER_NAMES, *, seed: bytes = SEED,
                      name: str = "test-consortium", genesis_time_ms: int = GENESIS_MS,
                      params: Params | None = None, namespaces: Sequence[NamespaceRule] = (),
                      open_namespaces: bool = True, addresses: Mapping[str, str] | None = None,
                      port_base: int = PORT_BASE) -> SeededConsortium:
    """The test consortium: ``names`` in turn order, each with one member key and one client
    key derived from ``seed``; member ``i`` at ``127.0.0.1:port_base+i`` unless ``addresses``
    says otherwise."""
    addresses = addresses or {}
    members = tuple(
        Member(member, seed_key("member/" + member, seed).public,
               addresses.get(member, f"127.0.0.1:{port_base + i}"),
               (seed_key("client/" + member, seed).public,))
        for i, member in enumerate(names)
    )
    consortium = Consortium(
        name=name,
        genesis_time_ms=genesis_time_ms,
        members=members,
        params=params if params is not None else Params(),
        namespaces=tuple(namespaces),
        open_namespaces=open_namespaces,
    )
    return SeededConsortium(consortium, seed)
