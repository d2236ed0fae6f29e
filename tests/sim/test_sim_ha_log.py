"""Running nodes: the HA's per-BU mobility events are debug, the MN's own stay info."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv6Address

from vmip.ipsec.sa import Direction
from vmip.sim.scenario import demo_profiles
from vmip.sim.world import SimWorld


def test_the_ha_logs_its_per_bu_events_at_debug_and_the_mn_at_info(caplog):
    async def scenario(world):
        await world.start_all()
        start = world.loop.time()
        while world.nodes["ha"].mobility.ha.binding(IPv6Address("2001:db8:100::10")) is None:
            assert world.loop.time() - start < 10, "mn not registered"
            await asyncio.sleep(0.01)

    with caplog.at_level(logging.INFO, logger="vmip"), \
            SimWorld(seed=3, profiles=demo_profiles()) as world:
        world.run(scenario(world))
    events = [r.getMessage() for r in caplog.records
              if r.name == "vmip.node.mobility" and r.getMessage().startswith("mobility ")]
    assert "mobility BindingAccepted" in events          # the MN's
    assert "mobility BindingCached" not in events        # the HA's and the CN's, per BU
    created = [r for r in caplog.records if r.getMessage() == "home registration created"]
    assert created, "the HA still logs the binding it created at info"


def test_a_move_migrates_the_tunnel_sas_without_info_lines_per_bu(caplog):
    """The HA migrates an MN's tunnel SAs on each move: with thousands of MNs that
    is per BU, so the SAD's MIGRATE line is debug."""
    mn, lte = IPv6Address("2001:db8:100::10"), IPv6Address("2001:db8:32::2")

    async def scenario(world):
        await world.start_all()
        ha = world.nodes["ha"]
        start = world.loop.time()
        while ha.mobility.ha.binding(mn) is None:
            assert world.loop.time() - start < 10, "mn not registered"
            await asyncio.sleep(0.01)
        world.set_link("mn", "wifi0", False)
        while (binding := ha.mobility.ha.binding(mn)) is None or binding.coa != lte:
            assert world.loop.time() - start < 20, "mn not moved"
            await asyncio.sleep(0.01)
        assert ha.sad.get(0x1202, Direction.OUT, lte) is not None   # the tunnel followed

    with caplog.at_level(logging.DEBUG, logger="vmip"), \
            SimWorld(seed=3, profiles=demo_profiles()) as world:
        world.run(scenario(world))
    migrated = [r for r in caplog.records if r.getMessage() == "sa migrated"]
    assert migrated and all(r.levelno == logging.DEBUG for r in migrated)
