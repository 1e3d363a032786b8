"""The consensus core is pure: importing it pulls in no event loop, database or network library."""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

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


ALLOWED_IMPORTS = {
    "__future__", "base64", "binascii", "bisect", "collections", "collections.abc", "dataclasses", "enum",
    "hashlib", "re", "typing",
    "struct",  # packs the state tree's version numbers into record bytes (smt)
    "io",  # in-memory streams only (io.BytesIO for cbor2's decoder)
    "tomllib",  # parses consortium-file text; reading the file is peerdb.consortium_file's
    "threading",  # the lock of membership.StateCache, whose owners may call it from worker threads
    "cbor2", "nacl.bindings", "nacl.exceptions", "nacl.public", "nacl.secret", "nacl.signing", "nacl.utils",
}
"""Every module the core's own source imports: value and hashing modules, the CBOR and Ed25519
libraries. No file system (os, pathlib), clock (time, datetime), logging or randomness of its own:
anything new here is a deliberate decision."""

FORBIDDEN_CALLS = {"open", "print", "input", "breakpoint"}


def test_the_core_imports_only_value_modules_and_calls_no_io_builtin() -> None:
    for name in CORE_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None}
        assert imported <= ALLOWED_IMPORTS, (name, sorted(imported - ALLOWED_IMPORTS))
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert not calls & FORBIDDEN_CALLS, (name, sorted(calls & FORBIDDEN_CALLS))
