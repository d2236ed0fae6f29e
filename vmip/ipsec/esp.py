"""ESP, RFC 4303: per-SA runtime state and the transport/tunnel mode helpers.

Sans-IO: bytes and a clock value in, bytes (or ``None``) out.  Nothing here
raises on a bad packet: every failure is counted per reason, in the SA's
``drops``, and the call returns ``None``.

Choices the RFCs leave to the implementation (docs/ipsec.md has the long
version):

* Padding is the RFC 4303 §2.4 default, 1, 2, 3, ..., the minimum that
  aligns the ciphertext (4 bytes for AEAD and NULL, 16 for AES-CBC); the
  receiver checks it and drops anything else ("bad_padding").
* AEAD IVs are the 64-bit sequence number (RFC 4106 §3.1 and RFC 7634 §2
  ask only for uniqueness per key); AES-CBC IVs come from ``os.urandom``
  (RFC 3602 §2: unpredictable).  Tests may inject an IV source.
* ESN (RFC 4303 §2.2.1): the high 32 bits are never sent; they go in the
  AAD (AEAD) or after the packet in the ICV input (HMAC).
* Sequence numbers never cycle (§3.3.3): the packet after 2^32-1 (2^64-1
  with ESN) is refused ("seq_overflow") and the SA expires hard.  A soft
  expiry fires :data:`SEQ_SOFT_MARGIN` numbers earlier so keying can
  replace the SA in time.
* Lifetime byte counts are the bytes the cipher is applied to, padding and
  trailer included (RFC 4301 §4.4.2.1); 0 or ``None`` means no limit.  The
  packet that reaches a hard limit still goes through; the next does not.
* TFC padding (§2.4, §2.7), when ``SaParams.tfc_padding`` is set, is added
  in tunnel mode only, where the inner IP header tells the receiver where
  the packet ends: payloads are rounded up to a multiple of
  :attr:`EspSA.tfc_quantum` bytes without growing past
  :attr:`EspSA.tfc_limit`.  Dummy packets (§2.6, next header 59) can be made
  with :meth:`EspSA.protect_dummy`; received ones are dropped ("dummy").
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from vmip.ipsec.crypto import ESP_HEADER_LEN, EspSetupError, make_transform
from vmip.ipsec.replay import MAX_WINDOW, ReplayWindow
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import SUITES
from vmip.log import get_logger
from vmip.wire.proto import (
    AH,
    DESTINATION_OPTIONS,
    ESP,
    FRAGMENT,
    HOP_BY_HOP,
    IPV4,
    IPV6,
    NO_NEXT_HEADER,
    ROUTING,
)

__all__ = [
    "SEQ_SOFT_MARGIN", "EspSA", "EspSetupError", "decap", "dummy_encap",
    "esp_spi", "transport_encap", "tunnel_encap",
]

log = get_logger(__name__)

#: Soft expiry fires when this many sequence numbers are left.
SEQ_SOFT_MARGIN = 1 << 20

_IPV6_HEADER_LEN = 40
_MAX_EXTENSION_HEADERS = 16  # bound on the chain walk; real packets carry a few
_LOW32 = 0xFFFFFFFF
_NO_LIMIT = 1 << 80  # larger than any packet or byte count

_HEADER = struct.Struct(">II")  # SPI, sequence number (low 32 bits)
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_SEQ_IV = struct.Struct(">Q")
_OUTER = struct.Struct(">IHBB")  # version/class/flow, payload length, next header, hop limit

# RFC 4303 §2.4 default padding: 1, 2, 3, ...
_PAD = bytes(range(1, 256))
_trailers: dict[int, bytes] = {}


def _trailer(pad_len: int, next_header: int) -> bytes:
    """Padding, pad length and next header, cached: there are few combinations."""
    key = pad_len << 8 | next_header
    trailer = _trailers.get(key)
    if trailer is None:
        trailer = _trailers[key] = _PAD[:pad_len] + bytes((pad_len, next_header))
    return trailer


class SeqGuard(Protocol):
    """Reserves outbound sequence numbers (vmip.ipsec.seqstate.SeqState)."""

    def reserve(self, esp: EspSA, seq: int) -> int: ...


class ReplayGuard(Protocol):
    """Hears of inbound replay-window advances (vmip.ipsec.seqstate.SeqState)."""

    def replay_advanced(self, esp: EspSA) -> None: ...


class _RefusingGuard:
    """The sequence guard of an SA that must not send (its state is unusable)."""

    def reserve(self, esp: EspSA, seq: int) -> int:
        return 0


class EspSA:
    """Runtime state of one ESP SA, one direction (RFC 4301 §4.4.2.1).

    ``params`` are fixed; this object holds what changes: the outbound
    sequence number, the inbound replay window, usage counters and expiry.
    """

    #: TFC padding rounds tunnel payloads up to a multiple of this ...
    tfc_quantum: int = 256
    #: ... but does not pad a payload past this many bytes.
    tfc_limit: int = 1200

    def __init__(self, params: SaParams, now: float,
                 on_expire: Callable[[EspSA, str], None] | None = None, *,
                 iv_source: Callable[[int], bytes] | None = None) -> None:
        info = SUITES.get(params.suite)
        if info is None:
            raise EspSetupError(f"unknown ESP suite {params.suite!r}; known: {', '.join(SUITES)}")
        if params.replay_window > MAX_WINDOW:
            raise EspSetupError(f"replay window {params.replay_window} is larger than {MAX_WINDOW}")
        self.params = params
        self.spi = params.spi
        self.suite = info
        self.on_expire = on_expire
        self._transform = make_transform(info, params.enc_key, params.auth_key, params.backend)

        # Usage counters (RFC 4301 §4.4.2.1 lifetimes; `vmip sa list`).
        self.packets = 0
        self.bytes = 0
        self.added_at = now
        self.first_used_at: float | None = None
        self.last_used_at: float | None = None
        self.usable = True
        #: Expiry kinds already reported through on_expire ("soft", "hard").
        self.expired: set[str] = set()
        self.drops: Counter[str] = Counter()

        #: Outbound: the last sequence number used (0 = none yet; 64 bits with ESN).
        self.seq = 0
        #: Inbound: replay window and the highest authenticated sequence number.
        self.replay = ReplayWindow(params.replay_window, params.esn)

        self._esn = params.esn
        self._seq_limit = (1 << 64) - 1 if params.esn else _LOW32
        #: Numbers up to this are used without asking ``seq_guard`` (the
        #: persisted reservation of static SAs, vmip.ipsec.seqstate).
        self._seq_ceiling = self._seq_limit
        self.seq_guard: SeqGuard | None = None
        #: Inbound: call ``replay_guard.replay_advanced(self)`` after an accept.
        self._replay_notify = False
        self.replay_guard: ReplayGuard | None = None
        self._unusable_reason = "unusable"
        self._seq_soft_mark = self._seq_limit - SEQ_SOFT_MARGIN
        self._block = info.block
        self._iv_len = info.iv_len
        self._counter_iv = info.aead and iv_source is None
        self._iv_source = iv_source or os.urandom
        cbc = not info.aead and info.iv_len > 0
        # Shortest ESP: header, IV, one cipher block (or an aligned trailer), ICV.
        self._min_len = ESP_HEADER_LEN + info.iv_len + (16 if cbc else 4) + info.icv_len
        self._ciphertext_align = 16 if cbc else 1
        self._overhead = ESP_HEADER_LEN + info.iv_len + info.icv_len
        self._tunnel = params.mode is Mode.TUNNEL
        self._tfc = params.tfc_padding and self._tunnel
        self._outer_addresses = (params.src.packed + params.dst.packed
                                 if params.src.version == 6 else None)
        self._packet_mark = self._byte_mark = _NO_LIMIT
        self._arm_limits()

    def __repr__(self) -> str:
        return (f"EspSA(spi={self.spi:#010x}, {self.params.direction.value}, {self.suite.name},"
                f" {self.params.mode.value}, packets={self.packets}, usable={self.usable})")

    # -- expiry --------------------------------------------------------------

    def _arm_limits(self) -> None:
        """Cache the next packet/byte count at which a limit must be looked at."""
        packets, byte_counts = [], []
        for kind, lifetime in (("soft", self.params.soft), ("hard", self.params.hard)):
            if kind in self.expired:
                continue
            if lifetime.packets:
                packets.append(lifetime.packets)
            if lifetime.bytes:
                byte_counts.append(lifetime.bytes)
        self._packet_mark = min(packets, default=_NO_LIMIT)
        self._byte_mark = min(byte_counts, default=_NO_LIMIT)

    def _check_limits(self) -> None:
        for kind, lifetime in (("soft", self.params.soft), ("hard", self.params.hard)):
            if ((lifetime.packets and self.packets >= lifetime.packets)
                    or (lifetime.bytes and self.bytes >= lifetime.bytes)):
                self._fire(kind)
        self._arm_limits()

    def _fire(self, kind: str) -> None:
        if kind in self.expired:
            return
        self.expired.add(kind)
        if kind == "hard":
            self.usable = False
        log.info("sa expired", spi=f"{self.spi:#010x}", kind=kind, packets=self.packets,
                 bytes=self.bytes, sa=self.params.name)
        if self.on_expire is not None:
            try:
                self.on_expire(self, kind)
            except Exception:  # a subscriber's bug must not break the data path
                log.exception("on_expire callback failed", spi=f"{self.spi:#010x}", kind=kind)

    def expire(self, kind: str) -> None:
        """Time-based expiry, called by the SAD (RFC 4301 §4.4.2.1).

        ``"soft"`` only reports; ``"hard"`` also makes the SA unusable.  Either
        way ``on_expire(self, kind)`` is called, at most once per kind over
        the SA's life, whichever limit (time, packets, bytes, sequence
        numbers) is reached first.
        """
        if kind not in ("soft", "hard"):
            raise ValueError(f"expiry kind must be 'soft' or 'hard', not {kind!r}")
        self._fire(kind)
        self._arm_limits()

    def migrate(self, params: SaParams) -> None:
        """New endpoints for this SA: a MIGRATE, the tunnel follows the CoA (docs/design.md §7.3).

        Sequence numbers, the replay window and counters carry on: a
        migration is not a rekey.  Anything but ``src``/``dst`` changing is
        refused with :class:`EspSetupError`.
        """
        if replace(params, src=self.params.src, dst=self.params.dst) != self.params:
            raise EspSetupError("migrate may change only the SA's endpoints")
        self.params = params
        self._outer_addresses = (params.src.packed + params.dst.packed
                                 if params.src.version == 6 else None)

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1

    # -- persisted sequence state (static keys, vmip.ipsec.seqstate) -------------

    @property
    def seq_limit(self) -> int:
        """The last sequence number this SA may ever send (RFC 4303 §3.3.3)."""
        return self._seq_limit

    def guard_sequence(self, guard: SeqGuard, mark: int) -> None:
        """Outbound: numbers up to *mark* may have been sent before; resume after them.

        Every number past the ceiling is first reserved with
        ``guard.reserve(self, seq)``, which returns the new ceiling (0: refused).
        """
        self.seq = max(self.seq, min(mark, self._seq_limit))
        self.seq_guard = guard
        self._seq_ceiling = self.seq

    def guard_replay(self, guard: ReplayGuard, mark: int) -> None:
        """Inbound: every number up to *mark* was received before (RFC 4303 §3.4.3)."""
        self.replay.resume(mark)
        self.replay_guard = guard
        self._replay_notify = True

    def refuse_for(self, reason: str) -> None:
        """Never send or accept again; every attempt is dropped as *reason*."""
        self._unusable_reason = reason
        if self.params.direction is Direction.OUT:
            # Stays selectable, so every refused packet is counted on this SA.
            self.seq_guard = _RefusingGuard()
            self._seq_ceiling = 0
        else:
            self.usable = False

    def _extend(self, seq: int) -> bool:
        """Slow path of protect: *seq* is past the ceiling."""
        if seq > self._seq_limit:
            # RFC 4303 §3.3.3: never let the counter cycle.
            self._drop("seq_overflow")
            self._fire("hard")
            return False
        guard = self.seq_guard
        ceiling = self._seq_limit if guard is None else guard.reserve(self, seq)
        if ceiling < seq:
            # The reservation is not on disk: sending could repeat a nonce.
            self._drop("seq_state")
            return False
        self._seq_ceiling = ceiling
        return True

    # -- outbound ------------------------------------------------------------

    def protect(self, payload: bytes | bytearray | memoryview, next_header: int,
                now: float) -> bytes | None:
        """The ESP part (SPI .. ICV) carrying ``payload``; ``None`` if the SA cannot send."""
        if not self.usable:
            self._drop(self._unusable_reason)
            return None
        seq = self.seq + 1
        if seq > self._seq_ceiling and not self._extend(seq):
            return None
        self.seq = seq
        if seq >= self._seq_soft_mark:
            self._fire("soft")

        length = len(payload)
        tfc = b""
        if self._tfc and length < self.tfc_limit:
            target = min(-(-length // self.tfc_quantum) * self.tfc_quantum, self.tfc_limit)
            tfc = bytes(target - length)
            length = target
        pad_len = -(length + 2) % self._block
        trailer = _trailers.get(pad_len << 8 | next_header) or _trailer(pad_len, next_header)
        plaintext = b"".join((payload, tfc, trailer))
        if self._counter_iv:
            iv = _SEQ_IV.pack(seq)
        elif self._iv_len:
            iv = self._iv_source(self._iv_len)
        else:
            iv = b""
        esp = self._transform.seal(_HEADER.pack(self.spi, seq & _LOW32), iv, plaintext,
                                   _U32.pack(seq >> 32) if self._esn else b"")
        # Usage counters, inlined: this runs for every packet.
        self.packets += 1
        self.bytes += len(plaintext)
        self.last_used_at = now
        if self.first_used_at is None:
            self.first_used_at = now
        if self.packets >= self._packet_mark or self.bytes >= self._byte_mark:
            self._check_limits()
        return esp

    def protect_dummy(self, now: float, size: int = 0) -> bytes | None:
        """A dummy packet (next header 59, RFC 4303 §2.6) with ``size`` bytes of payload."""
        return self.protect(bytes(size), NO_NEXT_HEADER, now)

    # -- inbound -------------------------------------------------------------

    def unprotect(self, esp: bytes | memoryview, now: float) -> tuple[int, bytes] | None:
        """``(next_header, payload)`` of an ESP packet (SPI .. ICV), or ``None``.

        RFC 4303 §3.4 order: length, replay check, ICV, window update, then
        padding and next header.  Never raises on bad input.
        """
        try:
            if not self.usable:
                self._drop(self._unusable_reason)
                return None
            size = len(esp)
            if size < self._min_len:
                self._drop("truncated")
                return None
            if (size - self._overhead) % self._ciphertext_align:
                self._drop("bad_length")
                return None
            spi, seq_low = _HEADER.unpack_from(esp, 0)
            if spi != self.spi:
                self._drop("spi_mismatch")
                return None
            replay = self.replay
            if self._esn:
                seq = replay.infer(seq_low)
                esn_high = _U32.pack(seq >> 32) if seq >= 0 else b""
            else:
                seq, esn_high = seq_low, b""
            if seq <= replay.top or seq <= 0:  # only then can it be a replay
                verdict = replay.check(seq)
                if verdict is not None:
                    self._drop(verdict)
                    return None
            plaintext = self._transform.open(esp, esn_high)
            if plaintext is None:
                self._drop("icv")
                return None
            # Authenticated: now, and only now, the window may move (§3.4.3).
            replay.accept(seq)
            if self._replay_notify:
                guard = self.replay_guard
                assert guard is not None  # set only by guard_replay, or its guard
                guard.replay_advanced(self)
            self.packets += 1
            self.bytes += len(plaintext)
            self.last_used_at = now
            if self.first_used_at is None:
                self.first_used_at = now
            if self.packets >= self._packet_mark or self.bytes >= self._byte_mark:
                self._check_limits()

            pad_len = plaintext[-2]
            next_header = plaintext[-1]
            end = len(plaintext) - 2 - pad_len
            if end < 0 or plaintext[end:end + pad_len] != _PAD[:pad_len]:
                self._drop("bad_padding")
                return None
            if next_header == NO_NEXT_HEADER:
                self._drop("dummy")
                return None
            return next_header, plaintext[:end]
        except Exception:  # pragma: no cover - a bug; keep the data path alive
            log.exception("ESP unprotect failed", spi=f"{self.spi:#010x}")
            self._drop("internal_error")
            return None


# ---------------------------------------------------------------------------
# Whole packets.  The walk below is the minimum ESP needs; full parsing
# lives in vmip.wire.

_OPTIONS_OR_ROUTING = (HOP_BY_HOP, ROUTING, DESTINATION_OPTIONS)  # length (len+1)*8


def _ipv6_end(packet: bytes | bytearray | memoryview) -> int:
    """End of the IPv6 packet by its payload length; -1 if it is not a usable one."""
    if len(packet) < _IPV6_HEADER_LEN or packet[0] >> 4 != 6:
        return -1
    payload_length = packet[4] << 8 | packet[5]
    end = _IPV6_HEADER_LEN + payload_length
    if payload_length == 0 or end > len(packet):  # jumbograms are not supported
        return -1
    return end


def _find_esp(packet: bytes | bytearray | memoryview, end: int) -> tuple[int, int] | None:
    """``(offset of the ESP header, offset of the next-header byte naming it)``."""
    next_header = packet[6]
    position, next_header_at = _IPV6_HEADER_LEN, 6
    for _ in range(_MAX_EXTENSION_HEADERS):
        if next_header == ESP:
            return (position, next_header_at) if position + ESP_HEADER_LEN <= end else None
        if position + 8 > end:
            return None
        if next_header in _OPTIONS_OR_ROUTING:
            length = (packet[position + 1] + 1) * 8
        elif next_header == FRAGMENT:
            if (packet[position + 2] << 8 | packet[position + 3]) & 0xFFF8:
                return None  # a later fragment: no header chain to follow
            length = 8
        elif next_header == AH:
            length = (packet[position + 1] + 2) * 4  # RFC 4302 §2.2
        else:
            return None
        next_header_at = position
        next_header = packet[position]
        position += length
    return None


def esp_spi(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(spi, offset of the ESP header)`` of an IPv6 packet; ``None`` if it has no ESP.

    Walks hop-by-hop, routing, destination options, fragment (first fragment
    only) and AH headers.  Never raises.
    """
    end = _ipv6_end(packet)
    if end < 0:
        return None
    found = _find_esp(packet, end)
    if found is None:
        return None
    offset = found[0]
    return _U32.unpack_from(packet, offset)[0], offset


