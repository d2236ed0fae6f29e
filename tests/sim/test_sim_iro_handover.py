"""IRO handovers through running nodes (the in-process network, virtual time).

These use the draft's own SA layout (``SimWorld(layout="split")``: MH and
data in separate SAs between each MN and the CN, §5.2.2 examples 1-3),
where the MH SA's wildcard inbound rule cannot hide what the data rules do.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

import pytest

from vmip.lab.emulation import LinkProfile
from vmip.mobility import events as ev
from vmip.sim.scenario import ProbeStream
from vmip.sim.world import SimWorld

HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA = "2001:db8:100::10"
COA = {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"}
#: The MN's MH SA towards the CN in the split layout (0x<m>50<d>, vmip.sim.layouts).
MN_CN_MH_SPI = 0x1501
#: The demo's delays without the lte loss: every lost probe is the nodes' doing.
CLEAN = {("mn", "wifi0"): LinkProfile(delay_ms=5.0), ("mn", "lte0"): LinkProfile(delay_ms=30.0)}


def bul(world: SimWorld, node: str = "mn") -> dict[str, dict]:
    status = world.nodes[node].mobility.status()
    return {e["peer"]: e for e in status["mn"]["binding_update_list"]}


def bound_on(world: SimWorld, coa: str, peers=(HA, CN)) -> bool:
    entries = bul(world)
    return all(entries.get(p, {}).get("state") == "bound" and entries[p]["coa"] == coa
               for p in peers)


async def until(world: SimWorld, what: str, check, timeout: float) -> float:
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.005)
    return world.loop.time() - start


def first(world: SimWorld, node: str, kind: type, **fields) -> float | None:
    """Virtual time of *node*'s first event of *kind* whose fields match."""
    for timed in world.nodes[node].events.timeline:
        event = timed.event
        if isinstance(event, kind) and all(
                getattr(event, k) == IPv6Address(v) if isinstance(v, str) else
                getattr(event, k) == v for k, v in fields.items()):
            return timed.t
    return None


