"""The TUN device: where inner packets enter and leave the node.

Opened with python-pytun (``IFF_TUN | IFF_NO_PI``: every read and write is
exactly one IP packet, no extra header) and configured over netlink with
pyroute2: MTU, link up, addresses, routes.  Reads are non-blocking and
drained in batches, so one event-loop wake-up moves up to ``batch`` packets
(as the link drivers do: 64 per wake-up by default, docs/links.md).

The device is not persistent: closing the file descriptor removes it, with
its addresses and routes, also when the process dies.  Except a *prepared*
one: ``vmip tun create`` (root, once) makes a persistent TUN owned by a user,
with the node's MTU, addresses and routes (:func:`create_persistent`); that
user may then attach to it without any capability (the kernel checks only
the owner, drivers/net/tun.c tun_not_capable()), and :meth:`TunDevice.open`
checks its configuration instead of making it.  Closing leaves it in place.

Offload (``offload=True``, the default): the device is opened with
``IFF_VNET_HDR``, so every read and write starts with a 10-octet
``virtio_net_hdr``.  Reads: no offload is offered to the kernel
(``TUNSETOFFLOAD`` 0), so it hands over ordinary, fully checksummed packets.
Writes: packets queued with :meth:`TunDevice.write_soon` are flushed once per
event-loop round, and consecutive TCP/IPv6 segments of one flow go to the
kernel as one GSO super-packet (receive-side coalescing, as Linux GRO and
wireguard-go's tun offload do): one system call and one trip through the
kernel's receive path for up to 64 KB instead of per 1.4 KB segment.
The kernel verifies the merged TCP checksum, computed from the headers.
docs/performance.md says why and what is checked.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import pytun
from pyroute2 import IPRoute, NetlinkError

from vmip.errors import VmipError
from vmip.log import get_logger
from vmip.wire import proto
from vmip.wire.errors import WireError
from vmip.wire.icmpv6 import PACKET_TOO_BIG, PacketTooBig, build_icmpv6_packet, may_send_error

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

log = get_logger(__name__)

DEFAULT_NAME: Final = "vmip0"
DEFAULT_MTU: Final = 1400
#: Packets moved per event-loop wake-up.
DEFAULT_BATCH: Final = 64
#: The TUN's transmit queue (txqueuelen), in packets: the kernel's default
#: of 500 became a standing queue in front of the node under TCP load (the
#: kernel orphans a packet entering a TUN's ring, so TCP Small Queues does
#: not limit it), and a ping waited behind it: 23-50 ms against 8-13 ms with
#: 64, at the same throughput (docs/performance.md).  One read batch.
TX_QUEUE_LEN: Final = DEFAULT_BATCH
#: IPv6 needs links of at least 1280 octets (RFC 8200 §5); Linux turns IPv6
#: off on a device with a smaller MTU.
IPV6_MIN_MTU: Final = 1280
IPV4_MIN_MTU: Final = 68
MAX_MTU: Final = 65535
# The largest packet the device can hand us: an MTU cannot exceed 65535, and
# a buffer smaller than a packet would truncate it silently.
_READ_SIZE: Final = 65536
# Linux interface names: IFNAMSIZ (16) including the terminating NUL.
_MAX_NAME_LEN: Final = 15
# IFA_F_NODAD: without it the kernel marks a new IPv6 address tentative and
# clears the mark from a work queue, later, even on a NOARP device such as a
# TUN where it skips DAD itself; until then the address cannot be a source
# (connect() fails with EADDRNOTAVAIL).  Nobody else is on a TUN link, so
# there is no duplicate to detect.
_IFA_F_NODAD: Final = 0x02

Address = str | ipaddress.IPv4Interface | ipaddress.IPv6Interface
Route = str | ipaddress.IPv4Network | ipaddress.IPv6Network


class TunError(VmipError):
    """The TUN device cannot be opened, configured or used."""


class VnetHeaderError(TunError):
    """A ``virtio_net_hdr`` that is truncated or inconsistent with its packet."""


# -- virtio_net_hdr and TCP coalescing (GRO) ---------------------------------

IFF_VNET_HDR: Final = 0x4000
_TUNSETOFFLOAD: Final = 0x400454D0
#: sizeof(struct virtio_net_hdr): the tun default (TUNSETVNETHDRSZ not used).
VNET_HDR_LEN: Final = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1
VIRTIO_NET_HDR_F_DATA_VALID: Final = 2
VIRTIO_NET_HDR_GSO_NONE: Final = 0
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
VIRTIO_NET_HDR_GSO_UDP: Final = 3
VIRTIO_NET_HDR_GSO_TCPV6: Final = 4
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5
VIRTIO_NET_HDR_GSO_ECN: Final = 0x80
# Legacy virtio header fields are in the host's byte order (tun without
# TUNSETVNETLE/BE), hence "=".
_VNET = struct.Struct("=BBHHHH")
_PLAIN_VNET_HDR: Final = bytes(VNET_HDR_LEN)
_GSO_TYPES: Final = frozenset({VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
                               VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_TCPV6,
                               VIRTIO_NET_HDR_GSO_UDP_L4})
_IPPROTO_TCP: Final = proto.TCP
_TCP_ACK: Final = 0x10
_TCP_PSH: Final = 0x08
#: The largest packet a merge may build: the IPv6 payload length is 16 bits,
#: and Linux GRO stops at 64 KB too.
GRO_MAX_PACKET: Final = 65535


@dataclass(frozen=True)
class VnetHeader:
    """``struct virtio_net_hdr`` (virtio spec §5.1.6, linux/virtio_net.h)."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _VNET.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                          self.csum_start, self.csum_offset)


