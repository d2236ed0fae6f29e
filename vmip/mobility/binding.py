"""What the mobility cores share: sequence numbers, lifetimes, packets in and out.

* RFC 6275 §9.5.1 sequence-number arithmetic (modulo 2^16),
* lifetime conversions (4-second units, §6.1.7),
* :class:`OnWire` (the ancillary on-wire addresses of a received MH message,
  draft §5.1.1) and :class:`Outgoing` (a packet a core wants sent),
* :class:`BindingCacheEntry` (HA and CN side),
* :class:`MobilityCore`, the sans-IO plumbing (outbox, event queue,
  counters, parsing that never raises).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from vmip.errors import VmipError
from vmip.log import get_logger
from vmip.mobility.events import MobilityEvent
from vmip.mobility.timers import LIFETIME_UNIT
from vmip.wire.errors import ChecksumError, WireError
from vmip.wire.mh import MobilityMessage, build_mh_packet, parse_mh

log = get_logger(__name__)

SEQUENCE_MODULUS = 1 << 16
_HALF = SEQUENCE_MODULUS // 2
MAX_LIFETIME_UNITS = 0xFFFF
UNSPECIFIED = IPv6Address("::")
#: RFC 5648 bindings an HA or CN keeps per HoA unless told otherwise
#: (mobility.max_care_of_addresses), and the most it may be told.
DEFAULT_MAX_BIDS_PER_HOA = 4
MAX_BIDS_PER_HOA_LIMIT = 16


class MobilityError(VmipError):
    """A mobility core was asked for something its state does not allow (a caller bug)."""


# ---------------------------------------------------------------------------
# Sequence numbers (RFC 6275 §9.5.1)


def sequence_less_or_equal(received: int, last: int) -> bool:
    """RFC 6275 §9.5.1: *received* is "less than or equal to" *last*.

    True when it lies in *last* and the 32768 values before it, modulo 2^16.
    """
    return (last - received) % SEQUENCE_MODULUS <= _HALF


def sequence_is_newer(received: int, last: int) -> bool:
    """A BU with sequence *received* may replace one with *last* (not "less than or equal")."""
    return not sequence_less_or_equal(received, last)


def next_sequence(sequence: int) -> int:
    return (sequence + 1) % SEQUENCE_MODULUS


#: How far past a removed BID binding's last accepted sequence number its
#: next BU must be, when no deregistration of that BID said where its
#: sender's counter stood: more BUs than an MN sends for one BID unanswered.
RETIRED_SEQUENCE_SKIP = 1024


def retired_sequence(last_accepted: int, deregistered_by: int | None) -> int:
    """What a BU for a removed RFC 5648 binding must be newer than.

    A deregistration of that BID is newer than every BU its sender sent
    for it before, so its number is the mark.  A binding removed for
    another reason (another BID's O flag or CoA, a BU without BID, expiry)
    leaves only its last accepted number, and a BU held back on the path
    may be newer than that: the mark is ``RETIRED_SEQUENCE_SKIP`` past it,
    so the MN's next BU for the BID gets a 135 carrying the mark and goes
    on from there (RFC 6275 §11.7.3), which a held-back BU cannot.
    """
    if deregistered_by is not None:
        return deregistered_by
    return (last_accepted + RETIRED_SEQUENCE_SKIP) % SEQUENCE_MODULUS


# ---------------------------------------------------------------------------
# Lifetimes (RFC 6275 §6.1.7: 16 bits of 4-second units)


def lifetime_units(seconds: float) -> int:
    """Seconds to BU/BA units, rounded down and clamped to the field."""
    if seconds <= 0:
        return 0
    return min(int(seconds // LIFETIME_UNIT), MAX_LIFETIME_UNITS)


def lifetime_seconds(units: int) -> int:
    return units * LIFETIME_UNIT


# ---------------------------------------------------------------------------
# Packets in and out


def _specified(address: IPv6Address | None) -> IPv6Address | None:
    # Draft §5.1.1: "::" in the ancillary data means "not remapped".
    if address is None or address == UNSPECIFIED:
        return None
    return address


@dataclass(frozen=True, slots=True)
class OnWire:
    """The on-wire addresses the remap engine replaced in a received packet (draft §5.1.1).

    ``None`` (or ``::``) for an address that was not remapped: then the
    on-wire address equals the SA-level one.
    """

    src: IPv6Address | None = None
    dst: IPv6Address | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", _specified(self.src))
        object.__setattr__(self, "dst", _specified(self.dst))


OnWireArgument = OnWire | IPv6Address | None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A packet a core wants sent, and the on-wire address IRO must put in it.

    ``packet`` is a complete SA-level IPv6 packet (source HoA on the MN)
    carrying one Mobility Header with a valid checksum over those addresses.
    ``onwire_src`` is the ancillary data for an outbound "remap. src:
    ancillary" rule (the MN's CoA, draft §3.3); ``onwire_dst`` the ancillary
    data for "remap. dst: ancillary" (the MN's CoA, as the HA or CN sees it,
    draft §3.4, §3.5).  ``None``: no ancillary data, the SA-level address
    stays on the wire (a packet to or from the HoA then goes through the HA
    tunnel).
    """

    packet: bytes
    onwire_src: IPv6Address | None = None
    onwire_dst: IPv6Address | None = None

    @property
    def ancillary_coa(self) -> IPv6Address | None:
        """The CoA in the ancillary data: the source one if set, else the destination one."""
        return self.onwire_src if self.onwire_src is not None else self.onwire_dst

    @property
    def src(self) -> IPv6Address:
        return IPv6Address(self.packet[8:24])

    @property
    def dst(self) -> IPv6Address:
        return IPv6Address(self.packet[24:40])


# ---------------------------------------------------------------------------
# Binding cache (HA and CN)


@dataclass(slots=True)
class BindingCacheEntry:
    """One binding as an HA or CN holds it (RFC 6275 §9.1, §10.1).

    ``coa`` is ``None`` on a CN while a new CoA waits for its proof (the
    entry then only remembers the sequence number and the pending request).
    """

    hoa: IPv6Address
    local: IPv6Address
    coa: IPv6Address | None
    sequence: int
    lifetime: int
    expires_at: float | None
    home: bool = False
    #: The Binding Identifier (RFC 5648 §6.1) of this binding; ``None``: a
    #: binding made without one (the only one its HoA has).
    bid: int | None = None

    @property
    def bound(self) -> bool:
        return self.coa is not None

    def renew(self, coa: IPv6Address, sequence: int, lifetime: int, now: float) -> None:
        """An accepted BU: the binding now names *coa* for *lifetime* seconds."""
        self.coa = coa
        self.sequence = sequence
        self.lifetime = lifetime
        self.expires_at = now + lifetime


def paths_of(entries: Collection[BindingCacheEntry]) -> tuple[tuple[int, IPv6Address], ...]:
    """``(bid, coa)`` of the bound BID entries, lowest BID first (PathsChanged order)."""
    return tuple(sorted((entry.bid, entry.coa) for entry in entries
                        if entry.bid is not None and entry.coa is not None))


# ---------------------------------------------------------------------------
# What may be a care-of address (RFC 6275 §6.2.5, §9.5.1)

#: ::/8: the unspecified and loopback addresses, IPv4-compatible and -mapped ones.
_RESERVED_LOW = IPv6Network("::/8")


def unroutable_care_of(address: IPv6Address) -> bool:
    """Not a unicast routable address, so never a care-of address (RFC 6275
    §6.2.5, §9.5.1): unspecified, loopback, IPv4-mapped or -compatible,
    multicast, link-local or site-local (RFC 4291 §2.4)."""
    return (address in _RESERVED_LOW or address.is_multicast or address.is_link_local
            or address.is_site_local)


# ---------------------------------------------------------------------------
# Binding Error rate limit (RFC 6275 §9.3.3)


class BindingErrorLimiter:
    """At most one Binding Error per source per ``interval`` seconds
    (RFC 6275 §9.3.3 "rate limited"), remembering at most ``memory`` sources."""

    def __init__(self, interval: float = 1.0, memory: int = 1024) -> None:
        self.interval = interval
        self.memory = memory
        self._last: dict[IPv6Address, float] = {}

    def allow(self, source: IPv6Address, now: float) -> bool:
        last = self._last.get(source)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.memory:
            self._last = {address: sent for address, sent in self._last.items()
                          if now - sent < self.interval}
            if len(self._last) >= self.memory:
                return False     # a flood of sources: none gets an answer until some age out
        self._last[source] = now
        return True


PeerFilter = Collection[IPv6Address] | Callable[[IPv6Address], bool] | None


def peer_predicate(peers: PeerFilter) -> Callable[[IPv6Address], bool]:
    """Turn a collection of addresses, a predicate or ``None`` (anyone) into a predicate."""
    if peers is None:
        return lambda address: True
    if callable(peers):
        return peers
    known = frozenset(IPv6Address(peer) for peer in peers)
    return known.__contains__


# ---------------------------------------------------------------------------
# The sans-IO plumbing every core shares


class MobilityCore:
    """Outbox, event queue and drop counters; parsing that never raises.

    Subclasses implement ``receive``, ``get_timer`` and ``handle_timer``.
    ``counters`` counts every dropped or ignored message, and a few notable
    protocol events, by reason (the names are listed in docs/mobility.md);
    ``sent`` counts the messages sent, by message class name.
    """

    def __init__(self) -> None:
        self._outbox: list[Outgoing] = []
        self._events: deque[MobilityEvent] = deque()
        self.counters: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._parameter_problem: int | None = None

    # -- the aioquic-style API --------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Outgoing]:
        """The packets queued since the last call, oldest first."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def next_event(self) -> MobilityEvent | None:
        """The oldest event not yet consumed, or ``None``."""
        return self._events.popleft() if self._events else None

    def take_parameter_problem(self) -> int | None:
        """The offset, from the start of the MH, of the field at fault in the
        last message ``receive`` refused as malformed, if it has one (and
        forget it): the caller owes its sender an ICMPv6 Parameter Problem,
        code 0, pointing there (RFC 6275 §9.2)."""
        pointer, self._parameter_problem = self._parameter_problem, None
        return pointer

    # -- helpers for subclasses -------------------------------------------

    def _emit(self, event: MobilityEvent) -> None:
        self._events.append(event)

    def _send(
        self,
        message: MobilityMessage,
        src: IPv6Address,
        dst: IPv6Address,
        onwire_src: IPv6Address | None = None,
        onwire_dst: IPv6Address | None = None,
    ) -> None:
        # The checksum covers the SA-level addresses (docs/design.md §6): the
        # remap engine rewrites the IPv6 header outside ESP only.
        packet = build_mh_packet(message, src, dst)
        self._outbox.append(Outgoing(packet, _specified(onwire_src), _specified(onwire_dst)))
        self.sent[type(message).__name__] += 1

    def _drop(self, reason: str, **fields: object) -> None:
        self.counters[reason] += 1
        log.debug("mh dropped", reason=reason, **fields)

    def _parse(self, mh: bytes, src: IPv6Address, dst: IPv6Address) -> MobilityMessage | None:
        self._parameter_problem = None
        try:
            return parse_mh(mh, src, dst)
        except ChecksumError:
            self._drop("bad_checksum", src=src)
        except WireError as error:
            self._drop("malformed", src=src, error=str(error))
            self._parameter_problem = getattr(error, "pointer", None)
        return None


def onwire_of(onwire: OnWireArgument, as_source: bool) -> IPv6Address | None:
    """The remapped on-wire address a handler needs from a ``receive`` argument.

    A bare address is read by role: a CN checks the *source* the MN sent
    from (BU, AOTO, AOTR: draft §3.3, §4.4.3), an MN the *destination* the
    CN sent to (AOTC: draft §3.4).  An :class:`OnWire` gives both.
    """
    if onwire is None:
        return None
    if isinstance(onwire, OnWire):
        return onwire.src if as_source else onwire.dst
    return _specified(onwire)
