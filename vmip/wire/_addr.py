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
