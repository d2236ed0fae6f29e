"""IANA protocol numbers ("Next Header" values) the codecs use.

Plain ``int`` constants rather than an ``IntEnum``: they are compared on
the per-packet path, where enum members cost an attribute lookup each.
"""

from __future__ import annotations

HOP_BY_HOP = 0
ICMP = 1  # ICMP for IPv4 (RFC 792): an IPv4 selector or flow may name it
IPV4 = 4  # IPv4 encapsulated (IP-in-IP, RFC 2473 §3 carries it in IPv6 too)
TCP = 6
UDP = 17
IPV6 = 41  # IPv6-in-IPv6 (RFC 2473)
ROUTING = 43
FRAGMENT = 44
ESP = 50
AH = 51
ICMPV6 = 58
NO_NEXT_HEADER = 59
DESTINATION_OPTIONS = 60
SCTP = 132
MOBILITY = 135
UDPLITE = 136  # RFC 3828: has ports, so policies may name them

#: Protocols whose first four bytes are the source and destination ports.
PORT_PROTOCOLS = frozenset((TCP, UDP, SCTP, UDPLITE))
