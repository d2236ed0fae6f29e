"""Type-length-value options shared by IPv6 option headers and the Mobility Header.

Both use the same Pad1 (type 0, a lone byte) and PadN (type 1) options
(RFC 8200 §4.2, RFC 6275 §6.2.2-6.2.3) and the same ``xn+y`` alignment
rules, counted from the start of the enclosing header.
"""

from __future__ import annotations

from collections.abc import Iterable

from vmip.wire.errors import FieldValueError, WireError, check_range

PAD1 = 0
PADN = 1


class RawOption:
    """Checks and encoding of an option kept as raw ``option_type`` + ``data``.

    The base of the dataclasses that hold options a codec does not interpret
    (IPv6 destination options, mobility options): the TLV rules are the same.
    """

    __slots__ = ()
    option_type: int
    data: bytes

    def __post_init__(self) -> None:
        check_range(self.option_type, 8, "option type")
        if self.option_type in (PAD1, PADN):
            raise FieldValueError("Pad1/PadN are inserted by the builder, not given")
        if len(self.data) > 255:
            raise FieldValueError("option data is at most 255 bytes")

    def encode(self) -> tuple[bytes, int, int]:
        """``(bytes, alignment x, y)``: no alignment requirement."""
        return bytes((self.option_type, len(self.data))) + self.data, 0, 0


def iter_options(data: bytes, start: int, end: int, what: str) -> list[tuple[int, int, int]]:
    """``(type, value offset, value length)`` of every option but padding.

    Raises :class:`WireError` if an option runs past *end*.
    """
    found: list[tuple[int, int, int]] = []
    offset = start
    while offset < end:
        option_type = data[offset]
        if option_type == PAD1:
            offset += 1
            continue
        if offset + 2 > end:
            raise WireError(f"{what}: option type {option_type} truncated at offset {offset}")
        length = data[offset + 1]
        value_offset = offset + 2
        offset = value_offset + length
        if offset > end:
            raise WireError(
                f"{what}: option type {option_type} of length {length} overruns the header"
            )
        if option_type != PADN:
            found.append((option_type, value_offset, length))
    return found


def padding(length: int) -> bytes:
    """Pad1 for one byte, PadN (zero-filled, RFC 8200 §4.2) for more."""
    if length <= 0:
        return b""
    if length == 1:
        return b"\x00"
    return bytes((PADN, length - 2)) + bytes(length - 2)


def encode_options(options: Iterable[tuple[bytes, int, int]], start_offset: int) -> bytes:
    """Lay out encoded options with the padding their alignment needs.

    *options* are ``(type-length-value bytes, x, y)`` for an alignment
    requirement ``xn+y`` (``x == 0``: none).  *start_offset* is where the
    option area begins in its header; the result ends on an 8-octet
    boundary of that header (RFC 8200 §4.2, RFC 6275 §6.1.1 / §6.2).
    """
    parts: list[bytes] = []
    offset = start_offset
    for encoded, x, y in options:
        if x:
            gap = (y - offset) % x
            if gap:
                parts.append(padding(gap))
                offset += gap
        parts.append(encoded)
        offset += len(encoded)
    parts.append(padding(-offset % 8))
    return b"".join(parts)
