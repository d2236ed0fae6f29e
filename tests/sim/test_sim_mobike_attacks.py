"""MOBIKE under attack, on running nodes (the in-process network, IKE keys).

The source address of UPDATE_SA_ADDRESSES is not covered by the message's
integrity check (RFC 4555 §5.2).  The HA, as MOBIKE responder, must verify a
new address before it moves the IKE SA there (return routability, §3.5), and
the MN-HA tunnel CHILD_SAs follow the binding, not MOBIKE (docs/security.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from ipaddress import IPv6Address

from vmip.ipsec.sa import Direction, Mode
from vmip.sim.scenario import demo_profiles
from vmip.sim.world import SimWorld
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA = "2001:db8:100::10"
WIFI, LTE = "2001:db8:31::2", "2001:db8:32::2"
EVIL = "2001:db8:666::6"
HA_ENDPOINT = ("192.0.2.2", 6275)
INFORMATIONAL, RESPONSE_FLAG = 37, 0x20


def ike_request(packet: bytes, src: str, dst: str) -> bool:
    """An IPv6/UDP IKE INFORMATIONAL request from *src* to *dst* (port 500, no marker)."""
    return (len(packet) >= 76 and packet[0] >> 4 == 6 and packet[6] == 17
            and packet[8:24] == IPv6Address(src).packed
            and packet[24:40] == IPv6Address(dst).packed
            and int.from_bytes(packet[42:44], "big") == 500
            and packet[48 + 18] == INFORMATIONAL and not packet[48 + 19] & RESPONSE_FLAG)


def with_source(packet: bytes, src: str) -> bytes:
    """The same UDP datagram with another IPv6 source (checksum recomputed)."""
    source, dst = IPv6Address(src).packed, packet[24:40]
    udp = build_udp(int.from_bytes(packet[40:42], "big"), int.from_bytes(packet[42:44], "big"),
                    packet[48:], source, dst)
    return build_ipv6_header(source, dst, 17, len(udp)) + udp


def bound_on(world: SimWorld, coa: str) -> bool:
    entries = world.nodes["mn"].mobility.status()["mn"]["binding_update_list"]
    return any(e["peer"] == HA and e["state"] == "bound" and e["coa"] == coa for e in entries)


def ha_ike_remotes(world: SimWorld) -> list[str]:
    return [sa["remote"] for sa in world.nodes["ha"].keying.listing()["sas"]]


def ha_ike_stats(world: SimWorld) -> dict[str, int]:
    total: dict[str, int] = {}
    for sa in world.nodes["ha"].keying.listing()["sas"]:
        for key, value in sa["stats"].items():
            total[key] = total.get(key, 0) + value
    return total


def ha_tunnel_outer(world: SimWorld) -> set[str]:
    """Outer destinations of the HA's outbound tunnel SAs."""
    sad = world.nodes["ha"].keying.services.sad
    return {str(info.dst) for info in sad.dump(publish=False)
            if info.mode is Mode.TUNNEL and info.direction is Direction.OUT}


class Watch:
    """Samples the HA every 10 ms of virtual time: where did its IKE SA and tunnel SAs point?"""

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.ike_remotes: set[str] = set()
        self.tunnel_outer: set[str] = set()

    def sample(self) -> None:
        self.ike_remotes.update(r.rsplit("[", 1)[0] for r in ha_ike_remotes(self.world))
        self.tunnel_outer |= ha_tunnel_outer(self.world)

    async def until(self, what: str, check, timeout: float) -> None:
        start = self.world.loop.time()
        while True:
            self.sample()
            if check():
                return
            if self.world.loop.time() - start > timeout:
                raise AssertionError(f"{what}: not within {timeout} virtual seconds")
            await asyncio.sleep(0.01)


