"""UDP, ICMPv6 and IPv6-in-IPv6, cross-checked with scapy both ways."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    in6_chksum,
)
from wire_strategies import DST, DST_A, SRC, SRC_A

from vmip.wire import icmpv6, proto
from vmip.wire.errors import ChecksumError, FieldValueError, WireError
from vmip.wire.tunnel import decapsulate, encapsulate
from vmip.wire.udp import build_udp, parse_udp

V4_SRC = IPv4Address("192.0.2.10")
V4_DST = IPv4Address("198.51.100.20")


# --- UDP ---------------------------------------------------------------------


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_udp_ipv6_vmip_to_scapy(sport, dport, payload):
    datagram = build_udp(sport, dport, payload, SRC_A, DST_A)
    theirs = IPv6(src=SRC, dst=DST) / UDP(datagram)
    assert (theirs[UDP].sport, theirs[UDP].dport, theirs[UDP].len) == (sport, dport, len(datagram))
    assert bytes(theirs[UDP].payload) == payload
    assert theirs[UDP].chksum != 0
    assert in6_chksum(17, theirs[UDP], datagram) == 0


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_udp_scapy_to_vmip(sport, dport, payload):
    theirs = raw(IPv6(src=SRC, dst=DST) / UDP(sport=sport, dport=dport) / payload)
    datagram = parse_udp(theirs[40:], SRC_A, DST_A)
    assert (datagram.src_port, datagram.dst_port, datagram.payload) == (sport, dport, payload)


def test_udp_over_ipv4_both_ways():
    datagram = build_udp(4500, 6275, b"hello", V4_SRC, V4_DST)
    theirs = IP(raw(IP(src=str(V4_SRC), dst=str(V4_DST)) / UDP(datagram)))
    checksum = theirs[UDP].chksum
    del theirs[UDP].chksum
    assert IP(raw(theirs))[UDP].chksum == checksum
    scapy_bytes = raw(IP(src=str(V4_SRC), dst=str(V4_DST)) / UDP(sport=1, dport=2) / b"xyz")
    assert parse_udp(scapy_bytes[20:], V4_SRC, V4_DST).payload == b"xyz"


def test_udp_checksum_errors():
    datagram = bytearray(build_udp(1, 2, b"data", SRC_A, DST_A))
    datagram[-1] ^= 0xFF
    with pytest.raises(ChecksumError):
        parse_udp(bytes(datagram), SRC_A, DST_A)
    # RFC 8200 §8.1: a zero UDP checksum is invalid over IPv6, "none" over IPv4.
    zeroed = bytes(datagram[:6]) + b"\x00\x00" + bytes(datagram[8:])
    with pytest.raises(ChecksumError):
        parse_udp(zeroed, SRC_A, DST_A)
    assert parse_udp(zeroed, V4_SRC, V4_DST).checksum == 0
    assert parse_udp(zeroed).src_port == 1  # no addresses: no verification


def test_udp_length_field_is_checked():
    datagram = build_udp(1, 2, b"data", SRC_A, DST_A)
    with pytest.raises(WireError):
        parse_udp(datagram[:-1])
    assert parse_udp(datagram + b"pad", SRC_A, DST_A).payload == b"data"


def test_udp_rejects_bad_ports():
    with pytest.raises(FieldValueError):
        build_udp(70000, 1, b"", SRC_A, DST_A)


# --- ICMPv6 ------------------------------------------------------------------

INVOKING = raw(IPv6(src=DST, dst=SRC) / UDP(sport=5, dport=6) / b"original")


@pytest.mark.parametrize(
    ("message", "scapy_class", "fields"),
    [
        (icmpv6.EchoRequest(0x1234, 7, b"ping"), ICMPv6EchoRequest, {"id": 0x1234, "seq": 7}),
        (icmpv6.EchoReply(1, 65535, b""), ICMPv6EchoReply, {"id": 1, "seq": 65535}),
        (
            icmpv6.DestinationUnreachable(icmpv6.PORT_UNREACHABLE, INVOKING),
            ICMPv6DestUnreach,
            {"code": 4},
        ),
        (icmpv6.PacketTooBig(1280, INVOKING), ICMPv6PacketTooBig, {"mtu": 1280}),
        (icmpv6.TimeExceeded(icmpv6.HOP_LIMIT_EXCEEDED, INVOKING), ICMPv6TimeExceeded, {"code": 0}),
        (
            icmpv6.ParameterProblem(icmpv6.UNRECOGNIZED_NEXT_HEADER, 6, INVOKING),
            ICMPv6ParamProblem,
            {"code": 1, "ptr": 6},
        ),
    ],
)
def test_icmpv6_vmip_to_scapy_and_back(message, scapy_class, fields):
    packet = icmpv6.build_icmpv6_packet(message, SRC_A, DST_A)
    theirs = IPv6(packet)
    layer = theirs[scapy_class]
    for name, value in fields.items():
        assert getattr(layer, name) == value
    assert in6_chksum(58, layer, packet[40:]) == 0
    if hasattr(message, "invoking_packet"):
        assert raw(theirs[IPerror6]) == message.invoking_packet
    # And back through our parser, with checksum verification.
    assert icmpv6.parse_icmpv6(packet[40:], SRC_A, DST_A) == message


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (ICMPv6EchoRequest(id=9, seq=8, data=b"abc"), icmpv6.EchoRequest(9, 8, b"abc")),
        (ICMPv6EchoReply(id=9, seq=8, data=b"abc"), icmpv6.EchoReply(9, 8, b"abc")),
        (ICMPv6DestUnreach(code=1) / INVOKING, icmpv6.DestinationUnreachable(1, INVOKING)),
        (ICMPv6PacketTooBig(mtu=1400) / INVOKING, icmpv6.PacketTooBig(1400, INVOKING)),
        (ICMPv6TimeExceeded(code=1) / INVOKING, icmpv6.TimeExceeded(1, INVOKING)),
        (ICMPv6ParamProblem(code=2, ptr=42) / INVOKING, icmpv6.ParameterProblem(2, 42, INVOKING)),
    ],
)
def test_icmpv6_scapy_to_vmip(layer, expected):
    data = raw(IPv6(src=SRC, dst=DST) / layer)
    assert icmpv6.parse_icmpv6(data[40:], SRC_A, DST_A) == expected


def test_icmpv6_unknown_type_and_bad_checksum():
    data = raw(IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest(id=1, seq=1))[40:]
    assert icmpv6.parse_icmpv6(bytes([200, 3]) + data[2:]) == icmpv6.UnknownIcmpv6(200, 3, data[4:])
    with pytest.raises(ChecksumError):
        icmpv6.parse_icmpv6(data, DST_A, SRC_A + 1)
    with pytest.raises(WireError):
        icmpv6.parse_icmpv6(data[:6])


def test_error_quotes_as_much_as_fits_in_1280():
    big = raw(IPv6(src=DST, dst=SRC) / UDP(sport=1, dport=2) / (b"z" * 1400))
    packet = icmpv6.build_icmpv6_packet(icmpv6.PacketTooBig(1280, big), SRC_A, DST_A)
    assert len(packet) == 1280  # RFC 4443 §2.4(c)
    theirs = IPv6(packet)
    assert theirs.plen == 1240
    assert in6_chksum(58, theirs[ICMPv6PacketTooBig], packet[40:]) == 0
    assert packet[48:] == big[: 1280 - 48]
    small = icmpv6.build_icmpv6_packet(icmpv6.TimeExceeded(0, INVOKING), SRC_A, DST_A)
    assert len(small) == 48 + len(INVOKING)


def test_may_send_error_rules():
    udp = raw(IPv6(src=DST, dst=SRC) / UDP())
    assert icmpv6.may_send_error(udp, icmpv6.DESTINATION_UNREACHABLE, 4)
    # e.1: never about an ICMPv6 error; echo is fine.
    error = raw(IPv6(src=DST, dst=SRC) / ICMPv6DestUnreach() / INVOKING)
    assert not icmpv6.may_send_error(error, icmpv6.DESTINATION_UNREACHABLE)
    echo = raw(IPv6(src=DST, dst=SRC) / ICMPv6EchoRequest())
    assert icmpv6.may_send_error(echo, icmpv6.TIME_EXCEEDED)
    # e.3: multicast destination only for Packet Too Big and Parameter Problem code 2.
    multicast = raw(IPv6(src=DST, dst="ff02::1") / UDP())
    assert not icmpv6.may_send_error(multicast, icmpv6.DESTINATION_UNREACHABLE)
    assert icmpv6.may_send_error(multicast, icmpv6.PACKET_TOO_BIG)
    assert icmpv6.may_send_error(multicast, icmpv6.PARAMETER_PROBLEM, icmpv6.UNRECOGNIZED_OPTION)
    assert not icmpv6.may_send_error(multicast, icmpv6.PARAMETER_PROBLEM, 0)
    # e.6: unspecified or multicast source.
    assert not icmpv6.may_send_error(raw(IPv6(src="::", dst=SRC) / UDP()), icmpv6.PACKET_TOO_BIG)


# --- IPv6-in-IPv6 ------------------------------------------------------------

HA = "2001:db8:ffff::1"
COA = "2001:db8:c0a::1"


def test_encapsulate_parses_in_scapy():
    inner = raw(IPv6(src=SRC, dst=DST) / TCP(sport=3, dport=4))
    outer = encapsulate(inner, IPv6Address(COA).packed, IPv6Address(HA).packed, hop_limit=10)
    theirs = IPv6(outer)
    assert (theirs.src, theirs.dst, theirs.nh, theirs.hlim) == (COA, HA, 41, 10)
    assert raw(theirs.payload) == inner
    assert theirs.payload[TCP].dport == 4
    v4_inner = raw(IP(src="192.0.2.1", dst="192.0.2.2") / UDP())
    assert IPv6(encapsulate(v4_inner, bytes(16), bytes(16))).nh == proto.IPV4


def test_decapsulate_scapy_tunnel_packets():
    inner = raw(IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / b"in")
    got = decapsulate(raw(IPv6(src=COA, dst=HA) / IPv6(inner)) + b"trailer")
    assert got.inner == inner
    assert (got.outer_src, got.outer_dst) == (IPv6Address(COA).packed, IPv6Address(HA).packed)
    v4_inner = raw(IP(src="192.0.2.1", dst="192.0.2.2") / UDP())
    assert decapsulate(raw(IPv6(src=COA, dst=HA) / IP(v4_inner))).inner == v4_inner


def test_decapsulate_rejects_non_tunnel_and_bad_inner():
    with pytest.raises(WireError):
        decapsulate(raw(IPv6(src=COA, dst=HA) / UDP()))
    inner = raw(IPv6(src=SRC, dst=DST) / UDP())
    lying = raw(IPv6(src=COA, dst=HA, nh=4) / inner)  # says IPv4, carries IPv6
    with pytest.raises(WireError):
        decapsulate(lying)
    with pytest.raises(WireError):
        decapsulate(raw(IPv6(src=COA, dst=HA) / IPv6(inner))[:-3])


@given(st.binary(max_size=200))
def test_tunnel_round_trip(payload):
    inner = raw(IPv6(src=SRC, dst=DST) / UDP(sport=1, dport=2) / payload)
    outer = encapsulate(inner, SRC_A.packed, DST_A.packed)
    assert decapsulate(outer) == (SRC_A.packed, DST_A.packed, inner)
