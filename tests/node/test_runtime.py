"""The node runtime end to end: two vmip nodes, static keys, the udp driver."""

from __future__ import annotations

import json
import signal

import pytest
from pairlab import OVERLAY, PairLab, netns_exec

pytestmark = pytest.mark.root


@pytest.fixture
def pair(tmp_path):
    lab = PairLab(tmp_path)
    try:
        lab.build()
        lab.start("a")
        lab.start("b")
        yield lab
    finally:
        lab.close()


def test_ping_through_esp_overlay(pair):
    result = netns_exec(pair.netns["a"], "ping", "-c", "3", "-i", "0.2", "-W", "2",
                        OVERLAY["b"])
    assert result.returncode == 0, result.stdout + result.stderr
    sas = json.loads(pair.vmip("a", "sa", "list", "--json").stdout)
    by_dir = {sa["direction"]: sa for sa in sas}
    assert by_dir["out"]["packets"] >= 3 and by_dir["in"]["packets"] >= 3
    locators = json.loads(pair.vmip("a", "locators", "--json").stdout)
    assert any(row.get("source") == "learned" for row in locators), locators


def test_sigterm_removes_tun(pair):
    assert pair.stop("a", signal.SIGTERM) == 0
    links = netns_exec(pair.netns["a"], "ip", "-o", "link").stdout
    assert "vmip0" not in links
    assert not pair.socket("a").exists()
