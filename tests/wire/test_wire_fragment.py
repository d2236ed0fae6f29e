"""IPv6 fragmentation and reassembly (vmip.wire.fragment, RFC 8200 §4.5, RFC 5722)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting, fragment6

from vmip.wire.fragment import Reassembler, fragment, fragment_header_at
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

SRC = bytes.fromhex("20010db8001000000000000000000010")
DST = bytes.fromhex("20010db8002000000000000000000002")


def udp_packet(size: int) -> bytes:
    segment = build_udp(5000, 5001, bytes(range(256)) * (size // 256) + bytes(size % 256),
                        SRC, DST)
    return build_ipv6_header(SRC, DST, 17, len(segment)) + segment


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 9000), st.integers(1280, 1500), st.randoms(use_true_random=False))
def test_fragments_in_any_order_give_the_packet_back(size, mtu, rng) -> None:
    packet = udp_packet(size)
    pieces = fragment(packet, mtu, 7)
    assert all(len(p) <= mtu for p in pieces)
    if len(packet) <= mtu:
        assert pieces == [packet]
        return
    assert all(fragment_header_at(p) == 40 for p in pieces)
    rng.shuffle(pieces)
    reassembler = Reassembler()
    results = [reassembler.add(p, 0.0) for p in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1) and results[-1] == packet
    assert len(reassembler) == 0


def test_fragments_match_scapy_both_ways() -> None:
    packet = udp_packet(4000)
    # Ours, read by scapy: each is a valid fragment of the same datagram.
    for piece in fragment(packet, 1400, 0xABCDEF):
        parsed = IPv6(piece)
        assert parsed.haslayer(IPv6ExtHdrFragment) and parsed[IPv6ExtHdrFragment].id == 0xABCDEF
        assert parsed.plen == len(piece) - 40
    # Scapy's, put together by us (with a routing header in the unfragmentable part).
    original = IPv6(src="2001:db8:10::10", dst="2001:db8:20::2") / \
        IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrFragment(id=5) / UDP(sport=1, dport=2) / \
        (b"x" * 3000)
    pieces = [bytes(p) for p in fragment6(original, 1280)]
    reassembler = Reassembler()
    whole = [reassembler.add(p, 0.0) for p in pieces][-1]
    assert whole is not None
    parsed = IPv6(whole)
    assert parsed.haslayer(IPv6ExtHdrRouting) and not parsed.haslayer(IPv6ExtHdrFragment)
    assert bytes(parsed[UDP].payload) == b"x" * 3000


def test_an_overlapping_fragment_drops_the_datagram() -> None:
    pieces = fragment(udp_packet(3000), 1280, 1)
    overlapping = bytearray(pieces[1])
    overlapping[42:44] = ((int.from_bytes(overlapping[42:44], "big") - 8) | 1).to_bytes(2, "big")
    reassembler = Reassembler()
    assert reassembler.add(pieces[0], 0.0) is None
    assert reassembler.add(bytes(overlapping), 0.0) is None
    assert reassembler.counters["fragment_overlap"] == 1 and len(reassembler) == 0
    assert [reassembler.add(p, 0.0) for p in pieces[2:]] == [None] * len(pieces[2:])


def test_incomplete_datagrams_time_out_and_the_table_is_bounded() -> None:
    reassembler = Reassembler(timeout=60.0, max_datagrams=4)
    for ident in range(10):
        reassembler.add(fragment(udp_packet(3000), 1280, ident)[0], float(ident))
    assert len(reassembler) == 4 and reassembler.counters["reassembly_evicted"] == 6
    reassembler.add(fragment(udp_packet(3000), 1280, 99)[0], 100.0)
    assert len(reassembler) == 1 and reassembler.counters["reassembly_timeout"] == 4


def test_whole_packets_and_atomic_fragments_are_not_fragments() -> None:
    packet = udp_packet(100)
    assert fragment_header_at(packet) is None
    atomic = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(offset=0, m=0) / \
        UDP() / b"x"
    assert fragment_header_at(bytes(atomic)) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), max_size=8))
def test_arbitrary_bytes_never_raise(blobs) -> None:
    reassembler = Reassembler(max_datagrams=4, max_bytes=4096)
    header = build_ipv6_header(SRC, DST, 44, 0)
    for blob in blobs:
        for packet in (blob, header[:6] + bytes([44]) + header[7:] + blob):
            if fragment_header_at(packet) is not None:
                result = reassembler.add(packet, 0.0)
                assert result is None or result[:1] == packet[:1]
            fragment(packet, 1280, 1)


@pytest.mark.parametrize("seed", range(3))
def test_duplicate_fragments_are_harmless_or_dropped(seed) -> None:
    pieces = fragment(udp_packet(5000), 1280, 3)
    rng = random.Random(seed)
    sequence = pieces + [rng.choice(pieces)]
    rng.shuffle(sequence)
    reassembler = Reassembler()
    results = [r for r in (reassembler.add(p, 0.0) for p in sequence) if r is not None]
    # A duplicate overlaps itself (RFC 5722): the datagram is either dropped or complete.
    assert results in ([], [udp_packet(5000)])


def test_bytes_past_the_payload_length_are_not_part_of_the_datagram() -> None:
    packet = udp_packet(3000)
    pieces = [p + b"\xee" * 6 for p in fragment(packet, 1280, 9)]   # link padding
    reassembler = Reassembler()
    assert [reassembler.add(p, 0.0) for p in pieces][-1] == packet
    truncated = fragment(packet, 1280, 10)[0][:-1]                 # shorter than it says
    assert reassembler.add(truncated, 0.0) is None
    assert reassembler.counters["fragment_malformed"] == 1
