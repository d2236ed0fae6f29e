"""The correspondent: IRO binding cache, proof cache and AOT* (draft §3, §4).

Every node runs one (docs/design.md §7.4).  A BU from an MN (ESP-protected,
SA-level source the HoA, on-wire source the CoA as ancillary data):

1. is dropped unless the HoA is a known peer and the Alternate CoA option
   equals the on-wire source (draft §3.3, appendix A);
2. makes the CN accept IPsec data from that CoA at once
   (:class:`~vmip.mobility.events.AcceptFrom`, draft §4.5.1);
3. is acknowledged at once if the (HoA, CoA) pair is proven, else answered
   by an AOTC with a fresh nonce sent to the CoA (§3.4);
4. a matching AOTR from that on-wire address proves the CoA
   (:class:`~vmip.mobility.events.CoaProven`); then the BA goes out and the
   CN starts sending to the CoA (:class:`~vmip.mobility.events.SendTo`).

The nonce is kept after the BA, so an AOTR the MN resends because the BA
was lost gets the BA again (§4.5.1).  Early tests (AOTO, §4.5.2) and HoA
tests (§4.5.3) use the same nonce store.  See docs/mobility.md for every
decision the draft leaves open.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address

from vmip.log import get_logger
from vmip.mobility.aot import RECORDS_PER_HOA, NonceStore, ProofCache, Rng
from vmip.mobility.binding import (
    DEFAULT_MAX_BIDS_PER_HOA,
    MAX_BIDS_PER_HOA_LIMIT,
    BindingCacheEntry,
    BindingErrorLimiter,
    MobilityCore,
    MobilityError,
    OnWireArgument,
    PeerFilter,
    lifetime_seconds,
    lifetime_units,
    onwire_of,
    peer_predicate,
    retired_sequence,
    sequence_is_newer,
    unroutable_care_of,
)
from vmip.mobility.events import (
    AcceptFrom,
    AotChallengeSent,
    AotPurpose,
    AotStatusSent,
    BindingCached,
    BindingDeregistered,
    BindingExpired,
    CoaProven,
    HomeAddressProven,
    HomeAddressTestFailed,
    PathsChanged,
    ProofTimeout,
    SendTo,
)
from vmip.mobility.timers import (
    INITIAL_BINDACK_TIMEOUT,
    MAX_BINDACK_TIMEOUT,
    Deadlines,
    Retransmission,
    earliest,
)
from vmip.wire.mh import (
    AotChallenge,
    AotOffer,
    AotResponse,
    AotStatus,
    AotStatusCode,
    BindingAck,
    BindingAckStatus,
    BindingError,
    BindingErrorStatus,
    BindingIdentifier,
    BindingUpdate,
    UnknownMobilityMessage,
)

log = get_logger(__name__)

#: How long a challenged BU waits for its AOTR before the CN forgets it
#: (draft §4.5.1 lets the CN "garbage collect" it): long enough for the MN's
#: AOTR retransmissions to reach MAX_BINDACK_TIMEOUT (1+2+4+8+16+32 s).
PENDING_PROOF_TIMEOUT = 2 * MAX_BINDACK_TIMEOUT
HOME_TEST_ATTEMPTS = 3
#: RFC 6275 §9.3.3 asks for rate-limited Binding Errors: one per source per second.
BINDING_ERROR_INTERVAL = 1.0
_BINDING_ERROR_MEMORY = 1024


@dataclass(slots=True)
class _PendingRegistration:
    """A BU for a CoA without proof, waiting for the AOTR (draft §4.5.1)."""

    coa: IPv6Address
    sequence: int
    lifetime_units: int
    ack: bool
    deadline: float


@dataclass(slots=True)
class _HomeTest:
    retransmission: Retransmission
    nonce: bytes


@dataclass(slots=True)
class _BidBinding:
    """One BID's binding of an MN (RFC 5648): the same states as a single one."""

    entry: BindingCacheEntry          # coa None while the CoA waits for its proof
    pending: _PendingRegistration | None = None
    accept_from: IPv6Address | None = None
    last_ack: BindingAck | None = None


@dataclass(slots=True)
class _Peer:
    """Everything the CN holds for one HoA.

    With BIDs (RFC 5648) ``bids`` holds each binding; ``binding``,
    ``accept_from`` and ``send_to`` then follow the primary one (the lowest
    BID accepted from / bound), for the single-binding events and callers.
    """

    binding: BindingCacheEntry
    bids: dict[int, _BidBinding] = field(default_factory=dict)
    paths: tuple[tuple[tuple[int, IPv6Address], ...], tuple[tuple[int, IPv6Address], ...]] = (
        (), ())
    pending: _PendingRegistration | None = None
    accept_from: IPv6Address | None = None
    send_to: IPv6Address | None = None
    last_ack: BindingAck | None = None
    home_test: _HomeTest | None = None
    #: BID -> the last sequence number of its removed binding (see _retire_bid).
    retired: OrderedDict[int, int] = field(default_factory=OrderedDict)
    registered: bool = False          # a registration was accepted (home_test_on_registration)
    next_home_test: float | None = None   # home_test_interval


