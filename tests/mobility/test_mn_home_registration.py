"""MN <-> HA: home registration (RFC 6275 §10-11 as draft §7 changes them)."""

from __future__ import annotations

import itertools
from ipaddress import IPv6Address, IPv6Network

import pytest
from scapy.layers.inet6 import MIP6MH_BA, MIP6MH_BU, MIP6OptAltCoA
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    HOME_PREFIX,
    LTE,
    WIFI,
    Net,
    SimNode,
    build_world,
    dissect,
    scapy_aotc,
    scapy_ba,
    scapy_generic,
    seeded_rng,
)

from vmip.mobility.binding import OnWire
from vmip.mobility.events import (
    AcceptFrom,
    BindingAccepted,
    BindingCached,
    BindingDeregistered,
    BindingExpired,
    BindingRefused,
    BindingUpdateSent,
    CoaChanged,
    DataPathChanged,
    RegistrationTimeout,
    SendTo,
    TunnelEndpointChanged,
)
from vmip.mobility.ha import HomeAgent
from vmip.mobility.mn import EntryState, MobileNode


def lone_mn(**kwargs) -> MobileNode:
    return MobileNode(HOA, HA_ADDR, kwargs.pop("correspondents", ()), rng=seeded_rng(7), **kwargs)


def drain(core) -> list:
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    return events


def fire_timers(core, until: float, max_steps: int = 1000) -> list[float]:
    """Run a core alone (every packet lost) up to ``until``; return the timer times."""
    times = []
    for _ in range(max_steps):
        deadline = core.get_timer()
        if deadline is None or deadline > until:
            return times
        times.append(deadline)
        core.handle_timer(deadline)
    raise AssertionError("timer loop did not stop")


# --- what goes on the wire ----------------------------------------------------


def test_home_registration_bu_is_well_formed_and_names_the_coa():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    [out] = mn.datagrams_to_send(0.0)
    theirs = dissect(out)
    assert (theirs.src, theirs.dst) == (str(HOA), str(HA_ADDR))  # from the HoA (draft §7)
    bu = theirs[MIP6MH_BU]
    assert "A" in bu.flags and "H" in bu.flags and "K" not in bu.flags
    assert bu.mhtime == 420 // 4
    assert theirs[MIP6OptAltCoA].acoa == str(WIFI)
    # The CoA reaches the wire through ancillary data, never in an IPv6 header option.
    assert out.onwire_src == WIFI and out.onwire_dst is None
    assert out.ancillary_coa == WIFI
    assert drain(mn) == [
        CoaChanged(HOA, None, WIFI),
        TunnelEndpointChanged(HOA, WIFI),
        BindingUpdateSent(HA_ADDR, HOA, WIFI, bu.seq, 420, 1),
    ]


@pytest.mark.parametrize("ha_follows", [True, False])
def test_k_bit_is_echoed_only_when_both_sides_support_it(ha_follows):
    mn = lone_mn(key_management_mobility=True)
    ha = HomeAgent(HA_ADDR, HOME_PREFIX, key_management_mobility=ha_follows)
    mn.set_coa(WIFI, 0.0)
    [bu] = mn.datagrams_to_send(0.0)
    assert "K" in dissect(bu)[MIP6MH_BU].flags
    ha.receive(bu.packet[40:], HOA, HA_ADDR, WIFI, 0.1)
    [ba] = ha.datagrams_to_send(0.1)
    assert ("K" in dissect(ba)[MIP6MH_BA].flags) is ha_follows


def test_registration_binds_on_both_sides():
    net, nodes = build_world(latency=0.05, correspondents=())
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    [accepted] = nodes["mn"].of_type(BindingAccepted)
    assert accepted == BindingAccepted(HA_ADDR, HOA, WIFI, 420, pytest.approx(0.1))
    assert nodes["ha"].of_type(TunnelEndpointChanged) == [TunnelEndpointChanged(HOA, WIFI)]
    assert nodes["ha"].of_type(BindingCached) == [BindingCached(HOA, WIFI, 420, True)]
    entry = nodes["ha"].ha.binding(HOA)
    assert entry.coa == WIFI and entry.expires_at == pytest.approx(0.05 + 420)
    # The BA left the HA towards the CoA, with SA-level destination the HoA.
    [ba] = net.sent("ha", 6)
    assert (ba.dst, ba.wire_dst, ba.via_tunnel) == (HOA, WIFI, False)
    assert nodes["mn"].mn.entry(HA_ADDR).state is EntryState.BOUND


