"""The HA's binding cache, driven by BUs that scapy builds (RFC 6275 §9.5.1, §10.3; draft §7)."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import MIP6MH_BA
from test_mipv6_pair_harness import HA_ADDR, HOA, HOA2, HOME_PREFIX, LTE, WIFI, dissect, scapy_bu

from vmip.mobility.binding import (
    OnWire,
    sequence_is_newer,
    sequence_less_or_equal,
)
from vmip.mobility.events import (
    BindingCached,
    BindingDeregistered,
    BindingExpired,
    TunnelEndpointChanged,
)
from vmip.mobility.ha import HomeAgent


def home_bu(seq, units, coa, flags="AH", src=HOA):
    return scapy_bu(seq, units, coa, src=src, dst=HA_ADDR, flags=flags)


def events(core):
    found = []
    while (event := core.next_event()) is not None:
        found.append(event)
    return found


def only_ba(core, now=0.0):
    [out] = core.datagrams_to_send(now)
    return out, dissect(out)[MIP6MH_BA]


# --- RFC 6275 §9.5.1 sequence comparison ----------------------------------------


def test_sequence_comparison_matches_the_rfc_example_exhaustively():
    # RFC 6275 §9.5.1: with 15 the last received, "messages with sequence
    # numbers 0 through 15, as well as 32783 through 65535, would be
    # considered less than or equal".
    for received in range(65536):
        expected = received <= 15 or received >= 32783
        assert sequence_less_or_equal(received, 15) is expected
        assert sequence_is_newer(received, 15) is not expected


@given(st.integers(0, 65535), st.integers(1, 32767))
def test_the_next_32767_numbers_are_newer_and_the_rest_are_not(last, ahead):
    assert sequence_is_newer((last + ahead) % 65536, last)
    assert not sequence_is_newer((last - ahead) % 65536, last)
    assert not sequence_is_newer(last, last)


# --- acceptance -----------------------------------------------------------------


def test_accepted_bu_creates_a_binding_and_moves_the_tunnel():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(42, 105, WIFI), HOA, HA_ADDR, WIFI, 5.0)
    out, ba = only_ba(ha, 5.0)
    assert (ba.status, ba.seq, ba.mhtime) == (0, 42, 105)
    assert (dissect(out).src, dissect(out).dst) == (str(HA_ADDR), str(HOA))
    assert out.onwire_dst == WIFI and out.onwire_src is None  # to the CoA, by ancillary data
    assert events(ha) == [TunnelEndpointChanged(HOA, WIFI), BindingCached(HOA, WIFI, 420, True)]
    entry = ha.binding(HOA)
    assert (entry.coa, entry.sequence, entry.expires_at, entry.home) == (WIFI, 42, 425.0, True)


def test_alternate_coa_wins_over_the_onwire_source():
    # Draft appendix A: the AltCoA is what counts; sending from it "is not even mandatory".
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 10, LTE), HOA, HA_ADDR, OnWire(src=WIFI), 0.0)
    assert ha.binding(HOA).coa == LTE
    assert ha.datagrams_to_send(0.0)[0].onwire_dst == LTE


def test_without_alternate_coa_the_onwire_source_is_the_coa():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 10, None), HOA, HA_ADDR, WIFI, 0.0)
    assert ha.binding(HOA).coa == WIFI


def test_lifetime_is_capped_by_the_ha():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX, max_lifetime=100)
    ha.receive(home_bu(1, 5000, WIFI), HOA, HA_ADDR, WIFI, 0.0)
    _, ba = only_ba(ha)
    assert ba.mhtime == 25
    assert ha.binding(HOA).lifetime == 100


def test_without_the_a_bit_acceptance_is_silent():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 10, WIFI, flags="H"), HOA, HA_ADDR, WIFI, 0.0)
    assert ha.datagrams_to_send(0.0) == []
    assert ha.binding(HOA).coa == WIFI


def test_a_refresh_with_the_same_coa_does_not_move_the_tunnel():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 10, WIFI), HOA, HA_ADDR, WIFI, 0.0)
    events(ha)
    ha.receive(home_bu(2, 10, WIFI), HOA, HA_ADDR, WIFI, 30.0)
    assert events(ha) == [BindingCached(HOA, WIFI, 40, True)]
    assert ha.binding(HOA).expires_at == 70.0


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [10, 9, 0, 32779, 65535])
def test_old_sequence_numbers_get_135_with_the_last_accepted(seq):
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(10, 10, WIFI), HOA, HA_ADDR, WIFI, 0.0)
    ha.datagrams_to_send(0.0)
    events(ha)
    ha.receive(home_bu(seq, 10, LTE), HOA, HA_ADDR, LTE, 1.0)
    out, ba = only_ba(ha, 1.0)
    assert (ba.status, ba.seq) == (135, 10)
    assert out.onwire_dst == LTE  # answered where the MN is now
    assert ha.binding(HOA).coa == WIFI and events(ha) == []


def test_hoa_outside_the_home_prefix_gets_132():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    foreign = IPv6Address("2001:db8:555::10")
    ha.receive(home_bu(1, 10, WIFI, src=foreign), foreign, HA_ADDR, WIFI, 0.0)
    _, ba = only_ba(ha)
    assert ba.status == 132 and ha.bindings() == []


def test_mobile_nodes_not_served_are_dropped_silently():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=[IPv6Address("2001:db8:100::77")])
    ha.receive(home_bu(1, 10, WIFI), HOA, HA_ADDR, WIFI, 0.0)
    assert ha.datagrams_to_send(0.0) == [] and events(ha) == []
    assert ha.counters["unknown_mobile_node"] == 1


def test_a_care_of_address_the_key_manager_refuses_is_not_bound():
    # An MN admitted by certificate may register only at the CoAs it names
    # (vmip/node/admission.py); a BU naming another MN's CoA changes nothing.
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.care_of_check = lambda hoa, coa: None if coa == WIFI else "not certified"
    ha.receive(home_bu(1, 10, LTE), HOA, HA_ADDR, OnWire(src=LTE), 0.0)
    assert ha.binding(HOA) is None and ha.datagrams_to_send(0.0) == [] and events(ha) == []
    assert ha.counters["care_of_not_certified"] == 1
    ha.receive(home_bu(2, 10, WIFI), HOA, HA_ADDR, WIFI, 0.0)
    assert ha.binding(HOA).coa == WIFI
    # Deregistration (CoA = HoA) is not a binding to a CoA: never checked.
    ha.receive(home_bu(3, 0, None), HOA, HA_ADDR, None, 0.0)
    assert ha.binding(HOA) is None


def test_correspondent_registrations_are_not_the_has_business():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    mh = home_bu(1, 10, WIFI, flags="A")
    ha.receive(mh, HOA, HA_ADDR, WIFI, 0.0)
    assert ha.counters["not_home_registration"] == 1 and ha.bindings() == []


def test_bad_checksum_and_wrong_destination_are_dropped():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    # Checksummed for another source: what a peer without IRO remapping would see
    # (draft appendix I: the MH checksum covers the SA-level addresses).
    ha.receive(home_bu(1, 10, WIFI, src=WIFI), HOA, HA_ADDR, WIFI, 0.0)
    assert ha.counters["bad_checksum"] == 1
    other = IPv6Address("2001:db8:100::2")
    ha.receive(scapy_bu(1, 10, WIFI, src=HOA, dst=other, flags="AH"), HOA, other, WIFI, 0.0)
    assert ha.counters["not_for_us"] == 1
    assert ha.bindings() == [] and ha.datagrams_to_send(0.0) == []


# --- deregistration and expiry ------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "coa", "onwire"),
    [(0, WIFI, WIFI), (10, HOA, None), (0, None, None)],
    ids=["lifetime-0", "coa-is-hoa", "from-home"],
)
def test_deregistration_deletes_the_binding(units, coa, onwire):
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 10, WIFI), HOA, HA_ADDR, WIFI, 0.0)
    ha.datagrams_to_send(0.0)
    events(ha)
    ha.receive(home_bu(2, units, coa), HOA, HA_ADDR, onwire, 1.0)
    out, ba = only_ba(ha, 1.0)
    assert (ba.status, ba.seq, ba.mhtime) == (0, 2, 0)
    assert out.onwire_dst == onwire
    assert events(ha) == [TunnelEndpointChanged(HOA, None), BindingDeregistered(HOA, HOA)]
    assert ha.binding(HOA) is None and ha.get_timer() is None


def test_deregistering_an_unknown_binding_gets_133():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 0, HOA), HOA, HA_ADDR, None, 0.0)
    _, ba = only_ba(ha)
    assert ba.status == 133


def test_binding_expires_after_its_lifetime():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 10, WIFI), HOA, HA_ADDR, WIFI, 3.0)
    events(ha)
    assert ha.get_timer() == 43.0
    ha.handle_timer(42.9)
    assert ha.binding(HOA) is not None
    ha.handle_timer(43.0)
    assert events(ha) == [BindingExpired(HOA, HOA, WIFI), TunnelEndpointChanged(HOA, None)]
    assert ha.bindings() == [] and ha.get_timer() is None


# --- CoA validity and the Binding Error limiter ---------------------------------


@given(st.integers(0, (1 << 128) - 1))
def test_only_global_scope_unicast_can_be_a_care_of_address(value):
    """RFC 6275 §6.2.5, §9.5.1: a CoA is unicast routable.  The oracle is
    RFC 4291's address types, spelled out independently of the code."""
    from vmip.mobility.binding import unroutable_care_of

    address = IPv6Address(value)
    first_byte, first_ten_bits = value >> 120, value >> 118
    expected = (first_byte == 0 or first_byte == 0xFF
                or first_ten_bits in (0b1111111010, 0b1111111011))
    assert unroutable_care_of(address) is expected


