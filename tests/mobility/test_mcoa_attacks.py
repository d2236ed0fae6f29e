"""Attacks on the multi-CoA receivers (RFC 5648 with IRO) by an MN with its own
valid SA and HoA: what it can make a CN believe about other MNs."""

from __future__ import annotations

import random
from ipaddress import IPv6Address

import pytest
from test_mipv6_pair_harness import CN_ADDR, HOA, HOA2, LTE, WIFI, seeded_rng

from vmip.mobility.cn import Correspondent
from vmip.mobility.events import SendTo
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
