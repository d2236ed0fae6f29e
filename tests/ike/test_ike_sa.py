"""Two sans-IO IkeSa peers against each other with a fake clock."""

from __future__ import annotations

import pytest

from vmip.ike.events import (AuthenticationFailed, ChildSaCreated, ChildSaDeleted, ChildSaRekeyed,
                             IkeSaDeleted, IkeSaEstablished, IkeSaFailed, IkeSaRekeyed)
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role
from vmip.ike.payloads import Identity, TrafficSelector
from vmip.ipsec.esp import EspSA
from vmip.ipsec.sa import Mode

from ikepair import A, B, make_pair, make_pki

PSK = b"a shared secret for tests"


def _established(w):
    w.initiator.initiate(w.now)
    w.pump()
    ci, = w.of("i", ChildSaCreated)
    cr, = w.of("r", ChildSaCreated)
    return ci, cr


def _esp_works(ci: ChildSaCreated, cr: ChildSaCreated) -> None:
    """Keys pair up: what one side protects, the other unprotects."""
    assert (ci.enc_key_out, ci.auth_key_out) == (cr.enc_key_in, cr.auth_key_in)
    _, out_i = ci.sa_params()
    in_r, _ = cr.sa_params()
    tx, rx = EspSA(out_i, 0.0), EspSA(in_r, 0.0)
    esp = tx.protect(b"some payload of a packet", 17, 0.0)
    got = rx.unprotect(esp, 0.0)
    assert got is not None and bytes(got[1]) == b"some payload of a packet", rx.__dict__.get("drops")