# --- retransmission (RFC 6275 §11.8) -------------------------------------------


def test_first_registration_backs_off_from_1_5_s_to_32_s():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    fire_timers(mn, 200.0)
    sent = [e for e in drain(mn) if isinstance(e, BindingUpdateSent)]
    # RFC 6275 §11.8 / §12: 1.5 s first, doubling, capped at 32 s.
    gaps = [1.5, 3, 6, 12, 24] + [32] * 10
    times = [0.0]
    while times[-1] + gaps[len(times) - 1] <= 200.0:
        times.append(times[-1] + gaps[len(times) - 1])
    packets = mn.datagrams_to_send(200.0)
    assert len(packets) == len(sent) == len(times)
    # Every retransmission is a new BU with the next sequence number (mod 2^16).
    sequences = [dissect(p)[MIP6MH_BU].seq for p in packets]
    assert sequences == [(sequences[0] + i) % 65536 for i in range(len(sequences))]
    assert [e.sequence for e in sent] == sequences
    assert [e.attempt for e in sent] == list(range(1, len(sent) + 1))


def test_bu_send_times_follow_the_back_off():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    times = fire_timers(mn, 120.0)
    gaps = [round(b - a, 6) for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps == [1.5, 3.0, 6.0, 12.0, 24.0, 32.0, 32.0]


def test_registration_timeout_is_reported_once_when_the_interval_reaches_32_s():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    timeouts = []
    for _ in range(20):
        deadline = mn.get_timer()
        mn.handle_timer(deadline)
        timeouts += [(deadline, e) for e in drain(mn) if isinstance(e, RegistrationTimeout)]
    # 1.5 + 3 + 6 + 12 + 24 of back-off, then a full 32 s wait without answer.
    assert timeouts == [(78.5, RegistrationTimeout(HA_ADDR, HOA, WIFI, "bu"))]
    assert mn.get_timer() is not None  # it keeps trying at the slow rate


def test_later_registrations_start_at_1_s():
    net, nodes = build_world(correspondents=())
    mn = nodes["mn"].mn
    mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    net.loss = lambda delivery: True
    mn.set_coa(LTE, 10.0)
    net.now = 10.0
    net.run(80.0)
    times = [t for t, e in nodes["mn"].timed(BindingUpdateSent) if e.coa == LTE]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]


# --- lifetime and refresh ------------------------------------------------------


def test_binding_is_refreshed_before_it_expires():
    net, nodes = build_world(latency=0.01, correspondents=())
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1500.0)
    sent = [t for t, e in nodes["mn"].timed(BindingUpdateSent)]
    assert len(sent) == 5  # 0, then every 80 % of 420 s
    for previous, refresh in itertools.pairwise(sent):
        assert refresh - previous == pytest.approx(0.8 * 420, abs=0.05)
    assert nodes["ha"].of_type(BindingExpired) == []
    assert nodes["mn"].of_type(BindingExpired) == []
    assert len(nodes["mn"].of_type(BindingAccepted)) == 5
    # Refreshes do not move the tunnel.
    assert nodes["ha"].of_type(TunnelEndpointChanged) == [TunnelEndpointChanged(HOA, WIFI)]


def test_unanswered_refresh_lets_the_binding_expire_on_both_sides():
    net, nodes = build_world(correspondents=())
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    net.loss = lambda delivery: True
    net.run(430.0)
    assert nodes["mn"].timed(BindingExpired) == [(420.0, BindingExpired(HA_ADDR, HOA, WIFI))]
    assert nodes["ha"].timed(BindingExpired) == [(420.0, BindingExpired(HOA, HOA, WIFI))]
    assert nodes["ha"].of_type(TunnelEndpointChanged)[-1] == TunnelEndpointChanged(HOA, None)
    assert nodes["ha"].ha.binding(HOA) is None


def test_binding_refresh_advice_brings_the_refresh_forward():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    [bu] = mn.datagrams_to_send(0.0)
    seq = dissect(bu)[MIP6MH_BU].seq
    # The HA grants 420 s and advises a refresh every 25 units (100 s), RFC 6275 §6.2.4.
    mn.receive(scapy_ba(0, seq, 105, HA_ADDR, refresh_units=25), HA_ADDR, HOA, None, 0.2)
    assert mn.get_timer() == pytest.approx(100.0)
    mn.handle_timer(100.0)
    [refresh] = mn.datagrams_to_send(100.0)
    assert dissect(refresh)[MIP6MH_BU].seq == (seq + 1) % 65536


