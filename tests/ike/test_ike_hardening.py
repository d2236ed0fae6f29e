"""The IKE cores against unauthenticated senders (sans-IO, no root).

- No ``PeerAlive`` (the runtime's locator learning) and no address change
  before the peer's AUTH has verified (RFC 7296 §2.15, §2.23).
- Certificate bombs: mutually issuing self-issued CA certificates under one
  key make backtracking path building exponential; the CERT payloads are
  bounded and de-duplicated, and the path is built linearly (RFC 5280 §6.1).
- Half-open exhaustion: cookies bound to the underlay source, a cap of
  half-open SAs per source, O(1) work per datagram (RFC 7296 §2.6).
- A hypothesis fuzz of the responder: arbitrary and mutated datagrams never
  raise, and every one is counted or answered.
"""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ikepair import A, B, make_pair, make_pki

from vmip.ike import crypto
from vmip.ike.endpoint import IkeEndpoint
from vmip.ike.events import (
    AuthenticationFailed,
    ChildSaCreated,
    IkeSaEstablished,
    PeerAlive,
)
from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role
from vmip.ike.payloads import Identity

PSK = b"the real peers' shared secret"
ATTACKER = ("2001:db8::66", 500)


# --- locators move only after AUTH ------------------------------------------------------------

def test_a_wrong_psk_peer_gets_no_peer_alive_and_moves_nothing():
    """IKE_AUTH decrypts under keys from an unauthenticated DH: that proves
    nothing, so no PeerAlive (the runtime would move the locator) and the
    responder SA does not follow the sender's address."""
    w = make_pair(IkeSaConfig(psk=b"a guess"), IkeSaConfig(psk=PSK))
    w.initiator.initiate(w.now)
    # IKE_SA_INIT from A, then IKE_AUTH "from" another address, as a spoofer would.
    for data, _ in w.initiator.datagrams_to_send(w.now):
        w.responder.receive_datagram(data, A, w.now)
    responder = w.responder_sa
    for data, _ in w.responder.datagrams_to_send(w.now):
        w.initiator.receive_datagram(data, B, w.now)
    auth, = w.initiator.datagrams_to_send(w.now)
    w.responder.receive_datagram(auth[0], ATTACKER, w.now)
    w.responder.collect()
    events = []
    while (item := w.responder.next_event()) is not None:
        events.append(item[1])
    assert any(isinstance(e, AuthenticationFailed) for e in events), events
    assert not [e for e in events if isinstance(e, PeerAlive)], events
    assert responder.remote_addr == A and not responder.authenticated


def test_the_initiator_trusts_no_response_before_the_responder_s_auth():
    """The same on the initiator's side: an IKE_AUTH response with a wrong
    AUTH decrypts but gives no PeerAlive."""
    w = make_pair(IkeSaConfig(psk=PSK), IkeSaConfig(psk=b"not the same"))
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("r", AuthenticationFailed) or w.of("i", AuthenticationFailed)
    assert not w.of("i", PeerAlive) and not w.of("r", PeerAlive)
    assert not w.of("i", IkeSaEstablished)


def test_after_auth_liveness_and_address_changes_are_reported():
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("r", IkeSaEstablished) and not w.of("r", PeerAlive)
    w.initiator.send_liveness_check(w.now)
    w.pump()
    alive = w.of("r", PeerAlive)
    assert alive and alive[-1].remote_addr == A and w.of("i", PeerAlive)


# --- certificate bombs ------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, issuer: x509.Name, public_key, signer, *, ca: bool,
          san: str | None = None, serial: int | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(public_key).serial_number(serial or x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=3)))
    if ca:
        builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                False, False), True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), False)
    return builder.sign(signer, hashes.SHA256())


def bomb(pki, extra: int):
    """A leaf and *extra* self-issued CA certificates that all issue each
    other (one key, the trusted CA's name, distinct DER): none reaches the
    trusted CA, and a backtracking path builder tries their permutations."""
    key = ec.generate_private_key(ec.SECP256R1())
    cas = [_cert(pki.ca.subject, pki.ca.subject, key.public_key(), key, ca=True)
           for _ in range(extra)]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(_name("mn.example"), pki.ca.subject, leaf_key.public_key(), key, ca=False,
                 san="mn.example")
    return leaf, leaf_key, cas


def test_a_certificate_bomb_costs_milliseconds():
    pki = make_pki({"r": "ha.example"})
    leaf, _, extra = bomb(pki, 4)   # 4 such certificates took ~29 s of CPU before
    started = time.process_time()
    with pytest.raises(crypto.IkeCryptoError, match="no path"):
        crypto.verify_chain(leaf, extra, [pki.ca], time.time())
    assert time.process_time() - started < 0.25


def test_too_many_certificates_are_refused_before_any_is_parsed():
    pki = make_pki({"r": "ha.example"})
    leaf, _, extra = bomb(pki, 8)
    with pytest.raises(crypto.IkeCryptoError, match="at most 5"):
        crypto.verify_chain(leaf, extra, [pki.ca], time.time())


