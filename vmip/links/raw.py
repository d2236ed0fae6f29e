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
import sys
from collections.abc import Iterable
from pathlib import Path

from vmip.links import mmsg
from vmip.links.base import (
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
    overlay_drop_reason,
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
# The rebuilt header's first 8 octets (RFC 8200 §3): version/class/flow,
# payload length, next header, hop limit; the addresses follow.
_FIXED_HEADER = struct.Struct("!IHBB")
_HEADER_LEN = 40
_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
_SOL_IPV6 = socket.IPPROTO_IPV6
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
#: Kernel structs carry ints in host byte order.
_NATIVE = sys.byteorder
#: Peers whose packed address and endpoint are remembered per link.
_SOURCE_CACHE_SIZE = 1024
#: struct cmsghdr on Linux: size_t length, int level, int type; data 8-aligned.
_CMSG_HEADER = struct.Struct("=QII")
_CMSG_ALIGN = 8
#: The whole rebuilt IPv6 header (RFC 8200 §3).
_HEADER = struct.Struct("!IHBB16s16s")
#: struct sockaddr_in6: family, port, flow info, address, scope id.
_SOCKADDR_IN6 = struct.Struct("=HHI16sI")
#: The control messages as the kernel writes them for the options set in
#: _open: in6_pktinfo (36 octets, padded to 40), then hop limit and traffic
#: class (an int each, 20 octets padded to 24).
_USUAL_CONTROL = struct.Struct("=QII16si4xQIIi4xQIIi4x")
#: Packets per recvmmsg on the ESP socket: 16 slots of 64 KiB is 1 MiB a link.
MMSG_SLOTS = 16


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


def _walk_control(control: bytearray, end: int) -> tuple[bytes | None, int, int]:
    """``(destination, hop limit, traffic class)`` from control messages in
    any order; unknown or short ones are skipped, never raised."""
    destination = None
    hop_limit = 64
    traffic_class = 0
    offset = 0
    while offset + _CMSG_HEADER.size <= end:
        length, level, kind = _CMSG_HEADER.unpack_from(control, offset)
        if length < _CMSG_HEADER.size or offset + length > end:
            break
        data = offset + _CMSG_HEADER.size
        if level == _SOL_IPV6:
            if kind == _IPV6_PKTINFO and length >= _CMSG_HEADER.size + 20:
                destination = bytes(control[data:data + 16])
            elif kind == _IPV6_HOPLIMIT and length >= _CMSG_HEADER.size + 4:
                hop_limit = int.from_bytes(control[data:data + 4], _NATIVE) & 0xFF
            elif kind == _IPV6_TCLASS and length >= _CMSG_HEADER.size + 4:
                traffic_class = int.from_bytes(control[data:data + 4], _NATIVE) & 0xFF
        offset += (length + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)
    return destination, hop_limit, traffic_class


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
        # One receive buffer per link: a 40-octet gap for the rebuilt header,
        # then room for the largest IPv6 payload (RFC 8200 §3, no jumbograms).
        self._rx_buffer = bytearray(_HEADER_LEN + MAX_IPV6_PAYLOAD)
        self._rx_payload = memoryview(self._rx_buffer)[_HEADER_LEN:]
        self._rx_sources: dict[str, tuple[bytes, Endpoint]] = {}
        self._rx_endpoints: dict[bytes, Endpoint] = {}
        self._receivers: list[mmsg.MultiReceiver] = []

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
            if proto == ESP and mmsg.available():
                # The data path: many packets per system call (recvmmsg).
                receiver = mmsg.MultiReceiver(min(self._batch, MMSG_SLOTS), MAX_IPV6_PAYLOAD,
                                              _ANCILLARY_SPACE, _HEADER_LEN)
                self._receivers.append(receiver)
                loop.add_reader(sock.fileno(), self._on_readable_batched, sock, proto, receiver)
            else:
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
        for receiver in self._receivers:
            receiver.close()
        self._receivers = []
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
        """Drain up to ``batch`` packets of one protocol's socket.

        The payload is read straight behind a 40-octet gap of one reused
        buffer (``recvmsg_into``) and the rebuilt header written into the
        gap, so a packet costs one copy out of the buffer, not a 64 KiB
        allocation and a concatenation; the peer's packed address and
        endpoint come from small caches.
        """
        counters = self.counters
        buffer, payload = self._rx_buffer, self._rx_payload
        recvmsg_into = sock.recvmsg_into
        deliver = self._on_packet
        sources = self._rx_sources
        pack_into = _FIXED_HEADER.pack_into
        received = 0
        for _ in range(self._batch):
            try:
                size, ancdata, flags, address = recvmsg_into((payload,), _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                counters["rx_error"] += 1
                break
            if flags & _MSG_TRUNC:
                counters["rx_drop_too_long"] += 1
                continue
            destination = None
            hop_limit = 64
            traffic_class = 0
            for level, kind, data in ancdata:
                if level != _SOL_IPV6:
                    continue
                if kind == _IPV6_PKTINFO and len(data) >= 20:
                    destination = data[:16]
                elif kind == _IPV6_HOPLIMIT and len(data) >= 4:
                    hop_limit = int.from_bytes(data[:4], _NATIVE) & 0xFF
                elif kind == _IPV6_TCLASS and len(data) >= 4:
                    traffic_class = int.from_bytes(data[:4], _NATIVE) & 0xFF
            if destination is None:
                counters["rx_drop_no_destination"] += 1
                continue
            host = address[0]
            known = sources.get(host) if not address[3] else None
            if known is None:
                source = socket.inet_pton(socket.AF_INET6, host)
                if address[3]:
                    # Link-local: keep the scope to reply; not cached (rare).
                    known = (source, (f"{host}%{address[3]}", 0))
                else:
                    if len(sources) >= _SOURCE_CACHE_SIZE:
                        sources.clear()  # sources come from the network: stay bounded
                    known = sources[host] = (source, (host, 0))
            source, endpoint = known
            pack_into(buffer, 0, 0x60000000 | traffic_class << 20, size, proto, hop_limit)
            buffer[8:24] = source
            buffer[24:40] = destination
            received += 1
            try:
                deliver(bytes(buffer[:_HEADER_LEN + size]), endpoint, self)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a node bug must not stall the link
                self._handler_failed()
        if received:
            counters["rx"] += received

    def _on_readable_batched(self, sock: socket.socket, proto: int,
                             receiver: mmsg.MultiReceiver) -> None:
        """As :meth:`_on_readable`, ``recvmmsg`` filling up to ``slots`` packets
        per system call; the header is rebuilt in each slot's head room."""
        counters = self.counters
        deliver = self._on_packet
        endpoints = self._rx_endpoints
        pack_header = _HEADER.pack_into
        unpack_usual = _USUAL_CONTROL.unpack_from
        unpack_name = _SOCKADDR_IN6.unpack_from
        fd = sock.fileno()
        received = 0
        rounds = max(1, self._batch // receiver.slots)
        for _ in range(rounds):
            try:
                count = receiver.receive(fd)
            except OSError:
                counters["rx_error"] += 1
                break
            if count:
                counters["rx_mmsg_batches"] += 1
            result = receiver.result
            for i in range(count):
                size, end, flags = result(i)
                if flags & _MSG_TRUNC:
                    counters["rx_drop_too_long"] += 1
                    continue
                control = receiver.controls[i]
                # The kernel writes PKTINFO, HOPLIMIT, TCLASS in that order
                # (the options set in _open): read all three with one unpack,
                # walk the messages only if the layout is another.
                if end == _USUAL_CONTROL.size:
                    (_l1, level1, kind1, destination, _ifindex, _l2, level2, kind2, hop_limit,
                     _l3, level3, kind3, traffic_class) = unpack_usual(control)
                    if not (level1 == level2 == level3 == _SOL_IPV6 and kind1 == _IPV6_PKTINFO
                            and kind2 == _IPV6_HOPLIMIT and kind3 == _IPV6_TCLASS):
                        destination, hop_limit, traffic_class = _walk_control(control, end)
                else:
                    destination, hop_limit, traffic_class = _walk_control(control, end)
                if destination is None:
                    counters["rx_drop_no_destination"] += 1
                    continue
                _family, _port, _flow, source, scope = unpack_name(receiver.names[i])
                endpoint = endpoints.get(source) if not scope else None
                if endpoint is None:
                    host = socket.inet_ntop(socket.AF_INET6, source)
                    if scope:
                        endpoint = (f"{host}%{scope}", 0)   # link-local: keep the scope
                    else:
                        if len(endpoints) >= _SOURCE_CACHE_SIZE:
                            endpoints.clear()   # sources come from the network: bounded
                        endpoint = endpoints[source] = (host, 0)
                buffer = receiver.buffers[i]
                pack_header(buffer, 0, 0x60000000 | (traffic_class & 0xFF) << 20, size, proto,
                            hop_limit & 0xFF, source, destination)
                received += 1
                try:
                    deliver(bytes(buffer[:_HEADER_LEN + size]), endpoint, self)  # type: ignore[misc]
                except Exception:  # noqa: BLE001 - a node bug must not stall the link
                    self._handler_failed()
            if count < receiver.slots:
                break
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
