"""IPv6 fragments around ESP and IRO (RFC 8200 §4.5, RFC 4301 §7, RFC 4303 §3.1.1).

Transport-mode ESP is applied to whole datagrams only (RFC 4303 §3.1.1),
and IRO's rules are looked up by the SPI in the ESP header (draft §5.1.2),
which only a whole packet (or a first fragment) shows.  So, in a node:

- a datagram the host fragmented (fragments read from the TUN) is put back
  together first (:class:`Reassembler`), protected whole, remapped, and
  fragmented again after ESP when it does not fit the link
  (:func:`fragment`): the host chose fragmentation for it, so the on-wire
  packet is fragmented in its place.  Each fragment carries the remapped
  addresses;
- on-wire fragments are put back together before the IRO inbound rules and
  ESP (RFC 4301 §5.2: reassembly comes before IPsec processing).

A datagram that was not fragmented by the host and does not fit the link
still gets a Packet Too Big (RFC 8201), never fragmentation.

Reassembly follows RFC 8200 §4.5: fragments are matched by (source,
destination, identification); a fragment overlapping another drops the
whole datagram (RFC 5722); a datagram not complete after
``timeout`` seconds is dropped.  The table is bounded in datagrams and in
bytes; the oldest datagram goes first when full.  Every drop is counted.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from vmip.wire import proto

_IPV6_HEADER_LEN = 40
_FRAGMENT = struct.Struct("!BBHI")
#: RFC 8200 §4.5: 60 seconds to reassemble.
REASSEMBLY_TIMEOUT = 60.0
#: At most this many datagrams in reassembly, and this many bytes held.
MAX_DATAGRAMS = 256
MAX_BYTES = 4 * 1024 * 1024
#: RFC 8200 §4.5: a reassembled payload above 65,535 bytes is an error.
_MAX_PAYLOAD = 65535


def _unfragmentable_end(packet: bytes) -> tuple[int, int] | None:
    """``(offset where the fragmentable part starts, offset of the next-header byte
    naming it)``: after the IPv6 header, hop-by-hop options and a routing header
    (RFC 8200 §4.5), with destination options that precede the routing header."""
    if len(packet) < _IPV6_HEADER_LEN:
        return None
    next_header, position, at = packet[6], _IPV6_HEADER_LEN, 6
    end, end_at = position, at
    for _ in range(8):
        if next_header not in (proto.HOP_BY_HOP, proto.ROUTING, proto.DESTINATION_OPTIONS):
            break
        if position + 8 > len(packet):
            return None
        length = (packet[position + 1] + 1) * 8
        following = packet[position]
        if next_header != proto.DESTINATION_OPTIONS:
            end, end_at = position + length, position
        at, next_header, position = position, following, position + length
    return end, end_at


def fragment_header_at(packet: bytes) -> int | None:
    """Offset of the Fragment header of an IPv6 fragment, ``None`` for a whole packet.

    A Fragment header with offset 0 and M = 0 (an "atomic fragment", RFC
    6946) is a whole packet."""
    found = _unfragmentable_end(packet)
    if found is None:
        return None
    offset, at = found
    if packet[at] != proto.FRAGMENT or offset + 8 > len(packet):
        return None
    if not _FRAGMENT.unpack_from(packet, offset)[2] & 0xFFF9:
        return None
    return offset


def fragment(packet: bytes, mtu: int, identification: int) -> list[bytes]:
    """*packet* as fragments of at most *mtu* bytes (RFC 8200 §4.5), or ``[packet]``."""
    if len(packet) <= mtu:
        return [packet]
    found = _unfragmentable_end(packet)
    if found is None:
        return []
    split, at = found
    head = bytearray(packet[:split])
    carried = head[at]
    head[at] = proto.FRAGMENT
    payload = packet[split:]
    size = (mtu - len(head) - _FRAGMENT.size) // 8 * 8
    if size < 8:
        return []
    pieces = []
    for offset in range(0, len(payload), size):
        chunk = payload[offset:offset + size]
        more = offset + size < len(payload)
        frag = _FRAGMENT.pack(carried, 0, offset | int(more), identification & 0xFFFFFFFF)
        body = bytes(head) + frag + chunk
        length = len(body) - _IPV6_HEADER_LEN
        pieces.append(body[:4] + length.to_bytes(2, "big") + body[6:])
    return pieces


@dataclass
class _Datagram:
    started: float
    head: bytes = b""           # the first fragment's unfragmentable part
    carried: int = 0            # the first fragment's Next Header
    pieces: dict[int, bytes] = field(default_factory=dict)
    total: int | None = None    # payload length, known from the last fragment
    size: int = 0


class Reassembler:
    """Puts IPv6 fragments back together (RFC 8200 §4.5), bounded; sans-IO."""

    def __init__(self, *, timeout: float = REASSEMBLY_TIMEOUT,
                 max_datagrams: int = MAX_DATAGRAMS, max_bytes: int = MAX_BYTES) -> None:
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.counters: Counter[str] = Counter()
        self._datagrams: OrderedDict[tuple[bytes, bytes, int], _Datagram] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._datagrams)

    def add(self, packet: bytes, now: float) -> bytes | None:
        """Take one fragment; the whole packet once its last piece came, else ``None``.

        *packet* must be a fragment (:func:`fragment_header_at` not ``None``)."""
        self._expire(now)
        at = fragment_header_at(packet)
        if at is None:
            self.counters["not_a_fragment"] += 1
            return None
        carried, _, offset_flags, identification = _FRAGMENT.unpack_from(packet, at)
        offset, more = offset_flags & 0xFFF8, bool(offset_flags & 1)
        end_of_packet = _IPV6_HEADER_LEN + int.from_bytes(packet[4:6], "big")
        if end_of_packet > len(packet) or end_of_packet < at + _FRAGMENT.size:
            self.counters["fragment_malformed"] += 1
            return None
        data = packet[at + _FRAGMENT.size:end_of_packet]   # link padding left out
        key = (packet[8:24], packet[24:40], identification)
        if (more and len(data) % 8) or offset + len(data) > _MAX_PAYLOAD:
            # RFC 8200 §4.5: such fragments are errors (ICMP Parameter Problem).
            self.counters["fragment_malformed"] += 1
            self._discard(key)
            return None
        datagram = self._datagrams.get(key)
        if datagram is None:
            datagram = _Datagram(now)
            self._datagrams[key] = datagram
        end = offset + len(data)
        for start, piece in datagram.pieces.items():
            if start < end and offset < start + len(piece):
                # RFC 5722: overlapping fragments drop the whole datagram.
                self.counters["fragment_overlap"] += 1
                self._discard(key)
                return None
        if datagram.total is not None and (end > datagram.total
                                           or (not more and end != datagram.total)):
            self.counters["fragment_malformed"] += 1
            self._discard(key)
            return None
        if not more:
            if any(start + len(piece) > end for start, piece in datagram.pieces.items()):
                self.counters["fragment_malformed"] += 1
                self._discard(key)
                return None
            datagram.total = end
        if offset == 0:
            datagram.head, datagram.carried = packet[:at], carried
        datagram.pieces[offset] = data
        datagram.size += end_of_packet
        self._bytes += end_of_packet
        self.counters["fragments"] += 1
        self._bound()
        if key not in self._datagrams:
            return None
        return self._complete(key, datagram)

    def _complete(self, key: tuple[bytes, bytes, int], datagram: _Datagram) -> bytes | None:
        if datagram.total is None or not datagram.head:
            return None
        if sum(len(piece) for piece in datagram.pieces.values()) != datagram.total:
            return None
        payload = b"".join(datagram.pieces[start] for start in sorted(datagram.pieces))
        self._discard(key)
        head = bytearray(datagram.head)
        found = _unfragmentable_end(bytes(head) + b"\0" * 8)
        if found is None:
            self.counters["fragment_malformed"] += 1
            return None
        head[found[1]] = datagram.carried
        length = len(head) - _IPV6_HEADER_LEN + len(payload)
        head[4:6] = length.to_bytes(2, "big")
        self.counters["reassembled"] += 1
        return bytes(head) + payload

    def _discard(self, key: tuple[bytes, bytes, int]) -> None:
        datagram = self._datagrams.pop(key, None)
        if datagram is not None:
            self._bytes -= datagram.size

    def _expire(self, now: float) -> None:
        while self._datagrams:
            key, oldest = next(iter(self._datagrams.items()))
            if now - oldest.started < self.timeout:
                return
            self.counters["reassembly_timeout"] += 1
            self._discard(key)

    def _bound(self) -> None:
        while self._datagrams and (len(self._datagrams) > self.max_datagrams
                                   or self._bytes > self.max_bytes):
            key = next(iter(self._datagrams))
            self.counters["reassembly_evicted"] += 1
            self._discard(key)
