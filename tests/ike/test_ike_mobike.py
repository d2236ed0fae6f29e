"""MOBIKE (RFC 4555) between two sans-IO peers, and its notify parsers."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ikepair import B, make_pair
from vmip.ike.constants import ExchangeType, Notify
from vmip.ike.events import IkeSaAddressesUpdated
from vmip.ike.ikesa import IkeSaConfig
from vmip.ike.mobike import MAX_CHECKED_ADDRESSES, MAX_REBUILT_ANSWERS
from vmip.ike.messages import decode_message, decrypt_message
from vmip.ike.payloads import (
    IkeParseError,
    additional_address_notify,
    notifies,
    NoNatsAllowed,
    parse_additional_address,
    parse_cookie2,
    parse_no_nats_allowed,
)

PSK = b"m" * 32
NEW = ("2001:db8::c", 500)
EVIL = ("2001:db8:666::6", 500)
VICTIM = ("2001:db8:77::7", 500)


def _established(mobike_i: bool = True, mobike_r: bool = True):
    wire = make_pair(IkeSaConfig(psk=PSK, mobike=mobike_i), IkeSaConfig(psk=PSK, mobike=mobike_r))
    wire.initiator.initiate(wire.now)
    wire.pump()
    assert wire.initiator.is_established
    return wire


def _informationals(wire, direction: str, cipher, responses: bool = False):
    out = []
    for way, data, addr in wire.log:
        if way != direction:
            continue
        msg = decode_message(data[4:] if data[:4] == bytes(4) else data)
        if msg.exchange == ExchangeType.INFORMATIONAL and msg.response == responses:
            out.append((decrypt_message(msg, cipher), addr))
    return out


def _requests(wire, direction: str, cipher):
    return [msg for msg, _addr in _informationals(wire, direction, cipher)]


def test_mobike_is_negotiated_in_ike_auth() -> None:
    wire = _established()
    assert wire.initiator.mobike.active and wire.responder_sa.mobike.active
    # NO_ADDITIONAL_ADDRESSES from both: the lists are known to be empty.
    assert wire.initiator.mobike.peer_addresses == []


@pytest.mark.parametrize("i, r", [(True, False), (False, True)])
def test_mobike_needs_both(i: bool, r: bool) -> None:
    wire = _established(i, r)
    assert not wire.initiator.mobike.active and not wire.responder_sa.mobike.active


def test_update_sa_addresses_moves_the_responder_after_checking_the_address() -> None:
    wire = _established()
    responder = wire.responder_sa
    old_local, old_remote = wire.initiator.local_addr, responder.remote_addr
    wire.log.clear()
    wire.initiator.change_local_address(NEW)
    wire.initiator.announce_local_address(wire.now)
    wire.pump()
    # The request: UPDATE_SA_ADDRESSES, NAT detection for the new address,
    # COOKIE2, and NO_NATS_ALLOWED (both addresses IPv6, no NAT seen, §3.9).
    request, = _requests(wire, "i>r", responder._ctx.cipher_in)
    assert notifies(request.payloads, Notify.UPDATE_SA_ADDRESSES)
    assert len(notifies(request.payloads, Notify.NAT_DETECTION_SOURCE_IP)) == 1
    cookie2, = notifies(request.payloads, Notify.COOKIE2)
    no_nats, = notifies(request.payloads, Notify.NO_NATS_ALLOWED)
    said = parse_no_nats_allowed(no_nats.data)
    assert (str(said.src), said.src_port, str(said.dst), said.dst_port) == (*NEW, *B)
    # The response echoes COOKIE2 (§3.7) and carries the responder's NAT detection.
    (response, _), = _informationals(wire, "r>i", wire.initiator._ctx.cipher_in, responses=True)
    assert notifies(response.payloads, Notify.COOKIE2)[0].data == cookie2.data
    assert notifies(response.payloads, Notify.NAT_DETECTION_DESTINATION_IP)
    # The return routability check (§3.5): our own COOKIE2, to the new address,
    # echoed in the answer from there.
    (check, to), = _informationals(wire, "r>i", wire.initiator._ctx.cipher_in)
    assert to == NEW
    ours, = notifies(check.payloads, Notify.COOKIE2)
    (answer, _), = _informationals(wire, "i>r", responder._ctx.cipher_in, responses=True)
    assert notifies(answer.payloads, Notify.COOKIE2)[0].data == ours.data
    assert responder.remote_addr == NEW
    assert not wire.initiator.nat_detected and not responder.nat_detected
    moved_r, = wire.of("r", IkeSaAddressesUpdated)
    assert (moved_r.old_remote, moved_r.remote_addr) == (old_remote, NEW)
    moved_i, = wire.of("i", IkeSaAddressesUpdated)
    assert (moved_i.old_local, moved_i.local_addr) == (old_local, NEW)
    assert responder.stats["mobike_updates_received"] == 1
    assert responder.stats["mobike_addresses_verified"] == 1


def _hold_update(wire) -> list[bytes]:
    """The initiator moves to NEW; its first UPDATE_SA_ADDRESSES is taken off the wire."""
    held: list[bytes] = []
    wire.drop = lambda way, data: way == "i>r" and not held and (held.append(data) or True)
    wire.initiator.change_local_address(NEW)
    wire.initiator.announce_local_address(wire.now)
    wire.pump()
    wire.drop = None
    assert held
    return held


@pytest.mark.parametrize("no_nats", [True, False])
def test_update_resent_by_an_on_path_attacker_moves_nothing_and_the_genuine_one_does(
        no_nats: bool) -> None:
    """The attacker holds back the initiator's UPDATE and delivers it first from
    its own address (the source is not integrity protected).  The responder
    answers there but does not move (NO_NATS_ALLOWED does not match, or the
    address fails the return routability check); the initiator's retransmission
    from its real address is answered again and moves the SA there."""
    cfg = IkeSaConfig(psk=PSK, mobike_no_nats=no_nats)
    wire = make_pair(cfg, IkeSaConfig(psk=PSK))
    wire.initiator.initiate(wire.now)
    wire.pump()
    responder = wire.responder_sa
    before = responder.remote_addr
    held = _hold_update(wire)
    wire.unreachable.add(EVIL)      # what goes there reaches the attacker only
    responder_endpoint = wire.responder
    responder_endpoint.receive_datagram(held[0], EVIL, wire.now)
    wire.pump()
    assert responder.remote_addr == before
    assert not wire.of("r", IkeSaAddressesUpdated)
    if no_nats:
        assert responder.stats["mobike_unexpected_nat"] == 1
    # The genuine retransmission, from NEW.
    while not wire.of("i", IkeSaAddressesUpdated) and wire.advance_to_timer():
        wire.pump()
    wire.pump()
    assert responder.remote_addr == NEW
    moved, = wire.of("r", IkeSaAddressesUpdated)
    assert moved.remote_addr == NEW
    assert responder.stats["mobike_update_from_elsewhere"] == 1
    assert wire.initiator.is_established and responder.is_established
    assert not wire.initiator.nat_detected


def test_a_refusal_relayed_by_the_attacker_makes_the_initiator_update_again() -> None:
    """As above, but the attacker passes the responder's answer (UNEXPECTED_NAT_DETECTED,
    our COOKIE2 echoed) on to the initiator: it sends UPDATE_SA_ADDRESSES once
    more from its address, and both ends end up moved there."""
    wire = _established()
    responder = wire.responder_sa
    held = _hold_update(wire)
    wire.responder.receive_datagram(held[0], EVIL, wire.now)
    wire.pump()                     # the answer reaches the initiator all the same
    assert wire.initiator.stats["mobike_update_refused"] == 1
    for _ in range(20):
        if wire.of("i", IkeSaAddressesUpdated) and wire.of("r", IkeSaAddressesUpdated):
            break
        wire.pump()
        wire.advance_to_timer()
    assert wire.initiator.stats["mobike_update_retried"] == 1
    assert responder.remote_addr == NEW
    assert [e.remote_addr for e in wire.of("r", IkeSaAddressesUpdated)] == [NEW]
    assert [e.local_addr for e in wire.of("i", IkeSaAddressesUpdated)] == [NEW]


@pytest.mark.parametrize("no_nats", [True, False])
def test_an_authenticated_peer_spoofing_its_update_source_does_not_move_us_there(
        no_nats: bool) -> None:
    """A peer with the IKE SA's keys sends UPDATE_SA_ADDRESSES as if from a third
    party's address (NAT detection and NO_NATS_ALLOWED made for it) and keeps
    sending from its own: the third party never answers the check, so the
    responder never points the SA there."""
    wire = make_pair(IkeSaConfig(psk=PSK, mobike_no_nats=no_nats), IkeSaConfig(psk=PSK))
    wire.initiator.initiate(wire.now)
    wire.pump()
    responder = wire.responder_sa
    own = wire.initiator.local_addr
    held: list[bytes] = []
    wire.drop = lambda way, data: way == "i>r" and not held and (held.append(data) or True)
    wire.initiator.change_local_address(VICTIM)
    wire.initiator.announce_local_address(wire.now)
    wire.pump()
    wire.drop = None
    wire.initiator.change_local_address(own)    # it really is still here
    wire.unreachable.add(VICTIM)
    wire.responder.receive_datagram(held[0], VICTIM, wire.now)
    for _ in range(40):
        wire.pump()
        if not wire.advance_to_timer():
            break
    assert responder.remote_addr == own
    assert all(e.remote_addr != VICTIM for e in wire.of("r", IkeSaAddressesUpdated))
    assert responder.is_established


def test_an_address_that_never_answers_the_check_leaves_the_sa_where_it_was() -> None:
    wire = _established()
    responder = wire.responder_sa
    before = responder.remote_addr
    wire.unreachable.add(NEW)
    wire.initiator.change_local_address(NEW)
    wire.initiator.announce_local_address(wire.now)
    for _ in range(40):
        wire.pump()
        if not wire.advance_to_timer():
            break
    assert responder.remote_addr == before
    assert not wire.of("r", IkeSaAddressesUpdated)
    assert responder.stats["mobike_check_failed"] >= 1


def test_update_replayed_from_many_addresses_costs_a_bounded_number_of_checks() -> None:
    wire = make_pair(IkeSaConfig(psk=PSK, mobike_no_nats=False), IkeSaConfig(psk=PSK))
    wire.initiator.initiate(wire.now)
    wire.pump()
    responder = wire.responder_sa
    before = responder.remote_addr
    held = _hold_update(wire)
    for i in range(50):
        where = (f"2001:db8:666::{i + 1:x}", 500)
        wire.unreachable.add(where)
        wire.responder.receive_datagram(held[0], where, wire.now)
    wire.pump()
    checks = [to for _msg, to in _informationals(wire, "r>i", wire.initiator._ctx.cipher_in)]
    assert len(set(checks)) <= MAX_CHECKED_ADDRESSES
    assert responder.stats["mobike_update_from_elsewhere"] <= MAX_REBUILT_ANSWERS
    assert responder.stats["mobike_check_address_limit"] >= 1
    assert responder.remote_addr == before


def test_no_nats_allowed_is_not_sent_over_ipv4_unless_configured() -> None:
    from vmip.ike.mobike import _no_nats
    wire = _established()
    sa = wire.initiator
    assert _no_nats(sa)
    sa.local_addr, sa.remote_addr = ("192.0.2.1", 500), ("192.0.2.2", 500)
    assert not _no_nats(sa)
    sa.config = IkeSaConfig(psk=PSK, mobike_no_nats=True)
    assert _no_nats(sa)


def test_with_mobike_other_requests_do_not_move_the_responder() -> None:
    wire = _established()
    responder = wire.responder_sa
    before = responder.remote_addr
    wire.initiator.change_local_address(NEW)
    wire.initiator.send_liveness_check(wire.now)     # no UPDATE_SA_ADDRESSES
    wire.pump()
    # RFC 4555 §3.5: only UPDATE_SA_ADDRESSES changes the addresses.
    assert responder.remote_addr == before
    assert not wire.of("r", IkeSaAddressesUpdated)


def test_without_mobike_the_announcement_is_a_liveness_check() -> None:
    wire = _established(mobike_r=False)
    wire.initiator.change_local_address(NEW)
    wire.initiator.announce_local_address(wire.now)
    wire.pump()
    assert wire.responder_sa.remote_addr == NEW     # RFC 7296 §2.23
    assert not wire.of("r", IkeSaAddressesUpdated)
    assert wire.initiator.stats.get("liveness_ok") == 1


def test_update_from_the_responder_side_is_ignored() -> None:
    """Only the original initiator moves an SA (§3.5): the responder's own
    announcement is a liveness check, and the initiator keeps its addresses."""
    wire = _established()
    responder = wire.responder_sa
    responder.announce_local_address(wire.now)
    wire.responder.collect()
    wire.pump()
    assert not wire.of("i", IkeSaAddressesUpdated)


# -- parsers ---------------------------------------------------------------------------

@given(st.binary(max_size=100))
def test_parse_cookie2_accepts_8_to_64_octets_only(data: bytes) -> None:
    if 8 <= len(data) <= 64:
        assert parse_cookie2(data) == data
    else:
        with pytest.raises(IkeParseError):
            parse_cookie2(data)


@given(st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_parse_additional_address_raises_only_ike_parse_error(ntype: int, data: bytes) -> None:
    try:
        address = parse_additional_address(ntype, data)
    except IkeParseError:
        return
    assert address.packed == data
    assert ntype in (Notify.ADDITIONAL_IP4_ADDRESS, Notify.ADDITIONAL_IP6_ADDRESS)


@given(st.one_of(st.integers(0, 2**32 - 1).map(IPv4Address),
                 st.integers(0, 2**128 - 1).map(IPv6Address)))
def test_additional_address_round_trip(address) -> None:
    notify = additional_address_notify(address)
    assert parse_additional_address(notify.notify_type, notify.data) == address


@given(st.binary(max_size=60))
def test_parse_no_nats_allowed_raises_only_ike_parse_error(data: bytes) -> None:
    try:
        said = parse_no_nats_allowed(data)
    except IkeParseError:
        assert len(data) not in (12, 36)
        return
    assert said.encode() == data


@given(st.one_of(st.tuples(st.integers(0, 2**32 - 1).map(IPv4Address),
                           st.integers(0, 2**32 - 1).map(IPv4Address)),
                 st.tuples(st.integers(0, 2**128 - 1).map(IPv6Address),
                           st.integers(0, 2**128 - 1).map(IPv6Address))),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_no_nats_allowed_round_trip(addresses, src_port: int, dst_port: int) -> None:
    said = NoNatsAllowed(addresses[0], addresses[1], src_port, dst_port)
    assert parse_no_nats_allowed(said.encode()) == said
