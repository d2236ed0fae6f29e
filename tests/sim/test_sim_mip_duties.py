"""RFC 6275 / RFC 3776 duties of running nodes, on the in-process network.

The HA's and the MN's obligations that only show between running nodes: the
SA an MH must come through (RFC 3776, RFC 4877: ESP transport mode),
deregistration when an MN stops (RFC 6275 §11.7.1), the BU rate limit
(§11.8), the HA's answers to what it must refuse (§9.5.1, §10.3.1) and the
ICMPv6 Parameter Problem for a malformed MH (§9.2).  Each test drives the lab's four nodes
(:class:`vmip.sim.world.SimWorld`) and, where the point is an attack,
sends forged datagrams from a host of its own.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address, IPv6Network

import pytest
from test_sim_scenarios import CN, COA, HA, HOA, bound_on, until

from vmip.config import load_config
from vmip.ipsec.esp import EspSA, transport_encap, tunnel_encap
from vmip.mobility.events import (
    AotOfferSent,
    AotResponseSent,
    BindingErrorReceived,
    BindingRefused,
    BindingUpdateSent,
)
from vmip.node.keying_policy import static_keys
from vmip.sim.scenario import demo_profiles
from vmip.sim.world import SimWorld
from vmip.wire.checksum import upper_layer_checksum
from vmip.wire.mh import (
    AlternateCareOfAddress,
    BindingAckStatus,
    BindingErrorStatus,
    BindingUpdate,
    UnknownMobilityMessage,
    build_mh_packet,
)

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


def home_bu(world: SimWorld, coa: str, lifetime_units: int = 100, ahead: int = 1,
            home: bool = True) -> bytes:
    """A BU from the MN's HoA to the HA naming *coa*, *ahead* past the HA's entry."""
    hoa = IPv6Address(HOA["mn"])
    entry = world.nodes["ha"].mobility.ha.binding(hoa)
    sequence = ((entry.sequence if entry is not None else 0) + ahead) % 65536
    bu = BindingUpdate(sequence, lifetime_units, ack=True, home_registration=home,
                       options=(AlternateCareOfAddress(IPv6Address(coa)),))
    return build_mh_packet(bu, hoa, IPv6Address(HA))


def on_wire(packet: bytes, sa: EspSA, now: float, onwire_src: str) -> bytes:
    """*packet* in transport ESP on *sa*, its source remapped to *onwire_src* (draft §3.3)."""
    wire = transport_encap(packet, sa, now)
    return wire[:8] + IPv6Address(onwire_src).packed + wire[24:]


def endpoint_of(world: SimWorld, node: str) -> tuple[str, int]:
    return str(world.plan.node(node).links[0].node_ipv4.ip), 6275


# -- item: an MH only through the SA its policy names -----------------------------------


def test_a_bu_inside_the_mn_ha_tunnel_is_dropped_and_counted(world) -> None:
    """The attacker holds the MN's tunnel SA (not its MH SA) and sends a BU for
    the MN's HoA inside it, naming a CoA of its own.  The tunnel's selectors
    cover everything the HoA sends, so the RFC 4301 check passes; the MH must
    still have come on the MH transport SA (RFC 3776): dropped, counted,
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
        # On the wire the HoA is remapped to the CoA (draft §3.3): the HA's
        # inbound rule puts the HoA back.
        attacker.send(on_wire(home_bu(world, COA["mn"]["lte0"]), mh_sa, world.loop.time(),
                              COA["mn"]["wifi0"]), HA_ENDPOINT)
        await until(world, "the HA accepting the BU on the MH SA", lambda: ha.mobility.ha.binding(
            hoa).coa == IPv6Address(COA["mn"]["lte0"]), 2)
    world.run(scenario())


