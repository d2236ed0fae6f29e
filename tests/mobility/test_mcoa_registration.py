"""Multiple care-of addresses (RFC 5648 with IRO) end to end between the cores.

An MN with two links (wifi: BID 1, lte: BID 2) registers both with its HA
and a CN over the fake network of test_mipv6_pair_harness: each BID's BU
from its own CoA, each CoA proven by its own AOT at the CN.
"""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    HOME_PREFIX,
    LTE,
    WIFI,
    WIFI2,
    Net,
    SimNode,
    seeded_rng,
)

from vmip.mobility.cn import Correspondent
from vmip.mobility.events import (
    AotChallengeSent,
    BindingAccepted,
    BindingUpdateSent,
    CareOfAddressesChanged,
    CoaChanged,
    DataPathChanged,
    PathsChanged,
)
from vmip.mobility.ha import HomeAgent
from vmip.mobility.mn import EntryState, MobileNode
from vmip.wire import mh

BU, BA = 5, 6


def world(ha_bids: int = 4, cn_bids: int = 4, latency: float = 0.01):
    net = Net(latency)
    rng = seeded_rng(7)
    ha = net.add(SimNode("ha", ha=HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=[HOA],
                                            max_bids_per_hoa=ha_bids),
                         cn=Correspondent(known_peers=[HOA], rng=rng), fixed=HA_ADDR))
    cn = net.add(SimNode("cn", cn=Correspondent(known_peers=[HOA], rng=rng,
                                                max_bids_per_hoa=cn_bids), fixed=CN_ADDR))
    mn = net.add(SimNode("mn", mn=MobileNode(HOA, HA_ADDR, [CN_ADDR], rng=rng,
                                             multiple_care_of=True),
                         cn=Correspondent(known_peers=[], rng=rng)))
    mn.extra = {WIFI, LTE, WIFI2}   # every link's address reaches the MN
    return net, ha, cn, mn


def bids_of(bu_bytes: bytes) -> tuple[int, ...]:
    message = mh.parse_mh(bu_bytes)
    return tuple(option.bid for option in message.binding_identifiers)


def lifetime_of(bu_bytes: bytes) -> int:
    message = mh.parse_mh(bu_bytes)
    assert isinstance(message, mh.BindingUpdate)
    return message.lifetime_units


def both_bound():
    net, ha, cn, mn = world()
    mn.mn.set_care_of_addresses({1: WIFI, 2: LTE}, 0.0)
    net.run(6.0)
    return net, ha, cn, mn


def test_two_links_are_bound_at_the_ha_and_the_cn():
    net, ha, cn, mn = both_bound()
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == [(1, WIFI), (2, LTE)]
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == [(1, WIFI), (2, LTE)]
    # One BU per BID, each sent from that BID's CoA (IRO: the ancillary source).
    for peer in ("ha", "cn"):
        sent = {bids_of(d.mh): d.wire_src for d in net.sent("mn", BU) if d.receiver == peer}
        assert sent == {(1,): WIFI, (2,): LTE}
    # Every BA echoed its BID.
    assert sorted(bids_of(d.mh) for d in net.sent("cn", BA)) == [(1,), (2,)]
    # Each CoA was challenged on its own (draft §4.5.1), at its own address.
    assert sorted(e.address for e in cn.of_type(AotChallengeSent)) == sorted([WIFI, LTE])
    # The cores report the full path sets; the MN's primary (BID 1) first.
    assert cn.of_type(PathsChanged)[-1].send == ((1, WIFI), (2, LTE))
    assert ha.of_type(PathsChanged)[-1].accept == ((1, WIFI), (2, LTE))
    assert ha.ha.paths(HOA) == (((1, WIFI), (2, LTE)), ((1, WIFI), (2, LTE)))
    assert mn.mn.paths(CN_ADDR) == ((1, WIFI), (2, LTE))
    assert mn.mn.paths(HA_ADDR) == ((1, WIFI), (2, LTE))
    assert mn.of_type(CareOfAddressesChanged) == [
        CareOfAddressesChanged(HOA, ((1, WIFI), (2, LTE)))]
    # The primary binding drives the single-binding events, as before.
    assert mn.of_type(CoaChanged) == [CoaChanged(HOA, None, WIFI)]
    assert [(e.coa, e.direct) for e in mn.of_type(DataPathChanged)] == [(WIFI, True)]
    assert ha.ha.binding(HOA).coa == WIFI and cn.cn.binding(HOA).coa == WIFI
    assert [(e.peer, e.bid, e.state) for e in mn.mn.entries()] == [
        (HA_ADDR, 1, EntryState.BOUND), (HA_ADDR, 2, EntryState.BOUND),
        (CN_ADDR, 1, EntryState.BOUND), (CN_ADDR, 2, EntryState.BOUND)]
    for coa in (WIFI, LTE):
        assert ha.ha.holder_of(coa) == HOA and cn.cn.holder_of(coa) == HOA


