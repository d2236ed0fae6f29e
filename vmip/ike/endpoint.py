"""An IKE endpoint: many IKE SAs behind one pair of UDP ports (RFC 7296 §2.6).

Sans-IO like :class:`~vmip.ike.ikesa.IkeSa`.  It demultiplexes datagrams by
our SPI, creates a responder :class:`IkeSa` for each new IKE_SA_INIT request,
and, once more than ``cookie_threshold`` SAs are half-open, answers new
IKE_SA_INIT requests statelessly with a COOKIE (§2.6) until the initiator
proves it receives at its address.

Half-open responder SAs are what an unauthenticated sender makes us keep, so
they are bounded per source (``max_half_open_per_source``) and in total
(``max_sas``), and every datagram costs O(1) in their number: counts are kept
as SAs come and go, and their timers sit in a heap.  Established SAs are
many on a home agent keying its mobile nodes (one or more each), and the
node asks for the next timer after every packet it handles: their deadlines
sit in a heap of their own, and only the SAs that queued something since the
last look (``IkeSa.on_output``) are collected, so a datagram, a
``get_timer`` or a due timer costs O(log n) in the established SAs, not O(n).  The *source* a runtime
passes with a datagram is where it really came from (the underlay UDP
endpoint); the cookie is bound to it as well as to the on-wire address, which
the sender picks.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

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


@dataclass
class _Embryo:
    """Bookkeeping of one half-open responder SA."""

    key: tuple[bytes, str, int]      # (SPIi, on-wire address, port): finds retransmissions
    source: Hashable                 # what the per-source cap counts
    deadline: float | None = None    # the timer pushed on the heap


class IkeEndpoint:
    def __init__(self, config_for: ConfigLookup, local_addr: Addr, *,
                 spi_allocator: SpiAllocator | None = None, rng: Rng = os.urandom,
                 cookie_threshold: int = 32, max_sas: int = 4096,
                 max_half_open_per_source: int = 8,
                 spi_allocator_for: SpiAllocatorFactory | None = None):
        self._config_for = config_for
        self.local_addr = local_addr
        self._spi_allocator = spi_allocator
        self._spi_allocator_for = spi_allocator_for
        self._rng = rng
        self.cookie_threshold = cookie_threshold
        self.max_sas = max_sas
        self.max_half_open_per_source = max_half_open_per_source
        # Authenticated SAs and our own initiations, and the half-open
        # responder SAs (attacker-made); neither is iterated per datagram.
        self._active: dict[IkeSa, None] = {}
        # SAs that queued datagrams or events since they were last collected.
        self._dirty: dict[IkeSa, None] = {}
        # The active SAs' deadlines: a heap with lazy deletion (an entry is
        # live while it equals _active_deadline[sa]).
        self._active_heap: list[tuple[float, int, IkeSa]] = []
        self._active_deadline: dict[IkeSa, float] = {}
        # Every SA served (active or half-open) by its config's name (a peer).
        self._by_name: dict[str, dict[IkeSa, None]] = {}
        self._embryos: dict[IkeSa, _Embryo] = {}
        self._by_spi: dict[bytes, IkeSa] = {}
        self._spis: dict[IkeSa, tuple[bytes, ...]] = {}
        self._half_open: dict[tuple[bytes, str, int], IkeSa] = {}
        self._per_source: dict[Hashable, int] = {}
        self._heap: list[tuple[float, int, IkeSa]] = []
        self._seq = itertools.count()
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[tuple[IkeSa, IkeEvent]] = deque()
        self._secret = rng(32)
        self._secret_version = 0
        self.stats: dict[str, int] = {}

    # -------------------------------------------------------------- API
    @property
    def sas(self) -> list[IkeSa]:
        return [*self._active, *self._embryos]

    def sas_named(self, name: str) -> list[IkeSa]:
        """The SAs with one peer (``config.name``), oldest first: O(their number)."""
        return list(self._by_name.get(name, ()))

    def _serve(self, sa: IkeSa) -> None:
        sa.on_output = self._touched
        self._by_name.setdefault(sa.config.name, {})[sa] = None

    def _unserve(self, sa: IkeSa) -> None:
        if sa.on_output == self._touched:
            sa.on_output = None
        members = self._by_name.get(sa.config.name)
        if members is not None:
            members.pop(sa, None)
            if not members:
                del self._by_name[sa.config.name]

    def initiate(self, config: IkeSaConfig, remote_addr: Addr, now: float) -> IkeSa:
        sa = IkeSa(config, Role.INITIATOR, self.local_addr, remote_addr, now,
                   spi_allocator=self._allocator(remote_addr), rng=self._rng)
        sa.initiate(now)
        self._add(sa)
        return sa

    def detach(self, sa: IkeSa) -> None:
        """Stop serving *sa*: it moves to the endpoint of another local address."""
        self._release_embryo(sa)
        self._active.pop(sa, None)
        self._active_deadline.pop(sa, None)
        self._dirty.pop(sa, None)
        # What it queued goes with it; the new endpoint's attach collects it.
        self._unserve(sa)
        self._forget_spis(sa)

    def attach(self, sa: IkeSa) -> None:
        """Serve an IKE SA made elsewhere (see :meth:`detach`)."""
        self._add(sa)

    @property
    def half_open_count(self) -> int:
        return len(self._embryos)

    def receive_datagram(self, data: bytes, addr: Addr, now: float,
                         source: tuple[str, int] | None = None) -> None:
        """One datagram from on-wire *addr*; *source* is the underlay endpoint
        it really came from (None: *addr* is all we know)."""
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
            sa = self._new_responder(raw, body, addr, now, source)
        if sa is None:
            self._count("dropped_no_sa")
            return
        sa.receive_datagram(raw, addr, now)
        self._collect(sa)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        # _collect moves every SA's datagrams into _out; SAs acted on
        # directly (a rekey, a delete) said so through on_output.
        self._collect_dirty()
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        self._collect_dirty()
        self._drop_stale_timers()
        heap = self._active_heap
        while heap and self._active_deadline.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        timers = [heap[0][0]] if heap else []
        if self._heap:
            timers.append(self._heap[0][0])
        return min(timers) if timers else None

    def due(self, now: float) -> list[IkeSa]:
        """The established SAs whose timer is due at *now*, without handling
        them: O(k log n) for k due SAs (:meth:`handle_timer` still will)."""
        self._collect_dirty()
        heap, found = self._active_heap, []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._active_deadline.get(entry[2]) == entry[0]:
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return [entry[2] for entry in found]

    def handle_timer(self, now: float) -> None:
        self._collect_dirty()
        while self._heap and self._heap[0][0] <= now:
            deadline, _, sa = heapq.heappop(self._heap)
            embryo = self._embryos.get(sa)
            if embryo is None or embryo.deadline != deadline:
                continue   # stale: the SA moved on or its deadline changed
            embryo.deadline = None
            sa.handle_timer(now)
            self._collect(sa)
        due = []
        heap = self._active_heap
        while heap and heap[0][0] <= now:
            deadline, _, sa = heapq.heappop(heap)
            if self._active_deadline.get(sa) == deadline:
                del self._active_deadline[sa]
                due.append(sa)
        # Taken off the heap first: an SA re-armed at or before now waits
        # for the next call instead of looping here.
        for sa in due:
            if sa in self._active:
                sa.handle_timer(now)
                self._collect(sa)

    def next_event(self) -> tuple[IkeSa, IkeEvent] | None:
        return self._events.popleft() if self._events else None

    def collect(self, sa: IkeSa | None = None) -> None:
        """Pull events and SPI changes after calling an IkeSa method directly
        (of *sa*, or of every SA)."""
        for one in ([sa] if sa is not None else self.sas):
            if one in self._active or one in self._embryos:
                self._collect(one)

    # -------------------------------------------------------- internals
    def _allocator(self, remote_addr: Addr) -> SpiAllocator | None:
        if self._spi_allocator_for is not None:
            return self._spi_allocator_for(self.local_addr, remote_addr)
        return self._spi_allocator

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _touched(self, sa: IkeSa) -> None:
        self._dirty[sa] = None

    def _collect_dirty(self) -> None:
        while self._dirty:
            sa = next(iter(self._dirty))
            del self._dirty[sa]
            if sa in self._active or sa in self._embryos:
                self._collect(sa)

    def _add(self, sa: IkeSa) -> None:
        self._active[sa] = None
        self._serve(sa)
        self._collect(sa)

    def _forget_spis(self, sa: IkeSa) -> None:
        for spi in self._spis.pop(sa, ()):
            if self._by_spi.get(spi) is sa:
                del self._by_spi[spi]

    def _release_embryo(self, sa: IkeSa) -> None:
        embryo = self._embryos.pop(sa, None)
        if embryo is None:
            return
        if self._half_open.get(embryo.key) is sa:
            del self._half_open[embryo.key]
        left = self._per_source.get(embryo.source, 1) - 1
        if left > 0:
            self._per_source[embryo.source] = left
        else:
            self._per_source.pop(embryo.source, None)

    def _collect(self, sa: IkeSa) -> None:
        self._dirty.pop(sa, None)
        while (ev := sa.next_event()) is not None:
            self._events.append((sa, ev))
        embryo = self._embryos.get(sa)
        if embryo is not None and (sa.is_finished or not sa.half_open):
            self._release_embryo(sa)
            if not sa.is_finished:
                self._active[sa] = None     # authenticated: an ordinary SA now
            embryo = None
        # The SA's datagrams, in the order SAs were collected.
        self._out += sa.datagrams_to_send(0.0)
        if sa.is_finished:
            self._active.pop(sa, None)
            self._active_deadline.pop(sa, None)
            self._unserve(sa)
            self._forget_spis(sa)
            return
        spis = tuple(sa.local_spis())
        if spis != self._spis.get(sa, ()):
            self._forget_spis(sa)
            self._spis[sa] = spis
            for spi in spis:
                self._by_spi[spi] = sa
        if embryo is not None:
            deadline = sa.get_timer()
            if deadline != embryo.deadline:
                embryo.deadline = deadline
                if deadline is not None:
                    heapq.heappush(self._heap, (deadline, next(self._seq), sa))
                    self._compact_timers()
        elif sa in self._active:
            deadline = sa.get_timer()
            if deadline is None:
                self._active_deadline.pop(sa, None)
            elif self._active_deadline.get(sa) != deadline:
                self._active_deadline[sa] = deadline
                heapq.heappush(self._active_heap, (deadline, next(self._seq), sa))
                if len(self._active_heap) > 2 * len(self._active_deadline) + 64:
                    self._active_heap = [(t, next(self._seq), one)
                                         for one, t in self._active_deadline.items()]
                    heapq.heapify(self._active_heap)

    def _drop_stale_timers(self) -> None:
        while self._heap:
            deadline, _, sa = self._heap[0]
            embryo = self._embryos.get(sa)
            if embryo is not None and embryo.deadline == deadline:
                return
            heapq.heappop(self._heap)

    def _compact_timers(self) -> None:
        # Entries of SAs that left go stale; rebuild now and then so the heap
        # stays in proportion to the half-open SAs (amortised O(1)).
        if len(self._heap) > 2 * len(self._embryos) + 64:
            self._heap = [(e.deadline, next(self._seq), sa) for sa, e in self._embryos.items()
                          if e.deadline is not None]
            heapq.heapify(self._heap)

    def cookie_for(self, nonce_i: bytes, addr: Addr, spi_i: bytes,
                   source: tuple[str, int] | None = None) -> bytes:
        """Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>) (§2.6).

        IPi here is the on-wire address and port *and* the underlay endpoint
        the request came from: the on-wire address is whatever the sender
        wrote, the underlay endpoint is where our answer goes, so only it
        proves the initiator receives there.
        """
        where = f"{addr[0]}|{addr[1]}|{source[0]}|{source[1]}" if source is not None \
            else f"{addr[0]}|{addr[1]}"
        digest = hashlib.sha256(nonce_i + where.encode() + spi_i + self._secret).digest()
        return bytes([self._secret_version]) + digest

    def _new_responder(self, raw: bytes, body: bytes, addr: Addr, now: float,
                       source: tuple[str, int] | None) -> IkeSa | None:
        # The cap counts the sender's underlay host (a spoofer's real one),
        # not the on-wire address it names.
        cap_key: Hashable = ("underlay", str(source[0])) if source is not None \
            else ("on-wire", str(addr[0]))
        if self._per_source.get(cap_key, 0) >= self.max_half_open_per_source:
            self._count("dropped_half_open_per_source")
            return None
        if len(self._active) + len(self._embryos) >= self.max_sas:
            self._count("dropped_too_many_sas")
            return None
        config = self._config_for(addr)
        if config is None:
            self._count("dropped_no_config")
            return None
        if len(self._embryos) >= self.cookie_threshold:
            try:
                msg = decode_message(body)
            except IkeParseError:
                self._count("dropped_malformed")
                return None
            nonces = find(msg.payloads, NoncePayload)
            if not nonces:
                self._count("dropped_malformed")
                return None
            want = self.cookie_for(nonces[0].nonce, addr, msg.spi_i, source)
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
        self._serve(sa)
        key = (body[:8], str(addr[0]), int(addr[1]))
        self._embryos[sa] = _Embryo(key, cap_key)
        self._half_open[key] = sa
        self._per_source[cap_key] = self._per_source.get(cap_key, 0) + 1
        return sa