def _insertion_point(packet: bytes | bytearray | memoryview,
                     end: int) -> tuple[int, int, int] | None:
    """Where transport-mode ESP goes (RFC 4303 §3.1.1).

    After hop-by-hop, routing and fragment headers; destination options
    that precede a routing header stay in front (they are for the hops on
    the route), those after the last routing/fragment header are for the
    final destination and get encrypted.  Returns ``(offset, offset of the
    next-header byte to rewrite, the next header ESP will carry)``.
    """
    next_header = packet[6]
    position = _IPV6_HEADER_LEN
    insert_at, next_header_at, carried = position, 6, next_header
    for _ in range(_MAX_EXTENSION_HEADERS):
        if next_header in _OPTIONS_OR_ROUTING:
            if position + 8 > end:
                return None
            length = (packet[position + 1] + 1) * 8
        elif next_header == FRAGMENT:
            if position + 8 > end or (packet[position + 2] << 8 | packet[position + 3]) & 0xFFF8:
                return None  # only a first (or atomic) fragment has headers to protect
            length = 8
        else:
            return insert_at, next_header_at, carried
        if position + length > end:
            return None
        following = packet[position]
        if next_header != DESTINATION_OPTIONS:
            insert_at, next_header_at, carried = position + length, position, following
        next_header = following
        position += length
    return None


