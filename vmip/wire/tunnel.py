"""IPv6 tunnelling of IPv6 or IPv4 packets (RFC 2473).

The MN-HA reverse tunnel (RFC 6275 §11.3.1, draft appendix D when ESP
tunnel mode is not used) and the HA's forwarding use this.  Tunnel header
defaults follow RFC 2473 §6: hop limit 64, traffic class and flow label 0;
the Tunnel Encapsulation Limit option (§4.1.1) is not emitted.
"""

from __future__ import annotations

from typing import NamedTuple

from vmip.wire import proto
from vmip.wire.errors import FieldValueError, WireError
from vmip.wire.ipv4 import check_ipv4
from vmip.wire.ipv6 import IPV6_HEADER_LEN, build_ipv6_header, check_ipv6, parse_ipv6


class Decapsulated(NamedTuple):
    """The outer (tunnel) endpoints and the inner packet, all bytes."""

    outer_src: bytes
    outer_dst: bytes
    inner: bytes


def encapsulate(
    inner: bytes,
    src: bytes,
    dst: bytes,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """Prepend a tunnel IPv6 header from *src* to *dst* (16-byte addresses)."""
    if not inner:
        raise FieldValueError("nothing to encapsulate")
    version = inner[0] >> 4
    if version == 6:
        next_header = proto.IPV6
    elif version == 4:
        next_header = proto.IPV4
    else:
        raise FieldValueError(f"inner packet has IP version {version}")
    if len(inner) > 0xFFFF:
        raise FieldValueError("inner packet too large for a non-jumbo tunnel header")
    return (
        build_ipv6_header(src, dst, next_header, len(inner), hop_limit, traffic_class, flow_label)
        + inner
    )


def decapsulate(packet: bytes | bytearray | memoryview) -> Decapsulated:
    """Strip the tunnel header (and any extension headers before the inner packet).

    The inner packet must be of the version its Next Header announces and
    fit in the outer payload; bytes after its own length are dropped.
    """
    data = bytes(packet)
    end = check_ipv6(data)
    next_header = data[6]
    if next_header == proto.IPV6 or next_header == proto.IPV4:
        offset = IPV6_HEADER_LEN
    else:
        parsed = parse_ipv6(data)
        if parsed.later_fragment or parsed.upper_layer_protocol not in (proto.IPV6, proto.IPV4):
            raise WireError(f"not a tunnel packet (next header {parsed.upper_layer_protocol})")
        next_header = parsed.upper_layer_protocol
        offset = parsed.upper_layer_offset
    inner = data[offset:end]
    if next_header == proto.IPV6:
        inner_length = check_ipv6(inner)
    else:
        inner_length = check_ipv4(inner)[1]
    return Decapsulated(data[8:24], data[24:40], inner[:inner_length])
