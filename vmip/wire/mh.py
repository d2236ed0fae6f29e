"""Mobility Header (RFC 6275 §6.1-6.2) with the IRO messages of the draft.

Messages and options are frozen dataclasses (control plane, not the data
path).  :func:`build_mh` lays out the fixed part of a message, its options
with the Pad1/PadN each alignment needs, trailing padding to a multiple of 8
octets, and the checksum over the IPv6 pseudo-header (RFC 6275 §6.1.1).
:func:`parse_mh` does the reverse and raises only :class:`WireError`.

IRO messages (draft-ebalard-mext-ipsec-ro-00 §"IRO Messages"), with the
draft's test values: AOTO 30 and AOTS 33 carry one 16-bit word after the
MH header (AOTS: a 4-bit code, then 12 reserved bits); AOTC 31 and AOTR 32
carry a reserved word and options, which must include a Nonce option (type
88, 8 octets, alignment 8n+6).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from vmip.wire import proto
from vmip.wire._addr import AnyAddress, packed_ipv6
from vmip.wire._tlv import RawOption, encode_options, iter_options
from vmip.wire.checksum import upper_layer_checksum
from vmip.wire.errors import ChecksumError, FieldValueError, WireError, check_range
from vmip.wire.ipv6 import build_ipv6_header

MH_HEADER_LEN = 6  # Payload Proto, Header Len, MH Type, Reserved, Checksum


class MHType(enum.IntEnum):
    """MH Type values (RFC 6275 §6.1.2-6.1.9; IRO test values from the draft)."""

    BINDING_REFRESH_REQUEST = 0
    BINDING_UPDATE = 5
    BINDING_ACK = 6
    BINDING_ERROR = 7
    AOTO = 30
    AOTC = 31
    AOTR = 32
    AOTS = 33


class MobilityOptionType(enum.IntEnum):
    """Mobility option types (RFC 6275 §6.2; Nonce: the draft's test value)."""

    PAD1 = 0
    PADN = 1
    BINDING_REFRESH_ADVICE = 2
    ALTERNATE_CARE_OF_ADDRESS = 3
    BINDING_IDENTIFIER = 35  # RFC 5648 §6.1 (IANA)
    NONCE = 88


class BindingAckStatus(enum.IntEnum):
    """Binding Acknowledgement status (RFC 6275 §6.1.8); below 128 means accepted.

    The MCOA_* values are RFC 5648 §6.2's, as IANA assigned them (the RFC
    left the accepted ones "TBD"; 4 and 5 are what IANA and Wireshark use).
    """

    ACCEPTED = 0
    ACCEPTED_PREFIX_DISCOVERY_NECESSARY = 1
    MCOA_NOTCOMPLETE = 4
    MCOA_RETURNHOME_WO_NDP = 5
    REASON_UNSPECIFIED = 128
    ADMINISTRATIVELY_PROHIBITED = 129
    INSUFFICIENT_RESOURCES = 130
    HOME_REGISTRATION_NOT_SUPPORTED = 131
    NOT_HOME_SUBNET = 132
    NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE = 133
    DUPLICATE_ADDRESS_DETECTION_FAILED = 134
    SEQUENCE_NUMBER_OUT_OF_WINDOW = 135
    EXPIRED_HOME_NONCE_INDEX = 136
    EXPIRED_CARE_OF_NONCE_INDEX = 137
    EXPIRED_NONCES = 138
    REGISTRATION_TYPE_CHANGE_DISALLOWED = 139
    MCOA_MALFORMED = 164
    MCOA_NON_MCOA_BINDING_EXISTS = 165
    MCOA_PROHIBITED = 166
    MCOA_UNKNOWN_COA = 167
    MCOA_BULK_REGISTRATION_PROHIBITED = 168
    MCOA_SIMULTANEOUS_HOME_AND_FOREIGN_PROHIBITED = 169


class BindingErrorStatus(enum.IntEnum):
    """Binding Error status (RFC 6275 §6.1.9)."""

    UNKNOWN_BINDING_FOR_HOME_ADDRESS_OPTION = 1
    UNRECOGNIZED_MH_TYPE = 2


class AotStatusCode(enum.IntEnum):
    """AOTS codes (draft §"Address Ownership Test Status")."""

    AOTO_NOT_ALLOWED = 0
    PROOF_VALID = 1


NONCE_LENGTH = 8

_WORD = struct.Struct("!H")
_BU_FIXED = struct.Struct("!HHH")  # sequence, flags, lifetime
_BA_FIXED = struct.Struct("!BBHH")  # status, flags, sequence, lifetime
_BU_ACK = 0x8000
_BU_HOME = 0x4000
_BU_LINK_LOCAL = 0x2000
_BU_KEY_MGMT = 0x1000
_BA_KEY_MGMT = 0x80
_BID_FIXED = struct.Struct("!HBB")  # BID, status, H|O|reserved
_BID_HOME = 0x80
_BID_OVERWRITE = 0x40


class MobilityHeaderError(WireError):
    """A Mobility Header that RFC 6275 §9.2 says to drop.

    ``pointer`` is the offset, from the start of the MH, of the field at
    fault, for a Parameter Problem (RFC 6275 §9.2), or ``None``.
    """

    def __init__(self, message: str, pointer: int | None = None):
        super().__init__(message)
        self.pointer = pointer


# ---------------------------------------------------------------------------
# Options.  ``encode()`` gives (TLV bytes, x, y) for alignment xn+y (RFC 6275 §6.2).


@dataclass(frozen=True, slots=True)
class BindingRefreshAdvice:
    """Binding Refresh Advice (RFC 6275 §6.2.4): refresh interval in 4-second units."""

    interval_units: int

    option_type: ClassVar[int] = MobilityOptionType.BINDING_REFRESH_ADVICE

    def __post_init__(self) -> None:
        check_range(self.interval_units, 16, "refresh interval")

    @property
    def interval_seconds(self) -> int:
        return self.interval_units * 4

    def encode(self) -> tuple[bytes, int, int]:
        return bytes((self.option_type, 2)) + _WORD.pack(self.interval_units), 2, 0


@dataclass(frozen=True, slots=True)
class AlternateCareOfAddress:
    """Alternate Care-of Address (RFC 6275 §6.2.5); alignment 8n+6."""

    address: IPv6Address

    option_type: ClassVar[int] = MobilityOptionType.ALTERNATE_CARE_OF_ADDRESS

    def encode(self) -> tuple[bytes, int, int]:
        return bytes((self.option_type, 16)) + self.address.packed, 8, 6


@dataclass(frozen=True, slots=True)
class BindingIdentifier:
    """Binding Identifier (RFC 5648 §6.1): which of an MN's bindings a BU or BA is about.

    ``bid`` (16 bits) names the binding; ``status`` (8 bits) is 0 in a BU
    and the binding's own BA status in a BA (§6.1); ``simultaneous_home``
    is the H flag (home and foreign bindings at once, §5.6),
    ``overwrite`` the O flag (the BU replaces every binding, §5.7).
    ``care_of_address``, IPv6 or IPv4, is present only when the option
    names the CoA itself (bulk registration, §5.3); absent, the CoA is
    the BU's Alternate CoA or source as in RFC 6275.  Option Len is 4, 8
    (IPv4) or 20 (IPv6); alignment 2n (§6.1).
    """

    bid: int
    status: int = 0
    simultaneous_home: bool = False
    overwrite: bool = False
    care_of_address: IPv6Address | IPv4Address | None = None

    option_type: ClassVar[int] = MobilityOptionType.BINDING_IDENTIFIER

    def __post_init__(self) -> None:
        check_range(self.bid, 16, "binding identifier")
        check_range(self.status, 8, "BID status")
        if self.care_of_address is not None and not isinstance(
            self.care_of_address, (IPv6Address, IPv4Address)
        ):
            raise FieldValueError("a BID option's care-of address is an IPv6 or IPv4 address")

    def encode(self) -> tuple[bytes, int, int]:
        flags = (_BID_HOME if self.simultaneous_home else 0) | (
            _BID_OVERWRITE if self.overwrite else 0
        )
        address = self.care_of_address.packed if self.care_of_address is not None else b""
        value = _BID_FIXED.pack(self.bid, self.status, flags) + address
        return bytes((self.option_type, len(value))) + value, 2, 0


def _parse_binding_identifier(value: bytes, offset: int) -> BindingIdentifier:
    # RFC 5648 §6.1: Option Len 4 (no CoA), 8 (IPv4 CoA) or 20 (IPv6 CoA).
    if len(value) not in (4, 8, 20):
        raise MobilityHeaderError(
            f"Binding Identifier option of length {len(value)}, expected 4, 8 or 20", offset - 1
        )
    bid, status, flags = _BID_FIXED.unpack_from(value)
    address: IPv6Address | IPv4Address | None = None
    if len(value) == 8:
        address = IPv4Address(value[4:])
    elif len(value) == 20:
        address = IPv6Address(value[4:])
    # The reserved bits are ignored on receipt (RFC 6275 §6.1.7 convention).
    return BindingIdentifier(bid, status, bool(flags & _BID_HOME),
                             bool(flags & _BID_OVERWRITE), address)


@dataclass(frozen=True, slots=True)
class NonceOption:
    """IRO Nonce option (draft §"Nonce option"): 8 random octets, alignment 8n+6."""

    nonce: bytes

    option_type: ClassVar[int] = MobilityOptionType.NONCE

    def __post_init__(self) -> None:
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_LENGTH:
            raise FieldValueError(f"a nonce is {NONCE_LENGTH} bytes")

    def encode(self) -> tuple[bytes, int, int]:
        return bytes((self.option_type, NONCE_LENGTH)) + self.nonce, 8, 6


@dataclass(frozen=True, slots=True)
class UnknownMobilityOption(RawOption):
    """An option this codec does not interpret (RFC 6275 §6.2.1: skipped, kept raw)."""

    option_type: int
    data: bytes = b""


MobilityOption = (
    BindingRefreshAdvice
    | AlternateCareOfAddress
    | BindingIdentifier
    | NonceOption
    | UnknownMobilityOption
)

# Known option types with their exact data length.
_OPTION_LENGTHS: dict[int, int] = {
    MobilityOptionType.BINDING_REFRESH_ADVICE: 2,
    MobilityOptionType.ALTERNATE_CARE_OF_ADDRESS: 16,
    MobilityOptionType.NONCE: NONCE_LENGTH,
}


def _parse_options(data: bytes, start: int, end: int) -> tuple[MobilityOption, ...]:
    options: list[MobilityOption] = []
    for option_type, offset, length in iter_options(data, start, end, "mobility options"):
        if option_type == MobilityOptionType.BINDING_IDENTIFIER:
            options.append(_parse_binding_identifier(data[offset : offset + length], offset))
            continue
        expected = _OPTION_LENGTHS.get(option_type)
        if expected is None:
            options.append(UnknownMobilityOption(option_type, data[offset : offset + length]))
            continue
        if length != expected:
            raise MobilityHeaderError(
                f"mobility option {option_type} of length {length}, expected {expected}",
                offset - 1,
            )
        value = data[offset : offset + length]
        if option_type == MobilityOptionType.BINDING_REFRESH_ADVICE:
            options.append(BindingRefreshAdvice(_WORD.unpack(value)[0]))
        elif option_type == MobilityOptionType.ALTERNATE_CARE_OF_ADDRESS:
            options.append(AlternateCareOfAddress(IPv6Address(value)))
        else:
            options.append(NonceOption(value))
    return tuple(options)


def _first(options: tuple[MobilityOption, ...], kind: type) -> object | None:
    for option in options:
        if isinstance(option, kind):
            return option
    return None


def _binding_identifiers(options: tuple[MobilityOption, ...]) -> tuple[BindingIdentifier, ...]:
    return tuple(option for option in options if isinstance(option, BindingIdentifier))


# ---------------------------------------------------------------------------
# Messages.  ``fixed()`` is the message data between the MH header and the options.


@dataclass(frozen=True, slots=True)
class BindingRefreshRequest:
    """BRR (RFC 6275 §6.1.2)."""

    options: tuple[MobilityOption, ...] = ()

    mh_type: ClassVar[int] = MHType.BINDING_REFRESH_REQUEST

    def fixed(self) -> bytes:
        return bytes(2)

    def all_options(self) -> tuple[MobilityOption, ...]:
        return self.options


@dataclass(frozen=True, slots=True)
class BindingUpdate:
    """BU (RFC 6275 §6.1.7).  ``lifetime_units`` counts 4-second units."""

    sequence: int
    lifetime_units: int
    ack: bool = False
    home_registration: bool = False
    link_local_compatibility: bool = False
    key_management_mobility: bool = False
    options: tuple[MobilityOption, ...] = ()

    mh_type: ClassVar[int] = MHType.BINDING_UPDATE

    def __post_init__(self) -> None:
        check_range(self.sequence, 16, "sequence number")
        check_range(self.lifetime_units, 16, "lifetime")

    @property
    def lifetime_seconds(self) -> int:
        return self.lifetime_units * 4

    @property
    def alternate_care_of_address(self) -> IPv6Address | None:
        option = _first(self.options, AlternateCareOfAddress)
        return option.address if isinstance(option, AlternateCareOfAddress) else None

    @property
    def binding_identifiers(self) -> tuple[BindingIdentifier, ...]:
        """Every Binding Identifier option (RFC 5648 §6.1), in order: more than one is a bulk registration."""
        return _binding_identifiers(self.options)

    def fixed(self) -> bytes:
        flags = (
            (_BU_ACK if self.ack else 0)
            | (_BU_HOME if self.home_registration else 0)
            | (_BU_LINK_LOCAL if self.link_local_compatibility else 0)
            | (_BU_KEY_MGMT if self.key_management_mobility else 0)
        )
        return _BU_FIXED.pack(self.sequence, flags, self.lifetime_units)

    def all_options(self) -> tuple[MobilityOption, ...]:
        return self.options


@dataclass(frozen=True, slots=True)
class BindingAck:
    """BA (RFC 6275 §6.1.8).  ``status`` takes :class:`BindingAckStatus` values."""

    status: int
    sequence: int
    lifetime_units: int
    key_management_mobility: bool = False
    options: tuple[MobilityOption, ...] = ()

    mh_type: ClassVar[int] = MHType.BINDING_ACK

    def __post_init__(self) -> None:
        check_range(self.status, 8, "status")
        check_range(self.sequence, 16, "sequence number")
        check_range(self.lifetime_units, 16, "lifetime")

    @property
    def accepted(self) -> bool:
        return self.status < 128

    @property
    def lifetime_seconds(self) -> int:
        return self.lifetime_units * 4

    @property
    def refresh_advice(self) -> BindingRefreshAdvice | None:
        option = _first(self.options, BindingRefreshAdvice)
        return option if isinstance(option, BindingRefreshAdvice) else None

    @property
    def binding_identifiers(self) -> tuple[BindingIdentifier, ...]:
        """Every Binding Identifier option (RFC 5648 §6.1), in order."""
        return _binding_identifiers(self.options)

    def fixed(self) -> bytes:
        flags = _BA_KEY_MGMT if self.key_management_mobility else 0
        return _BA_FIXED.pack(self.status, flags, self.sequence, self.lifetime_units)

    def all_options(self) -> tuple[MobilityOption, ...]:
        return self.options


@dataclass(frozen=True, slots=True)
class BindingError:
    """BE (RFC 6275 §6.1.9).  ``status`` takes :class:`BindingErrorStatus` values."""

    status: int
    home_address: IPv6Address
    options: tuple[MobilityOption, ...] = ()

    mh_type: ClassVar[int] = MHType.BINDING_ERROR

    def __post_init__(self) -> None:
        check_range(self.status, 8, "status")

    def fixed(self) -> bytes:
        return bytes((self.status, 0)) + self.home_address.packed

    def all_options(self) -> tuple[MobilityOption, ...]:
        return self.options


@dataclass(frozen=True, slots=True)
class AotOffer:
    """AOTO: the MN offers to prove the CoA it sends from.  No options (draft)."""

    mh_type: ClassVar[int] = MHType.AOTO

    def fixed(self) -> bytes:
        return bytes(2)

    def all_options(self) -> tuple[MobilityOption, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class _NonceMessage:
    """AOTC and AOTR share one format (draft §4.4.2, §4.4.3): 2 reserved octets,
    the mandatory Nonce option, then any further options."""

    nonce: bytes
    options: tuple[MobilityOption, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_LENGTH:
            raise FieldValueError(f"a nonce is {NONCE_LENGTH} bytes")

    def fixed(self) -> bytes:
        return bytes(2)

    def all_options(self) -> tuple[MobilityOption, ...]:
        return (NonceOption(self.nonce), *self.options)


@dataclass(frozen=True, slots=True)
class AotChallenge(_NonceMessage):
    """AOTC: the CN's nonce to the address under test."""

    mh_type: ClassVar[int] = MHType.AOTC


@dataclass(frozen=True, slots=True)
class AotResponse(_NonceMessage):
    """AOTR: the MN returns the AOTC's nonce from the tested address."""

    mh_type: ClassVar[int] = MHType.AOTR


@dataclass(frozen=True, slots=True)
class AotStatus:
    """AOTS: a 4-bit code (:class:`AotStatusCode`), then 12 reserved bits (draft figure)."""

    code: int

    mh_type: ClassVar[int] = MHType.AOTS

    def __post_init__(self) -> None:
        check_range(self.code, 4, "AOTS code")

    def fixed(self) -> bytes:
        return _WORD.pack(self.code << 12)

    def all_options(self) -> tuple[MobilityOption, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class UnknownMobilityMessage:
    """Any other MH type: ``data`` is everything after the 6-byte MH header.

    RFC 6275 §9.2: the receiver answers an unknown type with a Binding Error
    (status 2); that decision is the caller's.
    """

    mh_type: int
    data: bytes

    def __post_init__(self) -> None:
        check_range(self.mh_type, 8, "MH type")
        if (MH_HEADER_LEN + len(self.data)) % 8 or MH_HEADER_LEN + len(self.data) > 2048:
            raise FieldValueError("MH message data must make the header 8n octets, at most 2048")

    def fixed(self) -> bytes:
        return self.data

    def all_options(self) -> tuple[MobilityOption, ...]:
        return ()


MobilityMessage = (
    BindingRefreshRequest
    | BindingUpdate
    | BindingAck
    | BindingError
    | AotOffer
    | AotChallenge
    | AotResponse
    | AotStatus
    | UnknownMobilityMessage
)

# Length of the fixed message data per known type; options follow it.
_FIXED_LENGTHS: dict[int, int] = {
    MHType.BINDING_REFRESH_REQUEST: 2,
    MHType.BINDING_UPDATE: 6,
    MHType.BINDING_ACK: 6,
    MHType.BINDING_ERROR: 18,
    MHType.AOTO: 2,
    MHType.AOTC: 2,
    MHType.AOTR: 2,
    MHType.AOTS: 2,
}


def build_mh(message: MobilityMessage, src: AnyAddress, dst: AnyAddress) -> bytes:
    """The Mobility Header of *message*, padded, with its checksum.

    *src*/*dst* are the pseudo-header addresses (RFC 6275 §6.1.1 with RFC
    8200 §8.1): the SA-level addresses for IRO (docs/design.md §6), the home
    address when a Home Address option is sent.
    """
    fixed = message.fixed()
    start = MH_HEADER_LEN + len(fixed)
    options = encode_options((option.encode() for option in message.all_options()), start)
    body = fixed + options
    total = MH_HEADER_LEN + len(body)
    if total > 2048:
        raise FieldValueError(f"Mobility Header of {total} bytes exceeds Header Len")
    # Payload Proto is IPPROTO_NONE (RFC 6275 §6.1.1); Header Len excludes the first 8 octets.
    unsummed = bytes((proto.NO_NEXT_HEADER, total // 8 - 1, message.mh_type, 0, 0, 0)) + body
    checksum = upper_layer_checksum(
        packed_ipv6(src, "source"), packed_ipv6(dst, "destination"), proto.MOBILITY, unsummed
    )
    return unsummed[:4] + checksum.to_bytes(2, "big") + body


def build_mh_packet(
    message: MobilityMessage, src: AnyAddress, dst: AnyAddress, hop_limit: int = 64
) -> bytes:
    """A whole IPv6 packet from *src* to *dst* carrying only the Mobility Header."""
    src_packed = packed_ipv6(src, "source")
    dst_packed = packed_ipv6(dst, "destination")
    mh = build_mh(message, src_packed, dst_packed)
    return build_ipv6_header(src_packed, dst_packed, proto.MOBILITY, len(mh), hop_limit) + mh


def parse_mh(
    data: bytes | bytearray | memoryview,
    src: AnyAddress | None = None,
    dst: AnyAddress | None = None,
) -> MobilityMessage:
    """Parse a Mobility Header; verify its checksum when both addresses are given.

    Follows the checks of RFC 6275 §9.2: Payload Proto must be 59 and
    Header Len at least the message's minimum.  Bytes after the declared
    length are ignored (nothing follows Payload Proto 59, RFC 8200 §4.7).
    """
    data = bytes(data)
    if len(data) < 8:
        raise MobilityHeaderError(f"Mobility Header of {len(data)} bytes is too short")
    total = (data[1] + 1) * 8
    if total > len(data):
        raise MobilityHeaderError(f"Header Len says {total} bytes, only {len(data)} present", 1)
    data = data[:total]
    if (
        src is not None
        and dst is not None
        and upper_layer_checksum(
            packed_ipv6(src, "source"), packed_ipv6(dst, "destination"), proto.MOBILITY, data
        )
    ):
        raise ChecksumError("Mobility Header checksum does not verify")
    if data[0] != proto.NO_NEXT_HEADER:
        raise MobilityHeaderError(f"Payload Proto {data[0]}, expected 59", 0)
    mh_type = data[2]
    fixed_length = _FIXED_LENGTHS.get(mh_type)
    if fixed_length is None:
        return UnknownMobilityMessage(mh_type, data[MH_HEADER_LEN:])
    options_start = MH_HEADER_LEN + fixed_length
    if options_start > total:
        raise MobilityHeaderError(f"Header Len too small for MH type {mh_type}", 1)
    options = _parse_options(data, options_start, total)
    at = MH_HEADER_LEN
    if mh_type == MHType.BINDING_UPDATE:
        sequence, flags, lifetime = _BU_FIXED.unpack_from(data, at)
        return BindingUpdate(
            sequence,
            lifetime,
            bool(flags & _BU_ACK),
            bool(flags & _BU_HOME),
            bool(flags & _BU_LINK_LOCAL),
            bool(flags & _BU_KEY_MGMT),
            options,
        )
    if mh_type == MHType.BINDING_ACK:
        status, flags, sequence, lifetime = _BA_FIXED.unpack_from(data, at)
        return BindingAck(status, sequence, lifetime, bool(flags & _BA_KEY_MGMT), options)
    if mh_type == MHType.BINDING_ERROR:
        return BindingError(data[at], IPv6Address(data[at + 2 : at + 18]), options)
    if mh_type == MHType.BINDING_REFRESH_REQUEST:
        return BindingRefreshRequest(options)
    if mh_type == MHType.AOTO:
        # The draft says AOTO carries no options; any present are skipped.
        return AotOffer()
    if mh_type == MHType.AOTS:
        return AotStatus(data[at] >> 4)
    nonce = _first(options, NonceOption)
    if not isinstance(nonce, NonceOption):
        raise MobilityHeaderError(f"MH type {mh_type} without the mandatory Nonce option")
    others = tuple(option for option in options if option is not nonce)
    if mh_type == MHType.AOTC:
        return AotChallenge(nonce.nonce, others)
    return AotResponse(nonce.nonce, others)