class TimedProbes(ProbeStream):
    """Probes that remember when each one left."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.sent_at: list[float] = []

    def _tick(self) -> None:
        before = self.sent
        now = self.world.loop.time()
        super()._tick()
        if self.sent > before:
            self.sent_at.append(now)

    def lost_after(self, t: float) -> list[int]:
        arrived = {a.seq for a in self.arrivals}
        return [seq for seq, sent in enumerate(self.sent_at) if sent >= t and seq not in arrived]


def without_early_tests(world: SimWorld) -> None:
    """The CN answers AOTOs with "AOTO not allowed" (draft §4.4.4): a new CoA is
    then proven on the move, as without the early tests of draft §4.5.2."""
    world.nodes["cn"].mobility.cn.allow_early_test = False


def drop_mn_mh(world: SimWorld, *, index: int) -> list[int]:
    """Take the *index*-th (1-based) datagram on the MN's MH SA to the CN off the wire,
    counting from now.  Returns the running count (for the test to check)."""
    seen = [0]

    def intercept(sender, packet: bytes, destination) -> bool:
        if sender.node != "mn" or len(packet) < 44 or packet[6] != 50:
            return False
        if int.from_bytes(packet[40:44], "big") != MN_CN_MH_SPI:
            return False
        seen[0] += 1
        return seen[0] == index
    world.network.interceptors.append(intercept)
    return seen


@pytest.mark.parametrize("aotr_lost", [False, True], ids=["aotr-delivered", "aotr-lost-once"])
def test_no_mn_to_cn_data_is_lost_while_the_new_coa_is_being_proven(aotr_lost) -> None:
    """Draft §4.5.1: the CN accepts the MN's data from the new CoA at once, before the
    proof; on data-only SAs nothing from the MN may be dropped between BU and AOTR
    (one RTT, or the AOTR retransmission interval when the first AOTR is lost)."""
    with SimWorld(seed=4, profiles=CLEAN, layout="split") as world:
        async def scenario():
            await world.start_all()
            without_early_tests(world)
            await until(world, "registered on wifi", lambda: bound_on(world, COA["wifi0"]), 5)
            hoa, cn = IPv6Address(HOA), IPv6Address(CN)
            out = TimedProbes(world, "mn", hoa, cn, 100)
            world.tun_sinks["cn"] = out.received
            out.start()
            await asyncio.sleep(0.5)
            seen = drop_mn_mh(world, index=2) if aotr_lost else None   # 1: BU, 2: AOTR
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte", lambda: bound_on(world, COA["lte0"]), 10)
            await asyncio.sleep(0.5)
            out.stop()
            await asyncio.sleep(0.2)
            return out, seen
        out, seen = world.run(scenario())
        bu = first(world, "mn", ev.BindingUpdateSent, peer=CN, coa=COA["lte0"])
        proven = first(world, "cn", ev.CoaProven, coa=COA["lte0"])
        accept = first(world, "cn", ev.AcceptFrom, coa=COA["lte0"])
    assert bu is not None and proven is not None and accept is not None
    assert accept < proven
    if aotr_lost:
        assert seen[0] >= 3, "the AOTR was not resent"
        assert proven - bu > 0.9, "the lost AOTR did not delay the proof"
    # Every probe the MN sent from its BU to well after the proof arrived at the CN.
    assert sum(1 for t in out.sent_at if t >= bu) > 50
    lost = out.lost_after(bu)
    assert lost == [], f"{len(lost)} MN->CN probes lost between BU and proof"


def test_datagrams_due_at_the_same_instant_arrive_in_the_order_sent() -> None:
    """A link keeps its datagrams in order even when several are due at once
    (the loop's timer heap alone does not): a BU sent just before a data
    packet must reach the CN first."""
    with SimWorld(seed=1) as world:
        got: list[bytes] = []
        world.add_host("a", "203.0.113.1")
        sender = world.add_host("b", "203.0.113.2")
        world.add_host("c", "203.0.113.3", on_packet=lambda packet, *_: got.append(packet))

        async def scenario():
            for index in range(20):
                sender.send(bytes([index]) * 48, ("203.0.113.3", 6275))
            await asyncio.sleep(0.1)
        world.run(scenario())
    assert got == [bytes([index]) * 48 for index in range(20)]


#: The CN's MH SA towards the MN in the split layout.
CN_MN_MH_SPI = 0x1502


def test_every_aotc_carries_a_fresh_nonce_and_the_move_completes() -> None:
    """Draft §4.3.1: the Nonce field MUST always be freshly generated.  The first
    AOTC to the new CoA is lost; the MN's BU retransmission brings a second AOTC,
    whose nonce is a new draw, and the registration completes with it."""
    with SimWorld(seed=5, profiles=CLEAN, layout="split") as world:
        async def scenario():
            await world.start_all()
            without_early_tests(world)
            await until(world, "registered on wifi", lambda: bound_on(world, COA["wifi0"]), 5)
            cn_core = world.nodes["cn"].mobility.cn
            draws: list[bytes] = []
            real_rng = cn_core._rng

            def recording_rng(size: int) -> bytes:
                value = real_rng(size)
                draws.append(bytes(value))
                return value
            cn_core._rng = recording_rng
            seen = [0]
            timeline = world.nodes["cn"].events.timeline

            def lose_first_aotc(sender, packet: bytes, destination) -> bool:
                if sender.node != "cn" or len(packet) < 44 or packet[6] != 50 \
                        or int.from_bytes(packet[40:44], "big") != CN_MN_MH_SPI:
                    return False
                # The first MH after the first AOTC to lte0 was made is that
                # AOTC (the AOTS refusing the MN's early test goes before it).
                if not any(isinstance(e.event, ev.AotChallengeSent)
                           and e.event.address == IPv6Address(COA["lte0"]) for e in timeline):
                    return False
                seen[0] += 1
                return seen[0] == 1
            world.network.interceptors.append(lose_first_aotc)
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte", lambda: bound_on(world, COA["lte0"]), 10)
            return draws, seen[0]
        draws, cn_mh = world.run(scenario())
        challenges = [e.event for e in world.nodes["cn"].events.timeline
                      if isinstance(e.event, ev.AotChallengeSent)
                      and e.event.address == IPv6Address(COA["lte0"])]
    assert len(challenges) == 2, challenges
    nonces = [d for d in draws if len(d) == 8]
    assert len(nonces) == 2 and nonces[0] != nonces[1]
    assert cn_mh >= 3   # AOTC lost, AOTC, BA


def _ha_ike_sa(world: SimWorld) -> dict:
    [sa] = [sa for sa in world.nodes["mn"].keying.listing()["sas"]
            if sa["name"] == "ha" and sa["state"] == "established"]
    return sa


@pytest.mark.parametrize("ha_follows", [True, False], ids=["ba-k-set", "ba-k-clear"])
def test_k_bit_with_ike_keys(ha_follows) -> None:
    """RFC 6275 §11.7.1/§11.7.3 with IKE keys: the MN's home BU sets K (its IKE SA
    with the HA follows the CoA), and the MN reads the BA's K bit.  K set: the
    same IKE SA carries on from the new CoA.  K clear (an HA whose key manager
    cannot follow): the MN discards that IKE SA and sets up a new one from
    the new CoA, and stays registered."""
    with SimWorld(seed=6, profiles=CLEAN, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "registered on IKE SAs", lambda: bound_on(world, COA["wifi0"]), 15)
            before = _ha_ike_sa(world)
            world.nodes["ha"].mobility.ha.key_management_mobility = ha_follows
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte", lambda: bound_on(world, COA["lte0"], (HA,)), 15)
            await asyncio.sleep(3.0)
            await until(world, "bound on lte", lambda: bound_on(world, COA["lte0"]), 15)
            return before, _ha_ike_sa(world)
        before, after = world.run(scenario())
        mn = world.nodes["mn"]
        home_bas = [e.event for e in mn.events.timeline
                    if isinstance(e.event, ev.BindingAccepted) and e.event.peer == IPv6Address(HA)
                    and e.event.coa == IPv6Address(COA["lte0"])]
        counters = mn.keying.counters
    assert mn.mobility.mn.key_management_mobility is True      # K in the home BU
    assert home_bas and home_bas[0].key_management_mobility is ha_follows
    assert after["local"].startswith(COA["lte0"]), after
    if ha_follows:
        assert after["spi_i"] == before["spi_i"]                 # the same IKE SA, moved
        assert counters["ike_sa_reestablished_k0"] == 0
    else:
        assert after["spi_i"] != before["spi_i"]                 # discarded, set up again
        assert counters["ike_sa_reestablished_k0"] == 1


def test_k_bit_is_clear_with_static_keys() -> None:
    """No IKE, nothing to follow the CoA: the MN's home BU leaves K clear."""
    with SimWorld(seed=6, profiles=CLEAN) as world:
        async def scenario():
            await world.start_all()
            await until(world, "registered", lambda: bound_on(world, COA["wifi0"]), 5)
        world.run(scenario())
        mn = world.nodes["mn"].mobility.mn
        bas = [e.event for e in world.nodes["mn"].events.timeline
               if isinstance(e.event, ev.BindingAccepted) and e.event.peer == IPv6Address(HA)]
    assert mn.key_management_mobility is False and mn.home_key_management is False
    assert bas and not bas[0].key_management_mobility


