"""RemapEngine behaviour: the rule table, each decision of docs/iro-remap.md, real ESP.

Packets are built and read back with scapy; the end-to-end test runs vmip's
ESP on both sides and lets scapy verify the UDP checksum after decryption.
"""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import ESP

from vmip.ipsec.esp import EspSA, decap, esp_spi, transport_encap
from vmip.ipsec.sa import SaParams
from vmip.mobility.ancillary import UNSPECIFIED, Ancillary
from vmip.mobility.remap import (
    ANCILLARY,
    MAX_EXPECTED,
    Direction,
    Field,
    RemapEngine,
    RemapError,
    RemapRule,
    format_rule,
    parse_rule,
)

IN, OUT = Direction.IN, Direction.OUT
SRC, DST = Field.SRC, Field.DST
HOA = IPv6Address("2001:db8:100::10")
COA = IPv6Address("2001:db8:31::2")
COA_LTE = IPv6Address("2001:db8:32::2")
CN = IPv6Address("2001:db8:20::2")
HA = IPv6Address("2001:db8:100::1")
STRANGER = IPv6Address("2001:db8:666::1")
WILDCARD = IPv6Address("::")


def esp_packet(src, dst, spi: int, payload: bytes = b"\x22" * 32, ext=None) -> bytes:
    ip = IPv6(src=str(src), dst=str(dst))
    if ext is not None:
        ip = ip / ext
    return bytes(ip / ESP(spi=spi, seq=1, data=payload))


def addresses(packet: bytes) -> tuple[IPv6Address, IPv6Address]:
    parsed = IPv6(packet)
    return IPv6Address(parsed.src), IPv6Address(parsed.dst)


# -- the rule table ---------------------------------------------------------


def test_one_source_and_one_destination_rule_per_direction_and_spi():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA, owner="first"))
    engine.add(RemapRule(OUT, 42, DST, CN, STRANGER))
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA_LTE, owner="second"))  # replaces "first"
    engine.add(RemapRule(IN, 42, SRC, CN, HA))  # other direction: its own slot
    assert len(engine) == 3
    assert engine.get(OUT, 42, SRC).owner == "second"
    assert addresses(engine.outbound(esp_packet(HOA, CN, 42))) == (COA_LTE, STRANGER)


def test_remove_by_field_spi_and_owner():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA, owner="a"))
    engine.add(RemapRule(OUT, 42, DST, CN, STRANGER, owner="b"))
    engine.add(RemapRule(IN, 42, DST, COA, HOA, owner="a"))
    engine.add(RemapRule(IN, 43, DST, COA, HOA, owner="a"))
    assert engine.remove(OUT, 42, DST) == 1
    assert engine.remove(OUT, 42, DST) == 0
    assert addresses(engine.outbound(esp_packet(HOA, CN, 42))) == (COA, CN)
    assert engine.remove_spi(42) == 2
    packet = esp_packet(HOA, CN, 42)
    assert engine.outbound(packet) is packet
    assert engine.remove_owner("a") == 1
    assert engine.rules() == []
    packet = esp_packet(CN, COA, 43)
    assert engine.inbound(packet) == (packet, UNSPECIFIED)


def test_rules_list_in_installation_order_and_in_the_drafts_syntax():
    engine = RemapEngine()
    rules = [RemapRule(OUT, 0x1301, SRC, HOA, ANCILLARY, owner="iro-mn:cn"),
             RemapRule(IN, 0x1302, DST, COA, HOA, copy_to_ancillary=True),
             RemapRule(IN, 7, SRC, WILDCARD, HOA, copy_to_ancillary=True),
             RemapRule(OUT, 8, DST, HOA, ANCILLARY, fallback=COA)]
    for rule in rules:
        engine.add(rule)
    assert engine.rules() == rules
    assert engine.format_rules() == [
        "dir: out, SPI: 4865, exp. src: 2001:db8:100::10, remap. src: ancillary",
        "dir: in, SPI: 4866, exp. dst: 2001:db8:31::2, remap. dst: 2001:db8:100::10 (ancillary)",
        "dir: in, SPI: 7, exp. src: ::, remap. src: 2001:db8:100::10 (ancillary)",
        "dir: out, SPI: 8, exp. dst: 2001:db8:100::10, remap. dst: ancillary or 2001:db8:31::2",
    ]
    assert engine.format_rules(with_owner=True)[0].endswith("  # iro-mn:cn")
    assert [parse_rule(line) for line in engine.format_rules()] == [
        RemapRule(r.direction, r.spi, r.field, r.expected, r.remap, r.copy_to_ancillary,
                  fallback=r.fallback) for r in rules]


