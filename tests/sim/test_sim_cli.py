"""``vmip sim`` from the command line: no privileges at all, a report, the same JSON twice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def unprivileged(argv: list[str]) -> list[str]:
    """*argv* with no capabilities left (as root: setpriv drops them all), else as is."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root without setpriv (util-linux): cannot run vmip sim unprivileged here")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]


def test_vmip_sim_needs_no_privilege_and_repeats_itself(tmp_path: Path) -> None:
    reports = []
    for run in range(2):
        path = tmp_path / f"report{run}.json"
        result = subprocess.run(
            unprivileged([sys.executable, "-m", "vmip", "sim", "--duration", "12", "--seed", "9",
                          "--json", str(path)]),
            capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "handovers; interruption p50" in result.stdout
        reports.append(path.read_bytes())
    assert reports[0] == reports[1]
    report = json.loads(reports[0])
    assert report["simulated"] is True and report["seed"] == 9
    assert report["summary"]["handovers"] == 2


def test_vmip_sim_refuses_a_duration_out_of_range() -> None:
    result = subprocess.run([sys.executable, "-m", "vmip", "sim", "--duration", "5"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "--duration must be between 10 and 3600" in result.stderr
