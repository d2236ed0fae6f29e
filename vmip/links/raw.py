"""The ``raw`` link: native IPv6, "real MIPv6 + IRO on the wire".

Send: one ``socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)``; with protocol 255
the kernel takes the IPv6 header we built (IPV6_HDRINCL is implied) and only
routes it, so the on-wire packet leaves exactly as the node made it.  The
endpoint is ``(on-wire destination, 0)``: the route lookup uses it.  The
kernel does not fragment such packets; one larger than the path MTU fails
with EMSGSIZE and is counted (``tx_error_emsgsize``).

Receive: one raw socket per protocol the node handles (ESP 50,
IPv6-in-IPv6 41, MH 135, and ICMPv6 58 filtered to error messages).  A raw
IPv6 socket hands over the payload without the IPv6 header (RFC 3542 §3),
so the driver rebuilds it from the source address (``recvmsg``), the
destination (IPV6_PKTINFO), the hop limit (IPV6_HOPLIMIT) and the traffic
class (IPV6_TCLASS).  The flow label and any extension headers before the
upper-layer header are not reported by the kernel and are not rebuilt: IRO
traffic has none on the wire (docs/design.md §7.1: no HAO, no RH2).

While a raw ESP socket is open the kernel delivers ESP to it instead of
answering Parameter Problem (the node uses no kernel IPsec, docs/design.md
§1; tests/links/test_raw_driver.py checks that ESP arrives).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from vmip.links.base import (
    MAX_DATAGRAM,
    Endpoint,
    LinkDriver,
    LinkSettings,
    PacketHandler,
    bind_to_device,
    bound_ipv6,
    grow_buffers,
    log,
)
from vmip.links.errors import LinkError
from vmip.links.framing import (
    MAX_IPV6_PAYLOAD,
    build_ipv6_header,
    overlay_drop_reason,
    parse_ancillary,
)
from vmip.wire.proto import ESP, ICMPV6, IPV6, MOBILITY

#: Protocols a vmip node receives on a raw link.
RAW_PROTOCOLS: tuple[int, ...] = (ESP, IPV6, MOBILITY, ICMPV6)

#: RFC 4443 §2.1: types 0..127 are errors; 1..4 are the ones defined
#: (unreachable, packet too big, time exceeded, parameter problem).  The
#: kernel answers echo and does neighbour discovery itself.
ICMPV6_ERROR_TYPES: tuple[int, ...] = (1, 2, 3, 4)

_IPPROTO_RAW = getattr(socket, "IPPROTO_RAW", 255)
_ICMP6_FILTER = 1  # <netinet/icmp6.h>, level IPPROTO_ICMPV6
_ANCILLARY_SPACE = socket.CMSG_SPACE(20) + 2 * socket.CMSG_SPACE(4)


#: The kernel's IPv6 address list of this network namespace (one line per
#: address: hex address, ifindex, prefix length, scope, flags, name).
IF_INET6 = Path("/proc/net/if_inet6")
_IFA_F_TENTATIVE = 0x40
_SCOPE_GLOBAL = 0


def interface_addresses(interface: str, source: Path = IF_INET6) -> frozenset[bytes]:
    """The global, non-tentative IPv6 addresses of *interface*, 16 octets each;
    empty when it has none or does not exist (here)."""
    try:
        lines = source.read_text().splitlines()
    except OSError:
        return frozenset()
    found = set()
    for line in lines:
        fields = line.split()
        if len(fields) != 6 or fields[5] != interface:
            continue
        try:
            packed = bytes.fromhex(fields[0])
            scope, flags = int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if len(packed) == 16 and scope == _SCOPE_GLOBAL and not flags & _IFA_F_TENTATIVE:
            found.add(packed)
    return frozenset(found)


def icmp6_filter(passed_types: Iterable[int]) -> bytes:
    """A ``struct icmp6_filter`` (RFC 3542 §3.2) blocking every type except
    *passed_types*.  A set bit blocks the type."""
    words = [0xFFFFFFFF] * 8
    for icmp_type in passed_types:
        words[icmp_type >> 5] &= ~(1 << (icmp_type & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


class RawDriver(LinkDriver):
    """Native IPv6 link (``driver = "raw"``); needs CAP_NET_RAW."""

    kind = "raw"

    def __init__(self, config: LinkSettings, *, protocols: Iterable[int] = RAW_PROTOCOLS,
                 **options: int) -> None:
        super().__init__(config, **options)
        self.protocols = tuple(dict.fromkeys(protocols))
        for proto in self.protocols:
            if not 0 < proto < 255:
                raise LinkError(f"link {self.name}: cannot receive protocol {proto}")
        self._send_sock: socket.socket | None = None
        self._receive_socks: dict[int, socket.socket] = {}

    async def start(self, loop: asyncio.AbstractEventLoop, on_packet: PacketHandler) -> None:
        if self._send_sock is not None:
            raise LinkError(f"link {self.name}: already started")
        opened: list[socket.socket] = []
        try:
            send_sock = self._open(_IPPROTO_RAW, opened)
            receive_socks = {proto: self._open(proto, opened) for proto in self.protocols}
        except BaseException:
            for sock in opened:
                sock.close()
            raise
        self._loop = loop
        self._on_packet = on_packet
        self._send_sock = send_sock
        self._receive_socks = receive_socks
        for proto, sock in receive_socks.items():
            loop.add_reader(sock.fileno(), self._on_readable, sock, proto)
        log.info("link started", link=self.name, driver=self.kind,
                 protocols=",".join(map(str, self.protocols)),
                 interface=self.config.interface or "-")

    def _open(self, proto: int, opened: list[socket.socket]) -> socket.socket:
        config = self.config
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, proto)
        except PermissionError:
            raise LinkError(
                f'link {self.name}: driver = "raw" opens raw sockets, which need root or '
                f"CAP_NET_RAW, and this process has neither; run vmip as root, give it "
                f"CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW), or write "
                f'driver = "udp" in this [[link]]') from None
        except OSError as exc:
            raise LinkError(f"link {self.name}: cannot open a raw socket for protocol "
                            f"{proto}: {exc.strerror}") from None
        opened.append(sock)
        try:
            grow_buffers(sock, self._socket_buffer)
            if config.interface:
                bind_to_device(sock, self.name, config.interface)
            if proto != _IPPROTO_RAW:
                for option in (socket.IPV6_RECVPKTINFO, socket.IPV6_RECVHOPLIMIT,
                               socket.IPV6_RECVTCLASS):
                    sock.setsockopt(socket.IPPROTO_IPV6, option, 1)
                if proto == ICMPV6:
                    sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER,
                                    icmp6_filter(ICMPV6_ERROR_TYPES))
                if config.bind is not None:
                    bind = ipaddress.ip_address(str(config.bind))
                    if bind.version != 6:
                        raise LinkError(f"link {self.name}: a raw link binds an IPv6 "
                                        f"address, not {bind}")
                    # Receive only what is addressed to bind (raw(7)).
                    sock.bind((str(bind), 0))
            sock.setblocking(False)
        except ValueError:
            raise LinkError(f"link {self.name}: bind must be an IPv6 address, "
                            f"not {config.bind!r}") from None
        except OSError as exc:
            raise LinkError(f"link {self.name}: cannot set up the raw socket for protocol "
                            f"{proto}: {exc.strerror}") from None
        return sock

    async def close(self) -> None:
        socks = list(self._receive_socks.values())
        if self._send_sock is not None:
            socks.append(self._send_sock)
        for sock in self._receive_socks.values():
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
        self._receive_socks = {}
        self._send_sock = None
        for sock in socks:
            sock.close()
        if self._loop is not None:
            log.info("link closed", link=self.name, driver=self.kind)
        self._loop = None

    def _derived_own_addresses(self) -> frozenset[bytes]:
        """The global IPv6 addresses of ``interface`` (read now), else ``bind``.

        On a native path the on-wire addresses of this node *are* its
        underlay addresses: ESP to them is for this node, with nothing
        duplicated onto its TUN.  Read once, when the node starts.
        """
        own = set(bound_ipv6(self.config))
        if self.config.interface:
            own |= interface_addresses(self.config.interface)
        return frozenset(own)

    # -- receive -----------------------------------------------------------

    def _on_readable(self, sock: socket.socket, proto: int) -> None:
        counters = self.counters
        received = 0
        for _ in range(self._batch):
            try:
                payload, ancdata, _flags, address = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                counters["rx_error"] += 1
                break
            if len(payload) > MAX_IPV6_PAYLOAD:
                counters["rx_drop_too_long"] += 1
                continue
            info = parse_ancillary(ancdata)
            if info.destination is None:
                counters["rx_drop_no_destination"] += 1
                continue
            host = address[0]
            source = socket.inet_pton(socket.AF_INET6, host)
            if address[3]:
                host = f"{host}%{address[3]}"  # link-local: keep the scope to reply
            packet = build_ipv6_header(
                source, info.destination, proto, len(payload),
                64 if info.hop_limit is None else info.hop_limit,
                0 if info.traffic_class is None else info.traffic_class) + payload
            received += 1
            try:
                self._on_packet(packet, (host, 0), self)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a node bug must not stall the link
                self._handler_failed()
        if received:
            counters["rx"] += received

    # -- send --------------------------------------------------------------

    def send(self, packet: bytes, endpoint: Endpoint) -> None:
        sock = self._send_sock
        if sock is None:
            self.counters["tx_drop_closed"] += 1
            return
        # The kernel puts this header on a real network as is: never let a
        # truncated or non-IPv6 buffer out.
        reason = overlay_drop_reason(packet)
        if reason is not None:
            self.counters["tx_drop_" + reason] += 1
            return
        try:
            sock.sendto(packet, (endpoint[0], 0))
        except OSError as exc:
            self._count_send_error(exc)
            return
        self.counters["tx"] += 1
