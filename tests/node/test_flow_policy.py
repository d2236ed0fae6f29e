"""The per-flow send policy, sans-IO: classifying inner packets, choosing paths.

Packets are built with scapy (an independent encoder), so the classifier
is checked against the wire format, extension headers and fragments included.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.packet import Raw

from vmip.ipsec.sa import Direction
from vmip.mobility.ancillary import Ancillary
from vmip.node.flows import BEST, DUPLICATE, FlowMode, FlowPolicy, FlowRule, FlowSender

HOA, CN, OTHER = "2001:db8:100::10", "2001:db8:20::2", "2001:db8:30::7"
VOICE = FlowRule("voice", DUPLICATE, protocol=17, remote=IPv6Network(f"{CN}/128"),
                 remote_ports=(5060, 5061))
BULK = FlowRule("bulk", FlowMode.parse("link:lte0"), protocol=6, local_ports=(40000, 40100))
PING = FlowRule("ping", FlowMode.parse("link:wifi0"), protocol=58)
ALL_TO_CN = FlowRule("cn", DUPLICATE, remote=IPv6Network("2001:db8:20::/48"))


def udp(dst: str = CN, sport: int = 4000, dport: int = 5060, *ext) -> bytes:
    packet = IPv6(src=HOA, dst=dst)
    for header in ext:
        packet = packet / header
    return bytes(packet / UDP(sport=sport, dport=dport) / Raw(b"x" * 32))


def tcp(dst: str = OTHER, sport: int = 40050, dport: int = 443) -> bytes:
    return bytes(IPv6(src=HOA, dst=dst) / TCP(sport=sport, dport=dport))


def test_flow_mode_text_round_trips() -> None:
    assert FlowMode.parse("best") is BEST and FlowMode.parse("duplicate") is DUPLICATE
    lte = FlowMode.parse("link:lte0")
    assert (lte.send, lte.link, str(lte)) == ("link", "lte0", "link:lte0")
    for bad in ("", "link:", "dup", "Link:lte0"):
        with pytest.raises(ValueError):
            FlowMode.parse(bad)


def test_without_flows_everything_is_best() -> None:
    policy = FlowPolicy()
    assert not policy
    assert policy.classify(udp()) is BEST and policy.classify(b"junk") is BEST
    assert policy.matched == Counter()


def test_selectors_protocol_remote_and_ports() -> None:
    policy = FlowPolicy([VOICE, BULK, PING])
    assert policy.classify(udp()) == DUPLICATE
    assert policy.classify(udp(dport=5061)) == DUPLICATE
    assert policy.classify(udp(dport=5062)) is BEST               # outside remote_ports
    assert policy.classify(udp(dst=OTHER)) is BEST                 # another remote
    assert policy.classify(tcp()) == FlowMode("link", "lte0")      # local_ports = source
    assert policy.classify(tcp(sport=40101)) is BEST
    assert policy.classify(tcp(sport=5060, dport=40050)) is BEST   # not the reverse direction
    echo = bytes(IPv6(src=HOA, dst=OTHER) / ICMPv6EchoRequest())
    assert policy.classify(echo) == FlowMode("link", "wifi0")
    assert policy.matched == Counter({"voice": 2, "bulk": 1, "ping": 1, "": 4})
    assert [row["packets"] for row in policy.status()] == [2, 1, 1]


def test_first_matching_flow_wins_in_file_order() -> None:
    udp_best = FlowRule("udp-best", BEST, protocol=17)
    assert FlowPolicy([udp_best, VOICE]).classify(udp()) is BEST
    assert FlowPolicy([VOICE, udp_best]).classify(udp()) == DUPLICATE


def test_ports_are_read_after_extension_headers() -> None:
    policy = FlowPolicy([VOICE])
    chains = [
        (IPv6ExtHdrHopByHop(),),
        (IPv6ExtHdrDestOpt(),),
        (IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=[CN]), IPv6ExtHdrDestOpt()),
        (IPv6ExtHdrFragment(offset=0, m=0, id=7),),   # an atomic fragment: whole
    ]
    for chain in chains:
        assert policy.classify(udp(CN, 4000, 5060, *chain)) == DUPLICATE, chain
        assert policy.classify(udp(CN, 4000, 80, *chain)) is BEST, chain


def test_fragments_only_the_first_shows_ports() -> None:
    """A non-first fragment has no ports: only flows without port selectors
    match it (RFC 4301 §4.4.1.1 OPAQUE), as in the SPD."""
    whole = IPv6(src=HOA, dst=CN) / IPv6ExtHdrFragment(id=9) / UDP(sport=4000, dport=5060) \
        / Raw(b"y" * 3000)
    first, *rest = (bytes(piece) for piece in fragment6(whole, 1280))
    assert rest
    with_ports = FlowPolicy([VOICE])
    assert with_ports.classify(first) == DUPLICATE
    assert all(with_ports.classify(piece) is BEST for piece in rest)
    without_ports = FlowPolicy([ALL_TO_CN])
    assert all(without_ports.classify(piece) == DUPLICATE for piece in (first, *rest))
    udp_any_port = FlowPolicy([FlowRule("udp", DUPLICATE, protocol=17)])
    assert all(udp_any_port.classify(piece) == DUPLICATE for piece in (first, *rest))


def test_unreadable_packets_are_best_and_counted() -> None:
    policy = FlowPolicy([ALL_TO_CN])
    good = udp()
    for bad in (b"", b"\x60" + bytes(10), good[:45], b"\x45" + bytes(19)):
        assert policy.classify(bad) is BEST
    assert policy.matched["unreadable"] == 4


def test_the_flow_cache_is_bounded() -> None:
    policy = FlowPolicy([VOICE], cache_size=8)
    for port in range(100):
        policy.classify(udp(sport=1000 + port))
    assert policy._spd is not None and policy._spd.cached_flows(Direction.OUT) <= 8
    assert policy.matched["voice"] == 100


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_classify_never_raises_on_any_bytes(data: bytes) -> None:
    policy = FlowPolicy([VOICE, BULK, PING, ALL_TO_CN])
    assert isinstance(policy.classify(data), FlowMode)
    assert isinstance(policy.classify(b"\x60" + data), FlowMode)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 80), st.integers(0, 255))
def test_classify_never_raises_on_damaged_packets(position: int, value: int) -> None:
    packet = bytearray(udp(CN, 4000, 5060, IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()))
    packet[position % len(packet)] = value
    assert isinstance(FlowPolicy([VOICE, ALL_TO_CN]).classify(bytes(packet)), FlowMode)


# -- choosing paths --------------------------------------------------------------


@dataclass(frozen=True)
class Path:
    bid: int
    link: str | None
    local: str | None = None
    remote: str | None = None

    def ancillary(self) -> Ancillary:
        return Ancillary.of(IPv6Address(self.local) if self.local else None,
                            IPv6Address(self.remote) if self.remote else None)


WIFI = Path(1, "wifi0", local="2001:db8:31::2")
LTE = Path(2, "lte0", local="2001:db8:32::2")
ESP = bytes(IPv6(src=HOA, dst=CN, nh=50)) + bytes(64)


class Quality:
    def __init__(self, best: str | None) -> None:
        self.answer = best
        self.asked: list[tuple[list[str], float]] = []

    def best(self, links, now: float) -> str | None:
        self.asked.append((list(links), now))
        return self.answer


def sender(rules, paths, quality: Quality | None = None) -> tuple[FlowSender, list[bytes]]:
    asked: list[bytes] = []

    def paths_to(peer: bytes):
        asked.append(peer)
        return paths
    return FlowSender(FlowPolicy(rules), paths_to, quality.best if quality else None,
                      Counter()), asked


def test_no_bound_paths_means_send_as_before() -> None:
    flows, asked = sender([VOICE], [])
    assert flows.copies(udp(), ESP, 1.0) is None
    assert asked == [IPv6Address(CN).packed]          # the SA-level peer: ESP's destination
    assert FlowSender(FlowPolicy([VOICE]), None, None, Counter()).copies(udp(), ESP, 1.0) is None


def test_best_takes_the_mn_link_with_the_best_quality() -> None:
    quality = Quality("lte0")
    flows, _ = sender([], [WIFI, LTE], quality)
    assert flows.copies(udp(dst=OTHER), ESP, 2.5) == [LTE.ancillary()]
    assert quality.asked == [(["wifi0", "lte0"], 2.5)]
    quality.answer = None                                # no measurements yet: list order
    assert flows.copies(udp(dst=OTHER), ESP, 3.0) == [WIFI.ancillary()]
    assert flows.counters == Counter()


def test_best_on_a_cn_or_ha_is_the_first_path() -> None:
    to_wifi, to_lte = Path(1, None, remote="2001:db8:31::2"), Path(2, None, remote="2001:db8:32::2")
    quality = Quality("wifi0")
    flows, _ = sender([], [to_lte, to_wifi], quality)
    assert flows.copies(udp(), ESP, 1.0) == [to_lte.ancillary()]
    assert quality.asked == []                          # no links of ours to compare


def test_a_link_flow_goes_on_that_link_only_while_it_is_bound() -> None:
    bulk = FlowRule("bulk", FlowMode.parse("link:lte0"))
    flows, _ = sender([bulk], [WIFI, LTE], Quality("wifi0"))
    assert flows.copies(udp(), ESP, 1.0) == [LTE.ancillary()]
    flows, _ = sender([bulk], [WIFI], Quality("wifi0"))
    assert flows.copies(udp(), ESP, 1.0) == [WIFI.ancillary()]   # lte0 not bound: best
    assert flows.counters["tx_flow_link_unbound"] == 1


def test_duplicate_sends_the_same_esp_on_every_path_and_counts_the_extra_copies() -> None:
    flows, _ = sender([VOICE], [WIFI, LTE], Quality("lte0"))
    assert flows.copies(udp(), ESP, 1.0) == [WIFI.ancillary(), LTE.ancillary()]
    assert flows.copies(udp(), ESP, 1.1) == [WIFI.ancillary(), LTE.ancillary()]
    assert flows.counters == Counter({"tx_duplicate_copies": 2,
                                      "tx_duplicate_bytes": 2 * len(ESP)})
    assert flows.copies(udp(dport=80), ESP, 1.2) == [LTE.ancillary()]   # not the flow: best


def test_duplicate_with_one_bound_path_is_one_copy() -> None:
    flows, _ = sender([VOICE], [LTE])
    assert flows.copies(udp(), ESP, 1.0) == [LTE.ancillary()]
    assert flows.counters == Counter()


def test_a_best_packet_gets_a_hedge_copy_while_its_path_is_silent() -> None:
    asked: list[tuple[bytes, Path, float]] = []
    silent = {"wifi0"}

    def spare(peer: bytes, chosen, paths, now: float):
        asked.append((peer, chosen, now))
        return next(p for p in paths if p != chosen) if chosen.link in silent else None

    named = FlowRule("named", FlowMode.parse("link:wifi0"), protocol=17, local_ports=(9, 9))
    flows = FlowSender(FlowPolicy([VOICE, named]), lambda peer: [WIFI, LTE],
                       Quality("wifi0").best, Counter(), spare)
    # best: the chosen path and the spare one, the same ESP bytes, counted.
    assert flows.copies(udp(dport=80), ESP, 1.0) == [WIFI.ancillary(), LTE.ancillary()]
    assert asked == [(IPv6Address(CN).packed, WIFI, 1.0)]
    assert flows.counters == Counter({"tx_hedge_copies": 1, "tx_hedge_bytes": len(ESP)})
    # A named link is the user's choice, duplicate already goes everywhere.
    assert flows.copies(udp(sport=9, dport=9), ESP, 1.1) == [WIFI.ancillary()]
    assert flows.copies(udp(), ESP, 1.2) == [WIFI.ancillary(), LTE.ancillary()]
    assert len(asked) == 1 and flows.counters["tx_hedge_copies"] == 1
    silent.clear()
    assert flows.copies(udp(dport=80), ESP, 1.3) == [WIFI.ancillary()]