def test_mh_type_selectors_decide_which_sa_carries_which_mh_type(world) -> None:
    """MH-type selectors, as in RFC 3776's example SPDs: the HA's SPD says MH
    type 99 from the MN must come on another SA than the MN's MH SA.  The MN's
    type-99 message on its MH SA is then dropped and counted before any core
    sees it, while its BUs on the same SA still register (RFC 4301 §4.4.1.1: the MH type is a selector)."""
    from vmip.ipsec.sa import Direction
    from vmip.ipsec.spd import Action, Policy, Selector

    hoa, ha_address = IPv6Address(HOA["mn"]), IPv6Address(HA)
    unknown = build_mh_packet(UnknownMobilityMessage(99, bytes(10)), hoa, ha_address)

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        ha = world.nodes["ha"]
        ha.spd.add(Policy("mh-99-from-mn", Direction.IN, Selector(
            local=IPv6Network(f"{HA}/128"), remote=IPv6Network(f"{HOA['mn']}/128"), proto=135,
            mh_type=99), Action.PROTECT, ("mn-mh-99-in",), priority=5))
        world.tuns["mn"].inject(unknown)
        await until(world, "the type-99 message refused", lambda: ha.counters[
            "rx_drop_mh_wrong_sa"] == 1, 2)
        assert ha.mobility.ha.counters["unknown_mh_type"] == 0
        world.set_link("mn", "wifi0", False)          # a move: a BU on the MH SA
        await until(world, "bound on lte", lambda: bound_on(world, "mn", COA["mn"]["lte0"],
                                                             (HA,)), 5)
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


# -- item: the home agent's RFC 6275 duties ------------------------------------------------


def test_the_ha_answers_an_unknown_mh_type_with_one_binding_error_a_second(world) -> None:
    """The MN's host sends MH type 99 to the HA, three times at once, on the MN's
    MH SA: the HA answers one Binding Error, status 2 (RFC 6275 §9.2), rate
    limited per source (§9.3.3), which the running MN receives."""
    hoa, ha_address = IPv6Address(HOA["mn"]), IPv6Address(HA)
    unknown = build_mh_packet(UnknownMobilityMessage(99, bytes(10)), hoa, ha_address)

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        mn, ha = world.nodes["mn"], world.nodes["ha"]
        for _ in range(3):
            world.tuns["mn"].inject(unknown)

        def errors() -> list:
            return [e.event for e in mn.events.timeline
                    if isinstance(e.event, BindingErrorReceived)]

        await until(world, "a Binding Error at the MN", errors, 2)
        await until(world, "the HA counting three", lambda: ha.mobility.ha.counters[
            "unknown_mh_type"] == 3, 2)
        assert [(e.peer, e.status) for e in errors()] == [
            (ha_address, BindingErrorStatus.UNRECOGNIZED_MH_TYPE)]
        assert ha.mobility.ha.counters["binding_error_rate_limited"] == 2
    world.run(scenario())


def test_the_ha_refuses_a_correspondent_bu_for_a_registered_home_address(world) -> None:
    """A BU with H=0 for a HoA the HA holds a home registration of: status 139,
    registration type change disallowed (RFC 6275 §9.5.1), and the home
    registration stays."""
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        mn, ha = world.nodes["mn"], world.nodes["ha"]
        world.tuns["mn"].inject(home_bu(world, COA["mn"]["wifi0"], home=False))
        await until(world, "status 139 sent", lambda: ha.mobility.ha.counters[
            f"refused_{BindingAckStatus.REGISTRATION_TYPE_CHANGE_DISALLOWED}"] == 1, 2)
        # The MN's core got the BA (it asked nothing: dropped as unexpected).
        await until(world, "the BA at the MN", lambda: mn.mobility.mn.counters[
            "ba_unexpected"] == 1, 2)
        assert ha.mobility.ha.binding(IPv6Address(HOA["mn"])).home
    world.run(scenario())


def test_a_full_binding_cache_refuses_one_more_home_address_with_status_130(tmp_path) -> None:
    """``mobility.max_home_bindings = 1`` on the HA: the first MN registers,
    the second gets status 130, insufficient resources (RFC 6275 §9.5.1)."""
    with SimWorld(seed=3, profiles=demo_profiles()) as world:
        config = world.config_paths["ha"]
        text = config.read_text()
        assert "[mobility]\n" in text
        config.write_text(text.replace("[mobility]\n", "[mobility]\nmax_home_bindings = 1\n", 1))

        async def scenario():
            for name in ("ha", "cn", "mn"):
                await world.start(name)
            await until(world, "mn registered", lambda: bound_on(
                world, "mn", COA["mn"]["wifi0"], (HA,)), 5)
            await world.start("mn2")
            mn2 = world.nodes["mn2"]

            def refusals() -> list:
                return [e.event.status for e in mn2.events.timeline
                        if isinstance(e.event, BindingRefused) and e.event.peer == IPv6Address(HA)]

            await until(world, "mn2 refused", refusals, 5)
            assert refusals() == [BindingAckStatus.INSUFFICIENT_RESOURCES]
            assert [b.hoa for b in world.nodes["ha"].mobility.ha.bindings()] == [
                IPv6Address(HOA["mn"])]
        world.run(scenario())