def test_standby_link_is_proven_early_so_the_move_needs_no_address_test() -> None:
    """Draft §4.5.2: while on wifi, the MN proves its lte CoA to the CN over lte
    (AOTO -> AOTC -> AOTR -> AOTS, all on the lte link); when wifi fails, the BU
    from lte is accepted at once: no AOTC/AOTR in the move, the CN sends to lte
    one one-way trip after the BU.  Back on wifi, the wifi CoA was proven
    during the 2 s hold-down the same way."""
    lte, wifi, cn = IPv6Address(COA["lte0"]), IPv6Address(COA["wifi0"]), IPv6Address(CN)
    hoa = IPv6Address(HOA)
    with SimWorld(seed=7, profiles=CLEAN, layout="split") as world:
        on_lte: list[tuple[str, str]] = []
        world.network.observers.append(
            lambda src, dst, packet, verdict: on_lte.append((src.node, src.name))
            if verdict == "delivered" and "lte0" in (src.name, dst.name if dst else "")
            and {src.node, dst.node if dst else ""} == {"mn", "cn"} else None)

        async def scenario():
            await world.start_all()
            await until(world, "registered on wifi", lambda: bound_on(world, COA["wifi0"]), 5)
            await until(world, "lte proven early", lambda: first(
                world, "mn", ev.AotStatusReceived, peer=CN, address=COA["lte0"]) is not None, 5)
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte", lambda: bound_on(world, COA["lte0"]), 5)
            moved = world.loop.time()
            # The CN forgets the wifi proof (a bounded cache may): the early test
            # during the hold-down then needs the whole AOTO/AOTC/AOTR/AOTS.
            world.nodes["cn"].mobility.cn.proofs.discard(hoa, wifi)
            world.set_link("mn", "wifi0", True)
            await until(world, "back on wifi", lambda: bound_on(world, COA["wifi0"]), 5)
            return moved
        world.run(scenario())
        mn_events = [e for e in world.nodes["mn"].events.timeline]
        cn_events = [e for e in world.nodes["cn"].events.timeline]

    def t_of(events, kind, **fields):
        return [e.t for e in events if isinstance(e.event, kind)
                and all(getattr(e.event, k) == v for k, v in fields.items())]
    status = next(e.event for e in mn_events if isinstance(e.event, ev.AotStatusReceived)
                  and e.event.address == lte)
    assert status.code == 1                       # "proof valid" (draft §4.4.4)
    # The early test ran over lte: MN<->CN datagrams on lte before the move.
    [move_to_lte] = t_of(mn_events, ev.CoaChanged, new=lte)
    assert t_of(mn_events, ev.AotOfferSent, peer=cn, address=lte)[0] < move_to_lte
    # lte was never proven: the early test was the whole exchange (AOTC, AOTR) before the move.
    assert t_of(cn_events, ev.AotChallengeSent, address=lte, purpose="early-test")[0] \
        < t_of(mn_events, ev.AotResponseSent, peer=cn, address=lte)[0] < move_to_lte
    assert ("mn", "lte0") in on_lte and ("cn", "eth0") in on_lte
    # The move to lte: BU -> BA at once, no address test in it.
    bu = min(t_of(mn_events, ev.BindingUpdateSent, peer=cn, coa=lte))
    ba = min(t for t in t_of(mn_events, ev.BindingAccepted, peer=cn, coa=lte) if t >= bu)
    assert not [t for t in t_of(mn_events, ev.AotResponseSent, peer=cn, address=lte) if t >= bu]
    assert not [t for t in t_of(cn_events, ev.AotChallengeSent, address=lte) if t >= bu]
    assert ba - bu == pytest.approx(0.070, abs=0.011)   # one lte RTT (+ the CN's access)
    send_to = min(t for t in t_of(cn_events, ev.SendTo, coa=lte) if t >= bu)
    assert send_to - bu == pytest.approx(0.035, abs=0.006)
    # Back to wifi: proven during the hold-down, before the move.
    back = max(t_of(mn_events, ev.CoaChanged, new=wifi))   # the first: the initial attachment
    early_wifi = [t for t in t_of(mn_events, ev.AotStatusReceived, peer=cn, address=wifi)
                  if move_to_lte < t < back]
    assert early_wifi and back - early_wifi[0] > 1.5
    assert [t for t in t_of(cn_events, ev.AotChallengeSent, address=wifi, purpose="early-test")
            if move_to_lte < t < back]
    bu_wifi = min(t for t in t_of(mn_events, ev.BindingUpdateSent, peer=cn, coa=wifi) if t >= back)
    assert not [t for t in t_of(mn_events, ev.AotResponseSent, address=wifi) if t >= bu_wifi]


