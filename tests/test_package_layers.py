"""The tree reads from the top down: ``cli`` → ``peerdb.node`` → ``peerdb.{audit,anchor,net,store}``
→ ``peerdb.core``, with no import cycle anywhere.

Checked on the source (every runtime import, including those inside functions; imports only a
type checker sees are left out), so that a new module that reaches upward or closes a loop fails
here with its name rather than later as an ``ImportError`` that depends on import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("peerdb", "cli")

LAYERS = {"core": 0, "store": 1, "net": 1, "anchor": 1, "audit": 1, "node": 3}
"""Rank of each ``peerdb`` subpackage; ``peerdb``'s own modules (client, consortium file) rank 2
and ``cli`` ranks 4. A module may import only its own rank or lower."""

SIDEWAYS = {("audit", "anchor")}
"""Imports allowed between different subpackages of one rank: the auditor checks anchor proofs
with the anchoring code's own verifier, so that both agree on what a valid proof is."""

UPWARD = {("peerdb.client.http", "peerdb.node.config"), ("peerdb.client.signer", "peerdb.node.config")}
"""The one upward import: the client library reads a node's config file (address, token, client
key) with the node's own parser, so that a config the node accepts is one the client understands."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                hidden.update(id(n) for n in ast.walk(stmt))
    return hidden


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    hidden = _type_checking_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else str(node.module)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _rank(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if parts[0] == "cli":
        return 4, "cli"
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]], parts[1]
    return 2, module


def test_no_module_imports_a_higher_layer_or_a_sibling_package() -> None:
    graph = _graph()
    assert "peerdb.node.engine" in graph and "cli.main" in graph  # the walk found the tree
    wrong = []
    for module, targets in graph.items():
        rank, group = _rank(module)
        for target in targets:
            target_rank, target_group = _rank(target)
            upward = target_rank > rank and (module, target) not in UPWARD
            sideways = (target_rank == rank == 1 and group != target_group
                        and (group, target_group) not in SIDEWAYS)
            if upward or sideways:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []
