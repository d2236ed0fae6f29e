"""Test-wide fixtures and the `root` marker.

Tests marked ``@pytest.mark.root`` build network namespaces, TUN devices or
raw sockets.  CI runs as root, so they run there; elsewhere they are skipped
with a message saying what is missing.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, TUN, raw sockets); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_vmip_logging():
    """Undo what ``vmip.log.setup`` (called by ``vmip.cli.main.main``) did to the
    ``vmip`` logger, so one test's handlers (on a stream pytest has since
    closed) and ``propagate=False`` do not hide records from the next test's
    ``caplog``."""
    import logging

    yield
    logger = logging.getLogger("vmip")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
