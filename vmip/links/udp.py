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
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable

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

# UDP segmentation offload (Linux >= 4.18, udp(7)): one sendmsg carries a
# run of equal-size datagrams (the last may be shorter) and the kernel cuts
# them apart; the wire sees exactly the datagrams per-packet sends would give.
# UDP_GRO (Linux >= 5.0) is the receive half: the kernel may hand us such a
# run in one read, with the segment size in a cmsg.  Not in Python's socket.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: The kernel refuses more segments per send (UDP_MAX_SEGMENTS, 64 before 6.x).
GSO_MAX_SEGMENTS = 64
#: Bytes per GSO send: below the 65507-octet UDP payload limit of IPv4.
GSO_MAX_BYTES = 65000
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
#: Cached endpoint -> socket address mappings per link (cleared when full).
_SOCKADDR_CACHE_SIZE = 1024


def endpoint_of(address: tuple, dual_stack: bool) -> Endpoint:
    """The sender as an Endpoint: IPv4 plain (not ``::ffff:``-mapped) on a
    dual-stack socket, link-local IPv6 with its scope."""
    host = address[0]
    if dual_stack and host.startswith("::ffff:") and "." in host:
        host = host[7:]
    elif len(address) == 4 and address[3]:
        host = f"{host}%{address[3]}"
    return (host, address[1])


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
        # Endpoint -> socket address, filled by _sockaddr (bounded).
        self._sockaddrs: dict[Endpoint, tuple[str, int]] = {}
        interval = getattr(config, "keepalive", 0) or 0
        self._keepalive = KeepaliveSchedule(interval) if interval > 0 else None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        # Offloads only where this class's own send/receive loops run: a
        # subclass with its own framing (rfc3948) reads and sends per datagram.
        self._gso = type(self).send is UdpDriver.send
        self._gro = False
        #: ``(begin, end)`` called around each read burst (the node's TUN:
        #: it writes what the burst queued at its end, docs/performance.md).
        self.batch_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None

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
        self._sockaddrs.clear()  # the mapping depends on the family
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            if self._family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                0 if self._dual_stack else 1)
            grow_buffers(sock, self._socket_buffer)
            if config.interface:
                bind_to_device(sock, self.name, config.interface)
            self._configure(sock)
            if type(self)._on_readable is UdpDriver._on_readable:
                self._gro = _enable_udp_gro(sock)
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
        hooks = self.batch_hooks
        if hooks is None:
            self._drain()
            return
        begin, end = hooks
        begin()
        try:
            self._drain()
        finally:
            end()

    def _drain(self) -> None:
        if self._gro:
            self._on_readable_gro()
            return
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
                self._not_delivered(datagram, reason)
                continue
            received += 1
            try:
                deliver(datagram, endpoint_of(address, dual_stack), self)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a node bug must not stall the link
                self._handler_failed()
        if received:
            counters["rx"] += received

    def _on_readable_gro(self) -> None:
        """As the per-datagram loop, but one read may carry a run of datagrams
        the kernel coalesced (UDP_GRO); the cmsg gives the segment size."""
        sock = self._sock
        if sock is None:
            return
        recvmsg = sock.recvmsg
        deliver = self._on_packet
        counters = self.counters
        dual_stack = self._dual_stack
        received = 0
        for _ in range(self._batch):
            try:
                data, ancdata, _flags, address = recvmsg(MAX_DATAGRAM, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                counters["rx_error"] += 1
                break
            segment = 0
            for level, kind, value in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    segment = _INT.unpack_from(value)[0]
            if 0 < segment < len(data):
                counters["rx_gro_batches"] += 1
                datagrams = [data[i:i + segment] for i in range(0, len(data), segment)]
            else:
                datagrams = [data]
            endpoint = endpoint_of(address, dual_stack)
            for datagram in datagrams:
                reason = overlay_drop_reason(datagram)
                if reason is not None:
                    self._not_delivered(datagram, reason)
                    continue
                received += 1
                try:
                    deliver(datagram, endpoint, self)  # type: ignore[misc]
                except Exception:  # noqa: BLE001 - a node bug must not stall the link
                    self._handler_failed()
        if received:
            counters["rx"] += received

    def _not_delivered(self, datagram: bytes, reason: str) -> None:
        """Count a datagram that is not an on-wire packet: a NAT keepalive or a drop."""
        if datagram == NAT_KEEPALIVE:
            self.counters["rx_keepalive"] += 1
        else:
            self.counters["rx_drop_" + reason] += 1

    # -- send --------------------------------------------------------------

    def _sockaddr(self, endpoint: Endpoint) -> tuple[str, int] | None:
        """The socket address that reaches *endpoint*; ``None`` if this
        socket's family cannot (an IPv6 host on an IPv4-bound link).

        The one place endpoints become socket addresses: a dual-stack socket
        needs IPv4 hosts as ``::ffff:a.b.c.d``.  The result is cached, so the
        per-packet paths pay one dict lookup (``self._sockaddrs.get``) and
        call this only on a miss.
        """
        host = endpoint[0]
        if ":" in host:
            if self._family == socket.AF_INET:
                return None
        elif self._dual_stack:
            host = "::ffff:" + host
        address = (host, endpoint[1])
        cache = self._sockaddrs
        if len(cache) >= _SOCKADDR_CACHE_SIZE:
            cache.clear()  # endpoints are learned from the network: stay bounded
        cache[endpoint] = address
        return address

    def send_many(self, items: Iterable[tuple[bytes, Endpoint]]) -> None:
        """Send a batch; runs to one endpoint of equal-size packets (the last
        may be shorter) leave in one ``sendmsg`` with UDP_SEGMENT."""
        if not self._gso:
            super().send_many(items)
            return
        run: list[bytes] = []
        run_endpoint: Endpoint | None = None
        segment = last = total = 0
        for packet, endpoint in items:
            size = len(packet)
            if (run and endpoint == run_endpoint and last == segment and size <= segment
                    and len(run) < GSO_MAX_SEGMENTS and total + size <= GSO_MAX_BYTES):
                run.append(packet)
                last = size
                total += size
                continue
            if run:
                self._send_run(run, run_endpoint, segment)  # type: ignore[arg-type]
            run = [packet]
            run_endpoint = endpoint
            segment = last = total = size
        if run:
            self._send_run(run, run_endpoint, segment)  # type: ignore[arg-type]

    def _send_run(self, run: list[bytes], endpoint: Endpoint, segment: int) -> None:
        if len(run) == 1 or not self._gso:
            for packet in run:
                self.send(packet, endpoint)
            return
        sock = self._sock
        if sock is None:
            self.counters["tx_drop_closed"] += len(run)
            return
        address = self._sockaddrs.get(endpoint) or self._sockaddr(endpoint)
        if address is None:
            self.counters["tx_drop_family"] += len(run)
            return
        try:
            sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _U16.pack(segment))], 0, address)
        except (BlockingIOError, InterruptedError) as exc:
            self._count_send_error(exc)
            self.counters["tx_drop_full"] += len(run) - 1
            return
        except OSError as exc:
            if exc.errno in _GSO_UNSUPPORTED:
                # The route's device cannot segment (EIO) or the kernel is too
                # old: per-packet sends from now on, this run included.
                self._gso = False
                log.info("udp gso off", link=self.name, error=exc.strerror)
                self._send_run(run, endpoint, segment)
                return
            if exc.errno == errno.EINVAL:
                # A segment larger than the path MTU allows: per-packet sends
                # for this run (they may fragment, as they always did).
                self.counters["tx_gso_refused"] += 1
                for packet in run:
                    self.send(packet, endpoint)
                return
            self._count_send_error(exc)
            return
        counters = self.counters
        counters["tx"] += len(run)
        counters["tx_gso_batches"] += 1
        if self._keepalive is not None:
            self._keepalive.note_sent(endpoint)

    def send(self, packet: bytes, endpoint: Endpoint) -> None:
        sock = self._sock
        if sock is None:
            self.counters["tx_drop_closed"] += 1
            return
        address = self._sockaddrs.get(endpoint) or self._sockaddr(endpoint)
        if address is None:
            self.counters["tx_drop_family"] += 1
            return
        try:
            sock.sendto(packet, address)
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
        address = self._sockaddr(endpoint)
        if address is None:
            self.counters["tx_drop_family"] += 1
            return False
        try:
            sock.sendto(datagram, address)
        except OSError as exc:
            self._count_send_error(exc)
            return False
        self.counters[counter] += 1
        return True


_GSO_UNSUPPORTED = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


def _enable_udp_gro(sock: socket.socket) -> bool:
    """Ask for coalesced reads (UDP_GRO); False where the kernel has none."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True