def test_vmip_sim_report_shows_early_tests_and_meets_the_demo_targets() -> None:
    """``vmip sim`` (the demo's roaming run): every handover's new CoA was proven
    by an early test (``aot`` = ``"early"``), and per kind of handover the p50
    interruption is within the demo's target, 1.5 x the new link's RTT + 20 ms."""
    from vmip.demo import metrics
    from vmip.sim.scenario import SimOptions, run_sim
    report = run_sim(SimOptions(duration=30, seed=2), out=lambda _: None)
    handovers = report["handovers"]
    assert [h["to"] for h in handovers[:3]] == ["lte0", "wifi0", "lte0"]
    assert {h["aot"] for h in handovers} == {"early"}
    assert report["summary"]["aot"] == {"early": len(handovers), "on-move": 0}
    for link in ("lte0", "wifi0"):
        worst = [max(h["interruption_ms"].values()) for h in handovers if h["to"] == link]
        target = 1.5 * report["links"][link]["rtt_ms"] + 20
        assert metrics.percentile(worst, 0.5) <= target, (link, worst)


def _cn_config(world: SimWorld, **mobility) -> None:
    """Add *mobility* keys to the CN's config file before it starts."""
    from vmip.compat import tomllib
    from vmip.tomlwriter import dump_toml
    path = world.config_paths["cn"]
    document = tomllib.loads(path.read_text())
    document["mobility"].update(mobility)
    path.write_text(dump_toml(document))


