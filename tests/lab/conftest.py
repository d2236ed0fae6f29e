"""Fixtures for the lab tests: a lab that is always torn down and checked to be gone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# Full assertion detail for the checks that live in the shared helpers.
pytest.register_assert_rewrite("lab_support")

from lab_support import host_snapshot, remove_stale_lab, teardown_lab  # noqa: E402


@pytest.fixture(scope="module")
def host_before() -> dict[str, Any]:
    return host_snapshot()


@pytest.fixture(scope="module")
def lab(host_before: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A lab shared by one module's tests; always removed, and checked to be gone."""
    from vmip.lab.manage import lab_up

    remove_stale_lab()
    try:
        yield lab_up()
    finally:
        teardown_lab()
