"""ESP engine behaviour: padding, replay, ESN, overflow, lifetimes, bad input, modes.

Oracles: the raw ``cryptography`` primitives and Python's ``hmac`` decrypt
or verify what we produce independently of our own parser; scapy parses the
packets the mode helpers build.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from vmip.errors import VmipError
from vmip.ipsec.esp import (
    SEQ_SOFT_MARGIN,
    EspSA,
    EspSetupError,
    decap,
    dummy_encap,
    esp_spi,
    transport_encap,
    tunnel_encap,
)
from vmip.ipsec.sa import Direction, Lifetime, Mode, SaParams
from vmip.ipsec.suites import BACKENDS, SUITES

A = IPv6Address("2001:db8:1::a")
B = IPv6Address("2001:db8:2::b")
ALL_SUITES = sorted(SUITES)


def params(suite: str = "aes128gcm16", *, key_seed: int = 1, **overrides) -> SaParams:
    info = SUITES[suite]
    fields = {"spi": 0x1000 + key_seed, "direction": Direction.OUT, "src": A, "dst": B,
              "suite": suite,
              "enc_key": bytes((key_seed + i) % 256 for i in range(info.enc_key_len)),
              "auth_key": bytes((key_seed * 7 + i) % 256 for i in range(info.auth_key_len))}
    fields.update(overrides)
    return SaParams(**fields)


def pair(suite: str = "aes128gcm16", **overrides) -> tuple[EspSA, EspSA]:
    p = params(suite, **overrides)
    return EspSA(p, 0.0), EspSA(p, 0.0)


def udp6(payload: bytes = b"x" * 40, src: str = str(A), dst: str = str(B)) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=1234, dport=5678) / Raw(payload))


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("suite", ALL_SUITES)
@pytest.mark.parametrize("esn", [False, True])
def test_every_suite_round_trips_many_lengths(suite: str, backend: str, esn: bool) -> None:
    sender, receiver = pair(suite, backend=backend, esn=esn)
    for length in (0, 1, 2, 3, 15, 16, 17, 100, 1400):
        payload = os.urandom(length)
        wire = sender.protect(payload, 17, 1.0)
        assert receiver.unprotect(wire, 1.0) == (17, payload)
    assert not receiver.drops and not sender.drops


def _aead_plaintext(sa: EspSA, wire: bytes) -> bytes:
    key = sa.params.enc_key
    return AESGCM(key[:-4]).decrypt(key[-4:] + wire[8:16], wire[16:], wire[:8])


@pytest.mark.parametrize("length", range(24))
def test_padding_is_minimal_and_counts_1_2_3(length: int) -> None:
    # RFC 4303 §2.4: default padding 1, 2, 3, ...; ciphertext 4-byte aligned.
    sa = EspSA(params(esn=False), 0.0)
    wire = sa.protect(bytes(length), 6, 1.0)
    plaintext = _aead_plaintext(sa, wire)  # decrypted by the raw primitive
    assert len(plaintext) % 4 == 0 and len(plaintext) - 4 < length + 2 <= len(plaintext)
    pad_len = plaintext[-2]
    assert plaintext[-1] == 6
    assert plaintext[length:length + pad_len] == bytes(range(1, pad_len + 1))
    assert len(plaintext) == length + pad_len + 2


@pytest.mark.parametrize("length", [0, 1, 13, 14, 15, 16, 30, 31])
def test_cbc_padding_aligns_to_the_aes_block(length: int) -> None:
    sa = EspSA(params("aes128cbc-sha256", esn=False), 0.0)
    wire = sa.protect(bytes(length), 41, 1.0)
    body, icv = wire[:-16], wire[-16:]
    assert icv == hmac.new(sa.params.auth_key, body, hashlib.sha256).digest()[:16]
    iv, ciphertext = body[8:24], body[24:]
    assert len(ciphertext) % 16 == 0
    decryptor = Cipher(algorithms.AES(sa.params.enc_key), modes.CBC(iv)).decryptor()
    plaintext = decryptor.update(ciphertext) + decryptor.finalize()
    pad_len = plaintext[-2]
    assert plaintext[-1] == 41 and len(plaintext) == length + pad_len + 2 and pad_len < 16
    assert plaintext[length:-2] == bytes(range(1, pad_len + 1))


def test_aead_iv_is_the_sequence_number_and_cbc_iv_is_random() -> None:
    gcm = EspSA(params(esn=True), 0.0)
    gcm.seq = (7 << 32) + 41
    wire = gcm.protect(b"abc", 17, 1.0)
    spi, seq_low = struct.unpack(">II", wire[:8])
    assert (spi, seq_low) == (gcm.spi, 42)  # only the low half on the wire
    assert wire[8:16] == ((7 << 32) + 42).to_bytes(8, "big")
    cbc = EspSA(params("aes128cbc-sha256"), 0.0)
    ivs = {cbc.protect(b"abc", 17, 1.0)[8:24] for _ in range(50)}
    assert len(ivs) == 50


def test_hmac_suite_esn_high_bits_go_into_the_icv_only() -> None:
    # RFC 4303 §2.2.1: ICV over the packet followed by the high 32 bits.
    sa = EspSA(params("null-sha256", esn=True), 0.0)
    sa.seq = (3 << 32) | 0xFFFFFFFF
    wire = sa.protect(b"hello", 17, 1.0)
    body = wire[:-16]
    assert struct.unpack(">I", body[4:8])[0] == 0  # low half wrapped to 0
    expected = hmac.new(sa.params.auth_key, body + (4).to_bytes(4, "big"), hashlib.sha256)
    assert wire[-16:] == expected.digest()[:16]


# -- replay and ESN ------------------------------------------------------------------


def test_a_copy_inside_the_window_is_dropped_as_duplicate() -> None:
    sender, receiver = pair()
    wire = sender.protect(b"a", 17, 1.0)
    assert receiver.unprotect(wire, 1.0) is not None
    assert receiver.unprotect(wire, 1.0) is None
    assert receiver.drops == {"duplicate": 1}


def test_window_slides_and_too_old_is_dropped() -> None:
    # Without ESN: with ESN, RFC 4303 A2 reads a number left of the window
    # as one from the next 2^32 subspace, and the ICV rejects it instead.
    sender, receiver = pair(replay_window=64, esn=False)
    packets = [sender.protect(b"%d" % i, 17, 1.0) for i in range(1, 101)]  # seq 1..100
    assert receiver.unprotect(packets[99], 1.0) is not None  # seq 100 first
    assert receiver.unprotect(packets[36], 1.0) is not None  # seq 37: 63 behind, inside
    assert receiver.unprotect(packets[35], 1.0) is None  # seq 36: 64 behind, outside
    assert receiver.drops["replay_old"] == 1
    assert receiver.unprotect(packets[50], 1.0) is not None  # out of order inside: fine
    assert receiver.unprotect(packets[50], 1.0) is None
    assert receiver.drops["duplicate"] == 1


def test_default_window_is_1024() -> None:
    sender, receiver = pair(esn=False)
    packets = [sender.protect(b"", 17, 1.0) for _ in range(1100)]
    assert receiver.unprotect(packets[1099], 1.0) is not None  # seq 1100
    assert receiver.unprotect(packets[76], 1.0) is not None  # seq 77: 1023 behind
    assert receiver.unprotect(packets[75], 1.0) is None  # seq 76: 1024 behind
    assert receiver.drops == {"replay_old": 1}


def test_with_esn_a_packet_left_of_the_window_fails_as_next_subspace() -> None:
    sender, receiver = pair(replay_window=64, esn=True)
    packets = [sender.protect(b"", 17, 1.0) for _ in range(100)]
    assert receiver.unprotect(packets[99], 1.0) is not None
    assert receiver.unprotect(packets[35], 1.0) is None  # seq 36, read as 2^32 + 36
    assert receiver.drops == {"icv": 1}
    assert receiver.replay.top == 100


def test_window_zero_disables_replay_protection() -> None:
    sender, receiver = pair(replay_window=0)
    wire = sender.protect(b"a", 17, 1.0)
    for _ in range(3):
        assert receiver.unprotect(wire, 1.0) == (17, b"a")


def test_forged_packet_does_not_move_the_window() -> None:
    sender, receiver = pair(replay_window=32)
    genuine = [sender.protect(b"", 17, 1.0) for _ in range(3)]
    forged_sender = EspSA(params(key_seed=99, spi=sender.spi), 0.0)
    forged_sender.seq = 10_000
    forged = forged_sender.protect(b"", 17, 1.0)
    assert receiver.unprotect(forged, 1.0) is None and receiver.drops["icv"] == 1
    assert receiver.replay.top == 0
    assert all(receiver.unprotect(p, 1.0) is not None for p in genuine)


def test_esn_low_half_wraps_and_receiver_infers_the_high_half() -> None:
    # RFC 4303 appendix A2: seq 2^32-2 .. 2^32+1 carry 0xfffffffe, 0xffffffff, 0, 1.
    sender, receiver = pair(esn=True)
    sender.seq = (1 << 32) - 3
    packets = [sender.protect(b"%d" % i, 17, 1.0) for i in range(4)]
    lows = [struct.unpack(">I", p[4:8])[0] for p in packets]
    assert lows == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    receiver.replay.accept((1 << 32) - 3)
    # Out of order across the wrap: 2^32+1 first, then the ones behind it.
    for index in (3, 0, 2, 1):
        assert receiver.unprotect(packets[index], 1.0) == (17, b"%d" % index)
    assert receiver.replay.top == (1 << 32) + 1
    assert receiver.unprotect(packets[1], 1.0) is None and receiver.drops["duplicate"] == 1


def test_esn_wrap_without_esn_is_an_overflow() -> None:
    expiries = []
    sa = EspSA(params(esn=False), 0.0, on_expire=lambda s, kind: expiries.append(kind))
    sa.seq = 0xFFFFFFFE
    last = sa.protect(b"", 17, 1.0)
    assert struct.unpack(">I", last[4:8])[0] == 0xFFFFFFFF  # 2^32-1 is still sent
    assert sa.protect(b"", 17, 1.0) is None
    assert sa.drops["seq_overflow"] == 1
    assert not sa.usable
    assert expiries == ["soft", "hard"]  # soft came SEQ_SOFT_MARGIN earlier
    assert sa.protect(b"", 17, 1.0) is None
    assert sa.drops["unusable"] == 1
    assert expiries == ["soft", "hard"]


def test_sequence_soft_expiry_fires_once_before_exhaustion() -> None:
    expiries = []
    sa = EspSA(params(esn=False), 0.0, on_expire=lambda s, kind: expiries.append(kind))
    sa.seq = 0xFFFFFFFF - SEQ_SOFT_MARGIN - 2
    sa.protect(b"", 17, 1.0)
    assert expiries == []
    for _ in range(3):
        sa.protect(b"", 17, 1.0)
    assert expiries == ["soft"] and sa.usable


def test_receiver_with_esn_crosses_2_32_in_sequence() -> None:
    sender, receiver = pair(esn=True, replay_window=64)
    sender.seq = (1 << 32) - 100
    receiver.replay.accept((1 << 32) - 100)
    for i in range(200):
        wire = sender.protect(b"%d" % i, 17, 1.0)
        assert receiver.unprotect(wire, 1.0) == (17, b"%d" % i)
    assert receiver.replay.top == (1 << 32) + 100


# -- failures ------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_any_flipped_bit_after_the_sequence_number_fails_the_icv(suite: str) -> None:
    sender, receiver = pair(suite)
    wire = sender.protect(b"payload" * 5, 17, 1.0)
    for position in range(8, len(wire)):
        mutated = bytearray(wire)
        mutated[position] ^= 0x10
        assert receiver.unprotect(bytes(mutated), 1.0) is None
    assert receiver.drops == {"icv": len(wire) - 8}
    assert receiver.unprotect(wire, 1.0) == (17, b"payload" * 5)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_truncated_packets_are_counted(suite: str) -> None:
    sender, receiver = pair(suite)
    wire = sender.protect(b"", 17, 1.0)  # the shortest packet a suite makes
    for length in range(len(wire)):
        assert receiver.unprotect(wire[:length], 1.0) is None
    assert set(receiver.drops) <= {"truncated", "bad_length"}
    assert receiver.drops["truncated"] == len(wire)
    assert receiver.unprotect(wire, 1.0) == (17, b"")


def test_cbc_ciphertext_not_a_block_multiple_is_bad_length() -> None:
    sender, receiver = pair("aes128cbc-sha256")
    wire = sender.protect(b"x" * 40, 17, 1.0)
    assert receiver.unprotect(wire[:-17] + wire[-16:], 1.0) is None
    assert receiver.drops == {"bad_length": 1}


def _null_packet(sa: EspSA, seq: int, plaintext: bytes) -> bytes:
    """A NULL-encryption packet built by hand, ICV from Python's hmac."""
    body = struct.pack(">II", sa.spi, seq) + plaintext
    return body + hmac.new(sa.params.auth_key, body, hashlib.sha256).digest()[:16]


