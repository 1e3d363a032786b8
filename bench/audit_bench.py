"""How fast does ``peerdb audit verify`` check a bundle? Transactions per second, measured.

    python bench/audit_bench.py [--blocks 100] [--txs 1000] [--members 4] [--runs 3] [--cli]
                                [--threads N] [--keep DIR] [--profile FILE]

Builds a bundle of ``blocks`` x ``txs`` transactions (default 100,000) in a temporary directory:
a consortium of ``members`` members, every transaction signed by a client key, every block
signed by every member, one put of a 32-byte value per transaction. Then verifies it ``runs``
times in this process (or, with ``--cli``, through ``peerdb audit verify --json`` as a user
would run it) and prints the time and transactions per second of each run and the best.
Building takes longer than verifying (every transaction is signed); ``--keep DIR`` keeps the
bundle there and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from peerdb.audit.bundle import FORMAT_VERSION, BundleWriter, Head  # noqa: E402
from peerdb.audit.export import BtcNumbering, MemorySource, claims_from_tree, encode_block  # noqa: E402
from peerdb.core.consortium import Consortium, Member, Params  # noqa: E402
from peerdb.core.keys import SigningKey  # noqa: E402
from peerdb.core.limits import MAX_BLOCK_TXS, MAX_TX_TTL_MS  # noqa: E402
from peerdb.core.model import OP_PUT, Block, BlockSignature, Op, Tx, body_header, consortium_id, genesis_header  # noqa: E402
from peerdb.core.state import MemoryState, state_effects  # noqa: E402
from peerdb.core.validate import proposer_for  # noqa: E402
from peerdb.audit.verify import VerifyOptions, verify_bundle  # noqa: E402

GENESIS_MS = 1_700_000_000_000
BLOCK_SPACING_MS = 1000


def _key(kind: str, i: int) -> SigningKey:
    return SigningKey(hashlib.sha256(f"audit-bench/{kind}/{i}".encode()).digest())


def build_bundle(path: Path, n_blocks: int, txs_per_block: int, n_members: int) -> int:
    """Write a valid bundle; returns its transaction count."""
    names = [f"firm-{i}" for i in range(n_members)]
    keys = [_key("member", i) for i in range(n_members)]
    clients = [_key("client", i) for i in range(n_members)]
    consortium = Consortium("bench", GENESIS_MS, tuple(
        Member(n, k.public, f"127.0.0.1:{7000 + i}", (c.public,)) for i, (n, k, c) in enumerate(zip(names, keys, clients))),
        Params(max_block_txs=min(MAX_BLOCK_TXS, max(txs_per_block, 1)), tx_ttl_ms=MAX_TX_TTL_MS))
    cid = consortium_id(consortium)
    parent = genesis_header(consortium)
    source = MemorySource(consortium)
    state = MemoryState()
    nonce = 0
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for height in range(1, n_blocks + 1):
            specs = []
            for _ in range(txs_per_block):
                nonce += 1
                member = nonce % n_members
                specs.append((member, nonce))
            txs = list(pool.map(lambda s: Tx.create(
                clients[s[0]], cid, names[s[0]], s[1], GENESIS_MS + MAX_TX_TTL_MS,
                [Op(OP_PUT, "ledger", f"account-{s[1]}", hashlib.sha256(b"%d" % s[1]).digest())]), specs,
                chunksize=256))
            writes: list[tuple[str, str, bytes | None]] = [(op.namespace, op.key, op.value) for tx in txs for op in tx.ops]
            effects = state_effects(state, parent.state_root, writes, [tx.txid for tx in txs], height)
            state.apply(effects)
            header = body_header(height, 0, parent.hash, proposer_for(names, height, 0),
                                 parent.time_ms + BLOCK_SPACING_MS, txs, effects.state_root)
            block = Block(header, tuple(txs))
            source.add_block(block, [BlockSignature.create(k, cid, n, block.hash) for n, k in zip(names, keys)])
            parent = header
    tree = source.tree()
    writer = BundleWriter()
    numbering = BtcNumbering()
    with open(path, "wb") as out:
        out.write(writer.start(Head(FORMAT_VERSION, consortium, cid, names[0], GENESIS_MS, claims_from_tree(tree))))
        for block in sorted(source.blocks.values(), key=lambda b: b.height):
            out.write(encode_block(writer, numbering, block, True, source.signatures(block.hash)))
        out.write(writer.end())
    return n_blocks * txs_per_block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--txs", type=int, default=1000, help="transactions per block")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="verification threads (default: os.cpu_count())")
    parser.add_argument("--processes", action="store_true", help="check signatures in worker processes")
    parser.add_argument("--compare", action="store_true",
                        help="alternate threads and processes run by run (paired, on a shared machine)")
    parser.add_argument("--cli", action="store_true", help="time `peerdb audit verify --json` in a subprocess")
    parser.add_argument("--keep", type=Path, default=None, help="keep (and reuse) the bundle in this directory")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of one in-process run here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"bundle-{args.blocks}x{args.txs}x{args.members}.pdbaudit"
        if not path.exists():
            started = time.perf_counter()
            n = build_bundle(path, args.blocks, args.txs, args.members)
            print(f"built {path.name}: {n:,} transactions, {path.stat().st_size / 1e6:.1f} MB in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        n_txs = args.blocks * args.txs
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
        if args.profile is not None:
            import cProfile
            data = path.read_bytes()
            cProfile.runctx("verify_bundle(io.BytesIO(data), VerifyOptions(threads=args.threads))",
                            globals(), {"data": data, "args": args, "io": io}, str(args.profile))
            print(f"profile written to {args.profile}")
        best = 0.0
        for run in range(1, args.runs + 1):
            if args.cli:
                cmd = [sys.executable, "-m", "cli", "audit", "verify", str(path), "--json"]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                if args.processes:
                    cmd += ["--processes"]
                started = time.perf_counter()
                done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
                seconds = time.perf_counter() - started
                if done.returncode != 0:
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
                inner = json.loads(done.stdout)["seconds"]
                print(f"run {run}: {seconds:.2f} s wall ({inner:.2f} s verifying): {n_txs / seconds:,.0f} tx/s "
                      f"end to end, {n_txs / inner:,.0f} tx/s verifying", flush=True)
                rate = n_txs / seconds
            else:
                processes = args.processes or (args.compare and run % 2 == 0)
                with open(path, "rb") as f:
                    started_cpu, started_main = time.process_time(), time.thread_time()
                    report = verify_bundle(f, VerifyOptions(threads=args.threads, processes=processes))
                    cpu, main_cpu = time.process_time() - started_cpu, time.thread_time() - started_main
                if processes:
                    rate = report.tx_per_s
                    print(f"run {run}: {report.seconds:.2f} s, {rate:,.0f} tx/s ({report.threads} worker processes; "
                          f"main thread CPU {main_cpu:.2f} s)", flush=True)
                    best = max(best, rate)
                    continue
                rate = report.tx_per_s
                # What the CPU work allows on this machine's cores if nothing else ran: the main
                # thread's share is serial, the rest spreads over the cores.
                cores = os.cpu_count() or 1
                bound = n_txs / max(main_cpu, cpu / cores)
                print(f"run {run}: {report.seconds:.2f} s, {rate:,.0f} tx/s ({report.threads} threads); CPU "
                      f"{cpu:.2f} s in all ({cpu / report.seconds:.2f} cores busy), {main_cpu:.2f} s in the main "
                      f"thread: {cpu / n_txs * 1e6:.1f} us/tx, at most {bound:,.0f} tx/s on {cores} idle cores",
                      flush=True)
            best = max(best, rate)
        print(f"best: {best:,.0f} transactions/s verified ({n_txs:,} transactions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
