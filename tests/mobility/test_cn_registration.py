"""The correspondent: IRO registration with AOT* (draft §3.3-3.5, §4.5.1), fed scapy-built packets."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from scapy.layers.inet6 import MIP6MH_BA, MIP6MH_BE, MIP6MH_Generic
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    HOA2,
    LTE,
    WIFI,
    dissect,
    nonce_of,
    scapy_aoto,
    scapy_aotr,
    scapy_bu,
    scapy_generic,
    seeded_rng,
)

from vmip.mobility.binding import OnWire
from vmip.mobility.cn import PENDING_PROOF_TIMEOUT, Correspondent
from vmip.mobility.events import (
    AcceptFrom,
    AotChallengeSent,
    BindingCached,
    BindingDeregistered,
    BindingExpired,
    CoaProven,
    ProofTimeout,
    SendTo,
)

STRANGER = IPv6Address("2001:db8:100::66")


def make_cn(**kwargs) -> Correspondent:
    kwargs.setdefault("known_peers", [HOA, HOA2])
    kwargs.setdefault("rng", seeded_rng(3))
    return Correspondent(**kwargs)


def events(core):
    found = []
    while (event := core.next_event()) is not None:
        found.append(event)
    return found


def bu_from(cn, seq, coa, onwire, now=0.0, units=105, hoa=HOA):
    cn.receive(scapy_bu(seq, units, coa, src=hoa), hoa, CN_ADDR, onwire, now)


def challenged(cn, coa=WIFI, seq=1, now=0.0):
    """Send a BU for ``coa`` and return the AOTC's nonce (events drained)."""
    bu_from(cn, seq, coa, coa, now)
    [aotc] = cn.datagrams_to_send(now)
    events(cn)
    return nonce_of(aotc)


def registered(cn, coa=WIFI, seq=1, now=0.0):
    nonce = challenged(cn, coa, seq, now)
    cn.receive(scapy_aotr(nonce), HOA, CN_ADDR, coa, now)
    cn.datagrams_to_send(now)
    events(cn)
    return nonce


# --- the normal path ------------------------------------------------------------


def test_bu_without_proof_is_answered_by_an_aotc_to_the_coa():
    cn = make_cn()
    bu_from(cn, 7, WIFI, OnWire(src=WIFI))
    [aotc] = cn.datagrams_to_send(0.0)
    theirs = dissect(aotc)
    assert theirs[MIP6MH_Generic].mhtype == 31
    assert (theirs.src, theirs.dst) == (str(CN_ADDR), str(HOA))
    assert aotc.onwire_dst == WIFI  # the CoA is tested by sending to it (draft §3.4)
    # Traffic from the CoA is accepted at once; nothing is sent to it yet (§4.5.1).
    assert events(cn) == [
        AcceptFrom(CN_ADDR, HOA, WIFI),
        AotChallengeSent(HOA, HOA, WIFI, "binding"),
    ]
    assert cn.binding(HOA) is None and cn.pending_coa(HOA) == WIFI


def test_nonce_is_64_fresh_random_bits_from_the_rng():
    cn = make_cn(rng=seeded_rng(99))
    expected = seeded_rng(99)
    first = challenged(cn, WIFI, 1)
    assert first == expected(8)
    second = challenged(cn, LTE, 2)
    assert second == expected(8) and second != first


def test_matching_aotr_proves_the_coa_and_gets_the_ba():
    cn = make_cn()
    nonce = challenged(cn, WIFI, seq=7)
    cn.receive(scapy_aotr(nonce), HOA, CN_ADDR, OnWire(src=WIFI), 0.5)
    [ba] = cn.datagrams_to_send(0.5)
    theirs = dissect(ba)[MIP6MH_BA]
    assert (theirs.status, theirs.seq, theirs.mhtime) == (0, 7, 105)
    assert ba.onwire_dst == WIFI
    assert events(cn) == [
        CoaProven(HOA, WIFI),
        SendTo(CN_ADDR, HOA, WIFI),
        BindingCached(HOA, WIFI, 420, False),
    ]
    entry = cn.binding(HOA)
    assert (entry.coa, entry.sequence, entry.expires_at) == (WIFI, 7, 420.5)


def test_a_proven_coa_registers_with_bu_and_ba_alone():
    cn = make_cn()
    registered(cn, WIFI, seq=1)
    registered(cn, LTE, seq=2)
    bu_from(cn, 3, WIFI, WIFI, 10.0)
    [ba] = cn.datagrams_to_send(10.0)
    assert dissect(ba)[MIP6MH_BA].status == 0 and ba.onwire_dst == WIFI
    assert events(cn) == [
        AcceptFrom(CN_ADDR, HOA, WIFI),
        SendTo(CN_ADDR, HOA, WIFI),
        BindingCached(HOA, WIFI, 420, False),
    ]
    assert cn.sent["AotChallenge"] == 2