@pytest.mark.parametrize("ike,esp", [("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
                                     ("aes256-sha256-modp2048", "aes128cbc-sha256"),
                                     ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
                                     ("chacha20poly1305-prfsha512-curve25519", "chacha20poly1305"),
                                     ("aes128-sha512-curve25519", "aes256cbc-sha256")])
def test_psk_every_group_and_cipher(ike, esp):
    cfg = IkeSaConfig(psk=PSK, ike_proposals=(ike,), esp_proposals=(esp,))
    w = make_pair(cfg, cfg)
    ci, cr = _established(w)
    assert (ci.spi_in, ci.spi_out) == (cr.spi_out, cr.spi_in)
    assert ci.suite == cr.suite == esp
    _esp_works(ci, cr)
    _esp_works(cr, ci)


def test_spi_comes_from_allocator_before_auth_completes():
    calls = []
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    w.initiator._spi_allocator = lambda now: calls.append(now) or 0x4242
    w.initiator.initiate(w.now)
    # deliver IKE_SA_INIT only: the IKE_AUTH request (with the SA proposal) is then built
    for data, _ in w.initiator.datagrams_to_send(w.now):
        w.responder.receive_datagram(data, A, w.now)
    for data, _ in w.responder.datagrams_to_send(w.now):
        w.initiator.receive_datagram(data, B, w.now)
    assert calls and not w.of("i", ChildSaCreated)
    w.pump()
    assert w.of("i", ChildSaCreated)[0].spi_in == 0x4242


def test_certificates_and_wrong_identity():
    pki = make_pki({"i": "mn.example", "r": "ha.example"})
    ci = IkeSaConfig(local_id=Identity.from_text("mn.example"), remote_id=Identity.from_text("ha.example"),
                     certificate=pki.certs["i"], private_key=pki.keys["i"], cas=(pki.ca,))
    cr = IkeSaConfig(local_id=Identity.from_text("ha.example"), remote_id=Identity.from_text("mn.example"),
                     certificate=pki.certs["r"], private_key=pki.keys["r"], cas=(pki.ca,))
    w = make_pair(ci, cr)
    _established(w)
    assert w.of("r", IkeSaEstablished)[0].remote_id == "mn.example"
    # an identity the certificate does not cover is refused
    bad = IkeSaConfig(local_id=Identity.from_text("other.example"), certificate=pki.certs["i"],
                      private_key=pki.keys["i"], cas=(pki.ca,))
    w = make_pair(bad, cr)
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("r", AuthenticationFailed) and w.of("i", AuthenticationFailed)[0].by_peer
    assert w.of("i", IkeSaFailed)


def test_wrong_psk():
    w = make_pair(IkeSaConfig(psk=b"one"), IkeSaConfig(psk=b"two"))
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("r", AuthenticationFailed) and w.of("i", IkeSaFailed)
    assert not w.of("i", ChildSaCreated)


@pytest.mark.parametrize("who", ["i", "r"])
def test_rekeys_and_deletes_by_either_side(who):
    cfg = IkeSaConfig(psk=PSK, esp_proposals=("aes128gcm16-ecp256",))  # PFS in CREATE_CHILD_SA
    w = make_pair(cfg, cfg)
    ci, cr = _established(w)
    actor = w.initiator if who == "i" else w.responder_sa
    actor.rekey_child(None, w.now)
    w.pump()
    ri, = w.of("i", ChildSaRekeyed)
    rr, = w.of("r", ChildSaRekeyed)
    assert ri.old_spi_in == ci.spi_in and ri.new.spi_in != ci.spi_in
    assert (ri.new.spi_in, ri.new.spi_out) == (rr.new.spi_out, rr.new.spi_in)
    assert ri.new.enc_key_out != ci.enc_key_out
    _esp_works(ri.new, rr.new)
    assert [e.spi_in for e in w.of("i", ChildSaDeleted)] == [ci.spi_in]
    assert [e.spi_in for e in w.of("r", ChildSaDeleted)] == [cr.spi_in]
    old_spis = (w.initiator.spi_i, w.initiator.spi_r)
    actor.rekey_ike(w.now)
    w.pump()
    assert w.of("i", IkeSaRekeyed) and w.of("r", IkeSaRekeyed)
    assert (w.initiator.spi_i, w.initiator.spi_r) != old_spis
    assert w.initiator._old is None and w.responder_sa._old is None
    # the new IKE SA works: another child rekey through it
    w.initiator.rekey_child(None, w.now)
    w.pump()
    assert len(w.of("r", ChildSaRekeyed)) == 2
    actor.delete_child(None, w.now)
    w.pump()
    assert not w.initiator.children and not w.responder_sa.children
    actor.delete(w.now)
    w.pump()
    assert w.of("i", IkeSaDeleted)[0].by_peer == (who == "r")
    assert w.of("r", IkeSaDeleted)[0].by_peer == (who == "i")
    assert not w.responder.sas


def test_retransmission_backoff_and_give_up():
    cfg = IkeSaConfig(psk=PSK, retransmit_timeout=1.0, retransmit_tries=4)
    w = make_pair(cfg, cfg)
    w.drop = lambda direction, data: True   # a black hole
    w.initiator.initiate(w.now)
    start = w.now
    sends = []
    for _ in range(10):
        sends += [w.now - start for _ in w.initiator.datagrams_to_send(w.now)]
        if not w.advance_to_timer() or w.of("i", IkeSaFailed):
            break
    assert sends == [0.0, 1.0, 3.0, 7.0]
    assert w.of("i", IkeSaFailed)


def test_responder_answers_retransmitted_request_with_same_response():
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    w.initiator.initiate(w.now)
    w.pump()
    w.initiator.send_liveness_check(w.now)
    (req, _), = w.initiator.datagrams_to_send(w.now)
    w.responder.receive_datagram(req, A, w.now)
    first = w.responder.datagrams_to_send(w.now)
    w.responder.receive_datagram(req, A, w.now)
    again = w.responder.datagrams_to_send(w.now)
    assert first == again and len(first) == 1


def test_invalid_ke_recovery():
    ci = IkeSaConfig(psk=PSK, ike_proposals=("aes128gcm16-prfsha256-ecp256-curve25519",))
    cr = IkeSaConfig(psk=PSK, ike_proposals=("aes128gcm16-prfsha256-curve25519",))
    w = make_pair(ci, cr)
    _established(w)
    assert w.initiator.stats.get("invalid_ke_recovered") == 1
    assert "curve25519" in w.of("i", IkeSaEstablished)[0].suite


def test_no_proposal_chosen():
    w = make_pair(IkeSaConfig(psk=PSK, ike_proposals=("aes128gcm16-prfsha256-ecp256",)),
                  IkeSaConfig(psk=PSK, ike_proposals=("aes256-sha256-modp2048",)))
    w.initiator.initiate(w.now)
    w.pump()
    assert "NO_PROPOSAL_CHOSEN" in w.of("i", IkeSaFailed)[0].reason


def test_cookies_under_flood():
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg, cookie_threshold=5)
    # a flood of IKE_SA_INIT from initiators that never continue
    for n in range(20):
        flood = IkeSa(cfg, Role.INITIATOR, (f"2001:db8::f{n:x}", 500), B, w.now)
        flood.initiate(w.now)
        for data, _ in flood.datagrams_to_send(w.now):
            w.responder.receive_datagram(data, flood.local_addr, w.now)
    assert w.responder.half_open_count == 5
    assert w.responder.stats["cookie_sent"] == 15
    w.responder.datagrams_to_send(w.now)
    # a real initiator gets a cookie, returns it and completes
    _established(w)
    assert w.initiator.stats.get("cookie_requested") == 1
    assert w.responder.stats["cookie_accepted"] == 1
    # half-open SAs time out
    w.now += 120
    w.responder.handle_timer(w.now)
    assert w.responder.half_open_count == 0


