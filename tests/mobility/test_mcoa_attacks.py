"""Attacks on the multi-CoA receivers (RFC 5648 with IRO) by an MN with its own
valid SA and HoA: what it can make a CN believe about other MNs."""

from __future__ import annotations

import random
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
    seeded_rng,
)

from vmip.mobility.cn import Correspondent
from vmip.mobility.events import SendTo
from vmip.mobility.ha import HomeAgent
from vmip.wire import mh


def register_and_prove(cn: Correspondent, hoa: IPv6Address, sequence: int, coa: IPv6Address,
                       bid: int, now: float) -> None:
    """A BU with *bid* from *coa*, and the AOTR answering its AOTC from there:
    what an MN that really receives at *coa* does."""
    bu = mh.BindingUpdate(sequence, 100, ack=True,
                          options=(mh.AlternateCareOfAddress(coa), mh.BindingIdentifier(bid)))
    cn.receive(mh.build_mh(bu, hoa, CN_ADDR), hoa, CN_ADDR, coa, now)
    for out in cn.datagrams_to_send(now):
        challenge = mh.parse_mh(out.packet[40:])
        if isinstance(challenge, mh.AotChallenge):
            aotr = mh.AotResponse(challenge.nonce)
            cn.receive(mh.build_mh(aotr, hoa, CN_ADDR), hoa, CN_ADDR, out.onwire_dst, now)
            cn.datagrams_to_send(now)


def test_one_mn_proving_a_whole_prefix_never_evicts_another_mns_proofs():
    """An MN may prove every address of the prefix on its link, one BID BU
    each; the proofs it fills the cache with are its own to lose."""
    cn = Correspondent(known_peers=[HOA, HOA2], rng=seeded_rng(9), proof_cache_size=64)
    register_and_prove(cn, HOA, 10, WIFI, 1, 1.0)
    register_and_prove(cn, HOA, 11, LTE, 2, 1.0)
    assert cn.proofs.peek(HOA, WIFI) and cn.proofs.peek(HOA, LTE)
    for index in range(1, 200):
        register_and_prove(cn, HOA2, index, IPv6Address(f"2001:db8:66::{index:x}"), 1,
                           2.0 + index / 1000)
    assert cn.proofs.peek(HOA, WIFI) and cn.proofs.peek(HOA, LTE)
    mine = [coa for hoa, coa in cn.proofs if hoa == HOA2]
    assert len(mine) == cn.proofs.per_hoa < 64
    # The attacker keeps its latest proofs; the victim's next BU for a CoA
    # it held before needs no new address test (draft §4.5.1).
    assert IPv6Address("2001:db8:66::c7") in mine
    # The victim's Wi-Fi flaps: BID 1 deregistered, then bound again at once.
    gone = mh.BindingUpdate(12, 0, ack=True, options=(mh.BindingIdentifier(1),))
    cn.receive(mh.build_mh(gone, HOA, CN_ADDR), HOA, CN_ADDR, WIFI, 3.0)
    cn.datagrams_to_send(3.0)
    back = mh.BindingUpdate(13, 100, ack=True, options=(
        mh.AlternateCareOfAddress(WIFI), mh.BindingIdentifier(1)))
    cn.receive(mh.build_mh(back, HOA, CN_ADDR), HOA, CN_ADDR, WIFI, 3.1)
    answers = [mh.parse_mh(out.packet[40:]) for out in cn.datagrams_to_send(3.1)]
    assert [type(answer) for answer in answers] == [mh.BindingAck]


ATTACKER_OWN = (IPv6Address("2001:db8:31::1"), IPv6Address("2001:db8:31::2"))
NOT_ATTACKERS = (IPv6Address("2001:db8:99::1"), IPv6Address("2001:db8:99::2"))
VICTIM_COA = IPv6Address("2001:db8:55::1")


