"""Wire formats: sans-IO codecs, bytes in and bytes out.

* :mod:`.checksum` - RFC 1071 checksum, IPv6/IPv4 pseudo-header checksum
* :mod:`.ipv6` - fixed header, extension-header chain, data-path helpers
* :mod:`.ipv4` - IPv4 header
* :mod:`.udp`, :mod:`.icmpv6`, :mod:`.tunnel` (IPv6-in-IPv6, RFC 2473)
* :mod:`.flow` - the SPD selector key of a packet (per-packet path)
* :mod:`.mh` - Mobility Header, RFC 6275 messages and the IRO AOT* messages

Every parser raises :class:`~vmip.wire.errors.WireError` (or a subclass)
on malformed input and nothing else.  See ``docs/wire.md``.
"""

from vmip.wire.errors import ChecksumError, FieldValueError, WireError

__all__ = ["ChecksumError", "FieldValueError", "WireError"]
