"""Sans-IO framing: overlay validation, RFC 3948 classification, rebuilt
headers and ancillary data, checked against scapy and with hypothesis."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import UDP, IPv6, IPv6ExtHdrDestOpt
from scapy.layers.ipsec import ESP
from scapy.packet import Raw

from vmip.links.framing import (
    DROP_IKE_EMPTY,
    DROP_LENGTH,
    DROP_SHORT,
    DROP_TOO_LONG,
    DROP_VERSION,
    IP_PKTINFO,
    KIND_ESP,
    KIND_IKE,
    KIND_KEEPALIVE,
    build_ipv6_header,
    classify_esp_in_udp,
    ipv4_mapped,
    overlay_drop_reason,
    parse_ancillary,
)
from vmip.links.raw import icmp6_filter

V6 = "2001:db8:31::2"
V6_PEER = "2001:db8:10::2"


def esp_packet(payload: bytes = b"\x11" * 32) -> bytes:
    return bytes(IPv6(src=V6, dst=V6_PEER) / ESP(spi=0x1234, seq=1, data=payload))


@pytest.mark.parametrize("packet", [
    esp_packet(),
    bytes(IPv6(src=V6, dst=V6_PEER, nh=59)),                       # header only
    bytes(IPv6(src=V6, dst=V6_PEER) / IPv6ExtHdrDestOpt() / UDP() / Raw(b"x" * 300)),
    bytes(IPv6(src=V6, dst=V6_PEER, tc=0xB8, fl=0x12345) / UDP() / Raw(b"y" * 1400)),
])
def test_scapy_packets_are_valid_overlay_payloads(packet):
    assert overlay_drop_reason(packet) is None
    assert overlay_drop_reason(bytearray(packet)) is None
    assert overlay_drop_reason(memoryview(packet)) is None


def test_overlay_drop_reasons():
    packet = esp_packet()
    assert overlay_drop_reason(b"") == DROP_SHORT
    assert overlay_drop_reason(packet[:39]) == DROP_SHORT
    assert overlay_drop_reason(packet[:-1]) == DROP_LENGTH                 # truncated
    assert overlay_drop_reason(packet + b"\x00") == DROP_LENGTH            # trailing bytes
    ipv4 = bytes.fromhex("4500003c") + bytes(56)
    assert overlay_drop_reason(ipv4) == DROP_VERSION
    assert overlay_drop_reason(b"\xff") == DROP_SHORT  # keepalive: never an IPv6 packet


@given(st.binary(max_size=200))
def test_overlay_check_never_raises_and_agrees_with_the_header(data):
    reason = overlay_drop_reason(data)
    if reason is None:
        # Independent view: scapy's reading of the same header.
        parsed = IPv6(data)
        assert parsed.version == 6 and parsed.plen == len(data) - 40
    else:
        assert reason in (DROP_SHORT, DROP_VERSION, DROP_LENGTH)


@given(st.binary(min_size=0, max_size=1200), st.integers(0, 255), st.integers(0, 0xFFFFF))
def test_rebuilt_header_parses_in_scapy(payload, traffic_class, flow_label):
    src = socket.inet_pton(socket.AF_INET6, V6)
    dst = ipv4_mapped(socket.inet_aton("192.0.2.18"))
    packet = build_ipv6_header(src, dst, 50, len(payload), 17, traffic_class,
                               flow_label) + payload
    parsed = IPv6(packet)
    assert (parsed.version, parsed.tc, parsed.fl, parsed.plen, parsed.nh, parsed.hlim) == \
        (6, traffic_class, flow_label, len(payload), 50, 17)
    assert parsed.src == V6 and parsed.dst == "::ffff:192.0.2.18"
    assert overlay_drop_reason(packet) is None


def test_esp_in_udp_kinds():
    esp = bytes(ESP(spi=0x1001, seq=5, data=b"\x00" * 20))
    assert classify_esp_in_udp(esp) == KIND_ESP
    assert classify_esp_in_udp(b"\xff") == KIND_KEEPALIVE
    assert classify_esp_in_udp(b"\x00\x00\x00\x00" + b"\x01" * 28) == KIND_IKE
    assert classify_esp_in_udp(b"\x00\x00\x00\x00") == DROP_IKE_EMPTY
    assert classify_esp_in_udp(b"") == DROP_SHORT
    assert classify_esp_in_udp(b"\xff\xff") == DROP_SHORT
    assert classify_esp_in_udp(b"\x00\x00\x10\x01\x00\x00\x00") == DROP_SHORT  # 7 octets
    assert classify_esp_in_udp(b"\x00\x00\x10\x01" + bytes(4)) == KIND_ESP       # SPI 0x1001
    assert classify_esp_in_udp(b"\x01" * 65536) == DROP_TOO_LONG


@given(st.binary(max_size=100))
def test_esp_in_udp_classification_is_total(data):
    kind = classify_esp_in_udp(data)
    assert kind in (KIND_ESP, KIND_IKE, KIND_KEEPALIVE, DROP_SHORT, DROP_IKE_EMPTY)
    if kind == KIND_IKE:
        assert data[:4] == bytes(4)                                 # RFC 3948 §2.2
    if kind == KIND_ESP:
        assert struct.unpack("!I", data[:4])[0] != 0 and len(data) >= 8


def native(value: int) -> bytes:
    return value.to_bytes(4, "little" if struct.pack("=I", 1)[0] else "big")


def test_parse_ancillary_reads_pktinfo_hoplimit_tclass():
    dst = socket.inet_pton(socket.AF_INET6, V6_PEER)
    info = parse_ancillary([
        (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, dst + native(7)),
        (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, native(63)),
        (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, native(0xB8)),
    ])
    assert (info.destination, info.ifindex, info.hop_limit, info.traffic_class) == \
        (dst, 7, 63, 0xB8)
    ipv4 = parse_ancillary([(socket.IPPROTO_IP, IP_PKTINFO,
                             native(3) + socket.inet_aton("192.0.2.1")
                             + socket.inet_aton("192.0.2.18"))])
    assert socket.inet_ntop(socket.AF_INET6, ipv4.destination) == "::ffff:192.0.2.18"
    empty = parse_ancillary([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, dst[:10])])
    assert empty.destination is None


@given(st.lists(st.tuples(st.sampled_from([0, socket.IPPROTO_IP, socket.IPPROTO_IPV6, 1]),
                          st.integers(0, 80), st.binary(max_size=40)), max_size=6))
def test_parse_ancillary_never_raises(ancdata):
    info = parse_ancillary(ancdata)
    assert info.destination is None or len(info.destination) == 16


def test_icmp6_filter_passes_exactly_the_requested_types():
    words = struct.unpack("=8I", icmp6_filter([1, 2, 3, 4, 200]))
    # RFC 3542 §3.2 ICMP6_FILTER_WILLBLOCK: the bit of a type set = blocked.
    blocked = {t for t in range(256) if words[t >> 5] & (1 << (t & 31))}
    assert blocked == set(range(256)) - {1, 2, 3, 4, 200}