def test_real_chains_still_verify_with_an_intermediate_and_a_decoy():
    pki = make_pki({"r": "ha.example"})
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = _cert(_name("vmip sub CA"), pki.ca.subject, sub_key.public_key(), pki.ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(_name("mn.example"), sub.subject, leaf_key.public_key(), sub_key, ca=False,
                 san="mn.example")
    decoy_key = ec.generate_private_key(ec.SECP256R1())
    decoy = _cert(sub.subject, sub.subject, decoy_key.public_key(), decoy_key, ca=True)
    crypto.verify_chain(leaf, [sub], [pki.ca], time.time())
    crypto.verify_chain(leaf, [decoy, sub], [pki.ca], time.time())
    with pytest.raises(crypto.IkeCryptoError):
        crypto.verify_chain(leaf, [decoy], [pki.ca], time.time())
    assert crypto.dedupe_certificates([b"x", b"y", b"x"]) == [b"x", b"y"]


def _cert_pair(pki, certificate, key, intermediates):
    ci = IkeSaConfig(local_id=Identity.from_text("mn.example"), certificate=certificate,
                     private_key=key, intermediates=tuple(intermediates), cas=(pki.ca,))
    cr = IkeSaConfig(local_id=Identity.from_text("ha.example"), certificate=pki.certs["r"],
                     private_key=pki.keys["r"], cas=(pki.ca,))
    return make_pair(ci, cr)


@pytest.mark.parametrize("extra", [4, 12])
def test_ike_auth_with_a_certificate_bomb_is_refused_in_milliseconds(extra):
    pki = make_pki({"r": "ha.example"})
    leaf, leaf_key, certs = bomb(pki, extra)
    w = _cert_pair(pki, leaf, leaf_key, certs)
    w.initiator.initiate(w.now)
    for data, _ in w.initiator.datagrams_to_send(w.now):
        w.responder.receive_datagram(data, A, w.now)
    for data, _ in w.responder.datagrams_to_send(w.now):
        w.initiator.receive_datagram(data, B, w.now)
    auth, = w.initiator.datagrams_to_send(w.now)
    started = time.process_time()
    w.responder.receive_datagram(auth[0], A, w.now)
    spent = time.process_time() - started
    w.pump()
    assert w.of("r", AuthenticationFailed) and not w.of("r", IkeSaEstablished)
    assert spent < 0.25, f"IKE_AUTH took {spent:.2f} s of CPU"


def test_repeated_certificates_count_once():
    pki = make_pki({"i": "mn.example", "r": "ha.example"})
    # The leaf sent again ten times: duplicates are dropped, the SA comes up.
    w = _cert_pair(pki, pki.certs["i"], pki.keys["i"], [pki.certs["i"]] * 10)
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("r", IkeSaEstablished) and w.of("i", ChildSaCreated)


# --- half-open exhaustion ---------------------------------------------------------------------

def _init_from(addr, now=1000.0, cookie: bytes | None = None) -> tuple[IkeSa, bytes]:
    sa = IkeSa(IkeSaConfig(psk=b"whatever"), Role.INITIATOR, addr, B, now)
    if cookie is not None:
        sa._cookie = cookie
    sa.initiate(now)
    (data, _), = sa.datagrams_to_send(now)
    return sa, data


def test_cookies_are_bound_to_the_underlay_source_and_the_port():
    ep = IkeEndpoint(lambda addr: IkeSaConfig(psk=PSK), B, cookie_threshold=0)
    sa, data = _init_from(A)
    ep.receive_datagram(data, A, 0.0, source=("198.51.100.7", 4000))
    (reply, _), = ep.datagrams_to_send(0.0)
    sa.receive_datagram(reply, B, 0.0)
    (again, _), = sa.datagrams_to_send(0.0)     # the same request with the COOKIE first
    # From another underlay endpoint, or another on-wire port: a new cookie.
    ep.receive_datagram(again, A, 0.0, source=("198.51.100.8", 4000))
    ep.receive_datagram(again, A, 0.0, source=("198.51.100.7", 4001))
    ep.receive_datagram(again, (A[0], 501), 0.0, source=("198.51.100.7", 4000))
    assert ep.half_open_count == 0 and ep.stats["cookie_sent"] == 4
    ep.datagrams_to_send(0.0)
    ep.receive_datagram(again, A, 0.0, source=("198.51.100.7", 4000))
    assert ep.half_open_count == 1 and ep.stats["cookie_accepted"] == 1


def test_ten_thousand_spoofed_inits_do_not_lock_out_the_real_peer():
    """10,000 IKE_SA_INITs naming one on-wire address from many ports, first
    replaying one cookie (it used to cover the address only), then answering
    every cookie as a sender that receives there would: half-open SAs stay
    capped per source, the real peer still comes up, and each datagram costs
    O(1) however many SAs are half-open."""
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    ep = w.responder
    ep.cookie_threshold = 4
    spoofed = ("2001:db8::bad", 500)
    for n in range(4):   # fill up to the cookie threshold from other addresses
        _, data = _init_from((f"2001:db8::{n + 1:x}", 500))
        ep.receive_datagram(data, (f"2001:db8::{n + 1:x}", 500), w.now)
    flooder, data = _init_from(spoofed)
    ep.receive_datagram(data, spoofed, w.now)
    cookie_reply = next(d for d, a in ep.datagrams_to_send(w.now) if a == spoofed)
    flooder.receive_datagram(cookie_reply, B, w.now)
    (with_cookie, _), = flooder.datagrams_to_send(w.now)
    started = time.monotonic()
    for port in range(10_000):
        addr = (spoofed[0], 1024 + port)
        ep.receive_datagram(with_cookie, addr, w.now)
        replies = ep.datagrams_to_send(w.now)
        if port % 2 and replies:   # answer the cookie, as a receiving sender can
            flooder.receive_datagram(replies[0][0], B, w.now)
            for again, _ in flooder.datagrams_to_send(w.now):
                ep.receive_datagram(again, addr, w.now)
            ep.datagrams_to_send(w.now)
        ep.get_timer()
    flood_s = time.monotonic() - started
    assert ep.half_open_count <= 4 + ep.max_half_open_per_source, ep.stats
    assert ep.stats.get("dropped_too_many_sas", 0) == 0, ep.stats
    assert ep.stats["dropped_half_open_per_source"] >= 4_000, ep.stats
    assert flood_s < 10, f"10,000 spoofed IKE_SA_INIT took {flood_s:.1f} s"
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("i", IkeSaEstablished) and w.of("i", ChildSaCreated)
    # The half-open ones go away on their timers, and the counts with them.
    w.now += 120
    ep.handle_timer(w.now)
    assert ep.half_open_count == 0 and not ep._per_source and not ep._half_open


def test_half_open_sas_per_source_are_capped_without_a_source_too():
    ep = IkeEndpoint(lambda addr: IkeSaConfig(psk=PSK), B, cookie_threshold=10_000)
    for n in range(50):
        _, data = _init_from(("2001:db8::66", 1000 + n))
        ep.receive_datagram(data, ("2001:db8::66", 1000 + n), 0.0)
    assert ep.half_open_count == ep.max_half_open_per_source
    assert ep.stats["dropped_half_open_per_source"] == 50 - ep.max_half_open_per_source


# --- fuzz ----------------------------------------------------------------------------------------

def _established_pair():
    cfg = IkeSaConfig(psk=PSK)
    w = make_pair(cfg, cfg)
    w.initiator.initiate(w.now)
    w.pump()
    assert w.of("i", IkeSaEstablished)
    return w


_SAMPLES: dict[str, list[bytes]] = {}


def _samples() -> list[bytes]:
    if not _SAMPLES:
        w = _established_pair()
        w.initiator.send_liveness_check(w.now)
        w.pump()
        _SAMPLES["all"] = [d for _, d, _ in w.log]
    return _SAMPLES["all"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fuzz_the_responder_never_raises_and_counts_what_it_drops(data):
    """Arbitrary datagrams and mutations of real ones (IKE_SA_INIT, IKE_AUTH,
    INFORMATIONAL) into a responder endpoint that holds an established SA:
    nothing escapes, each datagram is counted by the endpoint or the SA it
    reached, or answered."""
    w = _established_pair()
    ep = w.responder
    sa = w.responder_sa
    base = data.draw(st.sampled_from(_samples() + [b""]))
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(0, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    if data.draw(st.booleans()):
        raw += data.draw(st.binary(max_size=64))
    if data.draw(st.booleans()):
        raw = bytearray(data.draw(st.binary(max_size=300)))
    if data.draw(st.booleans()):   # the spoofed, shifted and NAT-T variants
        raw = bytearray(bytes(4)) + raw
    addr = data.draw(st.sampled_from([A, ATTACKER, ("192.0.2.9", 4500)]))
    source = data.draw(st.sampled_from([None, ("198.51.100.1", 6275)]))
    before = sum(ep.stats.values()) + sum(sa.stats.values())
    ep.receive_datagram(bytes(raw), addr, w.now, source=source)
    sent = len(ep.datagrams_to_send(w.now))
    ep.collect()
    new = [s for s in ep.sas if s is not sa]
    after = sum(ep.stats.values()) + sum(sa.stats.values()) \
        + sum(sum(s.stats.values()) for s in new)
    # Dropped and counted, or answered, or the start of a new responder SA.
    assert after > before or sent or new, (bytes(raw).hex(), ep.stats, sa.stats)
    assert sa.is_established   # nothing unauthenticated tears the real SA down
    while ep.next_event() is not None:
        pass
    ep.handle_timer(w.now + 60)