def test_lifetime_granted_is_the_smaller_of_asked_and_allowed():
    net, nodes = build_world(correspondents=(), mn_lifetime=2000)
    nodes["ha"].ha.max_lifetime_units = 25
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    [bu] = net.sent("mn", 5)
    assert dissect(bu.packet)[MIP6MH_BU].mhtime == 500
    assert nodes["mn"].of_type(BindingAccepted)[0].lifetime == 100


# --- sequence numbers (RFC 6275 §9.5.1) ----------------------------------------


def test_sequence_numbers_wrap_at_2_16():
    net = Net()
    ha = net.add(SimNode("ha", ha=HomeAgent(HA_ADDR, HOME_PREFIX), fixed=HA_ADDR))
    mn = net.add(SimNode("mn", mn=MobileNode(HOA, HA_ADDR, lifetime=8, initial_sequence=65534)))
    mn.mn.set_coa(WIFI, 0.0)
    net.run(30.0)
    sequences = [dissect(d.packet)[MIP6MH_BU].seq for d in net.sent("mn", 5)]
    assert sequences[:5] == [65534, 65535, 0, 1, 2]
    statuses = [dissect(d.packet)[MIP6MH_BA].status for d in net.sent("ha", 6)]
    assert statuses and set(statuses) == {0}  # 0 is newer than 65535
    assert ha.of_type(BindingExpired) == []


def test_sequence_out_of_window_is_recovered_with_the_has_number():
    net = Net()
    ha = net.add(SimNode("ha", ha=HomeAgent(HA_ADDR, HOME_PREFIX), fixed=HA_ADDR))
    first = net.add(SimNode("mn", mn=MobileNode(HOA, HA_ADDR, initial_sequence=1000)))
    first.mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    # The MN restarts and has forgotten its sequence number.
    net.nodes.remove(first)
    restarted = net.add(SimNode("mn2", mn=MobileNode(HOA, HA_ADDR, initial_sequence=10)))
    restarted.mn.set_coa(LTE, 2.0)
    net.now = 2.0
    net.run(3.0)
    bus = [dissect(d.packet)[MIP6MH_BU].seq for d in net.sent("mn2", 5)]
    bas = [
        (dissect(d.packet)[MIP6MH_BA].status, dissect(d.packet)[MIP6MH_BA].seq)
        for d in net.sent("ha", 6)
    ]
    assert bus == [10, 1001]
    assert bas == [(0, 1000), (135, 1000), (0, 1001)]
    assert restarted.of_type(BindingRefused) == []
    assert restarted.of_type(BindingAccepted)[0].coa == LTE
    assert restarted.mn.counters["sequence_out_of_window"] == 1
    assert ha.ha.binding(HOA).coa == LTE


def test_a_peer_answering_135_forever_cannot_make_the_mn_loop():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    for _ in range(10):
        for out in mn.datagrams_to_send(0.0):
            seq = dissect(out)[MIP6MH_BU].seq
            mn.receive(scapy_ba(135, seq, 0, HA_ADDR), HA_ADDR, HOA, WIFI, 0.0)
    # Two immediate resyncs, then MAX_UPDATE_RATE (3 a second, RFC 6275 §11.8)
    # holds the third back until the first BU is a second old.
    assert mn.sent["BindingUpdate"] == 3
    assert mn.counters["bu_rate_limited"] == 1
    assert mn.get_timer() == pytest.approx(1.0)
    mn.handle_timer(1.0)
    [out] = mn.datagrams_to_send(1.0)
    seq = dissect(out)[MIP6MH_BU].seq
    mn.receive(scapy_ba(135, seq, 0, HA_ADDR), HA_ADDR, HOA, WIFI, 1.0)
    assert mn.sent["BindingUpdate"] == 1 + 3   # three resyncs, then the back-off
    assert mn.counters["sequence_resync_limit"] == 1
    assert mn.datagrams_to_send(1.0) == []