def test_the_nonce_is_kept_after_the_ba_so_a_resent_aotr_gets_it_again():
    cn = make_cn()
    nonce = registered(cn, WIFI, seq=5)
    cn.receive(scapy_aotr(nonce), HOA, CN_ADDR, WIFI, 2.0)
    [again] = cn.datagrams_to_send(2.0)
    theirs = dissect(again)[MIP6MH_BA]
    assert (theirs.status, theirs.seq) == (0, 5) and again.onwire_dst == WIFI
    assert cn.counters["ba_resent"] == 1
    assert events(cn) == []  # nothing changed


def test_moving_away_from_a_proven_coa_stops_sending_until_the_new_proof():
    cn = make_cn()
    registered(cn, WIFI, seq=1)
    bu_from(cn, 2, LTE, LTE, 5.0)
    assert events(cn) == [
        AcceptFrom(CN_ADDR, HOA, LTE),
        SendTo(CN_ADDR, HOA, None),  # neither the stale CoA nor the unproven one
        AotChallengeSent(HOA, HOA, LTE, "binding"),
    ]


def test_bu_retransmitted_while_challenged_gets_a_fresh_nonce_and_either_answer_works():
    for answer in (0, 1):
        cn = make_cn()
        nonces = [challenged(cn, WIFI, seq=1), challenged(cn, WIFI, seq=2)]
        assert nonces[0] != nonces[1]  # draft §4.3.1: every AOTC a fresh nonce
        cn.receive(scapy_aotr(nonces[answer]), HOA, CN_ADDR, WIFI, 1.0)
        [ba] = cn.datagrams_to_send(1.0)
        assert dissect(ba)[MIP6MH_BA].seq == 2  # the latest BU is the one acknowledged


# --- each negative case: dropped, counted, nothing sent, nothing changed ---------


def _wrong_nonce(cn):
    nonce = challenged(cn, WIFI)
    cn.receive(scapy_aotr(bytes(b ^ 0xFF for b in nonce)), HOA, CN_ADDR, WIFI, 1.0)


def _aotr_from_another_address(cn):
    nonce = challenged(cn, WIFI)
    cn.receive(scapy_aotr(nonce), HOA, CN_ADDR, LTE, 1.0)


def _aotr_not_remapped(cn):
    nonce = challenged(cn, WIFI)
    cn.receive(scapy_aotr(nonce), HOA, CN_ADDR, None, 1.0)  # came from the HoA


def _altcoa_differs_from_onwire_source(cn):
    bu_from(cn, 1, WIFI, LTE)


def _unknown_hoa(cn):
    bu_from(cn, 1, WIFI, WIFI, hoa=STRANGER)


def _bu_without_altcoa(cn):
    bu_from(cn, 1, None, WIFI)


def _aoto_unregistered(cn):
    cn.receive(scapy_aoto(), HOA, CN_ADDR, WIFI, 1.0)


def _aoto_unknown_hoa(cn):
    cn.receive(scapy_aoto(src=STRANGER), STRANGER, CN_ADDR, WIFI, 1.0)


def _aotr_unknown_hoa(cn):
    challenged(cn, WIFI)
    cn.receive(scapy_aotr(bytes(8), src=STRANGER), STRANGER, CN_ADDR, WIFI, 1.0)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (_wrong_nonce, "aotr_wrong_nonce"),
        (_aotr_from_another_address, "aotr_unknown_address"),
        (_aotr_not_remapped, "aotr_unknown_address"),
        (_altcoa_differs_from_onwire_source, "bu_altcoa_mismatch"),
        (_unknown_hoa, "bu_unknown_hoa"),
        (_bu_without_altcoa, "bu_missing_altcoa"),
        (_aoto_unregistered, "aoto_unregistered"),
        (_aoto_unknown_hoa, "aoto_unknown_hoa"),
        (_aotr_unknown_hoa, "aotr_unknown_hoa"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else value,
)
def test_negative_cases_are_dropped_and_counted(case, reason):
    cn = make_cn()
    case(cn)
    assert cn.counters[reason] == 1
    assert cn.datagrams_to_send(1.0) == []
    assert not [e for e in events(cn) if not isinstance(e, (AcceptFrom, AotChallengeSent))]
    assert cn.binding(HOA) is None and cn.binding(STRANGER) is None
    assert not cn.proofs.peek(HOA, WIFI) and not cn.proofs.peek(HOA, LTE)


# --- lifetime, sequence, deregistration ------------------------------------------


def test_binding_expires_and_the_data_rules_go():
    cn = make_cn(max_lifetime=40)
    registered(cn, WIFI)
    assert cn.binding(HOA).lifetime == 40  # capped: asked 420
    cn.handle_timer(40.0)
    assert events(cn) == [
        SendTo(CN_ADDR, HOA, None),
        AcceptFrom(CN_ADDR, HOA, None),
        BindingExpired(HOA, HOA, WIFI),
    ]
    assert cn.bindings() == [] and cn.get_timer() is None
    # The proof outlives the binding (no lifetime, draft §4.5.1).
    assert cn.proofs.peek(HOA, WIFI)