def test_the_binding_error_limiter_remembers_a_bounded_number_of_sources():
    from vmip.mobility.binding import BindingErrorLimiter

    limiter = BindingErrorLimiter(interval=1.0, memory=4)
    sources = [IPv6Address(f"2001:db8::{n:x}") for n in range(1, 7)]
    assert [limiter.allow(s, 0.0) for s in sources] == [True] * 4 + [False] * 2
    assert not limiter.allow(sources[0], 0.5)           # one a second per source
    assert limiter.allow(sources[5], 1.0)               # the old ones aged out
    assert len(limiter._last) <= 4


# --- one MN per CoA (docs/security.md) -------------------------------------------


def test_a_coa_another_mns_registration_names_is_dropped_until_it_leaves_it():
    ha = HomeAgent(HA_ADDR, HOME_PREFIX)
    ha.receive(home_bu(1, 100, WIFI), HOA, HA_ADDR, OnWire(src=WIFI), 0.0)
    ha.datagrams_to_send(0.0)
    events(ha)
    assert ha.holder_of(WIFI) == HOA
    # HOA2's authentic BU naming HOA's CoA: dropped silently, no BA, nothing bound.
    ha.receive(home_bu(1, 100, WIFI, src=HOA2), HOA2, HA_ADDR, OnWire(src=WIFI), 1.0)
    assert ha.counters["bu_coa_in_use"] == 1
    assert ha.datagrams_to_send(1.0) == [] and ha.binding(HOA2) is None
    # HOA moves to LTE: WIFI is free for HOA2.
    ha.receive(home_bu(2, 100, LTE), HOA, HA_ADDR, OnWire(src=LTE), 2.0)
    assert ha.holder_of(WIFI) is None and ha.holder_of(LTE) == HOA
    ha.receive(home_bu(2, 100, WIFI, src=HOA2), HOA2, HA_ADDR, OnWire(src=WIFI), 3.0)
    assert ha.binding(HOA2).coa == WIFI and ha.holder_of(WIFI) == HOA2
    # A deregistration and an expiry free their CoAs.
    ha.receive(home_bu(3, 0, HOA), HOA, HA_ADDR, None, 4.0)
    assert ha.holder_of(LTE) is None
    ha.handle_timer(3.0 + 400 + 1)
    assert ha.binding(HOA2) is None and ha.holder_of(WIFI) is None