@pytest.mark.parametrize("plaintext", [
    b"data" + bytes([1, 3, 2, 17]),  # 1, 3 instead of 1, 2
    b"data" + bytes([0, 0, 2, 17]),  # zero padding
    b"da" + bytes([9, 17]),  # pad length longer than the packet
    b"dat" + bytes([255, 17]),
])
def test_bad_padding_is_dropped(plaintext: bytes) -> None:
    receiver = EspSA(params("null-sha256", esn=False), 0.0)
    assert receiver.unprotect(_null_packet(receiver, 1, plaintext), 1.0) is None
    assert receiver.drops == {"bad_padding": 1}


def test_hand_built_null_packet_with_good_padding_is_accepted() -> None:
    receiver = EspSA(params("null-sha256", esn=False), 0.0)
    assert receiver.unprotect(_null_packet(receiver, 1, b"data" + bytes([1, 2, 2, 17])), 1.0) \
        == (17, b"data")


def test_dummy_packets_are_dropped_and_counted() -> None:
    sender, receiver = pair()
    for size in (0, 10, 100):
        assert receiver.unprotect(sender.protect_dummy(1.0, size), 1.0) is None
    assert receiver.drops == {"dummy": 3}
    assert receiver.packets == 3  # authenticated traffic all the same


def test_spi_mismatch_is_dropped() -> None:
    sender = EspSA(params(spi=0x2000), 0.0)
    receiver = EspSA(params(spi=0x2001), 0.0)
    assert receiver.unprotect(sender.protect(b"", 17, 1.0), 1.0) is None
    assert receiver.drops == {"spi_mismatch": 1}


