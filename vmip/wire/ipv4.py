"""IPv4 header (RFC 791): inner packets of ESP tunnel mode and IPv4 underlays."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from vmip.wire.checksum import internet_checksum
from vmip.wire.errors import ChecksumError, FieldValueError, WireError, check_range

IPV4_MIN_HEADER_LEN = 20

_FIXED = struct.Struct("!BBHHHBBH4s4s")
_FLAG_DF = 0x4000
_FLAG_MF = 0x2000



def check_ipv4(packet: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Validate version, IHL and total length; return (header length, total length).

    Bytes beyond the total length (link padding) are not part of the packet.
    """
    if len(packet) < IPV4_MIN_HEADER_LEN:
        raise WireError(f"IPv4 packet of {len(packet)} bytes is shorter than its header")
    if packet[0] >> 4 != 4:
        raise WireError(f"IP version {packet[0] >> 4}, expected 4")
    header_length = (packet[0] & 0x0F) * 4
    total_length = (packet[2] << 8) | packet[3]
    if header_length < IPV4_MIN_HEADER_LEN:
        raise WireError(f"IPv4 IHL gives {header_length} bytes, minimum is 20")
    if not header_length <= total_length <= len(packet):
        raise WireError(
            f"IPv4 total length {total_length} inconsistent with header {header_length} "
            f"and packet {len(packet)}"
        )
    return header_length, total_length


def ipv4_src(packet: bytes | bytearray | memoryview) -> bytes:
    """The 4-byte source address."""
    if len(packet) < IPV4_MIN_HEADER_LEN:
        raise WireError("IPv4 packet shorter than its header")
    return bytes(packet[12:16])


def ipv4_dst(packet: bytes | bytearray | memoryview) -> bytes:
    """The 4-byte destination address."""
    if len(packet) < IPV4_MIN_HEADER_LEN:
        raise WireError("IPv4 packet shorter than its header")
    return bytes(packet[16:20])


def ipv4_protocol(packet: bytes | bytearray | memoryview) -> int:
    """The Protocol field."""
    if len(packet) < IPV4_MIN_HEADER_LEN:
        raise WireError("IPv4 packet shorter than its header")
    return packet[9]


def build_ipv4_header(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload_length: int,
    ttl: int = 64,
    tos: int = 0,
    identification: int = 0,
    dont_fragment: bool = True,
    options: bytes = b"",
) -> bytes:
    """A header with its checksum, from packed 4-byte addresses (data path)."""
    if len(src) != 4 or len(dst) != 4:
        raise FieldValueError("IPv4 addresses must be 4 bytes")
    if len(options) % 4 or len(options) > 40:
        raise FieldValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
    header_length = IPV4_MIN_HEADER_LEN + len(options)
    try:
        header = (
            _FIXED.pack(
                0x40 | header_length // 4,
                tos,
                header_length + payload_length,
                identification,
                _FLAG_DF if dont_fragment else 0,
                ttl,
                protocol,
                0,
                src,
                dst,
            )
            + options
        )
    except struct.error as exc:
        raise FieldValueError(f"IPv4 header field out of range: {exc}") from None
    checksum = internet_checksum(header)
    return header[:10] + checksum.to_bytes(2, "big") + header[12:]


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header.  ``total_length`` covers header and payload (RFC 791 §3.1)."""

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    total_length: int
    ttl: int = 64
    tos: int = 0
    identification: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    fragment_offset: int = 0
    options: bytes = b""

    def __post_init__(self) -> None:
        check_range(self.protocol, 8, "protocol")
        check_range(self.total_length, 16, "total length")
        check_range(self.ttl, 8, "TTL")
        check_range(self.tos, 8, "TOS")
        check_range(self.identification, 16, "identification")
        check_range(self.fragment_offset, 13, "fragment offset")
        if len(self.options) % 4 or len(self.options) > 40:
            raise FieldValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        if self.total_length < self.header_length:
            raise FieldValueError("total length shorter than the header")

    @property
    def header_length(self) -> int:
        return IPV4_MIN_HEADER_LEN + len(self.options)

    @classmethod
    def parse(
        cls, data: bytes | bytearray | memoryview, verify_checksum: bool = True
    ) -> IPv4Header:
        """Parse and (by default) verify the header checksum (RFC 791 §3.1)."""
        data = bytes(data)
        header_length, total_length = check_ipv4(data)
        if verify_checksum and internet_checksum(data[:header_length]) != 0:
            raise ChecksumError("IPv4 header checksum does not verify")
        (_, tos, _, identification, flags_offset, ttl, protocol, _, src, dst) = _FIXED.unpack_from(
            data
        )
        return cls(
            IPv4Address(src),
            IPv4Address(dst),
            protocol,
            total_length,
            ttl,
            tos,
            identification,
            bool(flags_offset & _FLAG_DF),
            bool(flags_offset & _FLAG_MF),
            flags_offset & 0x1FFF,
            data[IPV4_MIN_HEADER_LEN:header_length],
        )

    def build(self) -> bytes:
        """The header bytes with a freshly computed checksum."""
        flags_offset = (
            (_FLAG_DF if self.dont_fragment else 0)
            | (_FLAG_MF if self.more_fragments else 0)
            | self.fragment_offset
        )
        header = (
            _FIXED.pack(
                0x40 | self.header_length // 4,
                self.tos,
                self.total_length,
                self.identification,
                flags_offset,
                self.ttl,
                self.protocol,
                0,
                self.src.packed,
                self.dst.packed,
            )
            + self.options
        )
        checksum = internet_checksum(header)
        return header[:10] + checksum.to_bytes(2, "big") + header[12:]