def parse_vnet_header(frame: bytes) -> tuple[VnetHeader, bytes]:
    """Split what a ``IFF_VNET_HDR`` TUN read returned into header and packet.

    Raises :class:`VnetHeaderError` (and nothing else) when the frame is
    shorter than the header, names an unknown flag or GSO type, asks for a
    checksum outside the packet, or is GSO without a segment size.
    """
    if len(frame) < VNET_HDR_LEN:
        raise VnetHeaderError(f"virtio_net_hdr needs {VNET_HDR_LEN} octets, got {len(frame)}")
    header = VnetHeader(*_VNET.unpack_from(frame))
    packet = frame[VNET_HDR_LEN:]
    if header.flags & ~(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID | 4):
        raise VnetHeaderError(f"unknown virtio_net_hdr flags {header.flags:#x}")
    if header.gso_type & ~VIRTIO_NET_HDR_GSO_ECN not in _GSO_TYPES:
        raise VnetHeaderError(f"unknown GSO type {header.gso_type:#x}")
    if header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM \
            and header.csum_start + header.csum_offset + 2 > len(packet):
        raise VnetHeaderError(f"checksum at {header.csum_start}+{header.csum_offset} "
                              f"is outside a {len(packet)}-octet packet")
    if header.gso_type != VIRTIO_NET_HDR_GSO_NONE and header.gso_size == 0:
        raise VnetHeaderError("GSO packet without a segment size")
    return header, packet


def _ones_complement_residue(data: bytes) -> int:
    """The 16-bit one's complement sum of *data* (RFC 1071), modulo 0xFFFF.

    Each 16-bit word of a big-endian integer weighs 2**(16k) ≡ 1 (mod
    0xFFFF), so the whole integer modulo 0xFFFF is the end-around-carry sum:
    one big-integer operation instead of a Python loop over words.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # pad the odd octet with a zero (RFC 1071 §4.1)
    return value % 0xFFFF


def tcp6_checksum_ok(packet: bytes) -> bool:
    """True when the TCP checksum of an IPv6 packet without extension headers
    verifies over the RFC 8200 §8.1 pseudo-header."""
    residue = (int.from_bytes(packet[8:40], "big") + len(packet) - 40 + _IPPROTO_TCP
               + _ones_complement_residue(packet[40:])) % 0xFFFF
    return residue == 0


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a partial checksum (``VIRTIO_NET_HDR_F_NEEDS_CSUM``): the field
    holds the pseudo-header sum; fold everything from *csum_start* into it."""
    residue = _ones_complement_residue(packet[csum_start:])
    checksum = (0xFFFF - residue) % 0xFFFF
    at = csum_start + csum_offset
    return packet[:at] + checksum.to_bytes(2, "big") + packet[at + 2:]


def _tcp6_flow(packet: bytes) -> tuple[bytes, int, int] | None:
    """``(flow key, TCP header end, flags)`` for a TCP/IPv6 data segment that
    may be coalesced, or None.

    Mergeable (as Linux's tcp_gro_receive): IPv6 without extension headers,
    a length field that matches, data present, flags ACK or ACK+PSH only.
    The key holds everything two segments must share: the first 4 octets
    (traffic class and flow label, ECN included), hop limit, addresses,
    ports, acknowledgement number, data offset, window, options.
    """
    size = len(packet)
    if size < 60 or packet[0] >> 4 != 6 or packet[6] != _IPPROTO_TCP \
            or ((packet[4] << 8) | packet[5]) + 40 != size:
        return None
    header_end = 40 + ((packet[52] >> 4) << 2)
    flags = packet[53]
    if header_end >= size or header_end < 60 or packet[52] & 0x0F \
            or flags & ~_TCP_PSH != _TCP_ACK:
        return None
    key = packet[0:4] + packet[7:44] + packet[48:53] + packet[54:56] + packet[58:header_end]
    return key, header_end, flags


