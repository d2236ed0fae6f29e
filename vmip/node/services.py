"""What a node lends its helpers, and nothing more.

The helpers around the sans-IO cores (the mobility agent, the IKE manager,
the movement watcher) need a few things from the node: the clocks, the SAD,
SPD and SADB bus, the locator table, a way to send a packet the node made,
the links' care-of addresses, the wire capture, the event hub, the pump
that keeps their timers and the links' measured quality.
:class:`NodeServices` is exactly that list.  A helper gets one instead of
the node, so it cannot reach into the node's private state, and a test can
hand it a stand-in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    from vmip.ipsec.sad import SAD
    from vmip.ipsec.sadb import SadbBus
    from vmip.ipsec.spd import SPD
    from vmip.links.locators import LocatorTable
    from vmip.node.events import EventHub
    from vmip.node.pump import Pump
    from vmip.node.quality import LinkQuality


class NodeHandle(Protocol):
    """The node's side of :class:`NodeServices` (what :class:`vmip.node.runtime.Node` offers)."""

    config: Any
    clock: Callable[[], float]
    sad: SAD
    spd: SPD
    bus: SadbBus
    locators: LocatorTable
    events: EventHub
    pump: Pump
    link_quality: LinkQuality
    active_link: str | None
    loop: asyncio.AbstractEventLoop | None

    def send_inner(self, inner: bytes, ancillary: Any, now: float) -> None: ...

    def send_onwire(self, wire: bytes, endpoint: tuple[str, int], link: str) -> None: ...

    def link_coa(self, link: str | None) -> IPv6Address | None: ...

    def link_names(self) -> list[str]: ...

    def capture_wire(self, packet: bytes) -> None: ...

    def move(self, link: str) -> dict: ...

    def on_stop(self, name: str, step: Callable[[], Awaitable[None]]) -> None: ...
    def set_care_of_links(self, links: list[str], primary: str | None) -> dict: ...
    def early_test(self, link: str, peer: Any = None) -> int: ...


class NodeServices:
    """The narrow interface the node's helpers use (see the module doc)."""

    def __init__(self, node: NodeHandle) -> None:
        self._node = node
        self.clock = node.clock
        self.sad = node.sad
        self.spd = node.spd
        self.bus = node.bus
        self.locators = node.locators
        self.events = node.events
        self.pump = node.pump
        #: RTT and loss per link (vmip.node.quality): the MN picks its best link by it.
        self.link_quality = node.link_quality

    @property
    def config(self) -> Any:
        """The running config (a reload replaces it)."""
        return self._node.config

    @property
    def wall_clock(self) -> Callable[[], float]:
        return self.events.wall_clock

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The node's loop once it started (sockets of a helper's own are read there)."""
        return self._node.loop

    @property
    def active_link(self) -> str | None:
        """The link carrying an MN's CoA (the first link on other nodes)."""
        return self._node.active_link

    def link_names(self) -> list[str]:
        return self._node.link_names()

    def link_coa(self, link: str | None) -> IPv6Address | IPv4Address | None:
        return self._node.link_coa(link)

    def send_inner(self, inner: bytes, ancillary: Any, now: float) -> None:
        """A packet the helper made: SPD, ESP, IRO and routing as any other."""
        self._node.send_inner(inner, ancillary, now)

    def send_onwire(self, wire: bytes, endpoint: tuple[str, int], link: str) -> None:
        """An on-wire packet to *endpoint* on *link* (the link's MTU still applies)."""
        self._node.send_onwire(wire, endpoint, link)

    def capture_wire(self, packet: bytes) -> None:
        self._node.capture_wire(packet)

    def move(self, link: str) -> dict:
        """Make *link* the MN's access link (the movement watcher's decision)."""
        return self._node.move(link)

    def on_stop(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Await *step* when the node stops cleanly, before anything is closed
        (bounded: :data:`vmip.node.runtime.STOP_GRACE` for all steps together)."""
        self._node.on_stop(name, step)
    def early_test(self, link: str, peer: Any = None) -> int:
        """Prove *link*'s CoA to the CNs before moving there (draft §4.5.2)."""
        return self._node.early_test(link, peer)

    def set_care_of_links(self, links: list[str], primary: str | None) -> dict:
        """MN with ``multiple_care_of``: one binding per link, *primary* preferred."""
        return self._node.set_care_of_links(links, primary)