@pytest.mark.parametrize("build", [
    lambda: RemapRule(OUT, 0, SRC, HOA, COA),                       # SPI 0 never on the wire
    lambda: RemapRule(OUT, 1 << 32, SRC, HOA, COA),
    lambda: RemapRule(OUT, True, SRC, HOA, COA),
    lambda: RemapRule(IN, 5, DST, WILDCARD, HOA),                   # wildcard: sources only
    lambda: RemapRule(IN, 5, SRC, WILDCARD, ANCILLARY),             # ancillary: outgoing only
    lambda: RemapRule(OUT, 5, SRC, HOA, COA, copy_to_ancillary=True),  # mark: incoming only
    lambda: RemapRule(OUT, 5, SRC, HOA, WILDCARD),                  # cannot write ::
    lambda: RemapRule(OUT, 5, SRC, HOA, COA, fallback=COA_LTE),     # fallback needs ancillary
    lambda: RemapRule(OUT, 5, SRC, HOA, ANCILLARY, fallback=WILDCARD),
    lambda: RemapRule("sideways", 5, SRC, HOA, COA),
    lambda: RemapRule(OUT, 5, "ttl", HOA, COA),
    lambda: RemapRule(OUT, 5, SRC, "not an address", COA),
    lambda: RemapRule(OUT, 5, SRC, "fe80::1%eth0", COA),
    lambda: RemapRule(OUT, 5, SRC, b"\x00" * 16, COA),
    # A set of expected addresses: incoming only, no wildcard, no repeats, bounded.
    lambda: RemapRule(OUT, 5, SRC, HOA, COA, also_expected=(STRANGER,)),
    lambda: RemapRule(IN, 5, SRC, WILDCARD, HOA, also_expected=(COA,)),
    lambda: RemapRule(IN, 5, SRC, COA, HOA, also_expected=(WILDCARD,)),
    lambda: RemapRule(IN, 5, SRC, COA, HOA, also_expected=(COA,)),
    lambda: RemapRule(IN, 5, SRC, COA, HOA, also_expected=(COA_LTE, COA_LTE)),
    lambda: RemapRule(IN, 5, SRC, COA, HOA, also_expected=str(COA_LTE)),  # type: ignore
    lambda: RemapRule(IN, 5, SRC, COA, HOA, also_expected=tuple(
        IPv6Address(int(STRANGER) + i) for i in range(MAX_EXPECTED))),
])
def test_impossible_rules_are_refused_with_remap_error(build):
    with pytest.raises(RemapError):
        build()


def test_strings_are_accepted_for_directions_fields_and_addresses():
    rule = RemapRule("out", 9, "src", str(HOA), str(COA))
    assert rule == RemapRule(OUT, 9, SRC, HOA, COA)


# -- per-packet behaviour ----------------------------------------------------


def test_non_esp_packets_and_spis_without_rules_pass_as_the_same_object():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA))
    engine.add(RemapRule(IN, 43, DST, COA, HOA))
    icmp = bytes(IPv6(src=str(HOA), dst=str(CN)) / ICMPv6EchoRequest())
    assert engine.outbound(icmp) is icmp
    assert engine.inbound(icmp) == (icmp, UNSPECIFIED)
    other_spi = esp_packet(HOA, CN, 4242)
    assert engine.outbound(other_spi) is other_spi
    assert engine.inbound(other_spi)[0] is other_spi
    assert not engine.counters["malformed"]