class _Run:
    """Segments of one flow being merged.

    The merged checksum comes from the headers alone: a segment whose
    checksum verifies has payload sum ≡ −(pseudo-header + TCP header), so
    the payload sums add up without reading the payloads.  The kernel then
    verifies the merged packet in full (no NEEDS_CSUM flag): a segment with
    a bad checksum makes its whole super-packet fail, and TCP retransmits.
    """

    __slots__ = ("first", "header_end", "header_sums", "next_seq", "open", "payloads",
                 "push", "segment", "size")
    payloads: list[memoryview]

    def __init__(self, packet: bytes, header_end: int, flags: int) -> None:
        self.first = packet
        self.header_end = header_end
        self.segment = len(packet) - header_end
        # Views, not copies: the join in frame() is the only copy.
        self.payloads = [memoryview(packet)[header_end:]]
        self.next_seq = (int.from_bytes(packet[44:48], "big") + self.segment) & 0xFFFFFFFF
        self.size = len(packet)
        self.push = bool(flags & _TCP_PSH)
        # PSH ends a run: the sender wants this delivered now.  An odd
        # segment size would shift later payloads off 16-bit alignment.
        self.open = not self.push and not self.segment & 1
        # TCP length + TCP header (checksum included) of every segment.
        self.header_sums = len(packet) - 40 + int.from_bytes(packet[40:header_end], "big")

    def take(self, packet: bytes, header_end: int, flags: int) -> bool:
        payload = len(packet) - header_end
        if not self.open or payload > self.segment \
                or int.from_bytes(packet[44:48], "big") != self.next_seq \
                or self.size + payload > GRO_MAX_PACKET:
            return False
        self.payloads.append(memoryview(packet)[header_end:])
        self.header_sums += len(packet) - 40 + int.from_bytes(packet[40:header_end], "big")
        self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
        self.size += payload
        if flags & _TCP_PSH:
            self.push = True
            self.open = False
        if payload < self.segment:
            self.open = False  # only the last segment may be short
        return True

    def frame(self) -> tuple[bytes, bytes, int]:
        """``(virtio_net_hdr, packet, segments)`` for the kernel."""
        first = self.first
        count = len(self.payloads)
        if count == 1:
            return _PLAIN_VNET_HDR, first, 1
        header_end = self.header_end
        tcp_length = self.size - 40
        flags = first[53] | (_TCP_PSH if self.push else 0)
        head = b"".join((first[40:53], bytes((flags,)), first[54:56], b"\0\0",
                         first[58:header_end]))
        # Σ payloads ≡ −Σ (pseudo-header + TCP header) over the segments; the
        # addresses and protocol number appear once per segment there.
        addresses = int.from_bytes(first[8:40], "big")
        total = (addresses + tcp_length + _IPPROTO_TCP + int.from_bytes(head, "big")
                 - (count * (addresses + _IPPROTO_TCP) + self.header_sums)) % 0xFFFF
        checksum = (0xFFFF - total) % 0xFFFF
        packet = b"".join((first[0:4], tcp_length.to_bytes(2, "big"), first[6:40],
                           head[:16], checksum.to_bytes(2, "big"), head[18:], *self.payloads))
        header = _VNET.pack(0, VIRTIO_NET_HDR_GSO_TCPV6, header_end, self.segment, 0, 0)
        return header, packet, count


def coalesce_tcp(packets: Iterable[bytes]) -> list[tuple[bytes, bytes, int]]:
    """Merge in-order TCP/IPv6 segments of each flow into GSO super-packets.

    Returns ``(virtio_net_hdr, packet, segments)`` per write.  Packets that
    cannot merge pass unchanged with a zero header.  Order within a flow is
    kept; a merge happens only for a segment whose sequence number follows
    the previous one exactly, with no longer payload than the first (the
    GSO segment size), so the kernel's resegmentation, if it forwards the
    packet, gives back the original segments.
    """
    runs: list[_Run | bytes] = []
    open_runs: dict[bytes, _Run] = {}
    for packet in packets:
        flow = _tcp6_flow(packet)
        if flow is None:
            runs.append(packet)
            continue
        key, header_end, flags = flow
        run = open_runs.get(key)
        if run is not None and run.take(packet, header_end, flags):
            continue
        run = _Run(packet, header_end, flags)
        open_runs[key] = run
        runs.append(run)
    return [(_PLAIN_VNET_HDR, item, 1) if isinstance(item, bytes) else item.frame()
            for item in runs]


@dataclass
class TunCounters:
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_batches: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0  # the device queue was full
    tx_errors: int = 0  # the kernel refused the packet (not IPv4/IPv6, device down)
    tx_gro_writes: int = 0  # super-packets written (each carries 2+ segments)
    tx_gro_segments: int = 0  # segments that went out inside them
    rx_offload_dropped: int = 0  # a GSO read, never asked for (TUNSETOFFLOAD 0)
    icmp_errors_sent: int = 0
    icmp_errors_suppressed: int = 0  # RFC 4443 §2.4(e) or the rate limit


class IcmpErrorRateLimiter:
    """Token bucket for ICMPv6 error messages, sans-IO (RFC 4443 §2.4(f) requires a limit).

    ``allow(now)`` takes a monotonic time in seconds and says whether one
    more error may go out.
    """

    def __init__(self, rate_per_second: float = 100.0, burst: int = 20):
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_second
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def packet_too_big(packet: bytes, mtu: int, src: bytes | ipaddress.IPv6Address) -> bytes:
    """An ICMPv6 Packet Too Big (RFC 4443 §3.2) about *packet*, from *src* to its sender.

    A complete IPv6 packet: it quotes as much of *packet* as fits in the
    minimum MTU of 1280 octets (§2.4(c)) and carries its checksum over the
    pseudo-header (§2.3).  Raises :class:`~vmip.wire.errors.WireError` if
    *packet* is not IPv6.  Whether an error may be sent at all (§2.4(e))
    is :func:`vmip.wire.icmpv6.may_send_error`'s question;
    :meth:`TunDevice.send_packet_too_big` asks it.
    """
    if len(packet) < 40 or packet[0] >> 4 != 6:
        raise WireError("Packet Too Big needs an IPv6 invoking packet")
    return build_icmpv6_packet(PacketTooBig(mtu, bytes(packet)), src, bytes(packet[8:24]))


