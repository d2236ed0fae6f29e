"""The locator table: on-wire IPv6 address → underlay endpoint (sans-IO).

Two kinds of entries (shown by ``vmip locators``):

- **static**, from the config's ``[[peer]]`` sections: on-wire prefixes and
  the peer's endpoint and framing.  Lookup is longest-prefix match.  A peer
  marked ``default`` catches every destination no prefix covers.
- **learned**, one per on-wire address (a /128), created or moved only by
  :meth:`LocatorTable.confirm`, which the node calls once a packet from that
  on-wire source has been *authenticated*: ESP ICV verified and the sequence
  number accepted by the anti-replay window, or an authenticated IKE message.
  This is WireGuard's endpoint-roaming rule: unauthenticated input (a
  spoofed source, a replayed packet, a probe) never moves a locator, so
  nobody can redirect a peer's traffic without its keys.  :meth:`observe`
  only reports whether a packet came from somewhere else.

An ESP ICV proves who sent a payload, never from where: the on-wire source
is outside it.  So the caller says *why* the authenticating SA vouches for
the address it confirms (docs/security.md, "Locators"):

- ``PEER``: the address is the SA's own peer (a transport SA's remote
  address, a tunnel SA's outer source, an IKE SA's peer after AUTH);
- ``BINDING``: the address is the care-of address that the binding of the
  SA's peer (its home address) names.

and the table refuses what that does not cover.  Configuration outranks
what a binding claims: a learned entry may stand in front of a static one
only for the host that static entry names (a ``/128``), and only when the
SA's own peer is that host.  Inside a static prefix shorter than /128 (a
gateway's prefix: the home prefix behind the home agent) nothing is ever
learned, and neither are addresses that cannot be a unicast source
(loopback, multicast, link-local, unspecified).  Refusals
are counted (``refused_gateway``, ``refused_static``, ``refused_scope``).

A learned entry has an owner.  ``BINDING`` with a *home_address* makes that
home address its owner; a ``BINDING`` vouch may create an entry or move
one its home address owns, never one another home address owns nor one a
``PEER`` vouch made (``refused_owned``): one MN's authentic BU naming
another MN's CoA, or a peer's address, must not take its traffic
(docs/security.md, "Locators").  A ``PEER`` vouch moves any learned entry
(the address is the SA's own) and makes the entry the peer's, or the home
address's it names.

A home address with several bindings at once (RFC 5648, one per link of
the MN) owns every CoA they name: :meth:`LocatorTable.set_bound` tells the
table which, so confirming one leaves none of the others behind, and the
entries of a CoA no binding names any more are forgotten.

A learned entry otherwise wins over a static prefix covering the same
address (it is the most specific and the most recent, authenticated
knowledge).  Learned entries are bounded: beyond ``max_learned`` the least
recently confirmed one is forgotten (it falls back to its static entry, if
any).  A care-of address that a binding stopped naming goes first: when a
binding's home address confirms a new CoA, the entry of the CoA it named
before is put at the head of the eviction order, so one MN naming many
addresses evicts its own entries, not other MNs' (:func:`max_learned_for`
sizes the table from the SAs a node has, a home agent's from its MNs).

Addresses may be given as 16 raw octets (the data path reads them straight
from the packet), :class:`ipaddress.IPv6Address` or text; IPv4 addresses and
prefixes are stored IPv4-mapped (``::ffff:0:0/96``), as the ``rfc3948`` link
presents IPv4 underlay addresses.  Anything else raises :class:`LinkError`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any

from vmip.links.base import Endpoint, coerce_endpoint, format_endpoint
from vmip.links.errors import LinkError

STATIC = "static"
LEARNED = "learned"

#: Why an authenticated packet vouches for its on-wire source (see the module doc).
PEER = "peer"
BINDING = "binding"

#: Default bound on learned entries (one per mobile node CoA or peer).
DEFAULT_MAX_LEARNED = 4096
#: Upper bound on the table whatever the config says (a few hundred bytes each).
MAX_LEARNED_LIMIT = 1 << 20


def max_learned_for(static_sas: int) -> int:
    """The learned-entry bound of a node with *static_sas* static SAs.

    Every MN of a home agent has at least an MH SA pair, and one live CoA
    plus, while it moves, the one it left: one entry per SA keeps both.
    """
    return min(MAX_LEARNED_LIMIT, max(DEFAULT_MAX_LEARNED, static_sas))


#: Bound on the lookup cache of the static LPM; it is cleared when full.
_CACHE_LIMIT = 8192
_MISSING = object()

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
#: A static entry for every IPv4 address (an rfc3948 catch-all) is no gateway prefix.
_IPV4_MAPPED_ALL = _IPV4_MAPPED


def unicast_locator(address: ipaddress.IPv6Address) -> bool:
    """Can *address* (IPv4-mapped for IPv4) be a peer's on-wire address at all?
    Not unspecified, loopback, multicast, link-local or reserved: such a source
    is spoofed or broken, and a locator for it would only ever be wrong."""
    candidate: ipaddress.IPv4Address | ipaddress.IPv6Address = address.ipv4_mapped or address
    return not (candidate.is_unspecified or candidate.is_loopback or candidate.is_multicast
                or candidate.is_link_local or candidate.is_reserved)


class Locator:
    """Where to send packets for one on-wire prefix.

    ``endpoint`` is ``None`` when the peer has no known underlay endpoint
    (a peer that must be learned, or a ``raw`` peer: the OS routes).
    ``link`` is the link the authenticated packet arrived on (learned
    entries) or ``None`` (static: the node picks a link with this framing).
    Treat instances as read-only; the table updates learned ones in place.
    """

    __slots__ = ("endpoint", "framing", "last_confirmed", "link", "owner", "peer",
                 "peer_vouched", "prefix", "source")

    def __init__(self, prefix: ipaddress.IPv6Network, endpoint: Endpoint | None,
                 link: str | None, framing: str, source: str, peer: str | None,
                 last_confirmed: float | None = None) -> None:
        self.prefix = prefix
        self.endpoint = endpoint
        self.link = link
        self.framing = framing
        self.source = source
        self.peer = peer
        self.last_confirmed = last_confirmed
        #: Learned through a binding: the home address whose binding named it.
        self.owner: bytes | None = None
        #: Learned through a PEER vouch: no binding may take it.
        self.peer_vouched = False

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """One row of ``vmip locators`` (also the control socket's JSON)."""
        prefix = self.prefix
        address = str(prefix.network_address) if prefix.prefixlen == 128 else str(prefix)
        age = None
        if self.last_confirmed is not None and now is not None:
            age = max(0.0, now - self.last_confirmed)
        return {
            "address": address,
            "endpoint": format_endpoint(self.endpoint),
            "link": self.link or "-",
            "framing": self.framing,
            "source": self.source,
            "peer": self.peer or "-",
            "last_confirmed": self.last_confirmed,
            "confirmed_ago": age,
        }

    def __repr__(self) -> str:
        return (f"Locator({self.prefix}, {format_endpoint(self.endpoint)}, link={self.link}, "
                f"{self.source}, peer={self.peer})")


def address_key(address: Any) -> bytes:
    """16 octets for an on-wire address given as bytes, ipaddress or text."""
    if type(address) is bytes and len(address) == 16:
        return address
    if isinstance(address, (bytes, bytearray, memoryview)):
        if len(address) == 16:
            return bytes(address)
        if len(address) == 4:
            return b"\x00" * 10 + b"\xff\xff" + bytes(address)
        raise LinkError(f"an on-wire address has 16 octets, not {len(address)}")
    if isinstance(address, ipaddress.IPv6Address):
        return address.packed
    if isinstance(address, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    if isinstance(address, str):
        try:
            return address_key(ipaddress.ip_address(address))
        except ValueError:
            pass
    raise LinkError(f"not an on-wire address: {address!r}")


def _as_ipv6_network(prefix: Any) -> ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(prefix, strict=True) \
            if not isinstance(prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else prefix
    except (ValueError, TypeError):
        raise LinkError(f"not an on-wire prefix: {prefix!r}") from None
    if isinstance(network, ipaddress.IPv4Network):
        mapped = int(_IPV4_MAPPED.network_address) | int(network.network_address)
        return ipaddress.IPv6Network((mapped, 96 + network.prefixlen))
    return network


class LocatorTable:
    """Static prefixes plus authenticated learning; see the module doc."""

    def __init__(self, max_learned: int = DEFAULT_MAX_LEARNED) -> None:
        if max_learned < 1:
            raise LinkError(f"max_learned must be at least 1, not {max_learned}")
        self.max_learned = max_learned
        # Static entries by prefix length, then by the prefix's top bits.
        self._static: dict[int, dict[int, Locator]] = {}
        self._static_lengths: list[int] = []  # longest first
        self._default: Locator | None = None
        # Learned /128s, least recently confirmed first (LRU eviction).
        self._learned: OrderedDict[bytes, Locator] = OrderedDict()
        # Home address -> the learned CoA its binding vouched for last.
        self._owned: dict[bytes, bytes] = {}
        # Home address -> every CoA its bindings name, when it has several
        # (RFC 5648); as many entries as the mobility cores hold such HoAs.
        self._siblings: dict[bytes, frozenset[bytes]] = {}
        self._cache: dict[bytes, Locator | None] = {}
        #: ``confirmed``, ``moved``, ``learned``, ``evicted``, ``observed_elsewhere``.
        self.counters: Counter[str] = Counter()

    # -- static entries ----------------------------------------------------

    def add_static(self, prefix: Any, endpoint: Endpoint | None, *, framing: str = "udp",
                   peer: str | None = None, default: bool = False) -> Locator:
        """Add one static entry; *endpoint* ``None`` means "no endpoint yet"."""
        network = _as_ipv6_network(prefix)
        if endpoint is not None:
            endpoint = coerce_endpoint(endpoint)
        bucket = self._static.setdefault(network.prefixlen, {})
        top_bits = int(network.network_address) >> (128 - network.prefixlen)
        if top_bits in bucket:
            raise LinkError(f"on-wire prefix {network} is listed twice "
                            f"(peers {bucket[top_bits].peer} and {peer})")
        entry = Locator(network, endpoint, None, str(framing), STATIC, peer)
        bucket[top_bits] = entry
        self._static_lengths = sorted(self._static, reverse=True)
        if default:
            self._set_default(entry)
        self._cache.clear()
        return entry

    def _set_default(self, entry: Locator) -> None:
        if self._default is not None and self._default.peer != entry.peer:
            raise LinkError(f"two default peers: {self._default.peer} and {entry.peer}")
        self._default = entry

    @classmethod
    def from_peers(cls, peers: Iterable[Any], max_learned: int = DEFAULT_MAX_LEARNED
                   ) -> LocatorTable:
        """Build the static part from ``PeerConfig``-like objects (name,
        prefixes, endpoint, framing, default)."""
        table = cls(max_learned)
        for peer in peers:
            endpoint = peer.endpoint
            framing = str(getattr(peer, "framing", "udp") or "udp")
            default = bool(getattr(peer, "default", False))
            entries = [table.add_static(prefix, endpoint, framing=framing, peer=peer.name)
                       for prefix in peer.prefixes]
            if default:
                if not entries:
                    # A default peer without prefixes still needs a row.
                    endpoint = coerce_endpoint(endpoint) if endpoint is not None else None
                    entry = Locator(_as_ipv6_network("::/0"), endpoint, None, framing,
                                    STATIC, peer.name)
                    table._set_default(entry)
                else:
                    table._set_default(entries[0])
        return table

    def replace_static(self, peers: Iterable[Any]) -> None:
        """Swap the static part for the one *peers* describe (config reload);
        learned entries, being authenticated knowledge, stay."""
        fresh = LocatorTable.from_peers(peers, self.max_learned)
        self._static = fresh._static
        self._static_lengths = fresh._static_lengths
        self._default = fresh._default
        self._cache.clear()

    # -- lookup (data path) ------------------------------------------------

    def lookup(self, destination: Any) -> Locator | None:
        """The locator for an on-wire destination, or ``None`` (the node
        answers ICMPv6 destination unreachable, RFC 4443 §3.1).

        Order: learned /128, then longest static prefix, then the default
        peer.
        """
        key = address_key(destination)
        learned = self._learned.get(key)
        if learned is not None:
            return learned
        cached = self._cache.get(key, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        found = self._longest_static_match(key)
        if found is None:
            found = self._default
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _longest_static_match(self, key: bytes) -> Locator | None:
        value = int.from_bytes(key, "big")
        static = self._static
        for length in self._static_lengths:
            entry = static[length].get(value >> (128 - length))
            if entry is not None:
                return entry
        return None

    def static_with_endpoint(self, address: Any) -> Locator | None:
        """The config's own entry for *address*: the longest static prefix that
        has an endpoint, ignoring what was learned, the default peer and ``::/0``.

        One dict probe per distinct prefix length, whatever the number of
        learned locators (an HA holds one per MN).
        """
        value = int.from_bytes(address_key(address), "big")
        static = self._static
        for length in self._static_lengths:
            if length == 0:
                continue
            entry = static[length].get(value >> (128 - length))
            if entry is not None and entry.endpoint is not None:
                return entry
        return None

    # -- learning ----------------------------------------------------------

    def refresh(self, on_wire_source: bytes, endpoint: Endpoint, now: float,
                link: str | None = None) -> bool:
        """The per-packet fast path: ``True`` when a learned entry already
        points *on_wire_source* at *endpoint* on *link* (its time is updated);
        ``False`` when :meth:`confirm` would have to create or move one."""
        entry = self._learned.get(on_wire_source)
        if entry is not None and entry.endpoint == endpoint and entry.link == link:
            entry.last_confirmed = now
            self._learned.move_to_end(on_wire_source)
            self.counters["confirmed"] += 1
            return True
        return False

    def refusal(self, on_wire_source: Any, vouched_by: str = PEER) -> str | None:
        """Why a learned entry for *on_wire_source* may not be made on the
        strength of *vouched_by* (a counter name), or ``None`` if it may."""
        key = address_key(on_wire_source)
        if not unicast_locator(ipaddress.IPv6Address(key)):
            return "refused_scope"
        covering = self._longest_static_match(key)
        if covering is None:
            return None
        if covering.prefix.prefixlen < 128 and covering.prefix != _IPV4_MAPPED_ALL:
            return "refused_gateway"     # reached through that peer, never directly
        if vouched_by != PEER:
            return "refused_static"      # the config names another host here
        return None

    def taken(self, on_wire_source: Any, home_address: Any) -> bool:
        """Is the learned entry of *on_wire_source* another's than the binding
        of *home_address*: owned by another home address, or made by a
        ``PEER`` vouch?  Then that binding may not move it."""
        entry = self._learned.get(address_key(on_wire_source))
        if entry is None:
            return False
        if entry.peer_vouched:
            return True
        owner = address_key(home_address) if home_address is not None else None
        return entry.owner is not None and entry.owner != owner

    def confirm(self, on_wire_source: Any, endpoint: Endpoint, now: float,
                link: str | None = None, *, vouched_by: str = PEER,
                framing: str | None = None, home_address: Any = None) -> bool:
        """A packet from *on_wire_source* arriving from *endpoint* on *link*
        was authenticated by an SA that vouches for that address as
        *vouched_by* says (``PEER`` or ``BINDING``): point the address there.
        Returns ``True`` when the locator was created or moved; ``False``
        when it was already there or the table refused (see :meth:`refusal`).

        Call only after the ICV *and* the anti-replay check passed: a
        replayed authentic packet from an attacker's address must not move
        the locator either.  With ``BINDING``, *home_address* names the
        binding: it owns the entry, the CoA it named before is the first to be
        evicted, and an entry another owns is refused (``refused_owned``).
        With ``PEER``, *home_address* is the binding that names the peer's
        address, if any (a HA's tunnel SA whose outer source is the CoA).
        """
        key = address_key(on_wire_source)
        entry = self._learned.get(key)
        self.counters["confirmed"] += 1
        if vouched_by != PEER and entry is not None and self.taken(key, home_address):
            if entry.endpoint != endpoint or entry.link != link:
                self.counters["refused_owned"] += 1
            return False
        if entry is not None and entry.endpoint == endpoint and entry.link == link:
            entry.last_confirmed = now
            self._learned.move_to_end(key)
            if not (vouched_by == PEER and home_address is None and entry.owner is not None):
                # (An IKE SA with the MN at its CoA keeps the binding's entry its.)
                self._own(entry, key, vouched_by, home_address)
            return False
        refused = self.refusal(key, vouched_by)
        if refused is not None:
            self.counters[refused] += 1
            return False
        endpoint = coerce_endpoint(endpoint)
        if entry is not None:
            entry.endpoint = endpoint
            entry.link = link
            entry.last_confirmed = now
            self._learned.move_to_end(key)
            self._own(entry, key, vouched_by, home_address)
            self.counters["moved"] += 1
            return True
        covering = self._longest_static_match(key)
        # The covering peer's framing, else the receiving link's (raw learns too).
        framing = covering.framing if covering is not None else (framing or "udp")
        peer = covering.peer if covering is not None else None
        network = ipaddress.IPv6Network((int.from_bytes(key, "big"), 128))
        entry = self._learned[key] = Locator(network, endpoint, link, framing, LEARNED, peer, now)
        self._own(entry, key, vouched_by, home_address)
        self.counters["learned"] += 1
        while len(self._learned) > self.max_learned:
            _evicted_key, evicted = self._learned.popitem(last=False)
            self._disown(evicted, _evicted_key)
            self.counters["evicted"] += 1
        self._cache.pop(key, None)
        return True

    def _own(self, entry: Locator, key: bytes, vouched_by: str, home_address: Any) -> None:
        """*key* is now the CoA the binding of *home_address* names; the one it
        named before goes to the head of the eviction order."""
        if vouched_by == PEER and home_address is None:
            self._disown(entry, key)
            entry.peer_vouched = True
            return
        entry.peer_vouched = False
        if home_address is None:
            return
        owner = address_key(home_address)
        previous = self._owned.get(owner)
        if previous == key:
            return
        if entry.owner is not None and entry.owner != owner:
            self._disown(entry, key)
        entry.owner = owner
        self._owned[owner] = key
        if previous is not None and previous not in self._siblings.get(owner, ()):
            stale = self._learned.get(previous)
            if stale is not None and stale.owner == owner:
                stale.owner = None
                self._learned.move_to_end(previous, last=False)
                self.counters["left_behind"] += 1

    def _disown(self, entry: Locator, key: bytes) -> None:
        if entry.owner is not None and self._owned.get(entry.owner) == key:
            del self._owned[entry.owner]
        entry.owner = None

    def set_bound(self, home_address: Any, addresses: Iterable[Any]) -> int:
        """The bindings of *home_address* name exactly *addresses* now (several
        with RFC 5648, one per link of the MN).  Its entries for them stay its
        own whichever is confirmed last; the ones it owned that are no longer
        named are forgotten (the binding of that link is gone).  Returns how
        many entries were forgotten."""
        owner = address_key(home_address)
        keep = frozenset(address_key(address) for address in addresses)
        before = self._siblings.get(owner, frozenset())
        previous = self._owned.get(owner)
        if previous is not None:
            before = before | {previous}
        forgotten = 0
        for key in before - keep:
            entry = self._learned.get(key)
            if entry is not None and entry.owner == owner:
                del self._learned[key]
                self._disown(entry, key)
                self._cache.pop(key, None)
                forgotten += 1
        if len(keep) > 1:
            self._siblings[owner] = keep
        else:
            self._siblings.pop(owner, None)
        self.counters["forgotten_unbound"] += forgotten
        return forgotten

    def observe(self, on_wire_source: Any, endpoint: Endpoint) -> bool:
        """An *unauthenticated* packet from *on_wire_source* came from
        *endpoint*.  Never changes the table; returns ``True`` when that is
        not where the current locator points (worth a log line: a roaming
        peer before its first authenticated packet, or a spoofer)."""
        current = self.lookup(on_wire_source)
        if current is None or current.endpoint is None or current.endpoint == endpoint:
            return False
        self.counters["observed_elsewhere"] += 1
        return True

    def forget(self, on_wire_address: Any) -> bool:
        """Drop the learned entry of an address (e.g. a binding deleted)."""
        key = address_key(on_wire_address)
        entry = self._learned.pop(key, None)
        if entry is None:
            return False
        self._disown(entry, key)
        return True

    # -- display -----------------------------------------------------------

    def entries(self) -> list[Locator]:
        """Static entries (longest prefix first), the default peer's row if it
        has no prefix of its own, then learned ones (oldest first)."""
        rows = [entry for length in self._static_lengths
                for entry in sorted(self._static[length].values(),
                                    key=lambda e: e.prefix.network_address)]
        if self._default is not None and self._default not in rows:
            rows.append(self._default)
        rows.extend(self._learned.values())
        return rows

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """What ``vmip locators`` prints: one dict per entry (JSON-ready);
        ``default`` marks the default peer's entry."""
        out = []
        for entry in self.entries():
            row = entry.as_dict(now)
            row["default"] = entry is self._default
            out.append(row)
        return out

    def render(self, now: float | None = None) -> str:
        """A plain-text table of :meth:`rows` for people (ages as "2.5s ago", "5m 03s ago")."""
        def ago(seconds: float) -> str:
            # Whole units past a minute: a monotonic age to 0.1 s says nothing there.
            if seconds < 60:
                return f"{seconds:.1f}s ago"
            whole = int(seconds)
            if whole < 3600:
                return f"{whole // 60}m {whole % 60:02d}s ago"
            if whole < 86400:
                return f"{whole // 3600}h {whole % 3600 // 60:02d}m ago"
            return f"{whole // 86400}d {whole % 86400 // 3600:02d}h ago"

        header = ("ADDRESS", "ENDPOINT", "LINK", "FRAMING", "SOURCE", "PEER", "CONFIRMED")
        lines = [header]
        for row in self.rows(now):
            age = row["confirmed_ago"]
            confirmed = "-" if age is None else ago(age)
            address = row["address"] + (" (default)" if row["default"] else "")
            lines.append((address, row["endpoint"], row["link"], row["framing"],
                          row["source"], row["peer"], confirmed))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines)

    @property
    def default(self) -> Locator | None:
        return self._default

    def learned_count(self) -> int:
        return len(self._learned)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._static.values()) + len(self._learned)
