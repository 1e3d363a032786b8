"""A process that writes to a store and reports what it committed, for kill -9 tests.

    python -m tests.helpers.store_worker apply PATH SEED     # apply blocks and reorgs until killed
    python -m tests.helpers.store_worker guard PATH HEIGHT ROUND HASH_HEX

``apply`` prints, for every store call, ``BEGIN <op> <target head hex> <block hex>...`` before the
call and ``ACK <op> <head hex>`` once it returned (the commit is durable); the test kills it with
SIGKILL at random lines and then checks the store. ``guard`` records one signature in the signing
guard, prints ``GUARDED`` (or ``REFUSED <reason>`` and exits 3), and waits to be killed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from peerdb.core.errors import DoubleSignRefused
from peerdb.core.model import Block, Tx
from peerdb.core.state import StateReader
from peerdb.store import Store
from tests.helpers.chainbuilder import ChainBuilder

CRASH_SEED = b"crash-test"
HOT_KEYS = 40
"""Keys written again and again (puts and deletes), so that undo and history matter."""
TXS_PER_BLOCK = 120
"""Large enough that one apply transaction takes milliseconds, so kills land inside it."""
MAX_OPS = 400
"""A worker that is never killed stops after this many operations."""


def crash_builder() -> ChainBuilder:
    return ChainBuilder(n_members=4, seed=CRASH_SEED)


def _txs(cb: ChainBuilder, rng: random.Random, count: int) -> list[Tx]:
    out = []
    for _ in range(count):
        ops: list[tuple[str, str, bytes | None]] = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.1:
                ops.append(("data", f"u{rng.getrandbits(64):x}", b"unique"))
            else:
                value = None if rng.random() < 0.2 else rng.randbytes(rng.randint(1, 40))
                ops.append(("hot", f"k{rng.randrange(HOT_KEYS)}", value))
        out.append(cb.tx(rng.choice(cb.members), ops, nonce=rng.getrandbits(63)))
    return out


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class TreeOverlay:
    """A stored block's state with the state tree records of blocks built on it (not stored yet)."""

    def __init__(self, base: StateReader) -> None:
        self.base = base
        self.nodes: dict[bytes, bytes] = {}

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.base.get(namespace, key)

    def tx_seen(self, txid: bytes) -> bool:
        return self.base.tx_seen(txid)

    def tree_node(self, key: bytes) -> bytes | None:
        return self.nodes.get(key) or self.base.tree_node(key)


def run_apply(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    cb = crash_builder()
    store = Store.open(path, cb.consortium, "m0", sync=True)
    head = store.head()
    for op in range(MAX_OPS):
        head = store.head()
        parent = store.block(head.hash)
        assert parent is not None
        cb.blocks.setdefault(parent.hash, parent)
        if head.height >= 3 and rng.random() < 0.25:
            depth = rng.randint(1, min(3, head.height))
            fork_hash = head.hash
            for _ in range(depth):
                header = store.header(fork_hash)
                assert header is not None
                fork_hash = header.prev
            fork = store.block(fork_hash)
            assert fork is not None
            cb.blocks.setdefault(fork.hash, fork)
            branch: list[Block] = []
            tip = fork
            with store.state_reader_at(fork.hash) as at_fork:
                state = TreeOverlay(at_fork)
                for _ in range(depth + 1):
                    tip = cb.block(tip, _txs(cb, rng, TXS_PER_BLOCK // 2), round=rng.randint(1, 50), check=False,
                                   parent_state=state)
                    state.nodes.update(cb.effects(tip).nodes)  # the next block builds on this one's tree
                    branch.append(tip)
            _say(f"BEGIN {op} {tip.hash.hex()} " + " ".join(b.hash.hex() for b in branch))
            for block in branch[:-1]:
                store.add_block(block, cb.sign_all(block, ["m0"]))
            store.add_block(branch[-1], cb.sign_all(branch[-1], ["m0"]), make_head=True)
        else:
            pooled = store.mempool_items()[:20]
            with store.state_reader_at(parent.hash) as at_parent:
                block = cb.block(parent, pooled + _txs(cb, rng, TXS_PER_BLOCK), check=False, parent_state=at_parent)
            _say(f"BEGIN {op} {block.hash.hex()} {block.hash.hex()}")
            store.add_block(block, cb.sign_all(block, ["m0"]), make_head=True)
        _say(f"ACK {op} {store.head().hash.hex()}")
    store.close()


def run_guard(path: Path, height: int, round_: int, block_hash: bytes) -> None:
    cb = crash_builder()
    store = Store.open(path, cb.consortium, "m0", sync=True)
    try:
        store.guard_sign(height, round_, block_hash)
    except DoubleSignRefused as exc:
        _say(f"REFUSED {exc}")
        sys.exit(3)
    _say("GUARDED")
    sys.stdin.read()  # wait to be killed (or for stdin to close)


def main(argv: list[str]) -> None:
    if argv[:1] == ["apply"] and len(argv) == 3:
        run_apply(Path(argv[1]), int(argv[2]))
    elif argv[:1] == ["guard"] and len(argv) == 5:
        run_guard(Path(argv[1]), int(argv[2]), int(argv[3]), bytes.fromhex(argv[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
