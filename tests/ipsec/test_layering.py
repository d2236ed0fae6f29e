"""Layering: vmip.ipsec sits below vmip.config and never imports it.

The config layer reads and checks key files and hands plain values down
(vmip.ipsec.static builds SAs from them); an import the other way would
make the two packages depend on each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VMIP = Path(__file__).resolve().parents[2] / "vmip"
MODULES = sorted((VMIP / "ipsec").rglob("*.py"))


def imported_modules(source: str, package: str) -> list[str]:
    """Every module *source* imports (in functions too), relative ones resolved in *package*."""
    parts = package.split(".")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append(module)
            found.extend(f"{module}.{alias.name}" for alias in node.names)
    return found


def config_imports(path: Path) -> list[str]:
    package = ".".join(["vmip", *path.relative_to(VMIP).parent.parts])
    return [name for name in imported_modules(path.read_text(), package)
            if name == "vmip.config" or name.startswith("vmip.config.")]


def test_there_are_modules_to_check() -> None:
    assert VMIP / "ipsec" / "static.py" in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_ipsec_does_not_import_the_config_layer(path: Path) -> None:
    bad = config_imports(path)
    assert not bad, f"{path.name} imports {bad}: vmip.ipsec must not depend on vmip.config"


@pytest.mark.parametrize("source", [
    "import vmip.config\n",
    "from vmip.config.errors import ConfigError\n",
    "from vmip import config\n",
    "from .. import config\n",
    "def load():\n    from ..config.keyfile import read_key_file\n",
])
def test_the_check_sees_every_spelling(source: str) -> None:
    names = imported_modules(source, "vmip.ipsec")
    assert any(n == "vmip.config" or n.startswith("vmip.config.") for n in names), names
