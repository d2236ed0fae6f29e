"""Link drivers carry on-wire IPv6 packets over an underlay (docs/design.md §3).

- :class:`UdpDriver` (``udp``, default): one IPv6 packet per UDP datagram,
  port 6275, IPv4 or IPv6 underlay, NAT keepalives.
- :class:`RawDriver` (``raw``): native IPv6 through raw sockets.
- :class:`Rfc3948Driver` (``rfc3948``): ESP-in-UDP on port 4500 for plain
  IPsec peers.
- :class:`LocatorTable`: on-wire address → underlay endpoint, static plus
  authenticated learning (sans-IO).

See docs/links.md for the framing, the endpoint conventions and counters.
"""

from __future__ import annotations

from vmip.links.base import (
    Endpoint,
    LinkDriver,
    LinkSettings,
    PacketHandler,
    format_endpoint,
    make_endpoint,
)
from vmip.links.errors import LinkError
from vmip.links.keepalive import KeepaliveSchedule
from vmip.links.locators import Locator, LocatorTable
from vmip.links.raw import RawDriver
from vmip.links.rfc3948 import Rfc3948Driver
from vmip.links.udp import UdpDriver

#: ``driver`` names of the config → classes.
DRIVERS: dict[str, type[LinkDriver]] = {
    "udp": UdpDriver,
    "raw": RawDriver,
    "rfc3948": Rfc3948Driver,
}

#: Default port per driver (the config loader fills it in; listed here too).
DEFAULT_PORTS = {"udp": 6275, "rfc3948": 4500, "raw": 0}


def make_driver(config: LinkSettings, **options: int) -> LinkDriver:
    """The driver for one ``[[link]]``; *options*: ``batch``, ``socket_buffer``."""
    driver = getattr(config, "driver", "udp") or "udp"
    try:
        cls = DRIVERS[driver]
    except KeyError:
        raise LinkError(f"link {config.name}: unknown driver {driver!r}; "
                        f"write one of {', '.join(DRIVERS)}") from None
    return cls(config, **options)


__all__ = [
    "DEFAULT_PORTS", "DRIVERS", "Endpoint", "KeepaliveSchedule", "LinkDriver", "LinkError",
    "LinkSettings", "Locator", "LocatorTable", "PacketHandler", "RawDriver", "Rfc3948Driver",
    "UdpDriver", "format_endpoint", "make_driver", "make_endpoint",
]