def test_ts_narrowing_and_transport_mode():
    ci = IkeSaConfig(psk=PSK, mode=Mode.TRANSPORT,
                     local_ts=(TrafficSelector.from_network("2001:db8::/48"),),
                     remote_ts=(TrafficSelector.from_network("2001:db8:1::/48"),))
    cr = IkeSaConfig(psk=PSK, mode=Mode.TRANSPORT,
                     local_ts=(TrafficSelector.mh("2001:db8:1::1/128", 5),),
                     remote_ts=(TrafficSelector.from_network("2001:db8::a/128"),))
    w = make_pair(ci, cr)
    c_i, c_r = _established(w)
    assert c_i.mode is c_r.mode is Mode.TRANSPORT
    assert c_i.local_ts == (TrafficSelector.from_network("2001:db8::a/128"),)
    assert c_i.remote_ts == (TrafficSelector.mh("2001:db8:1::1/128", 5),)
    assert c_r.local_ts == c_i.remote_ts
    # no overlap at all: TS_UNACCEPTABLE, the IKE SA still stands
    cr2 = IkeSaConfig(psk=PSK, local_ts=(TrafficSelector.from_network("2001:db8:9::/48"),))
    w = make_pair(ci, cr2)
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("i", IkeSaEstablished) and not w.of("i", ChildSaCreated)


def test_force_encap_moves_to_4500_with_marker():
    cfg = IkeSaConfig(psk=PSK, force_encap=True)
    w = make_pair(cfg, IkeSaConfig(psk=PSK))
    ci, cr = _established(w)
    assert ci.udp_encap and cr.udp_encap
    auth = [(d, a) for direction, d, a in w.log if direction == "i>r"][1]
    assert auth[0][:4] == bytes(4) and auth[1][1] == 4500


def test_keys_not_in_repr():
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    ci, _ = _established(w)
    text = repr(ci) + repr(w.initiator) + repr(cfg)
    assert ci.enc_key_in.hex() not in text and PSK.decode() not in text
    assert ci.enc_key_in.hex() not in repr(ci.sa_params())


def test_garbage_is_dropped_and_counted():
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    _established(w)
    sa = w.initiator
    good = bytearray(next(d for direction, d, _ in w.log if direction == "r>i" and d[18] == 35))
    good[-1] ^= 0xFF
    sa.receive_datagram(bytes(good), B, w.now)
    sa.receive_datagram(b"\x01" * 40, B, w.now)
    assert sa.stats.get("dropped_malformed") == 1
    assert sum(sa.stats.values()) >= 2 and sa.is_established


def test_simultaneous_child_rekey_leaves_one_child_pair():
    """Both sides rekey the same CHILD_SA at once (RFC 7296 §2.8.1): the new
    SA of the exchange with the lowest of the four nonces is deleted by its
    initiator; one pair remains, the same on both sides, and its keys work."""
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    ci, cr = _established(w)
    w.initiator.rekey_child(ci.spi_in, w.now)
    w.responder_sa.rekey_child(cr.spi_in, w.now)
    w.pump()
    assert len(w.of("i", ChildSaRekeyed)) == 2 and len(w.of("r", ChildSaRekeyed)) == 2
    left_i, left_r = list(w.initiator.children.values()), list(w.responder_sa.children.values())
    assert len(left_i) == 1 and len(left_r) == 1, (left_i, left_r)
    assert (left_i[0].spi_in, left_i[0].spi_out) == (left_r[0].spi_out, left_r[0].spi_in)
    assert ci.spi_in not in w.initiator.children
    assert w.initiator.stats["simultaneous_child_rekeys"] == 1
    assert w.responder_sa.stats["simultaneous_child_rekeys"] == 1
    survivor_i = next(e.new for e in w.of("i", ChildSaRekeyed) if e.new.spi_in == left_i[0].spi_in)
    survivor_r = next(e.new for e in w.of("r", ChildSaRekeyed) if e.new.spi_in == left_r[0].spi_in)
    _esp_works(survivor_i, survivor_r)
    # The IKE SA still works.
    w.initiator.rekey_child(None, w.now)
    w.pump()
    assert len(w.initiator.children) == 1 and len(w.of("i", ChildSaRekeyed)) == 3


def test_simultaneous_ike_rekey_leaves_one_ike_sa():
    """Both sides rekey the IKE SA at once (RFC 7296 §2.8.2): one new IKE SA
    survives on both sides, the redundant one and the old one are deleted,
    and the survivor carries further exchanges."""
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    _established(w)
    old = (w.initiator.spi_i, w.initiator.spi_r)
    i, r = w.initiator, w.responder_sa
    i.rekey_ike(w.now)
    r.rekey_ike(w.now)
    w.pump()
    assert (i.spi_i, i.spi_r) == (r.spi_i, r.spi_r) != old
    assert i._old is None and r._old is None and i._spare is None and r._spare is None
    assert i.stats["simultaneous_ike_rekeys"] == 1 and r.stats["simultaneous_ike_rekeys"] == 1
    assert sorted(i.local_spis()) == [i._ctx.local_spi] and len(r.local_spis()) == 1
    assert i.is_established and r.is_established
    i.rekey_child(None, w.now)
    w.pump()
    assert w.of("r", ChildSaRekeyed) and len(i.children) == 1 and len(r.children) == 1
    r.delete(w.now)
    w.pump()
    assert w.of("i", IkeSaDeleted)[0].by_peer and not w.responder.sas
