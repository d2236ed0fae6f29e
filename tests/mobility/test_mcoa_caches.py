"""HA and CN binding caches with BIDs (RFC 5648), fed BUs directly: limits, replays, attacks."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    HOA2,
    HOME_PREFIX,
    LTE,
    WIFI,
    WIFI2,
    seeded_rng,
)

from vmip.mobility.cn import Correspondent
from vmip.mobility.events import PathsChanged, TunnelEndpointChanged
from vmip.mobility.ha import HomeAgent
from vmip.wire import mh

Status = mh.BindingAckStatus


def bu(seq: int, coa: IPv6Address, bid: int | None = None, lifetime: int = 100, *,
       home: bool = True, overwrite: bool = False, extra: tuple = ()) -> mh.BindingUpdate:
    options: tuple = (mh.AlternateCareOfAddress(coa),)
    if bid is not None:
        options += (mh.BindingIdentifier(bid, overwrite=overwrite),)
    return mh.BindingUpdate(seq, lifetime, ack=True, home_registration=home,
                            options=options + extra)


def ha_core(bids: int = 4) -> HomeAgent:
    return HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=[HOA, HOA2], max_bids_per_hoa=bids)


def cn_core(bids: int = 4) -> Correspondent:
    cn = Correspondent(known_peers=[HOA, HOA2], rng=seeded_rng(3), max_bids_per_hoa=bids)
    for hoa in (HOA, HOA2):
        for coa in (WIFI, LTE, WIFI2):
            cn.proofs.add(hoa, coa, 0.0)     # proven: the BA comes at once
    return cn


def send(core, message: mh.BindingUpdate, hoa: IPv6Address = HOA,
         wire: IPv6Address | None = None, now: float = 1.0) -> list[mh.BindingAck]:
    """One BU in (from *wire*, by default its AltCoA); the BAs out."""
    local = core.address if isinstance(core, HomeAgent) else CN_ADDR
    coa = wire or message.alternate_care_of_address
    core.receive(mh.build_mh(message, hoa, local), hoa, local, coa, now)
    return [answer for out in core.datagrams_to_send(now)
            if isinstance(answer := mh.parse_mh(out.packet[40:]), mh.BindingAck)]


def echoed(ack: mh.BindingAck) -> tuple[tuple[int, int], ...]:
    return tuple((option.bid, option.status) for option in ack.binding_identifiers)


def bids(core, hoa: IPv6Address = HOA) -> list[tuple[int | None, IPv6Address | None]]:
    return [(entry.bid, entry.coa) for entry in core.bindings_of(hoa)]


CORES = [pytest.param(ha_core, True, id="ha"), pytest.param(cn_core, False, id="cn")]


@pytest.mark.parametrize(("make", "home"), CORES)
def test_a_flood_of_bids_is_refused_and_counted_not_stored(make, home):
    core = make(2)
    answers = []
    for bid in range(1, 11):
        coa = IPv6Address(f"2001:db8:77::{bid}")
        if not home:
            core.proofs.add(HOA, coa, 0.0)
        answers += send(core, bu(bid, coa, bid, home=home))
    assert [b for b, _ in bids(core)] == [1, 2]
    assert core.counters["bid_limit"] == 8
    assert [a.status for a in answers] == [0, 0] + [Status.INSUFFICIENT_RESOURCES] * 8
    assert echoed(answers[5]) == ((6, Status.INSUFFICIENT_RESOURCES),)
    # Refreshing a stored BID still works at the limit.
    assert [a.status for a in send(core, bu(20, IPv6Address("2001:db8:77::1"), 1, home=home))] \
        == [0]


@pytest.mark.parametrize(("make", "home"), CORES)
def test_sequence_numbers_are_per_bid_and_replays_are_refused(make, home):
    core = make()
    assert [a.status for a in send(core, bu(10, WIFI, 1, home=home))] == [0]
    # A lower sequence number under another BID is no replay: its own space.
    assert [a.status for a in send(core, bu(5, LTE, 2, home=home))] == [0]
    replay = send(core, bu(10, WIFI2, 1, home=home))
    older = send(core, bu(9, WIFI2, 1, home=home))
    for answer in replay + older:
        assert answer.status == Status.SEQUENCE_NUMBER_OUT_OF_WINDOW
        assert answer.sequence == 10
        assert echoed(answer) == ((1, Status.SEQUENCE_NUMBER_OUT_OF_WINDOW),)
    assert bids(core) == [(1, WIFI), (2, LTE)]
    # Newer for BID 2 only: BID 1 untouched.
    assert [a.status for a in send(core, bu(6, WIFI2, 2, home=home))] == [0]
    assert bids(core) == [(1, WIFI), (2, WIFI2)]


@pytest.mark.parametrize(("make", "home"), CORES)
def test_bids_of_one_hoa_never_touch_another_hoas_bindings(make, home):
    core = make()
    send(core, bu(10, WIFI, 1, home=home))
    # HOA2 names HOA's CoA under the same BID: refused silently, counted.
    assert send(core, bu(50, WIFI, 1, home=home), hoa=HOA2) == []
    assert core.counters["bu_coa_in_use"] == 1
    # HOA2 deregisters "BID 1": its own (none), never HOA's.
    send(core, bu(51, LTE, 1, lifetime=0, home=home), hoa=HOA2)
    assert bids(core) == [(1, WIFI)]
    assert bids(core, HOA2) == []
    assert core.holder_of(WIFI) == HOA


@pytest.mark.parametrize(("make", "home"), CORES)
def test_a_coa_held_under_another_bid_of_the_same_hoa_moves_to_the_new_bid(make, home):
    core = make()
    send(core, bu(10, WIFI, 1, home=home))
    send(core, bu(20, LTE, 2, home=home))
    # The address moved from link 1 to link 2: the newest BU tells, BID 1's binding is stale.
    assert [a.status for a in send(core, bu(21, WIFI, 2, home=home))] == [0]
    assert bids(core) == [(2, WIFI)]
    assert core.counters["bid_coa_moved"] == 1
    assert core.holder_of(WIFI) == HOA and core.holder_of(LTE) is None


@pytest.mark.parametrize(("make", "home"), CORES)
def test_lifetime_zero_with_a_bid_removes_that_binding_only(make, home):
    core = make()
    send(core, bu(10, WIFI, 1, home=home))
    send(core, bu(20, LTE, 2, home=home))
    # Sent from the remaining CoA (WIFI), naming it.
    answers = send(core, bu(21, WIFI, 2, lifetime=0, home=home))
    assert [(a.status, echoed(a)) for a in answers] == [(0, ((2, 0),))]
    assert bids(core) == [(1, WIFI)]
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    local = HA_ADDR if home else CN_ADDR
    assert [e for e in events if isinstance(e, PathsChanged)][-1] == PathsChanged(
        local, HOA, ((1, WIFI),), ((1, WIFI),))


@pytest.mark.parametrize(("make", "home"), CORES)
def test_a_bu_without_bid_replaces_every_binding_of_the_hoa(make, home):
    core = make()
    send(core, bu(10, WIFI, 1, home=home))
    send(core, bu(20, LTE, 2, home=home))
    answers = send(core, bu(30, WIFI2, None, home=home))
    assert [(a.status, echoed(a)) for a in answers] == [(0, ())]
    assert bids(core) == [(None, WIFI2)]
    assert core.holder_of(WIFI) is None and core.holder_of(LTE) is None
    # And lifetime 0 without BID deletes everything.
    send(core, bu(40, WIFI, 1, home=home, overwrite=True))
    send(core, bu(41, LTE, 2, home=home))
    send(core, bu(42, WIFI, None, lifetime=0, home=home))
    assert bids(core) == []
    assert core.holder_of(WIFI) is None and core.holder_of(LTE) is None


@pytest.mark.parametrize(("make", "home"), CORES)
def test_a_binding_without_bid_stands_unless_the_bu_overwrites_it(make, home):
    core = make()
    send(core, bu(10, WIFI, None, home=home))
    refused = send(core, bu(11, LTE, 1, home=home))
    assert [(a.status, echoed(a)) for a in refused] == [
        (Status.MCOA_NON_MCOA_BINDING_EXISTS, ((1, Status.MCOA_NON_MCOA_BINDING_EXISTS),))]
    assert bids(core) == [(None, WIFI)]
    assert [a.status for a in send(core, bu(12, LTE, 1, home=home, overwrite=True))] == [0]
    assert bids(core) == [(1, LTE)]


@pytest.mark.parametrize(("make", "home"), CORES)
def test_malformed_bid_registrations_get_the_rfc5648_status(make, home):
    core = make()
    bulk = bu(1, WIFI, 1, home=home, extra=(mh.BindingIdentifier(2),))
    assert [a.status for a in send(core, bulk)] == [Status.MCOA_BULK_REGISTRATION_PROHIBITED]
    simultaneous = bu(2, WIFI, None, home=home,
                      extra=(mh.BindingIdentifier(1, simultaneous_home=True),))
    assert [a.status for a in send(core, simultaneous)] == [
        Status.MCOA_SIMULTANEOUS_HOME_AND_FOREIGN_PROHIBITED]
    assert [a.status for a in send(core, bu(3, WIFI, 0, home=home))] == [Status.MCOA_MALFORMED]
    assert bids(core) == []
    assert core.counters["bid_refused"] == 3


@pytest.mark.parametrize(("make", "home"), CORES)
def test_without_rfc5648_the_option_is_skipped_and_the_ba_has_none(make, home):
    core = make(0)
    answers = send(core, bu(10, WIFI, 1, home=home))
    answers += send(core, bu(11, LTE, 2, home=home))
    assert [(a.status, echoed(a)) for a in answers] == [(0, ()), (0, ())]
    # One binding, replaced by the second BU, exactly as a pre-RFC 5648 node.
    assert bids(core) == [(None, LTE)]


def test_the_ha_tunnel_follows_the_lowest_bid():
    ha = ha_core()
    send(ha, bu(10, LTE, 2))
    send(ha, bu(11, WIFI, 1))
    send(ha, bu(12, WIFI, 1, lifetime=0))
    tunnels = []
    while (event := ha.next_event()) is not None:
        if isinstance(event, TunnelEndpointChanged):
            tunnels.append(event.coa)
    assert tunnels == [LTE, WIFI, LTE]
    assert ha.binding(HOA).coa == LTE and ha.binding(HOA).bid == 2


def test_the_cn_refuses_a_bid_coa_that_is_not_the_on_wire_source():
    cn = cn_core()
    forged = bu(10, WIFI, None, home=False,
                extra=(mh.BindingIdentifier(1, care_of_address=LTE),))
    assert send(cn, forged) == []
    assert cn.counters["bu_bid_coa_mismatch"] == 1
    assert bids(cn) == []


def test_the_cn_proves_each_bids_coa_before_sending_to_it():
    cn = Correspondent(known_peers=[HOA], rng=seeded_rng(4))
    nonces = {}
    for seq, coa, bid in ((10, WIFI, 1), (20, LTE, 2)):
        message = bu(seq, coa, bid, home=False)
        cn.receive(mh.build_mh(message, HOA, CN_ADDR), HOA, CN_ADDR, coa, 1.0)
        for out in cn.datagrams_to_send(1.0):
            challenge = mh.parse_mh(out.packet[40:])
            assert isinstance(challenge, mh.AotChallenge)
            nonces[out.onwire_dst] = challenge.nonce
    # One AOTC per CoA, each to that CoA (draft §4.5.1).
    assert set(nonces) == {WIFI, LTE}
    assert cn.pending_coas(HOA) == {WIFI, LTE}
    # WIFI proves itself: its BID is bound and sent to; LTE is only accepted from.
    aotr = mh.AotResponse(nonces[WIFI])
    cn.receive(mh.build_mh(aotr, HOA, CN_ADDR), HOA, CN_ADDR, WIFI, 1.5)
    acks = [mh.parse_mh(out.packet[40:]) for out in cn.datagrams_to_send(1.5)]
    assert [(a.status, echoed(a)) for a in acks] == [(0, ((1, 0),))]
    paths = []
    while (event := cn.next_event()) is not None:
        if isinstance(event, PathsChanged):
            paths.append(event)
    assert paths[-1] == PathsChanged(CN_ADDR, HOA, ((1, WIFI), (2, LTE)), ((1, WIFI),))
    # A nonce from one CoA proves nothing about the other.
    wrong = mh.AotResponse(nonces[WIFI])
    cn.receive(mh.build_mh(wrong, HOA, CN_ADDR), HOA, CN_ADDR, LTE, 1.6)
    assert cn.counters["aotr_wrong_nonce"] == 1
    assert [(b.bid, b.coa) for b in cn.bindings_of(HOA)] == [(1, WIFI)]
    # Unproven, LTE's request is forgotten after the proof timeout; WIFI stays.
    cn.handle_timer(1.0 + cn.pending_proof_timeout)
    assert cn.pending_coas(HOA) == set()
    assert cn.paths(HOA) == (((1, WIFI),), ((1, WIFI),))
    assert cn.holder_of(LTE) is None


def test_a_cn_deregistration_releases_the_coa_for_another_mn():
    # Without BIDs too: a deleted binding no longer holds its CoA (holder_of),
    # or the next MN at that address would be refused as "CoA in use".
    cn = cn_core()
    send(cn, bu(10, WIFI, None, home=False))
    send(cn, bu(11, WIFI, None, lifetime=0, home=False))
    assert cn.holder_of(WIFI) is None
    assert [a.status for a in send(cn, bu(50, WIFI, None, home=False), hoa=HOA2)] == [0]
    assert cn.holder_of(WIFI) == HOA2


@pytest.mark.parametrize(("make", "home"), CORES)
@pytest.mark.parametrize("bad", [IPv6Address("fe80::1"), IPv6Address("ff02::1"),
                                 IPv6Address("::ffff:192.0.2.1")])
def test_every_bids_coa_gets_the_single_coa_checks(make, home, bad):
    core = make()
    send(core, bu(10, WIFI, 1, home=home))
    assert send(core, bu(11, bad, 2, home=home)) == []
    assert core.counters["bu_invalid_coa"] == 1
    assert bids(core) == [(1, WIFI)]


def test_a_bid_coa_in_the_home_prefix_is_refused_at_the_ha():
    ha = ha_core()
    assert send(ha, bu(10, IPv6Address("2001:db8:100::99"), 1)) == []
    assert ha.counters["bu_invalid_coa"] == 1 and ha.bindings() == []


def test_the_has_care_of_check_applies_to_every_bid():
    ha = ha_core()
    ha.care_of_check = lambda hoa, coa: "not certified" if coa == LTE else None
    send(ha, bu(10, WIFI, 1))
    assert send(ha, bu(11, LTE, 2)) == []
    assert ha.counters["care_of_not_certified"] == 1
    assert bids(ha) == [(1, WIFI)]
