"""Which keys to ask IKE for: the pure part of keying, no I/O and no node.

From a node's config this module derives what the IKE manager
(:mod:`vmip.node.keying`) negotiates and installs: the traffic selectors
proposed (the config's outbound ``protect`` policies), the CHILD_SAs wanted
with each peer (:func:`child_plans`), the SPD selectors a negotiated TS pair
becomes (:func:`ts_to_selectors`), and the static part of an IKE-mode
config (:func:`static_keys`).  Everything here is a function of its
arguments, so it is tested without sockets or a running node.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from vmip.ike.payloads import TrafficSelector
from vmip.ipsec import static
from vmip.ipsec.sa import Direction, Mode
from vmip.ipsec.spd import Selector

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
from vmip.wire import proto

_ICMPV6 = proto.ICMPV6
_MH = proto.MOBILITY
_FULL_PORTS = (0, 0xFFFF)


def static_keys(config) -> static.StaticKeys:
    """The static part of a config: everything in static mode; in IKE mode
    the ``bypass``/``discard`` policies (``protect`` ones are negotiated)."""
    if str(config.keys.mode) != "ike":
        return static.from_config(config)
    policies = [pc for pc in config.policies if str(pc.action) != "protect"]
    return static.build_static((), policies, backend=config.keys.backend, source=str(config.source))


def ts_to_selectors(local: TrafficSelector, remote: TrafficSelector) -> list[Selector]:
    """SPD selectors covering one (local, remote) traffic selector pair.

    A TS is an address *range*; the SPD wants prefixes, so a range becomes
    the prefixes that summarise it (RFC 7296 §3.13.1 ranges vs RFC 4301
    §4.4.1.2 prefixes).  For ICMPv6 and MH the port fields carry type<<8|code
    (RFC 4301 §4.4.1.1); they become ``icmp_type``/``mh_type`` ranges.
    """
    if local.start.version != remote.start.version:
        return []
    protocol = local.protocol or remote.protocol or None
    local_nets: list[Network] = list(
        ipaddress.summarize_address_range(local.start, local.end))  # type: ignore[type-var]
    remote_nets: list[Network] = list(
        ipaddress.summarize_address_range(remote.start, remote.end))  # type: ignore[type-var]
    extra: dict[str, Any] = {}
    local_range = (local.start_port, local.end_port)
    remote_range = (remote.start_port, remote.end_port)
    if protocol in (_ICMPV6, _MH):
        # The type travels in the high octet of the ports (RFC 4301 §4.4.1.1).
        ranges = [r for r in (local_range, remote_range) if r != _FULL_PORTS]
        if ranges:
            low, high = ranges[0][0] >> 8, ranges[0][1] >> 8
            extra["mh_type" if protocol == _MH else "icmp_type"] = (low, high)
    elif protocol is not None:
        if local_range != _FULL_PORTS:
            extra["local_ports"] = local_range
        if remote_range != _FULL_PORTS:
            extra["remote_ports"] = remote_range
    return [Selector(local=ln, remote=rn, proto=protocol, **extra)
            for ln in local_nets for rn in remote_nets]


def ts_of_network(net, protocol: int | None, ports) -> TrafficSelector:
    low, high = ports if ports else _FULL_PORTS
    return TrafficSelector(net.network_address, net.broadcast_address, protocol or 0, low, high)


def ts_within(inner: TrafficSelector, outer: TrafficSelector) -> bool:
    """*inner* selects nothing *outer* does not (address range, protocol, ports)."""
    if inner.start.version != outer.start.version:
        return False
    # Same family (checked above): compare as integers.
    return (int(outer.start) <= int(inner.start) and int(inner.end) <= int(outer.end)
            and (outer.protocol == 0 or outer.protocol == inner.protocol)
            and outer.start_port <= inner.start_port and inner.end_port <= outer.end_port)


def is_host(ts: TrafficSelector) -> bool:
    return ts.start == ts.end


@dataclass(frozen=True)
class PolicyTs:
    """One outbound ``protect`` policy of the config, as a TS pair."""

    name: str
    local: TrafficSelector
    remote: TrafficSelector
    priority: int


@dataclass(frozen=True)
class ChildPlan:
    """One CHILD_SA we want with a peer whose ``[[ike.peer]] policies`` are set.

    Host-to-host policies whose remote end is the peer's address make a
    transport child (MN-HA MH, MN-CN, MN-MN: SA-level addresses are home
    addresses, IRO remaps them; draft §7.1); the others one tunnel child
    (MN-HA payload tunnel, outer endpoints CoA and HA; draft appendix D).
    """

    name: str
    mode: Mode
    policies: tuple[PolicyTs, ...]

    @property
    def local_ts(self) -> tuple[TrafficSelector, ...]:
        return tuple(dict.fromkeys(p.local for p in self.policies))

    @property
    def remote_ts(self) -> tuple[TrafficSelector, ...]:
        return tuple(dict.fromkeys(p.remote for p in self.policies))


def proposed_ts(config) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """TSi/TSr we propose: the config's outbound ``protect`` selectors."""
    local: list[TrafficSelector] = []
    remote: list[TrafficSelector] = []
    for pc in config.policies:
        if str(pc.action) != "protect" or pc.direction is not Direction.OUT:
            continue
        local.append(ts_of_network(pc.src, pc.protocol, pc.src_ports))
        remote.append(ts_of_network(pc.dst, pc.protocol, pc.dst_ports))
    return tuple(dict.fromkeys(local)), tuple(dict.fromkeys(remote))

def policy_entries(config) -> dict[str, PolicyTs]:
    entries = {}
    for pc in config.policies:
        if str(pc.action) != "protect" or pc.direction is not Direction.OUT:
            continue
        entries[pc.name] = PolicyTs(pc.name, ts_of_network(pc.src, pc.protocol, pc.src_ports),
                                    ts_of_network(pc.dst, pc.protocol, pc.dst_ports),
                                    pc.priority)
    return entries

def child_plans(peer, entries_by_name: dict[str, PolicyTs]) -> list[ChildPlan]:
    """The CHILD_SAs wanted with *peer* (empty: the peer names no policies,
    one child with every protect policy, the older behaviour)."""
    names = getattr(peer, "policies", ())
    if not names:
        return []
    entries = [entries_by_name[name] for name in names if name in entries_by_name]
    # MH with the HA is always transport (RFC 3776 §5.2.1, draft §7.1),
    # also on the HA, whose IKE peer address is the CoA, not the HoA.
    # An HA admitting MNs by certificate names the whole home prefix as the
    # MH remote end (narrowed to the MN's HoA later, admission.py).
    transport = [e for e in entries if is_host(e.local)
                 and ((is_host(e.remote) and e.remote.start == peer.address)
                      or e.remote.protocol == _MH)]
    tunnel = [e for e in entries if e not in transport]
    plans = []
    by_local: dict[Any, list[PolicyTs]] = {}
    for entry in transport:
        by_local.setdefault(entry.local.start, []).append(entry)
    for index, group in enumerate(by_local.values()):
        plans.append(ChildPlan(peer.name if index == 0 else f"{peer.name}-{index}",
                               Mode.TRANSPORT, tuple(group)))
    if tunnel:
        plans.append(ChildPlan(f"{peer.name}-tunnel" if plans else peer.name, Mode.TUNNEL,
                               tuple(tunnel)))
    return plans
