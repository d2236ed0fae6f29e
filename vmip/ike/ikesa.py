"""The IKEv2 SA state machine, sans-IO (RFC 7296).

An :class:`IkeSa` takes datagrams and time and returns datagrams, a timer
deadline and events, in the style of aioquic's ``QuicConnection``::

    sa = IkeSa(config, Role.INITIATOR, ("2001:db8::1", 500), ("2001:db8::2", 500), now)
    sa.initiate(now)
    for data, addr in sa.datagrams_to_send(now): sock.sendto(data, addr)
    sa.receive_datagram(data, addr, now); sa.handle_timer(now)
    while (ev := sa.next_event()) is not None: ...

Datagrams that begin with the non-ESP marker (four zero octets, RFC 3948
§2.2) belong on the local NAT-T port (4500); the others on port 500.  An IKE
message on port 500 never starts with four zero octets (SPIi is non-zero),
so the marker alone tells the runtime which socket to use; incoming data may
carry the marker or not.

Windows are of size 1 (§2.3): one outstanding request per IKE SA.
"""

from __future__ import annotations

import enum
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

from cryptography import x509

from vmip.ike import crypto, mobike
from vmip.ike.constants import (
    NAT_T_PORT,
    NON_ESP_MARKER,
    NOTIFY_ERROR_MAX,
    AuthMethod,
    CertEncoding,
    ExchangeType,
    Notify,
    ProtocolId,
)
from vmip.ike.crypto import DhKey, IkeCryptoError, IkeKeys, SkCipher
from vmip.ike.events import (
    AuthenticationFailed,
    ChildSaCreated,
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerAlive,
)
from vmip.ike.messages import IkeMessage, decode_message, decrypt_message, encode_message
from vmip.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    Identity,
    IdiPayload,
    IdrPayload,
    IkeParseError,
    IkeUnsupportedCriticalPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    TrafficSelector,
    TsiPayload,
    TsrPayload,
    find,
    notifies,
)
from vmip.ike.proposals import (
    EspSuite,
    IkeSuite,
    accepted_proposal,
    choose,
    esp_sa_payload_proposals,
    esp_suite_of,
    ike_sa_payload_proposals,
    ike_suite_of,
    parse_esp_proposal,
    parse_ike_proposal,
)
from vmip.ipsec.sa import Mode
from vmip.ipsec.suites import SUITES
from vmip.log import Secret, get_logger

log = get_logger(__name__)

Addr = tuple[str, int]
Rng = Callable[[int], bytes]
SpiAllocator = Callable[[float], int]


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    IDLE = "idle"
    INIT_SENT = "init-sent"          # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"          # initiator: IKE_AUTH request out
    INIT_DONE = "init-done"          # responder: IKE_SA_INIT answered
    ESTABLISHED = "established"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


@dataclass(frozen=True)
class IkeSaConfig:
    """What one IKE SA needs; the runtime builds it from ``[ike]`` config."""

    name: str = "ike"
    local_id: Identity | None = None        # None: our IP address
    remote_id: Identity | None = None       # None: accept any authenticated identity
    psk: bytes | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    intermediates: tuple[x509.Certificate, ...] = ()
    private_key: crypto.SigningKey | None = field(default=None, repr=False)
    cas: tuple[x509.Certificate, ...] = ()
    ike_proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",)
    esp_proposals: tuple[str, ...] = ("aes128gcm16",)
    child_name: str = "child"
    #: Empty: our own address (local) / the peer's address (remote), all protocols.
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    mode: Mode = Mode.TUNNEL
    #: Use port 4500 and UDP-encapsulated ESP even without NAT (§2.23 allows
    #: faking NAT detection for that).
    force_encap: bool = False
    retransmit_timeout: float = 1.0
    retransmit_backoff: float = 2.0
    #: Sends of one request before giving up (the first send counts).
    retransmit_tries: int = 5
    #: Liveness check after this long without traffic from the peer (None: off).
    dpd_interval: float | None = None
    #: Child SA created with IKE_AUTH; False: IKE SA only.
    initial_child: bool = True
    #: Send INITIAL_CONTACT in IKE_AUTH: this is the only IKE SA with the peer's
    #: identity (§2.4); the runtime clears it while another one exists.
    initial_contact: bool = True
    nonce_len: int = 32
    #: Offer MOBIKE (RFC 4555) in IKE_AUTH; used when the peer offers it too.
    mobike: bool = True
    #: Send NO_NATS_ALLOWED with UPDATE_SA_ADDRESSES (RFC 4555 §3.9); None:
    #: when both addresses are IPv6 and no NAT was detected.
    mobike_no_nats: bool | None = None
    #: Responder: called once the initiator's AUTH has verified, with this
    #: config, its identity, end-entity certificate (None with a PSK) and the
    #: address the IKE_AUTH request came from;
    #: returns the config for the rest of the IKE SA (e.g. traffic selectors
    #: scoped to what the identity may use, RFC 4877 §4) or a refusal text,
    #: answered with AUTHENTICATION_FAILED.  None: no scoping.
    authorize: Callable[[IkeSaConfig, Identity, x509.Certificate | None, str],
                        IkeSaConfig | str] | None = field(default=None, repr=False, compare=False)

    def ike_suites(self) -> list[IkeSuite]:
        out: list[IkeSuite] = []
        for text in self.ike_proposals:
            out += parse_ike_proposal(text)
        return out

    def esp_suites(self) -> list[EspSuite]:
        return [parse_esp_proposal(t) for t in self.esp_proposals]


@dataclass
class _Child:
    name: str
    spi_in: int
    spi_out: int
    suite: str
    mode: Mode
    esn: bool
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    keys: tuple[bytes, bytes, bytes, bytes] = field(repr=False)  # enc_in, auth_in, enc_out, auth_out
    deleting: bool = False
    #: CHILD_SAs that rekeyed this one: (inbound SPI, lowest nonce of that
    #: exchange, we initiated it).  Two means a simultaneous rekey (§2.8.1).
    successors: list[tuple[int, bytes, bool]] = field(default_factory=list)


@dataclass
class _Pending:
    mid: int
    exchange: int
    data: bytes = field(repr=False)
    handler: Callable[[IkeMessage, float], None]
    tries: int
    next_at: float
    #: Where it goes (None: the peer's address); a MOBIKE address check (RFC 4555 §3.5).
    addr: Addr | None = None


class _Ctx:
    """Wire state of one IKE SA (SPIs, keys, message IDs); an IKE rekey
    makes a new one while the old one is deleted (§2.18)."""

    def __init__(self, spi_i: bytes, spi_r: bytes, original_initiator: bool):
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.original_initiator = original_initiator
        self.suite: IkeSuite | None = None
        self.keys: IkeKeys | None = None
        self.cipher_out: SkCipher | None = None
        self.cipher_in: SkCipher | None = None
        self.mid_out = 0            # next request ID we send
        self.mid_in = 0             # next request ID we expect
        self.pending: _Pending | None = None
        self.last_request: bytes = b""
        self.last_response: list[bytes] = []
        self.queue: deque[Callable[[float], None]] = deque()

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.original_initiator else self.spi_r


