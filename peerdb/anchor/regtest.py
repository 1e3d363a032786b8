"""A throw-away regtest Bitcoin-RPC node for tests, the demo and benchmarks.

No Bitcoin Core binary is packaged for this machine; Debian's ``litecoind`` (Litecoin 0.21, a
fork of Bitcoin Core 0.21 with the same wallet and RPC) is, and ``scripts/bootstrap`` installs
it. Everything PeerDB sends it is plain Bitcoin Core RPC, so production points the same code at
Bitcoin Core. The flags below each fix a fact of this binary:

- ``/usr/lib/litecoin/litecoind`` directly: the ``/usr/bin`` wrapper writes into ``$HOME``;
- ``-vbparams=mweb:-2:0``: otherwise MWEB activates at block 432 and plain mining fails;
- ``-bind=127.0.0.1:<port>=onion -listenonion=0``: without it every daemon binds the same
  default onion port and parallel test sessions collide;
- ``-fallbackfee``: regtest has no fee estimates, and funding would fail without it.

Synchronous on purpose: fixtures, the demo and benchmarks call it from plain code or threads.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from peerdb.core.errors import ConfigError

from .errors import BitcoinRPCError, BitcoinUnavailable
from .rpc import BitcoinRPC

LITECOIND = "/usr/lib/litecoin/litecoind"
"""The regtest daemon binary; overridable per node for a real ``bitcoind``."""

START_TIMEOUT_S = 60.0
"""Deadline for the RPC to answer after launch: a cold start on a busy 2-core CI machine takes a
few seconds (wallet and index creation); a minute means it is broken, not slow."""

STOP_TIMEOUT_S = 30.0
"""How long ``stop`` waits for a clean exit (flushing the small regtest chain state) before it
kills the process by its PID."""

POLL_INTERVAL_S = 0.05
"""Pause between readiness polls: short enough not to slow tests, long enough not to spin."""

COINBASE_MATURITY = 100
"""Blocks before a coinbase output can be spent (a consensus rule); mining one more than this
makes the first block's reward spendable."""

WALLET_NAME = "peerdb"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RegtestNode:
    """One regtest daemon with its own datadir, ports, credentials and a funded legacy wallet.

    ``start()`` may be called again after ``stop()``: it reuses the datadir, ports and wallet, which
    is how tests take the node away from a running anchoring service and bring it back.
    """

    def __init__(
        self,
        datadir: Path | None = None,
        *,
        binary: str = LITECOIND,
        wallet: str = WALLET_NAME,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._owns_datadir = datadir is None
        self.datadir = Path(tempfile.mkdtemp(prefix="peerdb-regtest-")) if datadir is None else datadir
        self.binary = binary
        self.wallet = wallet
        self.extra_args = extra_args
        self.rpc_user = "peerdb"
        self.rpc_password = secrets.token_hex(16)
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.onion_port = free_port()
        self.mining_address = ""
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        """Node-level RPC URL (with credentials); with one wallet loaded, wallet calls work too."""
        return f"http://{self.rpc_user}:{self.rpc_password}@127.0.0.1:{self.rpc_port}"

    @property
    def wallet_url(self) -> str:
        """RPC URL pinned to this node's wallet, for when several wallets are loaded."""
        return f"{self.rpc_url}/wallet/{self.wallet}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def rpc(self, *, timeout: float = 30.0) -> BitcoinRPC:
        """A client for this node."""
        return BitcoinRPC(self.rpc_url, timeout=timeout)

    # -- lifecycle ---------------------------------------------------------------------------

    def command_line(self) -> list[str]:
        return [
            self.binary,
            "-regtest",
            f"-datadir={self.datadir}",
            "-server",
            "-txindex",
            "-listen=1",
            "-discover=0",
            "-dnsseed=0",
            "-upnp=0",
            "-printtoconsole=0",
            "-shrinkdebugfile=1",
            "-vbparams=mweb:-2:0",
            "-fallbackfee=0.0001",
            f"-port={self.p2p_port}",
            f"-bind=127.0.0.1:{self.p2p_port}",
            f"-bind=127.0.0.1:{self.onion_port}=onion",
            "-listenonion=0",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            f"-rpcuser={self.rpc_user}",
            f"-rpcpassword={self.rpc_password}",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Launch, wait for the RPC, load or create the wallet, mine to maturity if needed."""
        if self.running:
            raise ConfigError(f"regtest node: already running with pid {self.pid}")
        if not os.access(self.binary, os.X_OK):
            raise ConfigError(f"regtest node: {self.binary} not found or not executable "
                              "(scripts/bootstrap installs litecoind)")
        self.datadir.mkdir(parents=True, exist_ok=True)
        # stderr goes to a file, not a pipe: a pipe nobody drains would block a chatty daemon.
        with open(self.datadir / "stderr.log", "ab") as stderr:
            self._process = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            self._wait_ready()
            self._prepare_wallet()
        except BaseException:
            self._kill()
            raise

    def _wait_ready(self) -> None:
        rpc = self.rpc(timeout=5.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        try:
            while time.monotonic() < deadline:
                process = self._process
                if process is None or process.poll() is not None:
                    raise ConfigError(f"regtest node: daemon exited during start: {self._stderr_tail()}")
                try:
                    rpc.call("getblockchaininfo")
                    return
                except BitcoinUnavailable as exc:
                    last = exc
                time.sleep(POLL_INTERVAL_S)
        finally:
            rpc.close()
        raise ConfigError(f"regtest node: RPC not ready after {START_TIMEOUT_S:.0f} s ({last})")

    def _prepare_wallet(self) -> None:
        rpc = self.rpc()
        try:
            loaded: list[Any] = rpc.call("listwallets")
            if self.wallet not in loaded:
                try:
                    rpc.call("loadwallet", self.wallet)
                except BitcoinRPCError:
                    rpc.call("createwallet", self.wallet)
            if not self.mining_address:
                self.mining_address = str(rpc.call("getnewaddress", "", "legacy"))
            height = rpc.get_block_count()
            if height <= COINBASE_MATURITY:
                rpc.call("generatetoaddress", COINBASE_MATURITY + 1 - height, self.mining_address)
        finally:
            rpc.close()

    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        """Mine ``n`` blocks (including mempool transactions); returns their hashes (display hex)."""
        rpc = self.rpc()
        try:
            hashes: list[str] = rpc.call("generatetoaddress", n, address or self.mining_address)
            return hashes
        finally:
            rpc.close()

    def stop(self) -> None:
        """Stop over RPC and wait for the PID; kill that PID if it does not exit in time."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            rpc = self.rpc(timeout=10.0)
            try:
                rpc.call("stop")
            except (BitcoinUnavailable, BitcoinRPCError):
                process.send_signal(signal.SIGTERM)
            finally:
                rpc.close()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None

    def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None

    def _stderr_tail(self) -> str:
        try:
            text = (self.datadir / "stderr.log").read_bytes()[-2000:]
        except OSError:
            return "(no output)"
        return text.decode("utf-8", "replace").strip() or "(no output)"

    def cleanup(self) -> None:
        """Stop, and remove the datadir if this object created it."""
        self.stop()
        if self._owns_datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> RegtestNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
