"""Checksums against the RFC 1071 example and scapy's independent implementation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.all import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.utils import checksum as scapy_checksum

from vmip.wire.checksum import (
    internet_checksum,
    pseudo_header_sum,
    upper_layer_checksum,
    verify_upper_layer_checksum,
)


def test_rfc1071_numerical_example():
    # RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (one's complement).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert internet_checksum(data) == (~0xDDF2) & 0xFFFF


def test_sign_of_zero():
    # All-zero data sums to +0, so its checksum is all ones; a non-zero sum
    # that folds to zero is "negative zero" (0xFFFF), whose checksum is 0.
    assert internet_checksum(bytes(6)) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\x80\x00\x7f\xff") == 0


@given(st.binary(max_size=3000))
def test_matches_scapy(data):
    assert internet_checksum(data) == scapy_checksum(data)


@given(st.binary(min_size=2, max_size=1500))
def test_embedding_the_checksum_verifies(data):
    even = data if len(data) % 2 == 0 else data + b"\x00"
    with_zero = even[:0] + b"\x00\x00" + even[2:]
    value = internet_checksum(with_zero)
    assert internet_checksum(value.to_bytes(2, "big") + even[2:]) == 0


@given(st.binary(min_size=0, max_size=1500), st.integers(0, 255))
def test_ipv6_pseudo_header_matches_scapy(payload, next_header):
    packet = IPv6(src="2001:db8::1", dst="2001:db8:ffff::2", nh=next_header) / payload
    expected = in6_chksum(next_header, packet.payload, payload)
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8ffff00000000000000000002")
    assert upper_layer_checksum(src, dst, next_header, payload) == expected


def test_ipv4_pseudo_header_matches_scapy_udp():
    packet = IP(raw(IP(src="192.0.2.1", dst="198.51.100.7") / UDP(sport=4500, dport=6275) / b"abc"))
    udp_bytes = raw(packet[UDP])
    src, dst = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7])
    assert verify_upper_layer_checksum(src, dst, 17, udp_bytes)
    zeroed = udp_bytes[:6] + b"\x00\x00" + udp_bytes[8:]
    assert upper_layer_checksum(src, dst, 17, zeroed) == packet[UDP].chksum


def test_pseudo_header_sum_combines_with_payload_sum():
    src = bytes(range(16))
    dst = bytes(range(16, 32))
    payload = b"hello world!"
    partial = pseudo_header_sum(src, dst, 17, len(payload))
    # Pseudo-header as explicit bytes (RFC 8200 §8.1 layout), summed whole.
    explicit = src + dst + len(payload).to_bytes(4, "big") + bytes(3) + bytes([17])
    assert (~partial) & 0xFFFF == internet_checksum(explicit)


@pytest.mark.parametrize("size", [1, 3, 39, 1401])
def test_odd_lengths_pad_with_zero(size):
    data = bytes(range(256)) * 6
    data = data[:size]
    assert internet_checksum(data) == internet_checksum(data + b"\x00")
