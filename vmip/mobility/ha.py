"""The home agent's binding cache (RFC 6275 §10 as draft §7 changes it).

With IRO the home registration BU has no Home Address option and the BA no
type 2 routing header (draft §7.2): both are ESP-protected between the HoA
and the HA, and the remap engine swaps HoA and CoA on the wire.  The BU
therefore arrives with the HoA as SA-level source, and the on-wire source
(the CoA it was sent from) as ancillary data.

The CoA to bind is the Alternate Care-of Address option: draft appendix A
says the HA only needs "a protected Binding Update message containing the
new CoA in the Alternate CoA option" and that sending from that CoA "is not
even mandatory", so no address check is made against the on-wire source.
Without the option the on-wire source is the CoA, and without remapping
that is the HoA, i.e. a deregistration (RFC 6275 §10.3.2).

No AOT* message is ever exchanged with the HA (draft §7.2): the MN is
trusted for the CoA it gives, within limits: a CoA that is not a unicast
routable address, or that lies in the home prefix (the HA's own address,
another MN's HoA), is never bound (RFC 6275 §9.5.1; dropped and counted).

The other RFC 6275 duties (docs/mobility.md "Home agent duties"): a
Binding Error, rate-limited, for an unknown MH type (§9.2, §9.3.3); status
139 to a correspondent BU (H=0) for a HoA registered here (§9.5.1); a
bounded binding cache, status 130 beyond it (§9.5.1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from vmip.log import LineBudget, get_logger
from vmip.mobility.binding import (
    DEFAULT_MAX_BIDS_PER_HOA,
    MAX_BIDS_PER_HOA_LIMIT,
    BindingCacheEntry,
    BindingErrorLimiter,
    MobilityCore,
    OnWireArgument,
    PeerFilter,
    lifetime_seconds,
    lifetime_units,
    onwire_of,
    paths_of,
    peer_predicate,
    retired_sequence,
    sequence_is_newer,
    unroutable_care_of,
)
from vmip.mobility.events import (
    BindingCached,
    BindingDeregistered,
    BindingExpired,
    PathsChanged,
    TunnelEndpointChanged,
)
from vmip.mobility.timers import Deadlines, earliest
from vmip.wire.mh import (
    AotChallenge,
    AotOffer,
    AotResponse,
    AotStatus,
    BindingAck,
    BindingAckStatus,
    BindingError,
    BindingErrorStatus,
    BindingIdentifier,
    BindingUpdate,
    UnknownMobilityMessage,
)

log = get_logger(__name__)

#: Home registrations an HA keeps unless told otherwise (mobility.max_home_bindings).
DEFAULT_MAX_BINDINGS = 16384


class HomeAgent(MobilityCore):
    """Home registrations for the MNs of ``home_prefix``.

    ``mobile_nodes`` says which HoAs this HA serves (a collection, a
    predicate, or ``None`` for any HoA of the prefix); a BU from another
    HoA is dropped and counted (it could only come through an SA the SPD
    should not have).  ``max_lifetime`` (seconds) caps the lifetime granted.
    ``key_management_mobility``: the HA's key manager follows the CoA, so
    the K bit of a BU is echoed in the BA (RFC 6275 §10.3.1).
    ``max_bindings``: home registrations kept at most; a BU for one more
    HoA is refused with status 130 (insufficient resources).
    """

    def __init__(
        self,
        address: IPv6Address,
        home_prefix: IPv6Network,
        *,
        mobile_nodes: PeerFilter = None,
        max_lifetime: int = 420,
        key_management_mobility: bool = True,
        max_bindings: int = DEFAULT_MAX_BINDINGS,
        clock_now: float = 0.0,
        max_bids_per_hoa: int = DEFAULT_MAX_BIDS_PER_HOA,
    ):
        super().__init__()
        if not 0 <= max_bids_per_hoa <= MAX_BIDS_PER_HOA_LIMIT:
            raise ValueError(f"max_bids_per_hoa must be 0..{MAX_BIDS_PER_HOA_LIMIT}")
        #: RFC 5648 bindings kept per HoA; 0: no RFC 5648 support at all.
        self.max_bids_per_hoa = max_bids_per_hoa
        if lifetime_units(max_lifetime) < 1:
            raise ValueError("max_lifetime must be at least 4 seconds")
        if max_bindings < 1:
            raise ValueError("max_bindings must be at least 1")
        self.max_bindings = max_bindings
        self._binding_errors = BindingErrorLimiter()
        # CoA -> the HoA whose home registration names it: one binding per
        # CoA, as _on_home_registration refuses a CoA another HoA holds.
        self._holders: dict[IPv6Address, IPv6Address] = {}
        self.address = IPv6Address(address)
        self.home_prefix = IPv6Network(home_prefix)
        self.max_lifetime_units = lifetime_units(max_lifetime)
        self.key_management_mobility = key_management_mobility
        self._serves: Callable[[IPv6Address], bool] = peer_predicate(mobile_nodes)
        self._cache: dict[IPv6Address, BindingCacheEntry] = {}
        # Expiry times by HoA: the next one in O(log n), not a walk over the
        # cache after every packet (docs/scale.md).
        self._expiries: Deadlines[IPv6Address] = Deadlines()
        # RFC 5648: HoA -> BID -> binding, for HoAs registered with BIDs;
        # then _cache[hoa] is the primary one (lowest BID).  Bounded:
        # max_bids_per_hoa per HoA, max_bindings HoAs.
        self._bids: dict[IPv6Address, dict[int, BindingCacheEntry]] = {}
        self._bid_expiries: Deadlines[tuple[IPv6Address, int]] = Deadlines()
        # HoA -> BID -> the last sequence number of a removed BID binding, kept
        # while the HoA has a binding here (_remove_bid); bounded per HoA.
        self._retired: dict[IPv6Address, OrderedDict[int, int]] = {}
        # The (BID, CoA) paths last reported per HoA (PathsChanged).
        self._paths: dict[IPv6Address, tuple[tuple[int, IPv6Address], ...]] = {}
        # Info lines for bindings made, deleted, expired or refused: a sample
        # at a bounded rate (refreshes and moves are debug: thousands a second).
        self._lines = LineBudget()
        self._last_now = clock_now
        self._started_at = clock_now
        #: (HoA, CoA) -> why that MN may not register at that CoA, or None; set
        #: by a key manager that knows which CoAs an MN's identity holds.
        self.care_of_check: Callable[[IPv6Address, IPv6Address], str | None] | None = None

    # -- inspection -----------------------------------------------------

    def binding(self, hoa: IPv6Address) -> BindingCacheEntry | None:
        entry = self._cache.get(hoa)
        return replace(entry) if entry is not None else None

    def bindings(self) -> list[BindingCacheEntry]:
        """Every binding: per HoA its only one, or each BID's (RFC 5648), lowest first."""
        return [binding for hoa in self._cache for binding in self.bindings_of(hoa)]

    def holder_of(self, coa: IPv6Address) -> IPv6Address | None:
        """The HoA whose home registration names *coa* as its care-of address
        (under any of its BIDs)."""
        return self._holders.get(coa)

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

        ``src``/``dst`` are SA-level (HoA, HA); ``onwire`` the on-wire
        source the remap engine replaced (the CoA), or ``None``.
        """
        self._last_now = now
        message = self._parse(mh, src, dst)
        if message is None:
            return
        if dst != self.address:
            self._drop("not_for_us", dst=dst)
            return
        onwire_src = onwire_of(onwire, as_source=True)
        if isinstance(message, BindingUpdate):
            if not message.home_registration:
                self._on_correspondent_registration(message, src, onwire_src)
                return
            self._on_home_registration(message, src, onwire_src, now)
        elif isinstance(message, (AotOffer, AotChallenge, AotResponse, AotStatus)):
            self._drop("aot_with_home_agent", src=src)  # draft §7.2
        elif isinstance(message, UnknownMobilityMessage):
            # RFC 6275 §9.2: an unknown MH type gets a Binding Error, status 2.
            self.counters["unknown_mh_type"] += 1
            if not self._binding_errors.allow(src, now):
                self.counters["binding_error_rate_limited"] += 1
                return
            error = BindingError(BindingErrorStatus.UNRECOGNIZED_MH_TYPE, src)
            # To the CoA it came from, else the one bound: a packet of ours to
            # the HoA itself has no locator (it is our home link's).
            entry = self._cache.get(src)
            self._send(error, self.address, src,
                       onwire_dst=onwire_src or (entry.coa if entry is not None else None))
        else:
            self._drop("unexpected_type", src=src, mh_type=message.mh_type)

    def _on_correspondent_registration(
        self, bu: BindingUpdate, hoa: IPv6Address, onwire_src: IPv6Address | None
    ) -> None:
        if hoa in self._cache:
            # RFC 6275 §9.5.1: a home registration cannot turn into a correspondent one.
            reply_to = onwire_src or bu.alternate_care_of_address
            if reply_to is not None and unroutable_care_of(reply_to):
                reply_to = None
            self._refuse(bu, hoa, BindingAckStatus.REGISTRATION_TYPE_CHANGE_DISALLOWED, reply_to)
            return
        # Route optimisation with this node goes to its own address, not its HA role's.
        self._drop("not_home_registration", src=hoa)

    def _on_home_registration(
        self, bu: BindingUpdate, hoa: IPv6Address, onwire_src: IPv6Address | None, now: float
    ) -> None:
        if not self._serves(hoa):
            self._drop("unknown_mobile_node", hoa=hoa)
            return
        # RFC 5648 off (max_bids_per_hoa 0): the BID option is skipped like
        # any unknown option (RFC 6275 §6.2.1), as a node predating it does.
        identifiers = bu.binding_identifiers if self.max_bids_per_hoa else ()
        option = identifiers[0] if identifiers else None
        option_coa = option.care_of_address if option is not None else None
        if isinstance(option_coa, IPv4Address):
            option_coa = None          # refused below, once the MN's locator is known
        coa = option_coa or bu.alternate_care_of_address or onwire_src or hoa
        if coa != hoa and (unroutable_care_of(coa) or coa in self.home_prefix):
            # RFC 6275 §9.5.1: a CoA is unicast routable; one in the home
            # prefix (our address, another HoA) would loop the tunnel.
            self._drop("bu_invalid_coa", hoa=hoa, coa=coa)
            return
        # A refusal goes where the MN is: the on-wire source, else the CoA it claims.
        reply_to = onwire_src or (coa if coa != hoa else None)
        if hoa not in self.home_prefix:
            self._refuse(bu, hoa, BindingAckStatus.NOT_HOME_SUBNET, reply_to)
            return
        if option is not None:
            malformed = self._mcoa_malformed(bu, identifiers)
            if malformed is not None:
                self.counters["bid_refused"] += 1
                self._refuse(bu, hoa, malformed, reply_to)
                return
        holder = self._holders.get(coa)
        if holder is not None and holder != hoa:
            # Another MN's CoA: its tunnel would follow this binding to the
            # sender.  An authentic BU (the sender's own SA) proves its HoA,
            # never the CoA it names, so a CoA names one binding at a time;
            # silently, as an unusable CoA is (RFC 6275 §9.5.1): the BA would
            # go to that other MN.  The same holds for every BID (RFC 5648).
            self._drop("bu_coa_in_use", hoa=hoa, coa=coa)
            self._info("home registration refused", hoa=hoa, coa=coa, reason="coa in use")
            return
        if self.care_of_check is not None and coa != hoa:
            refusal = self.care_of_check(hoa, coa)
            if refusal is not None:
                # Another MN's CoA: its traffic would follow this binding.  No BA:
                # the CoA is not this MN's to send one to.
                self._drop("care_of_not_certified", hoa=hoa, coa=coa)
                log.warning("home registration refused", hoa=hoa, coa=coa, reason=refusal)
                return
        if option is not None:
            self._on_bid_registration(bu, hoa, option.bid, option.overwrite, coa, onwire_src,
                                      reply_to, now)
            return
        entry = self._cache.get(hoa)
        if entry is not None and not sequence_is_newer(bu.sequence, entry.sequence):
            # RFC 6275 §9.5.1: the BA carries the last accepted sequence number.
            self._refuse(
                bu, hoa, BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW, reply_to, entry.sequence
            )
            return
        if bu.lifetime_units == 0 or coa == hoa:
            self._deregister(bu, hoa, entry, onwire_src)
            return
        if entry is None and len(self._cache) >= self.max_bindings:
            self._refuse(bu, hoa, BindingAckStatus.INSUFFICIENT_RESOURCES, reply_to)
            return
        if hoa in self._bids:
            # RFC 5648 §5.6: a BU without a BID replaces every binding of
            # the HoA with this one.
            self._drop_bids(hoa, keep=None)
            entry = self._cache.get(hoa)
        granted_units = min(bu.lifetime_units, self.max_lifetime_units)
        granted = lifetime_seconds(granted_units)
        moved = entry is None or entry.coa != coa
        created = entry is None
        if entry is None:
            entry = BindingCacheEntry(hoa, self.address, coa, bu.sequence, granted, None, home=True)
            self._cache[hoa] = entry
        if moved:
            self._rehold(hoa, entry.coa, coa)
        entry.renew(coa, bu.sequence, granted, now)
        self._expiries.schedule(hoa, entry.expires_at)
        if moved:
            self._emit(TunnelEndpointChanged(hoa, coa))
        self._emit(BindingCached(hoa, coa, granted, home=True))
        if created:
            self._info("home registration created", hoa=hoa, coa=coa, lifetime=granted)
        else:
            log.debug("home registration accepted", hoa=hoa, coa=coa, lifetime=granted)
        if bu.ack:
            ack = BindingAck(
                BindingAckStatus.ACCEPTED,
                bu.sequence,
                granted_units,
                key_management_mobility=bu.key_management_mobility and self.key_management_mobility,
            )
            self._send(ack, self.address, hoa, onwire_dst=coa)

    # -- multiple care-of addresses (RFC 5648) ----------------------------

    def _mcoa_malformed(
        self, bu: BindingUpdate, identifiers: tuple[BindingIdentifier, ...]
    ) -> int | None:
        """The RFC 5648 status refusing a BU with BID options, or ``None``."""
        if len(identifiers) > 1:
            # RFC 5648 §5.3 bulk registration: optional; one BID per BU here.
            return BindingAckStatus.MCOA_BULK_REGISTRATION_PROHIBITED
        option = identifiers[0]
        if option.simultaneous_home:
            # §5.6 home and foreign at once: the HA does not defend the HoA on
            # the home link while bindings stand (no proxy ND in vmip).
            return BindingAckStatus.MCOA_SIMULTANEOUS_HOME_AND_FOREIGN_PROHIBITED
        if option.bid == 0 or isinstance(option.care_of_address, IPv4Address):
            # BID 0 is never assigned; an IPv4 CoA needs RFC 5555, not supported.
            return BindingAckStatus.MCOA_MALFORMED
        return None

    def bindings_of(self, hoa: IPv6Address) -> list[BindingCacheEntry]:
        """Every binding of *hoa*: its BIDs' (RFC 5648), lowest BID first, or its only one."""
        bids = self._bids.get(hoa)
        if bids is not None:
            return [replace(bids[bid]) for bid in sorted(bids)]
        entry = self._cache.get(hoa)
        return [replace(entry)] if entry is not None else []

    def paths(
        self, hoa: IPv6Address
    ) -> tuple[tuple[tuple[int, IPv6Address], ...], tuple[tuple[int, IPv6Address], ...]]:
        """``(accept, send)`` of *hoa*'s BID bindings as the last PathsChanged
        said (the same set twice at an HA; empty: no BIDs)."""
        paths = self._paths.get(hoa, ())
        return paths, paths

    def _on_bid_registration(
        self,
        bu: BindingUpdate,
        hoa: IPv6Address,
        bid: int,
        overwrite: bool,
        coa: IPv6Address,
        onwire_src: IPv6Address | None,
        reply_to: IPv6Address | None,
        now: float,
    ) -> None:
        bids = self._bids.get(hoa)
        entry = bids.get(bid) if bids is not None else None
        retired = self._retired.get(hoa)
        last = entry.sequence if entry is not None else (
            retired.get(bid) if retired is not None else None)
        if last is not None and not sequence_is_newer(bu.sequence, last):
            # RFC 6275 §9.5.1, per binding: each BID keeps its own sequence
            # number, also once its binding was removed (_remove_bid).
            self._refuse(bu, hoa, BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW, reply_to,
                         last, bid)
            return
        if bu.lifetime_units == 0 or coa == hoa:
            if entry is None:
                # RFC 6275 §10.3.2: no such binding to delete.
                self._refuse(bu, hoa, BindingAckStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE,
                             onwire_src, bid=bid)
                return
            # RFC 5648 §5.6: lifetime 0 with a BID removes that binding only.
            self._remove_bid(hoa, bid, bu.sequence)
            self._emit(BindingDeregistered(hoa, hoa, bid))
            self._info("home registration deleted", hoa=hoa, bid=bid)
            self._bids_changed(hoa)
            if bu.ack:
                self._send(BindingAck(BindingAckStatus.ACCEPTED, bu.sequence, 0,
                                      options=(BindingIdentifier(bid),)),
                           self.address, hoa, onwire_dst=onwire_src)
            return
        single = self._cache.get(hoa) if bids is None else None
        if single is not None and not overwrite:
            # RFC 5648 §5.7: a binding made without a BID stands; the MN must
            # say (O flag) that this BU overwrites it.
            self._refuse(bu, hoa, BindingAckStatus.MCOA_NON_MCOA_BINDING_EXISTS, reply_to,
                         bid=bid)
            return
        if entry is None:
            count = len(bids) if bids is not None else 0
            if count >= self.max_bids_per_hoa and not overwrite:
                # A flood of BIDs is refused and counted, never stored.
                self.counters["bid_limit"] += 1
                self._refuse(bu, hoa, BindingAckStatus.INSUFFICIENT_RESOURCES, reply_to, bid=bid)
                return
            if hoa not in self._cache and len(self._cache) >= self.max_bindings:
                self._refuse(bu, hoa, BindingAckStatus.INSUFFICIENT_RESOURCES, reply_to, bid=bid)
                return
        if overwrite:
            # RFC 5648 §5.7: every other binding of the HoA goes.
            if single is not None:
                self._forget_single(hoa)
            if bids is not None:
                for other in [b for b in bids if b != bid]:
                    self._remove_bid(hoa, other)
        bids = self._bids.setdefault(hoa, {})
        # One CoA names one binding: a CoA this HoA holds under another BID
        # moved to this one (the newest BU tells where it is; the old BID's
        # binding is stale).  Within one HoA's own SA: nothing widens.
        for other, held in list(bids.items()):
            if other != bid and held.coa == coa:
                self._remove_bid(hoa, other)
                self.counters["bid_coa_moved"] += 1
        granted_units = min(bu.lifetime_units, self.max_lifetime_units)
        granted = lifetime_seconds(granted_units)
        if entry is None:
            entry = BindingCacheEntry(hoa, self.address, coa, bu.sequence, granted, None,
                                      home=True, bid=bid)
            bids[bid] = entry
            retired = self._retired.get(hoa)
            if retired is not None:
                retired.pop(bid, None)
            self._info("home registration created", hoa=hoa, coa=coa, bid=bid, lifetime=granted)
        elif entry.coa != coa and entry.coa is not None and self._holders.get(entry.coa) == hoa:
            del self._holders[entry.coa]
        self._holders[coa] = hoa
        entry.renew(coa, bu.sequence, granted, now)
        self._bid_expiries.schedule((hoa, bid), entry.expires_at)
        self._emit(BindingCached(hoa, coa, granted, home=True, bid=bid))
        self._bids_changed(hoa)
        if bu.ack:
            ack = BindingAck(
                BindingAckStatus.ACCEPTED,
                bu.sequence,
                granted_units,
                key_management_mobility=bu.key_management_mobility and self.key_management_mobility,
                options=(BindingIdentifier(bid),),
            )
            self._send(ack, self.address, hoa, onwire_dst=coa)

    def _remove_bid(self, hoa: IPv6Address, bid: int, deregistered_by: int | None = None) -> None:
        bids = self._bids.get(hoa)
        entry = bids.pop(bid, None) if bids is not None else None
        if entry is None:
            return
        self._bid_expiries.cancel((hoa, bid))
        if entry.coa is not None and self._holders.get(entry.coa) == hoa:
            del self._holders[entry.coa]
        # ESP's anti-replay window takes a BU an on-path attacker held back
        # and releases after this BID was deregistered, replaced (RFC 5648
        # §5.6, §5.7), moved or expired: its sequence number still counts
        # while the HoA has a binding here (retired_sequence), or the tunnel
        # could follow a CoA the MN left.
        retired = self._retired.setdefault(hoa, OrderedDict())
        retired[bid] = retired_sequence(entry.sequence, deregistered_by)
        retired.move_to_end(bid)
        while len(retired) > self.max_bids_per_hoa + 4:
            retired.popitem(last=False)

    def _forget_single(self, hoa: IPv6Address) -> None:
        entry = self._cache.pop(hoa, None)
        self._expiries.cancel(hoa)
        if entry is not None and entry.coa is not None and self._holders.get(entry.coa) == hoa:
            del self._holders[entry.coa]

    def _drop_bids(self, hoa: IPv6Address, keep: int | None) -> None:
        """Forget every BID binding of *hoa* (a BU without BID replaces them)."""
        bids = self._bids.get(hoa)
        if bids is None:
            return
        for bid in list(bids):
            if bid != keep:
                self._remove_bid(hoa, bid)
        if not bids:
            del self._bids[hoa]
            self._cache.pop(hoa, None)
            if self._paths.pop(hoa, None):
                self._emit(PathsChanged(self.address, hoa, (), ()))

    def _bids_changed(self, hoa: IPv6Address) -> None:
        """After a BID binding of *hoa* changed: the primary (lowest BID) and the paths."""
        bids = self._bids.get(hoa, {})
        old = self._cache.get(hoa)
        old_coa = old.coa if old is not None else None
        if bids:
            primary = bids[min(bids)]
            self._cache[hoa] = primary
            new_coa = primary.coa
        else:
            self._bids.pop(hoa, None)
            self._cache.pop(hoa, None)
            self._retired.pop(hoa, None)     # no binding left: RFC 6275 §9.5.1
            new_coa = None
        if new_coa != old_coa:
            # The tunnel follows the primary binding: the lowest BID bound
            # (RFC 5648 has no preference field; docs/multi-coa.md).
            self._emit(TunnelEndpointChanged(hoa, new_coa))
        paths = paths_of(list(bids.values()))
        if paths != self._paths.get(hoa, ()):
            if paths:
                self._paths[hoa] = paths
            else:
                self._paths.pop(hoa, None)
            self._emit(PathsChanged(self.address, hoa, paths, paths))

    def _deregister(
        self,
        bu: BindingUpdate,
        hoa: IPv6Address,
        entry: BindingCacheEntry | None,
        onwire_src: IPv6Address | None,
    ) -> None:
        if entry is None:
            # RFC 6275 §10.3.2: no binding to delete.
            self._refuse(bu, hoa, BindingAckStatus.NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE, onwire_src)
            return
        self._retired.pop(hoa, None)
        if hoa in self._bids:
            # RFC 5648 §5.6: lifetime 0 without a BID deletes every binding.
            self._drop_bids(hoa, keep=None)
            self._retired.pop(hoa, None)
        else:
            del self._cache[hoa]
            self._expiries.cancel(hoa)
            if entry.coa is not None:     # a CoA names one binding
                self._holders.pop(entry.coa, None)
        self._emit(TunnelEndpointChanged(hoa, None))
        self._emit(BindingDeregistered(hoa, hoa))
        self._info("home registration deleted", hoa=hoa)
        if bu.ack:
            # Back home the MN answers at its HoA (no ancillary); still away, at its CoA.
            self._send(
                BindingAck(BindingAckStatus.ACCEPTED, bu.sequence, 0),
                self.address,
                hoa,
                onwire_dst=onwire_src,
            )

    def _refuse(
        self,
        bu: BindingUpdate,
        hoa: IPv6Address,
        status: int,
        reply_to: IPv6Address | None,
        sequence: int | None = None,
        bid: int | None = None,
    ) -> None:
        # Refusals are answered whatever the A bit says, so the MN learns why.
        # The node sends the BA back to the underlay endpoint the BU came
        # from; a refusal vouches for no locator (docs/security.md).
        self.counters[f"refused_{status}"] += 1
        self._info("home registration refused", hoa=hoa, status=status)
        if bid is None and self.max_bids_per_hoa:
            identifiers = bu.binding_identifiers
            bid = identifiers[0].bid if identifiers else None
        # RFC 5648 §6.1: the BA echoes the BID with the status of that binding.
        options = (BindingIdentifier(bid, status),) if bid is not None else ()
        ack = BindingAck(status, bu.sequence if sequence is None else sequence, 0, options=options)
        self._send(ack, self.address, hoa, onwire_dst=reply_to)

    def _info(self, event: str, **fields) -> None:
        left_out = self._lines.take(self._last_now)
        if left_out is None:
            return
        if left_out:
            fields["lines_left_out"] = left_out
        log.info(event, **fields)

    def _rehold(self, hoa: IPv6Address, old: IPv6Address | None, new: IPv6Address | None) -> None:
        if old is not None and self._holders.get(old) == hoa:
            del self._holders[old]
        if new is not None:
            self._holders[new] = hoa

    # -- time -----------------------------------------------------------

    def get_timer(self) -> float | None:
        return earliest(self._expiries.next(), self._bid_expiries.next())

    def handle_timer(self, now: float) -> None:
        self._last_now = now
        if self._bids:
            self._expire_bids(now)
        for hoa in self._expiries.pop_due(now):
            entry = self._cache.get(hoa)
            if entry is None or entry.expires_at is None:
                continue
            if entry.expires_at > now:
                self._expiries.schedule(hoa, entry.expires_at)
                continue
            del self._cache[hoa]
            self._retired.pop(hoa, None)
            if entry.coa is not None:     # a CoA names one binding
                self._holders.pop(entry.coa, None)
            self._emit(BindingExpired(hoa, hoa, entry.coa))
            self._emit(TunnelEndpointChanged(hoa, None))
            self._info("home registration expired", hoa=hoa, coa=entry.coa)

    def _expire_bids(self, now: float) -> None:
        for hoa, bid in self._bid_expiries.pop_due(now):
            bids = self._bids.get(hoa)
            entry = bids.get(bid) if bids is not None else None
            if entry is None or entry.expires_at is None:
                continue
            if entry.expires_at > now:
                self._bid_expiries.schedule((hoa, bid), entry.expires_at)
                continue
            self._remove_bid(hoa, bid)
            self._emit(BindingExpired(hoa, hoa, entry.coa, bid))
            self._info("home registration expired", hoa=hoa, coa=entry.coa, bid=bid)
            self._bids_changed(hoa)