def test_removing_one_bid_deregisters_that_bid_only_from_a_remaining_coa():
    net, ha, cn, mn = both_bound()
    before = len(net.deliveries)
    mn.mn.set_care_of_addresses({1: WIFI}, 6.0)
    net.run(10.0)
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == [(1, WIFI)]
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == [(1, WIFI)]
    deregs = [d for d in net.deliveries[before:] if d.sender == "mn" and d.mh_type == BU]
    assert sorted((d.receiver, bids_of(d.mh), lifetime_of(d.mh), d.wire_src) for d in deregs) \
        == [("cn", (2,), 0, WIFI), ("ha", (2,), 0, WIFI)]
    assert [(e.peer, e.bid) for e in mn.mn.entries()] == [(HA_ADDR, 1), (CN_ADDR, 1)]
    assert mn.mn.paths(CN_ADDR) == ((1, WIFI),)
    assert cn.of_type(PathsChanged)[-1] == PathsChanged(CN_ADDR, HOA, ((1, WIFI),), ((1, WIFI),))
    assert ha.ha.holder_of(LTE) is None and cn.cn.holder_of(LTE) is None
    # The primary did not move: no single-binding event.
    assert mn.of_type(CoaChanged) == [CoaChanged(HOA, None, WIFI)]


def test_losing_the_primary_link_makes_the_other_primary_and_deregisters_the_lost_bid():
    net, ha, cn, mn = both_bound()
    mn.mn.set_care_of_addresses({2: LTE}, 6.0)
    net.run(10.0)
    assert mn.mn.primary_bid == 2 and mn.mn.coa == LTE
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == [(2, LTE)]
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == [(2, LTE)]
    assert mn.of_type(CoaChanged)[-1] == CoaChanged(HOA, WIFI, LTE)
    assert mn.of_type(DataPathChanged)[-1] == DataPathChanged(HOA, LTE, CN_ADDR, True)
    assert ha.ha.binding(HOA).coa == LTE


def test_set_primary_only_reorders_with_peers_that_speak_rfc5648():
    net, _ha, _cn, mn = both_bound()
    before = len(net.deliveries)
    mn.mn.set_primary(2, 6.0)
    net.run(10.0)
    assert mn.mn.primary_bid == 2 and mn.mn.coa == LTE
    assert [d for d in net.deliveries[before:] if d.mh_type == BU] == []
    assert mn.of_type(CoaChanged)[-1] == CoaChanged(HOA, WIFI, LTE)
    assert mn.of_type(DataPathChanged)[-1] == DataPathChanged(HOA, LTE, CN_ADDR, True)
    assert mn.mn.paths(CN_ADDR) == ((2, LTE), (1, WIFI))
    assert mn.of_type(CareOfAddressesChanged)[-1].coas == ((2, LTE), (1, WIFI))


def test_a_cn_without_rfc5648_keeps_one_binding_the_primary():
    net, ha, cn, mn = world(cn_bids=0)
    mn.mn.set_care_of_addresses({1: WIFI, 2: LTE}, 0.0)
    net.run(5.0)
    # The CN skipped the option (RFC 6275 §6.2.1) and answered without it.
    assert [(b.bid, b.coa) for b in cn.cn.bindings()] == [(None, WIFI)]
    assert all(bids_of(d.mh) == () for d in net.sent("cn", BA))
    # Only the primary's BU went to it: LTE never took its binding over.
    assert {d.wire_src for d in net.sent("mn", BU) if d.receiver == "cn"} == {WIFI}
    assert mn.mn.counters["mcoa_unsupported_peer"] == 1
    assert [(e.peer, e.bid) for e in mn.mn.entries()] == [
        (HA_ADDR, 1), (HA_ADDR, 2), (CN_ADDR, None)]
    assert mn.mn.entry(CN_ADDR).state is EntryState.BOUND
    assert [(e.coa, e.direct) for e in mn.of_type(DataPathChanged)] == [(WIFI, True)]
    assert mn.mn.paths(CN_ADDR) == ()
    assert [p for p in mn.of_type(PathsChanged) if p.peer == CN_ADDR] == []
    # The HA speaks it: both bound there.
    assert [b.bid for b in ha.ha.bindings_of(HOA)] == [1, 2]
    # Later BUs to the CN carry no BID; a primary change re-registers its one binding.
    mn.mn.set_primary(2, 6.0)
    net.run(10.0)
    assert [(b.bid, b.coa) for b in cn.cn.bindings()] == [(None, LTE)]
    assert all(bids_of(d.mh) == () for d in net.sent("mn", BU)
               if d.receiver == "cn" and d.time > 0.1)
    assert mn.mn.counters["mcoa_unsupported_peer"] == 1


