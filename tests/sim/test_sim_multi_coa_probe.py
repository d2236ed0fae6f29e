"""A secondary link's probes after the primary moves back to a returning link.

With one binding per link, wifi0 comes back as a secondary binding and
becomes the primary one moments later; lte0, the primary until then, stays
bound.  Its probes (binding refreshes to the HA every second) must still be
answered: the HA's Binding Acknowledgement comes to lte0's CoA, and the MN's
inbound rule for its MH SA has to expect it there for as long as lte0 is bound,
not only for the second after the swap in which a packet to a CoA just left
is still taken.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

from vmip.lab.emulation import LinkProfile
from vmip.sim.world import SimWorld

LTE_COA = IPv6Address("2001:db8:32::2")
WIFI_COA = IPv6Address("2001:db8:31::2")


def _profiles() -> dict:
    # The lab's access delays (docs/multi-coa.md), no random loss: every
    # unanswered probe is a fault of the nodes.
    fixed = LinkProfile(delay_ms=1.0)
    return {("ha", "eth0"): fixed, ("cn", "eth0"): fixed,
            ("mn2", "wifi0"): fixed, ("mn2", "lte0"): fixed,
            ("mn", "wifi0"): LinkProfile(delay_ms=5.0),
            ("mn", "lte0"): LinkProfile(delay_ms=30.0)}


def test_lte0_probes_stay_answered_after_wifi0_becomes_primary_again():
    with SimWorld(seed=3, profiles=_profiles(), multi_coa=True) as world:
        async def scenario():
            await world.start_all()
            node = world.nodes["mn"]
            core = node.mobility.mn
            await asyncio.sleep(4)
            world.set_link("mn", "wifi0", False)
            await asyncio.sleep(5)
            assert core.primary_bid == 2
            world.set_link("mn", "wifi0", True)
            back = node.clock()
            while core.primary_bid != 1:
                assert node.clock() - back < 10, "wifi0 never became the primary link again"
                await asyncio.sleep(0.01)
            assert core.care_of_addresses == {1: WIFI_COA, 2: LTE_COA}
            before = node.link_quality.link("lte0", node.clock())
            drops = node.mobility.counters["rx_drop_remap"]
            # Several probe intervals past the one second a left CoA is still taken.
            await asyncio.sleep(6)
            now = node.clock()
            lte = node.link_quality.link("lte0", now)
            assert lte is not None and before is not None
            assert node.mobility.counters["rx_drop_remap"] == drops
            assert lte.loss == 0.0 and lte.lost_in_row == 0
            assert lte.outcomes >= before.outcomes + 5     # one probe a second
            # The MN's inbound MH rule expects the HA's answers at both CoAs.
            expected = {str(rule) for rule in node.mobility.remap.rules()
                        if "dir: in" in str(rule) and "exp. dst" in str(rule)}
            assert any(str(LTE_COA) in rule for rule in expected), expected
            assert any(str(WIFI_COA) in rule for rule in expected), expected
        world.run(scenario())
