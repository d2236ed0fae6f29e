"""IPv6 fixed header and extension-header chain (RFC 8200), plus data-path helpers.

Two layers:

* zero-copy helpers (:func:`ipv6_src`, :func:`ipv6_next_header`, ...) and
  :func:`build_ipv6_header` for the per-packet path: they index the buffer
  and build no objects beyond the returned ``bytes``/``int``;
* :func:`parse_ipv6` / :func:`build_ipv6`, which turn a packet into an
  :class:`IPv6Packet` view (fixed header, extension headers as frozen
  dataclasses, where the upper-layer header starts) and back, for control
  traffic, tests and diagnostics.

Padding options (Pad1/PadN) are not kept in parsed views: they carry no
information, and builders insert the padding each option's alignment needs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import ClassVar

from vmip.wire import proto
from vmip.wire._tlv import RawOption, encode_options, iter_options
from vmip.wire.errors import FieldValueError, WireError, check_range

IPV6_HEADER_LEN = 40
#: RFC 8200 §5: every link carries 1280-octet packets.
IPV6_MIN_MTU = 1280

#: Extension headers the chain walker steps over (RFC 8200 §4.1 order).
EXTENSION_HEADERS = frozenset(
    (proto.HOP_BY_HOP, proto.ROUTING, proto.FRAGMENT, proto.DESTINATION_OPTIONS, proto.AH)
)

_FIXED = struct.Struct("!IHBB16s16s")
_FRAGMENT = struct.Struct("!BBHI")
_AH = struct.Struct("!BBHII")

# RFC 6275 §6.3: the Home Address option, type 201, 16 bytes, alignment 8n+6.
HOME_ADDRESS_OPTION = 201
# RFC 6275 §6.4: the type 2 routing header.
ROUTING_TYPE_2 = 2


def _packed6(address: IPv6Address | bytes, what: str) -> bytes:
    if isinstance(address, IPv6Address):
        return address.packed
    if isinstance(address, (bytes, bytearray)) and len(address) == 16:
        return bytes(address)
    raise FieldValueError(f"{what} must be an IPv6Address or 16 bytes, not {address!r}")



# ---------------------------------------------------------------------------
# Zero-copy helpers for the data path.  They check only what they read.


def ip_version(packet: bytes | bytearray | memoryview) -> int:
    """The version nibble of an IPv4 or IPv6 packet."""
    if not packet:
        raise WireError("empty packet")
    return packet[0] >> 4


def check_ipv6(packet: bytes | bytearray | memoryview) -> int:
    """Validate version and length; return the packet's length by its header.

    That is ``40 + payload length``; trailing bytes beyond it (link padding)
    are not part of the packet.
    """
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError(f"IPv6 packet of {len(packet)} bytes is shorter than its header")
    if packet[0] >> 4 != 6:
        raise WireError(f"IP version {packet[0] >> 4}, expected 6")
    total = IPV6_HEADER_LEN + ((packet[4] << 8) | packet[5])
    if total > len(packet):
        raise WireError(f"IPv6 payload length says {total} bytes, packet has {len(packet)}")
    return total


def ipv6_src(packet: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte source address."""
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError("IPv6 packet shorter than its header")
    return bytes(packet[8:24])


