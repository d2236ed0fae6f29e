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
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
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
    CareOfAddressesChanged,
    CoaChanged,
    DataPathChanged,
    PathsChanged,
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
    BindingIdentifier,
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
#: Care-of addresses (BIDs) an MN registers at most (RFC 5648): bounds the
#: binding update list at (1 + CNs) x this.
MAX_CARE_OF_ADDRESSES = 16
#: (peer, BID) sequence numbers kept for BIDs that went (a few peers' worth).
_MAX_REMEMBERED_BID_SEQUENCES = 64 * MAX_CARE_OF_ADDRESSES


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
    #: The Binding Identifier this entry registers (RFC 5648 §6.1): one
    #: entry per (peer, BID); ``None``: no BID option (a single binding).
    bid: int | None = None
    #: Set the O flag (RFC 5648 §5.7): the peer has not yet acknowledged a
    #: BID from us, so this BU replaces whatever it holds for the HoA.
    overwrite: bool = False
    #: A removed BID's deregistration leaves from this remaining CoA.
    via: IPv6Address | None = None

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
        # RFC 5648 (multiple_care_of): the usable CoAs by BID, the primary
        # one's BID (its CoA is _coa; _home and _correspondents hold its
        # entries), every other BID's entry per peer, the peers that
        # acknowledged a BID and those that showed they have no RFC 5648.
        self._coas: dict[int, IPv6Address] = {}
        self._primary: int | None = None
        self._secondary: dict[IPv6Address, dict[int, BindingUpdateListEntry]] = {}
        # (peer, BID) -> the last sequence number sent for a BID whose entry
        # went: a BID that comes back goes on from there, since its peer
        # keeps that number (docs/multi-coa.md, "held back").  Bounded.
        self._bid_sequences: OrderedDict[tuple[IPv6Address, int], int] = OrderedDict()
        self._mcoa_peers: set[IPv6Address] = set()
        self._legacy: set[IPv6Address] = set()
        # What DataPathChanged / PathsChanged last said, per peer.
        self._reported_direct: dict[IPv6Address, IPv6Address | None] = {}
        self._paths: dict[IPv6Address, tuple[tuple[int, IPv6Address], ...]] = {}

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
        """Copies of the binding update list: the HA first, then the CNs; per
        peer the primary BID's entry first, then its other BIDs' (``bid``)."""
        return [replace(entry) for peer in [self.home_agent, *self._correspondents]
                for entry in self._entries_of(peer)]

    @property
    def primary_bid(self) -> int | None:
        """The BID whose CoA is :attr:`coa`, the preferred link (RFC 5648); ``None``: none."""
        return self._primary

    @property
    def care_of_addresses(self) -> dict[int, IPv6Address]:
        """The usable CoAs by BID, the primary first (empty without multiple_care_of)."""
        return dict(self._coas)

    def paths(self, peer: IPv6Address) -> tuple[tuple[int, IPv6Address], ...]:
        """The (BID, CoA) paths with *peer* as the last PathsChanged said
        (its ``accept``, which equals ``send`` on the MN), primary first;
        empty: none."""
        return self._paths.get(IPv6Address(peer), ())

    def _entries_of(self, peer: IPv6Address) -> list[BindingUpdateListEntry]:
        primary = self._entry_for(peer)
        if primary is None:
            return []
        others = self._secondary.get(peer, {})
        return [primary, *(others[bid] for bid in sorted(others))]

    def _target(self, entry: BindingUpdateListEntry) -> IPv6Address | None:
        """The CoA *entry* registers: its BID's, or the primary one (no BID)."""
        if entry.via is not None:
            return entry.via
        if entry.bid is None or entry is self._entry_for(entry.peer):
            return self._coa
        return self._coas.get(entry.bid)

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
        if self.multiple_care_of and new is not None:
            self.set_care_of_addresses({self._primary or 1: new}, now)
            return
        if self.multiple_care_of and (self._coas or self._secondary):
            # Home (RFC 5648 §5.6): one BU without BID and lifetime 0 deletes
            # every binding; the other BIDs are forgotten here.
            self._forget_bids(now)
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
        if self._coas or self._secondary:
            # RFC 5648 §5.6: lifetime 0 without a BID deletes every binding
            # of the HoA at once; the BU leaves from the primary CoA.
            self._drop_secondaries()
        for entry in [*self._correspondents.values(), self._home]:
            if entry.state in live or entry.expires_at is not None:
                self._start_registration(entry, now, deregistration=True)

    # -- multiple care-of addresses (RFC 5648) ----------------------------

    def set_care_of_addresses(self, coas: Mapping[int, IPv6Address], now: float) -> None:
        """The usable CoAs by BID (RFC 5648): one binding per BID with the HA and every CN.

        Each BID's BU leaves from its own CoA (IRO remaps the source to it,
        draft §3.3) and each CoA is proven at each CN by its own AOT
        (draft §4.5.1).  A BID no longer in *coas* is deregistered (lifetime
        0 with its BID) from a remaining CoA.  The primary BID stays unless
        it went; then the first of *coas* is.  The primary binding drives
        :class:`CoaChanged`, :class:`TunnelEndpointChanged` and
        :class:`DataPathChanged` as with :meth:`set_coa`; every BID is in
        :class:`PathsChanged`.  Other BIDs go to a peer only once it
        acknowledged the primary's BID; a peer answering without one has no
        RFC 5648 and keeps one binding, the primary (docs/multi-coa.md).
        Empty *coas*: no usable link; the primary's binding is left to run.
        """
        if not self.multiple_care_of:
            raise MobilityError("multiple_care_of is off: use set_coa")
        new: dict[int, IPv6Address] = {}
        for bid, coa in coas.items():
            if not 1 <= int(bid) <= 0xFFFF:
                raise ValueError(f"BID {bid} is not 1..65535 (BID 0 is never sent)")
            address = IPv6Address(coa)
            if address == self.hoa:
                raise ValueError("the home address is no care-of address: set_coa(None) at home")
            if address in new.values():
                raise ValueError(f"{address} given for two BIDs: a CoA names one binding")
            new[int(bid)] = address
        if len(new) > MAX_CARE_OF_ADDRESSES:
            raise ValueError(f"at most {MAX_CARE_OF_ADDRESSES} care-of addresses")
        if not new:
            if self._primary is None or self._coa is None:
                return
            # Nothing to send from: the other BIDs' paths stop at once; their
            # deregistrations go out if the primary link still carries them.
            new = {self._primary: self._coa}
        primary = self._primary if self._primary in new else next(iter(new))
        self._apply_coas(primary, new, now)

    def set_primary(self, bid: int, now: float) -> None:
        """The preferred link changed to *bid*'s: it becomes the primary binding.

        With peers that acknowledged BIDs only the order changes (their
        bindings all stand); a peer without RFC 5648 re-registers its one
        binding to the new primary CoA.
        """
        if bid not in self._coas:
            raise MobilityError(f"BID {bid} has no care-of address")
        if bid != self._primary:
            self._apply_coas(bid, self._coas, now)

    def probe(self, bid: int, now: float) -> bool:
        """Refresh *bid*'s home binding now, as a link-quality keepalive.

        Only if that BID is bound at the HA and nothing is in flight for it;
        its BindingUpdateSent / BindingAccepted (or RegistrationTimeout)
        carry the BID.  False: no probe sent.
        """
        if not self.multiple_care_of:
            return False
        if bid == self._primary:
            entry: BindingUpdateListEntry | None = self._home
        else:
            entry = self._secondary.get(self.home_agent, {}).get(bid)
        if (entry is None or entry.state is not EntryState.BOUND
                or entry.retransmission is not None or entry.deferred_until is not None):
            return False
        self.counters["probes"] += 1
        self._start_registration(entry, now)
        return True

    def _apply_coas(self, primary: int, coas: Mapping[int, IPv6Address], now: float) -> None:
        ordered = {primary: coas[primary], **{b: c for b, c in coas.items() if b != primary}}
        old_list = list(self._coas.items())
        old_coa, old_primary = self._coa, self._primary
        self._coas = ordered
        if self._primary != primary:
            self._swap_primary(primary)
        self._primary = primary
        if list(ordered.items()) != old_list:
            self._emit(CareOfAddressesChanged(self.hoa, tuple(ordered.items())))
        new_coa = ordered[primary]
        if new_coa != old_coa or primary != old_primary:
            # Moved, or the primary is now a BID not yet registered (its link
            # took over the old primary's address): as a movement.
            self._primary_moved(old_coa, new_coa, now)
        # BIDs gone: deregistered from a remaining CoA (RFC 5648 §5.6).
        for peer in [self.home_agent, *self._correspondents]:
            for bid, entry in list(self._secondary.get(peer, {}).items()):
                if bid not in ordered:
                    self._retire(entry, now)
        self._register_secondaries(self.home_agent, now)
        if self._home.expires_at is not None:
            # The HoA is valid (RFC 6275 §11.7.2): the CNs learn the new BIDs.
            for peer in self._correspondents:
                self._register_secondaries(peer, now)
        self._report_all()

    def _swap_primary(self, primary: int) -> None:
        for peer in [self.home_agent, *self._correspondents]:
            current = self._entry_for(peer)
            assert current is not None
            if peer in self._legacy:
                continue      # one binding, no BID: it follows the primary CoA
            if current.bid is None:
                current.bid = primary
                current.overwrite = peer not in self._mcoa_peers
                continue
            others = self._secondary.setdefault(peer, {})
            others[current.bid] = current
            chosen = others.pop(primary, None)
            if chosen is None:
                chosen = self._new_entry(peer, home=current.home)
                chosen.bid = primary
                chosen.overwrite = peer not in self._mcoa_peers
            chosen.via = None
            chosen.unsupported = current.unsupported
            if current.home:
                self._home = chosen
            else:
                self._correspondents[peer] = chosen

    def _primary_moved(self, old: IPv6Address | None, new: IPv6Address, now: float) -> None:
        """The primary CoA changed (movement as :meth:`set_coa` reports it)."""
        self._coa = new
        home_valid = self._home.expires_at is not None and self._home.expires_at > now
        for entry in self._correspondents.values():
            if self._up_to_date(entry) and entry.direct == new:
                self._report_paths(entry.peer)      # swapped in, already bound there
                continue
            self._set_direct(entry, False)
            entry.retransmission = None
            entry.aotr_nonce = None
            if not entry.unsupported:
                entry.state = EntryState.IDLE
            self._report_paths(entry.peer)
        if old != new:
            self._early_tests.clear()
            self._emit(CoaChanged(self.hoa, old, new))
            self._emit(TunnelEndpointChanged(self.hoa, new))
            log.info("care-of address changed", hoa=self.hoa, old=old, new=new,
                     bid=self._primary)
        if self._up_to_date(self._home) and self._home.state is not EntryState.REFUSED:
            self._register_correspondents(now)
            return
        self._start_registration(self._home, now)
        if home_valid and self.correspondents_with_home:
            # As set_coa: the HoA binding is live, a CN's BU need not wait.
            self._register_correspondents(now)

    def _register_secondaries(self, peer: IPv6Address, now: float) -> None:
        """Register every non-primary BID with *peer*, once it acknowledged a BID."""
        primary = self._entry_for(peer)
        if (primary is None or primary.unsupported or peer in self._legacy
                or peer not in self._mcoa_peers or self._coa is None):
            return
        others = self._secondary.setdefault(peer, {})
        for bid in self._coas:
            if bid == self._primary:
                continue
            entry = others.get(bid)
            if entry is None:
                entry = self._new_entry(peer, home=primary.home)
                last = self._bid_sequences.pop((peer, bid), None)
                if last is not None:
                    # Its peer refuses (135) numbers up to its deregistration's.
                    entry.sequence = last
                entry.bid = bid
                others[bid] = entry
            entry.via = None
            if not self._up_to_date(entry):
                self._start_registration(entry, now)
        if not others:
            del self._secondary[peer]

    def _retire(self, entry: BindingUpdateListEntry, now: float) -> None:
        """A BID went: deregister it (lifetime 0, its BID) from the primary CoA."""
        live = entry.state in (EntryState.REGISTERING, EntryState.PROVING, EntryState.BOUND)
        if entry.state is EntryState.DEREGISTERING:
            return
        # As going home does: any BU sent (coa set) may have made a binding
        # whose BA never reached us.
        if (live or entry.expires_at is not None or entry.coa is not None) \
                and self._coa is not None:
            entry.via = self._coa
            self._start_registration(entry, now, deregistration=True)
            return
        self._discard(entry)

    def _discard(self, entry: BindingUpdateListEntry) -> None:
        others = self._secondary.get(entry.peer)
        if others is None or entry.bid is None or others.get(entry.bid) is not entry:
            return
        del others[entry.bid]
        if not others:
            del self._secondary[entry.peer]
        self._bid_sequences[(entry.peer, entry.bid)] = entry.sequence
        self._bid_sequences.move_to_end((entry.peer, entry.bid))
        while len(self._bid_sequences) > _MAX_REMEMBERED_BID_SEQUENCES:
            self._bid_sequences.popitem(last=False)
        self._report_paths(entry.peer)

    def _drop_secondaries(self) -> None:
        """Every non-primary BID forgotten; primary entries send no BID."""
        self._secondary.clear()
        for peer in [self.home_agent, *self._correspondents]:
            primary = self._entry_for(peer)
            assert primary is not None
            primary.bid = None
            primary.overwrite = False
            self._report_paths(peer)

    def _forget_bids(self, now: float) -> None:
        had = bool(self._coas)
        self._coas = {}
        self._primary = None
        self._mcoa_peers.clear()
        self._drop_secondaries()
        if had:
            self._emit(CareOfAddressesChanged(self.hoa, ()))

    def _fall_back(self, peer: IPv6Address) -> None:
        """*peer* answered a BID without one: it has no RFC 5648; one binding with it."""
        if peer in self._legacy:
            return
        self._legacy.add(peer)
        self._mcoa_peers.discard(peer)
        self.counters["mcoa_unsupported_peer"] += 1
        log.warning("peer without multiple care-of address support: one binding with it",
                    peer=peer, hoa=self.hoa)
        primary = self._entry_for(peer)
        assert primary is not None
        primary.bid = None
        primary.overwrite = False
        for entry in self._secondary.pop(peer, {}).values():
            entry.direct = None
        self._report_paths(peer)

    def _ack_entry(
        self, primary: BindingUpdateListEntry, ack: BindingAck, now: float
    ) -> BindingUpdateListEntry | None:
        """The BUL entry a BA answers: by its BID option (RFC 5648 §6.1)."""
        identifiers = ack.binding_identifiers
        peer = primary.peer
        if identifiers:
            bid = identifiers[0].bid
            if primary.bid == bid:
                return primary
            found = self._secondary.get(peer, {}).get(bid)
            if found is None:
                self._drop("ba_unknown_bid", src=peer, bid=bid)
            return found
        if primary.bid is None:
            return primary
        # We sent a BID and the answer has none: the peer skipped the option
        # (RFC 6275 §6.2.1), it predates RFC 5648.  Only a BA answering a BU
        # of ours says so (a stale one answers nothing: dropped by sequence);
        # a 135 carries the peer's sequence, so it counts while our first
        # BID BU to that peer waits.
        owner = next((entry for entry in self._secondary.get(peer, {}).values()
                      if ack.sequence in entry.sent_at), None)
        answers = owner is not None or ack.sequence in primary.sent_at or (
            ack.status == BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW
            and peer not in self._mcoa_peers and primary.state in (
                EntryState.REGISTERING, EntryState.PROVING, EntryState.DEREGISTERING))
        if not answers:
            return primary          # dropped there as ba_sequence_mismatch / ba_unexpected
        self._fall_back(peer)
        if owner is not None:
            # It took another BID's CoA for the only binding: put the primary back.
            self._start_registration(primary, now)
            return None
        return primary

    def _report_all(self) -> None:
        for peer in [self.home_agent, *self._correspondents]:
            self._report_paths(peer)

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
            deregistration = self._target(entry) is None
        entry.coa = self._target(entry)
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
        # Compared as deferred_until is computed: now - times[0] < 1.0 can
        # hold at times[0] + 1.0 itself (rounding), and the timer would
        # fire for ever without sending.
        if len(times) == MAX_UPDATE_RATE and now < times[0] + 1.0:
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
        options: tuple[AlternateCareOfAddress | BindingIdentifier, ...] = (
            AlternateCareOfAddress(named),)
        if entry.bid is not None:
            # RFC 5648 §6.1: the CoA is the AltCoA (IRO puts it on the wire,
            # draft §3.3), so the BID option carries none.
            options += (BindingIdentifier(entry.bid, overwrite=entry.overwrite),)
        bu = BindingUpdate(
            entry.sequence,
            entry.requested_units,
            ack=True,
            home_registration=entry.home,
            key_management_mobility=entry.home and self.key_management_mobility,
            options=options,
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
                self._link_bid(entry),
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
        # An early test leaves from an address that is not our CoA (draft
        # §4.5.2), so never through our reverse tunnel: sent to another MN's
        # HoA it would reach that MN's HA on the wire, which forwards no such
        # transit ESP.  Every attempt goes to the CoA we hold for it now (a
        # retransmission also picks up a CoA learnt since the first).
        if test.nonce is None:
            towards = self._towards(test.peer, True)
            self._send(AotOffer(), self.hoa, test.peer, test.address, towards)
            self._emit(AotOfferSent(test.peer, self.hoa, test.address))
        else:
            self._send_aotr(test.peer, test.address, test.nonce, True)

    def _set_direct(self, entry: BindingUpdateListEntry, direct: bool) -> None:
        target = self._target(entry) if direct else None
        if entry.home or entry.direct == target:
            return
        entry.direct = target
        self._report_paths(entry.peer)

    def _report_paths(self, peer: IPv6Address) -> None:
        """DataPathChanged for the primary entry, PathsChanged for every BID, when changed."""
        primary = self._entry_for(peer)
        if primary is None:
            return
        if not primary.home:
            direct = primary.direct
            if self._reported_direct.get(peer) != direct:
                if direct is None:
                    self._reported_direct.pop(peer, None)
                else:
                    self._reported_direct[peer] = direct
                self._emit(DataPathChanged(self.hoa, direct, peer, direct is not None))
        paths: tuple[tuple[int, IPv6Address], ...] = ()
        if self.multiple_care_of and peer in self._mcoa_peers:
            # Only once the peer acknowledged a BID: until then (and with a
            # peer without RFC 5648) the single-binding events tell it all.
            paths = tuple((entry.bid, coa) for entry in self._entries_of(peer)
                          if entry.bid is not None
                          and (coa := self._path_coa(entry)) is not None)
        if paths != self._paths.get(peer, ()):
            if paths:
                self._paths[peer] = paths
            else:
                self._paths.pop(peer, None)
            self._emit(PathsChanged(self.hoa, peer, paths, paths))

    def _path_coa(self, entry: BindingUpdateListEntry) -> IPv6Address | None:
        if not entry.home:
            return entry.direct
        # The HA: a binding it holds naming the CoA this BID still uses.
        if entry.expires_at is None or entry.state is EntryState.DEREGISTERING:
            return None
        return entry.coa if entry.coa is not None and entry.coa == self._target(entry) else None

    def _link_bid(self, entry: BindingUpdateListEntry) -> int | None:
        """The BID of the link a message of *entry* uses: its own, or the primary's."""
        if entry.bid is not None:
            return entry.bid
        return self._primary if self.multiple_care_of and entry.coa is not None else None

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
            if not self._up_to_date(entry):
                self._start_registration(entry, now)
            self._register_secondaries(entry.peer, now)

    def _up_to_date(self, entry: BindingUpdateListEntry) -> bool:
        return entry.coa == self._target(entry) and entry.state in (
            EntryState.BOUND,
            EntryState.REGISTERING,
            EntryState.PROVING,
            EntryState.REFUSED,
        )

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
            owner = self._ack_entry(entry, message, now)
            if owner is not None:
                self._on_binding_ack(owner, message, now)
            if self.multiple_care_of:
                self._report_paths(self.home_agent)
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
        if entry.bid is not None and ack.binding_identifiers:
            # The peer echoed our BID: it speaks RFC 5648; no more O flag.
            if entry.overwrite and ack.status != BindingAckStatus.MCOA_NON_MCOA_BINDING_EXISTS:
                entry.overwrite = False
            if entry is self._entry_for(entry.peer) and ack.status != \
                    BindingAckStatus.MCOA_PROHIBITED:
                self._mcoa_peers.add(entry.peer)
        if ack.status == BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW:
            self._resynchronise(entry, ack, now)
            return
        if ack.status == BindingAckStatus.MCOA_NON_MCOA_BINDING_EXISTS and entry.bid is not None \
                and entry.sent_at.get(ack.sequence) is not None:
            # RFC 5648 §5.7: a binding without BID stands; overwrite it (O flag).
            entry.overwrite = True
            self._resynchronise(entry, ack, now, keep_sequence=True)
            return
        if ack.status == BindingAckStatus.MCOA_PROHIBITED and entry.bid is not None \
                and entry is self._entry_for(entry.peer) and ack.sequence in entry.sent_at:
            # RFC 5648 §6.2: the peer will not keep several bindings: one, the primary.
            self._fall_back(entry.peer)
            self._start_registration(entry, now, deregistration=entry.requested_units == 0)
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
            self._emit(BindingRefused(entry.peer, self.hoa, entry.coa, ack.status,
                                      self._link_bid(entry)))
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
                                   key_management, self._link_bid(entry)))
        log.info("binding accepted", peer=entry.peer, coa=entry.coa, lifetime=granted, rtt=rtt,
                 bid=entry.bid)
        primary = entry is self._entry_for(entry.peer)
        if not entry.home:
            self._set_direct(entry, True)
            if primary:
                self._register_secondaries(entry.peer, now)
        elif primary and entry.coa == self._coa:
            self._register_secondaries(entry.peer, now)
            self._register_correspondents(now)

    def _finish_deregistration(self, entry: BindingUpdateListEntry, now: float) -> None:
        entry.state = EntryState.IDLE
        entry.retransmission = None
        entry.expires_at = None
        entry.refresh_at = None
        entry.lifetime = 0
        entry.sent_at.clear()
        self._set_direct(entry, False)
        self._emit(BindingDeregistered(entry.peer, self.hoa, entry.bid))
        log.info("binding deleted", peer=entry.peer, bid=entry.bid)
        if entry.via is not None or (entry.bid is not None and entry.bid not in self._coas):
            self._discard(entry)       # a BID that went: its entry with it
        elif entry is self._home and self._coa is None:
            self._register_correspondents(now)

    def _resynchronise(
        self, entry: BindingUpdateListEntry, ack: BindingAck, now: float,
        keep_sequence: bool = False,
    ) -> None:
        # RFC 6275 §11.7.3: status 135 carries the peer's last accepted
        # sequence number; continue from it with a new BU.
        if not keep_sequence:
            self.counters["sequence_out_of_window"] += 1
        if entry.resyncs >= MAX_SEQUENCE_RESYNCS:
            self._drop("sequence_resync_limit", src=entry.peer)
            return
        entry.resyncs += 1
        if not keep_sequence:
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
            for other in self._secondary.pop(entry.peer, {}).values():
                other.direct = None
            entry.unsupported = True
            entry.state = EntryState.REFUSED
            entry.retransmission = None
            self._set_direct(entry, False)
            self._report_paths(entry.peer)

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
        # The entry registering this address: the primary's, or another BID's
        # (each CoA is proven on its own, from itself: draft §4.5.1).
        owners = [candidate for candidate in self._entries_of(entry.peer)
                  if candidate.via is None and candidate.coa == address]
        if address == self._coa or owners:
            self._send_aotr(entry.peer, address, challenge.nonce)
            for owner in owners:
                if owner.state not in (EntryState.REGISTERING, EntryState.PROVING):
                    continue
                # Draft §4.5.1: the challenge answers the BU; the AOTR is resent from now on.
                if owner.state is EntryState.REGISTERING:
                    owner.retransmission = Retransmission(now, INITIAL_BINDACK_TIMEOUT)
                owner.state = EntryState.PROVING
                owner.aotr_nonce = challenge.nonce
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
            *(entry.deadline() for others in self._secondary.values()
              for entry in others.values()),
            *(test.retransmission.deadline for test in self._early_tests.values()),
        )

    def handle_timer(self, now: float) -> None:
        for entry in [self._home, *self._correspondents.values(),
                      *(entry for others in list(self._secondary.values())
                        for entry in list(others.values()))]:
            self._entry_timers(entry, now)
        if self.multiple_care_of:
            self._report_all()
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
            self._emit(BindingExpired(entry.peer, self.hoa, expired_coa, self._link_bid(entry)))
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
                self._emit(RegistrationTimeout(entry.peer, self.hoa, entry.coa, "aotr",
                                               self._link_bid(entry)))
                self._set_direct(entry, False)
                entry.state = EntryState.REGISTERING
                entry.aotr_nonce = None
                self._transmit_bu(entry, now)
            elif entry.aotr_nonce is not None and entry.coa is not None:
                self._send_aotr(entry.peer, entry.coa, entry.aotr_nonce, first=False)
            return
        if timed_out:
            self._emit(RegistrationTimeout(entry.peer, self.hoa, entry.coa, "bu",
                                           self._link_bid(entry)))
            log.info("registration timeout", peer=entry.peer, coa=entry.coa, bid=entry.bid)
            if entry.via is not None:
                # A gone BID's deregistration went unanswered: the binding
                # will expire at the peer; stop asking.
                entry.retransmission = None
                self._discard(entry)
                return
            if not entry.home:
                self._set_direct(entry, False)
            elif entry is self._home:
                # The HA is silent: correspondent registrations need not wait
                # for it any longer (draft appendix C: IRO survives HA failures).
                self._register_correspondents(now)
        self._transmit_bu(entry, now)