def test_ba_for_a_sequence_never_sent_is_ignored():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    [bu] = mn.datagrams_to_send(0.0)
    seq = dissect(bu)[MIP6MH_BU].seq
    mn.receive(scapy_ba(0, (seq + 100) % 65536, 105, HA_ADDR), HA_ADDR, HOA, WIFI, 0.1)
    assert mn.counters["ba_sequence_mismatch"] == 1
    assert not [e for e in drain(mn) if isinstance(e, BindingAccepted)]
    assert mn.entry(HA_ADDR).state is EntryState.REGISTERING


# --- refusals and errors -------------------------------------------------------


def test_hoa_outside_the_home_prefix_is_refused_with_132():
    net = Net()
    net.add(SimNode("ha", ha=HomeAgent(HA_ADDR, IPv6Network("2001:db8:999::/64")), fixed=HA_ADDR))
    mn = net.add(SimNode("mn", mn=lone_mn()))
    mn.mn.set_coa(WIFI, 0.0)
    net.run(100.0)
    [ba] = net.sent("ha", 6)
    assert dissect(ba.packet)[MIP6MH_BA].status == 132
    assert ba.wire_dst == WIFI  # the refusal reaches the MN where it is
    assert mn.of_type(BindingRefused) == [BindingRefused(HA_ADDR, HOA, WIFI, 132)]
    assert len(net.sent("mn", 5)) == 1  # a refusal stops the retransmissions
    assert mn.mn.get_timer() is None


def test_no_aot_between_mn_and_ha():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    mn.datagrams_to_send(0.0)
    drain(mn)
    mn.receive(scapy_aotc(b"12345678", src=HA_ADDR), HA_ADDR, HOA, OnWire(dst=WIFI), 0.1)
    assert mn.datagrams_to_send(0.1) == [] and drain(mn) == []
    assert mn.counters["aot_with_home_agent"] == 1
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    for mh_type in (30, 32):
        body = b"\x00\x00" if mh_type == 30 else bytes((0, 0, 1, 4, 0, 0, 0, 0, 88, 8)) + bytes(8)
        ha.receive(scapy_generic(mh_type, body, HOA, HA_ADDR), HOA, HA_ADDR, WIFI, 0.2)
    assert ha.counters["aot_with_home_agent"] == 2
    assert ha.datagrams_to_send(0.2) == [] and ha.next_event() is None


def test_binding_refresh_request_gets_a_bu_at_once():
    net, nodes = build_world(correspondents=())
    mn = nodes["mn"].mn
    mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    before = mn.sent["BindingUpdate"]
    mn.receive(scapy_generic(0, b"\x00\x00", HA_ADDR, HOA), HA_ADDR, HOA, WIFI, 5.0)
    assert mn.sent["BindingUpdate"] == before + 1


# --- deregistration ------------------------------------------------------------


def test_returning_home_deregisters_with_the_ha_then_the_cns():
    net, nodes = build_world(latency=0.01)
    mn_node, cn_node, ha_node = nodes["mn"], nodes["cn"], nodes["ha"]
    mn_node.mn.set_coa(WIFI, 0.0)
    net.run(5.0)
    assert cn_node.cn.binding(HOA).coa == WIFI
    mn_node.events.clear()
    mn_node.mn.set_coa(None, 10.0)
    net.now = 10.0
    net.run(15.0)
    home_bu, cn_bu = [d for d in net.sent("mn", 5) if d.time >= 10.0]
    for delivery, peer in ((home_bu, HA_ADDR), (cn_bu, CN_ADDR)):
        theirs = dissect(delivery.packet)
        assert theirs[MIP6MH_BU].mhtime == 0
        assert theirs[MIP6OptAltCoA].acoa == str(HOA)  # CoA = HoA: back home (RFC 6275 §11.5.4)
        assert (delivery.dst, delivery.wire_src) == (peer, HOA)  # no ancillary: sent from home
    assert cn_bu.time > home_bu.time  # the CNs once the HA has answered
    events = [e for _, e in mn_node.events]
    assert events[:3] == [
        DataPathChanged(HOA, None, CN_ADDR, False),
        CoaChanged(HOA, WIFI, None),
        TunnelEndpointChanged(HOA, None),
    ]
    assert BindingDeregistered(HA_ADDR, HOA) in events
    assert BindingDeregistered(CN_ADDR, HOA) in events
    assert ha_node.ha.binding(HOA) is None and cn_node.cn.binding(HOA) is None
    assert ha_node.of_type(TunnelEndpointChanged)[-1] == TunnelEndpointChanged(HOA, None)
    assert cn_node.of_type(AcceptFrom)[-1] == AcceptFrom(CN_ADDR, HOA, None)
    assert cn_node.of_type(SendTo)[-1] == SendTo(CN_ADDR, HOA, None)
    assert mn_node.mn.get_timer() is None  # nothing left to refresh