@pytest.mark.parametrize("seed", range(40))
def test_bid_swaps_overwrites_and_deregistrations_never_send_to_an_unproven_coa(seed):
    """An MN with its own SA sends any mix of BUs: with and without BID, the
    O flag, lifetime 0, the same CoA under several BIDs, on-wire sources
    that differ from the AltCoA, replays and reordered sequence numbers,
    naming its own addresses, other hosts' and another MN's bound CoA.  It
    answers the AOTCs that reach its own addresses only.  Whatever the
    order, the CN sends data only to addresses the attacker proved (draft
    §4.5.1, per BID and per CoA), and the other MN's binding is untouched."""
    rng = random.Random(seed)
    cn = Correspondent(known_peers=[HOA, HOA2], rng=seeded_rng(seed), max_bids_per_hoa=3)
    register_and_prove(cn, HOA2, 7, VICTIM_COA, 1, 1.0)
    victim = [(entry.bid, entry.coa) for entry in cn.bindings_of(HOA2)]
    assert victim == [(1, VICTIM_COA)]
    sequences: dict[int | None, int] = {}
    sent_to: IPv6Address | None = None
    now = 1.0
    for _ in range(60):
        now += rng.choice((0.1, 0.5, 3.0, 40.0))
        cn.handle_timer(now)
        bid = rng.choice((None, 1, 2, 3, 4))
        coa = rng.choice(ATTACKER_OWN + NOT_ATTACKERS + (VICTIM_COA,))
        wire = coa if rng.random() < 0.9 else rng.choice(ATTACKER_OWN + NOT_ATTACKERS)
        options: tuple = (mh.AlternateCareOfAddress(coa),)
        if bid is not None:
            options += (mh.BindingIdentifier(bid, overwrite=rng.random() < 0.2),)
        sequence = (sequences.get(bid, 3) + rng.choice((1, 1, 1, 0, -1))) % 65536
        sequences[bid] = sequence
        bu = mh.BindingUpdate(sequence, rng.choice((100, 100, 0)), ack=True, options=options)
        cn.receive(mh.build_mh(bu, HOA, CN_ADDR), HOA, CN_ADDR, wire, now)
        for out in cn.datagrams_to_send(now):
            challenge = mh.parse_mh(out.packet[40:])
            if isinstance(challenge, mh.AotChallenge) and out.onwire_dst in ATTACKER_OWN:
                aotr = mh.AotResponse(challenge.nonce)
                cn.receive(mh.build_mh(aotr, HOA, CN_ADDR), HOA, CN_ADDR, out.onwire_dst, now)
        cn.datagrams_to_send(now)
        while (event := cn.next_event()) is not None:
            if isinstance(event, SendTo) and event.hoa == HOA:
                sent_to = event.coa
        _accept, send = cn.paths(HOA)
        assert {coa for _bid, coa in send} <= set(ATTACKER_OWN)
        assert sent_to is None or sent_to in ATTACKER_OWN
        bound = cn.binding(HOA)
        assert bound is None or bound.coa in ATTACKER_OWN
        if now < 1.0 + 400:      # the victim's binding has not expired
            assert cn.holder_of(VICTIM_COA) == HOA2
            assert [(entry.bid, entry.coa) for entry in cn.bindings_of(HOA2)] == victim


# -- a BU held back on the path and released after its BID was removed -------------


def ack_statuses(core, message: mh.BindingUpdate, wire: IPv6Address, now: float,
                 hoa: IPv6Address = HOA) -> list[int]:
    local = core.address if isinstance(core, HomeAgent) else CN_ADDR
    core.receive(mh.build_mh(message, hoa, local), hoa, local, wire, now)
    return [answer.status for out in core.datagrams_to_send(now)
            if isinstance(answer := mh.parse_mh(out.packet[40:]), mh.BindingAck)]


def bid_bu(sequence: int, coa: IPv6Address, bid: int, lifetime: int = 100, *,
           home: bool, overwrite: bool = False) -> mh.BindingUpdate:
    return mh.BindingUpdate(sequence, lifetime, ack=True, home_registration=home, options=(
        mh.AlternateCareOfAddress(coa), mh.BindingIdentifier(bid, overwrite=overwrite)))


