"""ICMPv6 (RFC 4443): echo, and the four error messages vmip may have to send.

Messages are frozen dataclasses.  :func:`build_error_packet` makes a
complete IPv6 packet quoting as much of the invoking packet as fits in the
minimum MTU (RFC 4443 §2.4(c)); :func:`may_send_error` applies the rules of
§2.4(e) on when an error must not be sent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from ipaddress import IPv6Address
from typing import ClassVar

from vmip.wire import proto
from vmip.wire._addr import AnyAddress, packed_ipv6
from vmip.wire.checksum import upper_layer_checksum
from vmip.wire.errors import ChecksumError, WireError, check_range
from vmip.wire.ipv6 import IPV6_HEADER_LEN, IPV6_MIN_MTU, build_ipv6_header, parse_ipv6

ICMPV6_HEADER_LEN = 4

# Types (RFC 4443 §2.1).
DESTINATION_UNREACHABLE = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAMETER_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
REDIRECT = 137  # RFC 4861 §4.5; only named for the §2.4(e) rule

# Destination Unreachable codes (RFC 4443 §3.1).
NO_ROUTE = 0
ADMINISTRATIVELY_PROHIBITED = 1
BEYOND_SCOPE = 2
ADDRESS_UNREACHABLE = 3
PORT_UNREACHABLE = 4
SOURCE_FAILED_POLICY = 5
REJECT_ROUTE = 6

# Time Exceeded codes (RFC 4443 §3.3).
HOP_LIMIT_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1

# Parameter Problem codes (RFC 4443 §3.4).
ERRONEOUS_HEADER_FIELD = 0
UNRECOGNIZED_NEXT_HEADER = 1
UNRECOGNIZED_OPTION = 2

#: Room for the quoted packet: minimum MTU minus the IPv6 and the 8-byte ICMPv6 header.
MAX_QUOTED = IPV6_MIN_MTU - IPV6_HEADER_LEN - 8

#: Types whose first 8 octets are fixed (4-octet header plus one word).
_EIGHT_OCTET_HEADERS = frozenset(
    (
        DESTINATION_UNREACHABLE,
        PACKET_TOO_BIG,
        TIME_EXCEEDED,
        PARAMETER_PROBLEM,
        ECHO_REQUEST,
        ECHO_REPLY,
    )
)

_HEADER = struct.Struct("!BBH")
_WORDS = struct.Struct("!HH")
_WORD = struct.Struct("!I")



@dataclass(frozen=True, slots=True)
class _Echo:
    """Echo Request and Reply share one body: identifier, sequence, data (RFC 4443 §4)."""

    identifier: int
    sequence: int
    data: bytes = b""

    code: ClassVar[int] = 0

    def __post_init__(self) -> None:
        check_range(self.identifier, 16, "identifier")
        check_range(self.sequence, 16, "sequence")

    def body(self) -> bytes:
        return _WORDS.pack(self.identifier, self.sequence) + self.data


@dataclass(frozen=True, slots=True)
class EchoRequest(_Echo):
    """Echo Request (RFC 4443 §4.1)."""

    icmp_type: ClassVar[int] = ECHO_REQUEST


@dataclass(frozen=True, slots=True)
class EchoReply(_Echo):
    """Echo Reply (RFC 4443 §4.2)."""

    icmp_type: ClassVar[int] = ECHO_REPLY


@dataclass(frozen=True, slots=True)
class DestinationUnreachable:
    """Destination Unreachable (RFC 4443 §3.1); 4 unused octets then the quote."""

    code: int
    invoking_packet: bytes

    icmp_type: ClassVar[int] = DESTINATION_UNREACHABLE

    def __post_init__(self) -> None:
        check_range(self.code, 8, "code")

    def body(self) -> bytes:
        return bytes(4) + self.invoking_packet


@dataclass(frozen=True, slots=True)
class PacketTooBig:
    """Packet Too Big (RFC 4443 §3.2): the MTU of the next-hop link."""

    mtu: int
    invoking_packet: bytes

    icmp_type: ClassVar[int] = PACKET_TOO_BIG
    code: ClassVar[int] = 0

    def __post_init__(self) -> None:
        check_range(self.mtu, 32, "MTU")

    def body(self) -> bytes:
        return _WORD.pack(self.mtu) + self.invoking_packet


@dataclass(frozen=True, slots=True)
class TimeExceeded:
    """Time Exceeded (RFC 4443 §3.3)."""

    code: int
    invoking_packet: bytes

    icmp_type: ClassVar[int] = TIME_EXCEEDED

    def __post_init__(self) -> None:
        check_range(self.code, 8, "code")

    def body(self) -> bytes:
        return bytes(4) + self.invoking_packet


@dataclass(frozen=True, slots=True)
class ParameterProblem:
    """Parameter Problem (RFC 4443 §3.4): pointer = offset of the faulty octet."""

    code: int
    pointer: int
    invoking_packet: bytes

    icmp_type: ClassVar[int] = PARAMETER_PROBLEM

    def __post_init__(self) -> None:
        check_range(self.code, 8, "code")
        check_range(self.pointer, 32, "pointer")

    def body(self) -> bytes:
        return _WORD.pack(self.pointer) + self.invoking_packet


@dataclass(frozen=True, slots=True)
class UnknownIcmpv6:
    """Any other type, with the bytes after the 4-byte header."""

    icmp_type: int
    code: int
    data: bytes = b""

    def __post_init__(self) -> None:
        check_range(self.icmp_type, 8, "type")
        check_range(self.code, 8, "code")

    def body(self) -> bytes:
        return self.data


Icmpv6Message = (
    EchoRequest
    | EchoReply
    | DestinationUnreachable
    | PacketTooBig
    | TimeExceeded
    | ParameterProblem
    | UnknownIcmpv6
)
ErrorMessage = DestinationUnreachable | PacketTooBig | TimeExceeded | ParameterProblem


def build_icmpv6(message: Icmpv6Message, src: AnyAddress, dst: AnyAddress) -> bytes:
    """The ICMPv6 message with its checksum over the IPv6 pseudo-header (RFC 4443 §2.3)."""
    body = message.body()
    unsummed = _HEADER.pack(message.icmp_type, message.code, 0) + body
    checksum = upper_layer_checksum(
        packed_ipv6(src, "source"), packed_ipv6(dst, "destination"), proto.ICMPV6, unsummed
    )
    return unsummed[:2] + checksum.to_bytes(2, "big") + body


def parse_icmpv6(
    data: bytes | bytearray | memoryview,
    src: AnyAddress | None = None,
    dst: AnyAddress | None = None,
) -> Icmpv6Message:
    """Parse a message; verify the checksum when both addresses are given."""
    data = bytes(data)
    if len(data) < ICMPV6_HEADER_LEN:
        raise WireError(f"ICMPv6 message of {len(data)} bytes is shorter than its header")
    if (
        src is not None
        and dst is not None
        and upper_layer_checksum(
            packed_ipv6(src, "source"), packed_ipv6(dst, "destination"), proto.ICMPV6, data
        )
    ):
        raise ChecksumError("ICMPv6 checksum does not verify")
    icmp_type, code, _ = _HEADER.unpack_from(data)
    if icmp_type in _EIGHT_OCTET_HEADERS and len(data) < 8:
        raise WireError(f"ICMPv6 type {icmp_type} needs 8 bytes, got {len(data)}")
    if icmp_type == ECHO_REQUEST or icmp_type == ECHO_REPLY:
        if code != 0:
            return UnknownIcmpv6(icmp_type, code, data[4:])
        identifier, sequence = _WORDS.unpack_from(data, 4)
        cls = EchoRequest if icmp_type == ECHO_REQUEST else EchoReply
        return cls(identifier, sequence, data[8:])
    if icmp_type == DESTINATION_UNREACHABLE:
        return DestinationUnreachable(code, data[8:])
    if icmp_type == PACKET_TOO_BIG:
        if code != 0:
            return UnknownIcmpv6(icmp_type, code, data[4:])
        return PacketTooBig(_WORD.unpack_from(data, 4)[0], data[8:])
    if icmp_type == TIME_EXCEEDED:
        return TimeExceeded(code, data[8:])
    if icmp_type == PARAMETER_PROBLEM:
        return ParameterProblem(code, _WORD.unpack_from(data, 4)[0], data[8:])
    return UnknownIcmpv6(icmp_type, code, data[4:])


def build_icmpv6_packet(
    message: Icmpv6Message, src: AnyAddress, dst: AnyAddress, hop_limit: int = 64
) -> bytes:
    """A complete IPv6 packet carrying *message*.

    For error messages the invoking packet is cut so that the whole packet
    does not exceed the minimum IPv6 MTU (RFC 4443 §2.4(c)).
    """
    if (
        isinstance(message, (DestinationUnreachable, TimeExceeded, ParameterProblem, PacketTooBig))
        and len(message.invoking_packet) > MAX_QUOTED
    ):
        message = replace(message, invoking_packet=message.invoking_packet[:MAX_QUOTED])
    src_packed = packed_ipv6(src, "source")
    dst_packed = packed_ipv6(dst, "destination")
    icmp = build_icmpv6(message, src_packed, dst_packed)
    return build_ipv6_header(src_packed, dst_packed, proto.ICMPV6, len(icmp), hop_limit) + icmp


def may_send_error(invoking_packet: bytes, error_type: int, code: int = 0) -> bool:
    """Whether RFC 4443 §2.4(e) allows an error about *invoking_packet*.

    No error about: an ICMPv6 error message or a Redirect (e.1, e.2); a
    packet sent to a multicast address, except Packet Too Big and Parameter
    Problem code 2 (e.3); a packet whose source does not identify a single
    node, i.e. unspecified or multicast (e.6).  Link-layer multicast and
    broadcast (e.4, e.5) are invisible here.  A packet too malformed to
    walk is not an ICMPv6 error as far as we can tell, so it may be
    answered (a Parameter Problem is the usual answer to malformation).
    """
    if len(invoking_packet) < IPV6_HEADER_LEN or invoking_packet[0] >> 4 != 6:
        return False
    source = IPv6Address(invoking_packet[8:24])
    if source.is_unspecified or source.is_multicast:
        return False
    if invoking_packet[24] == 0xFF:
        exempt = error_type == PACKET_TOO_BIG or (
            error_type == PARAMETER_PROBLEM and code == UNRECOGNIZED_OPTION
        )
        if not exempt:
            return False
    try:
        parsed = parse_ipv6(invoking_packet)
    except WireError:
        return True
    if parsed.upper_layer_protocol == proto.ICMPV6 and not parsed.later_fragment:
        upper = parsed.upper_layer
        if upper and (upper[0] < 128 or upper[0] == REDIRECT):
            return False
    return True
