"""The link driver contract, endpoints, and the socket helpers drivers share.

A link driver carries *on-wire* IPv6 packets (docs/design.md §2: source is a
CoA, the HA's or a CN's address) over one underlay access link.  The node
hands it ``(packet, endpoint)``; it hands the node ``(packet, endpoint,
driver)`` for every packet received.  What an endpoint means depends on the
framing:

- ``udp`` / ``rfc3948``: the underlay ``(ip, port)`` of the peer.  IPv4
  hosts are plain dotted quads (``"192.0.2.18"``), never ``::ffff:``-mapped,
  so the same peer compares equal however it was learned.
- ``raw``: ``(on-wire destination, 0)``; the OS routes.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

from vmip.links.errors import LinkError
from vmip.log import get_logger

log = get_logger(__name__)

#: ``(underlay ip, port)``; for ``raw`` links ``(on-wire destination, 0)``.
Endpoint = tuple[str, int]

#: ``on_packet(packet, endpoint, driver)``: called once per received on-wire
#: packet, from the event loop, with a complete IPv6 packet.
PacketHandler = Callable[[bytes, Endpoint, "LinkDriver"], None]

#: Datagrams drained per wake-up: large enough to amortise the event-loop
#: round, small enough that one busy link cannot starve the TUN or timers.
DEFAULT_BATCH = 64

#: Socket buffer size asked for (SO_RCVBUFFORCE as root, else capped by
#: net.core.rmem_max): bursts of full-size packets must not overflow.
DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024

#: Largest datagram we read: the UDP maximum.
MAX_DATAGRAM = 65535


class LinkSettings(Protocol):
    """The fields of ``vmip.config.LinkConfig`` a driver reads.

    A protocol, not an import, so the link layer does not depend on the
    config loader (tests and the lab may build settings of their own).
    """

    name: str
    driver: str
    interface: str | None
    bind: Any  # ipaddress.IPv4Address | IPv6Address | str | None
    # Optional: own_addresses (IPv6 addresses or None), read with getattr.
    port: int | None  # None: the driver's default (raw has no port)
    keepalive: float  # seconds; 0 = off


def make_endpoint(host: Any, port: Any) -> Endpoint:
    """Canonical endpoint from an address (``str`` or ``ipaddress``) and port.

    IPv4-mapped IPv6 addresses become plain IPv4 so that an endpoint from the
    config and one reported by a dual-stack socket compare equal.  Raises
    :class:`LinkError` for anything that is not an IP literal and a port.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise LinkError(f"endpoint port must be an integer 0..65535, not {port!r}")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if isinstance(host, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        address = host
    else:
        try:
            address = ipaddress.ip_address(host.strip("[]") if isinstance(host, str) else "?")
        except ValueError:
            raise LinkError(f"endpoint host must be an IP address, not {host!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (str(address), port)


def coerce_endpoint(value: Any) -> Endpoint:
    """:func:`make_endpoint` for a ``(host, port)`` pair of unknown shape, or
    an object with ``address`` and ``port`` (``vmip.config``'s Endpoint)."""
    if hasattr(value, "address") and hasattr(value, "port"):
        return make_endpoint(value.address, value.port)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise LinkError(f"an endpoint is (host, port), not {value!r}")
    return make_endpoint(value[0], value[1])


def format_endpoint(endpoint: Endpoint | None) -> str:
    """``192.0.2.18:6275`` or ``[2001:db8::1]:6275`` (RFC 3986 style)."""
    if endpoint is None:
        return "-"
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LinkDriver(abc.ABC):
    """One underlay access link.

    Lifecycle: ``await start(loop, on_packet)``, then ``send``/``send_many``
    from the event loop's thread, then ``await close()``.  ``send`` never
    blocks and never raises for a packet it cannot send: it counts the drop.
    ``counters`` holds ``tx``, ``rx``, ``tx_drop_<reason>``,
    ``rx_drop_<reason>``, ``rx_keepalive``, ``tx_keepalive`` ...
    """

    kind: ClassVar[str]

    def __init__(self, config: LinkSettings, *, batch: int = DEFAULT_BATCH,
                 socket_buffer: int = DEFAULT_SOCKET_BUFFER) -> None:
        if batch < 1:
            raise LinkError(f"link {config.name}: batch must be at least 1, not {batch}")
        self.config = config
        self.name: str = config.name
        self.counters: Counter[str] = Counter()
        self._batch = batch
        self._socket_buffer = socket_buffer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_packet: PacketHandler | None = None
        self._handler_error_logged = False
        self._own_addresses: frozenset[bytes] | None = None

    @abc.abstractmethod
    async def start(self, loop: asyncio.AbstractEventLoop, on_packet: PacketHandler) -> None:
        """Open the sockets and start delivering packets to *on_packet*."""

    @abc.abstractmethod
    def send(self, packet: bytes, endpoint: Endpoint) -> None:
        """Send one on-wire IPv6 packet; never blocks, drops are counted."""

    def send_many(self, items: Iterable[tuple[bytes, Endpoint]]) -> None:
        """Send a batch of ``(packet, endpoint)``; same rules as :meth:`send`."""
        send = self.send
        for packet, endpoint in items:
            send(packet, endpoint)

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reading and close every socket; safe to call twice."""

    @property
    def started(self) -> bool:
        return self._loop is not None

    def own_addresses(self) -> frozenset[bytes]:
        """This node's own on-wire addresses on this link, 16 octets each.

        The config's ``own_addresses`` when it lists them; otherwise what the
        driver derives (:meth:`_derived_own_addresses`).  The node treats
        packets to them as its own (docs/links.md, "Own on-wire addresses").
        """
        if self._own_addresses is None:
            listed = getattr(self.config, "own_addresses", None)
            if listed is not None:
                self._own_addresses = frozenset(ipaddress.IPv6Address(str(a)).packed
                                                for a in listed)
            else:
                # Derived once (the node calls this when the link starts), so
                # what 'vmip status' shows is what the node uses.
                self._own_addresses = self._derived_own_addresses()
        return self._own_addresses

    def _derived_own_addresses(self) -> frozenset[bytes]:
        """Own on-wire addresses a driver knows without being told: none on
        ``udp``, where on-wire and underlay addresses are unrelated."""
        return frozenset()

    def _handler_failed(self) -> None:
        """The node's callback raised: count it, log it once, keep reading.

        A bug upstream must not stall the link (the reader would otherwise be
        left with unread datagrams and the loop's exception handler spammed).
        """
        self.counters["rx_handler_error"] += 1
        if not self._handler_error_logged:
            self._handler_error_logged = True
            log.exception("packet handler raised", link=self.name)

    def _count_send_error(self, exc: OSError) -> None:
        if isinstance(exc, (BlockingIOError, InterruptedError)):
            # Socket buffer full: drop rather than block the event loop.
            self.counters["tx_drop_full"] += 1
            return
        self.counters["tx_error"] += 1
        reason = errno_name(exc)
        self.counters[f"tx_error_{reason}"] += 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} started={self.started}>"


def errno_name(exc: OSError) -> str:
    """``econnrefused`` ...: a counter suffix for an OSError."""
    if exc.errno is None:
        return "unknown"
    return errno.errorcode.get(exc.errno, str(exc.errno)).lower()


def bind_to_device(sock: socket.socket, link: str, interface: str) -> None:
    """SO_BINDTODEVICE: send and receive on this interface only (socket(7))."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    except OSError as exc:
        raise LinkError(f"link {link}: cannot bind to interface {interface!r}: "
                        f"{exc.strerror}") from None


def grow_buffers(sock: socket.socket, size: int) -> None:
    """Ask for large socket buffers; the FORCE variants bypass rmem_max as root."""
    if size <= 0:
        return
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass  # keep the default: correctness does not depend on it


def bound_ipv6(link: LinkSettings) -> frozenset[bytes]:
    """The link's ``bind`` as an on-wire address, when it is a global IPv6 one."""
    bind = link.bind
    if bind is None:
        return frozenset()
    try:
        address = ipaddress.ip_address(str(bind))
    except ValueError:
        return frozenset()
    if address.version != 6 or address.is_unspecified:
        return frozenset()
    return frozenset({address.packed})