def transport_encap(packet: bytes | bytearray | memoryview, sa: EspSA, now: float) -> bytes | None:
    """Transport mode (RFC 4303 §3.1.1): ESP inserted into an IPv6 packet.

    Payload length and the next-header chain are fixed up.  ``None`` (counted
    in ``sa.drops``) for a malformed packet, a tunnel-mode SA or an SA that
    cannot send.
    """
    if sa._tunnel:
        sa._drop("wrong_mode")
        return None
    end = _ipv6_end(packet)
    point = _insertion_point(packet, end) if end >= 0 else None
    if point is None:
        sa._drop("malformed")
        return None
    insert_at, next_header_at, carried = point
    esp = sa.protect(memoryview(packet)[insert_at:end], carried, now)
    if esp is None:
        return None
    payload_length = insert_at - _IPV6_HEADER_LEN + len(esp)
    if payload_length > 0xFFFF:
        sa._drop("too_big")
        return None
    header = bytearray(packet[:insert_at])
    header[next_header_at] = ESP
    _U16.pack_into(header, 4, payload_length)
    return b"".join((header, esp))


def _outer_header(addresses: bytes, traffic_class: int, payload_length: int,
                  hop_limit: int) -> bytes:
    return _OUTER.pack(0x60000000 | traffic_class << 20, payload_length, ESP,
                       hop_limit) + addresses


