"""The durable store (LMDB): blocks of every branch, signatures, evidence, best-chain state with
per-key history, anchors, the mempool and the signing guard. See :mod:`peerdb.store.store`."""

from .apply import ReorgResult
from .check import MIGRATIONS, STARTUP_CHECK_BLOCKS
from .layout import DEFAULT_MAP_SIZE, SCHEMA_VERSION
from .readers import StateSnapshot
from .queries import HISTORY_PAGE_MAX, SCAN_PAGE_MAX, StoreQueries, TxLocation
from .store import Store

__all__ = [
    "DEFAULT_MAP_SIZE",
    "HISTORY_PAGE_MAX",
    "MIGRATIONS",
    "SCAN_PAGE_MAX",
    "SCHEMA_VERSION",
    "STARTUP_CHECK_BLOCKS",
    "ReorgResult",
    "StateSnapshot",
    "StoreQueries",
    "Store",
    "TxLocation",
]
