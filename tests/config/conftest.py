"""Fixtures for the config tests: private copies of configs/ and a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cfgtest_helpers import copy_configs

from vmip.cli.main import main


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A private copy of configs/ with the example keys made private (chmod 600)."""
    return copy_configs(tmp_path)


@pytest.fixture
def run_check(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``vmip check ARGS`` in-process; return (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(["check", *args])
        except SystemExit as exc:  # argparse errors exit
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
