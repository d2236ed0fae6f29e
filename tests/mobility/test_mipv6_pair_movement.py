"""Movement (draft §6.1): Wi-Fi -> LTE -> Wi-Fi, fast hand-overs, and MN-MN with both moving."""

from __future__ import annotations

import pytest
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    HOA2,
    LTE,
    LTE2,
    WIFI,
    WIFI2,
    build_world,
)

from vmip.mobility.events import (
    AcceptFrom,
    BindingAccepted,
    BindingRefused,
    BindingUpdateSent,
    CoaChanged,
    DataPathChanged,
    SendTo,
    TunnelEndpointChanged,
)
from vmip.mobility.mn import EntryState

BU, BA, AOTC, AOTR = 5, 6, 31, 32


def move(net, node, coa, at):
    net.now = at
    node.mn.set_coa(coa, at)
    net.run(at + 5.0)


def test_wifi_lte_wifi_reregisters_with_the_ha_then_the_cn():
    net, nodes = build_world(latency=0.02)
    mn, cn, ha = nodes["mn"], nodes["cn"], nodes["ha"]
    for at, coa in ((0.0, WIFI), (50.0, LTE), (100.0, WIFI)):
        move(net, mn, coa, at)
        window = [d for d in net.deliveries if at <= d.time < at + 5.0]
        to_ha = [d for d in window if d.sender == "mn" and d.dst == HA_ADDR]
        home_ba = [d for d in window if d.sender == "ha" and d.mh_type == BA]
        to_cn = [d for d in window if d.sender == "mn" and d.dst == CN_ADDR and d.mh_type == BU]
        assert to_ha[0].time == at and to_ha[0].wire_src == coa
        assert to_cn[0].time >= home_ba[0].time  # the CN after the HA's BA
        assert to_cn[0].wire_src == coa
        assert ha.ha.binding(HOA).coa == coa and cn.cn.binding(HOA).coa == coa
    challenges = [(d.time, d.wire_dst) for d in net.deliveries if d.mh_type == AOTC]
    # Wi-Fi and LTE are proven once; back on Wi-Fi the proof is in the cache: BU/BA alone.
    assert [coa for _, coa in challenges] == [WIFI, LTE]
    assert mn.of_type(CoaChanged) == [
        CoaChanged(HOA, None, WIFI),
        CoaChanged(HOA, WIFI, LTE),
        CoaChanged(HOA, LTE, WIFI),
    ]
    assert [e.coa for e in mn.of_type(TunnelEndpointChanged)] == [WIFI, LTE, WIFI]
    assert [e.coa for e in ha.of_type(TunnelEndpointChanged)] == [WIFI, LTE, WIFI]
    assert [(e.coa, e.direct) for e in mn.of_type(DataPathChanged)] == [
        (WIFI, True),
        (None, False),
        (LTE, True),
        (None, False),
        (WIFI, True),
    ]
    assert [e.coa for e in cn.of_type(AcceptFrom)] == [WIFI, LTE, WIFI]
    assert [e.coa for e in cn.of_type(SendTo)] == [WIFI, None, LTE, WIFI]
    assert net.lost == []


def test_a_hand_over_in_the_middle_of_a_registration_settles_on_the_last_coa():
    net, nodes = build_world(latency=0.05)
    mn = nodes["mn"]
    mn.mn.set_coa(WIFI, 0.0)
    net.run(0.17)  # HA done, the CN's AOTC to Wi-Fi is in flight
    assert [d.mh_type for d in net.deliveries][-1] == BU
    move(net, mn, LTE, 0.17)
    net.run(60.0)
    assert nodes["ha"].ha.binding(HOA).coa == LTE
    assert nodes["cn"].cn.binding(HOA).coa == LTE
    assert all(e.state is EntryState.BOUND and e.coa == LTE for e in mn.mn.entries())
    assert mn.of_type(BindingRefused) == []
    assert mn.of_type(DataPathChanged)[-1] == DataPathChanged(HOA, LTE, CN_ADDR, True)


