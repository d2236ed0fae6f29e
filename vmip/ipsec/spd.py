"""Security Policy Database (RFC 4301 §4.4.1), with a per-flow decision cache.

A :class:`Policy` says what happens to packets whose :class:`Selector`
matches: PROTECT (through an SA bundle), BYPASS or DISCARD.  Policies are
ordered, not decorrelated: the first match in (priority, insertion) order
wins, lower priority values first (RFC 4301 §4.4.1 requires an ordered SPD
when entries overlap).

Packets are matched through their :class:`~vmip.wire.flow.FlowKey`
(``src, dst, proto, sport, dport``; raw address bytes).  RFC 4301 §4.4.1.1
puts the ICMP type/code and the Mobility Header type where the ports go, and
so does the flow key: ICMPv6 ``sport`` = type, ``dport`` = code; MH
``sport`` = MH type, ``dport`` = 0; a port that cannot be read (non-first
fragment, protocol without ports) is 0, which is how OPAQUE is seen here
(port 0 is reserved for TCP and UDP, so no real flow uses it).

Local and remote are relative to this node: outbound, the key's ``src`` is
local; inbound, its ``dst`` is.  Each selector is compiled once into integers
and masks oriented for both directions, so a lookup is integer compares only.

A lookup that the cache cannot answer is a tuple-space search: policies are
grouped by (address family, local mask, remote mask), each group a dict from
the masked address pair to its policies in match order, so a miss costs one
dict probe per distinct prefix-length pair instead of a scan of every policy;
the earliest (priority, insertion) match over all groups wins.

The flow cache (one dict per direction, keyed by the FlowKey) makes the
per-packet cost of a known flow a single dict lookup, whatever the number of
policies.  It stores negative answers too, is emptied on every SPD change
(``generation`` counts the changes) and is emptied when it reaches
``cache_size`` entries (clear-on-full: no bookkeeping on hits, and a flood of
new flows costs one clear per ``cache_size`` misses).
"""

from __future__ import annotations

import bisect
import builtins
import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING

from vmip.errors import VmipError
from vmip.ipsec.sa import Direction
from vmip.wire.proto import ICMP, ICMPV6, MOBILITY

if TYPE_CHECKING:  # the wire helper owns FlowKey; only its shape matters here
    from vmip.wire.flow import FlowKey

Network = IPv4Network | IPv6Network

_ICMP_PROTOS = (ICMP, ICMPV6)
_PORT_MAX = 0xFFFF


class SpdError(VmipError):
    """A selector or policy that cannot work, or an SPD edit that conflicts."""


class Action(enum.Enum):
    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"


class Opaque(enum.Enum):
    """RFC 4301 §4.4.1.1 OPAQUE: the field is not available (matches port 0)."""

    OPAQUE = "opaque"


OPAQUE = Opaque.OPAQUE

#: ``None`` = ANY, :data:`OPAQUE`, or an inclusive ``(low, high)`` range.
PortSpec = None | Opaque | tuple[int, int]
#: ``None`` = ANY, one value, or an inclusive ``(low, high)`` range.
TypeSpec = None | int | tuple[int, int]


def _as_network(value: object, what: str) -> Network | None:
    if value is None or isinstance(value, (IPv4Network, IPv6Network)):
        return value
    if isinstance(value, str):
        try:
            return ip_network(value, strict=True)
        except ValueError as exc:
            raise SpdError(f"{what}: {exc}") from None
    raise SpdError(f"{what}: expected a prefix such as '2001:db8::/64', got {value!r}")