class IkeSa:
    """One IKE SA with its CHILD_SAs."""

    def __init__(self, config: IkeSaConfig, role: Role, local_addr: Addr, remote_addr: Addr,
                 now: float, *, spi_allocator: SpiAllocator | None = None,
                 rng: Rng = os.urandom, wall_clock: Callable[[], float] = time.time):
        self.config = config
        # Certificates are valid in calendar time, which the sans-IO ``now``
        # (a monotonic clock) is not.
        self._wall_clock = wall_clock
        self.role = role
        self.local_addr = (str(local_addr[0]), int(local_addr[1]))
        self.remote_addr = (str(remote_addr[0]), int(remote_addr[1]))
        self._rng = rng
        self._spi_allocator = spi_allocator or self._random_spi
        self.state = State.IDLE
        self.created_at = now
        self.established_at: float | None = None
        self._last_heard = now
        self._events: deque[IkeEvent] = deque()
        self._out: list[tuple[bytes, Addr]] = []
        #: Called with this SA when it queues a datagram or an event: how an
        #: endpoint serving many SAs finds the ones with something to
        #: collect without looking at every SA (see IkeEndpoint).
        self.on_output: Callable[[IkeSa], None] | None = None
        self.children: dict[int, _Child] = {}       # by inbound SPI
        self.stats: dict[str, int] = {}
        self.nat_detected = False
        self.encap = False                          # talk on 4500 with the marker
        self.remote_identity: Identity | None = None
        #: The peer's end-entity certificate once its signature AUTH verified.
        self.remote_certificate: x509.Certificate | None = None
        #: The peer's AUTH has verified (stays True while the SA is deleted).
        self.authenticated = False
        #: The peer's IKE_AUTH carried INITIAL_CONTACT (§2.4).
        self.peer_initial_contact = False
        #: Inbound CHILD_SA SPIs reserved (GETSPI) that no CHILD_SA took yet:
        #: the runtime frees them when the SA fails or is deleted.
        self.reserved_spis: set[int] = set()
        spi_i = self._new_ike_spi() if role is Role.INITIATOR else b""
        self._ctx = _Ctx(spi_i, bytes(8), role is Role.INITIATOR)
        self._old: _Ctx | None = None
        #: The redundant new IKE SA of a simultaneous IKE rekey, until its
        #: DELETE is done (§2.8.2).
        self._spare: _Ctx | None = None
        #: The context our own IKE rekey request is pending on, and the peer's
        #: rekey that crossed it: (its new context, lowest nonce of that exchange).
        self._ike_rekey_on: _Ctx | None = None
        self._crossed_ike: tuple[_Ctx, bytes] | None = None
        # IKE_SA_INIT / IKE_AUTH scratch (AUTH signs these, §2.15).
        self._dh: DhKey | None = None
        self._nonce_i = b""
        self._nonce_r = b""
        self._init_request = b""
        self._init_response = b""
        self._cookie: bytes | None = None
        self._ke_retries = 0
        self._child_spi: int | None = None
        self._peer_hashes: tuple[int, ...] = ()
        self._peer_wants_transport = False
        self.mobike = mobike.MobikeState(config.mobike, role is Role.INITIATOR)
        #: Where the response being handled came from (MOBIKE's address check).
        self.response_from: Addr | None = None

    # ----------------------------------------------------------- public API
    def __repr__(self) -> str:
        return (f"IkeSa(name={self.config.name!r}, role={self.role.value}, state={self.state.value}, "
                f"spi_i={self._ctx.spi_i.hex()}, spi_r={self._ctx.spi_r.hex()})")

    @property
    def spi_i(self) -> bytes:
        return self._ctx.spi_i

    @property
    def spi_r(self) -> bytes:
        return self._ctx.spi_r

    def local_spis(self) -> list[bytes]:
        """Our SPIs of the current (and a rekeyed-away) IKE SA, for demultiplexing."""
        spis = [ctx.local_spi for ctx in self._contexts()]
        return [s for s in spis if s and s != bytes(8)]

    def _contexts(self) -> list[_Ctx]:
        """The current IKE SA context, then a rekeyed-away and a redundant one."""
        return [ctx for ctx in (self._ctx, self._old, self._spare) if ctx is not None]

    @property
    def is_established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def is_finished(self) -> bool:
        return self.state in (State.DELETED, State.FAILED)

    @property
    def half_open(self) -> bool:
        return self.state in (State.IDLE, State.INIT_DONE, State.INIT_SENT, State.AUTH_SENT)

    def initiate(self, now: float) -> None:
        """Start IKE_SA_INIT (initiator only)."""
        if self.role is not Role.INITIATOR or self.state is not State.IDLE:
            raise RuntimeError("initiate() is for a fresh initiator IKE SA")
        suites = self.config.ike_suites()
        self._dh = DhKey(suites[0].dh, self._rng)
        self._nonce_i = self._rng(self.config.nonce_len)
        self.state = State.INIT_SENT
        self._send_init(now)

    def rekey_child(self, spi_in: int | None = None, now: float = 0.0) -> None:
        """CREATE_CHILD_SA with REKEY_SA for the child with inbound *spi_in*
        (None: the oldest child)."""
        self._need_established()
        child = self._find_child(spi_in)
        self._ctx.queue.append(lambda t: self._start_create_child(t, rekey=child))
        self._kick(now)

    def create_child(self, now: float, name: str | None = None,
                     local_ts: tuple[TrafficSelector, ...] | None = None,
                     remote_ts: tuple[TrafficSelector, ...] | None = None,
                     mode: Mode | None = None) -> None:
        """A further CHILD_SA with CREATE_CHILD_SA (§1.3.1); *mode* None: the config's."""
        self._need_established()
        self._ctx.queue.append(lambda t: self._start_create_child(
            t, name=name, local_ts=local_ts, remote_ts=remote_ts, mode=mode))
        self._kick(now)

    def change_local_address(self, addr: Addr,
                             spi_allocator: SpiAllocator | None = None) -> None:
        """Our address changed (an MN's new CoA): send from *addr* from now on.

        What MOBIKE's UPDATE_SA_ADDRESSES does for the sender (RFC 4555
        §3.5), without the notification: the peer follows the source of
        our next authenticated request (§2.23).  *spi_allocator* reserves
        the inbound SPIs of later CHILD_SAs at the new address.
        """
        if self.mobike.moving_from is None:
            self.mobike.moving_from = (self.local_addr, self.remote_addr)
        self.local_addr = (str(addr[0]), int(addr[1]))
        if spi_allocator is not None:
            self._spi_allocator = spi_allocator

    def announce_local_address(self, now: float) -> None:
        """Tell the peer our address changed (after :meth:`change_local_address`):
        UPDATE_SA_ADDRESSES when MOBIKE is in use and we are the original
        initiator (RFC 4555 §3.5), else an authenticated liveness check, whose
        source a plain IKEv2 responder follows (RFC 7296 §2.23)."""
        self._need_established()
        if self.mobike.active and self.mobike.initiator:
            self._ctx.queue.append(lambda t: mobike.start_update(self, t))
            self._kick(now)
        else:
            self.mobike.moving_from = None
            self.send_liveness_check(now)

    def rekey_ike(self, now: float) -> None:
        """Rekey the IKE SA itself with CREATE_CHILD_SA (§1.3.2)."""
        self._need_established()
        self._ctx.queue.append(self._start_rekey_ike)
        self._kick(now)

    def delete_child(self, spi_in: int | None = None, now: float = 0.0) -> None:
        self._need_established()
        child = self._find_child(spi_in)
        self._ctx.queue.append(lambda t: self._start_delete_child(t, child))
        self._kick(now)

    def delete(self, now: float, *, wait: bool = True) -> None:
        """Delete the IKE SA and with it every CHILD_SA (§1.4.1).

        *wait* False: send the DELETE once and forget the SA at once, without
        waiting for (or retransmitting to) a peer that may be dead.
        """
        if self.state is not State.ESTABLISHED:
            self._fail("deleted before it was established", now)
            return
        if not wait:
            ctx = self._ctx
            ctx.queue.clear()
            msg = IkeMessage(ctx.spi_i, ctx.spi_r, ExchangeType.INFORMATIONAL, ctx.mid_out,
                             ctx.original_initiator, False, (DeletePayload(ProtocolId.IKE),))
            ctx.mid_out += 1
            self._emit_raw(encode_message(msg, ctx.cipher_out))
            self._deleted(by_peer=False)
            return
        self._ctx.queue.append(self._start_delete_ike)
        self._kick(now)

    def abandon(self, reason: str, now: float) -> None:
        """Forget the SA without a word to the peer: it has lost it already
        (INITIAL_CONTACT of a new IKE SA with the same identity, §2.4)."""
        if self.is_finished:
            return
        log.info("ike sa abandoned", sa=self.config.name, reason=reason)
        self._deleted(by_peer=True)

    @property
    def liveness_due_at(self) -> float | None:
        """When a liveness check goes out unless the peer is heard from before (None: never)."""
        if self.state is State.ESTABLISHED and self.config.dpd_interval:
            return self._last_heard + self.config.dpd_interval
        return None

    def heard_on_child(self, at: float) -> None:
        """The peer's ESP was received (authenticated) on one of our CHILD_SAs at *at*.

        RFC 7296 §2.4: a fresh cryptographically protected message on the IKE
        SA *or any of its child SAs* proves the peer alive, so no liveness
        check is needed while that traffic flows.
        """
        self._last_heard = max(self._last_heard, at)

    def send_liveness_check(self, now: float) -> None:
        """An empty INFORMATIONAL request (§1.4, dead peer detection)."""
        self._need_established()
        self._ctx.queue.append(self._start_dpd)
        self._kick(now)

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        deadlines = []
        for ctx in self._contexts():
            if ctx.pending is not None:
                deadlines.append(ctx.pending.next_at)
        if (self.state is State.ESTABLISHED and self.config.dpd_interval
                and self._ctx.pending is None):
            deadlines.append(self._last_heard + self.config.dpd_interval)
        if self.half_open and self.role is Role.RESPONDER:
            # A half-open responder SA that never completes goes away (§2.4).
            deadlines.append(self.created_at + self._give_up_after())
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        if self.is_finished:
            return
        if self.half_open and self.role is Role.RESPONDER and now >= self.created_at + self._give_up_after():
            self._fail("IKE_AUTH never arrived", now)
            return
        for ctx in self._contexts():
            pending = ctx.pending
            if pending is None or now < pending.next_at:
                continue
            if pending.tries >= self.config.retransmit_tries:
                if ctx is self._old:
                    self._old = None       # the old SA's delete went unanswered; drop it
                    continue
                if ctx is self._spare:
                    self._spare = None
                    continue
                if mobike.request_timed_out(self, pending, now):
                    continue               # an address check failed: the old path is tried
                self._fail(f"no response to {ExchangeType(pending.exchange).name} "
                           f"after {pending.tries} transmissions", now)
                return
            pending.tries += 1
            pending.next_at = now + self._timeout(pending.tries)
            self._count("retransmitted")
            self._emit_raw(pending.data, pending.addr)
        if (self.state is State.ESTABLISHED and self.config.dpd_interval
                and self._ctx.pending is None and not self._ctx.queue
                and now >= self._last_heard + self.config.dpd_interval):
            self.send_liveness_check(now)

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """Feed one UDP payload (with or without the non-ESP marker)."""
        if self.is_finished:
            return
        data = bytes(data)
        via_nat_t = data[:4] == NON_ESP_MARKER
        if via_nat_t:
            data = data[4:]
        try:
            msg = decode_message(data)
        except IkeUnsupportedCriticalPayload as exc:
            self._count("dropped_critical")
            log.info("ike unsupported critical payload", sa=self.config.name, type=exc.payload_type)
            return
        except IkeParseError as exc:
            self._count("dropped_malformed")
            log.debug("ike malformed datagram", sa=self.config.name, error=str(exc))
            return
        ctx = self._ctx_for(msg)
        if ctx is None:
            self._count("dropped_unknown_spi")
            return
        if msg.response:
            self._receive_response(ctx, msg, addr, via_nat_t, now)
        else:
            self._receive_request(ctx, msg, addr, via_nat_t, now)

    # ---------------------------------------------------------- internals
    def _give_up_after(self) -> float:
        c = self.config
        total, t = 0.0, c.retransmit_timeout
        for _ in range(c.retransmit_tries):
            total += t
            t *= c.retransmit_backoff
        return max(total, 10.0)

    def _timeout(self, tries: int) -> float:
        c = self.config
        return c.retransmit_timeout * c.retransmit_backoff ** (tries - 1)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _random_spi(self, now: float) -> int:
        while True:
            spi = int.from_bytes(self._rng(4), "big")
            if spi >= 256:
                return spi

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self._rng(8)
            if spi != bytes(8):
                return spi

    def _allocate_spi(self, now: float) -> int:
        spi = self._spi_allocator(now)
        self.reserved_spis.add(spi)
        return spi

    def _need_established(self) -> None:
        if self.state is not State.ESTABLISHED:
            raise RuntimeError(f"IKE SA {self.config.name} is {self.state.value}, not established")

    def _find_child(self, spi_in: int | None) -> _Child:
        if spi_in is None:
            live = [c for c in self.children.values() if not c.deleting]
            if not live:
                raise RuntimeError("no CHILD_SA")
            return live[0]
        return self.children[spi_in]

    def _ctx_for(self, msg: IkeMessage) -> _Ctx | None:
        for ctx in self._contexts():
            if msg.spi_i != ctx.spi_i:
                continue
            # SPIr is still zero in IKE_SA_INIT (§3.1); after that it must match.
            if msg.exchange == ExchangeType.IKE_SA_INIT:
                if ctx is self._ctx and msg.message_id == 0:
                    return ctx
                continue
            if msg.spi_r == ctx.spi_r:
                return ctx
        if self.role is Role.RESPONDER and self.state is State.IDLE and \
                msg.exchange == ExchangeType.IKE_SA_INIT and not msg.response:
            self._ctx.spi_i = msg.spi_i
            return self._ctx
        return None

    def _emit_raw(self, data: bytes, addr: Addr | None = None) -> None:
        if self.encap:
            self._out.append((NON_ESP_MARKER + data, addr or self.remote_addr))
        else:
            self._out.append((data, addr or self.remote_addr))
        if self.on_output is not None:
            self.on_output(self)

    def _emit(self, ev: IkeEvent) -> None:
        self._events.append(ev)
        if self.on_output is not None:
            self.on_output(self)

    def _fail(self, reason: str, now: float) -> None:
        if self.is_finished:
            return
        log.info("ike sa failed", sa=self.config.name, reason=reason)
        self.state = State.FAILED
        self._ctx.pending = None
        self._ctx.queue.clear()
        for child in list(self.children.values()):
            self._emit(ChildSaDeleted(self.config.name, child.name, child.spi_in, child.spi_out, False))
        self.children.clear()
        self._emit(IkeSaFailed(self.config.name, reason))

    # ..................................................... sending requests
    def _kick(self, now: float) -> None:
        ctx = self._ctx
        if ctx.pending is None and ctx.queue and self.state is State.ESTABLISHED:
            ctx.queue.popleft()(now)

    def _send_request(self, ctx: _Ctx, exchange: int, payloads: list[Payload],
                      handler: Callable[[IkeMessage, float], None], now: float,
                      encrypted: bool = True, addr: Addr | None = None) -> None:
        mid = ctx.mid_out
        msg = IkeMessage(ctx.spi_i, ctx.spi_r, exchange, mid, ctx.original_initiator, False,
                         tuple(payloads))
        data = encode_message(msg, ctx.cipher_out if encrypted else None)
        ctx.mid_out = mid + 1
        ctx.pending = _Pending(mid, exchange, data, handler, 1, now + self._timeout(1), addr)
        if exchange == ExchangeType.IKE_SA_INIT:
            self._init_request = data
        self._emit_raw(data, addr)

    def _send_response(self, ctx: _Ctx, req: IkeMessage, payloads: list[Payload], addr: Addr,
                       encrypted: bool = True) -> None:
        msg = IkeMessage(ctx.spi_i, ctx.spi_r, req.exchange, req.message_id,
                         ctx.original_initiator, True, tuple(payloads))
        data = encode_message(msg, ctx.cipher_out if encrypted else None)
        ctx.last_response = [data]
        self._emit_raw(data, addr)

    def _send_init(self, now: float) -> None:
        ctx = self._ctx
        assert self._dh is not None
        suites = self.config.ike_suites()
        payloads: list[Payload] = []
        if self._cookie is not None:
            payloads.append(NotifyPayload(Notify.COOKIE, self._cookie))  # must come first (§2.6)
        payloads += [SaPayload(ike_sa_payload_proposals(suites)),
                     KePayload(self._dh.group, self._dh.public),
                     NoncePayload(self._nonce_i)]
        payloads += self._nat_detection_payloads(ctx.spi_i, bytes(8))
        if self.config.certificate is not None:
            payloads.append(NotifyPayload(Notify.SIGNATURE_HASH_ALGORITHMS,
                                          crypto.signature_hash_algorithms_data()))
        ctx.mid_out = 0
        self._send_request(ctx, ExchangeType.IKE_SA_INIT, payloads, self._on_init_response, now,
                           encrypted=False)

    def _nat_detection_payloads(self, spi_i: bytes, spi_r: bytes) -> list[Payload]:
        local_ip, local_port = self.local_addr
        if self.config.force_encap:
            # §2.23: a host may fake NAT detection to force UDP encapsulation;
            # hash an address that is certainly not ours.
            local_ip = "0.0.0.0" if ip_address(local_ip).version == 4 else "::"
        return [NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP,
                              crypto.nat_detection_hash(spi_i, spi_r, local_ip, local_port)),
                NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                              crypto.nat_detection_hash(spi_i, spi_r, self.remote_addr[0],
                                                        self.remote_addr[1]))]

    def _check_nat(self, msg: IkeMessage, addr: Addr, ctx: _Ctx) -> None:
        src = notifies(msg.payloads, Notify.NAT_DETECTION_SOURCE_IP)
        dst = notifies(msg.payloads, Notify.NAT_DETECTION_DESTINATION_IP)
        if not src or not dst:
            nat = False
        else:
            spi_r = msg.spi_r if msg.response else bytes(8)
            want_src = crypto.nat_detection_hash(ctx.spi_i, spi_r, addr[0], addr[1])
            want_dst = crypto.nat_detection_hash(ctx.spi_i, spi_r, self.local_addr[0],
                                                 self.local_addr[1])
            nat = (all(n.data != want_src for n in src) or all(n.data != want_dst for n in dst))
        self.nat_detected = nat
        if (nat or self.config.force_encap) and src:
            self.encap = True

    def _switch_to_nat_t(self) -> None:
        """§2.23: after IKE_SA_INIT, the initiator moves to port 4500."""
        if self.encap and self.role is Role.INITIATOR and self.remote_addr[1] != NAT_T_PORT:
            self.remote_addr = (self.remote_addr[0], NAT_T_PORT)
            self.local_addr = (self.local_addr[0], NAT_T_PORT)

    # ............................................. receiving (dispatch)
    def _receive_response(self, ctx: _Ctx, msg: IkeMessage, addr: Addr, via_nat_t: bool,
                          now: float) -> None:
        pending = ctx.pending
        if pending is None or msg.message_id != pending.mid or msg.exchange != pending.exchange \
                or msg.initiator == ctx.original_initiator:
            self._count("dropped_unexpected_response")
            return
        if ctx.cipher_in is not None and msg.exchange != ExchangeType.IKE_SA_INIT:
            try:
                msg = decrypt_message(msg, ctx.cipher_in)
            except IkeParseError:
                self._count("dropped_icv")
                return
        elif msg.exchange != ExchangeType.IKE_SA_INIT:
            self._count("dropped_unencrypted")
            return
        ctx.pending = None
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            self._heard(addr, now)
        self.response_from = (str(addr[0]), int(addr[1]))
        pending.handler(msg, now)
        if not self.is_finished:
            self._kick(now)
            if self._old is not None and self._old.pending is None and self._old.queue:
                self._old.queue.popleft()(now)

    def _heard(self, addr: Addr, now: float) -> None:
        # Keys from IKE_SA_INIT come from an unauthenticated DH: a message
        # that decrypts with them proves nothing until the peer's AUTH has
        # verified (RFC 7296 §2.15, §2.23).  Before that, no PeerAlive (the
        # runtime moves locators on it): IkeSaEstablished says it then.
        if not self.authenticated:
            return
        self._last_heard = now
        self._emit(PeerAlive(self.config.name, addr))

    def _receive_request(self, ctx: _Ctx, msg: IkeMessage, addr: Addr, via_nat_t: bool,
                         now: float) -> None:
        if msg.initiator != (not ctx.original_initiator):
            self._count("dropped_bad_flags")
            return
        if msg.message_id == ctx.mid_in - 1 and ctx.last_response:
            if msg.raw == ctx.last_request:
                if ctx is self._ctx and mobike.request_repeated(self, addr, now):
                    return                 # an UPDATE_SA_ADDRESSES from elsewhere (RFC 4555 §3.5)
                # §2.1: a retransmitted request gets the very same response.
                self._count("response_retransmitted")
                for data in ctx.last_response:
                    self._emit_raw(data, addr)
                return
            if msg.exchange != ExchangeType.IKE_SA_INIT:
                self._count("dropped_old_message_id")
                return
        if msg.message_id != ctx.mid_in and not (msg.exchange == ExchangeType.IKE_SA_INIT
                                                 and msg.message_id == 0 and self.state in (State.IDLE, State.INIT_DONE)):
            self._count("dropped_bad_message_id")
            return
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            if self.role is not Role.RESPONDER or self.state not in (State.IDLE, State.INIT_DONE):
                self._count("dropped_unexpected_request")
                return
            ctx.last_request = msg.raw
            ctx.mid_in = 1
            self._on_init_request(msg, addr, now)
            return
        if ctx.cipher_in is None:
            self._count("dropped_unencrypted")
            return
        try:
            plain = decrypt_message(msg, ctx.cipher_in)
        except IkeUnsupportedCriticalPayload as exc:
            ctx.last_request = msg.raw
            ctx.mid_in += 1
            self._send_response(ctx, msg, [NotifyPayload(Notify.UNSUPPORTED_CRITICAL_PAYLOAD,
                                                         bytes([exc.payload_type]))], addr)
            return
        except IkeParseError:
            self._count("dropped_icv")
            return
        ctx.last_request = msg.raw
        ctx.mid_in += 1
        if via_nat_t and self.role is Role.RESPONDER:
            self.encap = True
            # We answer from 4500 from now on (§2.23): say so.
            self.local_addr = (self.local_addr[0], NAT_T_PORT)
        # Authenticated: the peer's address may have changed (NAT rebinding,
        # §2.23).  During IKE_AUTH only once the AUTH verified (_on_auth_request).
        # With MOBIKE only UPDATE_SA_ADDRESSES moves the SA (RFC 4555 §3.5).
        if ctx is self._ctx and self.authenticated and not self.mobike.active:
            self.remote_addr = (str(addr[0]), int(addr[1]))
        self._heard(addr, now)
        handlers: dict[int, Callable[[_Ctx, IkeMessage, Addr, float], None]] = {
            ExchangeType.IKE_AUTH: self._on_auth_request,
            ExchangeType.CREATE_CHILD_SA: self._on_create_child_request,
            ExchangeType.INFORMATIONAL: self._on_informational_request}
        handler = handlers.get(msg.exchange)
        if handler is None:
            self._count("dropped_unknown_exchange")
            return
        if msg.exchange != ExchangeType.INFORMATIONAL and (ctx is not self._ctx or (
                msg.exchange == ExchangeType.IKE_AUTH) != (self.state is State.INIT_DONE)):
            self._send_response(ctx, plain, [NotifyPayload(Notify.INVALID_SYNTAX)], addr)
            return
        handler(ctx, plain, addr, now)

    # ................................................ IKE_SA_INIT (initiator)
    def _on_init_response(self, msg: IkeMessage, now: float) -> None:
        ctx = self._ctx
        cookie = notifies(msg.payloads, Notify.COOKIE)
        if cookie:
            if self._cookie is not None and self._cookie == cookie[0].data and self._ke_retries > 4:
                self._fail("responder keeps asking for a cookie", now)
                return
            self._cookie = cookie[0].data
            self._ke_retries += 1
            self._count("cookie_requested")
            self._send_init(now)
            return
        invalid_ke = notifies(msg.payloads, Notify.INVALID_KE_PAYLOAD)
        if invalid_ke:
            groups = {s.dh for s in self.config.ike_suites()}
            want = struct.unpack("!H", invalid_ke[0].data[:2])[0] if len(invalid_ke[0].data) >= 2 else 0
            # §1.2: retry with the group the responder asked for, if we offered it.
            if want not in groups or self._ke_retries > 4 or self._dh is None or want == self._dh.group:
                self._fail(f"responder wants DH group {want}", now)
                return
            self._ke_retries += 1
            self._dh = DhKey(want, self._rng)
            self._count("invalid_ke_recovered")
            self._send_init(now)
            return
        errors = [n for n in find(msg.payloads, NotifyPayload) if n.notify_type <= NOTIFY_ERROR_MAX]
        if errors:
            what = _notify_name(errors[0].notify_type)
            if errors[0].notify_type == Notify.NO_PROPOSAL_CHOSEN:
                what += (": the peer accepts none of our IKE proposals "
                         f"({', '.join(self.config.ike_proposals)})")
            self._fail(f"IKE_SA_INIT refused by the peer: {what}", now)
            return
        try:
            sa, = find(msg.payloads, SaPayload)
            ke, = find(msg.payloads, KePayload)
            nonce, = find(msg.payloads, NoncePayload)
        except ValueError:
            self._fail("IKE_SA_INIT response lacks SA, KE or Nonce", now)
            return
        ours = ike_sa_payload_proposals(self.config.ike_suites())
        picked = choose(ours, sa.proposals) if len(sa.proposals) == 1 else None
        if picked is None:
            self._fail("responder chose a proposal we did not offer", now)
            return
        suite = ike_suite_of(picked[1])
        assert self._dh is not None
        if suite.dh != self._dh.group or ke.group != self._dh.group:
            self._fail("responder's KE group does not match", now)
            return
        if msg.spi_r == bytes(8):
            self._fail("responder SPI is zero", now)
            return
        try:
            shared = self._dh.shared_secret(ke.data)
        except IkeCryptoError as exc:
            self._fail(str(exc), now)
            return
        ctx.spi_r = msg.spi_r
        self._nonce_r = nonce.nonce
        self._init_response = msg.raw
        self._peer_hashes = _hash_algs(msg.payloads)
        self._install_ike_keys(ctx, suite, crypto.skeyseed(suite.prf, self._nonce_i, self._nonce_r,
                                                           shared), self._nonce_i, self._nonce_r)
        self._check_nat(msg, self.remote_addr, ctx)
        self._switch_to_nat_t()
        self._send_auth(now)

    def _install_ike_keys(self, ctx: _Ctx, suite: IkeSuite, seed: bytes, ni: bytes, nr: bytes) -> None:
        info = crypto.encr_info(suite.encr, suite.key_bits)
        enc_len = info.key_len + info.salt_len
        ctx.suite = suite
        ctx.keys = crypto.derive_ike_keys(suite.prf, seed, ni, nr, ctx.spi_i, ctx.spi_r, enc_len,
                                          crypto.integ_key_len(suite.integ))
        k = ctx.keys
        c_i = SkCipher(suite.encr, suite.key_bits, suite.integ, k.sk_ei, k.sk_ai, self._rng)
        c_r = SkCipher(suite.encr, suite.key_bits, suite.integ, k.sk_er, k.sk_ar, self._rng)
        ctx.cipher_out, ctx.cipher_in = (c_i, c_r) if ctx.original_initiator else (c_r, c_i)

    # .................................................. IKE_AUTH (initiator)
    def _local_identity(self) -> Identity:
        if self.config.local_id is not None:
            return self.config.local_id
        return Identity.from_address(ip_address(self.local_addr[0]))

    def _auth_payloads(self, initiator: bool) -> list[Payload]:
        ctx = self._ctx
        assert ctx.keys is not None and ctx.suite is not None
        ident = self._local_identity()
        id_payload: Payload = IdiPayload(ident) if initiator else IdrPayload(ident)
        real = self._init_request if initiator else self._init_response
        peer_nonce = self._nonce_r if initiator else self._nonce_i
        sk_p = ctx.keys.sk_pi if initiator else ctx.keys.sk_pr
        octets = crypto.signed_octets(real, peer_nonce, ctx.suite.prf, sk_p, id_payload.encode_body())
        payloads: list[Payload] = [id_payload]
        if self.config.certificate is not None and self.config.private_key is not None:
            from cryptography.hazmat.primitives.serialization import Encoding
            payloads.append(CertPayload(CertEncoding.X509_SIGNATURE,
                                        self.config.certificate.public_bytes(Encoding.DER)))
            for extra in self.config.intermediates:
                payloads.append(CertPayload(CertEncoding.X509_SIGNATURE, extra.public_bytes(Encoding.DER)))
            auth = AuthPayload(AuthMethod.DIGITAL_SIGNATURE,
                               crypto.sign_auth(self.config.private_key, octets, self._peer_hashes))
        elif self.config.psk is not None:
            auth = AuthPayload(AuthMethod.PSK, crypto.psk_auth(ctx.suite.prf, self.config.psk, octets))
        else:
            raise RuntimeError("IKE SA config has neither a PSK nor a certificate and key")
        return payloads + [auth]

    def _certreq(self) -> list[Payload]:
        if not self.config.cas:
            return []
        return [CertReqPayload(CertEncoding.X509_SIGNATURE,
                               b"".join(crypto.certreq_hash(ca) for ca in self.config.cas))]

    def _default_local_ts(self) -> tuple[TrafficSelector, ...]:
        if self.config.local_ts:
            return self.config.local_ts
        a = ip_address(self.local_addr[0])
        return (TrafficSelector(a, a),)

    def _default_remote_ts(self) -> tuple[TrafficSelector, ...]:
        if self.config.remote_ts:
            return self.config.remote_ts
        a = ip_address(self.remote_addr[0])
        return (TrafficSelector(a, a),)

    def _send_auth(self, now: float) -> None:
        ctx = self._ctx
        payloads = self._auth_payloads(initiator=True)
        id_payload, auth = payloads[0], payloads[-1]
        payloads = [id_payload, *payloads[1:-1], *self._certreq()]
        if self.config.remote_id is not None:
            payloads.append(IdrPayload(self.config.remote_id))
        payloads.append(auth)
        if self.config.initial_contact:
            payloads.append(NotifyPayload(Notify.INITIAL_CONTACT))
        payloads += mobike.auth_payloads(self)
        if self.config.initial_child:
            # The inbound SPI is allocated now, before IKE_AUTH completes, so
            # IRO can install its rules in time (IRO draft §6.2.1, GETSPI §6.2.2).
            self._child_spi = self._allocate_spi(now)
            if self.config.mode is Mode.TRANSPORT:
                payloads.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
            payloads += [SaPayload(esp_sa_payload_proposals(self.config.esp_suites(),
                                                            self._child_spi.to_bytes(4, "big"), False)),
                         TsiPayload(self._default_local_ts()), TsrPayload(self._default_remote_ts())]
        self.state = State.AUTH_SENT
        self._send_request(ctx, ExchangeType.IKE_AUTH, payloads, self._on_auth_response, now)

    def _verify_peer_auth(self, msg: IkeMessage, initiator_auth: bool) -> str | None:
        """Check the peer's ID and AUTH; returns an error text or None."""
        ctx = self._ctx
        assert ctx.keys is not None and ctx.suite is not None
        id_cls = IdiPayload if initiator_auth else IdrPayload
        ids = find(msg.payloads, id_cls)
        auths = find(msg.payloads, AuthPayload)
        if len(ids) != 1 or len(auths) != 1:
            return "ID or AUTH payload missing"
        ident: Identity = ids[0].identity
        if self.config.remote_id is not None and ident != self.config.remote_id:
            return f"peer identity {ident} is not the expected {self.config.remote_id}"
        real = self._init_request if initiator_auth else self._init_response
        peer_nonce = self._nonce_r if initiator_auth else self._nonce_i
        sk_p = ctx.keys.sk_pi if initiator_auth else ctx.keys.sk_pr
        octets = crypto.signed_octets(real, peer_nonce, ctx.suite.prf, sk_p, ids[0].encode_body())
        auth = auths[0]
        if auth.method == AuthMethod.PSK:
            if self.config.psk is None:
                return "peer used a PSK but we expect a certificate"
            expected = crypto.psk_auth(ctx.suite.prf, self.config.psk, octets)
            if not crypto._consteq(expected, auth.data):
                return "PSK AUTH mismatch"
        elif auth.method == AuthMethod.DIGITAL_SIGNATURE:
            ders = crypto.dedupe_certificates([c.data for c in find(msg.payloads, CertPayload)
                                               if c.encoding == CertEncoding.X509_SIGNATURE])
            if not ders:
                return "signature AUTH without a certificate"
            if len(ders) > crypto.MAX_PEER_CERTIFICATES:
                # Bounded before anything is parsed: each one is work done
                # for a peer not yet authenticated (RFC 7296 §3.6).
                self._count("dropped_too_many_certificates")
                return (f"{len(ders)} certificates; at most "
                        f"{crypto.MAX_PEER_CERTIFICATES} are accepted")
            try:
                chain = [x509.load_der_x509_certificate(d) for d in ders]
            except ValueError:
                return "unparsable certificate"
            try:
                crypto.verify_chain(chain[0], chain[1:], self.config.cas, self._wall_clock())
                if not crypto.identity_matches_certificate(ident.id_type, ident.data, chain[0]):
                    return f"certificate does not cover identity {ident}"
                crypto.verify_auth(chain[0].public_key(), auth.data, octets)
            except IkeCryptoError as exc:
                return str(exc)
            self.remote_certificate = chain[0]
        else:
            return f"unsupported AUTH method {auth.method}"
        self.remote_identity = ident
        return None

    def _on_auth_response(self, msg: IkeMessage, now: float) -> None:
        self._now = now
        if notifies(msg.payloads, Notify.AUTHENTICATION_FAILED):
            reason = self._refused_auth_reason()
            self._emit(AuthenticationFailed(self.config.name, reason, True))
            self._fail(f"authentication failed: {reason}", now)
            return
        errors = [n for n in find(msg.payloads, NotifyPayload) if n.notify_type <= NOTIFY_ERROR_MAX]
        if not find(msg.payloads, AuthPayload):
            reason = _notify_name(errors[0].notify_type) if errors else "no AUTH payload"
            self._fail(f"IKE_AUTH refused: {reason}", now)
            return
        problem = self._verify_peer_auth(msg, initiator_auth=False)
        if problem is not None:
            problem = f"we refused the peer's AUTH: {problem}"
            self._emit(AuthenticationFailed(self.config.name, problem, False))
            self._fail(f"authentication failed: {problem}", now)
            return
        mobike.peer_auth(self, msg)
        self.peer_initial_contact = bool(notifies(msg.payloads, Notify.INITIAL_CONTACT))
        self._established(now)
        if self.config.initial_child:
            assert self._child_spi is not None
            self._finish_child_initiator(msg, self._child_spi, self._nonce_i, self._nonce_r, None,
                                         self.config.child_name, None, now)

    def _refused_auth_reason(self) -> str:
        """Why the peer answered our IKE_AUTH with AUTHENTICATION_FAILED, as far
        as we can tell: it names no reason (§2.21.2), so say what it was shown."""
        ours = self._local_identity()
        how = "certificate" if self.config.certificate is not None else "PSK"
        reason = (f"the peer refused our AUTH (AUTHENTICATION_FAILED): it did not accept "
                  f"our identity {ours} with our {how}")
        if self.config.remote_id is not None:
            reason += (f", or it is not {self.config.remote_id}, the identity we asked for "
                       f"(remote_id, sent as IDr)")
        return reason

    def _established(self, now: float) -> None:
        ctx = self._ctx
        self.state = State.ESTABLISHED
        self.authenticated = True
        self.established_at = now
        self._last_heard = now
        log.info("ike sa established", sa=self.config.name, spi_i=ctx.spi_i.hex(),
                 spi_r=ctx.spi_r.hex(), peer=str(self.remote_identity), suite=str(ctx.suite))
        self._emit(IkeSaEstablished(self.config.name, ctx.spi_i, ctx.spi_r,
                                    self.role is Role.INITIATOR, self.local_addr, self.remote_addr,
                                    str(self.remote_identity), str(ctx.suite), self.nat_detected,
                                    self.peer_initial_contact))

    def _finish_child_initiator(self, msg: IkeMessage, spi_in: int, ni: bytes, nr: bytes,
                                dh: DhKey | None, name: str, rekeyed: _Child | None,
                                now: float, wanted_mode: Mode | None = None,
                                proposed: tuple | None = None) -> None:
        """Process the SA/TS of a response that creates a child we asked for."""
        errors = [n for n in find(msg.payloads, NotifyPayload) if n.notify_type <= NOTIFY_ERROR_MAX]
        sas = find(msg.payloads, SaPayload)
        tsi, tsr = find(msg.payloads, TsiPayload), find(msg.payloads, TsrPayload)
        if errors or len(sas) != 1 or len(tsi) != 1 or len(tsr) != 1:
            reason = _notify_name(errors[0].notify_type) if errors else "SA or TS payload missing"
            if errors and errors[0].notify_type == Notify.NO_PROPOSAL_CHOSEN:
                reason += (": the peer accepts none of our ESP proposals "
                           f"({', '.join(self.config.esp_proposals)})")
            self._emit(ChildSaFailed(self.config.name, name, reason))
            return
        ours = esp_sa_payload_proposals(self.config.esp_suites(), b"", dh is not None)
        picked = choose(ours, sas[0].proposals) if len(sas[0].proposals) == 1 else None
        if picked is None or len(picked[0].spi) != 4:
            self._emit(ChildSaFailed(self.config.name, name, "responder chose an ESP proposal we did not offer"))
            return
        suite, group, esn = esp_suite_of(picked[1])
        shared = None
        if dh is not None:
            kes = find(msg.payloads, KePayload)
            if len(kes) != 1 or kes[0].group != dh.group or group != dh.group:
                self._emit(ChildSaFailed(self.config.name, name, "PFS KE missing or of another group"))
                return
            try:
                shared = dh.shared_secret(kes[0].data)
            except IkeCryptoError as exc:
                self._emit(ChildSaFailed(self.config.name, name, str(exc)))
                return
        if proposed is not None:  # a CREATE_CHILD_SA with selectors of its own
            proposed_l, proposed_r = proposed
        else:
            proposed_l = rekeyed.local_ts if rekeyed else self._default_local_ts()
            proposed_r = rekeyed.remote_ts if rekeyed else self._default_remote_ts()
        # §2.9: the responder may only narrow what we proposed.
        if not _subset(tsi[0].selectors, proposed_l) or not _subset(tsr[0].selectors, proposed_r):
            self._emit(ChildSaFailed(self.config.name, name, "responder widened the traffic selectors"))
            return
        want_transport = (rekeyed.mode if rekeyed else wanted_mode or self.config.mode) \
            is Mode.TRANSPORT
        mode = Mode.TRANSPORT if want_transport and notifies(msg.payloads, Notify.USE_TRANSPORT_MODE) \
            else Mode.TUNNEL
        spi_out = int.from_bytes(picked[0].spi, "big")
        child = self._make_child(name, spi_in, spi_out, suite, mode, esn, tsi[0].selectors,
                                 tsr[0].selectors, ni, nr, shared, initiator=True)
        self._child_added(child, rekeyed, now)

    def _make_child(self, name: str, spi_in: int, spi_out: int, suite: str, mode: Mode, esn: bool,
                    local_ts: tuple, remote_ts: tuple, ni: bytes, nr: bytes, shared: bytes | None,
                    initiator: bool) -> _Child:
        ctx = self._ctx
        assert ctx.keys is not None and ctx.suite is not None
        info = SUITES[suite]
        per_dir = info.enc_key_len + info.auth_key_len
        keymat = crypto.child_keymat(ctx.suite.prf, ctx.keys.sk_d, ni, nr, 2 * per_dir, shared)
        # §2.17: initiator->responder keys first, encryption before integrity.
        e_ir, a_ir = keymat[:info.enc_key_len], keymat[info.enc_key_len:per_dir]
        e_ri = keymat[per_dir:per_dir + info.enc_key_len]
        a_ri = keymat[per_dir + info.enc_key_len:2 * per_dir]
        keys = (e_ri, a_ri, e_ir, a_ir) if initiator else (e_ir, a_ir, e_ri, a_ri)
        return _Child(name, spi_in, spi_out, suite, mode, esn, tuple(local_ts), tuple(remote_ts),
                      tuple(Secret(k) for k in keys))  # type: ignore[arg-type]

    def _child_event(self, c: _Child) -> ChildSaCreated:
        return ChildSaCreated(self.config.name, c.name, c.spi_in, c.spi_out, c.suite, c.mode, c.esn,
                              c.local_ts, c.remote_ts, self.local_addr, self.remote_addr, self.encap,
                              *c.keys)

    def _child_added(self, child: _Child, rekeyed: _Child | None, now: float,
                     by_peer: bool = False) -> None:
        self.children[child.spi_in] = child
        self.reserved_spis.discard(child.spi_in)
        log.info("child sa created", sa=self.config.name, child=child.name,
                 spi_in=f"{child.spi_in:#010x}", spi_out=f"{child.spi_out:#010x}", suite=child.suite,
                 mode=child.mode.value, rekey=rekeyed is not None)
        ev = self._child_event(child)
        if rekeyed is not None:
            self._emit(ChildSaRekeyed(rekeyed.spi_in, rekeyed.spi_out, ev, by_peer))
        else:
            self._emit(ev)

    # ................................................ IKE_SA_INIT (responder)
    def _on_init_request(self, msg: IkeMessage, addr: Addr, now: float) -> None:
        ctx = self._ctx
        self.remote_addr = (str(addr[0]), int(addr[1]))
        try:
            sa, = find(msg.payloads, SaPayload)
            ke, = find(msg.payloads, KePayload)
            nonce, = find(msg.payloads, NoncePayload)
        except ValueError:
            self._send_response(ctx, msg, [NotifyPayload(Notify.INVALID_SYNTAX)], addr, encrypted=False)
            self._fail("IKE_SA_INIT request lacks SA, KE or Nonce", now)
            return
        picked = choose(ike_sa_payload_proposals(self.config.ike_suites()), sa.proposals)
        if picked is None:
            self._send_response(ctx, msg, [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], addr, encrypted=False)
            self._fail("no acceptable IKE proposal", now)
            return
        suite = ike_suite_of(picked[1])
        if ke.group != suite.dh:
            # §1.2: tell the initiator which group to use; keep no state.
            ctx.last_request = b""
            ctx.mid_in = 0
            self._send_response(ctx, msg, [NotifyPayload(Notify.INVALID_KE_PAYLOAD,
                                                         struct.pack("!H", suite.dh))], addr, encrypted=False)
            self._count("invalid_ke_sent")
            return
        try:
            dh = DhKey(suite.dh, self._rng)
            shared = dh.shared_secret(ke.data)
        except IkeCryptoError as exc:
            self._send_response(ctx, msg, [NotifyPayload(Notify.INVALID_SYNTAX)], addr, encrypted=False)
            self._fail(str(exc), now)
            return
        ctx.spi_i = msg.spi_i
        ctx.spi_r = self._new_ike_spi()
        self._nonce_i = nonce.nonce
        self._nonce_r = self._rng(self.config.nonce_len)
        self._init_request = msg.raw
        self._peer_hashes = _hash_algs(msg.payloads)
        self._check_nat(msg, addr, ctx)
        payloads: list[Payload] = [SaPayload((accepted_proposal(picked[0], picked[1]),)),
                                   KePayload(dh.group, dh.public), NoncePayload(self._nonce_r)]
        payloads += self._nat_detection_payloads(ctx.spi_i, ctx.spi_r)
        payloads += self._certreq()
        if self.config.certificate is not None:
            payloads.append(NotifyPayload(Notify.SIGNATURE_HASH_ALGORITHMS,
                                          crypto.signature_hash_algorithms_data()))
        self.encap = False  # the IKE_SA_INIT response goes back where the request came from
        self._send_response(ctx, msg, payloads, addr, encrypted=False)
        self._init_response = ctx.last_response[0]
        self._install_ike_keys(ctx, suite, crypto.skeyseed(suite.prf, self._nonce_i, self._nonce_r,
                                                           shared), self._nonce_i, self._nonce_r)
        self.state = State.INIT_DONE

    # ................................................... IKE_AUTH (responder)
    def _on_auth_request(self, ctx: _Ctx, msg: IkeMessage, addr: Addr, now: float) -> None:
        self._now = now
        problem = self._verify_peer_auth(msg, initiator_auth=True)
        if problem is None and self.config.authorize is not None:
            assert self.remote_identity is not None
            scoped = self.config.authorize(self.config, self.remote_identity,
                                           self.remote_certificate, str(addr[0]))
            if isinstance(scoped, str):
                problem = scoped
            else:
                self.config = scoped
        if problem is not None:
            problem = f"we refused the peer's AUTH: {problem}"
            self._send_response(ctx, msg, [NotifyPayload(Notify.AUTHENTICATION_FAILED)], addr)
            self._emit(AuthenticationFailed(self.config.name, problem, False))
            self._fail(f"authentication failed: {problem}", now)
            return
        self.remote_addr = (str(addr[0]), int(addr[1]))   # §2.23, now that it is authentic
        self.peer_initial_contact = bool(notifies(msg.payloads, Notify.INITIAL_CONTACT))
        payloads = self._auth_payloads(initiator=False)
        mobike.peer_auth(self, msg)
        if self.mobike.peer_supported:
            payloads += mobike.auth_payloads(self)   # RFC 4555 §3.3
        child_payloads, child, failure = self._responder_child(msg, self._nonce_i, self._nonce_r,
                                                               None, self.config.child_name, None, now)
        if find(msg.payloads, SaPayload):
            payloads += child_payloads
        self._send_response(ctx, msg, payloads, addr)
        self._established(now)
        if child is not None:
            self._child_added(child, None, now)
        elif failure is not None and find(msg.payloads, SaPayload):
            self._emit(ChildSaFailed(self.config.name, self.config.child_name, failure))

    def _responder_child(self, msg: IkeMessage, ni: bytes, nr: bytes, ke: KePayload | None,
                         name: str, rekeyed: _Child | None, now: float, include_nonce: bool = False
                         ) -> tuple[list[Payload], _Child | None, str | None]:
        """Choose ESP proposal and narrow TS for a child the peer asks for."""
        sas, tsi, tsr = find(msg.payloads, SaPayload), find(msg.payloads, TsiPayload), find(msg.payloads, TsrPayload)
        if len(sas) != 1 or len(tsi) != 1 or len(tsr) != 1:
            return [NotifyPayload(Notify.INVALID_SYNTAX)], None, "SA or TS payload missing"
        with_dh = ke is not None
        picked = choose(esp_sa_payload_proposals(self.config.esp_suites(), b"", with_dh), sas[0].proposals)
        if picked is None or len(picked[0].spi) != 4:
            return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], None, "no acceptable ESP proposal"
        suite, group, esn = esp_suite_of(picked[1])
        shared = None
        extra: list[Payload] = []
        if group:
            if ke is None or ke.group != group:
                return ([NotifyPayload(Notify.INVALID_KE_PAYLOAD, struct.pack("!H", group))], None,
                        "PFS group mismatch")
            dh = DhKey(group, self._rng)
            try:
                shared = dh.shared_secret(ke.data)
            except IkeCryptoError as exc:
                return [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], None, str(exc)
            extra.append(KePayload(group, dh.public))
        if rekeyed is not None:
            local_cfg, remote_cfg = rekeyed.local_ts, rekeyed.remote_ts
        else:
            local_cfg, remote_cfg = self._default_local_ts(), self._default_remote_ts()
        # §2.9 narrowing: the initiator's TSi is our remote side.
        remote_ts = _narrow(tsi[0].selectors, remote_cfg)
        local_ts = _narrow(tsr[0].selectors, local_cfg)
        if not remote_ts or not local_ts:
            return [NotifyPayload(Notify.TS_UNACCEPTABLE)], None, "traffic selectors unacceptable"
        transport = bool(notifies(msg.payloads, Notify.USE_TRANSPORT_MODE)) and \
            self.config.mode is Mode.TRANSPORT
        spi_in = self._allocate_spi(now)
        spi_out = int.from_bytes(picked[0].spi, "big")
        accepted = accepted_proposal(picked[0], picked[1])
        from dataclasses import replace
        accepted = replace(accepted, spi=spi_in.to_bytes(4, "big"))
        payloads: list[Payload] = []
        if transport:
            payloads.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
        payloads += [SaPayload((accepted,)), *([NoncePayload(nr)] if include_nonce else []), *extra,
                     TsiPayload(remote_ts), TsrPayload(local_ts)]
        child = self._make_child(name, spi_in, spi_out, suite,
                                 Mode.TRANSPORT if transport else Mode.TUNNEL, esn, local_ts,
                                 remote_ts, ni, nr, shared, initiator=False)
        return payloads, child, None

    # ............................................ CREATE_CHILD_SA (initiator)
    def _start_create_child(self, now: float, rekey: _Child | None = None, name: str | None = None,
                            local_ts: tuple | None = None, remote_ts: tuple | None = None,
                            mode: Mode | None = None) -> None:
        ctx = self._ctx
        if rekey is not None and rekey.spi_in not in self.children:
            self._kick(now)
            return
        esp = self.config.esp_suites()
        pfs = [s.dh for s in esp if s.dh]
        dh = DhKey(pfs[0], self._rng) if pfs else None
        ni = self._rng(self.config.nonce_len)
        spi_in = self._allocate_spi(now)
        payloads: list[Payload] = []
        if rekey is not None:
            payloads.append(NotifyPayload(Notify.REKEY_SA, b"", ProtocolId.ESP,
                                          rekey.spi_in.to_bytes(4, "big")))
            mode = rekey.mode
        elif mode is None:
            mode = self.config.mode
        if mode is Mode.TRANSPORT:
            payloads.append(NotifyPayload(Notify.USE_TRANSPORT_MODE))
        lts = rekey.local_ts if rekey else (local_ts or self._default_local_ts())
        rts = rekey.remote_ts if rekey else (remote_ts or self._default_remote_ts())
        payloads += [SaPayload(esp_sa_payload_proposals(esp, spi_in.to_bytes(4, "big"), dh is not None)),
                     NoncePayload(ni)]
        if dh is not None:
            payloads.append(KePayload(dh.group, dh.public))
        payloads += [TsiPayload(lts), TsrPayload(rts)]
        child_name = rekey.name if rekey else (name or self.config.child_name)

        def on_response(msg: IkeMessage, t: float) -> None:
            nonces = find(msg.payloads, NoncePayload)
            if len(nonces) != 1:
                self._emit(ChildSaFailed(self.config.name, child_name, "no nonce in response"))
                return
            if rekey is not None and not local_ts:
                # keep the rekeyed child's selectors as "proposed"
                pass
            self._finish_child_initiator(msg, spi_in, ni, nonces[0].nonce, dh, child_name, rekey, t,
                                         wanted_mode=mode, proposed=(lts, rts))
            if rekey is not None and spi_in in self.children:
                # §2.8: the initiator of the rekey deletes the old SA.
                self._ctx.queue.appendleft(lambda t2: self._start_delete_child(t2, rekey))
                self._rekeyed_by(rekey, spi_in, min(ni, nonces[0].nonce), True, t)

        self._send_request(ctx, ExchangeType.CREATE_CHILD_SA, payloads, on_response, now)

    def _rekeyed_by(self, old: _Child, spi_in: int, lowest_nonce: bytes, ours: bool,
                    now: float) -> None:
        """*old* has a new successor; two of them is a simultaneous rekey.

        §2.8.1: of the two new CHILD_SAs, the one whose exchange had the
        lowest of the four nonces is redundant, and the side that initiated
        that exchange deletes it.  Both sides see the same four nonces, so
        exactly one side deletes.
        """
        old.successors.append((spi_in, lowest_nonce, ours))
        if len(old.successors) != 2:
            return
        loser = min(old.successors, key=lambda s: s[1])
        self._count("simultaneous_child_rekeys")
        log.info("simultaneous child sa rekey", sa=self.config.name, child=old.name,
                 redundant=f"{loser[0]:#010x}", deleted_by="us" if loser[2] else "peer")
        redundant = self.children.get(loser[0])
        if loser[2] and redundant is not None:
            self._ctx.queue.append(lambda t: self._start_delete_child(t, redundant))
            self._kick(now)

    def _start_rekey_ike(self, now: float) -> None:
        ctx = self._ctx
        suites = self.config.ike_suites()
        assert ctx.suite is not None
        # Offer the current suite first (same algorithms is the usual choice).
        ordered = [ctx.suite] + [s for s in suites if s != ctx.suite]
        dh = DhKey(ordered[0].dh, self._rng)
        ni = self._rng(self.config.nonce_len)
        new_spi = self._new_ike_spi()
        payloads: list[Payload] = [SaPayload(ike_sa_payload_proposals(ordered, new_spi)),
                                   NoncePayload(ni), KePayload(dh.group, dh.public)]

        def on_response(msg: IkeMessage, t: float) -> None:
            crossed, self._crossed_ike, self._ike_rekey_on = self._crossed_ike, None, None
            errors = [n for n in find(msg.payloads, NotifyPayload) if n.notify_type <= NOTIFY_ERROR_MAX]
            sas, kes, nonces = find(msg.payloads, SaPayload), find(msg.payloads, KePayload), find(msg.payloads, NoncePayload)
            problem = None
            if errors or len(sas) != 1 or len(kes) != 1 or len(nonces) != 1:
                problem = _notify_name(errors[0].notify_type) if errors else "payload missing"
            else:
                picked = choose(ike_sa_payload_proposals(ordered), sas[0].proposals)
                if picked is None or len(picked[0].spi) != 8 or kes[0].group != dh.group:
                    problem = "response unusable"
                else:
                    try:
                        shared = dh.shared_secret(kes[0].data)
                    except IkeCryptoError as exc:
                        problem = str(exc)
            if problem is not None:
                log.info("ike rekey refused", sa=self.config.name, reason=problem)
                if crossed is not None:
                    # The peer's own rekey went through: it is the new IKE SA,
                    # and the peer, its initiator, deletes the old one.
                    self._adopt_ike(crossed[0], t)
                return
            assert picked is not None
            new = self._derive_ike(ike_suite_of(picked[1]), new_spi, picked[0].spi, True, shared,
                                   ni, nonces[0].nonce)
            ours_lowest = min(ni, nonces[0].nonce)
            if crossed is not None:
                # §2.8.2: the new IKE SA of the exchange with the lowest of the
                # four nonces is redundant; its initiator deletes it, and the
                # initiator of the survivor deletes the old IKE SA.
                self._count("simultaneous_ike_rekeys")
                redundant_is_ours = ours_lowest < crossed[1]
                log.info("simultaneous ike sa rekey", sa=self.config.name,
                         redundant="ours" if redundant_is_ours else "peer's")
                if redundant_is_ours:
                    self._adopt_ike(crossed[0], t)
                    self._spare = new
                    self._send_request(new, ExchangeType.INFORMATIONAL,
                                       [DeletePayload(ProtocolId.IKE)], self._spare_deleted, t)
                    return
                self._spare = crossed[0]    # the peer deletes it; we answer its DELETE
            self._adopt_ike(new, t)
            old = self._old
            assert old is not None
            old.queue.append(lambda t2: self._start_delete_old(t2, old))

        self._ike_rekey_on = ctx
        self._send_request(ctx, ExchangeType.CREATE_CHILD_SA, payloads, on_response, now)

    def _spare_deleted(self, msg: IkeMessage, now: float) -> None:
        self._spare = None

    def _derive_ike(self, suite: IkeSuite, spi_i: bytes, spi_r: bytes, we_initiated: bool,
                    shared: bytes, ni: bytes, nr: bytes) -> _Ctx:
        """The context of a rekeyed IKE SA, keyed from the current one's SK_d (§2.18)."""
        old = self._ctx
        assert old.keys is not None and old.suite is not None
        new = _Ctx(spi_i, spi_r, we_initiated)
        seed = crypto.rekey_skeyseed(old.suite.prf, old.keys.sk_d, shared, ni, nr)
        self._install_ike_keys(new, suite, seed, ni, nr)
        return new

    def _adopt_ike(self, new: _Ctx, now: float) -> None:
        """Make the rekeyed IKE SA current; the old one awaits its DELETE (§2.18)."""
        old = self._ctx
        new.queue = old.queue
        old.queue = deque()
        self._old = old
        self._ctx = new
        self.role = Role.INITIATOR if new.original_initiator else Role.RESPONDER
        self._emit(IkeSaRekeyed(self.config.name, old.spi_i, old.spi_r, new.spi_i, new.spi_r,
                                str(new.suite)))
        log.info("ike sa rekeyed", sa=self.config.name, spi_i=new.spi_i.hex(),
                 spi_r=new.spi_r.hex())

    def _start_delete_old(self, now: float, old: _Ctx) -> None:
        def on_response(msg: IkeMessage, t: float) -> None:
            if self._old is old:
                self._old = None
        self._send_request(old, ExchangeType.INFORMATIONAL, [DeletePayload(ProtocolId.IKE)],
                           on_response, now)

    def _start_delete_child(self, now: float, child: _Child) -> None:
        if child.spi_in not in self.children:
            self._kick(now)
            return
        child.deleting = True

        def on_response(msg: IkeMessage, t: float) -> None:
            if self.children.pop(child.spi_in, None) is not None:
                self._emit(ChildSaDeleted(self.config.name, child.name, child.spi_in,
                                          child.spi_out, False))

        self._send_request(self._ctx, ExchangeType.INFORMATIONAL,
                           [DeletePayload(ProtocolId.ESP, (child.spi_in.to_bytes(4, "big"),))],
                           on_response, now)

    def _start_delete_ike(self, now: float) -> None:
        self.state = State.DELETING

        def on_response(msg: IkeMessage, t: float) -> None:
            self._deleted(by_peer=False)

        ctx = self._ctx
        ctx.queue.clear()
        mid = ctx.mid_out
        payloads = [DeletePayload(ProtocolId.IKE)]
        msg = IkeMessage(ctx.spi_i, ctx.spi_r, ExchangeType.INFORMATIONAL, mid,
                         ctx.original_initiator, False, tuple(payloads))
        data = encode_message(msg, ctx.cipher_out)
        ctx.mid_out = mid + 1
        ctx.pending = _Pending(mid, ExchangeType.INFORMATIONAL, data, on_response, 1,
                               now + self._timeout(1))
        self._emit_raw(data)

    def _start_dpd(self, now: float) -> None:
        def on_response(msg: IkeMessage, t: float) -> None:
            self._count("liveness_ok")
        self._send_request(self._ctx, ExchangeType.INFORMATIONAL, [], on_response, now)

    def _deleted(self, by_peer: bool) -> None:
        ctx = self._ctx
        for child in list(self.children.values()):
            self._emit(ChildSaDeleted(self.config.name, child.name, child.spi_in, child.spi_out, by_peer))
        self.children.clear()
        self.state = State.DELETED
        ctx.pending = None
        self._old = None
        self._spare = None
        log.info("ike sa deleted", sa=self.config.name, by_peer=by_peer)
        self._emit(IkeSaDeleted(self.config.name, ctx.spi_i, ctx.spi_r, by_peer))

    # ............................................ CREATE_CHILD_SA (responder)
    def _on_create_child_request(self, ctx: _Ctx, msg: IkeMessage, addr: Addr, now: float) -> None:
        if self.state is not State.ESTABLISHED:
            self._send_response(ctx, msg, [NotifyPayload(Notify.TEMPORARY_FAILURE)], addr)
            return
        sas = find(msg.payloads, SaPayload)
        nonces = find(msg.payloads, NoncePayload)
        kes = find(msg.payloads, KePayload)
        if len(sas) != 1 or len(nonces) != 1 or len(kes) > 1:
            self._send_response(ctx, msg, [NotifyPayload(Notify.INVALID_SYNTAX)], addr)
            return
        ke = kes[0] if kes else None
        if sas[0].proposals and sas[0].proposals[0].protocol == ProtocolId.IKE:
            self._on_rekey_ike_request(ctx, msg, sas[0], nonces[0], ke, addr, now)
            return
        rekeyed = None
        for n in notifies(msg.payloads, Notify.REKEY_SA):
            spi = int.from_bytes(n.spi, "big") if len(n.spi) == 4 else -1
            rekeyed = next((c for c in self.children.values() if c.spi_out == spi), None)
            if rekeyed is None:
                self._send_response(ctx, msg, [NotifyPayload(Notify.CHILD_SA_NOT_FOUND, b"",
                                                             ProtocolId.ESP, n.spi)], addr)
                return
        nr = self._rng(self.config.nonce_len)
        name = rekeyed.name if rekeyed else self.config.child_name
        payloads, child, failure = self._responder_child(msg, nonces[0].nonce, nr, ke, name, rekeyed,
                                                         now, include_nonce=True)
        self._send_response(ctx, msg, payloads, addr)
        if child is not None:
            self._child_added(child, rekeyed, now, by_peer=True)
            if rekeyed is not None:
                self._rekeyed_by(rekeyed, child.spi_in, min(nonces[0].nonce, nr), False, now)
        else:
            self._emit(ChildSaFailed(self.config.name, name, failure or "refused"))

    def _on_rekey_ike_request(self, ctx: _Ctx, msg: IkeMessage, sa: SaPayload, nonce: NoncePayload,
                              ke: KePayload | None, addr: Addr, now: float) -> None:
        picked = choose(ike_sa_payload_proposals(self.config.ike_suites()), sa.proposals)
        if picked is None or len(picked[0].spi) != 8:
            self._send_response(ctx, msg, [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], addr)
            return
        suite = ike_suite_of(picked[1])
        if ke is None or ke.group != suite.dh:
            self._send_response(ctx, msg, [NotifyPayload(Notify.INVALID_KE_PAYLOAD,
                                                         struct.pack("!H", suite.dh))], addr)
            return
        dh = DhKey(suite.dh, self._rng)
        try:
            shared = dh.shared_secret(ke.data)
        except IkeCryptoError:
            self._send_response(ctx, msg, [NotifyPayload(Notify.NO_PROPOSAL_CHOSEN)], addr)
            return
        nr = self._rng(self.config.nonce_len)
        new_spi = self._new_ike_spi()
        from dataclasses import replace
        accepted = replace(accepted_proposal(picked[0], picked[1]), spi=new_spi)
        self._send_response(ctx, msg, [SaPayload((accepted,)), NoncePayload(nr),
                                       KePayload(dh.group, dh.public)], addr)
        new = self._derive_ike(suite, picked[0].spi, new_spi, False, shared, nonce.nonce, nr)
        if self._ike_rekey_on is ctx:
            # Our own rekey of this IKE SA is under way: which new SA stays is
            # decided when its response arrives (§2.8.2).
            self._crossed_ike = (new, min(nonce.nonce, nr))
            log.info("ike rekey crossed", sa=self.config.name, peer_spi_i=new.spi_i.hex())
            return
        self._adopt_ike(new, now)

    # .............................................. INFORMATIONAL (responder)
    def _on_informational_request(self, ctx: _Ctx, msg: IkeMessage, addr: Addr, now: float) -> None:
        deletes = find(msg.payloads, DeletePayload)
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            self._send_response(ctx, msg, [], addr)
            if ctx is self._old:
                self._old = None      # the peer finished its IKE rekey
                return
            if ctx is self._spare:
                self._spare = None    # the peer's redundant SA of a simultaneous rekey
                return
            if ctx is self._ctx and self._crossed_ike is not None:
                # A simultaneous rekey the peer won, and it deletes the old
                # IKE SA (§2.8.2) before our own answer came: its new SA is
                # the one; our request on the old SA is moot.
                crossed, self._crossed_ike, self._ike_rekey_on = self._crossed_ike, None, None
                ctx.pending = None
                self._count("simultaneous_ike_rekeys")
                log.info("simultaneous ike sa rekey", sa=self.config.name, redundant="ours")
                self._adopt_ike(crossed[0], now)
                self._old = None
                return
            self._deleted(by_peer=True)
            return
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol != ProtocolId.ESP:
                continue
            for raw in d.spis:
                spi = int.from_bytes(raw, "big")
                child = next((c for c in self.children.values() if c.spi_out == spi), None)
                if child is None:
                    continue
                # §1.4.1: answer with our inbound SPI of the pair; if we were
                # deleting it ourselves, the answer crosses our request.
                ours.append(child.spi_in.to_bytes(4, "big"))
                del self.children[child.spi_in]
                self._emit(ChildSaDeleted(self.config.name, child.name, child.spi_in,
                                          child.spi_out, True))
        extra = mobike.answer_informational(self, msg, addr, now) if ctx is self._ctx else []
        self._send_response(ctx, msg, ([DeletePayload(ProtocolId.ESP, tuple(ours))] if ours
                                       else []) + extra, addr)
        self._kick(now)                    # a MOBIKE address check queued above

    _now: float = 0.0


def _notify_name(ntype: int) -> str:
    try:
        return Notify(ntype).name
    except ValueError:
        return f"notify {ntype}"


def _hash_algs(payloads: tuple[Payload, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for n in notifies(payloads, Notify.SIGNATURE_HASH_ALGORITHMS):
        out += [struct.unpack_from("!H", n.data, i)[0] for i in range(0, len(n.data) - 1, 2)]
    return tuple(out)


def _narrow(proposed: tuple[TrafficSelector, ...], allowed: tuple[TrafficSelector, ...]
            ) -> tuple[TrafficSelector, ...]:
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            x = p.intersect(a)
            if x is not None and x not in out:
                out.append(x)
    return tuple(out)


def _subset(got: tuple[TrafficSelector, ...], proposed: tuple[TrafficSelector, ...]) -> bool:
    return all(any(p.intersect(g) == g for p in proposed) for g in got)