def tunnel_encap(inner: bytes | bytearray | memoryview, sa: EspSA, now: float,
                 hop_limit: int = 64) -> bytes | None:
    """Tunnel mode: a new outer IPv6 header ``sa.params.src -> sa.params.dst``, then ESP.

    The inner packet is IPv6 (next header 41) or IPv4 (4).  The outer
    traffic class copies the inner one, DSCP per RFC 4301 §5.1.2.1 and ECN
    per RFC 6040's normal mode; the flow label is 0.
    """
    if not sa._tunnel:
        sa._drop("wrong_mode")
        return None
    addresses = sa._outer_addresses
    if addresses is None:
        sa._drop("unsupported")  # outer IPv4 is the rfc3948 link driver's business
        return None
    version = inner[0] >> 4 if inner else 0
    if version == 6 and len(inner) >= _IPV6_HEADER_LEN:
        next_header, traffic_class = IPV6, (inner[0] & 0x0F) << 4 | inner[1] >> 4
    elif version == 4 and len(inner) >= 20:
        next_header, traffic_class = IPV4, inner[1]
    else:
        sa._drop("malformed")
        return None
    esp = sa.protect(inner, next_header, now)
    if esp is None:
        return None
    if len(esp) > 0xFFFF:
        sa._drop("too_big")
        return None
    return _outer_header(addresses, traffic_class, len(esp), hop_limit) + esp


