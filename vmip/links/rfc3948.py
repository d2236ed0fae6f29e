"""The ``rfc3948`` link: standard ESP-in-UDP, for peers that are not vmip.

RFC 3948 §2: on port 4500 a datagram is either ESP (the payload starts with
a non-zero SPI), IKE (prefixed by the 4-octet zero non-ESP marker) or a NAT
keepalive (the one octet 0xFF).  On this link the on-wire addresses *are*
the underlay addresses, so:

- send: the node hands a complete on-wire packet (IPv6 header, next header
  50); the driver strips the 40-octet header and sends the ESP part to the
  endpoint.  Anything but a bare ESP packet is dropped (``tx_drop_not_esp``).
- receive: the driver rebuilds an on-wire IPv6 packet whose source is the
  datagram's source and whose destination is the datagram's destination (from
  the PKTINFO ancillary data), next header 50, hop limit 64.  IPv4 underlay
  addresses become IPv4-mapped IPv6 addresses ``::ffff:a.b.c.d``
  (RFC 4291 §2.5.5.2), so the SAD and the locator table see one address
  family.
- IKE messages, marker stripped, go to ``on_ike(message, endpoint)``;
  :meth:`Rfc3948Driver.send_ike` adds the marker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from vmip.links.base import MAX_DATAGRAM, Endpoint, LinkSettings, PacketHandler, bound_ipv6
from vmip.links.framing import (
    IP_PKTINFO,
    IPV6_HEADER_LEN,
    KIND_ESP,
    KIND_IKE,
    KIND_KEEPALIVE,
    NON_ESP_MARKER,
    build_ipv6_header,
    classify_esp_in_udp,
    ipv4_mapped,
    parse_ancillary,
)
from vmip.links.udp import UdpDriver, endpoint_of
from vmip.wire.proto import ESP

DEFAULT_PORT = 4500

#: ``on_ike(message, endpoint)``: an IKE message without the non-ESP marker.
IkeHandler = Callable[[bytes, Endpoint], None]

#: Hop limit of rebuilt packets: the UDP socket does not report the outer
#: one for IPv4-mapped traffic, and nothing downstream depends on it.
REBUILT_HOP_LIMIT = 64

_ANCILLARY_SPACE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(12)


class Rfc3948Driver(UdpDriver):
    """ESP-in-UDP link (``driver = "rfc3948"``)."""

    kind = "rfc3948"
    default_port = DEFAULT_PORT

    def __init__(self, config: LinkSettings, **options: int) -> None:
        super().__init__(config, **options)
        self._on_ike: IkeHandler | None = None

    async def start(self, loop: asyncio.AbstractEventLoop, on_packet: PacketHandler, *,
                    on_ike: IkeHandler | None = None) -> None:
        self._on_ike = on_ike
        await super().start(loop, on_packet)

    def _derived_own_addresses(self) -> frozenset[bytes]:
        # On-wire addresses are the underlay ones here: ESP to the bind address
        # is ours; an IPv4 one as the IPv4-mapped address this driver rebuilds.
        bind = self.config.bind
        if bind is not None:
            address = ipaddress.ip_address(str(bind))
            if address.version == 4 and not address.is_unspecified:
                return frozenset({ipv4_mapped(address.packed)})
        return bound_ipv6(self.config)

    def _configure(self, sock: socket.socket) -> None:
        # The rebuilt on-wire destination is the datagram's destination, which
        # only PKTINFO tells when the socket is bound to a wildcard address.
        if self._family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    # -- receive -----------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        counters = self.counters
        is_ipv4_socket = self._family == socket.AF_INET
        received = 0
        for _ in range(self._batch):
            try:
                datagram, ancdata, _flags, address = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                counters["rx_error"] += 1
                break
            kind = classify_esp_in_udp(datagram)
            if kind == KIND_KEEPALIVE:
                counters["rx_keepalive"] += 1
                continue
            if is_ipv4_socket:
                source = ipv4_mapped(socket.inet_aton(address[0]))
            else:
                source = socket.inet_pton(socket.AF_INET6, address[0])
            # IPv4 peers of an IPv6 socket as plain dotted quads, as on udp.
            endpoint = endpoint_of(address, True)
            if kind == KIND_IKE:
                self._deliver_ike(datagram[4:], endpoint)
                continue
            if kind != KIND_ESP:
                counters["rx_drop_" + kind] += 1
                continue
            destination = parse_ancillary(ancdata).destination
            if destination is None:
                counters["rx_drop_no_destination"] += 1
                continue
            packet = build_ipv6_header(source, destination, ESP, len(datagram),
                                       REBUILT_HOP_LIMIT) + datagram
            received += 1
            try:
                self._on_packet(packet, endpoint, self)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a node bug must not stall the link
                self._handler_failed()
        if received:
            counters["rx"] += received

    def _deliver_ike(self, message: bytes, endpoint: Endpoint) -> None:
        if self._on_ike is None:
            self.counters["rx_drop_ike_unhandled"] += 1
            return
        self.counters["rx_ike"] += 1
        try:
            self._on_ike(message, endpoint)
        except Exception:  # noqa: BLE001 - a node bug must not stall the link
            self._handler_failed()

    # -- send --------------------------------------------------------------

    def send(self, packet: bytes, endpoint: Endpoint) -> None:
        size = len(packet)
        if size < IPV6_HEADER_LEN + 8 or packet[0] >> 4 != 6 or packet[6] != ESP:
            # Extension headers cannot be carried: ESP-in-UDP has no IPv6 header.
            self.counters["tx_drop_not_esp"] += 1
            return
        if ((packet[4] << 8) | packet[5]) + IPV6_HEADER_LEN != size:
            self.counters["tx_drop_length"] += 1
            return
        sent = self._send_datagram(memoryview(packet)[IPV6_HEADER_LEN:], endpoint, "tx")
        if sent and self._keepalive is not None:
            self._keepalive.note_sent(endpoint)

    def send_ike(self, message: bytes, endpoint: Endpoint) -> None:
        """Send one IKE message with the non-ESP marker (RFC 3948 §2.2)."""
        sent = self._send_datagram(NON_ESP_MARKER + message, endpoint, "tx_ike")
        if sent and self._keepalive is not None:
            self._keepalive.note_sent(endpoint)
