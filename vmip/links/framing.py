"""Sans-IO framing shared by the link drivers: no sockets here.

Three questions are answered for every datagram, so they live in one place
that the hypothesis tests can hammer:

- is this UDP payload one complete IPv6 packet (the ``udp`` overlay)?
- is this port-4500 datagram ESP, IKE or a NAT keepalive (RFC 3948 §2)?
- what IPv6 header do we rebuild for a payload the kernel delivered without
  one (raw IPv6 sockets, RFC 3542 §3; ESP-in-UDP)?

None of these functions raise on malformed input: they return a drop reason
(a short string used as the ``rx_drop_<reason>`` counter name) because the
data path drops and counts, it never fails.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterable

IPV6_HEADER_LEN = 40
#: RFC 8200 §3: payload length is 16 bits; jumbograms (RFC 2675) never fit a
#: UDP datagram, so anything longer cannot be framed.
MAX_IPV6_PAYLOAD = 0xFFFF

#: The NAT keepalive of both UDP drivers: one octet 0xFF (RFC 3948 §2.3).
#: It can never be mistaken for an IPv6 packet (40 octets at least, version
#: nibble 6) nor for ESP (8 octets at least) nor IKE (4-octet zero marker).
NAT_KEEPALIVE = b"\xff"

#: RFC 3948 §2.2: IKE on port 4500 is prefixed with four zero octets, a
#: value no ESP SPI can take (RFC 4303 §2.1 reserves SPI 0).
NON_ESP_MARKER = b"\x00\x00\x00\x00"

#: RFC 4303 §2: an ESP packet has at least the SPI and the sequence number.
ESP_MIN_LEN = 8

# Datagram kinds on an RFC 3948 port; any other result is a drop reason.
KIND_ESP = "esp"
KIND_IKE = "ike"
KIND_KEEPALIVE = "keepalive"

# Drop reasons (counter suffixes).
DROP_SHORT = "short"
DROP_VERSION = "version"
DROP_LENGTH = "length"
DROP_TOO_LONG = "too_long"
DROP_IKE_EMPTY = "ike_empty"

_IPV6_HEADER = struct.Struct("!IHBB16s16s")


def overlay_drop_reason(datagram: bytes | bytearray | memoryview) -> str | None:
    """``None`` if *datagram* is exactly one IPv6 packet, else why not.

    The ``udp`` framing is "the UDP payload is one complete IPv6 packet", so
    the checks are the fixed header's (RFC 8200 §3): at least 40 octets,
    version 6, and a payload length that accounts for every remaining octet
    (a mismatch means truncation or trailing garbage).
    """
    size = len(datagram)
    if size < IPV6_HEADER_LEN:
        return DROP_SHORT
    if datagram[0] >> 4 != 6:
        return DROP_VERSION
    if ((datagram[4] << 8) | datagram[5]) + IPV6_HEADER_LEN != size:
        return DROP_LENGTH
    return None


def is_nat_keepalive(datagram: bytes | bytearray | memoryview) -> bool:
    return len(datagram) == 1 and datagram[0] == 0xFF


def classify_esp_in_udp(datagram: bytes | bytearray | memoryview) -> str:
    """Kind of a datagram received on an RFC 3948 port.

    Returns :data:`KIND_KEEPALIVE`, :data:`KIND_IKE` (the caller strips the
    4-octet marker), :data:`KIND_ESP`, or a drop reason.  Order matters: the
    keepalive is the only legal datagram shorter than the marker (§2.3), and
    the marker is tested before ESP because a zero SPI is not ESP (§2.2).
    """
    size = len(datagram)
    if size == 1 and datagram[0] == 0xFF:
        return KIND_KEEPALIVE
    if size >= 4 and datagram[0] == 0 and datagram[1] == 0 and datagram[2] == 0 \
            and datagram[3] == 0:
        return KIND_IKE if size > 4 else DROP_IKE_EMPTY
    if size < ESP_MIN_LEN:
        return DROP_SHORT
    if size > MAX_IPV6_PAYLOAD:
        return DROP_TOO_LONG
    return KIND_ESP


def build_ipv6_header(src: bytes, dst: bytes, next_header: int, payload_len: int,
                      hop_limit: int = 64, traffic_class: int = 0,
                      flow_label: int = 0) -> bytes:
    """The 40-octet IPv6 fixed header (RFC 8200 §3) for a rebuilt packet.

    Callers guarantee 16-octet addresses and a payload length that fits
    (they check :data:`MAX_IPV6_PAYLOAD` first): this is a builder on the
    data path, not a parser.
    """
    first_word = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _IPV6_HEADER.pack(first_word, payload_len, next_header & 0xFF,
                             hop_limit & 0xFF, src, dst)


def ipv4_mapped(ipv4_packed: bytes) -> bytes:
    """``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2): how an IPv4 underlay address
    appears as an on-wire IPv6 address on the ``rfc3948`` link."""
    return b"\x00" * 10 + b"\xff\xff" + ipv4_packed


# Ancillary data (RFC 3542 §6 for IPv6; Linux ip(7) IP_PKTINFO for IPv4).
_SOL_IP = socket.IPPROTO_IP
_SOL_IPV6 = socket.IPPROTO_IPV6
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
#: Python 3.11 lacks socket.IP_PKTINFO; 8 on Linux (<linux/in.h>).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
#: Kernel structs carry ints in host byte order.
_NATIVE = sys.byteorder


class Ancillary:
    """What the kernel told us about one received datagram.

    ``destination`` is 16 octets (IPv4 destinations come back IPv4-mapped)
    or ``None`` when no PKTINFO was present or it was malformed.
    """

    __slots__ = ("destination", "hop_limit", "ifindex", "traffic_class")

    def __init__(self) -> None:
        self.destination: bytes | None = None
        self.ifindex = 0
        self.hop_limit: int | None = None
        self.traffic_class: int | None = None


def parse_ancillary(ancdata: Iterable[tuple[int, int, bytes]]) -> Ancillary:
    """Read PKTINFO, hop limit and traffic class from ``recvmsg`` ancillary
    data.  Unknown or truncated messages are ignored, never raised."""
    info = Ancillary()
    for level, kind, data in ancdata:
        if level == _SOL_IPV6:
            if kind == _IPV6_PKTINFO and len(data) >= 20:
                # struct in6_pktinfo { in6_addr ipi6_addr; int ipi6_ifindex; }
                info.destination = bytes(data[:16])
                info.ifindex = int.from_bytes(data[16:20], _NATIVE)
            elif kind == _IPV6_HOPLIMIT and len(data) >= 4:
                info.hop_limit = int.from_bytes(data[:4], _NATIVE) & 0xFF
            elif kind == _IPV6_TCLASS and len(data) >= 4:
                info.traffic_class = int.from_bytes(data[:4], _NATIVE) & 0xFF
        elif level == _SOL_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }:
            # ipi_addr is the destination of the header.
            info.ifindex = int.from_bytes(data[:4], _NATIVE)
            info.destination = ipv4_mapped(bytes(data[8:12]))
    return info

