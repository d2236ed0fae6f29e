"""MOBIKE (RFC 4555) between two sans-IO peers, and its notify parsers."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ikepair import make_pair
from vmip.ike.constants import ExchangeType, Notify
from vmip.ike.events import IkeSaAddressesUpdated
from vmip.ike.ikesa import IkeSaConfig
from vmip.ike.messages import decode_message, decrypt_message
from vmip.ike.payloads import (
    IkeParseError,
    additional_address_notify,
    notifies,
    parse_additional_address,
    parse_cookie2,
)

PSK = b"m" * 32
NEW = ("2001:db8::c", 500)


def _established(mobike_i: bool = True, mobike_r: bool = True):
    wire = make_pair(IkeSaConfig(psk=PSK, mobike=mobike_i), IkeSaConfig(psk=PSK, mobike=mobike_r))
    wire.initiator.initiate(wire.now)
    wire.pump()
    assert wire.initiator.is_established
    return wire


def _requests(wire, direction: str, cipher):
    out = []
    for way, data, _addr in wire.log:
        if way != direction:
            continue
        msg = decode_message(data[4:] if data[:4] == bytes(4) else data)
        if msg.exchange == ExchangeType.INFORMATIONAL:
            out.append(decrypt_message(msg, cipher))
    return out


def test_mobike_is_negotiated_in_ike_auth() -> None:
    wire = _established()
    assert wire.initiator.mobike.active and wire.responder_sa.mobike.active
    # NO_ADDITIONAL_ADDRESSES from both: the lists are known to be empty.
    assert wire.initiator.mobike.peer_addresses == []


@pytest.mark.parametrize("i, r", [(True, False), (False, True)])
def test_mobike_needs_both(i: bool, r: bool) -> None:
    wire = _established(i, r)
    assert not wire.initiator.mobike.active and not wire.responder_sa.mobike.active


def test_update_sa_addresses_moves_the_responder_and_both_report_it() -> None:
    wire = _established()
    responder = wire.responder_sa
    old_local, old_remote = wire.initiator.local_addr, responder.remote_addr
    wire.log.clear()
    wire.initiator.change_local_address(NEW)
    wire.initiator.announce_local_address(wire.now)
    wire.pump()
    # The request: UPDATE_SA_ADDRESSES, NAT detection for the new address, COOKIE2.
    request, = _requests(wire, "i>r", responder._ctx.cipher_in)
    assert notifies(request.payloads, Notify.UPDATE_SA_ADDRESSES)
    assert len(notifies(request.payloads, Notify.NAT_DETECTION_SOURCE_IP)) == 1
    cookie2, = notifies(request.payloads, Notify.COOKIE2)
    # The response echoes COOKIE2 (§3.7) and carries the responder's NAT detection.
    response, = _requests(wire, "r>i", wire.initiator._ctx.cipher_in)
    assert notifies(response.payloads, Notify.COOKIE2)[0].data == cookie2.data
    assert notifies(response.payloads, Notify.NAT_DETECTION_DESTINATION_IP)
    assert responder.remote_addr == NEW
    assert not wire.initiator.nat_detected and not responder.nat_detected
    moved_r, = wire.of("r", IkeSaAddressesUpdated)
    assert (moved_r.old_remote, moved_r.remote_addr) == (old_remote, NEW)
    moved_i, = wire.of("i", IkeSaAddressesUpdated)
    assert (moved_i.old_local, moved_i.local_addr) == (old_local, NEW)
    assert responder.stats["mobike_updates_received"] == 1


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
