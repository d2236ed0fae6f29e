"""The four rule examples of draft-ebalard-mext-ipsec-ro-00 §5.2.2, as the draft writes them.

Each example is parsed from the draft's own text (symbolic names mapped to
addresses), installed in a RemapEngine, and applied to IPv6/ESP packets
built by scapy; scapy reads the result back.  format_rules must give the
draft's lines back, names replaced by the addresses.
"""

from __future__ import annotations

import re
from ipaddress import IPv6Address

import pytest
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.mobility.ancillary import UNSPECIFIED, Ancillary
from vmip.mobility.remap import ANCILLARY, Direction, Field, RemapEngine, parse_rules

NAMES = {
    "HoA": IPv6Address("2001:db8:100::10"),
    "CoA": IPv6Address("2001:db8:31::2"),
    "A": IPv6Address("2001:db8:20::2"),
    "HoA1": IPv6Address("2001:db8:100::10"),
    "CoA1": IPv6Address("2001:db8:31::2"),
    "HoA2": IPv6Address("2001:db8:100::20"),
    "CoA2": IPv6Address("2001:db8:41::2"),
}

# Copied from the draft's artwork, spacing included ("in ," and "src:   ::").
EXAMPLE_1 = """\
    dir: out, SPI: 42, exp. src: HoA, remap. src: CoA
    dir: in , SPI: 43, exp. dst: CoA, remap. dst: HoA
"""
EXAMPLE_2 = """\
    dir: out, SPI: 44, exp. src: HoA, remap. src: CoA
    dir: in , SPI: 45, exp. dst: CoA, remap. dst: HoA
"""
EXAMPLE_3 = """\
    dir: out, SPI: 46, exp. src: HoA1, remap. src: CoA1
    dir: in , SPI: 47, exp. dst: CoA1, remap. dst: HoA1
    dir: out, SPI: 46, exp. dst: HoA2, remap. dst: CoA2
    dir: in , SPI: 47, exp. src: CoA2, remap. src: HoA2
"""
EXAMPLE_4 = """\
    dir: out, SPI: 48, exp. src: HoA1, remap. src: ancillary
    dir: in , SPI: 49, exp. dst: CoA1, remap. dst: HoA1
    dir: out, SPI: 50, exp. dst: HoA2, remap. dst: CoA2
    dir: in , SPI: 51, exp. src:   ::, remap. src: HoA2 (ancillary)
"""


def n(name: str) -> str:
    return str(NAMES[name])


def esp_packet(src: str, dst: str, spi: int, payload: bytes = b"\x11" * 24) -> bytes:
    return bytes(IPv6(src=src, dst=dst, hlim=64) / ESP(spi=spi, seq=7, data=payload))


def engine_with(text: str) -> RemapEngine:
    engine = RemapEngine()
    for rule in parse_rules(text, NAMES):
        engine.add(rule)
    return engine


def addresses(packet: bytes) -> tuple[str, str]:
    parsed = IPv6(packet)
    return parsed.src, parsed.dst


def assert_only_addresses_changed(before: bytes, after: bytes) -> None:
    old, new = IPv6(before), IPv6(after)
    assert new[ESP].spi == old[ESP].spi and new[ESP].seq == old[ESP].seq
    assert bytes(new[ESP]) == bytes(old[ESP])
    assert (new.plen, new.nh, new.hlim, new.tc, new.fl) == (old.plen, old.nh, old.hlim, old.tc, old.fl)


def draft_lines_with_addresses(text: str) -> list[str]:
    """The draft's lines with names replaced and the alignment spaces removed."""
    lines = []
    for line in text.strip().splitlines():
        line = re.sub(r"\s+", " ", line.strip()).replace(" ,", ",")
        line = re.sub(r"\b(HoA1|HoA2|CoA1|CoA2|HoA|CoA|A)\b", lambda m: n(m.group(1)), line)
        lines.append(line)
    return lines