# -- counters and lifetimes ----------------------------------------------------


def test_usage_counters_count_encrypted_bytes() -> None:
    sender, receiver = pair()
    assert sender.added_at == 0.0 and sender.first_used_at is None
    wire = sender.protect(b"x" * 10, 17, 5.0)
    receiver.unprotect(wire, 6.0)
    # RFC 4301 §4.4.2.1: bytes the cipher is applied to, padding included:
    # 10 + pad 0 + 2 = 12.
    assert (sender.packets, sender.bytes, sender.first_used_at) == (1, 12, 5.0)
    assert (receiver.packets, receiver.bytes, receiver.first_used_at) == (1, 12, 6.0)


def test_packet_limits_soft_then_hard_once_each() -> None:
    events = []
    sa = EspSA(params(soft=Lifetime(packets=3), hard=Lifetime(packets=5)), 0.0,
               on_expire=lambda s, kind: events.append((kind, s.packets)))
    results = [sa.protect(b"", 17, 1.0) for _ in range(7)]
    assert [r is not None for r in results] == [True] * 5 + [False] * 2
    assert events == [("soft", 3), ("hard", 5)]
    assert sa.drops == {"unusable": 2}


def test_byte_limits_on_the_receiving_side() -> None:
    events = []
    p = params(soft=Lifetime(bytes=100), hard=Lifetime(bytes=200))
    sender = EspSA(p, 0.0)
    receiver = EspSA(p, 0.0, on_expire=lambda s, kind: events.append((kind, s.bytes)))
    outcomes = [receiver.unprotect(sender.protect(b"x" * 58, 17, 1.0), 1.0) for _ in range(5)]
    # 58 + 0 padding + 2 = 60 bytes a packet: soft at 120, hard at 240.
    assert events == [("soft", 120), ("hard", 240)]
    assert [o is not None for o in outcomes] == [True, True, True, True, False]
    assert receiver.drops == {"unusable": 1}


