"""The SPD selector key of a packet (RFC 4301 §4.4.1.1), on the per-packet path.

One function, :func:`flow_key`, reads addresses, the next-layer protocol
after the IPv6 extension headers, and the "ports": TCP/UDP/SCTP/UDP-Lite ports,
ICMPv6 type and code (RFC 4301 §4.4.1.1 "ICMP message type and code"), MH
type (RFC 4301 §4.4.1.1 "Mobility Header type"), 0/0 for anything else and
for fragments other than the first (RFC 4301 §4.4.1.1: ports are OPAQUE
then).  Nothing but the returned tuple is allocated on the common path.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from vmip.wire import proto
from vmip.wire.errors import WireError

_PORTS = struct.Struct("!HH").unpack_from
_EXTENSION_HEADERS = frozenset(
    (proto.HOP_BY_HOP, proto.ROUTING, proto.FRAGMENT, proto.DESTINATION_OPTIONS, proto.AH)
)
_TCP, _UDP, _SCTP, _UDPLITE, _ICMPV6, _MOBILITY = (
    proto.TCP,
    proto.UDP,
    proto.SCTP,
    proto.UDPLITE,
    proto.ICMPV6,
    proto.MOBILITY,
)
_FRAGMENT, _AH, _ICMP = proto.FRAGMENT, proto.AH, proto.ICMP


class FlowKey(NamedTuple):
    """Selector values of one packet; addresses raw (16 bytes IPv6, 4 bytes IPv4)."""

    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int


def _ports(data: bytes, protocol: int, offset: int, end: int) -> tuple[int, int]:
    if protocol == _TCP or protocol == _UDP or protocol == _SCTP or protocol == _UDPLITE:
        # UDP-Lite keeps UDP's port fields (RFC 3828 §3), and policies may name them.
        if offset + 4 > end:
            raise WireError(f"protocol {protocol} header truncated: no ports")
        return _PORTS(data, offset)
    if protocol == _ICMPV6 or protocol == _ICMP:
        if offset + 2 > end:
            raise WireError("ICMP header truncated: no type and code")
        return data[offset], data[offset + 1]
    if protocol == _MOBILITY:
        if offset + 3 > end:
            raise WireError("Mobility Header truncated: no MH type")
        return data[offset + 2], 0
    return 0, 0


def _flow_key_ipv6(data: bytes) -> FlowKey:
    length = len(data)
    if length < 40:
        raise WireError(f"IPv6 packet of {length} bytes is shorter than its header")
    end = 40 + ((data[4] << 8) | data[5])
    if end > length:
        raise WireError(f"IPv6 payload length says {end} bytes, packet has {length}")
    protocol = data[6]
    offset = 40
    opaque = False
    # Bounded: every extension header advances offset by at least 8 bytes.
    while protocol in _EXTENSION_HEADERS:
        if offset + 8 > end:
            raise WireError(f"extension header {protocol} truncated")
        following = data[offset]
        if protocol == _FRAGMENT:
            if ((data[offset + 2] << 8) | data[offset + 3]) >> 3:
                opaque = True
            offset += 8
            protocol = following
            if opaque:
                break
            continue
        if protocol == _AH:
            offset += (data[offset + 1] + 2) * 4
        else:
            offset += (data[offset + 1] + 1) * 8
        if offset > end:
            raise WireError(f"extension header {protocol} overruns the packet")
        protocol = following
    if opaque:
        return FlowKey(data[8:24], data[24:40], protocol, 0, 0)
    sport, dport = _ports(data, protocol, offset, end)
    return FlowKey(data[8:24], data[24:40], protocol, sport, dport)


def _flow_key_ipv4(data: bytes) -> FlowKey:
    length = len(data)
    if length < 20:
        raise WireError(f"IPv4 packet of {length} bytes is shorter than its header")
    header_length = (data[0] & 0x0F) * 4
    end = (data[2] << 8) | data[3]
    if header_length < 20 or not header_length <= end <= length:
        raise WireError("IPv4 header or total length inconsistent")
    protocol = data[9]
    if ((data[6] << 8) | data[7]) & 0x1FFF:
        return FlowKey(data[12:16], data[16:20], protocol, 0, 0)
    sport, dport = _ports(data, protocol, header_length, end)
    return FlowKey(data[12:16], data[16:20], protocol, sport, dport)


def flow_key(packet: bytes | bytearray | memoryview) -> FlowKey:
    """The selector key of an IPv6 or IPv4 packet; :class:`WireError` if malformed."""
    if type(packet) is not bytes:
        # Keys are hashed by the SPD cache: memoryview slices would not do.
        packet = bytes(packet)
    if not packet:
        raise WireError("empty packet")
    version = packet[0] >> 4
    if version == 6:
        return _flow_key_ipv6(packet)
    if version == 4:
        return _flow_key_ipv4(packet)
    raise WireError(f"IP version {version}")
