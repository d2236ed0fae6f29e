"""MN <-> HA <-> CN driven against each other: the IRO registration of draft §3 and §4.5.1."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from scapy.layers.inet6 import MIP6MH_BU, MIP6OptAltCoA
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    WIFI,
    build_world,
    dissect,
    scapy_ba,
)

from vmip.mobility.binding import OnWire
from vmip.mobility.cn import Correspondent
from vmip.mobility.events import (
    AcceptFrom,
    AotChallengeSent,
    AotResponseSent,
    BindingAccepted,
    BindingExpired,
    BindingRefused,
    BindingUpdateSent,
    CoaProven,
    DataPathChanged,
    RegistrationTimeout,
    SendTo,
)
from vmip.mobility.mn import EntryState

BU, BA, AOTC, AOTR = 5, 6, 31, 32


def test_bu_aotc_aotr_ba_on_the_wire():
    net, nodes = build_world(latency=0.01)
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    flow = [(d.sender, d.mh_type) for d in net.deliveries]
    assert flow == [("mn", BU), ("ha", BA), ("mn", BU), ("cn", AOTC), ("mn", AOTR), ("cn", BA)]
    _, _, bu_cn, aotc, aotr, ba_cn = net.deliveries
    # The BU to the CN: from the HoA (SA level), from the CoA on the wire, AltCoA = CoA.
    theirs = dissect(bu_cn.packet)
    assert (bu_cn.src, bu_cn.wire_src, bu_cn.dst) == (HOA, WIFI, CN_ADDR)
    assert theirs[MIP6OptAltCoA].acoa == str(WIFI) and "H" not in theirs[MIP6MH_BU].flags
    # The AOTC goes to the CoA; the AOTR comes back from it with the same nonce.
    assert (aotc.dst, aotc.wire_dst, aotr.wire_src) == (HOA, WIFI, WIFI)
    assert aotc.mh[-8:] == aotr.mh[-8:]
    assert (ba_cn.dst, ba_cn.wire_dst) == (HOA, WIFI)
    [accepted] = [e for e in nodes["mn"].of_type(BindingAccepted) if e.peer == CN_ADDR]
    # RTT counted from the BU: BU, AOTC, AOTR, BA = four one-way delays.
    assert accepted == BindingAccepted(CN_ADDR, HOA, WIFI, 420, pytest.approx(0.04))
    assert nodes["cn"].cn.binding(HOA).coa == WIFI


def test_mn_goes_direct_when_the_bu_leaves_and_cn_sends_only_after_the_proof():
    net, nodes = build_world(latency=0.01)
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    [(bu_time, _)] = [(t, e) for t, e in nodes["mn"].timed(BindingUpdateSent) if e.peer == CN_ADDR]
    assert nodes["mn"].timed(DataPathChanged) == [
        (bu_time, DataPathChanged(HOA, WIFI, CN_ADDR, True))
    ]
    [(accept_time, _)] = nodes["cn"].timed(AcceptFrom)
    [(proof_time, _)] = nodes["cn"].timed(CoaProven)
    [(send_time, send)] = nodes["cn"].timed(SendTo)
    assert accept_time < proof_time == send_time and send.coa == WIFI


def test_aotr_is_resent_until_the_ba_arrives():
    net, nodes = build_world()
    lost_bas = []

    def lose_three_cn_bas(delivery):
        if delivery.sender == "cn" and delivery.mh_type == BA and len(lost_bas) < 3:
            lost_bas.append(delivery.time)
            return True
        return False

    net.loss = lose_three_cn_bas
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(20.0)
    aotrs = [d.time for d in net.sent("mn", AOTR)]
    # Back-off from 1 s (RFC 6275 §11.8 rules, draft §4.5.1); the BU is not resent meanwhile.
    assert aotrs == [0.0, 1.0, 3.0, 7.0]
    assert len([d for d in net.sent("mn", BU) if d.dst == CN_ADDR]) == 1
    # Every AOTR got a BA: the CN kept the nonce after the first one.
    assert lost_bas == [0.0, 1.0, 3.0]
    assert nodes["cn"].cn.counters["ba_resent"] == 3
    [accepted] = [e for e in nodes["mn"].of_type(BindingAccepted) if e.peer == CN_ADDR]
    assert accepted.rtt == pytest.approx(7.0)
    assert nodes["mn"].mn.entry(CN_ADDR).state is EntryState.BOUND


def test_bu_is_resent_while_no_aotc_comes_and_each_challenge_has_a_fresh_nonce():
    net, nodes = build_world()
    lost = []

    def lose_first_aotc(delivery):
        if delivery.mh_type == AOTC and not lost:
            lost.append(delivery)
            return True
        return False

    net.loss = lose_first_aotc
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(5.0)
    assert [d.time for d in net.sent("mn", BU) if d.dst == CN_ADDR] == [0.0, 1.0]
    aotcs = net.sent("cn", AOTC)
    # Draft §4.3.1: a freshly generated nonce in every AOTC.
    assert len(aotcs) == 2 and aotcs[0].mh[-8:] != aotcs[1].mh[-8:]
    assert nodes["cn"].cn.binding(HOA).coa == WIFI


def test_cns_register_only_after_the_home_registration():
    net, nodes = build_world(latency=0.05)
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(2.0)
    [home_ba] = net.sent("ha", BA)
    [cn_bu] = [d for d in net.sent("mn", BU) if d.dst == CN_ADDR]
    assert cn_bu.time == pytest.approx(home_ba.time + 0.05)


def test_silent_ha_does_not_block_the_cns_forever():
    net, nodes = build_world()
    net.loss = lambda delivery: delivery.receiver == "ha"
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(100.0)
    [(timeout_time, timeout)] = nodes["mn"].timed(RegistrationTimeout)
    assert timeout == RegistrationTimeout(HA_ADDR, HOA, WIFI, "bu") and timeout_time == 78.5
    [cn_bu] = [d for d in net.sent("mn", BU) if d.dst == CN_ADDR]
    assert cn_bu.time == 78.5
    assert nodes["cn"].cn.binding(HOA).coa == WIFI  # AOTC, AOTR and BA go direct


def test_unanswered_cn_registration_reverts_to_the_tunnel():
    net, nodes = build_world()
    net.loss = lambda delivery: delivery.receiver == "cn"
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(100.0)
    paths = [(t, e.direct) for t, e in nodes["mn"].timed(DataPathChanged)]
    assert paths == [(0.0, True), (63.0, False)]  # 1+2+4+8+16 s of back-off, then 32 s
    assert nodes["mn"].of_type(RegistrationTimeout) == [
        RegistrationTimeout(CN_ADDR, HOA, WIFI, "bu")
    ]


def test_no_ba_after_the_aotrs_starts_over_with_a_bu():
    net, nodes = build_world()
    net.loss = lambda delivery: delivery.sender == "cn" and delivery.mh_type == BA
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(70.0)
    assert [d.time for d in net.sent("mn", AOTR)] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    assert nodes["mn"].of_type(RegistrationTimeout) == [
        RegistrationTimeout(CN_ADDR, HOA, WIFI, "aotr")
    ]
    # At 63 s the MN tries a BU again; the CN has the proof now and answers with a BA.
    assert [d.time for d in net.sent("mn", BU) if d.dst == CN_ADDR] == [0.0, 63.0]
    assert [d.time for d in net.sent("cn", AOTC)] == [0.0]


def test_a_cn_that_forgets_the_mn_turns_the_direct_path_off_at_the_refresh():
    net, nodes = build_world()
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    # The CN loses the MN (say its SA went): from now on the BUs are dropped unanswered.
    nodes["cn"].cn = Correspondent(known_peers=[])
    net.run(500.0)
    paths = [(t, e.direct) for t, e in nodes["mn"].timed(DataPathChanged)]
    # Refresh at 336 s (80 % of 420 s), 63 s of back-off, then back to the tunnel.
    assert paths == [(0.0, True), (pytest.approx(336.0 + 63.0), False)]
    assert nodes["cn"].cn.counters["bu_unknown_hoa"] >= 1
    assert nodes["mn"].timed(BindingExpired) == [(420.0, BindingExpired(CN_ADDR, HOA, WIFI))]


def test_a_refusal_from_the_cn_turns_the_direct_path_off():
    net, nodes = build_world()
    mn = nodes["mn"].mn
    net.loss = lambda delivery: delivery.receiver == "cn"
    mn.set_coa(WIFI, 0.0)
    net.run(0.5)
    [bu] = [d for d in net.lost if d.mh_type == BU and d.dst == CN_ADDR]
    seq = dissect(bu.packet)[MIP6MH_BU].seq
    mn.receive(scapy_ba(129, seq, 0, CN_ADDR), CN_ADDR, HOA, OnWire(dst=WIFI), 0.6)
    net.run(200.0)
    assert nodes["mn"].of_type(BindingRefused) == [BindingRefused(CN_ADDR, HOA, WIFI, 129)]
    assert [e.direct for e in nodes["mn"].of_type(DataPathChanged)] == [True, False]
    assert len([d for d in net.lost if d.mh_type == BU]) == 1  # no retransmission after it


def test_aotc_for_an_address_the_mn_does_not_use_is_not_answered():
    net, nodes = build_world()
    mn = nodes["mn"].mn
    mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    [aotc] = net.sent("cn", AOTC)
    before = mn.sent["AotResponse"]
    # A stray challenge for an old or foreign address: the MN cannot answer from it.
    mn.receive(aotc.mh, CN_ADDR, HOA, OnWire(dst=IPv6Address("2001:db8:77::1")), 2.0)
    assert mn.sent["AotResponse"] == before
    assert mn.counters["aotc_unknown_address"] == 1


def test_events_name_every_step():
    net, nodes = build_world()
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    assert nodes["cn"].of_type(AotChallengeSent) == [AotChallengeSent(HOA, HOA, WIFI, "binding")]
    assert nodes["mn"].of_type(AotResponseSent) == [AotResponseSent(CN_ADDR, HOA, WIFI)]
    assert nodes["cn"].of_type(CoaProven) == [CoaProven(HOA, WIFI)]
