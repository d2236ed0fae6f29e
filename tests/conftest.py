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
