"""IKE over an rfc3948 underlay of either IP version (docs/ike.md "IPv4 underlay").

On an ``rfc3948`` link vmip's on-wire packets are IPv6 packets whose
addresses are the underlay ones; an IPv4 underlay address appears there as
its IPv4-mapped IPv6 address ``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2), which
is what the link driver rebuilds for inbound ESP and strips for outbound
ESP.  IKE itself runs over plain IPv4 or IPv6 UDP (ports 500/4500, RFC 3948
§2.2) between the underlay addresses, so an IKE SA's addresses are IPv4
while the SAD keys its CHILD_SAs (tunnel mode, IPv6 inside) at the mapped
addresses.  This module holds that translation and the bounded reporting of
a responder that cannot serve a peer.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

from vmip.log import get_logger

log = get_logger(__name__)

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"

#: Distinct (peer, reason) pairs a responder logs about before it only counts.
MAX_REFUSALS_LOGGED = 64


def sad_address(address: Any) -> ipaddress.IPv6Address:
    """The on-wire (SAD) address of an IKE address: IPv4 becomes IPv4-mapped IPv6."""
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        address = ipaddress.ip_address(str(address).split("%")[0])
    if address.version == 4:
        return ipaddress.IPv6Address(_MAPPED_PREFIX + address.packed)
    return address


class RefusalLog:
    """Counted refusals with one log line per distinct (peer, reason).

    A responder that cannot serve a peer (no local address of its family, a
    link without ``bind``) gets the same datagram again and again: every one
    is counted, the first of each kind is logged with its fix, and the set
    of logged kinds is bounded.
    """

    def __init__(self, counters: Counter[str], limit: int = MAX_REFUSALS_LOGGED) -> None:
        self.counters = counters
        self.limit = limit
        self._logged: set[tuple[str, str]] = set()

    def refuse(self, counter: str, peer: str, reason: str) -> None:
        self.counters[counter] += 1
        key = (peer, reason)
        if key in self._logged or len(self._logged) >= self.limit:
            return
        self._logged.add(key)
        log.error("ike peer refused", peer=peer, reason=reason, counter=counter)
