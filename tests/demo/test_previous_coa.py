"""Packets still arriving at the CoA the MN just left (lte->wifi losses, docs/demo.md).

The remap engine is the real one with the MN's inbound rule for a CN->MN
SA (draft §5.2.2: dst CoA -> HoA); packets are built with scapy, so the
addresses checked come from an independent encoder.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.ipsec.sa import Direction
from vmip.mobility.remap import Field, RemapEngine, RemapRule
from vmip.node.movement import PreviousCoas

HOA = IPv6Address("2001:db8:100::10")
CN = IPv6Address("2001:db8:20::2")
WIFI = IPv6Address("2001:db8:31::2")
LTE = IPv6Address("2001:db8:32::2")
SPI = 0x1302


def esp_to(dst: IPv6Address, seq: int = 7) -> bytes:
    return bytes(IPv6(src=str(CN), dst=str(dst)) / ESP(spi=SPI, seq=seq, data=b"\x00" * 32))


def engine_on(coa: IPv6Address) -> RemapEngine:
    engine = RemapEngine()
    engine.add(RemapRule(Direction.IN, SPI, Field.DST, coa, HOA))
    return engine


def test_packet_to_the_left_coa_is_taken_within_the_grace():
    engine = engine_on(WIFI)            # the MN moved lte -> wifi: the rule names wifi
    previous = PreviousCoas(grace=1.0)
    previous.moved(LTE, WIFI, now=10.0)
    late = esp_to(LTE)
    assert engine.inbound(late) is None  # what was dropped before
    redirected = previous.redirect(late, now=10.5)
    assert redirected is not None
    parsed = IPv6(redirected)
    assert parsed.dst == str(WIFI) and parsed.src == str(CN)
    assert parsed[ESP].spi == SPI and parsed[ESP].seq == 7
    packet, _ = engine.inbound(redirected)
    assert IPv6(packet).dst == str(HOA)
    assert previous.redirected == 1


def test_grace_ends_and_other_addresses_are_not_touched():
    previous = PreviousCoas(grace=1.0)
    previous.moved(LTE, WIFI, now=10.0)
    assert previous.redirect(esp_to(LTE), now=11.0) is None         # grace over
    assert previous.redirect(esp_to(IPv6Address("2001:db8:99::1")), now=10.1) is None
    assert previous.redirect(esp_to(WIFI), now=10.1) is None        # already current


def test_moving_back_makes_the_address_current_again():
    previous = PreviousCoas(grace=1.0)
    previous.moved(LTE, WIFI, now=10.0)
    previous.moved(WIFI, LTE, now=10.2)
    assert previous.redirect(esp_to(LTE), now=10.3) is None         # lte is current
    assert IPv6(previous.redirect(esp_to(WIFI), now=10.3)).dst == str(LTE)


def test_going_home_or_first_attachment_redirects_nothing():
    previous = PreviousCoas(grace=1.0)
    previous.moved(None, WIFI, now=0.0)
    assert previous.redirect(esp_to(LTE), now=0.1) is None
    previous.moved(WIFI, None, now=1.0)
    assert previous.redirect(esp_to(WIFI), now=1.1) is None


@given(st.binary(max_size=120), st.floats(min_value=0, max_value=20))
def test_any_bytes_either_pass_unchanged_or_only_the_destination_changes(wire, now):
    previous = PreviousCoas(grace=1.0)
    previous.moved(LTE, WIFI, now=10.0)
    out = previous.redirect(wire, now)
    if out is not None:
        assert len(out) == len(wire) and wire[24:40] == LTE.packed and 10.0 <= now < 11.0
        assert out[:24] == wire[:24] and out[40:] == wire[40:] and out[24:40] == WIFI.packed
