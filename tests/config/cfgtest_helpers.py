"""Shared helpers of the config tests (a unique module name: tests/ has no packages)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EXAMPLES = ("ha", "cn", "mn", "mn2")


def copy_configs(destination: Path, key_mode: int = 0o600) -> Path:
    """Copy configs/ (with keys/) to *destination*; key files get *key_mode*."""
    target = destination / "configs"
    shutil.copytree(CONFIGS, target)
    for key in (target / "keys").iterdir():
        key.chmod(key_mode)
    return target
