"""MOBIKE (RFC 4555) for :class:`~vmip.ike.ikesa.IkeSa`, sans-IO.

What is implemented:

- §3.3: MOBIKE_SUPPORTED in IKE_AUTH both ways; MOBIKE is in use when both
  sent it.  The peer's ADDITIONAL_IP4/IP6_ADDRESS notifies are parsed and
  kept (bounded), NO_ADDITIONAL_ADDRESSES empties that list; we announce no
  additional addresses ourselves (NO_ADDITIONAL_ADDRESSES).
- §3.5: only the original initiator moves the SA: after our address changed,
  an INFORMATIONAL from the new address with UPDATE_SA_ADDRESSES,
  NAT_DETECTION_SOURCE_IP/DESTINATION_IP recomputed for the new addresses and
  a fresh COOKIE2 (§3.7).  The responder takes the addresses of that message
  for the IKE SA and its tunnel-mode CHILD_SAs, answers with its own NAT
  detection payloads and the COOKIE2 echoed; the initiator checks the echo,
  re-evaluates NAT and reports :class:`IkeSaAddressesUpdated`.
- With MOBIKE in use the responder follows the initiator's address only on
  UPDATE_SA_ADDRESSES (§3.5), not on any authenticated request as plain
  IKEv2 NAT traversal does (RFC 7296 §2.23).

Not implemented: a return-routability check of our own before using a new
peer address (§3.7, optional for the initiator), trying the peer's
additional addresses when its current one fails (§3.6), NO_NATS_ALLOWED
(we never send it; received, it is checked as §3.9 says).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from vmip.ike import crypto
from vmip.ike.constants import Notify
from vmip.ike.events import IkeSaAddressesUpdated
from vmip.ike.payloads import (
    IkeParseError,
    NotifyPayload,
    Payload,
    notifies,
    parse_additional_address,
    parse_cookie2,
)
from vmip.log import get_logger

if TYPE_CHECKING:
    from vmip.ike.ikesa import Addr, IkeSa
    from vmip.ike.messages import IkeMessage

log = get_logger(__name__)

#: Octets of the COOKIE2 we send (RFC 4555 §3.7 allows 8..64).
COOKIE2_LEN = 16
#: Peer addresses kept from ADDITIONAL_*_ADDRESS notifies (an authenticated
#: peer's list, still bounded).
MAX_PEER_ADDRESSES = 16


@dataclass
class MobikeState:
    """MOBIKE state of one IKE SA."""

    enabled: bool                         # we offer it (config)
    initiator: bool                       # the original initiator: it moves the SA (§3.5)
    peer_supported: bool = False
    peer_addresses: list[IPv4Address | IPv6Address] = field(default_factory=list)
    #: The COOKIE2 of our outstanding UPDATE_SA_ADDRESSES.
    cookie2: bytes | None = None
    #: Addresses before the update in flight (initiator).
    moving_from: tuple[Addr, Addr] | None = None

    @property
    def active(self) -> bool:
        return self.enabled and self.peer_supported


def auth_payloads(sa: IkeSa) -> list[Payload]:
    """Notifies to add to our IKE_AUTH message (§3.3)."""
    if not sa.mobike.enabled:
        return []
    return [NotifyPayload(Notify.MOBIKE_SUPPORTED), NotifyPayload(Notify.NO_ADDITIONAL_ADDRESSES)]


def peer_auth(sa: IkeSa, msg: IkeMessage) -> None:
    """The peer's verified IKE_AUTH message: does it speak MOBIKE, from which addresses."""
    sa.mobike.peer_supported = bool(notifies(msg.payloads, Notify.MOBIKE_SUPPORTED))
    _peer_addresses(sa, msg)


def _peer_addresses(sa: IkeSa, msg: IkeMessage) -> None:
    found: list[IPv4Address | IPv6Address] = []
    listed = False
    for n in msg.payloads:
        if not isinstance(n, NotifyPayload):
            continue
        if n.notify_type == Notify.NO_ADDITIONAL_ADDRESSES:
            listed = True
        elif n.notify_type in (Notify.ADDITIONAL_IP4_ADDRESS, Notify.ADDITIONAL_IP6_ADDRESS):
            listed = True
            try:
                address = parse_additional_address(n.notify_type, n.data)
            except IkeParseError:
                sa._count("mobike_bad_address")
                continue
            if address not in found and len(found) < MAX_PEER_ADDRESSES:
                found.append(address)
    if listed:
        sa.mobike.peer_addresses = found


def nat_detection(sa: IkeSa, local: Addr, remote: Addr) -> list[Payload]:
    """NAT_DETECTION_*_IP for *local* → *remote* on the current IKE SA (§3.5)."""
    ctx = sa._ctx
    return [NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP,
                          crypto.nat_detection_hash(ctx.spi_i, ctx.spi_r, local[0], local[1])),
            NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP,
                          crypto.nat_detection_hash(ctx.spi_i, ctx.spi_r, remote[0], remote[1]))]


