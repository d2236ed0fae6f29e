"""IPv6 and IPv4 headers and the extension-header chain, cross-checked with scapy."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    HAO,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
    in6_chksum,
)
from scapy.layers.ipsec import AH
from wire_strategies import DST, DST_A, SRC, SRC_A, ipv6_addresses

from vmip.wire import proto
from vmip.wire.errors import FieldValueError, WireError
from vmip.wire.ipv4 import (
    IPv4Header,
    build_ipv4_header,
    check_ipv4,
    ipv4_dst,
    ipv4_protocol,
    ipv4_src,
)
from vmip.wire.ipv6 import (
    AuthenticationHeader,
    DestinationOptions,
    FragmentHeader,
    HomeAddressOption,
    HopByHopOptions,
    IPv6Header,
    RoutingHeader,
    Type2RoutingHeader,
    UnknownOption,
    build_ipv6,
    build_ipv6_header,
    check_ipv6,
    ip_version,
    ipv6_dst,
    ipv6_hop_limit,
    ipv6_next_header,
    ipv6_payload_length,
    ipv6_src,
    parse_ipv6,
    replace_ipv6_addresses,
)

HOA = IPv6Address("2001:db8:aaaa::1")

headers = st.builds(
    IPv6Header,
    ipv6_addresses,
    ipv6_addresses,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFFF),
)


@given(headers)
def test_fixed_header_round_trip_and_scapy(header):
    data = header.build()
    assert IPv6Header.parse(data) == header
    theirs = IPv6(data)
    assert (theirs.version, theirs.tc, theirs.fl) == (6, header.traffic_class, header.flow_label)
    assert (theirs.plen, theirs.nh, theirs.hlim) == (
        header.payload_length,
        header.next_header,
        header.hop_limit,
    )
    assert (theirs.src, theirs.dst) == (str(header.src), str(header.dst))


def test_fixed_header_from_scapy():
    theirs = raw(IPv6(src=SRC, dst=DST, tc=0xB8, fl=0x12345, hlim=7, nh=59, plen=0))
    assert IPv6Header.parse(theirs) == IPv6Header(SRC_A, DST_A, 59, 0, 7, 0xB8, 0x12345)


def test_zero_copy_helpers_read_scapy_packet():
    packet = raw(IPv6(src=SRC, dst=DST, hlim=9) / UDP() / b"data")
    assert ip_version(packet) == 6
    assert ipv6_src(packet) == SRC_A.packed
    assert ipv6_dst(memoryview(packet)) == DST_A.packed
    assert ipv6_next_header(packet) == 17
    assert ipv6_payload_length(packet) == 12
    assert ipv6_hop_limit(packet) == 9
    assert check_ipv6(packet + b"trailer") == len(packet)


@pytest.mark.parametrize(
    "helper",
    [ipv6_src, ipv6_dst, ipv6_next_header, ipv6_payload_length, ipv6_hop_limit, check_ipv6],
)
def test_zero_copy_helpers_reject_short_input(helper):
    with pytest.raises(WireError):
        helper(bytes(39))


def test_replace_addresses_keeps_the_rest():
    packet = raw(IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / b"abc")
    new_src = IPv6Address("2001:db8:c0a::1").packed
    remapped = replace_ipv6_addresses(packet, src=new_src)
    theirs = IPv6(remapped)
    assert theirs.src == "2001:db8:c0a::1" and theirs.dst == DST
    assert remapped[40:] == packet[40:] and remapped[:8] == packet[:8]
    assert replace_ipv6_addresses(packet, dst=SRC_A.packed)[24:40] == SRC_A.packed


def test_build_header_rejects_bad_fields():
    with pytest.raises(FieldValueError):
        build_ipv6_header(bytes(16), bytes(16), 17, 70000)
    with pytest.raises(FieldValueError):
        build_ipv6_header(bytes(4), bytes(16), 17, 0)
    with pytest.raises(ValueError):  # FieldValueError is also a ValueError
        IPv6Header(SRC_A, DST_A, 300, 0)


# --- extension headers -------------------------------------------------------


def test_scapy_chain_parses():
    theirs = (
        IPv6(src=SRC, dst=DST)
        / IPv6ExtHdrHopByHop(options=[RouterAlert(value=0)])
        / IPv6ExtHdrDestOpt(options=[HAO(hoa=str(HOA))])
        / IPv6ExtHdrRouting(type=2, addresses=["2001:db8:bbbb::1"], segleft=1)
        / IPv6ExtHdrFragment(offset=0, m=1, id=0xDEADBEEF)
        / AH(nh=17, spi=0x1234, seq=9, icv=b"\x11" * 12, payloadlen=4)
        / UDP(sport=1111, dport=2222)
        / b"payload"
    )
    data = raw(theirs)
    parsed = parse_ipv6(data)
    hop, dest, routing, fragment, auth = parsed.extension_headers
    assert isinstance(hop, HopByHopOptions)
    assert hop.options == (UnknownOption(5, b"\x00\x00"),)  # Router Alert, RFC 2711
    assert dest == DestinationOptions((HomeAddressOption(HOA),))
    assert routing == Type2RoutingHeader(IPv6Address("2001:db8:bbbb::1"), 1)
    assert fragment == FragmentHeader(0, True, 0xDEADBEEF)
    assert auth == AuthenticationHeader(0x1234, 9, b"\x11" * 12)
    assert parsed.upper_layer_protocol == proto.UDP
    assert parsed.upper_layer == raw(theirs[UDP])
    assert not parsed.later_fragment
    assert parsed.home_address == HOA
    assert parsed.final_destination == IPv6Address("2001:db8:bbbb::1")


def test_vmip_chain_parses_in_scapy():
    data = build_ipv6(
        SRC_A,
        DST_A,
        proto.TCP,
        raw(TCP(sport=5, dport=6)),
        (
            HopByHopOptions((UnknownOption(5, b"\x00\x00"),)),
            DestinationOptions((HomeAddressOption(HOA),)),
            Type2RoutingHeader(IPv6Address("2001:db8:bbbb::1")),
            FragmentHeader(0, True, 77),
            AuthenticationHeader(0xABCD, 3, b"\x22" * 12),
        ),
        hop_limit=33,
    )
    theirs = IPv6(data)
    assert theirs.hlim == 33 and theirs.plen == len(data) - 40
    assert theirs[IPv6ExtHdrHopByHop].options[0].otype == 5
    options = [o for o in theirs[IPv6ExtHdrDestOpt].options if isinstance(o, HAO)]
    assert options[0].hoa == str(HOA)
    routing = theirs[IPv6ExtHdrRouting]
    assert (routing.type, routing.segleft, routing.addresses) == (2, 1, ["2001:db8:bbbb::1"])
    assert (theirs[IPv6ExtHdrFragment].id, theirs[IPv6ExtHdrFragment].m) == (77, 1)
    assert (theirs[AH].spi, theirs[AH].seq, theirs[AH].icv) == (0xABCD, 3, b"\x22" * 12)
    # scapy does not dissect past AH: compare the bytes it leaves after it.
    assert raw(theirs[AH].payload) == raw(TCP(sport=5, dport=6))


def test_home_address_option_is_aligned_8n_plus_6():
    header = DestinationOptions((HomeAddressOption(HOA),)).build(59)
    # RFC 6275 §6.3: the option type sits at 8n+6 from the header start.
    assert header.index(bytes([201, 16])) % 8 == 6
    assert len(header) % 8 == 0
    assert IPv6ExtHdrDestOpt(header).options[-1].hoa == str(HOA)


@given(
    st.lists(
        st.one_of(
            st.builds(HomeAddressOption, ipv6_addresses),
            st.builds(
                UnknownOption,
                st.integers(2, 255).filter(lambda t: t != 201),
                st.binary(max_size=30),
            ),
        ),
        max_size=4,
    ).map(tuple),
    st.sampled_from([proto.TCP, proto.UDP, proto.ESP, proto.MOBILITY, proto.NO_NEXT_HEADER]),
    st.binary(max_size=64),
)
def test_chain_round_trip(options, upper, payload):
    extensions = (
        HopByHopOptions(options),
        RoutingHeader(0, 0, bytes(4) + SRC_A.packed),
        DestinationOptions(options),
        FragmentHeader(0, False, 1),
    )
    data = build_ipv6(SRC_A, DST_A, upper, payload, extensions)
    parsed = parse_ipv6(data)
    assert parsed.extension_headers == extensions
    assert parsed.upper_layer_protocol == upper
    assert parsed.upper_layer == payload
    # scapy agrees on where the headers are: its last extension layer's payload.
    assert raw(IPv6(data)[IPv6ExtHdrFragment].payload) == payload


def test_later_fragment_stops_the_walk():
    data = raw(
        IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(offset=185, m=1, id=1, nh=6) / (b"\x00" * 3)
    )
    parsed = parse_ipv6(data)
    assert parsed.later_fragment
    assert parsed.upper_layer_protocol == proto.TCP
    assert parsed.upper_layer_offset == 48


def test_hop_by_hop_must_be_first():
    data = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP())
    with pytest.raises(WireError):
        parse_ipv6(data)


def test_payload_length_beyond_packet_is_rejected_and_trailer_ignored():
    data = raw(IPv6(src=SRC, dst=DST) / UDP() / b"12345678")
    with pytest.raises(WireError):
        parse_ipv6(data[:-1])
    assert parse_ipv6(data + b"junk").upper_layer == data[40:]


def test_checksum_addresses_match_scapy_with_hao_and_rh2():
    # scapy only honours HAO when it is the sole option of an object it built.
    built = (
        IPv6(src="2001:db8:c0a::1", dst=DST)
        / IPv6ExtHdrDestOpt(options=[HAO(hoa=str(HOA))])
        / UDP(sport=9, dport=10)
        / b"x"
    )
    parsed = parse_ipv6(raw(built))
    src, dst = parsed.checksum_addresses()
    assert src == HOA.packed and dst == DST_A.packed
    from vmip.wire.checksum import verify_upper_layer_checksum

    assert verify_upper_layer_checksum(src, dst, 17, parsed.upper_layer)

    routed = (
        IPv6(src=SRC, dst="2001:db8:c0a::2")
        / IPv6ExtHdrRouting(type=2, addresses=[str(HOA)], segleft=1)
        / UDP(sport=9, dport=10)
        / b"y"
    )
    parsed = parse_ipv6(raw(routed))
    src, dst = parsed.checksum_addresses()
    assert (src, dst) == (SRC_A.packed, HOA.packed)
    assert verify_upper_layer_checksum(src, dst, 17, parsed.upper_layer)
    assert in6_chksum(17, routed[UDP], parsed.upper_layer) == 0


def test_padn_in_scapy_options_is_not_reported():
    data = raw(
        IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 4)]) / UDP()
    )
    assert parse_ipv6(data).extension_headers == (DestinationOptions(()),)


def test_option_overrunning_header_is_rejected():
    header = bytes([17, 0, 7, 10, 0, 0, 0, 0])  # option type 7 claims 10 bytes in 6
    data = build_ipv6_header(SRC_A.packed, DST_A.packed, 60, len(header)) + header
    with pytest.raises(WireError):
        parse_ipv6(data)


# --- IPv4 --------------------------------------------------------------------

ipv4_headers = st.builds(
    IPv4Header,
    st.binary(min_size=4, max_size=4).map(IPv4Address),
    st.binary(min_size=4, max_size=4).map(IPv4Address),
    # Not IGMP (2): scapy's IGMP layer rewrites the IP options and TTL when it
    # re-serialises, so it is no oracle for the header checksum.
    st.integers(0, 255).filter(lambda protocol: protocol != 2),
    st.integers(60, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.booleans(),
    st.integers(0, 0x1FFF),
    st.integers(0, 10).map(lambda n: b"\x01" * (4 * n)),
)


@given(ipv4_headers)
def test_ipv4_header_round_trip_and_scapy(header):
    data = header.build()
    padded = data + bytes(header.total_length - len(data))
    assert IPv4Header.parse(padded) == header
    theirs = IP(padded)
    assert (theirs.src, theirs.dst, theirs.proto) == (
        str(header.src),
        str(header.dst),
        header.protocol,
    )
    assert (theirs.ttl, theirs.tos, theirs.id, theirs.frag) == (
        header.ttl,
        header.tos,
        header.identification,
        header.fragment_offset,
    )
    assert (
        bool(theirs.flags.DF) == header.dont_fragment
        and bool(theirs.flags.MF) == header.more_fragments
    )
    checksum = theirs.chksum
    del theirs.chksum
    assert IP(raw(theirs)).chksum == checksum


def test_ipv4_from_scapy_and_checksum_verification():
    data = raw(IP(src="192.0.2.1", dst="198.51.100.1", ttl=3, id=99, flags="DF") / UDP() / b"q")
    header = IPv4Header.parse(data)
    assert header == IPv4Header(
        IPv4Address("192.0.2.1"), IPv4Address("198.51.100.1"), 17, len(data), 3, 0, 99, True
    )
    assert (ipv4_src(data), ipv4_dst(data), ipv4_protocol(data)) == (
        bytes([192, 0, 2, 1]),
        bytes([198, 51, 100, 1]),
        17,
    )
    broken = data[:8] + bytes([data[8] ^ 1]) + data[9:]
    from vmip.wire.errors import ChecksumError

    with pytest.raises(ChecksumError):
        IPv4Header.parse(broken)
    assert IPv4Header.parse(broken, verify_checksum=False).ttl == 2


def test_fast_ipv4_builder_matches_scapy():
    header = build_ipv4_header(bytes([192, 0, 2, 1]), bytes([203, 0, 113, 5]), 17, 20, ttl=30)
    theirs = IP(header + bytes(20))
    assert (theirs.src, theirs.dst, theirs.len, theirs.ttl, theirs.proto) == (
        "192.0.2.1",
        "203.0.113.5",
        40,
        30,
        17,
    )
    checksum = theirs.chksum
    del theirs.chksum
    assert IP(raw(theirs)).chksum == checksum
    assert check_ipv4(header + bytes(20)) == (20, 40)