def dummy_encap(sa: EspSA, now: float, size: int = 0, hop_limit: int = 64) -> bytes | None:
    """A whole dummy packet (RFC 4303 §2.6) from ``sa.params.src`` to ``sa.params.dst``."""
    addresses = sa._outer_addresses
    if addresses is None:
        sa._drop("unsupported")
        return None
    esp = sa.protect_dummy(now, size)
    if esp is None:
        return None
    return _outer_header(addresses, 0, len(esp), hop_limit) + esp


def _inner_packet(next_header: int, payload: bytes) -> bytes | None:
    """The tunnelled packet without TFC padding, by its own length field."""
    if next_header == IPV6:
        if len(payload) < _IPV6_HEADER_LEN or payload[0] >> 4 != 6:
            return None
        payload_length = payload[4] << 8 | payload[5]
        end = _IPV6_HEADER_LEN + payload_length
        if payload_length == 0 or end > len(payload):
            return None
        return payload if end == len(payload) else payload[:end]
    if next_header == IPV4:
        if len(payload) < 20 or payload[0] >> 4 != 4:
            return None
        total_length = payload[2] << 8 | payload[3]
        if (total_length < (payload[0] & 0x0F) * 4 or total_length < 20
                or total_length > len(payload)):
            return None
        return payload if total_length == len(payload) else payload[:total_length]
    return None