@pytest.mark.parametrize("ext", [
    IPv6ExtHdrHopByHop(),
    IPv6ExtHdrDestOpt(),
    IPv6ExtHdrRouting(addresses=["2001:db8::1"]),
    IPv6ExtHdrFragment(m=0, offset=0, id=7),
    IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
])
def test_the_spi_is_found_behind_extension_headers(ext):
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA))
    packet = esp_packet(HOA, CN, 42, ext=ext)
    assert esp_spi(packet)[0] == 42  # vmip's walker and scapy agree on where ESP is
    on_wire = engine.outbound(packet)
    assert addresses(on_wire) == (COA, CN)
    assert on_wire[40:] == packet[40:]


def test_malformed_input_is_dropped_and_counted_never_raised():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA))
    good = esp_packet(HOA, CN, 42)
    for bad in (b"", b"\x60" * 39, b"\x40" + good[1:], good[:50],  # short, IPv4, truncated
                good[:4] + b"\x00\x02" + good[6:40] + b"\x00\x00"):  # ESP, 2 bytes
        assert engine.outbound(bad) is None
        assert engine.inbound(bad) is None
    assert engine.counters["malformed"] == 10


def test_bytearray_and_memoryview_packets_work_too():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA))
    engine.add(RemapRule(IN, 51, SRC, WILDCARD, HOA, copy_to_ancillary=True))
    packet = esp_packet(HOA, CN, 42)
    for form in (bytearray(packet), memoryview(packet)):
        assert addresses(engine.outbound(form)) == (COA, CN)
    packet = esp_packet(COA, CN, 51)
    for form in (bytearray(packet), memoryview(packet)):
        rewritten, ancillary = engine.inbound(form)
        assert addresses(bytes(rewritten)) == (HOA, CN)
        assert type(ancillary) is bytes and ancillary == COA.packed


def test_outbound_expected_address_mismatch_leaves_the_field_alone():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA))
    engine.add(RemapRule(OUT, 42, DST, CN, STRANGER))
    # Source does not match (decision: the rule does not apply), destination does.
    assert addresses(engine.outbound(esp_packet(HA, CN, 42))) == (HA, STRANGER)
    assert engine.counters["out_src_mismatch"] == 1
    packet = esp_packet(HA, HA, 42)
    assert engine.outbound(packet) is packet
    assert engine.counters["out_dst_mismatch"] == 1


def test_inbound_mismatch_drops_unless_the_address_is_already_the_sa_level_one():
    engine = RemapEngine()
    engine.add(RemapRule(IN, 43, DST, COA, HOA))
    # To the old CoA after a move: neither expected nor SA-level -> dropped.
    assert engine.inbound(esp_packet(CN, COA_LTE, 43)) is None
    assert engine.counters["in_dst_mismatch"] == 1
    # To the HoA (came through the HA tunnel): already what IPsec expects.
    via_home = esp_packet(CN, HOA, 43)
    assert engine.inbound(via_home) == (via_home, UNSPECIFIED)
    assert engine.counters["in_dst_unchanged"] == 1

    engine.add(RemapRule(IN, 47, SRC, COA, HOA))  # example 3's CN-side data rule
    assert engine.inbound(esp_packet(STRANGER, CN, 47)) is None
    assert engine.counters["in_src_mismatch"] == 1
    assert addresses(engine.inbound(esp_packet(COA, CN, 47))[0]) == (HOA, CN)


def test_wildcard_accepts_any_source_and_hands_it_over():
    engine = RemapEngine()
    engine.add(RemapRule(IN, 51, SRC, WILDCARD, HOA, copy_to_ancillary=True))
    for source in (COA, COA_LTE, STRANGER):
        packet, ancillary = engine.inbound(esp_packet(source, CN, 51))
        assert addresses(packet) == (HOA, CN)
        assert ancillary == source.packed
    # The MN at home (or via the HA): nothing remapped, so :: (§5.1.1).
    packet = esp_packet(HOA, CN, 51)
    assert engine.inbound(packet) == (packet, UNSPECIFIED)


