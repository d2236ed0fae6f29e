"""MOBIKE (RFC 4555) for :class:`~vmip.ike.ikesa.IkeSa`, sans-IO.

What is implemented:

- §3.3: MOBIKE_SUPPORTED in IKE_AUTH both ways; MOBIKE is in use when both
  sent it.  The peer's ADDITIONAL_IP4/IP6_ADDRESS notifies are parsed and
  kept (bounded), NO_ADDITIONAL_ADDRESSES empties that list; we announce no
  additional addresses ourselves (NO_ADDITIONAL_ADDRESSES).
- §3.5: only the original initiator moves the SA: after our address changed,
  an INFORMATIONAL from the new address with UPDATE_SA_ADDRESSES,
  NAT_DETECTION_SOURCE_IP/DESTINATION_IP recomputed for the new addresses, a
  fresh COOKIE2 (§3.7) and, when we know there is no NAT, NO_NATS_ALLOWED
  (§3.9).  The responder answers with its own NAT detection payloads and the
  COOKIE2 echoed (or UNEXPECTED_NAT_DETECTED), then checks the new address
  (return routability, §3.5, §5.2.1) and only then takes it for the IKE SA
  and its tunnel-mode CHILD_SAs; the initiator checks the echo, re-evaluates
  NAT and reports :class:`IkeSaAddressesUpdated`.
- With MOBIKE in use the responder follows the initiator's address only on
  UPDATE_SA_ADDRESSES (§3.5), not on any authenticated request as plain
  IKEv2 NAT traversal does (RFC 7296 §2.23).

Not implemented: the initiator's own return-routability check before using
a new peer address (§3.7, optional), trying the peer's additional addresses
when its current one fails (§3.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING

from vmip.ike import crypto
from vmip.ike.constants import NAT_T_PORT, Notify
from vmip.ike.events import IkeSaAddressesUpdated
from vmip.ike.payloads import (
    DeletePayload,
    IkeParseError,
    NoNatsAllowed,
    NotifyPayload,
    Payload,
    find,
    notifies,
    parse_additional_address,
    parse_cookie2,
    parse_no_nats_allowed,
)
from vmip.log import get_logger

if TYPE_CHECKING:
    from vmip.ike.ikesa import Addr, IkeSa, _Pending
    from vmip.ike.messages import IkeMessage

log = get_logger(__name__)

#: Octets of the COOKIE2 we send (RFC 4555 §3.7 allows 8..64).
COOKIE2_LEN = 16
#: Peer addresses kept from ADDITIONAL_*_ADDRESS notifies (an authenticated
#: peer's list, still bounded).
MAX_PEER_ADDRESSES = 16
#: Addresses one address check may try (the first source of an UPDATE, then
#: retransmissions or answers from elsewhere); more are counted and ignored.
MAX_CHECKED_ADDRESSES = 4
#: Answers to one UPDATE_SA_ADDRESSES built again for another source address.
MAX_REBUILT_ANSWERS = 8
#: An UPDATE_SA_ADDRESSES refused with UNEXPECTED_NAT_DETECTED is sent again
#: this many times (a copy re-sent from elsewhere may have been answered first).
MAX_UPDATE_RETRIES = 2


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
    #: Updates sent again after UNEXPECTED_NAT_DETECTED (initiator).
    update_retries: int = 0
    #: Responder: the last UPDATE_SA_ADDRESSES answered, the address check running.
    update: UpdateSeen | None = None
    check: AddressCheck | None = None

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

def _no_nats(sa: IkeSa) -> bool:
    """Do we announce that no NAT may sit between us (§3.9)?"""
    if sa.config.mobike_no_nats is not None:
        return sa.config.mobike_no_nats
    # IPv6 needs no NAT; once one was seen (or faked for encapsulation) we do not claim it.
    return (ip_address(sa.local_addr[0]).version == 6 and ip_address(sa.remote_addr[0]).version == 6
            and not (sa.nat_detected or sa.encap or sa.config.force_encap))


def no_nats_notify(local: Addr, remote: Addr) -> NotifyPayload | None:
    """NO_NATS_ALLOWED for a message from *local* to *remote* (§4.2.6); None when
    the two are of different IP versions."""
    src, dst = ip_address(local[0]), ip_address(remote[0])
    if src.version != dst.version:
        return None
    return NotifyPayload(Notify.NO_NATS_ALLOWED,
                         NoNatsAllowed(src, dst, int(local[1]), int(remote[1])).encode())


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
    no_nats = no_nats_notify(sa.local_addr, sa.remote_addr) if _no_nats(sa) else None
    if no_nats is not None:
        payloads.append(no_nats)

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
            if errors[0].notify_type == Notify.UNEXPECTED_NAT_DETECTED \
                    and state.update_retries < MAX_UPDATE_RETRIES:
                # The responder saw our UPDATE from other addresses than ours:
                # someone may have re-sent it from elsewhere before us.  Once
                # more from here, as a new request (bounded).
                state.update_retries += 1
                sa._count("mobike_update_retried")
                sa._ctx.queue.append(lambda t2: start_update(sa, t2))
            return
        state.update_retries = 0
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
#
# The source address of UPDATE_SA_ADDRESSES is not covered by its integrity
# check: an on-path attacker can deliver the initiator's message from an
# address of its choice, and an authenticated peer can spoof it to point our
# traffic at a third party.  So the responder answers the UPDATE at once but
# moves the IKE SA and its CHILD_SAs only after a return routability check of
# the new address (§3.5, §5.2.1): an INFORMATIONAL request with a fresh
# COOKIE2 sent there, whose protected answer must come back from there with
# the cookie.  One cookie per checked address: a peer that learns the cookie
# sent to its own address cannot use it to pass the check of another.

@dataclass
class UpdateSeen:
    """The last UPDATE_SA_ADDRESSES request we answered (responder)."""

    raw: bytes = field(repr=False)      # as it came: a retransmission is the same octets
    request: IkeMessage = field(repr=False)
    answered: Addr                      # where our current response went
    #: The response carries only what this module adds (no Delete payloads),
    #: so it can be built again for another address.
    rebuildable: bool
    rebuilt: int = 0


@dataclass
class AddressCheck:
    """A return routability check of a new peer address (responder, §3.5)."""

    target: Addr
    nat: bool | None
    ctx: object = field(repr=False)     # the IKE SA's wire state it runs on
    cookies: dict[Addr, bytes] = field(default_factory=dict, repr=False)
    #: Message ID of our request once sent (None: queued behind another).
    mid: int | None = None


def answer_informational(sa: IkeSa, msg: IkeMessage, addr: Addr, now: float) -> list[Payload]:
    """Extra payloads for our response to an INFORMATIONAL request (§3.5, §3.7),
    after acting on an UPDATE_SA_ADDRESSES in it."""
    _peer_addresses(sa, msg)
    if not notifies(msg.payloads, Notify.UPDATE_SA_ADDRESSES):
        return _cookie2_echo(sa, msg)
    if not sa.mobike.active or sa.mobike.initiator:
        # Only the original initiator moves the SA (§3.5); without MOBIKE the
        # notify means nothing to us.
        sa._count("mobike_update_ignored")
        return _cookie2_echo(sa, msg)
    peer = (str(addr[0]), int(addr[1]))
    sa.mobike.update = UpdateSeen(sa._ctx.last_request, msg, peer,
                                  rebuildable=not find(msg.payloads, DeletePayload))
    return _answer_update(sa, msg, peer, now)


def _cookie2_echo(sa: IkeSa, msg: IkeMessage) -> list[Payload]:
    cookies = notifies(msg.payloads, Notify.COOKIE2)
    if not cookies:
        return []
    try:
        return [NotifyPayload(Notify.COOKIE2, parse_cookie2(cookies[0].data))]
    except IkeParseError:
        sa._count("mobike_bad_cookie2")
        return []


def _answer_update(sa: IkeSa, msg: IkeMessage, peer: Addr, now: float) -> list[Payload]:
    """Our answer to UPDATE_SA_ADDRESSES as it came from *peer*; starts (or
    points) the address check at *peer* unless it is refused."""
    echo = _cookie2_echo(sa, msg)
    nat = nat_between(sa, msg, peer, sa.local_addr)
    if not _no_nats_holds(sa, msg, peer, nat):
        # §3.9: the addresses differ from those the initiator sent from: an
        # address translation, or someone re-sent the message.  Do not move.
        sa._count("mobike_unexpected_nat")
        log.warning("ike mobike update refused", sa=sa.config.name, source=peer[0],
                    reason="UNEXPECTED_NAT_DETECTED")
        return [NotifyPayload(Notify.UNEXPECTED_NAT_DETECTED), *echo]
    sa._count("mobike_updates_received")
    _check_address(sa, peer, nat, now)
    return [*nat_detection(sa, sa.local_addr, peer), *echo]


def _no_nats_holds(sa: IkeSa, msg: IkeMessage, peer: Addr, nat: bool | None) -> bool:
    """No NO_NATS_ALLOWED, or its addresses and ports are those of the IP header (§3.9)."""
    found = notifies(msg.payloads, Notify.NO_NATS_ALLOWED)
    if not found:
        return True
    if nat:
        return False
    try:
        said = parse_no_nats_allowed(found[0].data)
    except IkeParseError:
        sa._count("mobike_bad_no_nats")
        return False
    ports = {sa.local_addr[1]} | ({NAT_T_PORT} if sa.encap else set())
    return (said.src == ip_address(peer[0]) and said.src_port == peer[1]
            and said.dst == ip_address(sa.local_addr[0]) and said.dst_port in ports)


def request_repeated(sa: IkeSa, addr: Addr, now: float) -> bool:
    """The last request came again (the caller checked the octets).  If it is
    our last UPDATE_SA_ADDRESSES and comes from another address than the one
    we answered, answer there and check that address instead: the copy we
    answered first may have been re-sent by an attacker from its own address,
    and this may be the initiator's genuine retransmission.  True when the
    response went out here."""
    seen = sa.mobike.update
    peer = (str(addr[0]), int(addr[1]))
    if seen is None or seen.raw != sa._ctx.last_request or peer == seen.answered:
        return False
    if not seen.rebuildable or seen.rebuilt >= MAX_REBUILT_ANSWERS:
        sa._count("mobike_update_repeat_ignored")
        return False
    seen.rebuilt += 1
    seen.answered = peer
    sa._count("mobike_update_from_elsewhere")
    sa._send_response(sa._ctx, seen.request, _answer_update(sa, seen.request, peer, now), peer)
    sa._kick(now)
    return True


def _check_address(sa: IkeSa, peer: Addr, nat: bool | None, now: float) -> None:
    """Verify *peer* before moving there; a check already running is pointed at it."""
    state = sa.mobike
    check = state.check
    if check is not None and check.ctx is not sa._ctx:
        state.check = check = None       # the IKE SA was rekeyed under it
    if check is None:
        if peer == sa.remote_addr:
            if nat is not None:
                sa.nat_detected = nat
            return
        state.check = AddressCheck(peer, nat, sa._ctx)
        sa._ctx.queue.append(lambda t: _send_check(sa, t))
        return
    check.nat = nat
    if peer == check.target:
        return
    if peer not in check.cookies and len(check.cookies) >= MAX_CHECKED_ADDRESSES:
        sa._count("mobike_check_address_limit")
        return
    check.target = peer
    _resend_check(sa, now)


def _cookie_for(sa: IkeSa, check: AddressCheck, target: Addr) -> bytes:
    cookie = check.cookies.get(target)
    if cookie is None:
        cookie = check.cookies[target] = sa._rng(COOKIE2_LEN)
    return cookie


def _send_check(sa: IkeSa, now: float) -> None:
    """Our INFORMATIONAL request with COOKIE2 to the address under check (§3.5)."""
    from vmip.ike.constants import ExchangeType

    check = sa.mobike.check
    if check is None or check.ctx is not sa._ctx or check.mid is not None:
        sa._kick(now)                    # nothing to check any more: on with the queue
        return
    cookie = _cookie_for(sa, check, check.target)
    sa._count("mobike_checks_sent")
    sa._send_request(sa._ctx, ExchangeType.INFORMATIONAL,
                     [NotifyPayload(Notify.COOKIE2, cookie)],
                     lambda msg, t: _check_answered(sa, check, msg, t), now, addr=check.target)
    assert sa._ctx.pending is not None
    check.mid = sa._ctx.pending.mid


def _resend_check(sa: IkeSa, now: float) -> None:
    """Point the outstanding check request at ``check.target``: the same message
    ID (the peer may never have seen it), that address's own COOKIE2."""
    from vmip.ike.constants import ExchangeType
    from vmip.ike.messages import IkeMessage, encode_message

    check = sa.mobike.check
    ctx = sa._ctx
    pending = ctx.pending
    if check is None or check.mid is None or pending is None or pending.mid != check.mid:
        return                           # still queued: it goes to the target when sent
    cookie = _cookie_for(sa, check, check.target)
    msg = IkeMessage(ctx.spi_i, ctx.spi_r, ExchangeType.INFORMATIONAL, check.mid,
                     ctx.original_initiator, False, (NotifyPayload(Notify.COOKIE2, cookie),))
    pending.data = encode_message(msg, ctx.cipher_out)
    pending.addr = check.target
    pending.tries = 1
    pending.next_at = now + sa._timeout(1)
    sa._count("mobike_checks_sent")
    sa._emit_raw(pending.data, pending.addr)


