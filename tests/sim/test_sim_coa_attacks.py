"""Attacks on another MN's care-of address, run against the nodes of a sim world.

An MN's SA proves its home address, never the care-of address its BU names
nor the on-wire source (outside the ICV, RFC 4303 §2).  MN X holds only its
own keys here (the attacker sends from its own underlay endpoint with them)
and names MN Y's CoA: neither the HA nor the CN may bind it, and no locator
of Y's may move to the attacker (docs/security.md, "Locators").
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

from test_sim_iro_handover import CLEAN, MN_CN_MH_SPI
from test_sim_mip_duties import HA_ENDPOINT, endpoint_of, home_bu, mn_sa, on_wire, world  # noqa: F401
from test_sim_scenarios import CN, COA, HOA, bound_on, until

from vmip.mobility import events as ev
from vmip.sim.world import SimWorld
from vmip.wire.mh import AlternateCareOfAddress, BindingUpdate, build_mh_packet

ATTACKER = ("203.0.113.66", 40066)
VICTIM_COA = COA["mn2"]["wifi0"]


def attacker_host(world: SimWorld, received: list | None = None):
    def collect(packet: bytes, endpoint, _link) -> None:
        if received is not None:
            received.append(packet)
    return world.add_host("evil", ATTACKER[0], ATTACKER[1], on_packet=collect)


async def both_registered(world: SimWorld) -> None:
    await world.start_all()
    await until(world, "mn registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
    await until(world, "mn2 registered", lambda: bound_on(world, "mn2", VICTIM_COA), 5)


def test_an_mn_naming_another_mns_coa_in_a_home_bu_takes_neither_binding_nor_locator(world):
    """X's authentic home BU with AltCoA and on-wire source = Y's CoA, sent from
    X's own endpoint: the HA drops it (bu_coa_in_use); Y's locator and X's
    binding stay."""
    async def scenario():
        await both_registered(world)
        ha = world.nodes["ha"]
        core = ha.mobility.ha
        before = ha.locators.lookup(IPv6Address(VICTIM_COA)).endpoint
        attacker = attacker_host(world)
        sa = mn_sa(world, "mn-ha-mh-out")
        attacker.send(on_wire(home_bu(world, VICTIM_COA), sa, world.loop.time(), VICTIM_COA),
                      HA_ENDPOINT)
        hoa = IPv6Address(HOA["mn"])
        await until(world, "the BU processed", lambda: core.counters["bu_coa_in_use"]
                    or core.binding(hoa).coa == IPv6Address(VICTIM_COA), 2)
        await asyncio.sleep(0.2)
        return before, ha.locators.lookup(IPv6Address(VICTIM_COA)).endpoint, core.binding(hoa).coa
    before, after, mn_coa = world.run(scenario())
    assert after == before and after != ATTACKER, "Y's CoA locator moved to the attacker"
    assert mn_coa == IPv6Address(COA["mn"]["wifi0"]), "the HA bound X to Y's CoA"
    assert world.nodes["ha"].mobility.ha.counters["bu_coa_in_use"] == 1


def test_a_refused_bu_naming_another_mns_coa_moves_no_locator_and_its_ba_comes_back(world):
    """X's correspondent BU to its HA (refused, status 139) naming Y's CoA as
    AltCoA and on-wire source: the refusal goes back to where the BU came
    from, and Y's locator at the HA stays Y's."""
    async def scenario():
        await both_registered(world)
        ha = world.nodes["ha"]
        core = ha.mobility.ha
        before = ha.locators.lookup(IPv6Address(VICTIM_COA)).endpoint
        received: list[bytes] = []
        attacker = attacker_host(world, received)
        sa = mn_sa(world, "mn-ha-mh-out")
        refused = core.counters["refused_139"]
        attacker.send(on_wire(home_bu(world, VICTIM_COA, home=False), sa, world.loop.time(),
                              VICTIM_COA), HA_ENDPOINT)
        await until(world, "refused", lambda: core.counters["refused_139"] > refused, 2)
        await until(world, "the refusal BA back at the attacker", lambda: received, 1)
        return before, ha.locators.lookup(IPv6Address(VICTIM_COA)).endpoint, received
    before, after, received = world.run(scenario())
    assert after == before and after != ATTACKER, "a refused BU moved Y's locator"
    # The BA to X's HoA, remapped to the CoA the BU came from (draft §3.3).
    assert IPv6Address(received[0][24:40]) == IPv6Address(VICTIM_COA)


def cn_bu(world: SimWorld, coa: str) -> bytes:
    hoa = IPv6Address(HOA["mn"])
    seq = world.nodes["cn"].mobility.cn.binding(hoa).sequence
    bu = BindingUpdate((seq + 1) % 65536, 100, ack=True,
                       options=(AlternateCareOfAddress(IPv6Address(coa)),))
    return build_mh_packet(bu, hoa, IPv6Address(CN))


def test_an_mn_naming_another_mns_coa_at_the_cn_takes_neither_binding_nor_locator(world):
    """The same at the CN: X's BU naming Y's CoA is dropped (bu_coa_in_use), so
    Y's CoA is neither pending for X (its AOTC would reach the attacker) nor
    moved to the attacker's endpoint."""
    async def scenario():
        await both_registered(world)
        cn = world.nodes["cn"]
        core = cn.mobility.cn
        hoa = IPv6Address(HOA["mn"])
        before = cn.locators.lookup(IPv6Address(VICTIM_COA)).endpoint
        attacker = attacker_host(world)
        sa = mn_sa(world, "mn-cn-out")
        attacker.send(on_wire(cn_bu(world, VICTIM_COA), sa, world.loop.time(), VICTIM_COA),
                      endpoint_of(world, "cn"))
        await until(world, "the BU processed", lambda: core.counters["bu_coa_in_use"]
                    or core.pending_coa(hoa) is not None, 2)
        await asyncio.sleep(0.2)
        return before, cn.locators.lookup(IPv6Address(VICTIM_COA)).endpoint, \
            core.pending_coa(hoa), core.accepting_from(hoa)
    before, after, pending, accepting = world.run(scenario())
    assert after == before and after != ATTACKER, "Y's CoA locator at the CN moved to the attacker"
    assert pending is None and accepting == IPv6Address(COA["mn"]["wifi0"])
    assert world.nodes["cn"].mobility.cn.counters["bu_coa_in_use"] == 1