def test_mn_mn_both_moving():
    net, nodes = build_world(latency=0.02, second_mn=True)
    one, two = nodes["mn"], nodes["mn2"]
    one.mn.set_coa(WIFI, 0.0)
    two.mn.set_coa(WIFI2, 0.0)
    net.run(30.0)
    # Each MN is the other's CN (draft §5.2.2 examples 3 and 4).
    assert one.cn.binding(HOA2).coa == WIFI2 and two.cn.binding(HOA).coa == WIFI
    assert one.mn.entry(HOA2).state is EntryState.BOUND
    assert two.mn.entry(HOA).state is EntryState.BOUND
    # Both move at the same time.
    net.now = 40.0
    one.mn.set_coa(LTE, 40.0)
    two.mn.set_coa(LTE2, 40.0)
    net.run(120.0)
    # Each first BU went to the other's old CoA and was lost; the retransmission
    # went to the HoA, through the peer's HA, which already knew the new CoA.
    for sender, peer, stale in (("mn", HOA2, WIFI2), ("mn2", HOA, WIFI)):
        bus = [
            d
            for d in net.deliveries + net.lost
            if d.sender == sender and d.dst == peer and d.mh_type == BU and d.time >= 40
        ]
        bus.sort(key=lambda d: d.time)
        assert (bus[0].wire_dst, bus[0].receiver) == (stale, None)
        assert (bus[1].wire_dst, bus[1].via_tunnel) == (peer, True)
        assert bus[1].time - bus[0].time == pytest.approx(1.0)
    assert one.cn.binding(HOA2).coa == LTE2 and two.cn.binding(HOA).coa == LTE
    assert nodes["cn"].cn.binding(HOA).coa == LTE and nodes["cn"].cn.binding(HOA2).coa == LTE2
    for node, coa in ((one, LTE), (two, LTE2)):
        assert all(e.state is EntryState.BOUND and e.coa == coa for e in node.mn.entries())
        assert node.of_type(BindingRefused) == []
    # Once both bindings are in place, MH between the two MNs flows direct, CoA to CoA.
    net.run(400.0)
    refresh = [d for d in net.deliveries if d.time > 120 and d.sender == "mn" and d.dst == HOA2]
    assert refresh and all(
        (d.wire_src, d.wire_dst, d.via_tunnel) == (LTE, LTE2, False) for d in refresh
    )


def test_mn_mn_bu_goes_straight_to_the_coa_the_cn_role_knows():
    net, nodes = build_world(latency=0.02, second_mn=True, correspondents=())
    one, two = nodes["mn"], nodes["mn2"]
    two.mn.set_coa(WIFI2, 0.0)
    net.run(5.0)  # MN2 registered with the HA, and with MN1 (still at home)
    assert one.cn.binding(HOA2).coa == WIFI2
    one.mn.set_coa(WIFI, 10.0)
    net.now = 10.0
    net.run(15.0)
    [first] = [d for d in net.deliveries if d.sender == "mn" and d.dst == HOA2 and d.mh_type == BU]
    # MN1's own CN role holds MN2's proven CoA: no detour through MN2's HA.
    assert (first.wire_src, first.wire_dst, first.via_tunnel) == (WIFI, WIFI2, False)
    assert two.cn.binding(HOA).coa == WIFI


def test_mn_mn_bu_before_any_binding_goes_through_the_peers_ha():
    net, nodes = build_world(latency=0.02, second_mn=True, correspondents=())
    one, two = nodes["mn"], nodes["mn2"]
    # MN2 is away but has not registered with MN1 (MN1's CN role drops its BUs).
    one.cn = type(one.cn)(known_peers=[])
    two.mn.set_coa(WIFI2, 0.0)
    one.mn.set_coa(WIFI, 0.0)
    net.run(5.0)
    [first] = [d for d in net.deliveries if d.sender == "mn" and d.dst == HOA2 and d.mh_type == BU]
    assert (first.wire_src, first.wire_dst, first.via_tunnel) == (WIFI, HOA2, True)
    assert two.cn.binding(HOA).coa == WIFI
    [accepted] = [e for e in one.of_type(BindingAccepted) if e.peer == HOA2]
    assert accepted.coa == WIFI


@pytest.mark.parametrize("latency", [0.0, 0.3])
def test_bus_carry_the_current_coa_after_each_move(latency):
    net, nodes = build_world(latency=latency)
    mn = nodes["mn"]
    for at, coa in ((0.0, WIFI), (10.0, LTE), (20.0, WIFI), (30.0, LTE)):
        move(net, mn, coa, at)
    net.run(100.0)
    for event in mn.of_type(BindingUpdateSent):
        assert event.coa in (WIFI, LTE)
    assert nodes["cn"].cn.binding(HOA).coa == LTE and nodes["ha"].ha.binding(HOA).coa == LTE