def held_back_setup(home: bool):
    if home:
        core = HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=[HOA])
    else:
        core = Correspondent(known_peers=[HOA], rng=seeded_rng(5))
        for coa in (WIFI, LTE):
            core.proofs.add(HOA, coa, 0.0)    # proven before (proofs have no lifetime)
    return core


@pytest.mark.parametrize("home", [True, False], ids=["ha", "cn"])
def test_a_held_back_bu_released_after_its_bid_was_deregistered_binds_nothing(home):
    """BID 1 on wifi, BID 2 on lte.  An attacker on the wifi path holds back
    BID 1's refresh (an ESP packet the receiver has not seen yet: its
    anti-replay window takes it later).  Wifi goes, the MN deregisters BID 1
    from lte.  The released refresh must not bind BID 1 to the wifi address
    again: the MN left it, and it may be someone else's now.  The BID's
    sequence number outlives its binding (RFC 6275 §9.5.1 per binding, as
    RFC 5648 keys bindings by BID)."""
    core = held_back_setup(home)
    assert ack_statuses(core, bid_bu(100, WIFI, 1, home=home), WIFI, 1.0) == [0]
    assert ack_statuses(core, bid_bu(500, LTE, 2, home=home), LTE, 1.0) == [0]
    held_back = bid_bu(101, WIFI, 1, home=home)
    deregistration = bid_bu(102, LTE, 1, lifetime=0, home=home)
    assert ack_statuses(core, deregistration, LTE, 2.0) == [0]
    assert [(entry.bid, entry.coa) for entry in core.bindings_of(HOA)] == [(2, LTE)]
    statuses = ack_statuses(core, held_back, WIFI, 3.0)
    assert [(entry.bid, entry.coa) for entry in core.bindings_of(HOA)] == [(2, LTE)]
    assert statuses == [mh.BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW]
    # The MN itself comes back on wifi with a newer number: bound as before.
    assert ack_statuses(core, bid_bu(103, WIFI, 1, home=home), WIFI, 4.0) == [0]
    assert [(entry.bid, entry.coa) for entry in core.bindings_of(HOA)] == [(1, WIFI), (2, LTE)]


@pytest.mark.parametrize("home", [True, False], ids=["ha", "cn"])
def test_a_held_back_bid_bu_released_after_the_o_flag_or_a_bu_without_bid_binds_nothing(home):
    """The same when BID 2 went with the O flag (RFC 5648 §5.7) or with a BU
    without BID (§5.6): its last sequence number still counts."""
    for replacement in (bid_bu(101, WIFI, 1, home=home, overwrite=True),
                        mh.BindingUpdate(101, 100, ack=True, home_registration=home,
                                         options=(mh.AlternateCareOfAddress(WIFI),))):
        core = held_back_setup(home)
        assert ack_statuses(core, bid_bu(100, WIFI, 1, home=home), WIFI, 1.0) == [0]
        assert ack_statuses(core, bid_bu(500, LTE, 2, home=home), LTE, 1.0) == [0]
        held_back = bid_bu(501, LTE, 2, home=home, overwrite=True)
        assert ack_statuses(core, replacement, WIFI, 2.0) == [0]
        before = [(entry.bid, entry.coa) for entry in core.bindings_of(HOA)]
        assert LTE not in [coa for _bid, coa in before]
        local = core.address if home else CN_ADDR
        core.receive(mh.build_mh(held_back, HOA, local), HOA, local, LTE, 3.0)
        answers = [answer for out in core.datagrams_to_send(3.0)
                   if isinstance(answer := mh.parse_mh(out.packet[40:]), mh.BindingAck)]
        assert [(entry.bid, entry.coa) for entry in core.bindings_of(HOA)] == before
        assert [a.status for a in answers] == [mh.BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW]
        if replacement.binding_identifiers:
            # The MN's own next BU for BID 2 goes on from the 135 (RFC 6275 §11.7.3).
            resumed = bid_bu((answers[0].sequence + 1) % 65536, LTE, 2, home=home)
            assert ack_statuses(core, resumed, LTE, 4.0) == [0]
            assert (2, LTE) in [(entry.bid, entry.coa) for entry in core.bindings_of(HOA)]
