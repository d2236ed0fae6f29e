"""Hypothesis strategies and sample packets shared by the wire tests.

Valid sample packets are built with scapy (an independent encoder), so
the mutation fuzzing starts from bytes our own builders did not make.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import strategies as st
from scapy.all import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    HAO,
    MIP6MH_BA,
    MIP6MH_BE,
    MIP6MH_BRR,
    MIP6MH_BU,
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    MIP6MH_Generic,
    MIP6OptAltCoA,
    MIP6OptBRAdvice,
)

from vmip.wire import mh

SRC = "2001:db8::1"
DST = "2001:db8::2"
SRC_A = IPv6Address(SRC)
DST_A = IPv6Address(DST)

ipv6_addresses = st.binary(min_size=16, max_size=16).map(IPv6Address)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
nonces = st.binary(min_size=8, max_size=8)

unknown_mobility_options = st.builds(
    mh.UnknownMobilityOption,
    st.integers(2, 255).filter(lambda t: t not in (2, 3, 35, 88)),
    st.binary(max_size=40),
)
mobility_options = st.one_of(
    st.builds(mh.BindingRefreshAdvice, u16),
    st.builds(mh.AlternateCareOfAddress, ipv6_addresses),
    st.builds(mh.NonceOption, nonces),
    st.builds(
        mh.BindingIdentifier,
        u16,
        u8,
        st.booleans(),
        st.booleans(),
        st.one_of(
            st.none(),
            ipv6_addresses,
            st.binary(min_size=4, max_size=4).map(IPv4Address),
        ),
    ),
    unknown_mobility_options,
)
option_tuples = st.lists(mobility_options, max_size=5).map(tuple)
options_without_nonce = st.lists(
    mobility_options.filter(lambda o: not isinstance(o, mh.NonceOption)), max_size=4
).map(tuple)

mobility_messages = st.one_of(
    st.builds(mh.BindingRefreshRequest, option_tuples),
    st.builds(
        mh.BindingUpdate,
        u16,
        u16,
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        option_tuples,
    ),
    st.builds(mh.BindingAck, u8, u16, u16, st.booleans(), option_tuples),
    st.builds(mh.BindingError, u8, ipv6_addresses, option_tuples),
    st.just(mh.AotOffer()),
    st.builds(mh.AotChallenge, nonces, options_without_nonce),
    st.builds(mh.AotResponse, nonces, options_without_nonce),
    st.builds(mh.AotStatus, st.integers(0, 15)),
    st.builds(
        mh.UnknownMobilityMessage,
        st.integers(1, 255).filter(lambda t: t not in (5, 6, 7, 30, 31, 32, 33)),
        st.integers(0, 6).map(lambda n: bytes(2 + 8 * n)),
    ),
)


def sample_ipv6_packets() -> list[bytes]:
    """Valid IPv6 packets of many shapes, built by scapy."""
    base = IPv6(src=SRC, dst=DST)
    packets = [
        base / TCP(sport=1000, dport=22) / b"payload",
        base / UDP(sport=53, dport=5353) / b"query",
        base / ICMPv6EchoRequest(id=1, seq=2, data=b"ping"),
        base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8::9")]) / UDP(),
        base / IPv6ExtHdrRouting(type=2, addresses=["2001:db8::9"], segleft=1) / TCP(),
        base / IPv6ExtHdrFragment(offset=0, m=1, id=7) / UDP(sport=1, dport=2) / (b"x" * 16),
        base / IPv6ExtHdrFragment(offset=10, m=0, id=7, nh=17) / (b"y" * 24),
        base / ICMPv6DestUnreach(code=4) / IPv6(src=DST, dst=SRC) / UDP(),
        base / ICMPv6PacketTooBig(mtu=1280) / IPv6(src=DST, dst=SRC) / TCP(),
        base / ICMPv6ParamProblem(code=1, ptr=6) / IPv6(src=DST, dst=SRC),
        base / IPv6(src="2001:db8::5", dst="2001:db8::6") / UDP(sport=7, dport=9),
        base / IP(src="192.0.2.1", dst="198.51.100.1") / ICMP(),
        base / MIP6MH_BU(seq=3, options=[MIP6OptAltCoA(acoa="2001:db8:2::1")]),
        base / MIP6MH_BA(status=0, seq=3, mhtime=10, options=[MIP6OptBRAdvice(rinter=3)]),
        base / MIP6MH_BE(status=2, ha="2001:db8::9"),
        base / MIP6MH_BRR(),
        base / MIP6MH_Generic(mhtype=31, msg=bytes(8) + bytes.fromhex("5808") + bytes(8)),
    ]
    return [raw(p) for p in packets]


def sample_ipv4_packets() -> list[bytes]:
    return [
        raw(IP(src="192.0.2.1", dst="198.51.100.1") / TCP(sport=5, dport=6)),
        raw(IP(src="192.0.2.1", dst="198.51.100.1", options=b"\x01\x01\x01\x00") / UDP()),
        raw(IP(src="192.0.2.1", dst="198.51.100.1", flags="MF", frag=0) / UDP() / (b"z" * 8)),
        raw(IP(src="192.0.2.1", dst="198.51.100.1", frag=3, proto=17) / (b"z" * 8)),
    ]


def sample_mobility_headers() -> list[bytes]:
    """MH bytes (no IPv6 header) from scapy, with valid checksums for SRC/DST."""
    return [p[40:] for p in sample_ipv6_packets() if p[6] == 135]


def mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Seeds cut short, with bytes overwritten, inserted or removed."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            action = draw(st.sampled_from(("truncate", "flip", "set", "insert", "delete")))
            if not data:
                break
            position = draw(st.integers(0, len(data) - 1))
            if action == "truncate":
                del data[position:]
            elif action == "flip":
                data[position] ^= 1 << draw(st.integers(0, 7))
            elif action == "set":
                data[position] = draw(u8)
            elif action == "insert":
                data[position:position] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[position : position + draw(st.integers(1, 8))]
        return bytes(data)

    return mutate()
