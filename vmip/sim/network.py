"""A simulated underlay: access links with delay, jitter, loss, rate, NAT and up/down.

Every node's link is an *access link* to one router, as in the lab
(docs/lab.md): a datagram crosses the sender's access link (its uplink
direction), then the receiver's (its downlink direction).  Each direction
has a :class:`~vmip.lab.emulation.LinkProfile` (delay and jitter in ms, loss
as a fraction, rate in Mbit/s) and keeps its datagrams in order: jitter
delays, it never reorders (as the lab's NFQUEUE emulation does).  An access
link behind NAT has its source endpoint rewritten to the NAT's public address
and a port of its own (endpoint-independent mapping, RFC 4787 §4.1), and
only datagrams to a mapping that exists come back in.

A link that is down drops what it would send and what arrives for it, also
datagrams already in flight when it went down.  Every random draw comes from
one seeded generator in the order the datagrams are sent, so a run is a
function of its seed.

:class:`SimLink` is the link-driver port for a simulated node: the
``udp`` framing, one on-wire IPv6 packet per datagram, carried here.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmip.lab.emulation import LinkProfile
from vmip.links.base import Endpoint, LinkDriver, LinkSettings, PacketHandler

#: Ports the simulated NAT hands out, in order.
NAT_FIRST_PORT = 40000


@dataclass
class _Direction:
    profile: LinkProfile = field(default_factory=LinkProfile)
    #: When the last datagram in this direction left (FIFO, rate limit).
    busy_until: float = 0.0
    last_arrival: float = 0.0
    #: Datagrams on their way through this direction, oldest first (an uplink
    #: hands them to the receiver's downlink, a downlink to the receiver).
    #: The loop's timer heap does not keep the order of timers due at the same
    #: instant, so each timer hands over the oldest one.
    in_flight: deque[tuple[Any, ...]] = field(default_factory=deque)


@dataclass
class AccessLink:
    """One node's link to the router: its underlay address and both directions."""

    node: str
    name: str
    address: str
    up: bool = True
    nat: str | None = None
    uplink: _Direction = field(default_factory=_Direction)
    downlink: _Direction = field(default_factory=_Direction)


