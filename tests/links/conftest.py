"""Fixtures for the link tests: namespaces created and removed by the test."""

from __future__ import annotations

import os
import subprocess

import pytest
from linktest_helpers import ADDR_A, ADDR_B, NetnsLoop, ip, wait_operstate_up


def _delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)


@pytest.fixture
def netns_pair():
    """Two namespaces ``vt<pid>-links-a``/``-b`` joined by a veth, IPv6 only.

    Yields ``(name_a, name_b, ifname_a, ifname_b)``; the namespaces this
    fixture created are deleted afterwards, also when the test or the setup
    fails (and only those: other test suites use ``vt<pid>-...`` too).
    """
    pid = os.getpid()
    ns_a, ns_b = f"vt{pid}-links-a", f"vt{pid}-links-b"
    if_a, if_b = "vta", "vtb"
    created: list[str] = []
    try:
        for name in (ns_a, ns_b):
            ip("netns", "add", name)
            created.append(name)
        # Created inside ns_a so the names cannot clash with the host's.
        ip("-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b,
           "netns", ns_b)
        for ns, ifname, address in ((ns_a, if_a, ADDR_A), (ns_b, if_b, ADDR_B)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{address}/64", "dev", ifname, "nodad")
            ip("-n", ns, "link", "set", ifname, "up")
        wait_operstate_up(ns_a, if_a)
        wait_operstate_up(ns_b, if_b)
        yield ns_a, ns_b, if_a, if_b
    finally:
        for name in created:
            _delete_netns(name)


@pytest.fixture
def netns_single():
    """One namespace ``vt<pid>-links-c`` with only loopback up."""
    name = f"vt{os.getpid()}-links-c"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _delete_netns(name)


@pytest.fixture
def netns_loops():
    """Factory of :class:`NetnsLoop`; every loop is stopped at teardown."""
    loops: list[NetnsLoop] = []

    def make(netns: str) -> NetnsLoop:
        loop = NetnsLoop(netns)
        loops.append(loop)
        return loop

    try:
        yield make
    finally:
        for loop in loops:
            loop.stop()