class Correspondent(MobilityCore):
    """IRO correspondent-node processing for every MN that registers with this node.

    ``known_peers``: the HoAs this node has MH SAs with (a collection, a
    predicate, or ``None`` for any); a BU, AOTO or AOTR from another HoA is
    dropped and counted.  ``local_coa(local)`` gives this node's own CoA
    when ``local`` is its HoA and it is away (the MN-MN case, draft §5.2.2
    example 4): it becomes the ``onwire_src`` of what the CN sends.
    """

    def __init__(
        self,
        *,
        known_peers: PeerFilter,
        max_lifetime: int = 420,
        proof_cache_size: int = 1024,
        allow_early_test: bool = True,
        pending_proof_timeout: float = PENDING_PROOF_TIMEOUT,
        home_test_attempts: int = HOME_TEST_ATTEMPTS,
        local_coa: Callable[[IPv6Address], IPv6Address | None] | None = None,
        rng: Rng = os.urandom,
        clock_now: float = 0.0,
        home_test_on_registration: bool = False,
        home_test_interval: float | None = None,
        max_bids_per_hoa: int = DEFAULT_MAX_BIDS_PER_HOA,
    ):
        super().__init__()
        if not 0 <= max_bids_per_hoa <= MAX_BIDS_PER_HOA_LIMIT:
            raise ValueError(f"max_bids_per_hoa must be 0..{MAX_BIDS_PER_HOA_LIMIT}")
        #: RFC 5648 bindings kept per HoA; 0: no RFC 5648 support at all.
        self.max_bids_per_hoa = max_bids_per_hoa
        if lifetime_units(max_lifetime) < 1:
            raise ValueError("max_lifetime must be at least 4 seconds")
        if home_test_attempts < 1:
            raise ValueError("home_test_attempts must be at least 1")
        self.max_lifetime_units = lifetime_units(max_lifetime)
        self.allow_early_test = allow_early_test
        self.pending_proof_timeout = pending_proof_timeout
        self.home_test_attempts = home_test_attempts
        if home_test_interval is not None and not home_test_interval > 0:
            raise ValueError("home_test_interval must be above 0 seconds (or None: no regular test)")
        # Draft §4.5.3 triggers, both off by default (appendix C argues against
        # regular checks): a HoA test when an MN's registration is first
        # accepted (with static keys no IKE exchange through the HA proved the
        # HoA, §8.1.2 and appendix G), and one every ``home_test_interval`` s.
        self.home_test_on_registration = home_test_on_registration
        self.home_test_interval = home_test_interval
        # Each BID's CoA is proven on its own: room for all of an MN's at
        # once, and a few more; one MN proving a whole prefix of addresses
        # evicts its own proofs, never another MN's (per_hoa).
        per_hoa = max(RECORDS_PER_HOA, max_bids_per_hoa + 4)
        self.proofs = ProofCache(proof_cache_size, per_hoa=per_hoa)
        # Every proof starts as a nonce; keep at least as many nonces as proofs.
        self.nonces = NonceStore(max(proof_cache_size, 64), per_hoa=per_hoa)
        self._known: Callable[[IPv6Address], bool] = peer_predicate(known_peers)
        self._local_coa = local_coa or (lambda local: None)
        self._rng = rng
        self._peers: dict[IPv6Address, _Peer] = {}
        # CoA -> the HoA whose binding names it (holder_of), and the reverse.
        self._holders: dict[IPv6Address, IPv6Address] = {}
        self._names: dict[IPv6Address, set[IPv6Address]] = {}
        # Each peer's next deadline (binding expiry, proof wait, HoA test), so
        # the next one overall is O(log n), not a walk over every peer after
        # every packet (docs/scale.md).  Every public entry that may change a
        # peer's deadlines ends with _reschedule(hoa).
        self._deadlines: Deadlines[IPv6Address] = Deadlines()
        self._binding_errors = BindingErrorLimiter(BINDING_ERROR_INTERVAL, _BINDING_ERROR_MEMORY)
        self._started_at = clock_now

    # -- inspection -----------------------------------------------------

    def binding(self, hoa: IPv6Address) -> BindingCacheEntry | None:
        """The accepted binding for ``hoa`` (``None`` while unbound or waiting for proof)."""
        peer = self._peers.get(hoa)
        if peer is None or not peer.binding.bound:
            return None
        return replace(peer.binding)

    def bindings(self) -> list[BindingCacheEntry]:
        """Every bound binding: per HoA its only one, or each BID's, lowest first."""
        return [entry for hoa in self._peers for entry in self.bindings_of(hoa)]

    def accepting_from(self, hoa: IPv6Address) -> IPv6Address | None:
        """The CoA whose IPsec data is accepted for ``hoa`` (draft §4.5.1), if any."""
        peer = self._peers.get(hoa)
        return peer.accept_from if peer is not None else None

    def testing(self, hoa: IPv6Address, address: IPv6Address) -> bool:
        """Whether an early test of *address* for *hoa* waits for its AOTR (draft §4.5.2)."""
        record = self.nonces.get(hoa, address)
        return record is not None and not record.answered and "early-test" in record.waiting

    def knows_mobile(self, hoa: IPv6Address) -> bool:
        """Has ``hoa`` registered (or tried to) with this CN: is it a home address?"""
        return hoa in self._peers

    def pending_coa(self, hoa: IPv6Address) -> IPv6Address | None:
        """The CoA of a BU waiting for its AOTR, if any."""
        peer = self._peers.get(hoa)
        if peer is None:
            return None
        if peer.pending is not None:
            return peer.pending.coa
        for bid in sorted(peer.bids):
            pending = peer.bids[bid].pending
            if pending is not None:
                return pending.coa
        return None

    def pending_coas(self, hoa: IPv6Address) -> set[IPv6Address]:
        """Every CoA of *hoa* whose BU waits for its AOTR (any BID)."""
        peer = self._peers.get(hoa)
        if peer is None:
            return set()
        found = {held.pending.coa for held in peer.bids.values() if held.pending is not None}
        if peer.pending is not None:
            found.add(peer.pending.coa)
        return found

    def bindings_of(self, hoa: IPv6Address) -> list[BindingCacheEntry]:
        """The bound bindings of *hoa*: each BID's (RFC 5648), lowest first, or its only one."""
        peer = self._peers.get(hoa)
        if peer is None:
            return []
        if peer.bids:
            return [replace(peer.bids[bid].entry) for bid in sorted(peer.bids)
                    if peer.bids[bid].entry.bound]
        return [replace(peer.binding)] if peer.binding.bound else []

    def paths(
        self, hoa: IPv6Address
    ) -> tuple[tuple[tuple[int, IPv6Address], ...], tuple[tuple[int, IPv6Address], ...]]:
        """``(accept, send)`` of *hoa*'s BID bindings, as the last PathsChanged said."""
        peer = self._peers.get(hoa)
        return peer.paths if peer is not None else ((), ())

    def holder_of(self, coa: IPv6Address) -> IPv6Address | None:
        """The HoA whose binding here names *coa*: bound to it, accepting
        from it, or proving it (under any of its BIDs)."""
        return self._holders.get(coa)

    def _reindex(self, peer: _Peer) -> None:
        """Keep ``holder_of`` true after *peer*'s CoAs changed."""
        hoa = peer.binding.hoa
        named = [peer.binding.coa, peer.accept_from,
                 peer.pending.coa if peer.pending is not None else None]
        for held in peer.bids.values():
            named += [held.entry.coa, held.accept_from,
                      held.pending.coa if held.pending is not None else None]
        names = {coa for coa in named if coa is not None}
        for coa in self._names.pop(hoa, set()) - names:
            if self._holders.get(coa) == hoa:
                del self._holders[coa]
        for coa in names:
            self._holders.setdefault(coa, hoa)
        if names:
            self._names[hoa] = names

    def _unindex(self, hoa: IPv6Address) -> None:
        for coa in self._names.pop(hoa, set()):
            if self._holders.get(coa) == hoa:
                del self._holders[coa]

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

        ``src`` is the MN's HoA (SA-level), ``dst`` this node's address;
        ``onwire`` the on-wire source the remap engine replaced with the
        HoA (draft §5.1.1), ``None`` when nothing was remapped.
        """
        try:
            self._receive(mh, src, dst, onwire, now)
        finally:
            # Every message changes the timers of its sender's HoA only.
            self._reschedule(src)

    def _receive(
        self,
        mh: bytes,
        src: IPv6Address,
        dst: IPv6Address,
        onwire: OnWireArgument,
        now: float,
    ) -> None:
        message = self._parse(mh, src, dst)
        if message is None:
            return
        onwire_src = onwire_of(onwire, as_source=True)
        if isinstance(message, BindingUpdate):
            if message.home_registration:
                # RFC 6275 §9.5.1: a correspondent refuses home registrations.
                self.counters["home_registration_not_supported"] += 1
                ack = BindingAck(
                    BindingAckStatus.HOME_REGISTRATION_NOT_SUPPORTED, message.sequence, 0
                )
                self._reply(ack, dst, src, onwire_src)
                return
            self._on_binding_update(message, src, dst, onwire_src, now)
        elif isinstance(message, AotResponse):
            self._on_aotr(message, src, dst, onwire_src or src, now)
        elif isinstance(message, AotOffer):
            self._on_aoto(src, dst, onwire_src or src, now)
        elif isinstance(message, UnknownMobilityMessage):
            self._binding_error(src, dst, onwire_src, now)
        else:
            self._drop("unexpected_type", src=src, mh_type=message.mh_type)

    def _reply(
        self, message, local: IPv6Address, hoa: IPv6Address, onwire_dst: IPv6Address | None
    ) -> None:
        self._send(message, local, hoa, onwire_src=self._local_coa(local), onwire_dst=onwire_dst)

    # -- BU (draft §3.3, §4.5.1; RFC 6275 §9.5) ---------------------------

    def _on_binding_update(
        self,
        bu: BindingUpdate,
        hoa: IPv6Address,
        local: IPv6Address,
        onwire_src: IPv6Address | None,
        now: float,
    ) -> None:
        if not self._known(hoa):
            self._drop("bu_unknown_hoa", hoa=hoa)
            return
        wire_src = onwire_src or hoa
        alternate = bu.alternate_care_of_address
        if alternate is not None and alternate != wire_src:
            # Draft §3.3: the AltCoA must be the address the BU came from on the wire.
            self._drop("bu_altcoa_mismatch", hoa=hoa, altcoa=alternate, onwire=wire_src)
            return
        # RFC 5648 off (max_bids_per_hoa 0): the BID option is skipped like
        # any unknown option (RFC 6275 §6.2.1), as a node predating it does.
        identifiers = bu.binding_identifiers if self.max_bids_per_hoa else ()
        option = identifiers[0] if identifiers else None
        if option is not None and option.care_of_address is not None \
                and option.care_of_address != wire_src:
            # A CoA named in the BID option is no more proven than an AltCoA
            # (draft §3.3): it must be the on-wire source too.
            self._drop("bu_bid_coa_mismatch", hoa=hoa, onwire=wire_src)
            return
        coa = alternate or wire_src
        deregistration = bu.lifetime_units == 0 or coa == hoa
        if alternate is None and not deregistration:
            # Draft appendix A: the AltCoA option is required in an IRO BU.
            self._drop("bu_missing_altcoa", hoa=hoa)
            return
        if not deregistration and (
            unroutable_care_of(coa) or coa == local or (coa != hoa and coa in self._peers)
        ):
            # RFC 6275 §9.5.1: a CoA is a unicast routable address; ours, or
            # another MN's HoA, would make us send its traffic astray.
            self._drop("bu_invalid_coa", hoa=hoa, coa=coa)
            return
        if option is not None:
            self._on_bid_update(bu, identifiers, hoa, local, coa, onwire_src, deregistration, now)
            return
        peer = self._peers.get(hoa)
        if not deregistration and (peer is None or peer.binding.coa != coa):
            holder = self.holder_of(coa)
            if holder is not None and holder != hoa:
                # Another MN's CoA (bound, accepted or being proven): an
                # authentic BU proves its HoA, never the CoA it names, and the
                # address test would reach the sender through a locator the
                # BU itself named.  Silently, as an unusable CoA (RFC 6275
                # §9.5.1): a BA would go to that other MN.
                self._drop("bu_coa_in_use", hoa=hoa, coa=coa)
                return
        if peer is not None and not sequence_is_newer(bu.sequence, peer.binding.sequence):
            self.counters["bu_sequence_out_of_window"] += 1
            ack = BindingAck(
                BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW, peer.binding.sequence, 0
            )
            self._reply(ack, local, hoa, onwire_src)
            return
        if deregistration:
            self._deregister(bu, hoa, local, onwire_src)
            return
        if peer is None:
            peer = _Peer(BindingCacheEntry(hoa, local, None, bu.sequence, 0, None))
            self._peers[hoa] = peer
        elif peer.bids:
            # RFC 5648 §5.6: a BU without a BID replaces every binding of the HoA.
            self._clear_bids(peer)
        peer.binding.sequence = bu.sequence
        peer.binding.local = local
        granted_units = min(bu.lifetime_units, self.max_lifetime_units)
        # Draft §4.5.1: receive from the new CoA at once, proof or not.
        self._set_accept_from(peer, coa)
        if peer.binding.coa == coa or self.proofs.use(hoa, coa):
            self.proofs.add(hoa, coa, now)
            peer.pending = None
            self._accept(peer, coa, granted_units, bu.sequence, bu.ack, now)
            return
        if peer.binding.bound:
            # The MN left the proven CoA; until the new one is proven, data
            # for it goes to the HoA, through the HA (docs/mobility.md).
            self._unbind(peer)
        peer.pending = _PendingRegistration(
            coa, bu.sequence, granted_units, bu.ack, now + self.pending_proof_timeout
        )
        self._reindex(peer)
        self._challenge(peer, coa, "binding", now)

    def _accept(
        self, peer: _Peer, coa: IPv6Address, units: int, sequence: int, ack: bool, now: float
    ) -> None:
        binding = peer.binding
        granted = lifetime_seconds(units)
        binding.renew(coa, sequence, granted, now)
        self._reindex(peer)
        self._set_send_to(peer, coa)
        self._emit(BindingCached(binding.hoa, coa, granted, home=False))
        self._registered(peer, now)
        log.info("binding accepted", hoa=binding.hoa, coa=coa, lifetime=granted)
        peer.last_ack = BindingAck(BindingAckStatus.ACCEPTED, sequence, units)
        if ack:
            self._reply(peer.last_ack, binding.local, binding.hoa, coa)

    def _unbind(self, peer: _Peer) -> None:
        peer.binding.coa = None
        peer.binding.expires_at = None
        peer.last_ack = None
        self._reindex(peer)
        self._set_send_to(peer, None)

    def _deregister(
        self,
        bu: BindingUpdate,
        hoa: IPv6Address,
        local: IPv6Address,
        onwire_src: IPv6Address | None,
    ) -> None:
        peer = self._peers.pop(hoa, None)
        self._unindex(hoa)
        if peer is not None:
            if peer.bids or peer.paths != ((), ()):
                # RFC 5648 §5.6: lifetime 0 without a BID deletes every binding.
                peer.bids.clear()
                self._sync_bids(peer)
            self._set_accept_from(peer, None)
            self._set_send_to(peer, None)
            # The setters re-index what the peer still names: it is gone.
            self._unindex(hoa)
            self._emit(BindingDeregistered(hoa, hoa))
            log.info("binding deleted", hoa=hoa)
        if bu.ack:
            # Deleting a binding only sends traffic back to the HoA: no proof needed.
            self._reply(
                BindingAck(BindingAckStatus.ACCEPTED, bu.sequence, 0), local, hoa, onwire_src
            )

    # -- multiple care-of addresses (RFC 5648) ----------------------------

    def _on_bid_update(
        self,
        bu: BindingUpdate,
        identifiers: tuple[BindingIdentifier, ...],
        hoa: IPv6Address,
        local: IPv6Address,
        coa: IPv6Address,
        onwire_src: IPv6Address | None,
        deregistration: bool,
        now: float,
    ) -> None:
        option = identifiers[0]
        bid = option.bid
        status: int | None = None
        if len(identifiers) > 1:
            # RFC 5648 §5.3 bulk registration: each CoA needs its own proof
            # from its own address here (draft §4.5.1), so one BID per BU.
            status = BindingAckStatus.MCOA_BULK_REGISTRATION_PROHIBITED
        elif option.simultaneous_home:
            status = BindingAckStatus.MCOA_SIMULTANEOUS_HOME_AND_FOREIGN_PROHIBITED
        elif bid == 0 or isinstance(option.care_of_address, IPv4Address):
            status = BindingAckStatus.MCOA_MALFORMED
        if status is not None:
            self.counters["bid_refused"] += 1
            self._refuse_bid(bu, status, bid, local, hoa, onwire_src)
            return
        peer = self._peers.get(hoa)
        held = peer.bids.get(bid) if peer is not None else None
        if not deregistration:
            holder = self.holder_of(coa)
            if holder is not None and holder != hoa:
                # Another MN's CoA: refused for every BID as for a single binding.
                self._drop("bu_coa_in_use", hoa=hoa, coa=coa)
                return
        last = held.entry.sequence if held is not None else (
            peer.retired.get(bid) if peer is not None else None)
        if last is not None and not sequence_is_newer(bu.sequence, last):
            # RFC 6275 §9.5.1 per binding: each BID keeps its own sequence
            # number, also once its binding was removed (_retire_bid).
            self.counters["bu_sequence_out_of_window"] += 1
            self._refuse_bid(bu, BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW, bid, local,
                             hoa, onwire_src, last)
            return
        if deregistration:
            if peer is not None and held is not None:
                # RFC 5648 §5.6: lifetime 0 with a BID removes that binding only.
                self._retire_bid(peer, bid, bu.sequence)
                self._sync_bids(peer)
                self._emit(BindingDeregistered(hoa, hoa, bid))
                log.info("binding deleted", hoa=hoa, bid=bid)
            if bu.ack:
                self._reply(BindingAck(BindingAckStatus.ACCEPTED, bu.sequence, 0,
                                       options=(BindingIdentifier(bid),)), local, hoa, onwire_src)
            return
        single = peer is not None and not peer.bids and (
            peer.binding.bound or peer.pending is not None)
        if single and not option.overwrite:
            # RFC 5648 §5.7: a binding made without a BID stands unless the
            # BU says (O flag) that it overwrites it.
            self._refuse_bid(bu, BindingAckStatus.MCOA_NON_MCOA_BINDING_EXISTS, bid, local, hoa,
                             onwire_src)
            return
        if held is None and peer is not None and len(peer.bids) >= self.max_bids_per_hoa \
                and not option.overwrite:
            # A flood of BIDs is refused and counted, never stored.
            self.counters["bid_limit"] += 1
            self._refuse_bid(bu, BindingAckStatus.INSUFFICIENT_RESOURCES, bid, local, hoa,
                             onwire_src)
            return
        if peer is None:
            peer = _Peer(BindingCacheEntry(hoa, local, None, bu.sequence, 0, None, bid=bid))
            self._peers[hoa] = peer
        peer.binding.local = local
        if option.overwrite:
            # RFC 5648 §5.7: every other binding of the HoA goes.
            if single:
                peer.pending = None
                self._unbind(peer)
            for other in [b for b in peer.bids if b != bid]:
                self._retire_bid(peer, other)
        # One CoA names one binding: held by this HoA under another BID, it
        # moved to this one (docs/multi-coa.md).
        for other, binding in list(peer.bids.items()):
            if other != bid and coa in (binding.entry.coa, binding.accept_from):
                self._retire_bid(peer, other)
                self.counters["bid_coa_moved"] += 1
        if held is None:
            held = _BidBinding(BindingCacheEntry(hoa, local, None, bu.sequence, 0, None, bid=bid))
            peer.bids[bid] = held
            peer.retired.pop(bid, None)
        held.entry.sequence = bu.sequence
        held.entry.local = local
        granted_units = min(bu.lifetime_units, self.max_lifetime_units)
        # Draft §4.5.1: receive from the new CoA at once, proof or not.
        held.accept_from = coa
        if held.entry.coa == coa or self.proofs.use(hoa, coa):
            self.proofs.add(hoa, coa, now)
            held.pending = None
            self._accept_bid(peer, bid, held, coa, granted_units, bu.sequence, bu.ack, now)
            return
        if held.entry.bound:
            # The link's CoA changed: until the new one is proven, nothing is
            # sent on this BID's path.
            held.entry.coa = None
            held.entry.expires_at = None
            held.last_ack = None
        held.pending = _PendingRegistration(
            coa, bu.sequence, granted_units, bu.ack, now + self.pending_proof_timeout
        )
        self._sync_bids(peer)
        self._challenge(peer, coa, "binding", now)

    def _accept_bid(
        self, peer: _Peer, bid: int, held: _BidBinding, coa: IPv6Address, units: int,
        sequence: int, ack: bool, now: float,
    ) -> None:
        entry = held.entry
        granted = lifetime_seconds(units)
        entry.renew(coa, sequence, granted, now)
        self._sync_bids(peer)
        self._emit(BindingCached(entry.hoa, coa, granted, home=False, bid=bid))
        self._registered(peer, now)
        log.info("binding accepted", hoa=entry.hoa, coa=coa, bid=bid, lifetime=granted)
        # RFC 5648 §6.1: the BA echoes the BID with this binding's status.
        held.last_ack = BindingAck(BindingAckStatus.ACCEPTED, sequence, units,
                                   options=(BindingIdentifier(bid),))
        if ack:
            self._reply(held.last_ack, entry.local, entry.hoa, coa)

    def _registered(self, peer: _Peer, now: float) -> None:
        if not peer.registered:
            peer.registered = True
            if self.home_test_interval is not None:
                peer.next_home_test = now + self.home_test_interval
            if self.home_test_on_registration and peer.home_test is None:
                self._start_home_test(peer, now)

    def _refuse_bid(
        self, bu: BindingUpdate, status: int, bid: int, local: IPv6Address, hoa: IPv6Address,
        onwire_src: IPv6Address | None, sequence: int | None = None,
    ) -> None:
        self.counters[f"refused_{status}"] += 1
        ack = BindingAck(status, bu.sequence if sequence is None else sequence, 0,
                         options=(BindingIdentifier(bid, status),))
        # Back to the endpoint the BU came from; a refusal vouches for no locator.
        self._reply(ack, local, hoa, onwire_src)

    def _clear_bids(self, peer: _Peer) -> None:
        """Forget every BID binding of *peer* (a BU without BID replaces them)."""
        for bid in list(peer.bids):
            self._retire_bid(peer, bid)
        self._sync_bids(peer)
        peer.binding.bid = None

    def _retire_bid(self, peer: _Peer, bid: int, deregistered_by: int | None = None) -> None:
        """Remove *bid*'s binding but remember a sequence number its next BU must exceed.

        ESP's anti-replay window takes a BU an on-path attacker held back
        and releases after the BID was deregistered, replaced (RFC 5648
        §5.6, §5.7), moved, or had expired; the CoA it names, proven once
        (proofs have no lifetime, draft §4.5.1), would be bound again though
        the MN left it.  So while the HoA has a binding here its BUs for
        that BID stay under RFC 6275 §9.5.1 (per BID, as RFC 5648 keys
        bindings); see :func:`retired_sequence`.  At most
        ``max_bids_per_hoa + 4`` per HoA, the oldest forgotten first.
        """
        held = peer.bids.pop(bid)
        peer.retired[bid] = retired_sequence(held.entry.sequence, deregistered_by)
        peer.retired.move_to_end(bid)
        while len(peer.retired) > self.max_bids_per_hoa + 4:
            peer.retired.popitem(last=False)

    def _sync_bids(self, peer: _Peer) -> None:
        """After a BID binding changed: the primary binding's events, and PathsChanged.

        The primary is the lowest BID (RFC 5648 has no preference field,
        docs/multi-coa.md): AcceptFrom names the lowest BID accepted from,
        SendTo and :meth:`binding` the lowest one bound (proven).
        """
        hoa = peer.binding.hoa
        accept = tuple(sorted((bid, held.accept_from) for bid, held in peer.bids.items()
                              if held.accept_from is not None))
        send = tuple(sorted((bid, held.entry.coa) for bid, held in peer.bids.items()
                            if held.entry.coa is not None))
        if peer.bids:
            binding = peer.binding
            if send:
                primary = peer.bids[send[0][0]]
                binding.coa = primary.entry.coa
                binding.sequence = primary.entry.sequence
                binding.lifetime = primary.entry.lifetime
                binding.expires_at = primary.entry.expires_at
                binding.bid = send[0][0]
                peer.last_ack = primary.last_ack
            else:
                binding.coa = None
                binding.expires_at = None
                binding.bid = None
                peer.last_ack = None
            peer.pending = None
            self._set_accept_from(peer, accept[0][1] if accept else None)
            self._set_send_to(peer, send[0][1] if send else None)
        elif peer.paths != ((), ()):
            # The last BID went: so did the primary binding it stood for.
            peer.binding.coa = None
            peer.binding.expires_at = None
            peer.binding.bid = None
            peer.last_ack = None
            self._set_accept_from(peer, None)
            self._set_send_to(peer, None)
        self._reindex(peer)
        if (accept, send) != peer.paths:
            peer.paths = (accept, send)
            self._emit(PathsChanged(peer.binding.local, hoa, accept, send))

    def _set_accept_from(self, peer: _Peer, coa: IPv6Address | None) -> None:
        if peer.accept_from != coa:
            peer.accept_from = coa
            self._emit(AcceptFrom(peer.binding.local, peer.binding.hoa, coa))
        self._reindex(peer)     # also after a pending proof ended

    def _set_send_to(self, peer: _Peer, coa: IPv6Address | None) -> None:
        if peer.send_to != coa:
            peer.send_to = coa
            self._emit(SendTo(peer.binding.local, peer.binding.hoa, coa))

    # -- AOT* (draft §4.4, §4.5) -------------------------------------------

    def _challenge(
        self, peer: _Peer, address: IPv6Address, purpose: AotPurpose, now: float
    ) -> bytes:
        hoa = peer.binding.hoa
        record = self.nonces.challenge(hoa, address, purpose, self._rng, now)
        # To the tested address through ancillary data; a HoA test goes to the HoA
        # itself, i.e. through the HA tunnel (draft §4.5.3): named explicitly,
        # or a coarse SA's "ancillary or CoA" rule would send it to the CoA.
        onwire_dst = address
        self._reply(AotChallenge(record.nonce), peer.binding.local, hoa, onwire_dst)
        self._emit(AotChallengeSent(hoa, hoa, address, purpose))
        return record.nonce

    def _on_aotr(
        self,
        aotr: AotResponse,
        hoa: IPv6Address,
        local: IPv6Address,
        wire_src: IPv6Address,
        now: float,
    ) -> None:
        if not self._known(hoa):
            self._drop("aotr_unknown_hoa", hoa=hoa)
            return
        # Draft §4.4.3: the on-wire source selects the stored nonce.
        record = self.nonces.get(hoa, wire_src)
        if record is None:
            self._drop("aotr_unknown_address", hoa=hoa, onwire=wire_src)
            return
        if not record.matches(aotr.nonce):
            self._drop("aotr_wrong_nonce", hoa=hoa, onwire=wire_src)
            return
        record.answered = True
        peer = self._peers.get(hoa)
        if wire_src == hoa:
            if peer is not None and peer.home_test is not None:
                peer.home_test = None
                self._emit(HomeAddressProven(hoa))
            else:
                self.counters["aotr_duplicate"] += 1
            return
        if self.proofs.add(hoa, wire_src, now):
            self._emit(CoaProven(hoa, wire_src))
            log.info("care-of address proven", hoa=hoa, coa=wire_src)
        answered = False
        if "binding" in record.waiting and peer is not None and peer.bids:
            answered = self._bid_proven(peer, wire_src, now)
        elif "binding" in record.waiting and peer is not None:
            pending = peer.pending
            if pending is not None and pending.coa == wire_src:
                peer.pending = None
                self._accept(
                    peer, wire_src, pending.lifetime_units, pending.sequence, pending.ack, now
                )
                answered = True
            elif peer.binding.coa == wire_src and peer.last_ack is not None:
                # The MN resent its AOTR: the BA was lost.  Hence the kept nonce (§4.5.1).
                self.counters["ba_resent"] += 1
                self._reply(peer.last_ack, peer.binding.local, hoa, wire_src)
                answered = True
        if "early-test" in record.waiting:
            self._send_status(hoa, local, wire_src, AotStatusCode.PROOF_VALID)
            answered = True
        if not answered:
            self.counters["aotr_nothing_pending"] += 1

    def _bid_proven(self, peer: _Peer, coa: IPv6Address, now: float) -> bool:
        """A proof of *coa* came: accept the BID waiting for it, or resend its lost BA."""
        hoa = peer.binding.hoa
        for bid, held in list(peer.bids.items()):
            pending = held.pending
            if pending is not None and pending.coa == coa:
                held.pending = None
                self._accept_bid(peer, bid, held, coa, pending.lifetime_units, pending.sequence,
                                 pending.ack, now)
                return True
            if held.entry.coa == coa and held.last_ack is not None:
                # The MN resent its AOTR: the BA was lost (draft §4.5.1).
                self.counters["ba_resent"] += 1
                self._reply(held.last_ack, held.entry.local, hoa, coa)
                return True
        return False

    def _on_aoto(
        self, hoa: IPv6Address, local: IPv6Address, wire_src: IPv6Address, now: float
    ) -> None:
        if not self._known(hoa):
            self._drop("aoto_unknown_hoa", hoa=hoa)
            return
        peer = self._peers.get(hoa)
        if peer is None or not peer.binding.bound:
            # Draft §4.4.1: an AOTO from an MN not registered here is dropped silently.
            self._drop("aoto_unregistered", hoa=hoa)
            return
        if wire_src == hoa:
            self._drop("aoto_from_home_address", hoa=hoa)
            return
        if not self.allow_early_test:
            self._send_status(hoa, local, wire_src, AotStatusCode.AOTO_NOT_ALLOWED)
        elif self.proofs.use(hoa, wire_src):
            self._send_status(hoa, local, wire_src, AotStatusCode.PROOF_VALID)
        else:
            self._challenge(peer, wire_src, "early-test", now)

    def _send_status(
        self, hoa: IPv6Address, local: IPv6Address, address: IPv6Address, code: int
    ) -> None:
        # Back to the address the AOTO/AOTR came from, where the MN listens.
        self._reply(AotStatus(code), local, hoa, address)
        self._emit(AotStatusSent(hoa, hoa, address, code))

    def test_home_address(self, hoa: IPv6Address, now: float) -> None:
        """Start a HoA test (draft §4.5.3): an AOTC to the HoA, through the HA tunnel.

        Only for an MN whose registration this CN accepted.  The AOTC is
        resent (same nonce) up to ``home_test_attempts`` times; then
        :class:`~vmip.mobility.events.HomeAddressTestFailed` is reported.
        """
        peer = self._peers.get(hoa)
        if peer is None or not peer.binding.bound:
            raise MobilityError(
                f"no accepted registration for {hoa}: nothing to test (draft §4.5.3)"
            )
        self._start_home_test(peer, now)
        self._reschedule(hoa)

    def _start_home_test(self, peer: _Peer, now: float) -> None:
        nonce = self._challenge(peer, peer.binding.hoa, "home-test", now)
        peer.home_test = _HomeTest(Retransmission(now, INITIAL_BINDACK_TIMEOUT), nonce)

    # -- Binding Error (RFC 6275 §9.2, §9.3.3) -----------------------------

    def _binding_error(
        self, src: IPv6Address, local: IPv6Address, onwire_src: IPv6Address | None, now: float
    ) -> None:
        self.counters["unknown_mh_type"] += 1
        if not self._binding_errors.allow(src, now):
            self.counters["binding_error_rate_limited"] += 1
            return
        error = BindingError(BindingErrorStatus.UNRECOGNIZED_MH_TYPE, src)
        self._reply(error, local, src, onwire_src)

    # -- time -----------------------------------------------------------

    def _reschedule(self, hoa: IPv6Address) -> None:
        peer = self._peers.get(hoa)
        if peer is None:
            self._deadlines.cancel(hoa)
            return
        home_test: float | None
        if peer.home_test is not None:
            home_test = peer.home_test.retransmission.deadline
        else:
            home_test = peer.next_home_test if peer.binding.bound else None
        deadline = earliest(peer.binding.expires_at,
                            peer.pending.deadline if peer.pending is not None else None,
                            home_test,
                            *(held.entry.expires_at for held in peer.bids.values()),
                            *(held.pending.deadline for held in peer.bids.values()
                              if held.pending is not None))
        # A peer left with nothing pending is dropped at the next timer run.
        self._deadlines.schedule(hoa, 0.0 if deadline is None else deadline)

    def get_timer(self) -> float | None:
        return self._deadlines.next()

    def handle_timer(self, now: float) -> None:
        for hoa in self._deadlines.pop_due(now):
            peer = self._peers.get(hoa)
            if peer is None:
                continue
            self._on_peer_timer(hoa, peer, now)
            self._reschedule(hoa)

    def _on_peer_timer(self, hoa: IPv6Address, peer: _Peer, now: float) -> None:
        if peer.bids:
            self._bid_timers(hoa, peer, now)
        pending = peer.pending
        if pending is not None and pending.deadline <= now:
            # Draft §4.5.1: no AOTR came; forget the request and the rule
            # that accepted traffic from the unproven CoA.
            peer.pending = None
            self._emit(ProofTimeout(hoa, pending.coa))
            self._set_accept_from(peer, peer.binding.coa)
        binding = peer.binding
        if not peer.bids and binding.expires_at is not None and binding.expires_at <= now:
            expired = binding.coa
            self._unbind(peer)
            self._set_accept_from(peer, None)
            peer.home_test = None
            self._emit(BindingExpired(hoa, hoa, expired))
            log.info("binding expired", hoa=hoa, coa=expired)
        due = peer.next_home_test
        if due is not None and due <= now and peer.home_test is None and binding.bound:
            assert self.home_test_interval is not None
            peer.next_home_test = now + self.home_test_interval
            self._start_home_test(peer, now)
        test = peer.home_test
        if test is not None and test.retransmission.deadline <= now:
            if test.retransmission.attempts >= self.home_test_attempts:
                peer.home_test = None
                self._emit(HomeAddressTestFailed(hoa))
                log.info("home address test failed", hoa=hoa)
            else:
                test.retransmission.expire(now)
                # A fresh nonce in every AOTC (draft §4.3.1); earlier ones still match.
                test.nonce = self._challenge(peer, hoa, "home-test", now)
        if peer.pending is None and not peer.binding.bound and peer.home_test is None \
                and not peer.bids:
            del self._peers[hoa]
            self._unindex(hoa)

    def _bid_timers(self, hoa: IPv6Address, peer: _Peer, now: float) -> None:
        for bid, held in list(peer.bids.items()):
            pending = held.pending
            if pending is not None and pending.deadline <= now:
                # Draft §4.5.1: no AOTR came; forget the request and the unproven CoA.
                held.pending = None
                held.accept_from = held.entry.coa
                self._emit(ProofTimeout(hoa, pending.coa))
            entry = held.entry
            if entry.expires_at is not None and entry.expires_at <= now:
                expired = entry.coa
                entry.coa = None
                entry.expires_at = None
                held.accept_from = None
                self._emit(BindingExpired(hoa, hoa, expired, bid))
                log.info("binding expired", hoa=hoa, coa=expired, bid=bid)
            if held.pending is None and not entry.bound:
                self._retire_bid(peer, bid)
        self._sync_bids(peer)
        if not peer.binding.bound:
            peer.home_test = None