def test_zero_means_no_limit() -> None:
    events = []
    sa = EspSA(params(soft=Lifetime(packets=0, bytes=0), hard=Lifetime(packets=0)), 0.0,
               on_expire=lambda s, kind: events.append(kind))
    for _ in range(20):
        assert sa.protect(b"x", 17, 1.0) is not None
    assert events == []


def test_expire_called_by_the_sad_reports_once_per_kind() -> None:
    events = []
    sa = EspSA(params(), 0.0, on_expire=lambda s, kind: events.append(kind))
    sa.expire("soft")
    sa.expire("soft")
    assert events == ["soft"] and sa.usable
    sa.expire("hard")
    sa.expire("hard")
    assert events == ["soft", "hard"] and not sa.usable
    assert sa.protect(b"", 17, 1.0) is None
    with pytest.raises(ValueError):
        sa.expire("later")


def test_a_failing_on_expire_callback_does_not_break_protect() -> None:
    def explode(sa: EspSA, kind: str) -> None:
        raise RuntimeError("subscriber bug")

    sa = EspSA(params(hard=Lifetime(packets=1)), 0.0, on_expire=explode)
    assert sa.protect(b"", 17, 1.0) is not None
    assert not sa.usable


# -- construction --------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"suite": "aes192gcm16"},
    {"backend": "openssl3"},
    {"enc_key": b"short"},
    {"auth_key": b"\x01" * 32},  # AEAD suites take no auth key
    {"replay_window": 1 << 40},
])
def test_bad_parameters_raise_one_typed_error(change: dict) -> None:
    p = params()
    fields = {f: getattr(p, f) for f in p.__dataclass_fields__}
    fields.update(change)
    with pytest.raises(EspSetupError) as info:
        EspSA(SaParams(**fields), 0.0)
    assert isinstance(info.value, VmipError)