def test_without_the_ancillary_mark_nothing_is_handed_over():
    engine = RemapEngine()
    engine.add(RemapRule(IN, 51, SRC, WILDCARD, HOA))
    packet, ancillary = engine.inbound(esp_packet(COA, CN, 51))
    assert addresses(packet) == (HOA, CN) and ancillary == UNSPECIFIED


def test_both_on_wire_addresses_reach_mipv6_when_both_fields_are_remapped():
    # MN-MN over one SA pair: the peer's rule (source) and ours (destination).
    peer_hoa, peer_coa = IPv6Address("2001:db8:100::20"), IPv6Address("2001:db8:41::2")
    engine = RemapEngine()
    engine.add(RemapRule(IN, 60, SRC, WILDCARD, peer_hoa, copy_to_ancillary=True))
    engine.add(RemapRule(IN, 60, DST, COA, HOA, copy_to_ancillary=True))
    packet, ancillary = engine.inbound_ancillary(esp_packet(peer_coa, COA, 60))
    assert addresses(packet) == (peer_hoa, HOA)
    assert ancillary == Ancillary(peer_coa.packed, COA.packed)
    assert (ancillary.src_address, ancillary.dst_address) == (peer_coa, COA)
    # The one-address form gives the source first.
    assert engine.inbound(esp_packet(peer_coa, COA, 60))[1] == peer_coa.packed
    # Through the HA tunnel on our side: only the source changed.
    packet, ancillary = engine.inbound_ancillary(esp_packet(peer_coa, HOA, 60))
    assert ancillary == Ancillary(peer_coa.packed, UNSPECIFIED)
    assert ancillary.dst_address is None


def test_outbound_ancillary_source_and_the_missing_ancillary_choice():
    rule = RemapRule(OUT, 48, SRC, HOA, ANCILLARY)
    passing, dropping = RemapEngine(), RemapEngine(missing_ancillary="drop")
    for engine in (passing, dropping):
        engine.add(rule)
        for given in (COA.packed, COA, Ancillary.of(src=COA), bytearray(COA.packed)):
            assert addresses(engine.outbound(esp_packet(HOA, CN, 48), given)) == (COA, CN)
    # No ancillary data (the HoA test's AOTR, §4.5.3): unchanged, or dropped on request.
    packet = esp_packet(HOA, CN, 48)
    assert passing.outbound(packet) is packet
    assert passing.outbound(packet, UNSPECIFIED) is packet  # "::" is "none"
    assert dropping.outbound(packet) is None
    assert passing.counters["out_src_no_ancillary"] == 2
    assert dropping.counters["out_src_no_ancillary"] == 1
    # Asking for the HoA itself keeps the HoA.
    assert passing.outbound(packet, HOA) is packet
    with pytest.raises(RemapError):
        RemapEngine(missing_ancillary="maybe")


def test_outbound_ancillary_destination_applies_only_if_not_null():
    engine = RemapEngine(missing_ancillary="drop")  # the choice is about sources only
    engine.add(RemapRule(OUT, 50, DST, HOA, ANCILLARY))
    packet = esp_packet(CN, HOA, 50)
    assert engine.outbound(packet) is packet  # §3.1 rule 3: to the HoA, via the HA
    assert addresses(engine.outbound(packet, COA)) == (CN, COA)
    assert addresses(engine.outbound(packet, Ancillary.of(dst=COA))) == (CN, COA)


def test_fallback_is_used_only_without_ancillary_data():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 48, SRC, HOA, ANCILLARY, fallback=COA))
    assert addresses(engine.outbound(esp_packet(HOA, CN, 48))) == (COA, CN)
    assert addresses(engine.outbound(esp_packet(HOA, CN, 48), COA_LTE)) == (COA_LTE, CN)


