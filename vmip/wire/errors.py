"""Errors of the wire codecs.

Every parser in :mod:`vmip.wire` raises :class:`WireError` (or a subclass)
on malformed input and nothing else, so a caller on the packet path needs a
single ``except WireError`` to drop a bad packet.
"""

from __future__ import annotations

from vmip.errors import VmipError


class WireError(VmipError):
    """Malformed, truncated or unsupported bytes on the wire."""


class ChecksumError(WireError):
    """The bytes are well formed but the checksum does not verify."""


class FieldValueError(WireError, ValueError):
    """A builder was given a field value that cannot be encoded.

    Also a ``ValueError``: passing an out-of-range value to a builder is a
    caller bug, and callers that think of it that way can catch it so.
    """


def check_range(value: int, bits: int, what: str) -> None:
    """Raise :class:`FieldValueError` unless *value* fits in *bits* unsigned bits."""
    if not 0 <= value < 1 << bits:
        raise FieldValueError(f"{what} {value} does not fit in {bits} bits")
