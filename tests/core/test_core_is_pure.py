"""The consensus core is pure: importing it pulls in no event loop, database or network library."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import peerdb.core

CORE_MODULES = sorted(f"peerdb.core.{m.name}" for m in pkgutil.iter_modules(peerdb.core.__path__))

FORBIDDEN = ("trio", "lmdb", "hypercorn", "httpx", "ssl", "_ssl", "socket", "_socket", "asyncio",
             "selectors", "cryptography", "bitcoin", "subprocess")
"""I/O libraries (and the stdlib modules they stand on) that the core must never import;
checked against what cbor2 and PyNaCl themselves import, which is none of these."""


def test_core_modules_are_all_listed() -> None:
    assert {"peerdb.core.codec", "peerdb.core.chain", "peerdb.core.model", "peerdb.core.validate",
            "peerdb.core.state", "peerdb.core.consortium"} <= set(CORE_MODULES)


@pytest.mark.slow  # starts a fresh interpreter (well under a second)
def test_importing_the_core_imports_no_io_library() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(result.stdout))
    assert set(CORE_MODULES) <= loaded
    offending = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert offending == []