def nat_between(sa: IkeSa, msg: IkeMessage, peer: Addr, local: Addr) -> bool | None:
    """Is there a NAT between *peer* (as the message came) and *local*?  None:
    the message carried no NAT detection payloads."""
    ctx = sa._ctx
    src = notifies(msg.payloads, Notify.NAT_DETECTION_SOURCE_IP)
    dst = notifies(msg.payloads, Notify.NAT_DETECTION_DESTINATION_IP)
    if not src or not dst:
        return None
    want_src = crypto.nat_detection_hash(ctx.spi_i, ctx.spi_r, peer[0], peer[1])
    want_dst = crypto.nat_detection_hash(ctx.spi_i, ctx.spi_r, local[0], local[1])
    return all(n.data != want_src for n in src) or all(n.data != want_dst for n in dst)


# -- initiator: we moved ------------------------------------------------------------

def start_update(sa: IkeSa, now: float) -> None:
    """Send UPDATE_SA_ADDRESSES from our (new) address (§3.5); queued behind
    an outstanding request (window size 1)."""
    from vmip.ike.constants import ExchangeType

    state = sa.mobike
    old = state.moving_from
    cookie2 = sa._rng(COOKIE2_LEN)
    state.cookie2 = cookie2
    payloads: list[Payload] = [NotifyPayload(Notify.UPDATE_SA_ADDRESSES),
                               *nat_detection(sa, sa.local_addr, sa.remote_addr),
                               NotifyPayload(Notify.COOKIE2, cookie2)]

    def on_response(msg: IkeMessage, t: float) -> None:
        echoed = notifies(msg.payloads, Notify.COOKIE2)
        if len(echoed) != 1 or echoed[0].data != cookie2:
            # §3.7: a response without our COOKIE2 proves nothing about the path.
            sa._count("mobike_cookie2_mismatch")
            log.warning("ike mobike update not confirmed", sa=sa.config.name,
                        reason="COOKIE2 not echoed")
            return
        state.cookie2 = None
        errors = [n for n in msg.payloads if isinstance(n, NotifyPayload)
                  and n.notify_type in (Notify.UNEXPECTED_NAT_DETECTED,
                                        Notify.UNACCEPTABLE_ADDRESSES)]
        if errors:
            sa._count("mobike_update_refused")
            log.warning("ike mobike update refused", sa=sa.config.name,
                        reason=Notify(errors[0].notify_type).name)
            return
        nat = nat_between(sa, msg, sa.remote_addr, sa.local_addr)
        if nat is not None:
            sa.nat_detected = nat
        sa._count("mobike_updates_sent")
        moved_from = old or (sa.local_addr, sa.remote_addr)
        state.moving_from = None
        log.info("ike sa addresses updated", sa=sa.config.name, local=sa.local_addr[0],
                 remote=sa.remote_addr[0], initiator=True)
        sa._emit(IkeSaAddressesUpdated(sa.config.name, moved_from[0], moved_from[1],
                                       sa.local_addr, sa.remote_addr, sa.encap))

    sa._send_request(sa._ctx, ExchangeType.INFORMATIONAL, payloads, on_response, now)


# -- responder: the initiator moved ----------------------------------------------------

def answer_informational(sa: IkeSa, msg: IkeMessage, addr: Addr, now: float) -> list[Payload]:
    """Extra payloads for our response to an INFORMATIONAL request (§3.5, §3.7),
    after acting on an UPDATE_SA_ADDRESSES in it."""
    extra: list[Payload] = []
    cookies = notifies(msg.payloads, Notify.COOKIE2)
    if cookies:
        try:
            extra.append(NotifyPayload(Notify.COOKIE2, parse_cookie2(cookies[0].data)))
        except IkeParseError:
            sa._count("mobike_bad_cookie2")
    _peer_addresses(sa, msg)
    if not notifies(msg.payloads, Notify.UPDATE_SA_ADDRESSES):
        return extra
    if not sa.mobike.active or sa.mobike.initiator:
        # Only the original initiator moves the SA (§3.5); without MOBIKE the
        # notify means nothing to us.
        sa._count("mobike_update_ignored")
        return extra
    peer = (str(addr[0]), int(addr[1]))
    nat = nat_between(sa, msg, peer, sa.local_addr)
    if nat and notifies(msg.payloads, Notify.NO_NATS_ALLOWED):
        sa._count("mobike_unexpected_nat")
        return [NotifyPayload(Notify.UNEXPECTED_NAT_DETECTED), *extra]
    old_local, old_remote = sa.local_addr, sa.remote_addr
    sa.remote_addr = peer
    if nat is not None:
        sa.nat_detected = nat
    sa._count("mobike_updates_received")
    extra = [*nat_detection(sa, sa.local_addr, peer), *extra]
    if (old_local, old_remote) != (sa.local_addr, sa.remote_addr):
        log.info("ike sa addresses updated", sa=sa.config.name, local=sa.local_addr[0],
                 remote=peer[0], initiator=False)
        sa._emit(IkeSaAddressesUpdated(sa.config.name, old_local, old_remote, sa.local_addr,
                                       sa.remote_addr, sa.encap))
    return extra