def decap(packet: bytes | bytearray | memoryview, esp_offset: int, sa: EspSA,
          now: float) -> bytes | None:
    """Remove the ESP found at ``esp_offset`` (from :func:`esp_spi`) with ``sa``.

    Transport mode: the IPv6 packet rebuilt with ESP's next header and a
    fixed payload length.  Tunnel mode: the inner packet, TFC padding
    removed.  ``None`` on any failure, counted in ``sa.drops``; never raises.
    """
    end = _ipv6_end(packet)
    if end < 0:
        sa._drop("malformed")
        return None
    if esp_offset == _IPV6_HEADER_LEN and packet[6] == ESP:
        next_header_at = 6  # the common case: ESP right after the IPv6 header
    else:
        found = _find_esp(packet, end)
        if found is None or found[0] != esp_offset:
            sa._drop("malformed")
            return None
        next_header_at = found[1]
    result = sa.unprotect(memoryview(packet)[esp_offset:end], now)
    if result is None:
        return None
    next_header, payload = result
    if sa._tunnel:
        inner = _inner_packet(next_header, payload)
        if inner is None:
            sa._drop("bad_inner")
        return inner
    header = bytearray(packet[:esp_offset])
    header[next_header_at] = next_header
    _U16.pack_into(header, 4, esp_offset - _IPV6_HEADER_LEN + len(payload))
    return b"".join((header, payload))
