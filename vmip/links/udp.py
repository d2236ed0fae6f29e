"""The ``udp`` link: the overlay, one on-wire IPv6 packet per UDP datagram.

Framing (docs/links.md): the UDP payload is exactly one complete IPv6
packet, header included, so ``tshark -d udp.port==6275,ipv6`` dissects it.
The single octet 0xFF is the NAT keepalive (as in RFC 3948 §2.3); it can
never be an IPv6 packet.  Default port 6275 (the RFC number of MIPv6).

One non-blocking socket per link, read with ``loop.add_reader`` and drained
up to ``batch`` datagrams per wake-up: this is the per-packet path, and one
event-loop round per datagram would cost more than the syscall itself.
Without ``bind`` (or with ``::``) the socket is dual-stack, so one link
serves IPv4 and IPv6 underlays (and NATed IPv4 peers) alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from vmip.links.base import (
    MAX_DATAGRAM,
    Endpoint,
    LinkDriver,
    LinkSettings,
    PacketHandler,
    bind_to_device,
    format_endpoint,
    grow_buffers,
    log,
)
from vmip.links.errors import LinkError
from vmip.links.framing import NAT_KEEPALIVE, overlay_drop_reason
from vmip.links.keepalive import KeepaliveSchedule

DEFAULT_PORT = 6275


class UdpDriver(LinkDriver):
    """The overlay link (``driver = "udp"``)."""

    kind = "udp"
    default_port = DEFAULT_PORT

    def __init__(self, config: LinkSettings, **options: int) -> None:
        super().__init__(config, **options)
        self._sock: socket.socket | None = None
        self._family = socket.AF_INET6
        # A dual-stack AF_INET6 socket reports IPv4 peers as ::ffff:a.b.c.d
        # and needs that form to send to them.
        self._dual_stack = False
        interval = getattr(config, "keepalive", 0) or 0
        self._keepalive = KeepaliveSchedule(interval) if interval > 0 else None
        self._keepalive_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self, loop: asyncio.AbstractEventLoop, on_packet: PacketHandler) -> None:
        if self._sock is not None:
            raise LinkError(f"link {self.name}: already started")
        sock = self._open_socket()
        self._sock = sock
        self._loop = loop
        self._on_packet = on_packet
        loop.add_reader(sock.fileno(), self._on_readable)
        if self._keepalive is not None:
            self._arm_keepalive(self._keepalive.start(loop.time()))
        log.info("link started", link=self.name, driver=self.kind,
                 local=format_endpoint(self.local_endpoint),
                 interface=self.config.interface or "-")

    async def close(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        self._loop = None
        log.info("link closed", link=self.name, driver=self.kind)

    @property
    def local_endpoint(self) -> Endpoint:
        """The bound ``(address, port)``; useful with ``port = 0``."""
        if self._sock is None:
            raise LinkError(f"link {self.name}: not started")
        host, port = self._sock.getsockname()[:2]
        return (host, port)

    def _open_socket(self) -> socket.socket:
        config = self.config
        bind = config.bind
        host = str(bind) if bind is not None else "::"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise LinkError(f"link {self.name}: bind must be an IP address, not {host!r}") \
                from None
        self._family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        self._dual_stack = self._family == socket.AF_INET6 and address.is_unspecified
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if self._family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                0 if self._dual_stack else 1)
            grow_buffers(sock, self._socket_buffer)
            if config.interface:
                bind_to_device(sock, self.name, config.interface)
            self._configure(sock)
            sock.bind((host, self._port()))
            sock.setblocking(False)
        except LinkError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise LinkError(f"link {self.name}: cannot bind {self.kind} socket to "
                            f"{format_endpoint((host, self._port()))}: {exc.strerror}") from None
        return sock

    def _port(self) -> int:
        port = self.config.port
        return self.default_port if port is None else int(port)

    def _configure(self, sock: socket.socket) -> None:
        """Hook for subclasses: socket options before bind."""

    # -- receive -----------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        deliver = self._on_packet
        counters = self.counters
        dual_stack = self._dual_stack
        received = 0
        for _ in range(self._batch):
            try:
                datagram, address = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # e.g. ECONNREFUSED reported for an earlier send: nothing to read.
                counters["rx_error"] += 1
                break
            reason = overlay_drop_reason(datagram)
            if reason is not None:
                if len(datagram) == 1 and datagram[0] == 0xFF:
                    counters["rx_keepalive"] += 1
                else:
                    counters["rx_drop_" + reason] += 1
                continue
            host = address[0]
            if dual_stack and host.startswith("::ffff:") and "." in host:
                host = host[7:]
            elif len(address) == 4 and address[3]:
                host = f"{host}%{address[3]}"  # link-local: keep the scope
            received += 1
            try:
                deliver(datagram, (host, address[1]), self)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a node bug must not stall the link
                self._handler_failed()
        if received:
            counters["rx"] += received

    # -- send --------------------------------------------------------------

    def send(self, packet: bytes, endpoint: Endpoint) -> None:
        sock = self._sock
        if sock is None:
            self.counters["tx_drop_closed"] += 1
            return
        host = endpoint[0]
        if ":" in host:
            if self._family == socket.AF_INET:
                self.counters["tx_drop_family"] += 1
                return
        elif self._dual_stack:
            host = "::ffff:" + host
        try:
            sock.sendto(packet, (host, endpoint[1]))
        except OSError as exc:
            self._count_send_error(exc)
            return
        self.counters["tx"] += 1
        if self._keepalive is not None:
            self._keepalive.note_sent(endpoint)

    # -- NAT keepalives ----------------------------------------------------

    def add_keepalive_target(self, endpoint: Endpoint) -> None:
        """Keep the NAT mapping towards *endpoint* open (no-op when the
        link's ``keepalive`` is 0).  The node adds its peers' endpoints."""
        if self._keepalive is not None:
            self._keepalive.add_target(endpoint)

    def remove_keepalive_target(self, endpoint: Endpoint) -> None:
        if self._keepalive is not None:
            self._keepalive.remove_target(endpoint)

    def send_keepalive(self, endpoint: Endpoint) -> None:
        """Send one NAT keepalive now (e.g. right after a link comes up, to
        open the mapping before the first timer)."""
        self._send_datagram(NAT_KEEPALIVE, endpoint, "tx_keepalive")

    @property
    def keepalive_interval(self) -> float:
        """Seconds between keepalives; 0 when they are off."""
        return 0.0 if self._keepalive is None else self._keepalive.interval

    def _arm_keepalive(self, deadline: float | None) -> None:
        if deadline is not None and self._loop is not None:
            self._keepalive_timer = self._loop.call_at(deadline, self._on_keepalive_timer)

    def _on_keepalive_timer(self) -> None:
        schedule, loop, sock = self._keepalive, self._loop, self._sock
        if schedule is None or loop is None or sock is None:
            return
        for endpoint in schedule.due(loop.time()):
            self._send_datagram(NAT_KEEPALIVE, endpoint, "tx_keepalive")
        self._arm_keepalive(schedule.next_deadline())

    def _send_datagram(self, datagram: bytes | memoryview, endpoint: Endpoint,
                       counter: str) -> bool:
        """Send a datagram that is not an on-wire packet (keepalive, IKE)."""
        sock = self._sock
        if sock is None:
            self.counters["tx_drop_closed"] += 1
            return False
        host = endpoint[0]
        if ":" in host:
            if self._family == socket.AF_INET:
                self.counters["tx_drop_family"] += 1
                return False
        elif self._dual_stack:
            host = "::ffff:" + host
        try:
            sock.sendto(datagram, (host, endpoint[1]))
        except OSError as exc:
            self._count_send_error(exc)
            return False
        self.counters[counter] += 1
        return True
