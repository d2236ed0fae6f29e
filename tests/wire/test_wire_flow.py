"""flow_key against scapy-built packets, and its per-packet cost."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.all import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    HAO,
    MIP6MH_BA,
    MIP6MH_BU,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    MIP6MH_Generic,
    RouterAlert,
)
from scapy.layers.ipsec import AH
from scapy.layers.sctp import SCTP

from vmip.wire.errors import WireError
from vmip.wire.flow import FlowKey, flow_key

SRC = "2001:db8::1"
DST = "2001:db8::2"


def _expected_v6(packet, proto, sport, dport) -> FlowKey:
    """The key read off scapy's own dissection of *packet*."""
    return FlowKey(
        IPv6Address(packet.src).packed, IPv6Address(packet.dst).packed, proto, sport, dport
    )


EXTENSION_STACKS = [
    [],
    [IPv6ExtHdrHopByHop(options=[RouterAlert()])],
    [IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8::99")])],
    [IPv6ExtHdrRouting(type=2, addresses=["2001:db8::99"], segleft=1)],
    [IPv6ExtHdrFragment(offset=0, m=1, id=5)],
    [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8::99")]),
        IPv6ExtHdrRouting(type=2, addresses=["2001:db8::99"], segleft=1),
        IPv6ExtHdrFragment(offset=0, m=1, id=5),
        IPv6ExtHdrDestOpt(),
    ],
]


def _stack(layers):
    packet = IPv6(src=SRC, dst=DST)
    for layer in layers:
        packet = packet / layer.copy()
    return packet


@pytest.mark.parametrize("stack", range(len(EXTENSION_STACKS)))
@pytest.mark.parametrize(
    "upper",
    [
        TCP(sport=40000, dport=22),
        UDP(sport=5353, dport=53),
        SCTP(sport=7, dport=9),
        ICMPv6EchoRequest(id=1),
        ICMPv6EchoReply(),
        ICMPv6DestUnreach(code=3),
        MIP6MH_BU(seq=1),
        MIP6MH_BA(status=0),
        MIP6MH_Generic(mhtype=31, msg=bytes(2)),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_flow_key_matches_scapy(stack, upper):
    packet = IPv6(raw(_stack(EXTENSION_STACKS[stack]) / upper.copy()))
    layer = packet.getlayer(type(upper))
    if isinstance(layer, (TCP, UDP, SCTP)):
        proto = {TCP: 6, UDP: 17, SCTP: 132}[type(layer)]
        expected = _expected_v6(packet, proto, layer.sport, layer.dport)
    elif layer.name.startswith("ICMPv6"):
        expected = _expected_v6(packet, 58, layer.type, layer.code)
    else:
        expected = _expected_v6(packet, 135, layer.mhtype, 0)
    assert flow_key(raw(packet)) == expected


def test_ah_is_stepped_over():
    packet = raw(
        IPv6(src=SRC, dst=DST)
        / AH(nh=17, spi=1, icv=bytes(12), payloadlen=4)
        / UDP(sport=1, dport=2)
    )
    assert flow_key(packet)[2:] == (17, 1, 2)


def test_later_fragment_is_opaque():
    packet = raw(
        IPv6(src=SRC, dst=DST)
        / IPv6ExtHdrFragment(offset=100, m=0, id=5, nh=6)
        / b"\x00\x50\x00\x51rest"
    )
    assert flow_key(packet) == FlowKey(IPv6Address(SRC).packed, IPv6Address(DST).packed, 6, 0, 0)


def test_other_protocols_have_zero_ports():
    esp = raw(IPv6(src=SRC, dst=DST, nh=50) / bytes(24))
    assert flow_key(esp)[2:] == (50, 0, 0)
    tunnel = raw(IPv6(src=SRC, dst=DST) / IPv6(src=DST, dst=SRC) / UDP())
    assert flow_key(tunnel)[2:] == (41, 0, 0)
    empty = raw(IPv6(src=SRC, dst=DST, nh=59))
    assert flow_key(empty)[2:] == (59, 0, 0)


def test_ipv4_packets():
    packet = raw(
        IP(src="192.0.2.1", dst="198.51.100.2", options=b"\x01\x01\x01\x00") / UDP(sport=3, dport=4)
    )
    assert flow_key(packet) == FlowKey(
        IPv4Address("192.0.2.1").packed, IPv4Address("198.51.100.2").packed, 17, 3, 4
    )
    icmp = raw(IP(src="192.0.2.1", dst="198.51.100.2") / ICMP(type=8, code=0))
    assert flow_key(icmp)[2:] == (1, 8, 0)
    later = raw(IP(src="192.0.2.1", dst="198.51.100.2", frag=20, proto=6) / bytes(8))
    assert flow_key(later)[2:] == (6, 0, 0)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x60" + bytes(38),  # shorter than the IPv6 header
        raw(IPv6(src=SRC, dst=DST) / TCP())[:-18],  # payload length beyond the packet
        raw(IPv6(src=SRC, dst=DST, nh=6, plen=2) / b"\x00\x01"),  # no room for ports
        raw(IPv6(src=SRC, dst=DST, nh=60, plen=8) / (bytes([6, 1]) + bytes(6))),  # overruns
        raw(IP(src="192.0.2.1", dst="192.0.2.2") / UDP())[:-1],  # IPv4 total length
        b"\x50" + bytes(60),  # version 5
    ],
)
def test_malformed_packets_raise_wire_error(packet):
    with pytest.raises(WireError):
        flow_key(packet)


def test_flow_key_is_fast():
    """Budget: a few µs per packet (measured ~0.6 µs here); fail far above it."""
    packets = [
        raw(IPv6(src=SRC, dst=DST) / TCP(sport=1, dport=2) / bytes(1300)),
        raw(_stack(EXTENSION_STACKS[5]) / UDP(sport=1, dport=2) / bytes(1200)),
    ]
    rounds = 20000
    for packet in packets:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(rounds):
                flow_key(packet)
            best = min(best, (time.perf_counter() - start) / rounds)
        assert best < 5e-6, f"flow_key took {best * 1e6:.2f} µs"


def test_memoryview_input_gives_hashable_bytes():
    packet = raw(IPv6(src=SRC, dst=DST) / UDP(sport=8, dport=9))
    key = flow_key(memoryview(packet))
    assert key == flow_key(packet)
    assert type(key.src) is bytes and {key: 1}[flow_key(packet)] == 1
