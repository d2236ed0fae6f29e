"""OnWireIcmp (sans-IO): which routers' ICMPv6 errors count, and the path MTUs they set.

Messages are built with scapy, so the checksum and layout are an outside
oracle's.  The lab test (tests/lab/test_raw_lab_icmp.py) runs the same code
against a real router.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
)
from scapy.layers.ipsec import ESP

from vmip.node.onwire_icmp import IPV6_MIN_MTU, OnWireIcmp

COA, CN, ROUTER, OTHER = "2001:db8:31::2", "2001:db8:20::2", "2001:db8:31::1", "2001:db8:99::9"
OUR_SPI = 0x1301


def table(**options) -> OnWireIcmp:
    own = {ipaddress.IPv6Address(COA).packed}
    return OnWireIcmp(is_own_address=own.__contains__,
                      is_outbound_spi=lambda spi: spi == OUR_SPI, **options)


def too_big(mtu: int, *, src: str = COA, dst: str = CN, spi: int = OUR_SPI) -> bytes:
    quote = IPv6(src=src, dst=dst) / ESP(spi=spi, seq=7, data=bytes(64))
    return bytes(IPv6(src=ROUTER, dst=COA) / ICMPv6PacketTooBig(mtu=mtu) / quote)


def packed(address: str) -> bytes:
    return ipaddress.IPv6Address(address).packed


def test_packet_too_big_sets_the_path_mtu_of_the_quoted_destination() -> None:
    icmp = table()
    event = icmp.receive(too_big(1360), now=10.0)
    assert event is not None and (event.kind, event.mtu, event.reporter, event.destination) == (
        "too_big", 1360, ROUTER, CN)
    assert icmp.path_mtu(packed(CN), 11.0) == 1360
    assert icmp.path_mtu(packed(OTHER), 11.0) is None
    assert icmp.rows(11.0) == [{"destination": CN, "mtu": 1360, "expires_in": 599.0}]


def test_never_below_1280_never_raised_and_aged_out() -> None:
    icmp = table(lifetime=600.0)
    assert icmp.receive(too_big(1000), now=0.0).mtu == IPV6_MIN_MTU   # RFC 8201 §4
    assert icmp.receive(too_big(1400), now=1.0).mtu == IPV6_MIN_MTU   # no increase
    assert icmp.counters["pmtu_not_lowered"] == 1
    assert icmp.path_mtu(packed(CN), 599.0) == IPV6_MIN_MTU
    assert icmp.path_mtu(packed(CN), 600.0) is None and not icmp


def test_errors_about_packets_we_did_not_send_change_nothing() -> None:
    icmp = table()
    assert icmp.receive(too_big(1280, spi=0xDEAD), now=0.0) is None
    assert icmp.receive(too_big(1280, src=OTHER), now=0.0) is None
    assert dict(icmp.counters) == {"icmp_drop_unknown_spi": 1, "icmp_drop_not_our_packet": 1}
    # A wrong checksum (an octet of the quote changed after scapy summed it).
    damaged = bytearray(too_big(1280))
    damaged[-1] ^= 1
    assert icmp.receive(bytes(damaged), now=0.0) is None
    assert icmp.counters["icmp_drop_malformed"] == 1
    echo = bytes(IPv6(src=ROUTER, dst=COA) / ICMPv6EchoRequest())
    assert icmp.receive(echo, now=0.0) is None and icmp.counters["icmp_drop_not_error"] == 1
    assert not icmp


def test_unreachable_is_reported_without_state() -> None:
    icmp = table()
    quote = IPv6(src=COA, dst=CN) / ESP(spi=OUR_SPI, seq=1, data=bytes(16))
    event = icmp.receive(bytes(IPv6(src=ROUTER, dst=COA) / ICMPv6DestUnreach(code=3) / quote),
                         now=0.0)
    assert event is not None and (event.kind, event.code, event.mtu) == ("unreachable", 3, None)
    assert icmp.counters["icmp_rx_unreachable"] == 1 and not icmp


def test_the_table_is_bounded() -> None:
    icmp = table(max_paths=4)
    for i in range(10):
        icmp.receive(too_big(1300, dst=f"2001:db8:20::{i + 1:x}"), now=0.0)
    assert len(icmp.rows(0.0)) == 4 and icmp.counters["pmtu_evicted"] == 6
    assert icmp.path_mtu(packed("2001:db8:20::a"), 0.0) == 1300


@given(st.binary(min_size=40, max_size=200))
def test_any_bytes_are_dropped_or_handled_never_raised(data: bytes) -> None:
    icmp = table()
    icmp.receive(data, now=0.0)
    assert sum(icmp.counters.values()) >= 1
