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
trusted for the CoA it gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv6Address, IPv6Network

from vmip.log import get_logger
from vmip.mobility.binding import (
    BindingCacheEntry,
    MobilityCore,
    OnWireArgument,
    PeerFilter,
    lifetime_seconds,
    lifetime_units,
    onwire_of,
    peer_predicate,
    sequence_is_newer,
)
from vmip.mobility.events import (
    BindingCached,
    BindingDeregistered,
    BindingExpired,
    TunnelEndpointChanged,
)
from vmip.mobility.timers import earliest
from vmip.wire.mh import (
    AotChallenge,
    AotOffer,
    AotResponse,
    AotStatus,
    BindingAck,
    BindingAckStatus,
    BindingUpdate,
)

log = get_logger(__name__)


class HomeAgent(MobilityCore):
    """Home registrations for the MNs of ``home_prefix``.

    ``mobile_nodes`` says which HoAs this HA serves (a collection, a
    predicate, or ``None`` for any HoA of the prefix); a BU from another
    HoA is dropped and counted (it could only come through an SA the SPD
    should not have).  ``max_lifetime`` (seconds) caps the lifetime granted.
    ``key_management_mobility``: the HA's key manager follows the CoA, so
    the K bit of a BU is echoed in the BA (RFC 6275 §10.3.1).
    """

    def __init__(
        self,
        address: IPv6Address,
        home_prefix: IPv6Network,
        *,
        mobile_nodes: PeerFilter = None,
        max_lifetime: int = 420,
        key_management_mobility: bool = True,
        clock_now: float = 0.0,
    ):
        super().__init__()
        if lifetime_units(max_lifetime) < 1:
            raise ValueError("max_lifetime must be at least 4 seconds")
        self.address = IPv6Address(address)
        self.home_prefix = IPv6Network(home_prefix)
        self.max_lifetime_units = lifetime_units(max_lifetime)
        self.key_management_mobility = key_management_mobility
        self._serves: Callable[[IPv6Address], bool] = peer_predicate(mobile_nodes)
        self._cache: dict[IPv6Address, BindingCacheEntry] = {}
        self._started_at = clock_now

    # -- inspection -----------------------------------------------------

    def binding(self, hoa: IPv6Address) -> BindingCacheEntry | None:
        entry = self._cache.get(hoa)
        return replace(entry) if entry is not None else None

    def bindings(self) -> list[BindingCacheEntry]:
        return [replace(entry) for entry in self._cache.values()]

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
        message = self._parse(mh, src, dst)
        if message is None:
            return
        if dst != self.address:
            self._drop("not_for_us", dst=dst)
            return
        if isinstance(message, BindingUpdate):
            if not message.home_registration:
                # A correspondent registration: the runtime's Correspondent handles those.
                self._drop("not_home_registration", src=src)
                return
            self._on_home_registration(message, src, onwire_of(onwire, as_source=True), now)
        elif isinstance(message, (AotOffer, AotChallenge, AotResponse, AotStatus)):
            self._drop("aot_with_home_agent", src=src)  # draft §7.2
        else:
            self._drop("unexpected_type", src=src, mh_type=message.mh_type)

    def _on_home_registration(
        self, bu: BindingUpdate, hoa: IPv6Address, onwire_src: IPv6Address | None, now: float
    ) -> None:
        if not self._serves(hoa):
            self._drop("unknown_mobile_node", hoa=hoa)
            return
        coa = bu.alternate_care_of_address or onwire_src or hoa
        # A refusal goes where the MN is: the on-wire source, else the CoA it claims.
        reply_to = onwire_src or (coa if coa != hoa else None)
        if hoa not in self.home_prefix:
            self._refuse(bu, hoa, BindingAckStatus.NOT_HOME_SUBNET, reply_to)
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
        granted_units = min(bu.lifetime_units, self.max_lifetime_units)
        granted = lifetime_seconds(granted_units)
        moved = entry is None or entry.coa != coa
        if entry is None:
            entry = BindingCacheEntry(hoa, self.address, coa, bu.sequence, granted, None, home=True)
            self._cache[hoa] = entry
        entry.coa = coa
        entry.sequence = bu.sequence
        entry.lifetime = granted
        entry.expires_at = now + granted
        if moved:
            self._emit(TunnelEndpointChanged(hoa, coa))
        self._emit(BindingCached(hoa, coa, granted, home=True))
        log.info("home registration accepted", hoa=hoa, coa=coa, lifetime=granted)
        if bu.ack:
            ack = BindingAck(
                BindingAckStatus.ACCEPTED,
                bu.sequence,
                granted_units,
                key_management_mobility=bu.key_management_mobility and self.key_management_mobility,
            )
            self._send(ack, self.address, hoa, onwire_dst=coa)

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
        del self._cache[hoa]
        self._emit(TunnelEndpointChanged(hoa, None))
        self._emit(BindingDeregistered(hoa, hoa))
        log.info("home registration deleted", hoa=hoa)
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
    ) -> None:
        # Refusals are answered whatever the A bit says, so the MN learns why.
        self.counters[f"refused_{status}"] += 1
        log.info("home registration refused", hoa=hoa, status=status)
        ack = BindingAck(status, bu.sequence if sequence is None else sequence, 0)
        self._send(ack, self.address, hoa, onwire_dst=reply_to)

    # -- time -----------------------------------------------------------

    def get_timer(self) -> float | None:
        return earliest(*(entry.expires_at for entry in self._cache.values()))

    def handle_timer(self, now: float) -> None:
        for hoa, entry in list(self._cache.items()):
            if entry.expires_at is not None and entry.expires_at <= now:
                del self._cache[hoa]
                self._emit(BindingExpired(hoa, hoa, entry.coa))
                self._emit(TunnelEndpointChanged(hoa, None))
                log.info("home registration expired", hoa=hoa, coa=entry.coa)