@pytest.mark.parametrize("layout", ["lab", "split"])
def test_cn_tests_the_home_address_through_the_ha_as_configured(layout) -> None:
    """Draft §4.5.3 from the config (``home_test_on_registration``,
    ``home_test_interval``): the CN sends an AOTC to the MN's HoA, which goes
    through the HA and its tunnel; the MN answers from the HoA, the same way
    back; the CN reports the HoA proven, at registration and then regularly."""
    hoa = IPv6Address(HOA)
    with SimWorld(seed=8, profiles=CLEAN, layout=layout) as world:
        _cn_config(world, home_test_on_registration=True, home_test_interval=2.0)
        via_ha: list[tuple[str, str]] = []
        world.network.observers.append(
            lambda src, dst, packet, verdict: via_ha.append((src.node, dst.node))
            if verdict == "delivered" and dst is not None and "ha" in (src.node, dst.node)
            else None)

        async def scenario():
            await world.start_all()
            await until(world, "registered", lambda: bound_on(world, COA["wifi0"]), 5)
            await asyncio.sleep(4.5)
        world.run(scenario())
        cn_events = [e.event for e in world.nodes["cn"].events.timeline]
        mn_events = [e.event for e in world.nodes["mn"].events.timeline]
        assert world.nodes["cn"].config.mobility.home_test_interval == 2.0
    challenges = [e for e in cn_events if isinstance(e, ev.AotChallengeSent)
                  and e.purpose == "home-test" and e.hoa == hoa]
    proven = [e for e in cn_events if isinstance(e, ev.HomeAddressProven) and e.hoa == hoa]
    assert len(challenges) == 3 and challenges[0].address == hoa   # at registration, +2 s, +4 s
    assert len(proven) == 3
    assert not [e for e in cn_events if isinstance(e, ev.HomeAddressTestFailed)]
    assert [e for e in mn_events if isinstance(e, ev.AotResponseSent) and e.address == hoa]
    # The HoA test went through the HA both ways (CN -> HA -> MN, MN -> HA -> CN).
    assert ("cn", "ha") in via_ha and ("ha", "cn") in via_ha
    assert ("ha", "mn") in via_ha and ("mn", "ha") in via_ha


def test_home_address_test_fails_when_the_ha_path_is_down() -> None:
    """No AOTR through the HA: the CN retransmits, then reports the failure and
    keeps the binding (the draft defines no action, §4.5.3)."""
    hoa = IPv6Address(HOA)
    with SimWorld(seed=9, profiles=CLEAN) as world:
        _cn_config(world, home_test_interval=3.0)

        async def scenario():
            await world.start_all()
            await until(world, "registered", lambda: bound_on(world, COA["wifi0"]), 5)
            world.set_link("ha", "eth0", False)
            await until(world, "home test failed", lambda: any(
                isinstance(e.event, ev.HomeAddressTestFailed)
                for e in world.nodes["cn"].events.timeline), 30)
        world.run(scenario())
        binding = world.nodes["cn"].mobility.cn.binding(hoa)
        cn_events = [e.event for e in world.nodes["cn"].events.timeline]
    assert binding is not None and binding.coa == IPv6Address(COA["wifi0"])
    nonces = [e for e in cn_events if isinstance(e, ev.AotChallengeSent) and e.address == hoa]
    assert len(nonces) >= 2          # retransmitted before giving up


# --- related traffic: fragments and ICMPv6 errors around IRO (draft §5.1.2.4) -----------