def test_bare_ancillary_is_refused_when_both_fields_want_one():
    engine = RemapEngine()
    peer_hoa, peer_coa = IPv6Address("2001:db8:100::20"), IPv6Address("2001:db8:41::2")
    engine.add(RemapRule(OUT, 48, SRC, HOA, ANCILLARY))
    engine.add(RemapRule(OUT, 48, DST, peer_hoa, ANCILLARY))
    assert engine.outbound(esp_packet(HOA, peer_hoa, 48), COA) is None
    assert engine.counters["ancillary_ambiguous"] == 1
    on_wire = engine.outbound(esp_packet(HOA, peer_hoa, 48), Ancillary.of(COA, peer_coa))
    assert addresses(on_wire) == (COA, peer_coa)
    on_wire = engine.outbound(esp_packet(HOA, peer_hoa, 48), Ancillary.of(dst=peer_coa))
    assert addresses(on_wire) == (HOA, peer_coa)


@pytest.mark.parametrize("bad", [b"\x01" * 15, "2001:db8::1", 42, Ancillary(b"\x01" * 4)])
def test_bad_ancillary_values_drop_the_packet(bad):
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 48, SRC, HOA, ANCILLARY))
    assert engine.outbound(esp_packet(HOA, CN, 48), bad) is None
    assert engine.counters["bad_ancillary"] == 1


def test_replace_address_moves_every_rule_naming_the_old_coa():
    engine = RemapEngine()
    engine.add(RemapRule(OUT, 42, SRC, HOA, COA))
    engine.add(RemapRule(IN, 43, DST, COA, HOA))
    engine.add(RemapRule(OUT, 48, SRC, HOA, ANCILLARY, fallback=COA))
    engine.add(RemapRule(IN, 51, SRC, WILDCARD, CN, copy_to_ancillary=True))
    untouched = engine.get(IN, 51, SRC)
    assert engine.replace_address(COA, COA_LTE) == 3
    assert engine.get(IN, 51, SRC) is untouched
    assert addresses(engine.outbound(esp_packet(HOA, CN, 42))) == (COA_LTE, CN)
    assert addresses(engine.outbound(esp_packet(HOA, CN, 48))) == (COA_LTE, CN)
    assert addresses(engine.inbound(esp_packet(CN, COA_LTE, 43))[0]) == (CN, HOA)
    assert engine.inbound(esp_packet(CN, COA, 43)) is None  # the old CoA is no longer expected
    assert engine.replace_address(COA, COA_LTE) == 0
    assert engine.replace_address(COA_LTE, COA_LTE) == 0
    with pytest.raises(RemapError):
        engine.replace_address(WILDCARD, COA)


def test_a_set_of_expected_addresses_accepts_each_of_them_and_nothing_else():
    # RFC 5648: one binding per link, so the HoA's data may come from either CoA.
    engine = RemapEngine()
    engine.add(RemapRule(IN, 43, SRC, COA, HOA, also_expected=(COA_LTE,),
                         copy_to_ancillary=True))
    engine.add(RemapRule(IN, 44, DST, COA, HOA, also_expected=(COA_LTE,)))
    for coa in (COA, COA_LTE):
        packet, onwire = engine.inbound(esp_packet(coa, CN, 43))
        assert addresses(packet) == (HOA, CN) and onwire == coa.packed
        packet, _ = engine.inbound(esp_packet(CN, coa, 44))
        assert addresses(packet) == (CN, HOA)
    assert engine.inbound(esp_packet(STRANGER, CN, 43)) is None
    assert engine.inbound(esp_packet(CN, STRANGER, 44)) is None
    assert engine.counters["in_src_mismatch"] == engine.counters["in_dst_mismatch"] == 1
    # The HA tunnel's SA-level address passes unchanged, as with one address.
    assert engine.inbound(esp_packet(HOA, CN, 43))[1] == UNSPECIFIED
    text = "dir: in, SPI: 43, exp. src: {2001:db8:31::2, 2001:db8:32::2}, " \
           "remap. src: 2001:db8:100::10 (ancillary)"
    assert engine.format_rules()[0] == text
    assert parse_rule(text) == engine.get(IN, 43, SRC)
    assert parse_rule(text.replace("{2001:db8:31::2, 2001:db8:32::2}", "{CoA1,CoA2}"),
                      {"CoA1": COA, "CoA2": COA_LTE}) == engine.get(IN, 43, SRC)
    # One address in braces is the plain rule.
    assert parse_rule("dir: in, SPI: 44, exp. dst: {2001:db8:31::2}, "
                      "remap. dst: 2001:db8:100::10") == RemapRule(IN, 44, DST, COA, HOA)
    for bad in ("{}", "{2001:db8:31::2,}", "{2001:db8:31::2, ::}", "{a, b",
                "{2001:db8:31::2, 2001:db8:31::2}"):
        with pytest.raises(RemapError):
            parse_rule(f"dir: in, SPI: 44, exp. dst: {bad}, remap. dst: 2001:db8:100::10")