def test_migrate_keeps_sequence_numbers_and_moves_the_tunnel() -> None:
    sa = EspSA(params(mode=Mode.TUNNEL), 0.0)
    sa.protect(b"", 17, 1.0)
    new_src = IPv6Address("2001:db8:9::9")
    sa.migrate(sa.params.with_endpoints(new_src, B))
    packet = IPv6(tunnel_encap(udp6(), sa, 2.0))
    assert packet.src == str(new_src) and sa.seq == 2
    with pytest.raises(EspSetupError):
        sa.migrate(params(mode=Mode.TUNNEL, key_seed=5))


# -- whole packets -------------------------------------------------------------


def test_transport_encap_inserts_esp_after_routing_and_encrypts_final_dest_options() -> None:
    original = bytes(
        IPv6(src=str(A), dst=str(B)) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=9)
        / Raw(b"payload"))
    sender, receiver = pair()
    wire = transport_encap(original, sender, 1.0)
    parsed = IPv6(wire)
    assert parsed.plen == len(wire) - 40
    assert isinstance(parsed.payload, IPv6ExtHdrHopByHop)
    assert isinstance(parsed.payload.payload, IPv6ExtHdrDestOpt)  # before routing: stays
    routing = parsed.payload.payload.payload
    assert isinstance(routing, IPv6ExtHdrRouting) and routing.nh == 50
    spi, offset = esp_spi(wire)
    assert spi == sender.spi and offset == len(bytes(
        IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=[])))
    assert decap(wire, offset, receiver, 1.0) == original


def test_transport_encap_of_a_plain_udp_packet() -> None:
    original = udp6(b"hello")
    sender, receiver = pair()
    wire = transport_encap(original, sender, 1.0)
    parsed = IPv6(wire)
    assert parsed.nh == 50 and parsed.plen == len(wire) - 40
    assert (parsed.src, parsed.dst) == (str(A), str(B))
    assert esp_spi(wire) == (sender.spi, 40)
    assert decap(wire, 40, receiver, 1.0) == original


def test_transport_encap_ignores_link_padding_after_the_packet() -> None:
    original = udp6(b"hello")
    sender, receiver = pair()
    wire = transport_encap(original + b"\x00" * 6, sender, 1.0)
    assert decap(wire + b"\xff" * 3, 40, receiver, 1.0) == original


def test_tunnel_encap_ipv6_inner() -> None:
    inner = bytes(IPv6(src="2001:db8:aa::1", dst="2001:db8:bb::2", tc=0xB9)
                  / UDP(sport=1, dport=2) / Raw(b"z" * 30))
    sender, receiver = pair(mode=Mode.TUNNEL)
    wire = tunnel_encap(inner, sender, 1.0, hop_limit=17)
    outer = IPv6(wire)
    assert (outer.src, outer.dst, outer.nh, outer.hlim) == (str(A), str(B), 50, 17)
    assert outer.tc == 0xB9 and outer.fl == 0 and outer.plen == len(wire) - 40
    assert decap(wire, 40, receiver, 1.0) == inner


