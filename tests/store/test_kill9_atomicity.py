"""Kill -9 a process in the middle of applying blocks and reorgs, many times, and check after
each restart that every acknowledged block is there whole, the head is the last acknowledged one
(or the one the interrupted call was making), and nothing is half-applied: state, history and
transaction index equal a replay of the stored best chain from genesis.

SIGKILL tests atomicity (LMDB's copy-on-write commit either happened or did not); it cannot
test durability against power loss, which rests on fsync (``sync=True``, as the worker uses).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peerdb.store import Store, TxLocation
from tests.helpers.chainbuilder import ChainBuilder
from tests.helpers.store_worker import HOT_KEYS, crash_builder

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
MAX_LINES_BEFORE_KILL = 12
"""Each run is killed within this many output lines, so the whole test stays well under 30 s."""


def all_keys(store: Store, namespace: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    after: str | None = None
    while True:
        page = store.scan(namespace, start_after=after, limit=1000)
        out.update((k, v) for k, v, _h in page)
        if len(page) < 1000:
            return out
        after = page[-1][0]


def adopt_store(cb: ChainBuilder, store: Store) -> None:
    """Teach the replay oracle every stored block (it recomputes their effects from genesis)."""
    for header in store.headers_iter():
        if header.hash not in cb.blocks:
            block = store.block(header.hash)
            assert block is not None
            cb.adopt(block)


def check_against_replay(cb: ChainBuilder, store: Store) -> None:
    head = store.head()
    expected = cb.state_at(head.hash)
    for namespace in ("hot", "data"):
        assert all_keys(store, namespace) == {k: v for (ns, k), v in expected.values.items() if ns == namespace}
    chain = cb.chain_to(head.hash)
    histories: dict[str, list[tuple[int, bytes, bytes | None]]] = {f"k{i}": [] for i in range(HOT_KEYS)}
    for block in chain:
        final = {k: v for ns, k, v in cb.effects(block).writes if ns == "hot"}
        for key, value in sorted(final.items()):
            histories[key].append((block.height, block.hash, value))
    for key, history in histories.items():
        assert store.history("hot", key) == history
    assert [store.block_hash_at(b.height) for b in chain] == [b.hash for b in chain]
    for block in chain[-5:]:
        for index, tx in enumerate(block.txs):
            assert store.tx_location(tx.txid) == TxLocation(block.height, block.hash, index)
    assert store.stats()["entries"]["txindex"] == len(expected.seen)
    assert store.stats()["entries"]["undo"] == head.height


def run_and_kill(path: Path, seed: int, rng: random.Random) -> list[str]:
    """Start a worker, kill it after a random line (a BEGIN: inside a store call; an ACK: between
    calls), and return every line it printed."""
    lines: list[str] = []
    kill_after = rng.randint(1, MAX_LINES_BEFORE_KILL)
    with subprocess.Popen([sys.executable, "-m", "tests.helpers.store_worker", "apply", str(path), str(seed)],
                          cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        try:
            while len(lines) < kill_after:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            rest = proc.stdout.read()
            proc.wait()
    lines.extend(x.strip() for x in rest.splitlines() if x.strip())
    assert proc.returncode == -signal.SIGKILL, f"worker exited by itself: {proc.returncode} after {lines}"
    return lines


@pytest.mark.slow
def test_sigkill_during_apply_loses_nothing_acknowledged_and_leaves_nothing_half_done(tmp_path: Path) -> None:
    path = tmp_path / "store"
    rng = random.Random(20240611)
    cb = crash_builder()
    acked_blocks: set[bytes] = set()
    decoded: set[bytes] = set()
    last_acked_head = cb.genesis.hash
    kills_inside_a_call = 0
    for run in range(KILLS):
        lines = run_and_kill(path, run, rng)
        in_flight: list[str] | None = None
        for line in lines:
            kind, *fields = line.split()
            if kind == "BEGIN":
                in_flight = fields[1:]
            elif kind == "ACK":
                assert in_flight is not None
                acked_blocks.update(bytes.fromhex(h) for h in in_flight[1:])
                last_acked_head = bytes.fromhex(fields[1])
                in_flight = None
        kills_inside_a_call += in_flight is not None
        with Store.open(path, cb.consortium, "m0") as store:  # runs the startup check
            for block_hash in acked_blocks:
                assert store.has_block(block_hash)
                if block_hash not in decoded:  # decode each once: re-hashed, roots re-checked
                    block = store.block(block_hash)
                    assert block is not None and block.hash == block_hash
                    decoded.add(block_hash)
            allowed_heads = {last_acked_head}
            if in_flight is not None:
                allowed_heads.add(bytes.fromhex(in_flight[0]))
            assert store.head().hash in allowed_heads
            adopt_store(cb, store)
            check_against_replay(cb, store)
            last_acked_head = store.head().hash
    assert len(acked_blocks) > KILLS
    assert kills_inside_a_call > 0
