"""``python -m tests.helpers.hostile --config NODE.toml --control C.json --report R.json``: run a
real member daemon (the production ``run_node``: TLS, LMDB, the API, anchoring) with the hostile
engine and network in place of the honest ones, misbehaving as the control file says."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path
from typing import Any

import trio

from peerdb.core.consortium import Consortium
from peerdb.core.keys import SigningKey
from peerdb.node.config import NodeConfig, load_node_config
from peerdb.node.daemon import run_node, setup_logging
from peerdb.node.service import NodeService

from .engine import HostileEngine
from .network import HostileNetwork
from .switches import CONTROL_POLL_S, Switches, read_json, write_json

log = logging.getLogger("peerdb.hostile")


async def misbehave(service: NodeService, control: Path, report: Path) -> None:
    """Follow the control file, misbehave once per tick, and keep the report current."""
    engine = service.engine
    assert isinstance(engine, HostileEngine)
    network = service.network
    assert isinstance(network, HostileNetwork)
    seen: tuple[int, int] | None = None
    written: dict[str, Any] | None = None
    while True:
        try:
            stat = control.stat()
            version: tuple[int, int] | None = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            version = None
        if version != seen:
            seen = version
            switches = Switches.from_json(read_json(control)) if version is not None else Switches()
            await service.call(engine.apply_switches, switches)
            log.warning("HOSTILE %s: switches now %s", engine.me,
                        {k: v for k, v in switches.to_json().items() if v not in (False, 0, None, [])} or "all off")
        await service.call(engine.misbehave, service.clock_ms())
        if engine.switches.flood:
            network.flood()
        data = await service.read(lambda: {**engine.report.to_json(), "flood": dict(network.flood_counts)})
        if data != written:
            write_json(report, data)
            written = data
        await trio.sleep(CONTROL_POLL_S)


async def run_hostile(cfg: NodeConfig, consortium: Consortium, keys: list[SigningKey], control: Path,
                      report: Path) -> None:
    async with trio.open_nursery() as nursery:
        async def node(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await run_node(cfg, consortium, keys, False, task_status=task_status,
                           engine_class=HostileEngine, network_class=HostileNetwork)
            nursery.cancel_scope.cancel()  # SIGTERM stopped the node: stop misbehaving too
        service = await nursery.start(node)
        nursery.start_soon(misbehave, service, control, report)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.hostile", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args(argv)
    cfg = load_node_config(args.config)
    setup_logging(cfg.log_level, cfg.member, cfg.log_format)
    consortium = cfg.load_consortium()
    keys = cfg.load_keys(consortium)
    trio.run(functools.partial(run_hostile, cfg, consortium, keys, Path(args.control), Path(args.report)))


if __name__ == "__main__":
    main()