def test_an_unproven_coa_at_the_cn_moves_no_learned_locator(world):
    """Y moved to lte: its wifi CoA is named by nobody now, but the CN still has
    Y's learned locator for it.  X names that address in a BU: pending (an
    AOTC goes out), but an unproven CoA vouches for creating a locator only,
    so the entry stays where Y left it."""
    left = VICTIM_COA

    async def scenario():
        await both_registered(world)
        world.set_link("mn2", "wifi0", False)
        await until(world, "mn2 on lte", lambda: bound_on(world, "mn2", COA["mn2"]["lte0"]), 10)
        cn = world.nodes["cn"]
        core = cn.mobility.cn
        hoa = IPv6Address(HOA["mn"])
        before = cn.locators.lookup(IPv6Address(left))
        assert before is not None and before.source == "learned"
        attacker = attacker_host(world)
        sa = mn_sa(world, "mn-cn-out")
        attacker.send(on_wire(cn_bu(world, left), sa, world.loop.time(), left),
                      endpoint_of(world, "cn"))
        await until(world, "pending", lambda: core.pending_coa(hoa) == IPv6Address(left), 2)
        await asyncio.sleep(0.2)
        return before.endpoint, cn.locators.lookup(IPv6Address(left)).endpoint
    before, after = world.run(scenario())
    assert after == before and after != ATTACKER, "an unproven CoA moved a learned locator"


VICTIMS = ("2001:db8:77::7", "2001:db8:20::99", "2001:db8:100::1")