INVALID_COAS = ("::1", "ff02::1", "fe80::1", "::", "::ffff:192.0.2.1", "fec0::1")


def test_the_ha_binds_no_address_that_cannot_be_a_care_of_address(world) -> None:
    """BUs on the MN's own MH SA (a lying or broken MN) naming loopback,
    multicast, link-local, unspecified, IPv4-mapped or site-local addresses,
    the HA's own address or another MN's HoA: none becomes the binding
    (RFC 6275 §9.5.1), each is counted."""
    bad = (*INVALID_COAS, HA, HOA["mn2"])

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        ha = world.nodes["ha"]
        attacker = world.add_host("evil", "203.0.113.66", 40066)
        sa = mn_sa(world, "mn-ha-mh-out")
        for ahead, coa in enumerate(bad, start=1):
            attacker.send(on_wire(home_bu(world, coa, ahead=ahead), sa, world.loop.time(),
                                  COA["mn"]["wifi0"]), HA_ENDPOINT)
        await until(world, "every BU refused", lambda: ha.mobility.ha.counters[
            "bu_invalid_coa"] == len(bad), 2)
        assert ha.mobility.ha.binding(IPv6Address(HOA["mn"])).coa == IPv6Address(
            COA["mn"]["wifi0"])
        # The HoA itself as CoA is no binding either: a deregistration (RFC 6275 §9.5.1).
        attacker.send(on_wire(home_bu(world, HOA["mn"]), sa, world.loop.time(),
                              COA["mn"]["wifi0"]), HA_ENDPOINT)
        await until(world, "the binding deleted", lambda: ha.mobility.ha.binding(
            IPv6Address(HOA["mn"])) is None, 2)
    world.run(scenario())


def test_the_cn_accepts_traffic_from_no_address_that_cannot_be_a_care_of_address(world) -> None:
    """The same at the CN, with the on-wire source equal to the AltCoA (draft
    §3.3): nothing is accepted from, challenged at or bound to such an
    address, and each BU is counted."""
    bad = (*INVALID_COAS, CN, HOA["mn2"])

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        cn = world.nodes["cn"]
        hoa = IPv6Address(HOA["mn"])
        attacker = world.add_host("evil", "203.0.113.66", 40066)
        sa = mn_sa(world, "mn-cn-out")
        sequence = cn.mobility.cn._peers[hoa].binding.sequence
        for ahead, coa in enumerate(bad, start=1):
            bu = BindingUpdate((sequence + ahead) % 65536, 100, ack=True,
                               options=(AlternateCareOfAddress(IPv6Address(coa)),))
            packet = build_mh_packet(bu, hoa, IPv6Address(CN))
            attacker.send(on_wire(packet, sa, world.loop.time(), coa), endpoint_of(world, "cn"))
        counters = cn.mobility.cn.counters
        # "::" on the wire reads as "not remapped" (draft §5.1.1): that BU's
        # AltCoA then differs from its source, refused for that first (§3.3).
        await until(world, "every BU refused", lambda: counters["bu_invalid_coa"]
                    + counters["bu_altcoa_mismatch"] == len(bad), 2)
        assert counters["bu_invalid_coa"] == len(bad) - 1
        assert cn.mobility.cn.accepting_from(hoa) == IPv6Address(COA["mn"]["wifi0"])
        assert cn.mobility.cn.pending_coa(hoa) is None
        assert cn.mobility.cn.binding(hoa).coa == IPv6Address(COA["mn"]["wifi0"])
    world.run(scenario())


# -- item: MAX_UPDATE_RATE (RFC 6275 §11.8) ------------------------------------------------


def bu_sends(world: SimWorld) -> list[float]:
    """Start recording when the MN puts a datagram of its MH SA to the HA on the
    wire (every one is a BU: the MN sends nothing else to its HA); returns the list."""
    times: list[float] = []
    spi = MN_HA_MH_OUT.to_bytes(4, "big")

    def observe(src_access, dst_access, packet: bytes, verdict: str) -> None:
        if src_access.node == "mn" and len(packet) > 48 and packet[6] == 50 \
                and packet[40:44] == spi and verdict != "delivered":
            times.append(world.loop.time())

    # Counted once per datagram: at its verdict when it did not arrive, and at
    # its departure (the delivery verdict comes later) when it did.
    def depart(src_access, packet: bytes, destination) -> bool:
        if src_access.node == "mn" and len(packet) > 48 and packet[6] == 50 \
                and packet[40:44] == spi:
            times.append(world.loop.time())
        return False

    world.network.observers.append(observe)
    world.network.interceptors.append(depart)
    return times


