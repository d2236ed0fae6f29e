"""RFC 6275 / RFC 3776 duties of running nodes, on the in-process network.

The HA's and the MN's obligations that only show between running nodes: the
SA an MH must come through (RFC 3776 §4, RFC 4877 §4), deregistration when
an MN stops (RFC 6275 §11.7.1), the BU rate limit (§11.8), the HA's answers
to what it must refuse (§9.5.1, §10.3.1) and the ICMPv6 Parameter Problem
for a malformed MH (§9.2).  Each test drives the lab's four nodes
(:class:`vmip.sim.world.SimWorld`) and, where the point is an attack,
sends forged datagrams from a host of its own.
"""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from test_sim_scenarios import CN, COA, HA, HOA, bound_on, until

from vmip.config import load_config
from vmip.ipsec.esp import EspSA, transport_encap, tunnel_encap
from vmip.node.keying_policy import static_keys
from vmip.sim.scenario import demo_profiles
from vmip.sim.world import SimWorld
from vmip.wire.mh import AlternateCareOfAddress, BindingUpdate, build_mh_packet

HA_ENDPOINT = ("192.0.2.2", 6275)
#: The lab's SPIs (configs/README.md): MN -> HA MH transport SA, MN -> HA tunnel SA.
MN_HA_MH_OUT, MN_HA_TUNNEL_OUT = 0x1101, 0x1201


@pytest.fixture
def world():
    with SimWorld(seed=3, profiles=demo_profiles()) as sim:
        yield sim


def mn_sa(world: SimWorld, name: str, ahead: int = 10_000) -> EspSA:
    """One of the MN's static SAs, as an attacker holding its keys would have it."""
    params = static_keys(load_config(world.config_paths["mn"])).sas[name]
    sa = EspSA(params, world.loop.time())
    sa.seq = ahead       # ahead of what the MN has sent on it
    return sa


def home_bu(world: SimWorld, coa: str, lifetime_units: int = 100) -> bytes:
    """A home registration from the MN's HoA naming *coa*, newer than the HA's entry."""
    hoa = IPv6Address(HOA["mn"])
    entry = world.nodes["ha"].mobility.ha.binding(hoa)
    sequence = (entry.sequence + 1) % 65536 if entry is not None else 1
    bu = BindingUpdate(sequence, lifetime_units, ack=True, home_registration=True,
                       options=(AlternateCareOfAddress(IPv6Address(coa)),))
    return build_mh_packet(bu, hoa, IPv6Address(HA))


# -- item: an MH only through the SA its policy names -----------------------------------


def test_a_bu_inside_the_mn_ha_tunnel_is_dropped_and_counted(world) -> None:
    """The attacker holds the MN's tunnel SA (not its MH SA) and sends a BU for
    the MN's HoA inside it, naming a CoA of its own.  The tunnel's selectors
    cover everything the HoA sends, so the RFC 4301 check passes; the MH must
    still have come on the MH transport SA (RFC 3776 §4): dropped, counted,
    the binding unchanged.  The same BU on the MH SA is accepted (the attack
    is refused for the SA, not for its contents)."""
    evil_coa = "2001:db8:66::6"

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        ha = world.nodes["ha"]
        hoa = IPv6Address(HOA["mn"])
        attacker = world.add_host("evil", "203.0.113.66", 40066)
        before = ha.counters["rx_drop_mh_not_transport"] + ha.counters["rx_drop_mh_wrong_sa"]
        tunnel = mn_sa(world, "mn-ha-tunnel-out")
        attacker.send(tunnel_encap(home_bu(world, evil_coa), tunnel, world.loop.time()),
                      HA_ENDPOINT)
        await until(world, "the HA refusing the BU", lambda: ha.counters[
            "rx_drop_mh_not_transport"] + ha.counters["rx_drop_mh_wrong_sa"] > before, 2)
        assert ha.mobility.ha.binding(hoa).coa == IPv6Address(COA["mn"]["wifi0"])
        # Control: on the MH SA the HA takes it (the AltCoA is the MN's word, draft appendix A).
        mh_sa = mn_sa(world, "mn-ha-mh-out")
        wire = transport_encap(home_bu(world, COA["mn"]["lte0"]), mh_sa, world.loop.time())
        # On the wire the HoA is remapped to the CoA (draft §3.3): the HA's
        # inbound rule puts the HoA back.
        wire = wire[:8] + IPv6Address(COA["mn"]["wifi0"]).packed + wire[24:]
        attacker.send(wire, HA_ENDPOINT)
        await until(world, "the HA accepting the BU on the MH SA", lambda: ha.mobility.ha.binding(
            hoa).coa == IPv6Address(COA["mn"]["lte0"]), 2)
    world.run(scenario())


# -- item: an MN that stops deregisters ----------------------------------------------------


def test_a_stopping_mn_empties_the_caches_of_its_ha_and_correspondents(world) -> None:
    """Stopping the MN (SIGTERM and `world.stop` both end in Node.close) sends
    lifetime-0 BUs to the HA, the CN and the other MN (RFC 6275 §11.7.1) and
    waits for their BAs: within a second no cache holds the MN's HoA any more,
    where before they kept it for the binding lifetime (420 s)."""
    hoa = IPv6Address(HOA["mn"])

    def holders() -> list[str]:
        found = []
        for name in ("ha", "cn", "mn2"):
            mobility = world.nodes[name].mobility
            caches = [mobility.cn.bindings()]
            if mobility.ha is not None:
                caches.append(mobility.ha.bindings())
            if any(entry.hoa == hoa for cache in caches for entry in cache):
                found.append(name)
        return found

    async def scenario():
        await world.start_all()
        await until(world, "registered with the HA, the CN and mn2", lambda: bound_on(
            world, "mn", COA["mn"]["wifi0"], (HA, CN, HOA["mn2"])), 5)
        assert holders() == ["ha", "cn", "mn2"]
        started = world.loop.time()
        await world.stop("mn")
        took = world.loop.time() - started
        assert holders() == []
        assert took <= 1.0
    world.run(scenario())


def test_a_stop_waits_at_most_a_second_for_peers_that_do_not_answer(world) -> None:
    """The MN's link is dead: no BA can come.  The stop gives up after
    STOP_GRACE, counts it, and closes the node anyway."""
    from vmip.node.runtime import STOP_GRACE

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        world.network.set_up("mn", "wifi0", False)     # unnoticed: no move to lte
        mn = world.nodes["mn"]
        started = world.loop.time()
        await world.stop("mn")
        assert world.loop.time() - started == pytest.approx(STOP_GRACE, abs=0.05)
        assert mn.counters["stop_step_timeout"] == 1
        assert mn.tun is None and not mn.links             # closed all the same
    world.run(scenario())
