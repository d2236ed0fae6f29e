"""An IKE endpoint: many IKE SAs behind one pair of UDP ports (RFC 7296 §2.6).

Sans-IO like :class:`~vmip.ike.ikesa.IkeSa`.  It demultiplexes datagrams by
our SPI, creates a responder :class:`IkeSa` for each new IKE_SA_INIT request,
and, once more than ``cookie_threshold`` SAs are half-open, answers new
IKE_SA_INIT requests statelessly with a COOKIE (§2.6) until the initiator
proves it receives at its address.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import deque
from typing import Callable

from vmip.ike.constants import NON_ESP_MARKER, ExchangeType, Flags, Notify
from vmip.ike.events import IkeEvent
from vmip.ike.ikesa import Addr, IkeSa, IkeSaConfig, Rng, Role, SpiAllocator
from vmip.ike.messages import IkeMessage, decode_message, encode_message
from vmip.ike.payloads import IkeParseError, NoncePayload, NotifyPayload, find, notifies
from vmip.log import get_logger

log = get_logger(__name__)

#: Chooses the config for a new responder SA from the peer's address (None: refuse).
ConfigLookup = Callable[[Addr], IkeSaConfig | None]

#: Makes the inbound-SPI allocator of one IKE SA from its (local, remote)
#: addresses, so a larval SAD entry can name the CHILD_SA's endpoints.
SpiAllocatorFactory = Callable[[Addr, Addr], SpiAllocator]


class IkeEndpoint:
    def __init__(self, config_for: ConfigLookup, local_addr: Addr, *,
                 spi_allocator: SpiAllocator | None = None, rng: Rng = os.urandom,
                 cookie_threshold: int = 32, max_sas: int = 4096,
                 spi_allocator_for: SpiAllocatorFactory | None = None):
        self._config_for = config_for
        self.local_addr = local_addr
        self._spi_allocator = spi_allocator
        self._spi_allocator_for = spi_allocator_for
        self._rng = rng
        self.cookie_threshold = cookie_threshold
        self.max_sas = max_sas
        self.sas: list[IkeSa] = []
        self._by_spi: dict[bytes, IkeSa] = {}
        self._half_open: dict[tuple[bytes, str, int], IkeSa] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[tuple[IkeSa, IkeEvent]] = deque()
        self._secret = rng(32)
        self._secret_version = 0
        self.stats: dict[str, int] = {}

    # -------------------------------------------------------------- API
    def initiate(self, config: IkeSaConfig, remote_addr: Addr, now: float) -> IkeSa:
        sa = IkeSa(config, Role.INITIATOR, self.local_addr, remote_addr, now,
                   spi_allocator=self._allocator(remote_addr), rng=self._rng)
        sa.initiate(now)
        self._add(sa)
        return sa

    def detach(self, sa: IkeSa) -> None:
        """Stop serving *sa*: it moves to the endpoint of another local address."""
        if sa in self.sas:
            self.sas.remove(sa)
        for spi in [s for s, owner in self._by_spi.items() if owner is sa]:
            del self._by_spi[spi]

    def attach(self, sa: IkeSa) -> None:
        """Serve an IKE SA made elsewhere (see :meth:`detach`)."""
        self._add(sa)

    @property
    def half_open_count(self) -> int:
        return sum(1 for sa in self.sas if sa.half_open and sa.role is Role.RESPONDER)

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        raw = bytes(data)
        body = raw[4:] if raw[:4] == NON_ESP_MARKER else raw
        if len(body) < 28:
            self._count("dropped_short")
            return
        spi_i, spi_r = body[:8], body[8:16]
        flags = body[19]
        sa = self._by_spi.get(spi_r if flags & Flags.INITIATOR else spi_i)
        if sa is None and spi_r == bytes(8):
            sa = self._half_open.get((spi_i, str(addr[0]), int(addr[1])))
        if sa is None and body[18] == ExchangeType.IKE_SA_INIT and spi_r == bytes(8) \
                and not flags & Flags.RESPONSE:
            sa = self._new_responder(raw, body, addr, now)
        if sa is None:
            self._count("dropped_no_sa")
            return
        sa.receive_datagram(raw, addr, now)
        self._collect(sa)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        for sa in self.sas:
            out += sa.datagrams_to_send(now)
        return out

    def get_timer(self) -> float | None:
        timers = [t for t in (sa.get_timer() for sa in self.sas) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self.sas):
            timer = sa.get_timer()
            if timer is not None and now >= timer:
                sa.handle_timer(now)
            self._collect(sa)

    def next_event(self) -> tuple[IkeSa, IkeEvent] | None:
        return self._events.popleft() if self._events else None

    def collect(self) -> None:
        """Pull events and SPI changes after calling an IkeSa method directly."""
        for sa in list(self.sas):
            self._collect(sa)

    # -------------------------------------------------------- internals
    def _allocator(self, remote_addr: Addr) -> SpiAllocator | None:
        if self._spi_allocator_for is not None:
            return self._spi_allocator_for(self.local_addr, remote_addr)
        return self._spi_allocator

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _add(self, sa: IkeSa) -> None:
        self.sas.append(sa)
        self._collect(sa)

    def _collect(self, sa: IkeSa) -> None:
        while (ev := sa.next_event()) is not None:
            self._events.append((sa, ev))
        for spi in [s for s, owner in self._by_spi.items() if owner is sa]:
            del self._by_spi[spi]
        for key in [k for k, owner in self._half_open.items() if owner is sa and not sa.half_open]:
            del self._half_open[key]
        if sa.is_finished:
            self._out += sa.datagrams_to_send(0.0)
            if sa in self.sas:
                self.sas.remove(sa)
            for key in [k for k, owner in self._half_open.items() if owner is sa]:
                del self._half_open[key]
            return
        for spi in sa.local_spis():
            self._by_spi[spi] = sa

    def cookie_for(self, nonce_i: bytes, addr: Addr, spi_i: bytes) -> bytes:
        """Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>) (§2.6)."""
        digest = hashlib.sha256(nonce_i + str(addr[0]).encode() + spi_i + self._secret).digest()
        return bytes([self._secret_version]) + digest

    def _new_responder(self, raw: bytes, body: bytes, addr: Addr, now: float) -> IkeSa | None:
        config = self._config_for(addr)
        if config is None:
            self._count("dropped_no_config")
            return None
        if len(self.sas) >= self.max_sas:
            self._count("dropped_too_many_sas")
            return None
        if self.half_open_count >= self.cookie_threshold:
            try:
                msg = decode_message(body)
            except IkeParseError:
                self._count("dropped_malformed")
                return None
            nonces = find(msg.payloads, NoncePayload)
            if not nonces:
                self._count("dropped_malformed")
                return None
            want = self.cookie_for(nonces[0].nonce, addr, msg.spi_i)
            got = notifies(msg.payloads, Notify.COOKIE)
            # §2.6: the COOKIE notify must be the first payload.
            first_ok = bool(msg.payloads) and isinstance(msg.payloads[0], NotifyPayload) \
                and msg.payloads[0].notify_type == Notify.COOKIE
            if not got or not first_ok or got[0].data != want:
                self._count("cookie_sent")
                reply = IkeMessage(msg.spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, False, True,
                                   (NotifyPayload(Notify.COOKIE, want),))
                prefix = NON_ESP_MARKER if raw[:4] == NON_ESP_MARKER else b""
                self._out.append((prefix + encode_message(reply), addr))
                return None
            self._count("cookie_accepted")
        sa = IkeSa(config, Role.RESPONDER, self.local_addr, addr, now,
                   spi_allocator=self._allocator(addr), rng=self._rng)
        self.sas.append(sa)
        self._half_open[(body[:8], str(addr[0]), int(addr[1]))] = sa
        return sa
