"""The shape of the code: no import cycles between vmip's subpackages or inside
vmip/node, and no comment or doc that cites a document outside the repository."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vmip"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every vmip module each module imports, TYPE_CHECKING and function-level included."""
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    edges[name].add(target)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for vertex in list(graph):
        if vertex not in index:
            visit(vertex)
    return found


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_subpackages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, targets in _imports(_modules()).items():
        for b in targets:
            if _subpackage(a) != _subpackage(b):
                graph[_subpackage(a)].add(_subpackage(b))
    assert _cycles(graph) == []


def test_no_import_cycle_inside_the_node_layer() -> None:
    graph = {a: {b for b in targets if b.startswith("vmip.node")}
             for a, targets in _imports(_modules()).items() if a.startswith("vmip.node")}
    assert _cycles(graph) == []


def test_ipsec_imports_nothing_above_it() -> None:
    above = ("vmip.config", "vmip.node", "vmip.mobility", "vmip.ike", "vmip.cli", "vmip.control")
    imports = _imports(_modules())
    wrong = {(a, b) for a, targets in imports.items() if a.startswith("vmip.ipsec")
             for b in targets if b.startswith(above)}
    assert wrong == set()


OUTSIDE = re.compile(r"DESIGN-BRIEF|RECIPES\.md|\bissue [0-9]+|as the issue", re.IGNORECASE)


def test_nothing_cites_a_document_outside_the_repository() -> None:
    paths = [*PACKAGE.rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    cited = [f"{p.relative_to(ROOT)}:{n}" for p in paths
             for n, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert cited == []
