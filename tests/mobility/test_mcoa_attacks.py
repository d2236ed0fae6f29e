"""Attacks on the multi-CoA receivers (RFC 5648 with IRO) by an MN with its own
valid SA and HoA: what it can make a CN believe about other MNs."""

from __future__ import annotations

from ipaddress import IPv6Address

from test_mipv6_pair_harness import CN_ADDR, HOA, HOA2, LTE, WIFI, seeded_rng

from vmip.mobility.cn import Correspondent
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
