"""The MN's side of multiple care-of addresses (RFC 5648): O flag, fallbacks, limits."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from test_mcoa_registration import BA, BU, bids_of, both_bound, lifetime_of, world
from test_mipv6_pair_harness import CN_ADDR, HA_ADDR, HOA, LTE, WIFI, WIFI2

from vmip.mobility.binding import MobilityError
from vmip.mobility.events import BindingUpdateSent, PathsChanged
from vmip.mobility.mn import MobileNode
from vmip.wire import mh


def overwrite_flags(bu_bytes: bytes) -> tuple[bool, ...]:
    message = mh.parse_mh(bu_bytes)
    return tuple(option.overwrite for option in message.binding_identifiers)


def test_the_first_bid_bu_to_a_peer_overwrites_and_later_ones_do_not():
    net, _ha, _cn, _mn = both_bound()
    for peer in ("ha", "cn"):
        bus = [d for d in net.sent("mn", BU) if d.receiver == peer]
        assert [(bids_of(d.mh), overwrite_flags(d.mh)) for d in bus] == [
            ((1,), (True,)), ((2,), (False,))]


def test_a_binding_made_without_bid_is_overwritten_by_the_first_bid_registration():
    net, ha, _cn, mn = world()
    # An earlier run of this MN registered without BIDs.
    old = MobileNode(HOA, HA_ADDR, [CN_ADDR])
    old.set_coa(WIFI2, 0.0)
    for out in old.datagrams_to_send(0.0):
        ha.ha.receive(out.packet[40:], HOA, HA_ADDR, out.onwire_src, 0.0)
    assert [(b.bid, b.coa) for b in ha.ha.bindings()] == [(None, WIFI2)]
    mn.mn.set_care_of_addresses({1: WIFI, 2: LTE}, 0.0)
    net.run(6.0)
    assert [(b.bid, b.coa) for b in ha.ha.bindings()] == [(1, WIFI), (2, LTE)]
    assert ha.ha.holder_of(WIFI2) is None


def test_165_gets_the_bu_again_with_the_o_flag():
    _net, _ha, _cn, mn = both_bound()
    core = mn.mn
    # The HA lost our BIDs and holds a binding without one: it answers 165
    # to the next refresh of BID 2.
    assert core.probe(2, 6.0)
    sent = core.datagrams_to_send(6.0)
    (probe,) = [mh.parse_mh(o.packet[40:]) for o in sent]
    assert overwrite_flags(mh.build_mh(probe, HOA, HA_ADDR)) == (False,)
    refusal = mh.BindingAck(165, probe.sequence, 0, options=(mh.BindingIdentifier(2, 165),))
    core.receive(mh.build_mh(refusal, HA_ADDR, HOA), HA_ADDR, HOA, LTE, 6.01)
    (again,) = [mh.parse_mh(o.packet[40:]) for o in core.datagrams_to_send(6.01)]
    assert again.binding_identifiers == (mh.BindingIdentifier(2, overwrite=True),)
    assert again.sequence == (probe.sequence + 1) % 65536


def test_shutdown_deregisters_every_bid_with_one_bu_without_bid_per_peer():
    net, ha, cn, mn = both_bound()
    before = len(net.deliveries)
    mn.mn.deregister(6.0)
    net.run(8.0)
    bus = [d for d in net.deliveries[before:] if d.sender == "mn" and d.mh_type == BU]
    assert sorted((d.receiver, bids_of(d.mh), lifetime_of(d.mh), d.wire_src) for d in bus) == [
        ("cn", (), 0, WIFI), ("ha", (), 0, WIFI)]
    assert ha.ha.bindings() == [] and cn.cn.bindings() == []
    assert mn.mn.paths(CN_ADDR) == () and mn.mn.paths(HA_ADDR) == ()


def test_a_ba_without_bid_to_another_bids_bu_puts_the_primary_back():
    _net, _ha, _cn, mn = both_bound()
    core = mn.mn
    # BID 2's address changes: a BU of BID 2 leaves for the CN ...
    core.set_care_of_addresses({1: WIFI, 2: WIFI2}, 6.0)
    (to_cn,) = [mh.parse_mh(o.packet[40:]) for o in core.datagrams_to_send(6.0)
                if IPv6Address(o.packet[24:40]) == CN_ADDR]
    assert to_cn.binding_identifiers[0].bid == 2
    _events(core)
    # ... and the CN, restarted without RFC 5648, took it for a move to WIFI2.
    plain = mh.BindingAck(0, to_cn.sequence, 100)
    core.receive(mh.build_mh(plain, CN_ADDR, HOA), CN_ADDR, HOA, WIFI2, 6.01)
    assert core.counters["mcoa_unsupported_peer"] == 1
    (bu,) = [mh.parse_mh(o.packet[40:]) for o in core.datagrams_to_send(6.01)]
    assert bu.binding_identifiers == () and bu.alternate_care_of_address == WIFI
    assert [(e.peer, e.bid) for e in core.entries() if e.peer == CN_ADDR] == [(CN_ADDR, None)]
    assert [p for p in _events(core) if isinstance(p, PathsChanged)][-1] == PathsChanged(
        HOA, CN_ADDR, (), ())


def test_a_stale_ba_without_bid_does_not_make_a_peer_legacy():
    _net, _ha, _cn, mn = both_bound()
    stale = mh.BindingAck(0, 12345, 100)
    mn.mn.receive(mh.build_mh(stale, HA_ADDR, HOA), HA_ADDR, HOA, WIFI, 6.0)
    assert mn.mn.counters["mcoa_unsupported_peer"] == 0
    assert mn.mn.paths(HA_ADDR) == ((1, WIFI), (2, LTE))


def _events(core):
    found = []
    while (event := core.next_event()) is not None:
        found.append(event)
    return found


def test_an_unanswered_deregistration_of_a_gone_bid_is_given_up():
    net, _ha, _cn, mn = both_bound()
    net.loss = lambda d: d.sender == "mn" and d.mh_type == BU and lifetime_of(d.mh) == 0
    mn.mn.set_care_of_addresses({1: WIFI}, 6.0)
    net.run(200.0)
    assert [(e.peer, e.bid) for e in mn.mn.entries()] == [(HA_ADDR, 1), (CN_ADDR, 1)]
    assert mn.mn.get_timer() is not None and mn.mn.get_timer() > 200.0


def test_the_update_rate_limit_is_per_bid():
    net, _ha, _cn, mn = both_bound()
    mark = len(mn.events)
    # BID 2's address flaps ten times in half a second: at most 3 BUs a
    # second for BID 2 to each peer (RFC 6275 §11.8) ...
    for step in range(10):
        mn.extra.add(IPv6Address(f"2001:db8:60::{step + 2}"))
        mn.mn.set_care_of_addresses({1: WIFI, 2: IPv6Address(f"2001:db8:60::{step + 2}")},
                                    6.0 + step * 0.05)
        net.run(6.0 + step * 0.05)
    # ... while BID 1 is not held back by BID 2's rate.
    net.run(6.5)
    assert mn.mn.probe(1, 6.5) is True
    net.settle()
    sent = [e for t, e in mn.events[mark:] if isinstance(e, BindingUpdateSent) and t < 6.6]
    for peer in (HA_ADDR, CN_ADDR):
        assert len([e for e in sent if e.peer == peer and e.bid == 2]) <= 3
    assert [e.bid for e in sent if e.bid == 1] == [1]
    assert mn.mn.counters["bu_rate_limited"] >= 1
    net.run(20.0)
    final = IPv6Address("2001:db8:60::11")
    assert [(b.bid, b.coa) for b in _ha.ha.bindings_of(HOA)] == [(1, WIFI), (2, final)]


def test_bad_care_of_address_sets_are_refused():
    _net, _ha, _cn, mn = world()
    with pytest.raises(ValueError, match="BID 0"):
        mn.mn.set_care_of_addresses({0: WIFI}, 0.0)
    with pytest.raises(ValueError, match="two BIDs"):
        mn.mn.set_care_of_addresses({1: WIFI, 2: WIFI}, 0.0)
    with pytest.raises(ValueError, match="home address"):
        mn.mn.set_care_of_addresses({1: HOA}, 0.0)
    with pytest.raises(ValueError, match="at most"):
        mn.mn.set_care_of_addresses(
            {bid: IPv6Address(f"2001:db8:70::{bid}") for bid in range(1, 18)}, 0.0)
    with pytest.raises(MobilityError):
        mn.mn.set_primary(5, 0.0)
    single = MobileNode(HOA, HA_ADDR, [CN_ADDR])
    with pytest.raises(MobilityError):
        single.set_care_of_addresses({1: WIFI}, 0.0)
    assert single.probe(1, 0.0) is False


def test_without_multiple_care_of_no_bid_option_is_ever_sent():
    net, ha, cn, mn = world()
    mn.mn = MobileNode(HOA, HA_ADDR, [CN_ADDR])
    mn.mn.set_coa(WIFI, 0.0)
    net.run(6.0)
    assert net.sent("mn", BU) and all(bids_of(d.mh) == () for d in net.sent("mn", BU))
    assert all(bids_of(d.mh) == () for d in net.sent("ha", BA) + net.sent("cn", BA))
    assert [(b.bid, b.coa) for b in ha.ha.bindings() + cn.cn.bindings()] == [
        (None, WIFI), (None, WIFI)]


def test_a_bu_held_by_the_rate_limit_leaves_when_its_timer_fires():
    # Single CoA as well: at times[0] + 1.0, now - times[0] can round below
    # 1.0; the held BU then never left and the timer fired for ever.
    core = MobileNode(HOA, HA_ADDR, [CN_ADDR])
    start = 1.0 + 0.7053780962062304
    assert (start + 1.0) - start < 1.0          # the rounding this is about
    for coa in (WIFI, LTE, WIFI2, WIFI):
        core.set_coa(coa, start)
    assert core.counters["bu_rate_limited"] == 1
    core.datagrams_to_send(start)
    deadline = core.get_timer()
    assert deadline == start + 1.0
    core.handle_timer(deadline)
    sent = [mh.parse_mh(out.packet[40:]) for out in core.datagrams_to_send(deadline)]
    assert [m.alternate_care_of_address for m in sent] == [WIFI]
    assert core.get_timer() > deadline


def test_a_bid_that_comes_back_goes_on_from_its_last_sequence_number():
    """lte goes (BID 2 deregistered at the HA and the CN, which keep its last
    number against BUs held back on the path) and comes back: its BUs go on
    from that number, so neither peer answers 135 and both bind it again at
    the first BU."""
    net, ha, cn, mn = both_bound()
    mn.mn.set_care_of_addresses({1: WIFI}, 6.0)
    net.run(12.0)
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == [(1, WIFI)]
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == [(1, WIFI)]
    mn.mn.set_care_of_addresses({1: WIFI, 2: LTE}, 12.0)
    net.run(18.0)
    assert [(b.bid, b.coa) for b in ha.ha.bindings_of(HOA)] == [(1, WIFI), (2, LTE)]
    assert [(b.bid, b.coa) for b in cn.cn.bindings_of(HOA)] == [(1, WIFI), (2, LTE)]
    assert mn.mn.counters["sequence_out_of_window"] == 0