def _as_range(value: object, what: str, top: int) -> tuple[int, int]:
    """Normalise an int or (low, high) to an inclusive range within 0..top."""
    if isinstance(value, bool):
        raise SpdError(f"{what}: expected a number or a (low, high) range, got {value!r}")
    if isinstance(value, int):
        low = high = value
    elif (isinstance(value, tuple) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        low, high = value
    else:
        raise SpdError(f"{what}: expected a number or a (low, high) range, got {value!r}")
    if not 0 <= low <= high <= top:
        raise SpdError(f"{what}: range {low}-{high} is not within 0-{top} with low <= high")
    return low, high


def _port_bounds(spec: PortSpec, what: str) -> tuple[int, int]:
    if spec is None:
        return 0, _PORT_MAX
    if spec is OPAQUE:
        return 0, 0
    return _as_range(spec, what, _PORT_MAX)


def _type_bounds(spec: TypeSpec, what: str) -> tuple[int, int]:
    if spec is None:
        return 0, _PORT_MAX
    return _as_range(spec, what, 0xFF)


@dataclass(frozen=True)
class Selector:
    """The traffic an SPD entry (or an SA) covers, RFC 4301 §4.4.1.1.

    ``local``/``remote``: prefixes (``None`` = any address, any family);
    ``proto``: next-layer protocol number (``None`` = ANY);
    ``local_ports``/``remote_ports``: for protocols with ports;
    ``icmp_type``/``icmp_code``: for ICMP/ICMPv6; ``mh_type``: for MH (135).
    """

    local: Network | None = None
    remote: Network | None = None
    proto: int | None = None
    local_ports: PortSpec = None
    remote_ports: PortSpec = None
    icmp_type: TypeSpec = None
    icmp_code: TypeSpec = None
    mh_type: TypeSpec = None
    # Compiled forms, (src_val, src_mask, dst_val, dst_mask, addr_len, proto,
    # sport_lo, sport_hi, dport_lo, dport_hi), one per direction.
    _compiled_out: tuple = field(init=False, repr=False, compare=False, hash=False)
    _compiled_in: tuple = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        local = _as_network(self.local, "local prefix")
        remote = _as_network(self.remote, "remote prefix")
        object.__setattr__(self, "local", local)
        object.__setattr__(self, "remote", remote)
        if local is not None and remote is not None and local.version != remote.version:
            raise SpdError(f"selector mixes IP versions: {local} and {remote}")
        proto = self.proto
        if proto is not None and (isinstance(proto, bool) or not isinstance(proto, int)
                                  or not 0 <= proto <= 255):
            raise SpdError(f"next-layer protocol must be 0-255 or ANY, not {proto!r}")
        ports_given = self.local_ports is not None or self.remote_ports is not None
        icmp_given = self.icmp_type is not None or self.icmp_code is not None
        # A "port" selector only means something for the protocol that carries
        # that field (RFC 4301 §4.4.1.3).
        if icmp_given and proto not in _ICMP_PROTOS:
            raise SpdError("icmp_type/icmp_code need protocol icmpv6 (58) or icmp (1)")
        if self.mh_type is not None and proto != MOBILITY:
            raise SpdError("mh_type needs protocol mh (135)")
        if ports_given and (proto is None or proto in _ICMP_PROTOS or proto == MOBILITY):
            raise SpdError("ports need a protocol with ports (tcp, udp, ...), not "
                           + ("ANY" if proto is None else str(proto)))

        local_ports = _port_bounds(self.local_ports, "local ports")
        remote_ports = _port_bounds(self.remote_ports, "remote ports")
        if proto in _ICMP_PROTOS:
            # Type and code travel in sport/dport whatever the direction.
            first = _type_bounds(self.icmp_type, "icmp type")
            second = _type_bounds(self.icmp_code, "icmp code")
            out_ports = in_ports = first + second
        elif proto == MOBILITY:
            first = _type_bounds(self.mh_type, "mh type")
            out_ports = in_ports = first + (0, _PORT_MAX)
        else:
            out_ports = local_ports + remote_ports
            in_ports = remote_ports + local_ports

        local_vm = _value_mask(local)
        remote_vm = _value_mask(remote)
        addr_len = 0
        for net in (local, remote):
            if net is not None:
                addr_len = 4 if net.version == 4 else 16
        proto_code = -1 if proto is None else proto
        object.__setattr__(self, "_compiled_out",
                           local_vm + remote_vm + (addr_len, proto_code) + out_ports)
        object.__setattr__(self, "_compiled_in",
                           remote_vm + local_vm + (addr_len, proto_code) + in_ports)

    def compiled(self, direction: Direction) -> tuple:
        return self._compiled_out if direction is Direction.OUT else self._compiled_in

    def matches(self, direction: Direction, key: FlowKey) -> bool:
        """Does the packet with this flow key match, seen in *direction*?"""
        src, dst, proto, sport, dport = key
        return _matches(self.compiled(direction), int.from_bytes(src, "big"),
                        int.from_bytes(dst, "big"), len(src), proto, sport, dport)


def _value_mask(net: Network | None) -> tuple[int, int]:
    if net is None:
        return 0, 0
    return int(net.network_address), int(net.netmask)


def _matches(c: tuple, src: int, dst: int, alen: int, proto: int, sport: int, dport: int) -> bool:
    return ((src & c[1]) == c[0] and (dst & c[3]) == c[2]
            and (c[4] == 0 or c[4] == alen) and (c[5] < 0 or c[5] == proto)
            and c[6] <= sport <= c[7] and c[8] <= dport <= c[9])


def _as_direction(value: object) -> Direction:
    if isinstance(value, Direction):
        return value
    try:
        return Direction(value)
    except (ValueError, TypeError):
        raise SpdError(f"direction must be 'in' or 'out', not {value!r}") from None


def _as_action(value: object) -> Action:
    if isinstance(value, Action):
        return value
    try:
        return Action(value)
    except (ValueError, TypeError):
        raise SpdError(f"action must be protect, bypass or discard, not {value!r}") from None


@dataclass(frozen=True)
class Policy:
    """One SPD entry.

    ``sa_bundle`` names the SAs that PROTECT applies, innermost first
    (RFC 4301 §4.5: the first entry is applied first outbound and removed
    last inbound); an entry is an SA name (str) or an SPI (int).
    ``priority``: lower wins; equal priorities keep insertion order.
    """

    name: str
    direction: Direction
    selector: Selector
    action: Action
    sa_bundle: tuple[str | int, ...] = ()
    priority: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", _as_direction(self.direction))
        object.__setattr__(self, "action", _as_action(self.action))
        if isinstance(self.sa_bundle, (str, bytes)) or not hasattr(self.sa_bundle, "__iter__"):
            raise SpdError(f"policy {self.name!r}: the SA bundle must be a list of SA names "
                           f"or SPIs, not {self.sa_bundle!r}")
        object.__setattr__(self, "sa_bundle", tuple(self.sa_bundle))
        if not isinstance(self.name, str) or not self.name:
            raise SpdError("a policy needs a non-empty name")
        if not isinstance(self.selector, Selector):
            raise SpdError(f"policy {self.name}: selector must be a Selector")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise SpdError(f"policy {self.name}: priority must be an integer")
        if self.action is Action.PROTECT and not self.sa_bundle:
            raise SpdError(f"policy {self.name}: protect needs at least one SA")
        if self.action is not Action.PROTECT and self.sa_bundle:
            raise SpdError(f"policy {self.name}: only protect policies name SAs")
        for template in self.sa_bundle:
            if isinstance(template, bool) or not isinstance(template, (str, int)) or not template:
                raise SpdError(f"policy {self.name}: SA {template!r} is neither a name nor an SPI")

    def matches(self, key: FlowKey) -> bool:
        return self.selector.matches(self.direction, key)


def template_matches(template: str | int, sa_name: str, spi: int) -> bool:
    """Does a bundle entry (SA name or SPI) designate the SA (name, spi)?"""
    if isinstance(template, int):
        return template == spi
    return template == sa_name


class SPD:
    """The ordered policy list of both directions, plus the flow cache."""

    def __init__(self, policies: Iterable[Policy] = (), *, cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise SpdError("the flow cache needs room for at least one flow")
        self.cache_size = cache_size
        #: Bumped by every add/remove; cached decisions of older generations are gone.
        self.generation = 0
        #: Lookups that had to scan the policy list, and cache clears for space.
        self.cache_misses = 0
        self.cache_clears = 0
        self._seq = itertools.count()
        self._by_name: dict[str, tuple[tuple[int, int], Policy]] = {}
        # Per direction: sort keys and compiled rows, kept in match order.
        self._order: dict[Direction, builtins.list[tuple[int, int]]] = {d: [] for d in Direction}
        self._rows: dict[Direction, builtins.list[tuple]] = {d: [] for d in Direction}
        # Tuple-space index: (addr_len, src_mask, dst_mask) -> {(src_val, dst_val):
        # [(order_key, row), ...] in match order}, as a list for a fast loop.
        self._groups: dict[Direction, dict[tuple[int, int, int], dict]] = {
            d: {} for d in Direction}
        self._group_list: dict[Direction, builtins.list[tuple]] = {d: [] for d in Direction}
        self._cache: dict[Direction, dict] = {d: {} for d in Direction}
        self._by_template: dict[str | int, builtins.list[Policy]] | None = None
        for policy in policies:
            self.add(policy)

    # -- edits ------------------------------------------------------------

    def add(self, policy: Policy) -> None:
        """Insert *policy* after every policy of lower or equal priority."""
        if not isinstance(policy, Policy):
            raise SpdError(f"expected a Policy, got {type(policy).__name__}")
        if policy.name in self._by_name:
            raise SpdError(f"policy {policy.name!r} already exists")
        order_key = (policy.priority, next(self._seq))
        direction = policy.direction
        index = bisect.bisect(self._order[direction], order_key)
        row = policy.selector.compiled(direction) + (policy,)
        self._order[direction].insert(index, order_key)
        self._rows[direction].insert(index, row)
        self._by_name[policy.name] = (order_key, policy)
        group_key = (row[4], row[1], row[3])
        groups = self._groups[direction]
        table = groups.get(group_key)
        if table is None:
            table = groups[group_key] = {}
            self._regroup(direction)
        bucket = table.setdefault((row[0], row[2]), [])
        bisect.insort(bucket, (order_key, row), key=lambda item: item[0])
        self._changed()

    def _regroup(self, direction: Direction) -> None:
        self._group_list[direction] = [key + (table,)
                                       for key, table in self._groups[direction].items()]

    def remove(self, name: str) -> Policy:
        """Remove and return the policy called *name*."""
        try:
            order_key, policy = self._by_name.pop(name)
        except KeyError:
            raise SpdError(f"no policy named {name!r}") from None
        direction = policy.direction
        index = bisect.bisect_left(self._order[direction], order_key)
        del self._order[direction][index]
        row = self._rows[direction].pop(index)
        group_key = (row[4], row[1], row[3])
        table = self._groups[direction][group_key]
        bucket = table[(row[0], row[2])]
        bucket[:] = [item for item in bucket if item[0] != order_key]
        if not bucket:
            del table[(row[0], row[2])]
            if not table:
                del self._groups[direction][group_key]
                self._regroup(direction)
        self._changed()
        return policy

    def _changed(self) -> None:
        self.generation += 1
        for cache in self._cache.values():
            cache.clear()
        self._by_template = None

    # -- queries ----------------------------------------------------------

    def get(self, name: str) -> Policy | None:
        entry = self._by_name.get(name)
        return entry[1] if entry else None

    def list(self, direction: Direction | None = None) -> builtins.list[Policy]:
        """Policies in match order (outbound first when both directions)."""
        directions = (Direction.OUT, Direction.IN) if direction is None else (direction,)
        return [row[-1] for d in directions for row in self._rows[d]]

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def lookup(self, direction: Direction, key: FlowKey) -> Policy | None:
        """The first policy matching *key* in *direction*, or ``None``.

        ``None`` means no policy matches: RFC 4301 §5 says discard.
        """
        cache = self._cache[direction]
        try:
            return cache[key]
        except KeyError:
            pass
        policy = self.lookup_uncached(direction, key)
        if len(cache) >= self.cache_size:
            cache.clear()
            self.cache_clears += 1
        cache[key] = policy
        return policy

    def lookup_uncached(self, direction: Direction, key: FlowKey) -> Policy | None:
        """The same answer as :meth:`lookup`, always by scanning the list."""
        self.cache_misses += 1
        src, dst, proto, sport, dport = key
        alen = len(src)
        s = int.from_bytes(src, "big")
        d = int.from_bytes(dst, "big")
        best_order = None
        best = None
        for group_alen, src_mask, dst_mask, table in self._group_list[direction]:
            if group_alen and group_alen != alen:
                continue
            bucket = table.get((s & src_mask, d & dst_mask))
            if bucket is None:
                continue
            for order, row in bucket:
                if best_order is not None and order >= best_order:
                    break  # the rest of this bucket comes later in match order
                if ((row[5] < 0 or row[5] == proto)
                        and row[6] <= sport <= row[7] and row[8] <= dport <= row[9]):
                    best_order = order
                    best = row[10]
                    break
        return best

    def cached_flows(self, direction: Direction) -> int:
        return len(self._cache[direction])

    def policies_for_sa(self, sa_name: str, spi: int,
                        direction: Direction = Direction.IN) -> builtins.list[Policy]:
        """PROTECT policies of *direction* whose innermost SA is (sa_name, spi), in order."""
        if self._by_template is None:
            index: dict[str | int, builtins.list[Policy]] = {}
            for d in Direction:
                for row in self._rows[d]:
                    policy = row[-1]
                    if policy.sa_bundle:
                        index.setdefault(policy.sa_bundle[0], []).append(policy)
            self._by_template = index
        found = self._by_template.get(sa_name, []) if sa_name else []
        by_spi = self._by_template.get(spi, [])
        if by_spi:
            found = sorted(set(found) | set(by_spi), key=lambda p: self._by_name[p.name][0])
        return [p for p in found if p.direction is direction]