def _parse_addresses(addresses: Iterable[Address]) -> list[ipaddress.IPv4Interface
                                                           | ipaddress.IPv6Interface]:
    parsed = []
    for address in addresses:
        try:
            parsed.append(ipaddress.ip_interface(address))
        except ValueError as exc:
            raise TunError(f"bad TUN address {address!r}: {exc}") from None
    return parsed


def _parse_routes(routes: Iterable[Route]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    parsed = []
    for route in routes:
        try:
            parsed.append(ipaddress.ip_network(route))
        except ValueError as exc:
            raise TunError(f"bad TUN route {route!r}: {exc}") from None
    return parsed


def _check_name(name: str) -> None:
    if not name or len(name) > _MAX_NAME_LEN or name in (".", "..") or any(
            c in name for c in "/: \t\n"):
        raise TunError(f"bad interface name {name!r}: 1 to {_MAX_NAME_LEN} characters, "
                       "no '/', ':' or spaces")


def _check_mtu(mtu: int, needs_ipv6: bool) -> None:
    low = IPV6_MIN_MTU if needs_ipv6 else IPV4_MIN_MTU
    if not low <= mtu <= MAX_MTU:
        why = " (IPv6 needs at least 1280, RFC 8200 §5)" if needs_ipv6 else ""
        raise TunError(f"TUN MTU {mtu} is out of range {low}..{MAX_MTU}{why}")


def _open_device(name: str, vnet_hdr: bool = False) -> pytun.TunTapDevice:
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code == errno.EBUSY:
            hint = "it is in use (is another vmip node running in this namespace?)"
        elif code == errno.EPERM:
            hint = ("permission denied: creating a TUN needs CAP_NET_ADMIN (run as root), "
                    "and a prepared one belongs to another user; prepare it once for this "
                    "user with `vmip tun create --config FILE --user USER` as root")
        elif code in (errno.ENOENT, errno.ENODEV):
            hint = "/dev/net/tun is missing (load the tun module)"
        elif code == errno.EINVAL:
            hint = "an interface of that name exists and is not a TUN device"
        else:
            hint = str(exc.args[-1]) if exc.args else str(exc)
        raise TunError(f"cannot open TUN device {name}: {hint}") from None
    except OSError as exc:  # opening /dev/net/tun itself
        raise TunError(f"cannot open /dev/net/tun for {name}: {exc.strerror}") from None


class TunDevice:
    """An open, configured TUN device.  Create it with :meth:`open`."""

    def __init__(self, device: pytun.TunTapDevice, index: int, mtu: int,
                 addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                 routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 offload: bool = False):
        self._device: pytun.TunTapDevice | None = device
        self._fd = device.fileno()
        self.name: str = device.name
        self.index = index
        self.mtu = mtu
        self.addresses = addresses
        self.routes = routes
        self.counters = TunCounters()
        self.icmp_rate_limiter = IcmpErrorRateLimiter()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Opened with IFF_VNET_HDR: frames carry a virtio_net_hdr.
        self.offload = offload
        #: Made beforehand by ``vmip tun create``: closing leaves it in place.
        self.prepared = False
        self._pending: list[bytes] = []
        #: A link driver is handing over one read burst (begin_batch/end_batch).
        self._batching = False

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(cls, name: str = DEFAULT_NAME, addresses: Iterable[Address] = (),
             mtu: int = DEFAULT_MTU, routes: Iterable[Route] = (),
             offload: bool = True) -> TunDevice:
        """Create the TUN *name*, set its MTU, bring it up, add *addresses* and *routes*.

        *offload* opens it with ``IFF_VNET_HDR`` so that :meth:`write_soon`
        can hand the kernel coalesced TCP super-packets (module docstring).

        Addresses are interfaces (``"2001:db8:1::1/64"``; the kernel adds the
        connected route for the prefix); routes are prefixes sent into the
        TUN (``"2001:db8:20::/48"``, ``"::/0"``) and replace an existing route
        to the same prefix.  Works in the network namespace of the calling
        thread.  On any failure the device is removed again and
        :class:`TunError` says what went wrong.
        """
        _check_name(name)
        parsed_addresses = _parse_addresses(addresses)
        parsed_routes = _parse_routes(routes)
        needs_ipv6 = any(a.version == 6 for a in parsed_addresses) or any(
            r.version == 6 for r in parsed_routes)
        _check_mtu(mtu, needs_ipv6)
        prepared = _exists(name)
        device = _open_device(name, offload)
        try:
            if prepared and not _tun_flags(device.fileno()) & _IFF_PERSIST:
                raise TunError(f"{name} exists and is not a persistent TUN (another node's?); "
                               "stop what uses it, or `vmip tun delete` it")
            if offload:
                # Offer the kernel no offloads: it checksums and segments
                # everything it hands us, so reads stay plain packets.
                fcntl.ioctl(device.fileno(), _TUNSETOFFLOAD, 0)
            # pytun's descriptor would otherwise be inherited by children,
            # and an inherited copy keeps the device alive after close().
            os.set_inheritable(device.fileno(), False)
            os.set_blocking(device.fileno(), False)
            if prepared:
                # Made by `vmip tun create`: configuring it would need
                # CAP_NET_ADMIN, reading it does not.
                index = _check_prepared(device.name, mtu, parsed_addresses, parsed_routes)
            else:
                index = _configure(device.name, mtu, parsed_addresses, parsed_routes)
        except BaseException:
            device.close()
            raise
        log.info("tun up", name=device.name, mtu=mtu, prepared=prepared,
                 addresses=" ".join(map(str, parsed_addresses)) or "-",
                 routes=" ".join(map(str, parsed_routes)) or "-")
        tun = cls(device, index, mtu, parsed_addresses, parsed_routes, offload)
        tun.prepared = prepared
        return tun

    def close(self) -> None:
        """Close the descriptor, which removes the device (a prepared one stays, without
        carrier); calling it again does nothing."""
        device, self._device = self._device, None
        if device is None:
            return
        self.detach()
        self._fd = -1
        device.close()
        log.info("tun closed", name=self.name, kept=self.prepared)

    @property
    def closed(self) -> bool:
        return self._device is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def _check_open(self) -> None:
        if self._device is None:
            raise TunError(f"TUN device {self.name} is closed")

    # -- packets -----------------------------------------------------------

    def read_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        """Up to *max_packets* packets that are already waiting; never blocks."""
        self._check_open()
        fd, read = self._fd, os.read
        packets: list[bytes] = []
        offload = self.offload
        for _ in range(max_packets):
            try:
                packet = read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                raise TunError(f"reading from {self.name}: {exc.strerror}") from None
            if offload:
                if packet[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM or packet[1]:
                    plain = self._plain_from_offload(packet)
                    if plain is None:
                        continue
                    packet = plain
                else:
                    packet = packet[VNET_HDR_LEN:]
            packets.append(packet)
        if packets:
            counters = self.counters
            counters.rx_batches += 1
            counters.rx_packets += len(packets)
            counters.rx_bytes += sum(map(len, packets))
        return packets

    def _plain_from_offload(self, frame: bytes) -> bytes | None:
        """A read with a partial checksum or GSO, which TUNSETOFFLOAD 0 should
        rule out: finish the checksum; a super-packet is dropped and counted."""
        try:
            header, packet = parse_vnet_header(frame)
        except VnetHeaderError:
            self.counters.rx_offload_dropped += 1
            return None
        if header.gso_type != VIRTIO_NET_HDR_GSO_NONE:
            self.counters.rx_offload_dropped += 1
            return None
        return complete_checksum(packet, header.csum_start, header.csum_offset)

    def write_soon(self, packet: bytes) -> None:
        """Queue a packet; the queue is written, TCP segments coalesced
        (:func:`coalesce_tcp`), when the link driver's read burst ends
        (:meth:`end_batch`), or once this event-loop round's callbacks have
        run for a driver that does not say.  Without offload or an event
        loop it is :meth:`write`."""
        loop = self._loop
        if not self.offload or loop is None:
            self.write(packet)
            return
        pending = self._pending
        pending.append(packet)
        if len(pending) == 1 and not self._batching:
            loop.call_soon(self.flush)

    def begin_batch(self) -> None:
        """A link driver starts handing over what one wake-up read."""
        self._batching = True

    def end_batch(self) -> None:
        """The read is over.  A lone packet (a ping, a request) is written
        now, in this loop round, instead of one round later; a burst is
        flushed, coalesced, once this round's callbacks have run, as before
        (docs/performance.md)."""
        self._batching = False
        pending = self._pending
        if len(pending) == 1:
            self.flush()
        elif pending and self._loop is not None:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what :meth:`write_soon` queued; drops are counted, never raised."""
        pending, self._pending = self._pending, []
        if not pending or self._device is None:
            return
        if len(pending) == 1:
            self.write(pending[0])
            return
        writev, fd, counters = os.writev, self._fd, self.counters
        for header, packet, segments in coalesce_tcp(pending):
            try:
                writev(fd, (header, packet))
            except BlockingIOError:
                counters.tx_dropped += segments
                continue
            except OSError as exc:
                counters.tx_errors += segments
                log.debug("tun write refused", name=self.name, error=exc.strerror,
                          length=len(packet))
                continue
            counters.tx_packets += segments
            # tx_bytes counts the packets as they arrived: each segment
            # carried its own IPv6 and TCP headers.
            counters.tx_bytes += len(packet)
            if segments > 1:
                counters.tx_bytes += (segments - 1) * _VNET.unpack_from(header)[2]
                counters.tx_gro_writes += 1
                counters.tx_gro_segments += segments

    def write(self, packet: bytes) -> bool:
        """Hand one IP packet to the kernel; False if it was dropped (counted, never raised)."""
        self._check_open()
        try:
            if self.offload:
                os.writev(self._fd, (_PLAIN_VNET_HDR, packet))
            else:
                os.write(self._fd, packet)
        except BlockingIOError:
            self.counters.tx_dropped += 1
            return False
        except OSError as exc:
            # EINVAL: neither IPv4 nor IPv6; EIO: the device is down.
            self.counters.tx_errors += 1
            log.debug("tun write refused", name=self.name, error=exc.strerror, length=len(packet))
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(packet)
        return True

    # -- event loop --------------------------------------------------------

    def attach(self, on_packets: Callable[[list[bytes]], None], *,
               loop: asyncio.AbstractEventLoop | None = None,
               batch: int = DEFAULT_BATCH) -> None:
        """Call ``on_packets(batch)`` from *loop* whenever packets wait (up to *batch* each time)."""
        self._check_open()
        if self._loop is not None:
            raise TunError(f"TUN device {self.name} is already attached to an event loop")
        loop = loop or asyncio.get_running_loop()
        loop.add_reader(self._fd, self._on_readable, on_packets, batch)
        self._loop = loop

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)

    def _on_readable(self, on_packets: Callable[[list[bytes]], None], batch: int) -> None:
        try:
            packets = self.read_batch(batch)
        except TunError as exc:
            # A device that fails to read would wake the loop forever.
            log.error("tun read failed; no longer reading", name=self.name, error=str(exc))
            self.detach()
            return
        if packets:
            try:
                on_packets(packets)
            except Exception:
                log.exception("tun packet handler failed", name=self.name, batch=len(packets))

    # -- ICMPv6 errors -----------------------------------------------------

    def send_packet_too_big(self, packet: bytes, mtu: int, *,
                            src: bytes | ipaddress.IPv6Address | None = None,
                            now: float | None = None) -> bool:
        """Tell the sender of *packet* (read from this TUN) that the path MTU is *mtu*.

        Sent from *src*, by default the first IPv6 address of the TUN.  Not
        sent (False) when RFC 4443 §2.4(e) forbids it (the packet is itself
        an ICMPv6 error, its source is unspecified or multicast, it is not
        IPv6) or when the rate limit of §2.4(f) is reached.
        """
        if not may_send_error(packet, PACKET_TOO_BIG):
            self.counters.icmp_errors_suppressed += 1
            return False
        if not self.icmp_rate_limiter.allow(time.monotonic() if now is None else now):
            self.counters.icmp_errors_suppressed += 1
            return False
        if src is None:
            src = self._icmp_source()
        if not self.write(packet_too_big(packet, mtu, src)):
            return False
        self.counters.icmp_errors_sent += 1
        return True

    def _icmp_source(self) -> bytes:
        for address in self.addresses:
            if address.version == 6 and not address.ip.is_link_local:
                return address.ip.packed
        raise TunError(f"{self.name} has no IPv6 address to send ICMPv6 errors from; pass src")

    # -- status --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``vmip status`` shows about the TUN (JSON-ready)."""
        return {
            "name": self.name,
            "index": self.index,
            "mtu": self.mtu,
            "addresses": [str(a) for a in self.addresses],
            "routes": [str(r) for r in self.routes],
            "open": not self.closed,
            "prepared": self.prepared,
            **asdict(self.counters),
        }


# -- persistent (prepared) devices: linux/if_tun.h -----------------------------

_TUNSETIFF: Final = 0x400454CA
_TUNSETPERSIST: Final = 0x400454CB
_TUNSETOWNER: Final = 0x400454CC
_TUNSETGROUP: Final = 0x400454CE
_TUNGETIFF: Final = 0x800454D2
_IFF_TUN: Final = 0x0001
_IFF_NO_PI: Final = 0x1000
_IFF_PERSIST: Final = 0x0800
_IFREQ: Final = struct.Struct("16sH")


def _exists(name: str) -> bool:
    """Whether an interface *name* exists in this thread's network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _tun_flags(fd: int) -> int:
    """The TUN's flags (TUNGETIFF), IFF_PERSIST among them."""
    answer = fcntl.ioctl(fd, _TUNGETIFF, bytes(_IFREQ.size + 24))
    return int(_IFREQ.unpack_from(answer)[1])


def create_persistent(name: str, uid: int, gid: int | None,
                      addresses: Iterable[Address] = (), mtu: int = DEFAULT_MTU,
                      routes: Iterable[Route] = ()) -> int:
    """Make a persistent TUN owned by *uid* (and *gid*) with its MTU, addresses and
    routes (``vmip tun create``, needs CAP_NET_ADMIN); returns its index.

    Its owner can then open it with :meth:`TunDevice.open` without any
    capability.  It stays until :func:`delete_persistent` (or a reboot).
    """
    _check_name(name)
    parsed_addresses = _parse_addresses(addresses)
    parsed_routes = _parse_routes(routes)
    _check_mtu(mtu, any(a.version == 6 for a in parsed_addresses)
               or any(r.version == 6 for r in parsed_routes))
    if _exists(name):
        raise TunError(f"an interface {name} exists already; `vmip tun delete` it first "
                       "(or stop the node using it)")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot open /dev/net/tun for {name}: {exc.strerror}") from None
    try:
        # The node opens it with IFF_VNET_HDR or not; flags of a later attach win.
        fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(name.encode(), _IFF_TUN | _IFF_NO_PI))
        fcntl.ioctl(fd, _TUNSETOWNER, uid)
        if gid is not None:
            fcntl.ioctl(fd, _TUNSETGROUP, gid)
        fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    except OSError as exc:
        hint = "creating a TUN needs CAP_NET_ADMIN (run as root)" \
            if exc.errno == errno.EPERM else (exc.strerror or str(exc))
        raise TunError(f"cannot create the persistent TUN {name}: {hint}") from None
    finally:
        os.close(fd)
    try:
        index = _configure(name, mtu, parsed_addresses, parsed_routes)
    except BaseException:
        delete_persistent(name)
        raise
    log.info("persistent tun created", name=name, uid=uid, gid=gid if gid is not None else "-",
             mtu=mtu, addresses=" ".join(map(str, parsed_addresses)) or "-",
             routes=" ".join(map(str, parsed_routes)) or "-")
    return index


def delete_persistent(name: str) -> None:
    """Remove a persistent TUN (``vmip tun delete``, needs CAP_NET_ADMIN)."""
    _check_name(name)
    if not _exists(name):
        raise TunError(f"there is no interface {name} in this network namespace")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot open /dev/net/tun for {name}: {exc.strerror}") from None
    try:
        fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(name.encode(), _IFF_TUN | _IFF_NO_PI))
        if not _tun_flags(fd) & _IFF_PERSIST:
            raise TunError(f"{name} is not a persistent TUN: it goes away when its node stops")
        fcntl.ioctl(fd, _TUNSETPERSIST, 0)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            hint = "it is in use: stop the node first"
        elif exc.errno == errno.EPERM:
            hint = "deleting a TUN needs CAP_NET_ADMIN (run as root)"
        elif exc.errno == errno.EINVAL:
            hint = "it is not a TUN device"
        else:
            hint = exc.strerror or str(exc)
        raise TunError(f"cannot delete {name}: {hint}") from None
    finally:
        os.close(fd)   # the last descriptor of a non-persistent TUN: the device goes
    log.info("persistent tun deleted", name=name)


