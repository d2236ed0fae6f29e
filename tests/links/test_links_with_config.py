"""The link layer fed with what vmip.config really produces."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from linktest_helpers import Inbox, run

from vmip.links import LocatorTable, UdpDriver, make_driver

config = pytest.importorskip("vmip.config", reason="the config loader (vmip.config) is missing")

NODE = """
[node]
name = "t"
[tun]
addresses = ["2001:db8:100::5/64"]
[[link]]
name = "eth0"
bind = "127.0.0.1"
keepalive = 20
[[link]]
name = "esp0"
driver = "rfc3948"
[[peer]]
name = "ha"
prefixes = ["2001:db8:100::1/128"]
endpoint = "192.0.2.2:6275"
default = true
[[peer]]
name = "cn"
prefixes = ["2001:db8:20::/48"]
endpoint = "[2001:db8:20::2]:6275"
[[peer]]
name = "gw"
prefixes = ["198.51.100.0/24"]
endpoint = "198.51.100.1:4500"
framing = "rfc3948"
"""


def parsed():
    return config.parse_config(NODE, "t.toml", check_key_files=False)


def test_locator_table_from_config_peers():
    table = LocatorTable.from_peers(parsed().peers)
    assert table.lookup("2001:db8:20::9").endpoint == ("2001:db8:20::2", 6275)
    assert table.lookup("2001:db8:100::1").endpoint == ("192.0.2.2", 6275)
    # rfc3948 links present IPv4 underlay addresses IPv4-mapped.
    gateway = table.lookup("::ffff:198.51.100.7")
    assert (gateway.peer, gateway.endpoint, gateway.framing) == \
        ("gw", ("198.51.100.1", 4500), "rfc3948")
    assert table.lookup("2001:db8:99::1").peer == "ha"            # default peer
    assert {row["framing"] for row in table.rows()} == {"udp", "rfc3948"}


def test_drivers_from_config_links_start_and_carry_packets():
    cfg = parsed()
    drivers = [make_driver(link) for link in cfg.links]
    assert [d.kind for d in drivers] == ["udp", "rfc3948"]
    assert cfg.links[1].port == 4500

    async def scenario():
        # Port 0 so the test never collides with a real 6275.
        inbox = Inbox()
        link = UdpDriver(dataclasses.replace(cfg.links[0], port=0))
        await link.start(asyncio.get_running_loop(), inbox)
        try:
            packet = bytes.fromhex("60000000000059ff") + bytes(32)
            link.send(packet, link.local_endpoint)
            got, endpoint, _ = await inbox.get()
            assert got == packet and endpoint == link.local_endpoint
            assert link.keepalive_interval == 20
        finally:
            await link.close()

    run(scenario)