def test_an_ha_without_rfc5648_keeps_one_binding_and_the_cn_still_gets_both():
    net, ha, cn, mn = world(ha_bids=0)
    mn.mn.set_care_of_addresses({1: WIFI, 2: LTE}, 0.0)
    net.run(5.0)
    assert [(b.bid, b.coa) for b in ha.ha.bindings()] == [(None, WIFI)]
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == [(1, WIFI), (2, LTE)]
    assert mn.mn.probe(2, 6.0) is False       # nothing of BID 2 at that HA
    assert mn.mn.probe(1, 6.0) is True        # its one binding is the primary link's


def test_a_new_coa_for_a_bid_is_proven_before_the_cn_sends_to_it():
    net, ha, cn, mn = both_bound()
    # Lose every AOTC to the new LTE address: the CN accepts from it, never sends to it.
    net.loss = lambda d: d.mh_type == 31 and d.wire_dst == WIFI2
    mn.mn.set_care_of_addresses({1: WIFI, 2: WIFI2}, 6.0)
    net.run(7.0)
    last = cn.of_type(PathsChanged)[-1]
    assert last.accept == ((1, WIFI), (2, WIFI2))
    assert last.send == ((1, WIFI),)
    assert cn.cn.pending_coas(HOA) == {WIFI2}
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == [(1, WIFI), (2, WIFI2)]
    net.loss = lambda d: False
    net.run(40.0)
    assert cn.of_type(PathsChanged)[-1].send == ((1, WIFI), (2, WIFI2))


def test_probe_refreshes_one_bid_at_the_ha_and_reports_its_bid():
    net, _ha, _cn, mn = both_bound()
    mark = len(mn.events)
    assert mn.mn.probe(2, 6.0) is True
    assert mn.mn.probe(2, 6.0) is False          # one in flight
    assert mn.mn.probe(3, 6.0) is False          # no such BID
    net.run(6.5)
    events = [e for _, e in mn.events[mark:]]
    sent = [e for e in events if isinstance(e, BindingUpdateSent)]
    accepted = [e for e in events if isinstance(e, BindingAccepted)]
    assert [(e.peer, e.bid, e.coa) for e in sent] == [(HA_ADDR, 2, LTE)]
    assert [(e.peer, e.bid) for e in accepted] == [(HA_ADDR, 2)]
    assert accepted[0].rtt == pytest.approx(0.02)
    assert mn.mn.counters["probes"] == 1


def test_returning_home_deletes_every_binding_with_one_bu_without_bid():
    net, ha, cn, mn = both_bound()
    before = len(net.deliveries)
    mn.mn.set_coa(None, 6.0)
    net.run(10.0)
    assert ha.ha.bindings() == [] and cn.cn.bindings() == []
    bus = [d for d in net.deliveries[before:] if d.sender == "mn" and d.mh_type == BU]
    assert sorted((d.receiver, bids_of(d.mh), lifetime_of(d.mh)) for d in bus) == [
        ("cn", (), 0), ("ha", (), 0)]
    assert mn.mn.care_of_addresses == {} and mn.mn.primary_bid is None
    assert ha.of_type(PathsChanged)[-1] == PathsChanged(HA_ADDR, HOA, (), ())
    assert cn.of_type(PathsChanged)[-1] == PathsChanged(CN_ADDR, HOA, (), ())
    assert ha.ha.paths(HOA) == ((), ())


def test_bids_expire_one_by_one_at_the_cn_and_the_ha():
    net, ha, cn, mn = both_bound()
    mn.events.clear()
    # The MN stops refreshing BID 2 (its link went silently): drop its BUs.
    net.loss = lambda d: d.sender == "mn" and d.mh_type == BU and bids_of(d.mh) == (2,)
    net.run(500.0)
    assert [b.bid for b in ha.ha.bindings_of(HOA)] == [1]
    assert [b.bid for b in cn.cn.bindings_of(HOA)] == [1]
    assert cn.of_type(PathsChanged)[-1].send == ((1, WIFI),)
    assert mn.mn.paths(CN_ADDR) == ((1, WIFI),)


def test_the_bul_stays_bounded_under_link_churn():
    net, ha, cn, mn = both_bound()
    t = 6.0
    for round_ in range(30):
        coas = {bid: IPv6Address(f"2001:db8:{50 + bid}::{round_ + 2}") for bid in (1, 2, 3)}
        mn.extra |= set(coas.values())
        mn.mn.set_care_of_addresses(coas if round_ % 2 else {1: coas[1]}, t)
        t += 2.0
        net.run(t)
    net.run(t + 100.0)
    assert len(mn.mn.entries()) <= 2 * 3
    assert len(ha.ha.bindings_of(HOA)) <= 3 and len(cn.cn.bindings_of(HOA)) <= 3