def _check_prepared(name: str, mtu: int,
                    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                    routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """:func:`_check_prepared_now`, off the event loop's thread (see :func:`_configure`)."""
    return _off_loop(f"tun-check-{name}", _check_prepared_now, name, mtu, addresses, routes)


def _off_loop(thread_name: str, work: Callable[..., int], *args: Any) -> int:
    """``work(*args)``, on a thread of its own when this one runs an event loop.

    pyroute2's synchronous API drives an asyncio loop of its own and fails
    inside a running one, and the node calls :meth:`TunDevice.open` from
    its loop.  A thread created here starts in this thread's network
    namespace (threads inherit it), so the configuration lands in the same
    namespace as the device.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work(*args)
    outcome: list[int | BaseException] = []

    def run() -> None:
        try:
            outcome.append(work(*args))
        except BaseException as exc:  # noqa: BLE001 - handed over to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=run, name=thread_name)
    worker.start()
    worker.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _check_prepared_now(name: str, mtu: int,
                        addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                        routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """The prepared TUN's index, if it is up with this MTU, these addresses and routes."""
    fix = "delete it and create it again from this config (`vmip tun delete`, " \
          "`vmip tun create --config FILE --user USER`, as root)"
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise TunError(f"{name} disappeared while opening it")
        index = found[0]
        link = ipr.get_links(index)[0]
        problems = []
        if link.get_attr("IFLA_MTU") != mtu:
            problems.append(f"MTU {link.get_attr('IFLA_MTU')} instead of {mtu}")
        if not link["flags"] & 1:   # IFF_UP
            problems.append("it is down")
        have = {ipaddress.ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
                for m in ipr.get_addr(index=index)}
        problems += [f"no address {a}" for a in addresses if a not in have]
        routed = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in ipr.get_routes(family=family, oif=index):
                dst = m.get_attr("RTA_DST")
                if dst is not None:
                    routed.add(ipaddress.ip_network(f"{dst}/{m['dst_len']}"))
                elif m["dst_len"] == 0:
                    routed.add(ipaddress.ip_network("::/0" if family == socket.AF_INET6
                                                    else "0.0.0.0/0"))
        problems += [f"no route to {r}" for r in routes if r not in routed]
    if problems:
        raise TunError(f"the prepared TUN {name} does not match the config: "
                       f"{'; '.join(problems)}; {fix}")
    return int(index)


def _configure(name: str, mtu: int,
               addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
               routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """:func:`_configure_now`, off the event loop's thread (see :func:`_off_loop`)."""
    return _off_loop(f"tun-config-{name}", _configure_now, name, mtu, addresses, routes)


def _configure_now(name: str, mtu: int,
                   addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                   routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """MTU, link up, addresses, routes, over netlink; returns the interface index."""
    ipv6_addresses = {a.ip.packed for a in addresses if a.version == 6}
    # Subscribe before adding anything so that no notification can be missed.
    watcher = _LocalRouteWatcher() if ipv6_addresses else None
    try:
        with IPRoute() as ipr:
            try:
                found = ipr.link_lookup(ifname=name)
            except NetlinkError as exc:
                raise TunError(f"cannot find {name} over netlink: {exc}") from None
            if not found:
                raise TunError(f"{name} was created but netlink does not see it")
            index = found[0]
            step = "turn multicast off"
            try:
                # A point-to-point link to the node: the kernel would send MLD
                # reports (RFC 3810) and Router Solicitations (RFC 4861
                # §6.3.7) from its link-local address into it, which the node
                # can only drop (no policy, no locator): drops in every
                # counter listing after every start.
                ipr.link("set", index=index, flags=0, change=_IFF_MULTICAST)
                _no_router_solicitations(name)
                step = "set MTU and transmit queue and bring up"
                ipr.link("set", index=index, mtu=mtu, state="up", txqlen=TX_QUEUE_LEN)
                for address in addresses:
                    step = f"add address {address}"
                    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
                    extra = {"flags": _IFA_F_NODAD} if address.version == 6 else {}
                    ipr.addr("add", index=index, family=family, address=str(address.ip),
                             prefixlen=address.network.prefixlen, **extra)
                for route in routes:
                    step = f"add route {route}"
                    family = socket.AF_INET6 if route.version == 6 else socket.AF_INET
                    ipr.route("replace", family=family, dst=str(route.network_address),
                              dst_len=route.prefixlen, oif=index)
            except NetlinkError as exc:
                message = os.strerror(exc.code) if isinstance(exc.code, int) and exc.code > 0 \
                    else str(exc)
                raise TunError(f"cannot {step} on {name}: {message}") from None
        if watcher is not None:
            missing = watcher.wait_for(ipv6_addresses, _LOCAL_ROUTE_TIMEOUT)
            if missing:
                log.warning("tun addresses not yet receiving", name=name,
                            addresses=" ".join(str(ipaddress.IPv6Address(a)) for a in missing))
        return index
    finally:
        if watcher is not None:
            watcher.close()


def _no_router_solicitations(name: str) -> None:
    """Before the link comes up: no Router Solicitation from it (the kernel
    sends them whatever IFF_MULTICAST says).  Best effort: a read-only
    /proc/sys costs the three solicitations, counted as drops."""
    path = os.path.join("/proc/sys/net/ipv6/conf", name, "router_solicitations")
    try:
        with open(path, "w") as sysctl:
            sysctl.write("0\n")
    except OSError as exc:
        log.debug("router solicitations left on", name=name, error=str(exc))


# Netlink constants (linux/rtnetlink.h, linux/netlink.h, linux/if.h).
_IFF_MULTICAST: Final = 0x1000
_RTMGRP_IPV6_ROUTE: Final = 0x400
_RTM_NEWROUTE: Final = 24
_RTN_LOCAL: Final = 2
_RTA_DST: Final = 1
_NLMSG_HEADER: Final = struct.Struct("=IHHII")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
_RTATTR_HEADER: Final = struct.Struct("=HH")
_LOCAL_ROUTE_TIMEOUT: Final = 3.0


class _LocalRouteWatcher:
    """Waits until the kernel can receive on new IPv6 addresses.

    Linux installs the local route of an IPv6 address (the one that makes
    packets *to* it be delivered) from the address's DAD work, a moment after
    the address was added, also with IFA_F_NODAD.  Until then a packet to the
    address is dropped (Ip6InAddrErrors).  The route's RTM_NEWROUTE
    notification tells when it is there.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, _RTMGRP_IPV6_ROUTE))

    def close(self) -> None:
        self._sock.close()

    def wait_for(self, addresses: set[bytes], timeout: float) -> set[bytes]:
        """Block until a local route exists for each of *addresses*; return those still missing."""
        missing = set(addresses)
        deadline = time.monotonic() + timeout
        while missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications were lost: keep listening
                    continue
                raise
            missing -= set(_local_route_destinations(data))
        return missing


def _local_route_destinations(data: bytes) -> Iterator[bytes]:
    """Destinations of the RTM_NEWROUTE messages of type local in one netlink read."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, msg_type, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if length < _NLMSG_HEADER.size or offset + length > len(data):
            return
        body = offset + _NLMSG_HEADER.size
        if msg_type == _RTM_NEWROUTE and length >= _NLMSG_HEADER.size + _RTMSG.size:
            family, dst_len, _, _, _, _, _, route_type, _ = _RTMSG.unpack_from(data, body)
            if family == socket.AF_INET6 and route_type == _RTN_LOCAL and dst_len == 128:
                attr = body + _RTMSG.size
                while attr + _RTATTR_HEADER.size <= offset + length:
                    attr_len, attr_type = _RTATTR_HEADER.unpack_from(data, attr)
                    if attr_len < _RTATTR_HEADER.size or attr + attr_len > offset + length:
                        break   # malformed: an attribute may not run past its message
                    if attr_type == _RTA_DST and attr_len == _RTATTR_HEADER.size + 16:
                        yield data[attr + _RTATTR_HEADER.size:attr + attr_len]
                    attr += (attr_len + 3) & ~3  # attributes are 4-byte aligned
        offset += (length + 3) & ~3
