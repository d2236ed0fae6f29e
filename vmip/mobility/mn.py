"""The mobile node: home registration with the HA, IRO registration with each CN.

One :class:`MobileNode` holds the binding update list (RFC 6275 §11.1):
one entry for the HA and one per correspondent.  Movement (draft §6.1,
:meth:`MobileNode.set_coa`) re-registers with the HA first, then with every
CN once the HA has accepted (RFC 6275 §11.7.2: correspondent registration
starts once the home address is known to be valid).

Every BU is sent from the HoA with the CoA as ancillary data (the outbound
"remap. src: ancillary" rule puts it on the wire) and names the CoA in an
Alternate CoA option: the HA takes the CoA from it (draft appendix A), a CN
checks it against the on-wire source (draft §3.3).

Per entry the state machine is::

    IDLE --BU--> REGISTERING --BA ok--> BOUND --80 % of lifetime--> REGISTERING
                     |   ^                  (refresh; the binding stays valid)
                AOTC |   | AOTR back-off reached the maximum: BU again
                     v   |
                   PROVING --BA ok--> BOUND           (CNs only, draft §4.5.1)
    any --BA >= 128 (not 135)--> REFUSED              (until the next movement)
    any --return home / deregister()--> DEREGISTERING --BA--> IDLE

BUs are resent with exponential back-off (RFC 6275 §11.8), each with a new
sequence number, so a BA tells which transmission it answers (its RTT).
No more than MAX_UPDATE_RATE (3) BUs a second go to one peer (§11.8): one
over the limit waits until the oldest of the last three is a second old,
and is built only then, so it carries the newest CoA (a flapping link
converges on where the MN is, not on where it was).
While PROVING the AOTR is what is resent (draft §4.5.1).
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv6Address

from vmip.log import get_logger
from vmip.mobility.aot import Rng
from vmip.mobility.binding import (
    MobilityCore,
    MobilityError,
    OnWireArgument,
    lifetime_seconds,
    lifetime_units,
    next_sequence,
    onwire_of,
)
from vmip.mobility.events import (
    AotOfferSent,
    AotResponseSent,
    AotStatusReceived,
    BindingAccepted,
    BindingDeregistered,
    BindingErrorReceived,
    BindingExpired,
    BindingRefused,
    BindingUpdateSent,
    CoaChanged,
    DataPathChanged,
    RegistrationTimeout,
    TunnelEndpointChanged,
)
from vmip.mobility.timers import (
    INITIAL_BINDACK_TIMEOUT,
    INITIAL_BINDACK_TIMEOUT_FIRST_REG,
    MAX_UPDATE_RATE,
    REFRESH_FRACTION,
    Retransmission,
    earliest,
)
from vmip.wire.mh import (
    AlternateCareOfAddress,
    AotChallenge,
    AotOffer,
    AotResponse,
    AotStatus,
    BindingAck,
    BindingAckStatus,
    BindingError,
    BindingErrorStatus,
    BindingRefreshRequest,
    BindingUpdate,
)

log = get_logger(__name__)

#: Status 135 answers are followed at once with a corrected BU, at most this
#: many times per registration; then the normal back-off takes over (a peer
#: answering 135 to everything must not make us loop).
MAX_SEQUENCE_RESYNCS = 3
#: BU sequence numbers remembered per registration, to match BAs and measure RTTs.
_SENT_MEMORY = 16


class EntryState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    PROVING = "proving"
    BOUND = "bound"
    DEREGISTERING = "deregistering"
    REFUSED = "refused"


@dataclass(slots=True)
class BindingUpdateListEntry:
    """One peer in the binding update list (RFC 6275 §11.1).

    ``coa`` is the CoA named by the latest BU (``None`` for a BU sent from
    home); ``lifetime`` the granted lifetime in seconds; ``expires_at`` when
    the peer's binding runs out (``None``: the peer holds none we know of).
    """

    peer: IPv6Address
    home: bool
    sequence: int
    state: EntryState = EntryState.IDLE
    coa: IPv6Address | None = None
    requested_units: int = 0
    lifetime: int = 0
    expires_at: float | None = None
    refresh_at: float | None = None
    retransmission: Retransmission | None = None
    sent_at: dict[int, float] = field(default_factory=dict)
    aotr_nonce: bytes | None = None
    direct: IPv6Address | None = None  # the CoA IPsec data to this peer leaves from, if direct
    resyncs: int = 0
    unsupported: bool = False
    #: When the last MAX_UPDATE_RATE BUs to this peer left (RFC 6275 §11.8).
    bu_times: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_UPDATE_RATE))
    #: A BU the rate limit held back goes out then, built afresh.
    deferred_until: float | None = None

    def deadline(self) -> float | None:
        refresh = self.refresh_at if self.state is EntryState.BOUND else None
        retransmit = self.retransmission.deadline if self.retransmission is not None else None
        return earliest(retransmit, refresh, self.expires_at, self.deferred_until)


@dataclass(slots=True)
class _EarlyTest:
    """An early test of ``address`` with one CN (draft §4.5.2)."""

    peer: IPv6Address
    address: IPv6Address
    retransmission: Retransmission
    nonce: bytes | None = None  # set once the AOTC came: the AOTR is then what is resent


class MobileNode(MobilityCore):
    """The MN side of MIPv6 with IRO (sans-IO).

    ``correspondents`` are the CNs (or other MNs' HoAs) to register with;
    ``lifetime`` the binding lifetime asked for, in seconds (RFC 6275 §6.1.7
    units of 4 s); ``key_management_mobility`` sets K in home registrations
    (the MN-HA IKE SA follows the CoA, RFC 6275 §11.7.1).  The MN starts at
    home: call :meth:`set_coa` with the first CoA.

    ``peer_coa(peer)``: the CoA this node's own correspondent role holds for
    ``peer`` when ``peer`` is another MN's HoA (MN-MN, draft §5.2.2 example
    4), else ``None``.  The first transmission of a BU, AOTR or AOTO goes
    there directly (``onwire_dst``); retransmissions go to the peer's HoA,
    through its HA, which knows where it is even if both MNs moved at once.
    """

    def __init__(
        self,
        hoa: IPv6Address,
        home_agent: IPv6Address,
        correspondents: Iterable[IPv6Address] = (),
        *,
        lifetime: int = 420,
        clock_now: float = 0.0,
        rng: Rng = os.urandom,
        key_management_mobility: bool = False,
        initial_sequence: int | None = None,
        peer_coa: Callable[[IPv6Address], IPv6Address | None] | None = None,
        correspondents_with_home: bool = False,
        multiple_care_of: bool = False,
    ):
        super().__init__()
        #: RFC 5648: one binding per BID (link) with every peer, through
        #: :meth:`set_care_of_addresses`; false: never a BID option.
        self.multiple_care_of = multiple_care_of
        # True: on a move between foreign links whose HoA binding is still
        # live at the HA, BUs to the CNs leave with the home BU instead of
        # after the home BA (RFC 6275 §11.7.2 only asks that the HoA be valid).
        self.correspondents_with_home = correspondents_with_home
        self._peer_coa = peer_coa or (lambda peer: None)
        self.hoa = IPv6Address(hoa)
        self.home_agent = IPv6Address(home_agent)
        self.lifetime_units = lifetime_units(lifetime)
        if self.lifetime_units < 1:
            raise ValueError("lifetime must be at least 4 seconds")
        self.key_management_mobility = key_management_mobility
        #: The K bit of the last accepted home BA (``None``: none yet).  False
        #: means the HA's key manager does not follow the CoA: the MN's IKE
        #: SA with it must be set up again from the CoA (RFC 6275 §11.7.3).
        self.home_key_management: bool | None = None
        self._rng = rng
        self._initial_sequence = initial_sequence
        self._coa: IPv6Address | None = None
        self._started_at = clock_now
        self._home = self._new_entry(self.home_agent, home=True)
        self._correspondents: dict[IPv6Address, BindingUpdateListEntry] = {}
        for correspondent in correspondents:
            address = IPv6Address(correspondent)
            if address in (self.home_agent, self.hoa):
                raise ValueError(f"{address} cannot be a correspondent of this MN")
            self._correspondents[address] = self._new_entry(address, home=False)
        self._early_tests: dict[tuple[IPv6Address, IPv6Address], _EarlyTest] = {}

    def _new_entry(self, peer: IPv6Address, home: bool) -> BindingUpdateListEntry:
        if self._initial_sequence is not None:
            start = self._initial_sequence % 65536
        else:
            start = int.from_bytes(bytes(self._rng(2))[:2].rjust(2, b"\0"), "big")
        # The first BU uses start + 1: keep the stored value "the last one sent".
        return BindingUpdateListEntry(peer, home, (start - 1) % 65536)

    # -- inspection -----------------------------------------------------

    @property
    def coa(self) -> IPv6Address | None:
        """The current CoA; ``None`` at home."""
        return self._coa

    @property
    def at_home(self) -> bool:
        return self._coa is None

    def entries(self) -> list[BindingUpdateListEntry]:
        """Copies of the binding update list: the HA first, then the CNs."""
        return [replace(self._home)] + [replace(e) for e in self._correspondents.values()]

    def entry(self, peer: IPv6Address) -> BindingUpdateListEntry | None:
        found = self._entry_for(peer)
        return replace(found) if found is not None else None

    def _entry_for(self, peer: IPv6Address) -> BindingUpdateListEntry | None:
        if peer == self.home_agent:
            return self._home
        return self._correspondents.get(peer)

    # -- commands -------------------------------------------------------

    def set_coa(self, coa: IPv6Address | None, now: float) -> None:
        """Movement (draft §6.1): the MN now sends from ``coa``; ``None`` (or the HoA): back home.

        Reverts direct data paths to the HA tunnel, reports the new CoA and
        tunnel endpoint, then registers with the HA; the CNs follow when the
        HA accepts.  Returning home deregisters with the HA, then the CNs.
        """
        new = None if coa is None or IPv6Address(coa) == self.hoa else IPv6Address(coa)
        if new == self._coa:
            return
        old, self._coa = self._coa, new
        for entry in self._correspondents.values():
            # Until the CN accepts the new CoA, IPsec data goes through the HA
            # tunnel; its binding (expires_at) still names the old CoA.
            self._set_direct(entry, False)
            entry.retransmission = None
            entry.aotr_nonce = None
            if not entry.unsupported:
                entry.state = EntryState.IDLE
        self._early_tests.clear()
        self._emit(CoaChanged(self.hoa, old, new))
        self._emit(TunnelEndpointChanged(self.hoa, new))
        log.info("care-of address changed", hoa=self.hoa, old=old, new=new)
        # Whether the HA still holds a live binding for the HoA (sampled before
        # the new home BU is sent): then the HoA is valid (RFC 6275 §11.7.2).
        home_valid = self._home.expires_at is not None and self._home.expires_at > now
        if (
            new is not None
            or self._home.state is not EntryState.IDLE
            or self._home.expires_at is not None
        ):
            self._start_registration(self._home, now)
            if new is not None and home_valid and self.correspondents_with_home:
                # Moving between foreign links: an IRO BU goes straight to the
                # CN from the CoA and its AOTC to the CoA (draft §4.5.1), so
                # nothing in it waits for the HA.  Waiting for the home BA
                # cost one extra RTT of CN->MN outage per handover.
                self._register_correspondents(now)
        else:
            self._register_correspondents(now)

    def deregister(self, now: float) -> None:
        """Delete every binding while staying away (shutting down): lifetime-0 BUs to all peers."""
        # A peer that refused our last BU holds nothing of ours unless an
        # earlier binding is still running (expires_at).
        live = (EntryState.REGISTERING, EntryState.PROVING, EntryState.BOUND)
        for entry in [*self._correspondents.values(), self._home]:
            if entry.state in live or entry.expires_at is not None:
                self._start_registration(entry, now, deregistration=True)

    def offer_address_test(self, peer: IPv6Address, address: IPv6Address, now: float) -> None:
        """Early test (draft §4.5.2): offer ``peer`` to prove ``address`` (an AOTO sent from it).

        The MN must already be registered with the CN (draft §4.4.1).
        """
        entry = self._correspondents.get(IPv6Address(peer))
        if entry is None:
            raise MobilityError(f"{peer} is not a correspondent of this MN")
        if entry.state is not EntryState.BOUND and entry.expires_at is None:
            raise MobilityError(
                f"not registered with {peer}: an AOTO MUST NOT be sent (draft §4.4.1)"
            )
        address = IPv6Address(address)
        if address == self.hoa:
            raise MobilityError("the home address is not tested by an early test")
        test = _EarlyTest(entry.peer, address, Retransmission(now, INITIAL_BINDACK_TIMEOUT))
        self._early_tests[(entry.peer, address)] = test
        self._send_early(test)

    def testing(self, address: IPv6Address) -> bool:
        """Whether an early test of *address* (not the CoA) is under way with some CN."""
        return any(test.address == address for test in self._early_tests.values())

    # -- sending --------------------------------------------------------

    def _start_registration(
        self, entry: BindingUpdateListEntry, now: float, deregistration: bool | None = None
    ) -> None:
        if deregistration is None:
            deregistration = self._coa is None
        entry.coa = self._coa
        entry.requested_units = 0 if deregistration else self.lifetime_units
        entry.state = EntryState.DEREGISTERING if deregistration else EntryState.REGISTERING
        entry.sent_at.clear()
        entry.resyncs = 0
        entry.aotr_nonce = None
        entry.refresh_at = None
        # RFC 6275 §11.8: a home registration that creates the binding waits
        # longer (the HA defends the HoA with DAD first).
        first = entry.home and entry.expires_at is None and not deregistration
        initial = INITIAL_BINDACK_TIMEOUT_FIRST_REG if first else INITIAL_BINDACK_TIMEOUT
        entry.retransmission = Retransmission(now, initial)
        self._transmit_bu(entry, now)
        if not entry.home:
            if deregistration:
                self._set_direct(entry, False)
            else:
                # Draft §4.5.1: the MN "starts directing its traffic instantly
                # after the emission of the BU".
                self._set_direct(entry, True)

    def _transmit_bu(self, entry: BindingUpdateListEntry, now: float) -> None:
        times = entry.bu_times
        if len(times) == MAX_UPDATE_RATE and now - times[0] < 1.0:
            # RFC 6275 §11.8 MAX_UPDATE_RATE: later, with whatever CoA is current then.
            if entry.deferred_until is None:
                self.counters["bu_rate_limited"] += 1
            entry.deferred_until = times[0] + 1.0
            return
        entry.deferred_until = None
        times.append(now)
        entry.sequence = next_sequence(entry.sequence)
        entry.sent_at[entry.sequence] = now
        while len(entry.sent_at) > _SENT_MEMORY:
            del entry.sent_at[next(iter(entry.sent_at))]
        named = entry.coa if entry.coa is not None else self.hoa
        bu = BindingUpdate(
            entry.sequence,
            entry.requested_units,
            ack=True,
            home_registration=entry.home,
            key_management_mobility=entry.home and self.key_management_mobility,
            options=(AlternateCareOfAddress(named),),
        )
        attempt = entry.retransmission.attempts if entry.retransmission is not None else 1
        self._send(bu, self.hoa, entry.peer, entry.coa, self._towards(entry.peer, attempt == 1))
        self._emit(
            BindingUpdateSent(
                entry.peer,
                self.hoa,
                entry.coa,
                entry.sequence,
                lifetime_seconds(entry.requested_units),
                attempt,
            )
        )

    def _towards(self, peer: IPv6Address, first: bool) -> IPv6Address | None:
        # MN-MN: straight to the peer's CoA the first time; a retransmission
        # goes to its HoA (through its HA) in case it moved as well.  The HoA
        # is named explicitly: with no ancillary destination, a coarse SA's
        # "ancillary or CoA" rule would send it to the stale CoA again.
        coa = self._peer_coa(peer)
        if coa is None:
            return None
        return coa if first else peer

    def _send_aotr(
        self, peer: IPv6Address, address: IPv6Address, nonce: bytes, first: bool = True
    ) -> None:
        # Draft §4.4.3: from the tested address (ancillary); for a HoA test
        # (§4.5.3) the HoA itself, named so that a coarse SA's "ancillary or
        # CoA" rule leaves it, and the packet goes through the HA tunnel.
        onwire_src = address
        towards = self._towards(peer, first) if address != self.hoa else None
        self._send(AotResponse(nonce), self.hoa, peer, onwire_src, towards)
        self._emit(AotResponseSent(peer, self.hoa, address))

    def _send_early(self, test: _EarlyTest) -> None:
        first = test.retransmission.attempts == 1
        if test.nonce is None:
            towards = self._towards(test.peer, first)
            self._send(AotOffer(), self.hoa, test.peer, test.address, towards)
            self._emit(AotOfferSent(test.peer, self.hoa, test.address))
        else:
            self._send_aotr(test.peer, test.address, test.nonce, first)

    def _set_direct(self, entry: BindingUpdateListEntry, direct: bool) -> None:
        target = self._coa if direct else None
        if entry.home or entry.direct == target:
            return
        entry.direct = target
        self._emit(DataPathChanged(self.hoa, target, entry.peer, target is not None))

    def _register_correspondents(self, now: float) -> None:
        """After the home registration (or return home): bring every CN up to date."""
        for entry in self._correspondents.values():
            if entry.unsupported:
                continue
            if self._coa is None:
                # Back home: delete any binding a CN may hold, including one
                # whose BA never reached us (the last BU named a CoA).
                if entry.expires_at is not None or entry.coa is not None:
                    self._start_registration(entry, now, deregistration=True)
                continue
            up_to_date = entry.coa == self._coa and entry.state in (
                EntryState.BOUND,
                EntryState.REGISTERING,
                EntryState.PROVING,
                EntryState.REFUSED,
            )
            if not up_to_date:
                self._start_registration(entry, now)

    # -- input ----------------------------------------------------------

    def receive(
        self,
        mh: bytes,
        src: IPv6Address,
        dst: IPv6Address,
        onwire: OnWireArgument,
        now: float,
    ) -> None:
        """Process one ESP-protected MH message (never raises on bad input).

        ``src``/``dst`` are SA-level (peer, HoA); ``onwire`` is the on-wire
        destination the remap engine replaced with the HoA (the CoA an AOTC
        was sent to, draft §3.4), ``None`` when nothing was remapped.
        """
        message = self._parse(mh, src, dst)
        if message is None:
            return
        if dst != self.hoa:
            self._drop("not_our_home_address", dst=dst)
            return
        entry = self._entry_for(src)
        if entry is None:
            self._drop("unknown_peer", src=src)
            return
        if isinstance(message, BindingAck):
            self._on_binding_ack(entry, message, now)
        elif isinstance(message, BindingRefreshRequest):
            self._on_refresh_request(entry, now)
        elif isinstance(message, BindingError):
            self._on_binding_error(entry, message)
        elif isinstance(message, (AotChallenge, AotStatus)):
            if entry.home:
                self._drop("aot_with_home_agent", src=src)  # draft §7.2
            elif isinstance(message, AotChallenge):
                self._on_challenge(entry, message, onwire_of(onwire, as_source=False), now)
            else:
                self._on_status(entry, message, onwire_of(onwire, as_source=False))
        else:
            self._drop("unexpected_type", src=src, mh_type=message.mh_type)

    def _on_binding_ack(self, entry: BindingUpdateListEntry, ack: BindingAck, now: float) -> None:
        waiting = (EntryState.REGISTERING, EntryState.PROVING, EntryState.DEREGISTERING)
        if entry.state not in waiting:
            self._drop("ba_unexpected", src=entry.peer)
            return
        if ack.status == BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW:
            self._resynchronise(entry, ack, now)
            return
        sent = entry.sent_at.get(ack.sequence)
        if sent is None:
            # RFC 6275 §11.7.3: a BA must match an outstanding BU.
            self._drop("ba_sequence_mismatch", src=entry.peer, sequence=ack.sequence)
            return
        rtt = now - sent
        deregistering = entry.state is EntryState.DEREGISTERING
        if deregistering and (
            ack.accepted or ack.status == BindingAckStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE
        ):
            # 133 to a deregistration: the HA had no binding left, which is the goal.
            self._finish_deregistration(entry, now)
            return
        if not ack.accepted:
            entry.state = EntryState.REFUSED
            entry.retransmission = None
            entry.aotr_nonce = None
            self._set_direct(entry, False)
            self._emit(BindingRefused(entry.peer, self.hoa, entry.coa, ack.status))
            log.info("binding refused", peer=entry.peer, status=ack.status)
            return
        granted = lifetime_seconds(min(ack.lifetime_units, entry.requested_units))
        entry.retransmission = None
        entry.aotr_nonce = None
        entry.sent_at.clear()
        if granted == 0:
            entry.state = EntryState.IDLE
            entry.expires_at = None
            self._finish_deregistration(entry, now)
            return
        entry.state = EntryState.BOUND
        entry.lifetime = granted
        # RFC 6275 §11.7.3: the lifetime runs from when the BU was sent.
        entry.expires_at = sent + granted
        refresh_after = REFRESH_FRACTION * granted
        advice = ack.refresh_advice
        if advice is not None and 0 < advice.interval_seconds < refresh_after:
            refresh_after = advice.interval_seconds
        entry.refresh_at = sent + refresh_after
        # RFC 6275 §11.7.3: the MN MUST examine the BA's K bit; it counts only
        # when the BU asked for it (§10.3.1: the HA echoes it, never sets it alone).
        key_management = entry.home and self.key_management_mobility \
            and ack.key_management_mobility
        if entry.home:
            self.home_key_management = key_management
        self._emit(BindingAccepted(entry.peer, self.hoa, entry.coa, granted, rtt,
                                   key_management))
        log.info("binding accepted", peer=entry.peer, coa=entry.coa, lifetime=granted, rtt=rtt)
        if not entry.home:
            self._set_direct(entry, True)
        elif entry.coa == self._coa:
            self._register_correspondents(now)

    def _finish_deregistration(self, entry: BindingUpdateListEntry, now: float) -> None:
        entry.state = EntryState.IDLE
        entry.retransmission = None
        entry.expires_at = None
        entry.refresh_at = None
        entry.lifetime = 0
        entry.sent_at.clear()
        self._set_direct(entry, False)
        self._emit(BindingDeregistered(entry.peer, self.hoa))
        log.info("binding deleted", peer=entry.peer)
        if entry.home and self._coa is None:
            self._register_correspondents(now)

    def _resynchronise(self, entry: BindingUpdateListEntry, ack: BindingAck, now: float) -> None:
        # RFC 6275 §11.7.3: status 135 carries the peer's last accepted
        # sequence number; continue from it with a new BU.
        self.counters["sequence_out_of_window"] += 1
        if entry.resyncs >= MAX_SEQUENCE_RESYNCS:
            self._drop("sequence_resync_limit", src=entry.peer)
            return
        entry.resyncs += 1
        entry.sequence = ack.sequence
        entry.sent_at.clear()
        if entry.state is EntryState.PROVING:
            entry.state = EntryState.REGISTERING
            entry.aotr_nonce = None
        if entry.retransmission is None:
            entry.retransmission = Retransmission(now, INITIAL_BINDACK_TIMEOUT)
        else:
            entry.retransmission.restart(now)
        self._transmit_bu(entry, now)

    def _on_refresh_request(self, entry: BindingUpdateListEntry, now: float) -> None:
        # RFC 6275 §11.7.4: answer a BRR with a BU if the binding is in use.
        if entry.state is not EntryState.BOUND or self._coa is None:
            self._drop("brr_not_bound", src=entry.peer)
            return
        self._start_registration(entry, now)

    def _on_binding_error(self, entry: BindingUpdateListEntry, error: BindingError) -> None:
        self._emit(BindingErrorReceived(entry.peer, self.hoa, error.status))
        if error.status == BindingErrorStatus.UNRECOGNIZED_MH_TYPE and not entry.home:
            # RFC 6275 §11.3.6: the CN does not speak this protocol (here: IRO's
            # AOT*); stop route optimisation with it.
            entry.unsupported = True
            entry.state = EntryState.REFUSED
            entry.retransmission = None
            self._set_direct(entry, False)

    def _on_challenge(
        self,
        entry: BindingUpdateListEntry,
        challenge: AotChallenge,
        tested: IPv6Address | None,
        now: float,
    ) -> None:
        # Not remapped: the AOTC came to the HoA through the tunnel, a HoA test (§4.5.3).
        address = tested or self.hoa
        if address == self.hoa:
            self._send_aotr(entry.peer, self.hoa, challenge.nonce)
            return
        test = self._early_tests.get((entry.peer, address))
        if address == self._coa:
            self._send_aotr(entry.peer, address, challenge.nonce)
            if entry.coa == address and entry.state in (EntryState.REGISTERING, EntryState.PROVING):
                # Draft §4.5.1: the challenge answers the BU; the AOTR is resent from now on.
                if entry.state is EntryState.REGISTERING:
                    entry.retransmission = Retransmission(now, INITIAL_BINDACK_TIMEOUT)
                entry.state = EntryState.PROVING
                entry.aotr_nonce = challenge.nonce
            if test is not None:
                test.nonce = challenge.nonce
                test.retransmission.restart(now)
            return
        if test is not None:
            test.nonce = challenge.nonce
            test.retransmission.restart(now)
            self._send_aotr(entry.peer, address, challenge.nonce)
            return
        # An address this MN does not use (an old CoA, or not ours): it cannot answer from it.
        self._drop("aotc_unknown_address", src=entry.peer, address=address)

    def _on_status(
        self, entry: BindingUpdateListEntry, status: AotStatus, address: IPv6Address | None
    ) -> None:
        test = None
        if address is not None:
            test = self._early_tests.get((entry.peer, address))
        else:
            mine = [t for t in self._early_tests.values() if t.peer == entry.peer]
            test = mine[0] if len(mine) == 1 else None
        if test is None:
            self._drop("aots_unsolicited", src=entry.peer)
            return
        del self._early_tests[(test.peer, test.address)]
        self._emit(AotStatusReceived(entry.peer, self.hoa, test.address, status.code))

    # -- time -----------------------------------------------------------

    def get_timer(self) -> float | None:
        return earliest(
            self._home.deadline(),
            *(entry.deadline() for entry in self._correspondents.values()),
            *(test.retransmission.deadline for test in self._early_tests.values()),
        )

    def handle_timer(self, now: float) -> None:
        for entry in [self._home, *self._correspondents.values()]:
            self._entry_timers(entry, now)
        for key, test in list(self._early_tests.items()):
            if test.retransmission.deadline > now:
                continue
            if test.retransmission.expire(now):
                # An early test is an optimisation (draft §4.5.2): give up, do not insist.
                del self._early_tests[key]
                self._emit(RegistrationTimeout(test.peer, self.hoa, test.address, "early-test"))
            else:
                self._send_early(test)

    def _entry_timers(self, entry: BindingUpdateListEntry, now: float) -> None:
        if entry.deferred_until is not None and entry.deferred_until <= now:
            entry.deferred_until = None
            if entry.state in (EntryState.REGISTERING, EntryState.DEREGISTERING):
                self._transmit_bu(entry, now)
                if entry.retransmission is not None and entry.deferred_until is None:
                    # The back-off counts from when the BU really left.
                    entry.retransmission.deadline = now + entry.retransmission.interval
        if entry.expires_at is not None and entry.expires_at <= now:
            expired_coa = entry.coa
            entry.expires_at = None
            if entry.state is EntryState.BOUND:
                entry.state = EntryState.IDLE
            self._set_direct(entry, False)
            self._emit(BindingExpired(entry.peer, self.hoa, expired_coa))
            log.info("binding expired", peer=entry.peer, coa=expired_coa)
        if (
            entry.state is EntryState.BOUND
            and entry.refresh_at is not None
            and entry.refresh_at <= now
        ):
            self._start_registration(entry, now)
            return
        retransmission = entry.retransmission
        if retransmission is None or retransmission.deadline > now:
            return
        timed_out = retransmission.expire(now)
        if entry.state is EntryState.PROVING:
            if timed_out:
                # No BA after the AOTRs: start over with a BU (it gets a BA at
                # once if the proof arrived, an AOTC otherwise).
                self._emit(RegistrationTimeout(entry.peer, self.hoa, entry.coa, "aotr"))
                self._set_direct(entry, False)
                entry.state = EntryState.REGISTERING
                entry.aotr_nonce = None
                self._transmit_bu(entry, now)
            elif entry.aotr_nonce is not None and entry.coa is not None:
                self._send_aotr(entry.peer, entry.coa, entry.aotr_nonce, first=False)
            return
        if timed_out:
            self._emit(RegistrationTimeout(entry.peer, self.hoa, entry.coa, "bu"))
            log.info("registration timeout", peer=entry.peer, coa=entry.coa)
            if not entry.home:
                self._set_direct(entry, False)
            else:
                # The HA is silent: correspondent registrations need not wait
                # for it any longer (draft appendix C: IRO survives HA failures).
                self._register_correspondents(now)
        self._transmit_bu(entry, now)