@pytest.mark.parametrize("text", [EXAMPLE_1, EXAMPLE_2, EXAMPLE_3, EXAMPLE_4])
def test_format_rules_gives_the_drafts_lines_back(text):
    assert engine_with(text).format_rules() == draft_lines_with_addresses(text)


def test_example_1_data_flow_of_a_mn_with_a_cn():
    engine = engine_with(EXAMPLE_1)
    sent = esp_packet(n("HoA"), n("A"), 42)
    on_wire = engine.outbound(sent)
    assert addresses(on_wire) == (n("CoA"), n("A"))
    assert_only_addresses_changed(sent, on_wire)

    received = esp_packet(n("A"), n("CoA"), 43)
    result = engine.inbound(received)
    assert result is not None
    packet, ancillary = result
    assert addresses(packet) == (n("A"), n("HoA"))
    assert_only_addresses_changed(received, packet)
    # No "(ancillary)" mark: nothing is handed to MIPv6 (§5.1.1 "::").
    assert ancillary == UNSPECIFIED


def test_example_2_mh_flow_of_a_mn_with_a_cn():
    engine = engine_with(EXAMPLE_2)
    assert addresses(engine.outbound(esp_packet(n("HoA"), n("A"), 44))) == (n("CoA"), n("A"))
    packet, _ = engine.inbound(esp_packet(n("A"), n("CoA"), 45))
    assert addresses(packet) == (n("A"), n("HoA"))
    # The SPIs of example 1 have no rule here: packets pass untouched.
    other = esp_packet(n("HoA"), n("A"), 42)
    assert engine.outbound(other) is other


def test_example_3_data_flow_between_two_mns_remaps_both_addresses():
    engine = engine_with(EXAMPLE_3)
    # One SPI, one source rule and one destination rule, applied independently.
    sent = esp_packet(n("HoA1"), n("HoA2"), 46)
    on_wire = engine.outbound(sent)
    assert addresses(on_wire) == (n("CoA1"), n("CoA2"))
    assert_only_addresses_changed(sent, on_wire)

    received = esp_packet(n("CoA2"), n("CoA1"), 47)
    packet, ancillary = engine.inbound(received)
    assert addresses(packet) == (n("HoA2"), n("HoA1"))
    assert ancillary == UNSPECIFIED


def test_example_4_mh_flows_between_two_mns():
    engine = engine_with(EXAMPLE_4)
    rules = {(r.direction, r.spi, r.field): r for r in engine.rules()}
    assert rules[(Direction.OUT, 48, Field.SRC)].remap is ANCILLARY
    assert rules[(Direction.IN, 51, Field.SRC)].is_wildcard
    assert rules[(Direction.IN, 51, Field.SRC)].copy_to_ancillary

    # SPI 48: the source is the CoA MIPv6 put in the ancillary data.
    bu = esp_packet(n("HoA1"), n("HoA2"), 48)
    assert addresses(engine.outbound(bu, NAMES["CoA1"].packed)) == (n("CoA1"), n("HoA2"))
    # SPI 49: our CoA back to our HoA.
    packet, _ = engine.inbound(esp_packet(n("HoA2"), n("CoA1"), 49))
    assert addresses(packet) == (n("HoA2"), n("HoA1"))
    # SPI 50: static destination remap to the peer's CoA.
    assert addresses(engine.outbound(esp_packet(n("HoA1"), n("HoA2"), 50))) == (n("HoA1"), n("CoA2"))
    # SPI 51: "blind" remap of any source to HoA2; the on-wire one goes to MIPv6.
    some_new_coa = "2001:db8:42::99"
    packet, ancillary = engine.inbound(esp_packet(some_new_coa, n("HoA1"), 51))
    assert addresses(packet) == (n("HoA2"), n("HoA1"))
    assert IPv6Address(ancillary) == IPv6Address(some_new_coa)
    packet, full = engine.inbound_ancillary(esp_packet(some_new_coa, n("HoA1"), 51))
    assert full == Ancillary(IPv6Address(some_new_coa).packed, UNSPECIFIED)
