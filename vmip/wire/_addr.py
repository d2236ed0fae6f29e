"""Address normalisation shared by the builders."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from vmip.wire.errors import FieldValueError

AnyAddress = IPv4Address | IPv6Address | bytes


def packed_address(address: AnyAddress, what: str = "address") -> bytes:
    """The 4- or 16-byte form of an address given as an object or as bytes."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.packed
    if isinstance(address, (bytes, bytearray)) and len(address) in (4, 16):
        return bytes(address)
    raise FieldValueError(f"{what} must be an IP address or 4/16 bytes, not {address!r}")


def packed_ipv6(address: AnyAddress, what: str = "address") -> bytes:
    """The 16-byte form of an IPv6 address given as an object or as bytes."""
    packed = packed_address(address, what)
    if len(packed) != 16:
        raise FieldValueError(f"{what} must be an IPv6 address, not {address!r}")
    return packed
