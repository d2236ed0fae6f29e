"""AOT* beyond registration: early tests (draft §4.5.2), HoA tests (§4.5.3), the proof cache."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from scapy.layers.inet6 import MIP6MH_Generic
from test_mipv6_pair_harness import (
    CN_ADDR,
    HOA,
    LTE,
    WIFI,
    build_world,
    dissect,
    nonce_of,
    scapy_aoto,
    scapy_aotr,
    scapy_bu,
    seeded_rng,
)

from vmip.mobility.aot import NONCES_PER_ADDRESS, NonceStore, ProofCache
from vmip.mobility.binding import MobilityError
from vmip.mobility.cn import Correspondent
from vmip.mobility.events import (
    AotChallengeSent,
    AotOfferSent,
    AotStatusReceived,
    AotStatusSent,
    BindingAccepted,
    CoaProven,
    HomeAddressProven,
    HomeAddressTestFailed,
    RegistrationTimeout,
)

AOTO, AOTC, AOTR, AOTS = 30, 31, 32, 33


def registered_world(**kwargs):
    net, nodes = build_world(**kwargs)
    nodes["mn"].mn.set_coa(WIFI, 0.0)
    net.run(1.0)
    assert nodes["cn"].cn.binding(HOA).coa == WIFI
    return net, nodes


# --- early test (draft §4.5.2) ----------------------------------------------------


def test_early_test_aoto_aotc_aotr_aots_then_a_bu_ba_alone():
    net, nodes = registered_world()
    nodes["mn"].extra.add(LTE)  # multi-homed: LTE is up but not in use yet
    nodes["mn"].mn.offer_address_test(CN_ADDR, LTE, 10.0)
    net.now = 10.0
    net.run(11.0)
    flow = [(d.sender, d.mh_type, d.wire_src, d.wire_dst) for d in net.deliveries if d.time >= 10]
    assert flow == [
        ("mn", AOTO, LTE, CN_ADDR),
        ("cn", AOTC, CN_ADDR, LTE),
        ("mn", AOTR, LTE, CN_ADDR),
        ("cn", AOTS, CN_ADDR, LTE),
    ]
    aots = next(d for d in net.deliveries if d.mh_type == AOTS)
    assert dissect(aots.packet)[MIP6MH_Generic].mhtype == AOTS
    assert aots.mh[6] >> 4 == 1  # code in the first 4 bits: "proof valid" (draft §4.4.4)
    assert nodes["mn"].of_type(AotOfferSent) == [AotOfferSent(CN_ADDR, HOA, LTE)]
    assert nodes["mn"].of_type(AotStatusReceived) == [AotStatusReceived(CN_ADDR, HOA, LTE, 1)]
    assert nodes["cn"].of_type(AotChallengeSent)[-1] == AotChallengeSent(
        HOA, HOA, LTE, "early-test"
    )
    assert CoaProven(HOA, LTE) in nodes["cn"].of_type(CoaProven)
    # The movement that follows needs no live proof: BU -> BA (draft §4.5.2's purpose).
    nodes["mn"].mn.set_coa(LTE, 20.0)
    net.now = 20.0
    net.run(21.0)
    assert [d.mh_type for d in net.deliveries if d.time >= 20 and d.sender == "cn"] == [6]
    assert nodes["cn"].cn.binding(HOA).coa == LTE


def test_early_test_refused_by_policy_gets_aots_code_0():
    net, nodes = registered_world(cn_kwargs={"allow_early_test": False})
    nodes["mn"].extra.add(LTE)
    nodes["mn"].mn.offer_address_test(CN_ADDR, LTE, 10.0)
    net.now = 10.0
    net.run(40.0)
    [aots] = net.sent("cn", AOTS)
    assert aots.mh[6] >> 4 == 0  # "AOTO not allowed"
    assert net.sent("cn", AOTC)[-1].time < 10.0  # no challenge for LTE
    assert nodes["mn"].of_type(AotStatusReceived) == [AotStatusReceived(CN_ADDR, HOA, LTE, 0)]
    assert nodes["cn"].of_type(AotStatusSent) == [AotStatusSent(HOA, HOA, LTE, 0)]
    assert len(net.sent("mn", AOTO)) == 1  # the exchange is over


def test_aoto_for_a_proven_address_gets_aots_1_at_once():
    cn = Correspondent(known_peers=[HOA], rng=seeded_rng(5))
    cn.receive(scapy_bu(1, 105, WIFI), HOA, CN_ADDR, WIFI, 0.0)
    [aotc] = cn.datagrams_to_send(0.0)
    cn.receive(scapy_aotr(nonce_of(aotc)), HOA, CN_ADDR, WIFI, 0.1)
    cn.datagrams_to_send(0.1)
    cn.receive(scapy_aoto(), HOA, CN_ADDR, WIFI, 5.0)
    [aots] = cn.datagrams_to_send(5.0)
    assert aots.packet[40 + 2] == AOTS and aots.packet[40 + 6] >> 4 == 1
    assert aots.onwire_dst == WIFI


def test_early_test_without_registration_is_refused_locally():
    _net, nodes = build_world()
    with pytest.raises(MobilityError, match="MUST NOT"):
        nodes["mn"].mn.offer_address_test(CN_ADDR, LTE, 0.0)
    with pytest.raises(MobilityError):
        nodes["mn"].mn.offer_address_test(IPv6Address("2001:db8:9::9"), LTE, 0.0)


def test_early_test_gives_up_when_the_cn_stays_silent():
    net, nodes = registered_world()
    net.loss = lambda delivery: delivery.mh_type == AOTO
    nodes["mn"].mn.offer_address_test(CN_ADDR, LTE, 10.0)
    net.now = 10.0
    net.run(200.0)
    times = [d.time - 10.0 for d in net.sent("mn", AOTO)]
    assert times == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    assert nodes["mn"].timed(RegistrationTimeout) == [
        (73.0, RegistrationTimeout(CN_ADDR, HOA, LTE, "early-test"))
    ]


def test_every_early_test_attempt_goes_to_the_peers_coa_known_at_that_time():
    """Towards another MN, an early test leaves from an address that is not
    our CoA, so it cannot take our reverse tunnel, and that MN's HA forwards
    no transit ESP to its HoA: a retransmission goes to the peer's CoA as
    our correspondent role holds it then (one learnt since the first
    attempt included), never to its HoA."""
    net, nodes = registered_world()
    nodes["mn"].extra.add(LTE)
    other_coa = IPv6Address("2001:db8:51::7")
    held: dict[IPv6Address, IPv6Address] = {}
    nodes["mn"].mn._peer_coa = held.get
    net.loss = lambda delivery: delivery.mh_type == AOTO
    nodes["mn"].mn.offer_address_test(CN_ADDR, LTE, 10.0)
    net.now = 10.0
    net.run(10.5)
    held[CN_ADDR] = other_coa            # the peer's binding with us arrives
    net.run(12.0)
    net.run(14.0)
    assert [(d.time - 10.0, d.wire_src, d.wire_dst) for d in net.sent("mn", AOTO)] == [
        (0.0, LTE, CN_ADDR), (1.0, LTE, other_coa), (3.0, LTE, other_coa)]


def test_unsolicited_aots_is_ignored():
    _net, nodes = registered_world()
    mn = nodes["mn"].mn
    from test_mipv6_pair_harness import scapy_generic

    mn.receive(scapy_generic(AOTS, b"\x10\x00", CN_ADDR, HOA), CN_ADDR, HOA, WIFI, 5.0)
    assert mn.counters["aots_unsolicited"] == 1
    assert nodes["mn"].of_type(AotStatusReceived) == []


# --- HoA test (draft §4.5.3) -------------------------------------------------------


def test_home_address_test_goes_through_the_ha_tunnel_both_ways():
    net, nodes = registered_world()
    nodes["cn"].cn.test_home_address(HOA, 10.0)
    net.now = 10.0
    net.run(11.0)
    [aotc] = [d for d in net.deliveries if d.mh_type == AOTC and d.time >= 10]
    [aotr] = [d for d in net.deliveries if d.mh_type == AOTR and d.time >= 10]
    assert (aotc.dst, aotc.wire_dst, aotc.via_tunnel) == (HOA, HOA, True)
    assert (aotr.src, aotr.wire_src) == (HOA, HOA)  # answered from the HoA, no ancillary
    assert aotc.mh[-8:] == aotr.mh[-8:]
    assert nodes["cn"].of_type(HomeAddressProven) == [HomeAddressProven(HOA)]
    assert nodes["cn"].of_type(AotChallengeSent)[-1].purpose == "home-test"


def test_home_address_test_fails_after_three_unanswered_challenges():
    net, nodes = registered_world()
    net.tunnels[HOA] = None  # the HA tunnel is broken
    nodes["cn"].cn.test_home_address(HOA, 10.0)
    net.now = 10.0
    net.run(30.0)
    assert [d.time - 10.0 for d in net.lost if d.mh_type == AOTC] == [0.0, 1.0, 3.0]
    assert nodes["cn"].timed(HomeAddressTestFailed) == [(17.0, HomeAddressTestFailed(HOA))]
    # The draft defines no action: the binding stays.
    assert nodes["cn"].cn.binding(HOA).coa == WIFI


def test_home_address_test_needs_an_accepted_registration():
    cn = Correspondent(known_peers=[HOA])
    with pytest.raises(MobilityError):
        cn.test_home_address(HOA, 0.0)


def test_home_address_test_answered_with_a_wrong_nonce_is_dropped():
    _net, nodes = registered_world()
    cn = nodes["cn"].cn
    cn.test_home_address(HOA, 10.0)
    cn.datagrams_to_send(10.0)
    cn.receive(scapy_aotr(bytes(8)), HOA, CN_ADDR, None, 10.5)
    assert cn.counters["aotr_wrong_nonce"] == 1
    assert HomeAddressProven(HOA) not in [e for e in iter(cn.next_event, None)]


# --- the proof cache: no lifetime, bounded, LRU (draft §4.5.1) ---------------------


def test_proof_cache_evicts_the_least_recently_used():
    cache = ProofCache(3)
    a, b, c, d = (IPv6Address(f"2001:db8:{n}::1") for n in (1, 2, 3, 4))
    for coa in (a, b, c):
        assert cache.add(HOA, coa, 0.0)
    assert cache.use(HOA, a)  # a becomes the most recent
    assert cache.add(HOA, d, 1.0)
    assert len(cache) == 3 and cache.evictions == 1
    assert not cache.peek(HOA, b)
    assert all(cache.peek(HOA, coa) for coa in (a, c, d))
    assert not cache.add(HOA, a, 2.0)  # already there: not new


def test_proof_cache_bound_makes_the_cn_challenge_again():
    cn = Correspondent(known_peers=[HOA], proof_cache_size=2, rng=seeded_rng(1))
    addresses = [IPv6Address(f"2001:db8:5{n}::2") for n in range(3)]

    def register(seq, coa):
        cn.receive(scapy_bu(seq, 105, coa), HOA, CN_ADDR, coa, float(seq))
        out = cn.datagrams_to_send(float(seq))
        if out[0].packet[42] == AOTC:
            cn.receive(scapy_aotr(nonce_of(out[0])), HOA, CN_ADDR, coa, float(seq))
            cn.datagrams_to_send(float(seq))
            return "challenged"
        return "acknowledged"

    assert [register(s, a) for s, a in enumerate(addresses, 1)] == ["challenged"] * 3
    assert len(cn.proofs) == 2
    # The oldest proof went; the two recent ones still register with BU/BA alone.
    assert register(4, addresses[1]) == "acknowledged"
    assert register(5, addresses[0]) == "challenged"


def test_proofs_have_no_lifetime():
    net, nodes = registered_world(mn_lifetime=40)
    nodes["mn"].mn.set_coa(LTE, 2.0)
    net.now = 2.0
    net.run(10_000.0)  # hours of refreshes on LTE
    nodes["mn"].mn.set_coa(WIFI, 10_001.0)
    net.now = 10_001.0
    net.run(10_002.0)
    assert [d for d in net.sent("cn", AOTC) if d.time > 10_000] == []
    assert nodes["mn"].of_type(BindingAccepted)[-1].coa == WIFI


def test_nonce_store_is_bounded_and_keeps_a_few_earlier_nonces():
    store = NonceStore(2)
    rng = seeded_rng(4)
    first = store.challenge(HOA, WIFI, "binding", rng, 0.0).nonce
    record = store.challenge(HOA, WIFI, "binding", rng, 1.0)
    assert record.nonce != first  # every AOTC a fresh nonce (draft §4.3.1)
    assert record.matches(first) and record.matches(record.nonce)
    sent = [first, record.nonce]
    for t in range(2, 2 + NONCES_PER_ADDRESS):
        sent.append(store.challenge(HOA, WIFI, "binding", rng, float(t)).nonce)
    assert len(set(sent)) == len(sent)
    # Only the last NONCES_PER_ADDRESS stay answerable.
    assert [record.matches(n) for n in sent] == \
        [False] * (len(sent) - NONCES_PER_ADDRESS) + [True] * NONCES_PER_ADDRESS
    assert not record.matches(bytes(8))
    record.answered = True
    fresh = store.challenge(HOA, WIFI, "early-test", rng, 9.0)
    assert fresh.waiting == {"early-test"} and not fresh.answered  # a new test
    store.challenge(HOA, LTE, "binding", rng, 3.0)
    store.challenge(HOA, HOA, "home-test", rng, 4.0)
    assert len(store) == 2 and store.evictions == 1 and store.get(HOA, WIFI) is None


def test_one_hoa_naming_many_addresses_evicts_its_own_nonces_not_another_hoas():
    store = NonceStore(64, per_hoa=8)
    rng = seeded_rng(5)
    other = IPv6Address("2001:db8:100::20")
    kept = store.challenge(other, IPv6Address("2001:db8:41::2"), "binding", rng, 0.0)
    for index in range(1, 200):
        store.challenge(HOA, IPv6Address(f"2001:db8:66::{index:x}"), "early-test", rng,
                        float(index))
    assert store.get(other, kept.address) is kept
    assert len(store) == 1 + 8
    # The flooding HoA's most recent tests are the ones it keeps.
    assert store.get(HOA, IPv6Address("2001:db8:66::c7")) is not None
    assert store.get(HOA, IPv6Address("2001:db8:66::1")) is None