def test_an_update_resent_by_an_on_path_attacker_from_its_address_moves_nothing() -> None:
    """The attacker sits on the MN's lte path: it takes the MN's
    UPDATE_SA_ADDRESSES off the wire and delivers it first, from its own
    underlay endpoint and with its own IPv6 address as source.  The HA must
    not move the IKE SA or any tunnel SA there; the MN's retransmission from
    its real CoA then moves the IKE SA to the CoA."""
    held: list[bytes] = []

    def hold_update(src_access, packet: bytes, destination) -> bool:
        if not held and src_access.node == "mn" and ike_request(packet, LTE, HA):
            held.append(packet)
            return True
        return False

    with SimWorld(seed=5, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            await world.start_all()
            watch = Watch(world)
            await watch.until("registered on IKE SAs", lambda: bound_on(world, WIFI), 15)
            world.network.interceptors.append(hold_update)
            world.set_link("mn", "wifi0", False)
            await watch.until("the MN's UPDATE_SA_ADDRESSES held back", lambda: held, 5)
            attacker_got: list[bytes] = []
            attacker = world.add_host("evil", "203.0.113.66", 40066,
                                      on_packet=lambda data, *_: attacker_got.append(data))
            attacker.send(with_source(held[0], EVIL), HA_ENDPOINT)
            await watch.until("the HA answering the attacker", lambda: attacker_got, 2)
            assert EVIL not in watch.ike_remotes and EVIL not in watch.tunnel_outer
            await watch.until("the HA's IKE SA at the lte CoA", lambda: any(
                r.startswith(LTE) for r in ha_ike_remotes(world)), 15)
            assert ha_ike_stats(world)["mobike_addresses_verified"] == 1
            await watch.until("bound on lte", lambda: bound_on(world, LTE), 15)
            assert EVIL not in watch.ike_remotes
            assert EVIL not in watch.tunnel_outer
            stats = ha_ike_stats(world)
            # IPv6: the MN sent NO_NATS_ALLOWED, which names its CoA, not the attacker's address.
            assert stats["mobike_unexpected_nat"] == 1
            assert stats["mobike_update_from_elsewhere"] == 1
        world.run(scenario())


def test_a_mobile_node_spoofing_its_update_source_cannot_point_the_ha_at_a_third_party(
        ) -> None:
    """An authenticated MN sends its UPDATE_SA_ADDRESSES (and its
    retransmissions) with the CN's address as source, without NO_NATS_ALLOWED:
    the HA checks the CN's address, which cannot answer with the COOKIE2 it
    never saw; neither the IKE SA nor the MN's tunnel SA ever point at the CN
    (third-party flooding), whatever the HA's CoA checks would say."""
    spoofed = 0

    def spoof_updates(src_access, packet: bytes, destination) -> bool:
        nonlocal spoofed
        if src_access.node == "mn" and ike_request(packet, LTE, HA):
            spoofed += 1
            world.network.transmit(world.nodes["mn"].links["lte0"], with_source(packet, CN),
                                   destination)
            return True
        return False

    with SimWorld(seed=5, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            await world.start_all()
            watch = Watch(world)
            await watch.until("registered on IKE SAs", lambda: bound_on(world, WIFI), 15)
            mn_sa, = world.nodes["mn"].keying._sas_of("ha")
            mn_sa.config = replace(mn_sa.config, mobike_no_nats=False)
            world.network.interceptors.append(spoof_updates)
            world.set_link("mn", "wifi0", False)
            await watch.until("the HA's address check of the CN's address failing",
                              lambda: ha_ike_stats(world).get("mobike_check_failed")
                              or CN in watch.ike_remotes, 60)
            assert spoofed >= 1
            assert CN not in watch.ike_remotes
            assert CN not in watch.tunnel_outer
            assert ha_ike_stats(world)["mobike_checks_sent"] >= 1
        world.run(scenario())


def test_at_the_ha_the_mn_tunnel_sas_follow_the_binding_not_mobike() -> None:
    """MOBIKE moves the HA's IKE SA to the MN's new CoA once it is verified,
    but the MN's tunnel SAs stay at the bound CoA until a Binding Update the HA
    accepted moves them (here the BU is held back for a while)."""
    hold = True

    def only_ike_from_lte(src_access, packet: bytes, destination) -> bool:
        # Everything but IKE from the MN's lte link is lost: the BU (in ESP) too.
        return (hold and src_access.node == "mn" and src_access.name == "lte0"
                and not (len(packet) > 44 and packet[6] == 17
                         and int.from_bytes(packet[42:44], "big") == 500))

    with SimWorld(seed=5, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            nonlocal hold
            await world.start_all()
            watch = Watch(world)
            await watch.until("registered on IKE SAs", lambda: bound_on(world, WIFI), 15)
            world.network.interceptors.append(only_ike_from_lte)
            world.set_link("mn", "wifi0", False)
            await watch.until("the HA's IKE SA at the lte CoA", lambda: any(
                r.startswith(LTE) for r in ha_ike_remotes(world)), 15)
            assert LTE not in ha_tunnel_outer(world) and WIFI in ha_tunnel_outer(world)
            assert world.nodes["ha"].keying.counters["mobike_left_to_binding"] >= 1
            hold = False
            await watch.until("bound on lte", lambda: bound_on(world, LTE), 30)
            await watch.until("the tunnel SA at the lte CoA",
                              lambda: LTE in ha_tunnel_outer(world), 5)
        world.run(scenario())
