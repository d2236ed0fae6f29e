"""UDP (RFC 768) over IPv6 (RFC 8200 §8.1) or IPv4."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmip.wire import proto
from vmip.wire._addr import AnyAddress, packed_address
from vmip.wire.checksum import upper_layer_checksum
from vmip.wire.errors import ChecksumError, FieldValueError, WireError

UDP_HEADER_LEN = 8

_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A parsed datagram; ``checksum`` is the received field value."""

    src_port: int
    dst_port: int
    payload: bytes
    checksum: int


def build_udp(
    src_port: int, dst_port: int, payload: bytes, src: AnyAddress, dst: AnyAddress
) -> bytes:
    """Header plus payload with the checksum over the pseudo-header of *src*/*dst*.

    Addresses of 16 bytes give the IPv6 pseudo-header, of 4 bytes the IPv4 one.
    """
    src_packed = packed_address(src, "source")
    dst_packed = packed_address(dst, "destination")
    length = UDP_HEADER_LEN + len(payload)
    if length > 0xFFFF:
        raise FieldValueError(f"UDP datagram of {length} bytes exceeds the length field")
    try:
        header = _HEADER.pack(src_port, dst_port, length, 0)
    except struct.error as exc:
        raise FieldValueError(f"UDP port out of range: {exc}") from None
    checksum = upper_layer_checksum(src_packed, dst_packed, proto.UDP, header + payload)
    # RFC 768 / RFC 8200 §8.1: a computed zero is sent as all ones, since 0
    # means "no checksum" (which IPv6 forbids).
    if checksum == 0:
        checksum = 0xFFFF
    return header[:6] + checksum.to_bytes(2, "big") + payload


def parse_udp(
    data: bytes | bytearray | memoryview,
    src: AnyAddress | None = None,
    dst: AnyAddress | None = None,
) -> UdpDatagram:
    """Parse a datagram; verify its checksum when both addresses are given.

    Over IPv6 a zero checksum is an error (RFC 8200 §8.1); over IPv4 it
    means the sender computed none.  Bytes past the UDP length are ignored.
    """
    data = bytes(data)
    if len(data) < UDP_HEADER_LEN:
        raise WireError(f"UDP datagram of {len(data)} bytes is shorter than its header")
    src_port, dst_port, length, checksum = _HEADER.unpack_from(data)
    if not UDP_HEADER_LEN <= length <= len(data):
        raise WireError(f"UDP length {length} inconsistent with {len(data)} bytes")
    datagram = data[:length]
    if src is not None and dst is not None:
        src_packed = packed_address(src, "source")
        dst_packed = packed_address(dst, "destination")
        if checksum == 0:
            if len(src_packed) == 16:
                raise ChecksumError("UDP over IPv6 with a zero checksum")
        elif upper_layer_checksum(src_packed, dst_packed, proto.UDP, datagram) != 0:
            raise ChecksumError("UDP checksum does not verify")
    return UdpDatagram(src_port, dst_port, datagram[UDP_HEADER_LEN:], checksum)
