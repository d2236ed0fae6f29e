"""What a wheel of vmip holds and which Pythons it claims, kept consistent with CI.

Building a wheel needs setuptools >= 77 fetched into an isolated build
environment (seconds and the network), so it is checked by hand
(docs/dependencies.md); these checks keep what the package claims and what
CI runs in step.
"""

from __future__ import annotations

import re
from pathlib import Path

from vmip.compat import tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _classified_versions() -> list[str]:
    prefix = "Programming Language :: Python :: "
    return [c[len(prefix):] for c in PYPROJECT["project"]["classifiers"]
            if re.fullmatch(r"3\.\d+", c[len(prefix):])]


def test_every_python_claimed_is_the_oldest_supported_or_newer_and_ci_runs_each():
    versions = _classified_versions()
    oldest = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert versions[0] == oldest == PYPROJECT["tool"]["mypy"]["python_version"]
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")
    ci = (REPO / ".ci" / "run").read_text()
    loop = re.search(r"^for minor in ([\d. ]+); do$", ci, re.MULTILINE)
    assert loop is not None and loop.group(1).split() == versions


def test_readme_test_command_is_what_ci_runs_on_the_main_interpreter():
    readme = (REPO / "README.md").read_text()
    command = re.search(r"## Tests\n\n```sh\n(.+)\n```", readme).group(1)
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