def test_replace_address_inside_a_set_keeps_each_address_once():
    engine = RemapEngine()
    engine.add(RemapRule(IN, 43, DST, COA, HOA, also_expected=(COA_LTE,)))
    assert engine.replace_address(COA_LTE, STRANGER) == 1
    assert engine.get(IN, 43, DST).expected_addresses == (COA, STRANGER)
    assert engine.inbound(esp_packet(CN, STRANGER, 43)) is not None
    assert engine.inbound(esp_packet(CN, COA_LTE, 43)) is None
    assert engine.replace_address(STRANGER, COA) == 1     # both names now the same CoA
    assert engine.get(IN, 43, DST) == RemapRule(IN, 43, DST, COA, HOA)


# -- with real ESP on both sides -----------------------------------------------


def test_remapping_outside_esp_is_invisible_to_esp_and_to_the_transport_checksum():
    key = bytes(range(20))
    mn_out = EspSA(SaParams(0x1301, OUT, HOA, CN, "aes128gcm16", key), 0.0)
    cn_in = EspSA(SaParams(0x1301, IN, HOA, CN, "aes128gcm16", key), 0.0)
    mn, cn = RemapEngine(), RemapEngine()
    mn.add(RemapRule(OUT, 0x1301, SRC, HOA, ANCILLARY))                          # §3.1 rule 1
    cn.add(RemapRule(IN, 0x1301, SRC, WILDCARD, HOA, copy_to_ancillary=True))    # §3.1 rule 2

    inner = bytes(IPv6(src=str(HOA), dst=str(CN)) / UDP(sport=5000, dport=6000) / (b"hi" * 50))
    sa_level = transport_encap(inner, mn_out, 1.0)
    on_wire = mn.outbound(sa_level, COA)
    assert addresses(on_wire) == (COA, CN)  # the HoA is not on the wire

    received, ancillary = cn.inbound(on_wire)
    assert ancillary == COA.packed
    _spi, offset = esp_spi(received)
    plain = decap(received, offset, cn_in, 1.0)
    assert plain == inner
    parsed = IPv6(plain)
    claimed = parsed[UDP].chksum
    del parsed[UDP].chksum
    assert IPv6(bytes(parsed))[UDP].chksum == claimed  # scapy recomputes it: still valid

    # Without the inbound rule ESP still authenticates (the IPv6 header is not
    # covered by the ICV), but the decrypted packet would claim the CoA while
    # its checksum is over the HoA: why a peer without IRO drops it (appendix I).
    cn_in_again = EspSA(SaParams(0x1301, IN, HOA, CN, "aes128gcm16", key), 0.0)
    unmapped = decap(on_wire, 40, cn_in_again, 1.0)
    assert IPv6Address(IPv6(unmapped).src) == COA
    wrong = IPv6(unmapped)
    claimed = wrong[UDP].chksum
    del wrong[UDP].chksum
    assert IPv6(bytes(wrong))[UDP].chksum != claimed


def test_format_rule_is_str():
    rule = RemapRule(OUT, 42, SRC, HOA, COA)
    assert str(rule) == format_rule(rule)