def most_in_a_second(times: list[float]) -> int:
    return max((sum(1 for t in times if start <= t < start + 1.0) for start in times), default=0)


async def flap(world: SimWorld, period: float, flips: int) -> None:
    """Every *period* seconds the MN's current link goes down and the other one
    comes back, *flips* times from wifi0: its movement detection moves the CoA
    at once each time (the link it is on is gone), from wifi to lte and back."""
    links = ("wifi0", "lte0")
    for flip in range(flips):
        down, up = links[flip % 2], links[(flip + 1) % 2]
        world.set_link("mn", up, True)
        world.set_link("mn", down, False)
        await asyncio.sleep(period)


def test_a_flapping_link_sends_at_most_three_bus_a_second_and_ends_on_the_last_coa(world):
    """The MN's links flap, eleven moves in 1.1 s: before, it sent a BU to its HA
    at each move (10 in 0.9 s).  RFC 6275 §11.8: at most MAX_UPDATE_RATE (3) a
    second; a BU held back goes out later with the newest CoA, so the HA
    still ends on the CoA the MN is at."""
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        times = bu_sends(world)
        await flap(world, 0.1, 11)                   # ends on lte
        await until(world, "the HA bound to the lte CoA", lambda: bound_on(
            world, "mn", COA["mn"]["lte0"], (HA,)) and world.nodes["ha"].mobility.ha.binding(
            IPv6Address(HOA["mn"])).coa == IPv6Address(COA["mn"]["lte0"]), 5)
        await until(world, "the CN and mn2 bound to it too", lambda: bound_on(
            world, "mn", COA["mn"]["lte0"], (CN, HOA["mn2"])), 10)
        return times, mh_sent(world)
    times, sent = world.run(scenario())
    assert len(times) >= 3
    assert most_in_a_second(times) <= 3, times
    # The same for every peer and every MH type the MN sends (from its own record).
    assert {peer for _kind, peer in sent} == {IPv6Address(p) for p in (HA, CN, HOA["mn2"])}
    for (kind, peer), when in sent.items():
        assert most_in_a_second(when) <= 3, (kind, peer, when)


def mh_sent(world: SimWorld) -> dict[tuple[str, IPv6Address], list[float]]:
    """When the MN sent each BU, AOTR and AOTO, by (message, peer)."""
    sent: dict[tuple[str, IPv6Address], list[float]] = {}
    for record in world.nodes["mn"].events.timeline:
        event = record.event
        if isinstance(event, (BindingUpdateSent, AotResponseSent, AotOfferSent)):
            sent.setdefault((type(event).__name__, event.peer), []).append(record.t)
    return sent


def test_status_135_answers_do_not_burst_bus(world) -> None:
    """The HA's sequence number is far ahead of the MN's (a restored HA, say):
    every BU of a quick series of moves comes back with status 135, and each
    135 asks for a corrected BU at once (RFC 6275 §11.7.3).  Before, that was
    a burst (4 BUs at once); now the rate limit holds, and the HA still ends
    on the last CoA."""
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        hoa = IPv6Address(HOA["mn"])
        ha_core = world.nodes["ha"].mobility.ha
        mn_sequence = world.nodes["mn"].mobility.mn.entry(IPv6Address(HA)).sequence
        ha_core._cache[hoa].sequence = (mn_sequence + 20_000) % 65536
        times = bu_sends(world)
        await flap(world, 0.02, 3)                   # wifi -> lte -> wifi -> lte
        await until(world, "the HA bound to the lte CoA", lambda: ha_core.binding(
            hoa).coa == IPv6Address(COA["mn"]["lte0"]) and bound_on(
            world, "mn", COA["mn"]["lte0"], (HA,)), 10)
        assert ha_core.counters[f"refused_{BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW}"]
        return times
    times = world.run(scenario())
    assert most_in_a_second(times) <= 3, times


# -- item: ICMPv6 Parameter Problem for a malformed MH (RFC 6275 §9.2) ----------------------