def test_no_aotr_means_the_pending_registration_is_forgotten():
    cn = make_cn()
    nonce = challenged(cn, WIFI)
    assert cn.get_timer() == PENDING_PROOF_TIMEOUT
    cn.handle_timer(PENDING_PROOF_TIMEOUT)
    assert events(cn) == [ProofTimeout(HOA, WIFI), AcceptFrom(CN_ADDR, HOA, None)]
    assert cn.pending_coa(HOA) is None
    # A late AOTR still proves the CoA, but there is no BU left to acknowledge.
    cn.receive(scapy_aotr(nonce), HOA, CN_ADDR, WIFI, 100.0)
    assert events(cn) == [CoaProven(HOA, WIFI)]
    assert cn.datagrams_to_send(100.0) == [] and cn.counters["aotr_nothing_pending"] == 1


def test_old_sequence_gets_135_with_the_last_one():
    cn = make_cn()
    registered(cn, WIFI, seq=300)
    bu_from(cn, 299, WIFI, WIFI, 1.0)
    [ba] = cn.datagrams_to_send(1.0)
    theirs = dissect(ba)[MIP6MH_BA]
    assert (theirs.status, theirs.seq) == (135, 300)


def test_deregistration_needs_no_proof():
    cn = make_cn()
    registered(cn, WIFI, seq=1)
    bu_from(cn, 2, WIFI, WIFI, 3.0, units=0)
    [ba] = cn.datagrams_to_send(3.0)
    assert dissect(ba)[MIP6MH_BA].status == 0 and ba.onwire_dst == WIFI
    assert events(cn) == [
        AcceptFrom(CN_ADDR, HOA, None),
        SendTo(CN_ADDR, HOA, None),
        BindingDeregistered(HOA, HOA),
    ]
    assert cn.binding(HOA) is None


def test_home_registration_sent_to_a_cn_is_refused_with_131():
    cn = make_cn()
    cn.receive(scapy_bu(1, 10, WIFI, flags="AH"), HOA, CN_ADDR, WIFI, 0.0)
    [ba] = cn.datagrams_to_send(0.0)
    assert dissect(ba)[MIP6MH_BA].status == 131 and cn.binding(HOA) is None


def test_unknown_mh_type_gets_a_rate_limited_binding_error():
    cn = make_cn()
    hoti = scapy_generic(1, bytes(10), HOA, CN_ADDR)  # HoTI: return routability is not IRO's
    cn.receive(hoti, HOA, CN_ADDR, WIFI, 0.0)
    [be] = cn.datagrams_to_send(0.0)
    theirs = dissect(be)[MIP6MH_BE]
    assert (theirs.status, theirs.ha) == (2, str(HOA)) and be.onwire_dst == WIFI
    cn.receive(hoti, HOA, CN_ADDR, WIFI, 0.5)
    assert cn.datagrams_to_send(0.5) == []
    cn.receive(hoti, HOA, CN_ADDR, WIFI, 1.5)
    assert len(cn.datagrams_to_send(1.5)) == 1
    assert cn.counters["unknown_mh_type"] == 3


def test_messages_for_an_mn_are_not_a_cns_business():
    cn = make_cn()
    from test_mipv6_pair_harness import scapy_aotc, scapy_ba

    cn.receive(scapy_ba(0, 1, 1, HA_ADDR, dst=CN_ADDR), HA_ADDR, CN_ADDR, None, 0.0)
    cn.receive(scapy_aotc(bytes(8), src=HOA, dst=CN_ADDR), HOA, CN_ADDR, None, 0.0)
    assert cn.counters["unexpected_type"] == 2 and cn.datagrams_to_send(0.0) == []


# --- one MN per CoA (docs/security.md) -------------------------------------------


def test_a_coa_another_hoas_binding_names_is_dropped_until_that_binding_leaves_it():
    cn = make_cn()
    registered(cn, WIFI, seq=1)
    assert cn.holder_of(WIFI) == HOA
    # HOA2's authentic BU naming HOA's CoA: dropped, nothing pending or accepted.
    bu_from(cn, 1, WIFI, OnWire(src=WIFI), hoa=HOA2)
    assert cn.counters["bu_coa_in_use"] == 1
    assert cn.datagrams_to_send(0.0) == [] and cn.pending_coa(HOA2) is None
    assert cn.accepting_from(HOA2) is None
    # HOA moves to LTE (pending there): WIFI is nobody's now; LTE is HOA's.
    bu_from(cn, 2, LTE, OnWire(src=LTE), now=1.0)
    cn.datagrams_to_send(1.0)
    events(cn)
    assert cn.holder_of(WIFI) is None and cn.holder_of(LTE) == HOA
    bu_from(cn, 2, LTE, OnWire(src=LTE), now=1.0, hoa=HOA2)
    assert cn.counters["bu_coa_in_use"] == 2
    # The proof times out: LTE is freed too, and HOA2 may name WIFI now.
    cn.handle_timer(1.0 + PENDING_PROOF_TIMEOUT)
    events(cn)
    assert cn.holder_of(LTE) is None
    bu_from(cn, 3, WIFI, OnWire(src=WIFI), now=70.0, hoa=HOA2)
    assert cn.pending_coa(HOA2) == WIFI and cn.holder_of(WIFI) == HOA2
