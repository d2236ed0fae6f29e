"""ICMPv6 errors about the on-wire packets a node sent (sans-IO).

On a native path (the ``raw`` driver) routers answer the node's on-wire
packets: Packet Too Big when an ESP packet does not fit the next hop,
Destination Unreachable, Time Exceeded, Parameter Problem (RFC 4443 §3).
They quote the on-wire packet, so only the node, not the application
behind its TUN, can act on them; the draft leaves their handling to
RFC 4301, which this follows:

- **Which errors count** (RFC 4301 §6.1.1.1): the message's checksum
  verifies, it quotes a packet whose source is one of this node's own
  on-wire addresses and, for ESP, whose SPI is one of its outbound SAs.
  Anything else is counted and dropped: the message is not authenticated,
  so it may only say something about traffic this node really sends.
- **Packet Too Big** (RFC 4301 §8.2.1, RFC 8201 §4): the path MTU towards
  the quoted on-wire destination drops to the reported MTU, never below
  1280 and never up on the strength of a message; the runtime then answers
  a packet that no longer fits with its own Packet Too Big into the TUN,
  MTU less the ESP/tunnel overhead (§8.2.2), so the sender's PMTU
  discovery (TCP, ping) sizes its packets.  An estimate ages out after
  :data:`PMTU_LIFETIME` (RFC 8201 §4: no sooner than 5 minutes, 10
  recommended), then the link MTU applies again.
- **Unreachable, Time Exceeded, Parameter Problem**: counted per type and
  published as an :class:`OnWireIcmpError` event (``vmip events``); they
  carry no state (RFC 4301 §6.1.1.1: an unauthenticated error must not
  tear down anything).

Every table is bounded (:data:`MAX_PATHS` destinations, oldest first out).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vmip.wire import proto
from vmip.wire.errors import WireError
from vmip.wire.icmpv6 import (
    DESTINATION_UNREACHABLE,
    PACKET_TOO_BIG,
    PARAMETER_PROBLEM,
    TIME_EXCEEDED,
    PacketTooBig,
    parse_icmpv6,
)

#: RFC 8200 §5: every IPv6 link carries 1280 octets; no estimate goes lower.
IPV6_MIN_MTU = 1280
#: Seconds a lowered path MTU holds before the link MTU is tried again.
PMTU_LIFETIME = 600.0
#: Destinations with a path MTU estimate at most (least recently lowered out first).
MAX_PATHS = 1024

_ERROR_NAMES = {DESTINATION_UNREACHABLE: "unreachable", PACKET_TOO_BIG: "too_big",
                TIME_EXCEEDED: "time_exceeded", PARAMETER_PROBLEM: "parameter_problem"}
_SPI = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class OnWireIcmpError:
    """A router's ICMPv6 error about an on-wire packet of ours (``vmip events``)."""

    #: ``too_big``, ``unreachable``, ``time_exceeded``, ``parameter_problem``.
    kind: str
    code: int
    #: The router (or host) that sent the error.
    reporter: str
    #: The quoted on-wire packet's destination.
    destination: str
    #: Packet Too Big: the path MTU now used towards *destination*; else None.
    mtu: int | None = None


class OnWireIcmp:
    """Path MTU per on-wire destination, from the ICMPv6 errors routers send."""

    def __init__(self, *, is_own_address: Callable[[bytes], bool],
                 is_outbound_spi: Callable[[int], bool],
                 lifetime: float = PMTU_LIFETIME, max_paths: int = MAX_PATHS) -> None:
        self._is_own_address = is_own_address
        self._is_outbound_spi = is_outbound_spi
        self.lifetime = lifetime
        self.max_paths = max_paths
        #: on-wire destination (16 octets) -> (path MTU, when it expires).
        self._paths: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.counters: Counter[str] = Counter()

    def __bool__(self) -> bool:
        """True while some path has an estimate: the data path asks only then."""
        return bool(self._paths)

    def path_mtu(self, destination: bytes, now: float) -> int | None:
        """The path MTU estimate towards an on-wire destination, or None."""
        entry = self._paths.get(destination)
        if entry is None:
            return None
        mtu, expires = entry
        if now >= expires:
            del self._paths[destination]
            self.counters["pmtu_expired"] += 1
            return None
        return mtu

    def rows(self, now: float) -> list[dict[str, object]]:
        """The estimates for ``vmip status``: destination, MTU, seconds left."""
        return [{"destination": str(ipaddress.IPv6Address(dst)), "mtu": mtu,
                 "expires_in": round(expires - now, 1)}
                for dst, (mtu, expires) in self._paths.items() if expires > now]

    def receive(self, packet: bytes, now: float) -> OnWireIcmpError | None:
        """Handle one on-wire ICMPv6 error addressed to this node.

        *packet* is the whole IPv6 packet (next header 58, as the raw driver
        rebuilds it).  Returns the event to publish, or None when the
        message was dropped (counted as ``icmp_drop_<reason>``).
        """
        try:
            message = parse_icmpv6(packet[40:], packet[8:24], packet[24:40])
        except WireError:
            self.counters["icmp_drop_malformed"] += 1
            return None
        kind = _ERROR_NAMES.get(message.icmp_type)
        if kind is None:
            self.counters["icmp_drop_not_error"] += 1
            return None
        quoted = message.invoking_packet  # type: ignore[union-attr]
        reason = self._not_ours(quoted)
        if reason is not None:
            self.counters[f"icmp_drop_{reason}"] += 1
            return None
        destination = quoted[24:40]
        self.counters[f"icmp_rx_{kind}"] += 1
        mtu = None
        if isinstance(message, PacketTooBig):
            mtu = self._lower(destination, message.mtu, now)
        return OnWireIcmpError(kind, message.code, str(ipaddress.IPv6Address(packet[8:24])),
                               str(ipaddress.IPv6Address(destination)), mtu)

    def _not_ours(self, quoted: bytes) -> str | None:
        """Why the quoted packet is not one this node sent (a counter suffix), or None."""
        if len(quoted) < 40 or quoted[0] >> 4 != 6:
            return "short_quote"
        if not self._is_own_address(quoted[8:24]):
            return "not_our_packet"
        if quoted[6] == proto.ESP:
            if len(quoted) < 44:
                return "short_quote"
            if not self._is_outbound_spi(_SPI.unpack_from(quoted, 40)[0]):
                return "unknown_spi"
        return None

    def _lower(self, destination: bytes, reported: int, now: float) -> int:
        # RFC 8201 §4: not below the IPv6 minimum, never raised by a message.
        mtu = max(IPV6_MIN_MTU, reported)
        current = self.path_mtu(destination, now)
        if current is not None and current <= mtu:
            self.counters["pmtu_not_lowered"] += 1
            return current
        self._paths[destination] = (mtu, now + self.lifetime)
        self._paths.move_to_end(destination)
        self.counters["pmtu_lowered"] += 1
        while len(self._paths) > self.max_paths:
            self._paths.popitem(last=False)
            self.counters["pmtu_evicted"] += 1
        return mtu