def malformed_mh(dst: str, *, payload_proto: int = 59, header_len: int | None = None) -> bytes:
    """A BU from the MN's HoA to *dst* with one field broken, checksum still right."""
    hoa = IPv6Address(HOA["mn"])
    bu = BindingUpdate(1, 100, ack=True, options=(AlternateCareOfAddress(hoa),))
    packet = bytearray(build_mh_packet(bu, hoa, IPv6Address(dst)))
    packet[40] = payload_proto
    if header_len is not None:
        packet[41] = header_len
        del packet[40 + (header_len + 1) * 8:]
        packet[4:6] = (len(packet) - 40).to_bytes(2, "big")
    packet[44:46] = b"\0\0"
    checksum = upper_layer_checksum(bytes(packet[8:24]), bytes(packet[24:40]), 135,
                                    bytes(packet[40:]))
    packet[44:46] = checksum.to_bytes(2, "big")
    return bytes(packet)


@pytest.mark.parametrize(("peer", "fault", "pointer"), [
    ("ha", {"payload_proto": 6}, 40),      # Payload Proto is not 59: pointer at it
    ("cn", {"header_len": 0}, 41),         # Header Len too small for a BU: pointer at it
])
def test_a_malformed_mh_gets_a_parameter_problem_pointing_at_the_fault(world, peer, fault,
                                                                       pointer) -> None:
    """The MN's host sends a malformed MH through the MN's SAs; the HA or the CN
    answers an ICMPv6 Parameter Problem, code 0, whose pointer (from the start
    of the invoking packet) names the faulty field (RFC 6275 §9.2), which
    arrives back at the MN's host over the wire.  Twenty-five at once get ten
    answers (rate limit, RFC 4443 §2.4(f))."""
    address = {"ha": HA, "cn": CN}[peer]

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        arrived: list[bytes] = []
        world.tun_sinks["mn"] = lambda packet: arrived.append(packet) if packet[6] == 58 \
            and packet[40] == 4 else None
        bad = malformed_mh(address, **fault)
        for _ in range(25):
            world.tuns["mn"].inject(bad)
        await until(world, "ten Parameter Problems", lambda: len(arrived) >= 10, 2)
        await asyncio.sleep(0.05)
        return arrived, world.nodes[peer].mobility.counters
    arrived, counters = world.run(scenario())
    assert len(arrived) == 10
    assert counters["mh_parameter_problem_rate_limited"] == 15
    for packet in arrived:
        assert packet[8:24] == IPv6Address(address).packed
        assert packet[41] == 0                                     # code 0
        assert int.from_bytes(packet[44:48], "big") == pointer
        assert packet[48:88] == malformed_mh(address, **fault)[:40]   # the invoking packet


def test_with_ike_keys_a_bu_inside_the_negotiated_tunnel_is_dropped_too() -> None:
    """The same attack on IKE-negotiated SAs (their policies name SAs by SPI,
    and a rekey leaves two policies with the same selector): the MN's own
    tunnel CHILD_SA carries a BU for its HoA; the HA refuses it."""
    from vmip.ipsec.sa import Direction, Mode

    with SimWorld(seed=4, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "registered on IKE SAs", lambda: bound_on(
                world, "mn", COA["mn"]["wifi0"]), 15)
            mn, ha = world.nodes["mn"], world.nodes["ha"]
            tunnel = next(mn.sad.esp(info.spi, Direction.OUT, info.dst)
                          for info in mn.sad.dump(publish=False)
                          if info.mode is Mode.TUNNEL and info.direction is Direction.OUT)
            attacker = world.add_host("evil", "203.0.113.66", 40066)
            before = ha.counters["rx_drop_mh_not_transport"] + ha.counters["rx_drop_mh_wrong_sa"]
            attacker.send(tunnel_encap(home_bu(world, "2001:db8:66::6"), tunnel,
                                       world.loop.time()), HA_ENDPOINT)
            await until(world, "the HA refusing the BU", lambda: ha.counters[
                "rx_drop_mh_not_transport"] + ha.counters["rx_drop_mh_wrong_sa"] > before, 2)
            assert ha.mobility.ha.binding(IPv6Address(HOA["mn"])).coa == IPv6Address(
                COA["mn"]["wifi0"])
            # A rekey of the MN's CHILD_SAs with the HA: the BU of the next move
            # comes on the new MH SA and still registers (the window where both
            # SAs' policies exist: tests/node/test_mh_protection.py).
            mn.keying.rekey("ha")
            await until(world, "rekeyed at the HA", lambda: ha.keying.counters[
                "child_sa_rekeyed"] >= 2, 10)
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte after the rekey", lambda: bound_on(
                world, "mn", COA["mn"]["lte0"], (HA,)), 15)
        world.run(scenario())
