"""A BU held back on the MN's wifi path and released after wifi's binding was
removed, on running nodes (RFC 5648 BIDs; docs/multi-coa.md, "A removed
BID's sequence number outlives its binding").

The attacker sits on the MN's wifi link: it takes the MN's next home BU for
BID 1 (wifi) off the wire, and every one after it on that link, so the HA
never sees them.  Wifi then goes; the MN deregisters BID 1 through lte.  The
attacker sends the held BU to the HA from its own host: ESP's anti-replay
window has never seen its number and takes it.  The HA must not bind BID 1
to the wifi address again: as the lowest BID it would carry the tunnel, and
the MN's traffic would go to an address it left, which may be someone
else's by then.
"""

from __future__ import annotations

import asyncio

from test_sim_mcoa import CLEAN, HOA, LTE, WIFI, both_bound, configure, esp_spi, start, until

from vmip.ipsec.sa import Direction, Mode
from vmip.sim.world import SimWorld

#: The MN's MH transport SA towards the HA (configs/README.md).
MN_HA_MH_OUT = 0x1101
HA_ENDPOINT = ("192.0.2.2", 6275)


def test_a_home_bu_held_back_until_its_bid_was_deregistered_binds_nothing() -> None:
    with SimWorld(seed=9, profiles=CLEAN, layout="split") as world:
        configure(world)
        held: list[bytes] = []
        armed = [False]

        def hold_back(sender, packet: bytes, destination) -> bool:
            if armed[0] and sender.node == "mn" and sender.name == "wifi0" \
                    and esp_spi(packet) == MN_HA_MH_OUT:
                held.append(packet)
                return True       # the HA never sees it
            return False
        world.network.interceptors.append(hold_back)
        eve = world.add_host("eve", "203.0.113.66")

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            mn = world.nodes["mn"].mobility
            ha = world.nodes["ha"].mobility.ha
            armed[0] = True
            assert mn.mn.probe(1, world.loop.time())
            mn.pump(world.loop.time())
            await until(world, "wifi's refresh held back", lambda: held, 1)
            world.set_link("mn", "wifi0", False)
            await until(world, "BID 1 gone at the HA",
                        lambda: [(b.bid, b.coa) for b in ha.bindings_of(HOA)] == [(2, LTE)], 5)
            await asyncio.sleep(0.5)
            refused = ha.counters["refused_135"]
            eve.send(held[0], HA_ENDPOINT)
            await until(world, "the held BU processed",
                        lambda: ha.counters["refused_135"] > refused
                        or len(ha.bindings_of(HOA)) > 1, 1)
            await asyncio.sleep(0.3)
            tunnel = [info.dst for info in world.nodes["ha"].sad.dump(publish=False)
                      if info.mode is Mode.TUNNEL and info.direction is Direction.OUT
                      and info.dst in (WIFI, LTE)]
            return [(b.bid, b.coa) for b in ha.bindings_of(HOA)], tunnel, \
                ha.counters["refused_135"] - refused

        bindings, tunnel, refusals = world.run(scenario())
        assert bindings == [(2, LTE)], "the held-back BU bound the CoA the MN left"
        assert tunnel == [LTE], "the HA's tunnel followed the held-back BU"
        assert refusals == 1