def _check_answered(sa: IkeSa, check: AddressCheck, msg: IkeMessage, now: float) -> None:
    state = sa.mobike
    if state.check is check:
        state.check = None
    source = sa.response_from
    echoed = notifies(msg.payloads, Notify.COOKIE2)
    cookie = check.cookies.get(source) if source is not None else None
    if cookie is None or len(echoed) != 1 or echoed[0].data != cookie:
        # Protected, but not from where its cookie went: that address is not
        # proven.  The answer's source is a hint as good as an UPDATE's: check
        # it (the budget of addresses per update still applies).
        sa._count("mobike_check_failed")
        log.warning("ike mobike address not verified", sa=sa.config.name,
                    target=check.target[0], source=source[0] if source else None,
                    reason="COOKIE2 not echoed from the address it was sent to")
        if source is not None and source != sa.remote_addr and source not in check.cookies \
                and len(check.cookies) < MAX_CHECKED_ADDRESSES:
            retry = AddressCheck(source, check.nat, sa._ctx, dict(check.cookies))
            state.check = retry
            sa._ctx.queue.append(lambda t: _send_check(sa, t))
        return
    assert source is not None
    if source == sa.remote_addr:
        return                           # the old path answered: we stay on it
    _move(sa, source, check.nat)


def request_timed_out(sa: IkeSa, pending: _Pending, now: float) -> bool:
    """Our request went unanswered.  If it was an address check, the address
    failed it: stay on the old path and check that one instead (with the same
    message ID; the IKE SA fails only if that goes unanswered too)."""
    check = sa.mobike.check
    ctx = sa._ctx
    if check is None or check.ctx is not ctx or ctx.pending is not pending \
            or check.mid != pending.mid or check.target == sa.remote_addr:
        return False
    sa._count("mobike_check_failed")
    log.warning("ike mobike address not verified", sa=sa.config.name, target=check.target[0],
                reason="no answer", staying=sa.remote_addr[0])
    check.target = sa.remote_addr
    _resend_check(sa, now)
    return True


def _move(sa: IkeSa, peer: Addr, nat: bool | None) -> None:
    old_local, old_remote = sa.local_addr, sa.remote_addr
    sa.remote_addr = peer
    if nat is not None:
        sa.nat_detected = nat
    sa._count("mobike_addresses_verified")
    log.info("ike sa addresses updated", sa=sa.config.name, local=sa.local_addr[0],
             remote=peer[0], initiator=False)
    sa._emit(IkeSaAddressesUpdated(sa.config.name, old_local, old_remote, sa.local_addr,
                                   sa.remote_addr, sa.encap))