def host_fragments(src: IPv6Address, dst: IPv6Address, size: int, mtu: int,
                   ident: int) -> tuple[bytes, list[bytes]]:
    """A UDP datagram of *size* payload bytes and the host's fragments of it."""
    from vmip.wire.fragment import fragment
    from vmip.wire.ipv6 import build_ipv6_header
    from vmip.wire.udp import build_udp
    segment = build_udp(5000, 5001, bytes(range(256)) * (size // 256), src.packed, dst.packed)
    whole = build_ipv6_header(src.packed, dst.packed, 17, len(segment)) + segment
    return whole, fragment(whole, mtu, ident)


def on_wire(world: SimWorld, between: set[str]) -> list[bytes]:
    seen: list[bytes] = []
    world.network.observers.append(
        lambda src, dst, packet, verdict: seen.append(packet)
        if verdict == "delivered" and dst is not None and {src.node, dst.node} == between
        else None)
    return seen


@pytest.mark.parametrize("layout", ["lab", "split"])
def test_host_fragments_cross_iro_whole_both_ways(layout) -> None:
    """Fragments the hosts made (a 3,000-byte UDP datagram each way) reach the
    other host whole over the direct IRO path, on lte: transport ESP protects
    the whole datagram (RFC 4303 §3.1.1), the packet that carries it is
    fragmented after ESP and IRO (each fragment with the on-wire CoA), and
    the receiver reassembles before the IRO rules and ESP (RFC 4301 §5.2)."""
    hoa, cn, lte = IPv6Address(HOA), IPv6Address(CN), IPv6Address(COA["lte0"])
    with SimWorld(seed=10, profiles=CLEAN, layout=layout) as world:
        at_cn: list[bytes] = []
        at_mn: list[bytes] = []
        direct = on_wire(world, {"mn", "cn"})

        async def scenario():
            await world.start_all()
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte", lambda: bound_on(world, COA["lte0"]), 10)
            world.tun_sinks["cn"], world.tun_sinks["mn"] = at_cn.append, at_mn.append
            direct.clear()
            up, up_pieces = host_fragments(hoa, cn, 3000, 1400, 11)
            down, down_pieces = host_fragments(cn, hoa, 3000, 1400, 12)
            for piece in up_pieces:
                world.tuns["mn"].inject(piece)
            for piece in down_pieces:
                world.tuns["cn"].inject(piece)
            await asyncio.sleep(0.5)
            return up, down
        up, down = world.run(scenario())
    assert up in at_cn and down in at_mn
    fragments_on_wire = [p for p in direct if p[6] == 44]
    assert len(fragments_on_wire) >= 4
    assert all(lte.packed in (p[8:24], p[24:40]) for p in fragments_on_wire)
    assert not [p for p in direct if hoa.packed in (p[8:24], p[24:40])]   # never the HoA


def test_icmpv6_errors_about_remapped_packets() -> None:
    """Two errors about packets IRO remapped, through running nodes (split layout):

    - the CN's host answers the MN's datagram with Destination Unreachable
      (port): it quotes what the host saw, HoA -> CN, and reaches the MN's
      host over the direct path (the CoA on the wire), since ICMPv6 rides
      the data SA (RFC 4301 §6.2: an error with an SA goes through it);
    - a datagram that no longer fits the link once ESP is added gets a
      Packet Too Big from the MN's own node, quoting the host's packet (the
      HoA, never the CoA) with the MTU of the direct path; the host's
      fragments at that MTU then get through."""
    from vmip.wire.icmpv6 import (
        DestinationUnreachable,
        PacketTooBig,
        build_icmpv6_packet,
        parse_icmpv6,
    )
    hoa, cn, wifi = IPv6Address(HOA), IPv6Address(CN), IPv6Address(COA["wifi0"])
    with SimWorld(seed=12, profiles=CLEAN, layout="split") as world:
        at_cn: list[bytes] = []
        at_mn: list[bytes] = []
        direct = on_wire(world, {"mn", "cn"})

        async def scenario():
            await world.start_all()
            await until(world, "registered", lambda: bound_on(world, COA["wifi0"]), 5)
            world.tun_sinks["cn"], world.tun_sinks["mn"] = at_cn.append, at_mn.append
            probe, _ = host_fragments(hoa, cn, 256, 1400, 0)
            world.tuns["mn"].inject(probe)
            await asyncio.sleep(0.1)
            assert at_cn == [probe]
            direct.clear()
            world.tuns["cn"].inject(build_icmpv6_packet(DestinationUnreachable(4, probe), cn, hoa))
            await asyncio.sleep(0.1)
            unreachable = list(at_mn)
            at_mn.clear()
            big, _ = host_fragments(hoa, cn, 1536, 1400, 0)
            world.tuns["mn"].inject(big)
            await asyncio.sleep(0.1)
            too_big = list(at_mn)
            mtu = parse_icmpv6(too_big[0][40:]).mtu if too_big else 0
            _, pieces = host_fragments(hoa, cn, 1536, mtu, 21)
            for piece in pieces:
                world.tuns["mn"].inject(piece)
            await asyncio.sleep(0.1)
            return probe, unreachable, direct[:1], big, too_big
        probe, unreachable, wire, big, too_big = world.run(scenario())
        link_mtu = world.nodes["mn"].link_mtu["wifi0"]
    [error] = unreachable
    assert error[8:24] == cn.packed and error[24:40] == hoa.packed and error[6] == 58
    message = parse_icmpv6(error[40:], cn, hoa)
    assert isinstance(message, DestinationUnreachable) and message.invoking_packet == probe
    assert wire and wire[0][24:40] == wifi.packed     # direct, to the CoA, in ESP
    [ptb] = too_big
    message = parse_icmpv6(ptb[40:], ptb[8:24], ptb[24:40])
    assert isinstance(message, PacketTooBig) and ptb[24:40] == hoa.packed
    assert message.invoking_packet == big[:len(message.invoking_packet)]
    # The MTU of the direct path: the link's less the ESP overhead measured on
    # the error's own direct transport ESP packet (same suite, same padding).
    assert message.mtu == link_mtu - (len(wire[0]) - len(error)) < len(big)
    assert big in at_cn                                # the host's fragments got through


def test_a_held_back_aoto_resent_with_another_source_moves_no_locator() -> None:
    """An on-path attacker takes the MN's early-test AOTO (from lte) off the wire
    and re-sends it from its own endpoint naming MN2's CoA as on-wire source:
    the ICV covers neither, and nothing inside an AOTO names the address (a
    BU has its AltCoA).  The CN challenges that address, but its locator for
    MN2's CoA, learned from MN2, stays MN2's; the MN's real test completes."""
    mn2_coa = IPv6Address("2001:db8:41::2")
    with SimWorld(seed=13, profiles=CLEAN, layout="split") as world:
        held: list[bytes] = []

        def hold_back(sender, packet: bytes, destination) -> bool:
            if not held and sender.node == "mn" and sender.name == "lte0" \
                    and len(packet) > 44 and packet[6] == 50 \
                    and int.from_bytes(packet[40:44], "big") == MN_CN_MH_SPI:
                held.append(packet)
                return True
            return False
        world.network.interceptors.append(hold_back)

        async def scenario():
            await world.start_all()
            cn = world.nodes["cn"]
            await until(world, "mn2 bound with the CN", lambda: cn.mobility.cn.binding(
                IPv6Address("2001:db8:100::20")) is not None, 5)
            await until(world, "the AOTO held back", lambda: held, 5)
            before = cn.locators.lookup(mn2_coa)
            counted = cn.counters["locator_not_vouched"]
            attacker = world.add_host("evil", "203.0.113.66", 40066)
            attacker.send(held[0][:8] + mn2_coa.packed + held[0][24:], ("192.0.2.18", 6275))
            await until(world, "the CN refusing to move a locator",
                        lambda: cn.counters["locator_not_vouched"] > counted, 2)
            await until(world, "the real early test done", lambda: first(
                world, "mn", ev.AotStatusReceived, peer=CN, address=COA["lte0"]) is not None, 5)
            return before, cn.locators.lookup(mn2_coa)
        before, after = world.run(scenario())
        challenged = [e.event for e in world.nodes["cn"].events.timeline
                      if isinstance(e.event, ev.AotChallengeSent) and e.event.address == mn2_coa]
    assert challenged, "the forged AOTO did not reach the CN core"
    assert before.source == "learned" and after.endpoint == before.endpoint
    assert after.endpoint != ("203.0.113.66", 40066)
