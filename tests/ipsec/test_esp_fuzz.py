"""Hypothesis: nothing an attacker sends makes the ESP API raise.

``unprotect``, ``esp_spi``, ``decap`` and the encapsulation helpers get
random and mutated bytes; they must return ``None`` (or a valid result) and
count the failure, never raise, and never hit the internal-error guard.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmip.ipsec.esp import EspSA, decap, esp_spi, transport_encap, tunnel_encap
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.ipsec.suites import SUITES

A = IPv6Address("2001:db8::a")
B = IPv6Address("2001:db8::b")
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def make_sa(suite: str, mode: Mode = Mode.TRANSPORT, esn: bool = True) -> EspSA:
    info = SUITES[suite]
    return EspSA(SaParams(spi=0x4242, direction=Direction.IN, src=A, dst=B, suite=suite,
                          enc_key=bytes(info.enc_key_len), auth_key=bytes(info.auth_key_len),
                          mode=mode, esn=esn, replay_window=32), 0.0)


suites = st.sampled_from(sorted(SUITES))
modes = st.sampled_from(list(Mode))


def ipv6_header(next_header: int, payload_length: int) -> bytes:
    return struct.pack(">IHBB", 0x60000000, payload_length, next_header, 64) + A.packed + B.packed


# An IPv6 packet made of a random chain of extension headers and random bytes.
extension = st.tuples(st.sampled_from([0, 43, 44, 60, 51, 50, 17, 59, 6]),
                      st.binary(min_size=0, max_size=40))


@st.composite
def ipv6_packets(draw) -> bytes:
    chain = draw(st.lists(extension, max_size=6))
    body = b"".join(bytes([nh]) + data for nh, data in chain[1:]) if chain else b""
    first = chain[0][0] if chain else draw(st.integers(0, 255))
    tail = draw(st.binary(max_size=80))
    payload = body + tail
    declared = draw(st.one_of(st.just(len(payload)), st.integers(0, 0xFFFF)))
    return ipv6_header(first, declared) + payload


@FUZZ
@given(suite=suites, data=st.binary(max_size=200), esn=st.booleans())
def test_unprotect_random_bytes(suite: str, data: bytes, esn: bool) -> None:
    sa = make_sa(suite, esn=esn)
    assert sa.unprotect(data, 1.0) is None
    assert sa.unprotect(memoryview(struct.pack(">I", sa.spi) + data), 1.0) is None
    assert sa.drops.total() == 2 and "internal_error" not in sa.drops


@FUZZ
@given(suite=suites, mode=modes, payload=st.binary(max_size=64),
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 200), extra=st.binary(max_size=8))
def test_unprotect_mutated_packets(suite: str, mode: Mode, payload: bytes, edits, cut: int,
                                   extra: bytes) -> None:
    sender = make_sa(suite, mode)
    receiver = make_sa(suite, mode)
    wire = bytearray(sender.protect(payload, 17, 1.0))
    for position, value in edits:
        if position < len(wire):
            wire[position] = value
    mutated = bytes(wire[: max(cut, 0)]) + extra if cut < len(wire) else bytes(wire) + extra
    result = receiver.unprotect(mutated, 1.0)
    if result is not None:
        assert result == (17, payload)
    assert "internal_error" not in receiver.drops


@FUZZ
@given(data=st.one_of(st.binary(max_size=120), ipv6_packets()))
def test_esp_spi_never_raises_and_points_inside_the_packet(data: bytes) -> None:
    found = esp_spi(data)
    if found is not None:
        spi, offset = found
        assert 40 <= offset and offset + 8 <= len(data)
        assert spi == int.from_bytes(data[offset:offset + 4], "big")


@FUZZ
@given(suite=suites, mode=modes, packet=st.one_of(st.binary(max_size=160), ipv6_packets()),
       offset=st.integers(0, 200))
def test_decap_random_packets(suite: str, mode: Mode, packet: bytes, offset: int) -> None:
    sa = make_sa(suite, mode)
    assert decap(packet, offset, sa, 1.0) is None
    found = esp_spi(packet)
    if found is not None:
        assert decap(packet, found[1], sa, 1.0) is None
    assert "internal_error" not in sa.drops


@FUZZ
@given(suite=suites, packet=st.one_of(st.binary(max_size=160), ipv6_packets()))
def test_encap_helpers_survive_random_input(suite: str, packet: bytes) -> None:
    transport = make_sa(suite, Mode.TRANSPORT)
    tunnel = make_sa(suite, Mode.TUNNEL)
    for sa, helper in ((transport, transport_encap), (tunnel, tunnel_encap)):
        result = helper(packet, sa, 1.0)
        if result is None:
            assert sa.drops.total() == 1
        else:
            assert esp_spi(result) is not None