def test_tunnel_encap_ipv4_inner() -> None:
    inner = bytes(IP(src="192.0.2.1", dst="198.51.100.2", tos=0x28) / ICMP() / Raw(b"ping"))
    sender, receiver = pair(mode=Mode.TUNNEL)
    wire = tunnel_encap(inner, sender, 1.0)
    assert IPv6(wire).tc == 0x28
    assert decap(wire, 40, receiver, 1.0) == inner


def test_tfc_padding_hides_inner_length_and_is_removed() -> None:
    sender, receiver = pair(mode=Mode.TUNNEL, tfc_padding=True)
    small, larger = udp6(b"a"), udp6(b"a" * 150)
    wires = [tunnel_encap(p, sender, 1.0) for p in (small, larger)]
    assert len(wires[0]) == len(wires[1])  # both padded to 256 bytes of payload
    assert [decap(w, 40, receiver, 1.0) for w in wires] == [small, larger]
    big = udp6(b"b" * 1300)  # beyond tfc_limit: no TFC
    aligned = -(-(len(big) + 2) // 4) * 4  # trailer and RFC 4303 padding only
    assert len(tunnel_encap(big, sender, 1.0)) == 40 + 8 + 8 + aligned + 16


def test_tfc_is_not_applied_in_transport_mode() -> None:
    plain, padded = pair(esn=False)[0], EspSA(params(tfc_padding=True), 0.0)
    assert len(transport_encap(udp6(), plain, 1.0)) == len(transport_encap(udp6(), padded, 1.0))


def test_dummy_encap_makes_a_packet_the_receiver_drops() -> None:
    sender, receiver = pair(mode=Mode.TUNNEL)
    wire = dummy_encap(sender, 1.0, size=40)
    assert IPv6(wire).nh == 50
    assert decap(wire, 40, receiver, 1.0) is None and receiver.drops == {"dummy": 1}


def test_tunnel_decap_refuses_a_payload_that_is_not_ip() -> None:
    sender, receiver = pair(mode=Mode.TUNNEL)
    esp = sender.protect(b"\x60" + bytes(10), 41, 1.0)  # claims IPv6, 11 bytes
    wire = bytes(IPv6(src=str(A), dst=str(B), nh=50)) [:40]
    wire = wire[:4] + len(esp).to_bytes(2, "big") + wire[6:] + esp
    assert decap(wire, 40, receiver, 1.0) is None and receiver.drops == {"bad_inner": 1}


def test_mode_helpers_refuse_the_wrong_mode_and_ipv4_tunnel_endpoints() -> None:
    transport = EspSA(params(), 0.0)
    tunnel = EspSA(params(mode=Mode.TUNNEL), 0.0)
    assert tunnel_encap(udp6(), transport, 1.0) is None
    assert transport_encap(udp6(), tunnel, 1.0) is None
    assert transport.drops["wrong_mode"] == 1 and tunnel.drops["wrong_mode"] == 1
    v4 = EspSA(params(mode=Mode.TUNNEL, src=IPv4Address("192.0.2.1"),
                      dst=IPv4Address("192.0.2.2")), 0.0)
    assert tunnel_encap(udp6(), v4, 1.0) is None and v4.drops == {"unsupported": 1}


def test_esp_spi_walks_extension_headers_and_stops_at_later_fragments() -> None:
    sender = EspSA(params(), 0.0)
    esp = sender.protect(b"x", 17, 1.0)
    first = bytes(IPv6(src=str(A), dst=str(B)) / IPv6ExtHdrDestOpt()
                  / IPv6ExtHdrFragment(offset=0, m=1, nh=50) / Raw(esp))
    assert esp_spi(first) == (sender.spi, 56)
    later = bytes(IPv6(src=str(A), dst=str(B)) / IPv6ExtHdrFragment(offset=3, nh=50) / Raw(esp))
    assert esp_spi(later) is None
    assert esp_spi(udp6()) is None
    assert esp_spi(bytes(IP() / UDP())) is None
    truncated = bytes(IPv6(src=str(A), dst=str(B), nh=50) / Raw(esp[:7]))
    assert esp_spi(truncated) is None


def test_decap_with_a_wrong_offset_is_malformed() -> None:
    sender, receiver = pair()
    wire = transport_encap(udp6(), sender, 1.0)
    assert decap(wire, 48, receiver, 1.0) is None and receiver.drops == {"malformed": 1}