class SimNetwork:
    """The router and every access link; owns the random draws and the clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seed: int = 0) -> None:
        self.loop = loop
        self.rng = random.Random(seed)
        self.access: dict[tuple[str, str], AccessLink] = {}
        self.counters: Counter[str] = Counter()
        self._by_address: dict[str, AccessLink] = {}
        self._listeners: dict[Endpoint, SimLink] = {}
        self._nat_out: dict[tuple[str, Endpoint], Endpoint] = {}
        self._nat_in: dict[Endpoint, tuple[AccessLink, Endpoint]] = {}
        self._next_nat_port: dict[str, int] = {}
        #: Called as ``(sender AccessLink, receiver AccessLink | None, packet, verdict)``.
        self.observers: list[Callable[[AccessLink, AccessLink | None, bytes, str], None]] = []
        #: An on-path attacker's hook, called as ``(sender AccessLink, packet, destination)``
        #: for every datagram sent; ``True`` takes the datagram off the wire.
        self.interceptors: list[Callable[[AccessLink, bytes, Endpoint], bool]] = []

    # -- topology ----------------------------------------------------------------

    def add_access(self, node: str, name: str, address: str, *, nat: str | None = None,
                   profile: LinkProfile | None = None) -> AccessLink:
        link = AccessLink(node, name, address, nat=nat)
        if profile is not None:
            link.uplink.profile = link.downlink.profile = profile
        self.access[(node, name)] = link
        self._by_address[address] = link
        return link

    def shape(self, node: str, name: str, profile: LinkProfile) -> None:
        link = self.access[(node, name)]
        link.uplink.profile = link.downlink.profile = profile

    def set_up(self, node: str, name: str, up: bool) -> None:
        self.access[(node, name)].up = up

    def is_up(self, node: str, name: str) -> bool:
        return self.access[(node, name)].up

    # -- sockets -------------------------------------------------------------------

    def listen(self, link: SimLink) -> None:
        self._listeners[link.local_endpoint] = link

    def unlisten(self, link: SimLink) -> None:
        if self._listeners.get(link.local_endpoint) is link:
            del self._listeners[link.local_endpoint]

    # -- datagrams -----------------------------------------------------------------

    def transmit(self, sender: SimLink, packet: bytes, destination: Endpoint) -> None:
        """One datagram from *sender*'s socket to *destination* (an underlay endpoint)."""
        src_access = self._by_address.get(sender.local_endpoint[0])
        if src_access is None or not src_access.up:
            self._verdict(src_access, None, packet, "sender_down")
            return
        for intercept in self.interceptors:
            if intercept(src_access, packet, destination):
                self._verdict(src_access, None, packet, "intercepted")
                return
        source = sender.local_endpoint
        if src_access.nat is not None:
            source = self._nat_map(src_access, source)
        target = self._resolve(destination)
        if target is None:
            self._verdict(src_access, None, packet, "no_route")
            return
        dst_access, dst_endpoint = target
        now = self.loop.time()
        # Both directions' random draws now, in send order (a run is a function
        # of its seed); the receiving direction is entered when the datagram
        # reaches it, so that its order is that of arrival there: a datagram
        # of a fast link is not held behind one sent earlier on a slow link.
        up_lost, up_delay = self._draw(src_access.uplink)
        down_lost, down_delay = (True, 0.0) if up_lost else self._draw(dst_access.downlink)
        if down_lost:
            self._verdict(src_access, dst_access, packet, "lost")
            return
        uplink = src_access.uplink
        reached = self._cross(uplink, len(packet), now, up_delay)
        uplink.in_flight.append((src_access, dst_access, dst_endpoint, packet, source,
                                 down_delay))
        self.loop.call_at(reached, self._enter_next, uplink)

    def _enter_next(self, uplink: _Direction) -> None:
        self._enter_downlink(*uplink.in_flight.popleft())

    def _enter_downlink(self, src_access: AccessLink, dst_access: AccessLink,
                        dst_endpoint: Endpoint, packet: bytes, source: Endpoint,
                        delay: float) -> None:
        direction = dst_access.downlink
        arrival = self._cross(direction, len(packet), self.loop.time(), delay)
        direction.in_flight.append((src_access, dst_access, dst_endpoint, packet, source))
        self.loop.call_at(arrival, self._arrive_next, direction)

    def _arrive_next(self, direction: _Direction) -> None:
        self._arrive(*direction.in_flight.popleft())

    def _arrive(self, src_access: AccessLink, dst_access: AccessLink, dst_endpoint: Endpoint,
                packet: bytes, source: Endpoint) -> None:
        if not dst_access.up:
            self._verdict(src_access, dst_access, packet, "receiver_down")
            return
        listener = self._listeners.get(dst_endpoint)
        if listener is None:
            self._verdict(src_access, dst_access, packet, "port_closed")
            return
        self._verdict(src_access, dst_access, packet, "delivered")
        listener.deliver(packet, source)

    def _draw(self, direction: _Direction) -> tuple[bool, float]:
        """This direction's random draws for one datagram: (lost, delay in s)."""
        profile = direction.profile
        if profile.loss and self.rng.random() < profile.loss:
            return True, 0.0
        delay = profile.delay_ms / 1000.0
        if profile.jitter_ms:
            delay += self.rng.uniform(-profile.jitter_ms, profile.jitter_ms) / 1000.0
        return False, max(delay, 0.0)

    @staticmethod
    def _cross(direction: _Direction, size: int, start: float, delay: float) -> float:
        """When a datagram entering *direction* at *start* leaves it (FIFO, rate)."""
        profile = direction.profile
        departure = max(start, direction.busy_until)
        if profile.rate_mbit:
            departure += size * 8 / (profile.rate_mbit * 1e6)
        direction.busy_until = departure
        arrival = max(departure + delay, direction.last_arrival)
        direction.last_arrival = arrival
        return arrival

    def _resolve(self, destination: Endpoint) -> tuple[AccessLink, Endpoint] | None:
        inbound = self._nat_in.get(destination)
        if inbound is not None:
            return inbound
        access = self._by_address.get(destination[0])
        if access is None or access.nat is not None:
            return None     # nobody there, or a private address behind a NAT
        return access, destination

    def _nat_map(self, access: AccessLink, source: Endpoint) -> Endpoint:
        assert access.nat is not None
        key = (access.nat, source)
        mapped = self._nat_out.get(key)
        if mapped is None:
            port = self._next_nat_port.get(access.nat, NAT_FIRST_PORT)
            self._next_nat_port[access.nat] = port + 1
            mapped = (access.nat, port)
            self._nat_out[key] = mapped
            self._nat_in[mapped] = (access, source)
        return mapped

    def _verdict(self, src: AccessLink | None, dst: AccessLink | None, packet: bytes,
                 verdict: str) -> None:
        self.counters[verdict] += 1
        if src is not None:
            for observer in self.observers:
                observer(src, dst, packet, verdict)


class SimLink(LinkDriver):
    """The ``udp`` link driver of a simulated node: datagrams through :class:`SimNetwork`."""

    kind = "udp"

    def __init__(self, config: LinkSettings, network: SimNetwork, address: str,
                 port: int) -> None:
        super().__init__(config)
        self.network = network
        self.local_endpoint: Endpoint = (address, port)

    async def start(self, loop: asyncio.AbstractEventLoop, on_packet: PacketHandler,
                    **_: object) -> None:
        self.open(loop, on_packet)

    def open(self, loop: asyncio.AbstractEventLoop, on_packet: PacketHandler) -> None:
        """:meth:`start` without awaiting (nothing here waits)."""
        self._loop = loop
        self._on_packet = on_packet
        self.network.listen(self)

    def send(self, packet: bytes, endpoint: Endpoint) -> None:
        if self._loop is None:
            self.counters["tx_drop_closed"] += 1
            return
        self.counters["tx"] += 1
        self.network.transmit(self, packet, endpoint)

    def deliver(self, packet: bytes, source: Endpoint) -> None:
        handler = self._on_packet
        if handler is None:
            return
        self.counters["rx"] += 1
        try:
            handler(packet, source, self)
        except Exception:  # noqa: BLE001 - a node bug costs one packet (counted), not the run
            self._handler_failed()

    async def close(self) -> None:
        self.network.unlisten(self)
        self._loop = None
        self._on_packet = None