def test_deregister_while_away_removes_every_binding():
    net, nodes = build_world()
    mn = nodes["mn"].mn
    mn.set_coa(LTE, 0.0)
    net.run(5.0)
    mn.deregister(6.0)
    net.now = 6.0
    net.run(7.0)
    for delivery in [d for d in net.sent("mn", 5) if d.time >= 6.0]:
        theirs = dissect(delivery.packet)
        assert theirs[MIP6MH_BU].mhtime == 0
        assert theirs[MIP6OptAltCoA].acoa == str(LTE) and delivery.wire_src == LTE
    assert nodes["ha"].ha.binding(HOA) is None and nodes["cn"].cn.binding(HOA) is None
    assert {e.peer for e in nodes["mn"].of_type(BindingDeregistered)} == {HA_ADDR, CN_ADDR}
    assert mn.get_timer() is None


def test_deregistration_answered_133_is_complete():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    [bu] = mn.datagrams_to_send(0.0)
    mn.receive(scapy_ba(0, dissect(bu)[MIP6MH_BU].seq, 105, HA_ADDR), HA_ADDR, HOA, WIFI, 0.1)
    mn.set_coa(None, 1.0)
    [dereg] = mn.datagrams_to_send(1.0)
    drain(mn)
    # The HA lost its binding meanwhile and says so (RFC 6275 §10.3.2).
    mn.receive(scapy_ba(133, dissect(dereg)[MIP6MH_BU].seq, 0, HA_ADDR), HA_ADDR, HOA, None, 1.1)
    assert drain(mn) == [BindingDeregistered(HA_ADDR, HOA)]
    assert mn.get_timer() is None


def test_start_at_home_sends_nothing():
    mn = lone_mn()
    mn.set_coa(None, 0.0)
    assert mn.datagrams_to_send(0.0) == [] and drain(mn) == []
    mn.set_coa(HOA, 0.0)  # the HoA as CoA also means "at home"
    assert mn.datagrams_to_send(0.0) == [] and mn.at_home


def test_messages_for_another_hoa_or_from_strangers_are_dropped():
    mn = lone_mn()
    mn.set_coa(WIFI, 0.0)
    mn.datagrams_to_send(0.0)
    other = IPv6Address("2001:db8:100::99")
    mn.receive(scapy_ba(0, 1, 1, HA_ADDR, dst=other), HA_ADDR, other, WIFI, 0.1)
    stranger = IPv6Address("2001:db8:66::6")
    mn.receive(scapy_ba(0, 1, 1, stranger), stranger, HOA, WIFI, 0.1)
    assert mn.counters["not_our_home_address"] == 1 and mn.counters["unknown_peer"] == 1
    assert mn.datagrams_to_send(0.1) == []


def test_a_registration_that_recreates_the_binding_waits_1_5_s_again():
    # After a deregistration the HA creates the binding anew (DAD first): 1.5 s.
    net, nodes = build_world(correspondents=())
    mn = nodes["mn"].mn
    mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    mn.set_coa(None, 2.0)
    net.now = 2.0
    net.run(3.0)
    net.loss = lambda delivery: True
    mn.set_coa(LTE, 10.0)
    net.now = 10.0
    net.run(20.0)
    times = [t for t, e in nodes["mn"].timed(BindingUpdateSent) if e.coa == LTE]
    assert times[:3] == [10.0, 11.5, 14.5]


def test_returning_home_also_deregisters_a_cn_whose_ba_was_lost():
    net, nodes = build_world()
    net.loss = lambda delivery: delivery.sender == "cn" and delivery.mh_type == 6
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(2.0)
    assert nodes["cn"].cn.binding(HOA).coa == WIFI  # the CN bound; the MN never heard
    net.loss = lambda delivery: False
    nodes["mn"].mn.set_coa(None, 3.0)
    net.now = 3.0
    net.run(5.0)
    assert nodes["cn"].cn.binding(HOA) is None
    assert BindingDeregistered(CN_ADDR, HOA) in nodes["mn"].of_type(BindingDeregistered)
