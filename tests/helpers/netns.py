"""Real network partitions between member processes, made by the test and undone by it.

Each member runs in its own Linux network namespace (``ip netns exec NS python -m cli node run``)
with one interface, the inner end of a veth pair whose outer end is a port of a bridge in the
root namespace. The bridge also carries an address of the test's own, so the test (in the root
namespace) reaches every member's API, and a forwarder there gives the members the regtest
node's RPC (which listens on 127.0.0.1 only).

**What really drops packets**: an nftables table of the ``bridge`` family in the root namespace,
whose forward chain holds one ``iifname A oifname B drop`` rule per cut direction. The frames
from A's port to B's port are discarded inside the bridge: no RST, no ICMP, nothing but silence,
exactly as on a cut cable. Both directions are one cut; one direction alone is a one-way cut
(TCP then breaks both ways, since acknowledgements cannot get through). Traffic between the test
and the members is not bridged between ports (it goes to the bridge's own address), so it is
never cut.

Everything has names with a per-run tag (several engineers' test runs share the machine), and
:meth:`Lab.teardown` deletes it all: the nftables table, the veth pairs, the bridge, the
namespaces. :class:`Unavailable` (the test skips) when the kernel or the tools refuse.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field

import tomli_w

from peerdb.consortium_file import load_consortium
from peerdb.founding import write_consortium_file
from peerdb.localnet import LocalConsortium

GATEWAY_HOST = 254
"""The bridge's (the test's) address in the members' /24."""


class Unavailable(Exception):
    """The machine cannot make the lab (not root, no netns support, no nft): the reason."""


def run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise Unavailable(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")


def _free_subnet() -> str:
    """A 10.x.y.0/24 no route of the root namespace touches (another run's lab, say)."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_network(word, strict=False) for line in routes.splitlines()
             for word in line.split()[:1] if "/" in word]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net.network_address).rsplit(".", 1)[0]
    raise Unavailable("no free 10.x.y.0/24 for the lab")


@dataclass
class Lab:
    members: list[str]
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    prefix: str = ""
    """The /24 as ``10.x.y``."""
    cuts: set[tuple[str, str]] = field(default_factory=set)
    """Directions (from, to) whose frames are dropped now."""
    _made: list[list[str]] = field(default_factory=list)
    """Undo commands, newest last."""

    @property
    def bridge(self) -> str:
        return f"pdb{self.tag}br"

    @property
    def table(self) -> str:
        return f"pdb_{self.tag}"

    def namespace(self, member: str) -> str:
        return f"pdb-{self.tag}-{member}"

    def port(self, member: str) -> str:
        return f"pdb{self.tag}{self.members.index(member):x}"

    def ip(self, member: str) -> str:
        return f"{self.prefix}.{self.members.index(member) + 1}"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.{GATEWAY_HOST}"

    def launcher(self, member: str, module: tuple[str, ...]) -> list[str]:
        """The command line that runs ``python -m <module...>`` inside the member's namespace."""
        return ["ip", "netns", "exec", self.namespace(member), sys.executable, "-m", *module]

    # --- making and unmaking ---------------------------------------------------------------------

    def setup(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise Unavailable(f"`{tool}` is not installed (scripts/bootstrap installs nftables)")
        self.prefix = _free_subnet()
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            self._made.append(["ip", "link", "del", self.bridge])
            run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            for member in self.members:
                ns, port = self.namespace(member), self.port(member)
                run("ip", "netns", "add", ns)
                self._made.append(["ip", "netns", "del", ns])
                run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made.append(["ip", "link", "del", port])
                run("ip", "link", "set", port, "master", self.bridge)
                run("ip", "link", "set", port, "up")
                run("ip", "-n", ns, "addr", "add", f"{self.ip(member)}/24", "dev", "eth0")
                run("ip", "-n", ns, "link", "set", "eth0", "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
            self._nft(f"add table bridge {self.table}\n"
                      f"add chain bridge {self.table} links {{ type filter hook forward priority 0; policy accept; }}\n")
            self._made.append(["nft", "delete", "table", "bridge", self.table])
        except Unavailable:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Undo everything made, newest first; keeps going past failures."""
        while self._made:
            subprocess.run(self._made.pop(), capture_output=True, timeout=30)

    def _nft(self, script: str) -> None:
        done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise Unavailable(f"nft refused the rules: {done.stderr.strip()}")

    # --- cutting and healing ---------------------------------------------------------------------

    def _apply(self) -> None:
        rules = "".join(f'add rule bridge {self.table} links iifname "{self.port(a)}" oifname "{self.port(b)}" drop\n'
                        for a, b in sorted(self.cuts))
        self._nft(f"flush chain bridge {self.table} links\n{rules}")

    def cut(self, a: str, b: str, *, one_way: bool = False) -> None:
        """Drop everything from ``a`` to ``b`` (and back, unless ``one_way``)."""
        self.cuts.add((a, b))
        if not one_way:
            self.cuts.add((b, a))
        self._apply()

    def split(self, *sides: list[str]) -> None:
        """Cut every link between members on different sides."""
        for i, side in enumerate(sides):
            for other in sides[i + 1:]:
                for a in side:
                    for b in other:
                        self.cuts.update({(a, b), (b, a)})
        self._apply()

    def heal(self) -> None:
        self.cuts.clear()
        self._apply()


def place(net: LocalConsortium, lab: Lab, bitcoin_rpc: str | None = None) -> None:
    """Move the consortium's members to their namespaces' addresses (after ``write_files``): the
    consortium file's addresses (outside the consortium id), each node's API, and the Bitcoin RPC."""
    path = net.directory / "consortium.toml"
    consortium = load_consortium(path)
    members = []
    for m in consortium.members:
        port = m.address.rsplit(":", 1)[1]
        api_port = (m.api or ":0").rsplit(":", 1)[1]
        members.append(dataclasses.replace(m, address=f"{lab.ip(m.name)}:{port}", api=f"{lab.ip(m.name)}:{api_port}"))
    write_consortium_file(path, dataclasses.replace(consortium, members=tuple(members)), overwrite=True)
    for name, node in net.nodes.items():
        data = tomllib.loads(node.config.read_text())
        api_port = data["api"]["listen"].rsplit(":", 1)[1]
        data["api"]["listen"] = f"{lab.ip(name)}:{api_port}"
        if bitcoin_rpc is not None:
            data["bitcoin"] = {"rpc_url": bitcoin_rpc}
        node.config.write_text(tomli_w.dumps(data))
        node.api = data["api"]["listen"]


class Forwarder(threading.Thread):
    """Listens on ``host:0`` (the lab's gateway) and relays each connection to ``target`` (the
    regtest RPC on 127.0.0.1): the members' only way out of their namespaces."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        super().__init__(name="rpc-forwarder", daemon=True)
        self.target = target
        self.server = socket.create_server((host, 0))
        self.server.settimeout(0.2)
        self.port: int = self.server.getsockname()[1]
        self.stopping = threading.Event()
        self._open: list[socket.socket] = []

    def run(self) -> None:
        with self.server:
            while not self.stopping.is_set():
                try:
                    inner, _ = self.server.accept()
                except TimeoutError:
                    continue
                outer = socket.create_connection(self.target, timeout=30)
                outer.settimeout(None)  # an idle keep-alive connection is not an error
                self._open += [inner, outer]
                for a, b in ((inner, outer), (outer, inner)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        for s in self._open:
            s.close()