def test_a_held_back_aoto_resent_under_any_address_creates_no_locator() -> None:
    """An on-path attacker re-sends the MN's early-test AOTO (draft §4.5.2) from
    its own endpoint under an address the CN has no learned locator for: the
    AOTC goes back to the attacker's endpoint, and no locator is created that
    would send that address's traffic there."""
    for victim in VICTIMS:
        address = IPv6Address(victim)
        with SimWorld(seed=13, profiles=CLEAN, layout="split") as world:
            held: list[bytes] = []

            def hold_back(sender, packet: bytes, destination, held=held) -> bool:
                if not held and sender.node == "mn" and sender.name == "lte0" \
                        and len(packet) > 44 and packet[6] == 50 \
                        and int.from_bytes(packet[40:44], "big") == MN_CN_MH_SPI:
                    held.append(packet)
                    return True
                return False
            world.network.interceptors.append(hold_back)

            async def scenario(world=world, held=held, address=address):
                await world.start_all()
                cn = world.nodes["cn"]
                await until(world, "the AOTO held back", lambda: held, 5)
                before = cn.locators.lookup(address)
                received: list[bytes] = []
                attacker = attacker_host(world, received)
                attacker.send(held[0][:8] + address.packed + held[0][24:], ("192.0.2.18", 6275))
                await until(world, "the CN challenging that address", lambda: any(
                    isinstance(e.event, ev.AotChallengeSent) and e.event.address == address
                    for e in cn.events.timeline), 2)
                await until(world, "the AOTC back at the attacker", lambda: received, 1)
                return before, cn.locators.lookup(address), received
            before, after, received = world.run(scenario())
        assert after is before or after.endpoint != ATTACKER, \
            f"an AOTO under {victim} pointed its locator at the attacker"
        assert after is None or after.source != "learned", victim
        assert received and IPv6Address(received[0][24:40]) == address, victim


MN2_CN_MH_SPI = 0x2301


def test_one_mn_flooding_early_tests_evicts_no_other_mns_pending_nonce(world):
    """X sends more early-test AOTOs (draft §4.5.2), each under another
    address, than the CN's nonce store holds, while Y's AOTR for its standby
    CoA (its own early test) is still on its way: Y's nonce stays, its AOTR
    proves the CoA."""
    mn2 = IPv6Address(HOA["mn2"])
    lte = IPv6Address(COA["mn2"]["lte0"])
    held: list = []

    def hold_aotr(sender, packet: bytes, destination) -> bool:
        if sender.node == "mn2" and len(packet) > 44 and packet[6] == 50 \
                and int.from_bytes(packet[40:44], "big") == MN2_CN_MH_SPI \
                and world.nodes["cn"].mobility.cn.testing(mn2, lte):
            held.append((sender, packet, destination))
            return True
        return False
    world.network.interceptors.append(hold_aotr)

    async def scenario():
        await world.start_all()
        core = world.nodes["cn"].mobility.cn
        await until(world, "Y's AOTR held back", lambda: held, 10)
        await until(world, "mn registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        world.network.interceptors.remove(hold_aotr)
        attacker = attacker_host(world)
        sa = mn_sa(world, "mn-cn-out")
        from vmip.wire.mh import AotOffer
        offer = build_mh_packet(AotOffer(), IPv6Address(HOA["mn"]), IPv6Address(CN))
        flood = core.nonces.capacity + 16
        challenged = len(core.nonces) and core.nonces.evictions
        for index in range(flood):
            attacker.send(on_wire(offer, sa, world.loop.time(), f"2001:db8:66::{index + 1:x}"),
                          endpoint_of(world, "cn"))
            if index % 64 == 63:
                await asyncio.sleep(0.01)
        await until(world, "the flood processed",
                    lambda: core.nonces.evictions - challenged >= 16, 5)
        unknown = core.counters["aotr_unknown_address"]
        for sender, packet, destination in held:
            world.nodes["mn2"].links[sender.name].send(packet, destination)
        await until(world, "Y's AOTR processed", lambda: core.counters["aotr_unknown_address"]
                    > unknown or core.proofs.use(mn2, lte), 2)
        return core.proofs.use(mn2, lte), core.counters["aotr_unknown_address"] - unknown
    proven, unknown = world.run(scenario())
    assert unknown == 0, "Y's pending nonce was evicted by X's early tests"
    assert proven