def ipv6_dst(packet: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte destination address."""
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError("IPv6 packet shorter than its header")
    return bytes(packet[24:40])


def ipv6_next_header(packet: bytes | bytearray | memoryview) -> int:
    """The fixed header's Next Header field."""
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError("IPv6 packet shorter than its header")
    return packet[6]


def ipv6_payload_length(packet: bytes | bytearray | memoryview) -> int:
    """The Payload Length field (bytes after the 40-byte header)."""
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError("IPv6 packet shorter than its header")
    return (packet[4] << 8) | packet[5]


def ipv6_hop_limit(packet: bytes | bytearray | memoryview) -> int:
    """The Hop Limit field."""
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError("IPv6 packet shorter than its header")
    return packet[7]


def build_ipv6_header(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload_length: int,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """The 40-byte fixed header from packed 16-byte addresses (data path)."""
    if len(src) != 16 or len(dst) != 16:
        raise FieldValueError("IPv6 addresses must be 16 bytes")
    if not 0 <= traffic_class <= 0xFF or not 0 <= flow_label <= 0xFFFFF:
        raise FieldValueError("traffic class is 8 bits, flow label 20 bits")
    try:
        return _FIXED.pack(
            0x60000000 | (traffic_class << 20) | flow_label,
            payload_length,
            next_header,
            hop_limit,
            src,
            dst,
        )
    except struct.error as exc:
        raise FieldValueError(f"IPv6 header field out of range: {exc}") from None


def replace_ipv6_addresses(
    packet: bytes | bytearray | memoryview, src: bytes | None = None, dst: bytes | None = None
) -> bytes:
    """A copy of *packet* with a new source and/or destination (IRO remapping)."""
    if len(packet) < IPV6_HEADER_LEN:
        raise WireError("IPv6 packet shorter than its header")
    if (src is not None and len(src) != 16) or (dst is not None and len(dst) != 16):
        raise FieldValueError("IPv6 addresses must be 16 bytes")
    return b"".join(
        (
            packet[:8],
            packet[8:24] if src is None else src,
            packet[24:40] if dst is None else dst,
            packet[40:],
        )
    )


# ---------------------------------------------------------------------------
# Fixed header as an object.


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The 40-byte fixed header (RFC 8200 §3)."""

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        check_range(self.next_header, 8, "next header")
        check_range(self.payload_length, 16, "payload length")
        check_range(self.hop_limit, 8, "hop limit")
        check_range(self.traffic_class, 8, "traffic class")
        check_range(self.flow_label, 20, "flow label")

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> IPv6Header:
        if len(data) < IPV6_HEADER_LEN:
            raise WireError(f"IPv6 header needs 40 bytes, got {len(data)}")
        word, payload_length, next_header, hop_limit, src, dst = _FIXED.unpack_from(data)
        if word >> 28 != 6:
            raise WireError(f"IP version {word >> 28}, expected 6")
        return cls(
            IPv6Address(src),
            IPv6Address(dst),
            next_header,
            payload_length,
            hop_limit,
            (word >> 20) & 0xFF,
            word & 0xFFFFF,
        )

    def build(self) -> bytes:
        return build_ipv6_header(
            self.src.packed,
            self.dst.packed,
            self.next_header,
            self.payload_length,
            self.hop_limit,
            self.traffic_class,
            self.flow_label,
        )


# ---------------------------------------------------------------------------
# Options of Hop-by-Hop and Destination Options headers (RFC 8200 §4.2).


@dataclass(frozen=True, slots=True)
class HomeAddressOption:
    """Home Address destination option (RFC 6275 §6.3)."""

    home_address: IPv6Address

    option_type: ClassVar[int] = HOME_ADDRESS_OPTION

    def encode(self) -> tuple[bytes, int, int]:
        return bytes((HOME_ADDRESS_OPTION, 16)) + self.home_address.packed, 8, 6


@dataclass(frozen=True, slots=True)
class UnknownOption(RawOption):
    """An option this codec does not interpret, kept as raw data."""

    option_type: int
    data: bytes = b""

    @property
    def unrecognised_action(self) -> int:
        """The two high-order bits: what a node that does not know it must do (RFC 8200 §4.2)."""
        return self.option_type >> 6


Ipv6Option = HomeAddressOption | UnknownOption


def _parse_options(data: bytes, start: int, end: int, what: str) -> tuple[Ipv6Option, ...]:
    options: list[Ipv6Option] = []
    for option_type, value_offset, length in iter_options(data, start, end, what):
        value = data[value_offset : value_offset + length]
        if option_type == HOME_ADDRESS_OPTION:
            if length != 16:
                raise WireError(f"{what}: Home Address option of length {length}, expected 16")
            options.append(HomeAddressOption(IPv6Address(value)))
        else:
            options.append(UnknownOption(option_type, value))
    return tuple(options)


def _build_options_header(next_header: int, options: Sequence[Ipv6Option]) -> bytes:
    body = encode_options((option.encode() for option in options), 2)
    length_units = (2 + len(body)) // 8 - 1
    if length_units > 255:
        raise FieldValueError("options header longer than 2048 bytes")
    return bytes((next_header, length_units)) + body


# ---------------------------------------------------------------------------
# Extension headers.  ``build(next_header)`` takes the Next Header value from
# the caller because it names the *following* header, which the chain knows.


@dataclass(frozen=True, slots=True)
class HopByHopOptions:
    """Hop-by-Hop Options header (RFC 8200 §4.3); must come first."""

    options: tuple[Ipv6Option, ...] = ()

    protocol: ClassVar[int] = proto.HOP_BY_HOP

    def build(self, next_header: int) -> bytes:
        return _build_options_header(next_header, self.options)


@dataclass(frozen=True, slots=True)
class DestinationOptions:
    """Destination Options header (RFC 8200 §4.6), e.g. carrying a Home Address option."""

    options: tuple[Ipv6Option, ...] = ()

    protocol: ClassVar[int] = proto.DESTINATION_OPTIONS

    def build(self, next_header: int) -> bytes:
        return _build_options_header(next_header, self.options)

    @property
    def home_address(self) -> IPv6Address | None:
        for option in self.options:
            if isinstance(option, HomeAddressOption):
                return option.home_address
        return None


@dataclass(frozen=True, slots=True)
class RoutingHeader:
    """A Routing header of a type this codec does not interpret (RFC 8200 §4.4)."""

    routing_type: int
    segments_left: int
    data: bytes = bytes(4)

    protocol: ClassVar[int] = proto.ROUTING

    def __post_init__(self) -> None:
        check_range(self.routing_type, 8, "routing type")
        check_range(self.segments_left, 8, "segments left")
        if (len(self.data) + 4) % 8 or len(self.data) + 4 > 2048:
            raise FieldValueError("routing header type-specific data must make 8n octets")

    def build(self, next_header: int) -> bytes:
        units = (len(self.data) + 4) // 8 - 1
        return bytes((next_header, units, self.routing_type, self.segments_left)) + self.data


@dataclass(frozen=True, slots=True)
class Type2RoutingHeader:
    """Type 2 Routing header carrying the home address (RFC 6275 §6.4)."""

    home_address: IPv6Address
    segments_left: int = 1

    protocol: ClassVar[int] = proto.ROUTING

    def __post_init__(self) -> None:
        check_range(self.segments_left, 8, "segments left")

    def build(self, next_header: int) -> bytes:
        # Hdr Ext Len 2, 4 reserved octets, then the one address.
        return (
            bytes((next_header, 2, ROUTING_TYPE_2, self.segments_left, 0, 0, 0, 0))
            + self.home_address.packed
        )


@dataclass(frozen=True, slots=True)
class FragmentHeader:
    """Fragment header (RFC 8200 §4.5); *offset* is in 8-octet units."""

    offset: int
    more_fragments: bool
    identification: int

    protocol: ClassVar[int] = proto.FRAGMENT

    def __post_init__(self) -> None:
        check_range(self.offset, 13, "fragment offset")
        check_range(self.identification, 32, "fragment identification")

    def build(self, next_header: int) -> bytes:
        return _FRAGMENT.pack(
            next_header, 0, (self.offset << 3) | int(self.more_fragments), self.identification
        )


@dataclass(frozen=True, slots=True)
class AuthenticationHeader:
    """Authentication Header (RFC 4302 §2); only stepped over, never verified here."""

    spi: int
    sequence: int
    icv: bytes = b""

    protocol: ClassVar[int] = proto.AH

    def __post_init__(self) -> None:
        check_range(self.spi, 32, "SPI")
        check_range(self.sequence, 32, "sequence number")
        # RFC 4302 §2.2: in IPv6 the header is a multiple of 8 octets.
        if (12 + len(self.icv)) % 8 or 12 + len(self.icv) > 1024:
            raise FieldValueError("AH ICV length must make the header 8n octets")

    def build(self, next_header: int) -> bytes:
        # Payload Len is the length in 4-octet units minus 2 (RFC 4302 §2.2).
        units = (12 + len(self.icv)) // 4 - 2
        return _AH.pack(next_header, units, 0, self.spi, self.sequence) + self.icv


ExtensionHeader = (
    HopByHopOptions
    | DestinationOptions
    | RoutingHeader
    | Type2RoutingHeader
    | FragmentHeader
    | AuthenticationHeader
)


# ---------------------------------------------------------------------------
# Whole packets.


@dataclass(frozen=True, slots=True)
class IPv6Packet:
    """A parsed IPv6 packet: header, extension headers, where the upper layer starts.

    ``upper_layer_protocol`` is the Next Header value that ended the chain
    (TCP, UDP, ICMPv6, MH, ESP, No Next Header, ...); the bytes of that
    layer are ``packet[upper_layer_offset:]``.  For a fragment other than the
    first, the chain stops at the Fragment header and ``later_fragment`` is
    true: what follows is a slice of the original payload, not a header.
    """

    header: IPv6Header
    extension_headers: tuple[ExtensionHeader, ...]
    upper_layer_protocol: int
    upper_layer_offset: int
    packet: bytes
    later_fragment: bool = False

    @property
    def upper_layer(self) -> bytes:
        """The upper-layer header and its payload."""
        return self.packet[self.upper_layer_offset :]

    @property
    def home_address(self) -> IPv6Address | None:
        """The Home Address option's address, if a Destination Options header has one."""
        for extension in self.extension_headers:
            if isinstance(extension, DestinationOptions):
                found = extension.home_address
                if found is not None:
                    return found
        return None

    @property
    def final_destination(self) -> IPv6Address:
        """The destination once the routing header is consumed (RFC 8200 §8.1).

        Only the type 2 routing header is interpreted: with segments left,
        its home address is the final destination.
        """
        for extension in self.extension_headers:
            if isinstance(extension, Type2RoutingHeader) and extension.segments_left:
                return extension.home_address
        return self.header.dst

    def checksum_addresses(self) -> tuple[bytes, bytes]:
        """Packed (source, destination) of the upper-layer pseudo-header.

        RFC 8200 §8.1 and RFC 6275 §6.3: the home address replaces the
        source when a Home Address option is present; the final destination
        replaces the destination when a routing header has segments left.
        """
        home = self.home_address
        src = home.packed if home is not None else self.packet[8:24]
        return src, self.final_destination.packed


def _parse_extension(
    data: bytes, kind: int, offset: int, end: int
) -> tuple[ExtensionHeader, int, int]:
    """Parse one extension header at *offset*: (header, next header, its length)."""
    if offset + 8 > end:
        raise WireError(f"extension header {kind} truncated at offset {offset}")
    next_header = data[offset]
    if kind == proto.FRAGMENT:
        _, _, offset_flags, identification = _FRAGMENT.unpack_from(data, offset)
        header: ExtensionHeader = FragmentHeader(
            offset_flags >> 3, bool(offset_flags & 1), identification
        )
        return header, next_header, 8
    if kind == proto.AH:
        length = (data[offset + 1] + 2) * 4
        if length < 16 or length % 8:
            # RFC 4302 §2.2: 12 fixed octets plus an ICV padded to 8n octets in IPv6.
            raise WireError(f"AH length {length} is not a multiple of 8 of at least 16")
        if offset + length > end:
            raise WireError("AH overruns the packet")
        _, _, _, spi, sequence = _AH.unpack_from(data, offset)
        header = AuthenticationHeader(spi, sequence, data[offset + 12 : offset + length])
        return header, next_header, length
    length = (data[offset + 1] + 1) * 8
    if offset + length > end:
        raise WireError(f"extension header {kind} of {length} bytes overruns the packet")
    if kind == proto.ROUTING:
        routing_type = data[offset + 2]
        segments_left = data[offset + 3]
        if routing_type == ROUTING_TYPE_2:
            if length != 24:
                raise WireError(f"type 2 routing header of {length} bytes, expected 24")
            header = Type2RoutingHeader(IPv6Address(data[offset + 8 : offset + 24]), segments_left)
        else:
            header = RoutingHeader(routing_type, segments_left, data[offset + 4 : offset + length])
        return header, next_header, length
    options = _parse_options(data, offset + 2, offset + length, f"extension header {kind}")
    if kind == proto.HOP_BY_HOP:
        return HopByHopOptions(options), next_header, length
    return DestinationOptions(options), next_header, length


def parse_ipv6(packet: bytes | bytearray | memoryview) -> IPv6Packet:
    """Parse the fixed header and walk the extension-header chain (RFC 8200 §4).

    The walk steps over Hop-by-Hop (first only), Routing, Fragment,
    Destination Options and AH; anything else (ESP, MH, No Next Header,
    transport protocols, tunnelled IP) ends it.  Bytes beyond the payload
    length are ignored.  Raises :class:`WireError` on anything malformed.
    """
    data = bytes(packet)
    end = check_ipv6(data)
    data = data[:end]
    header = IPv6Header.parse(data)
    extensions: list[ExtensionHeader] = []
    kind = header.next_header
    offset = IPV6_HEADER_LEN
    later_fragment = False
    while kind in EXTENSION_HEADERS:
        if kind == proto.HOP_BY_HOP and offset != IPV6_HEADER_LEN:
            # RFC 8200 §4.3: only allowed immediately after the IPv6 header.
            raise WireError("Hop-by-Hop Options header not first in the chain")
        extension, kind, length = _parse_extension(data, kind, offset, end)
        extensions.append(extension)
        offset += length
        if isinstance(extension, FragmentHeader) and extension.offset:
            later_fragment = True
            break
    return IPv6Packet(header, tuple(extensions), kind, offset, data, later_fragment)


def build_ipv6(
    src: IPv6Address | bytes,
    dst: IPv6Address | bytes,
    upper_layer_protocol: int,
    payload: bytes,
    extension_headers: Sequence[ExtensionHeader] = (),
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """A complete packet; each extension header's Next Header names its successor."""
    parts: list[bytes] = []
    for index, extension in enumerate(extension_headers):
        following = (
            extension_headers[index + 1].protocol
            if index + 1 < len(extension_headers)
            else upper_layer_protocol
        )
        parts.append(extension.build(following))
    parts.append(payload)
    body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise FieldValueError(f"payload of {len(body)} bytes needs a jumbogram")
    first = extension_headers[0].protocol if extension_headers else upper_layer_protocol
    return (
        build_ipv6_header(
            _packed6(src, "source"),
            _packed6(dst, "destination"),
            first,
            len(body),
            hop_limit,
            traffic_class,
            flow_label,
        )
        + body
    )
