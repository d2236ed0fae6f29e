"""Fuzzing the running nodes' inbound path (hypothesis), on the in-process network.

Whatever arrives at a node's overlay port (garbage, IPv6 with any next
header, ESP under the SPIs the nodes use, authentic datagrams with bits
flipped), the node counts it and goes on: no handler error, and the
registrations and traffic it had keep working.
"""

from __future__ import annotations

import asyncio
import struct
from ipaddress import IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmip.sim.scenario import ProbeStream, demo_profiles
from vmip.sim.world import SimWorld

TARGETS = {"ha": ("192.0.2.2", 6275), "cn": ("192.0.2.18", 6275), "mn": ("192.0.2.34", 6275)}
ADDRESSES = [IPv6Address(a).packed for a in ("2001:db8:100::1", "2001:db8:20::2",
                                             "2001:db8:100::10", "2001:db8:31::2",
                                             "2001:db8:32::2", "2001:db8:100::20")]
SPIS = [0x1101, 0x1102, 0x1201, 0x1202, 0x1301, 0x1302, 0x1401, 0x1402, 0x2101, 0x2201]


class Harness:
    """One world for every example: nodes up, captured authentic datagrams to mutate."""

    def __init__(self) -> None:
        self.world = SimWorld(seed=21, profiles=demo_profiles())
        self.captured: list[bytes] = []
        self.world.network.observers.append(self._capture)
        self.world.run(self._start())
        self.attacker = self.world.add_host("evil", "203.0.113.66", 40066)

    def _capture(self, src, dst, packet: bytes, verdict: str) -> None:
        if verdict == "delivered" and src.node != "evil" and len(self.captured) < 64:
            self.captured.append(packet)

    async def _start(self) -> None:
        await self.world.start_all()
        await asyncio.sleep(3.0)

    def send(self, target: str, datagram: bytes) -> None:
        self.attacker.send(datagram, TARGETS[target])
        self.world.run(asyncio.sleep(0.05))

    def handler_errors(self) -> int:
        return sum(link.counters["rx_handler_error"] for node in self.world.nodes.values()
                   for link in node.links.values())


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.world.cleanup()


def ipv6(next_header: int, src: bytes, dst: bytes, payload: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64) + src + dst + payload


datagrams = st.one_of(
    st.binary(max_size=200),
    st.builds(ipv6, st.sampled_from([0, 6, 17, 41, 43, 44, 50, 58, 60, 135, 255]),
              st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES), st.binary(max_size=120)),
    st.builds(lambda spi, seq, src, dst, body: ipv6(50, src, dst,
                                                    struct.pack("!II", spi, seq) + body),
              st.sampled_from(SPIS), st.integers(0, 2**32 - 1), st.sampled_from(ADDRESSES),
              st.sampled_from(ADDRESSES), st.binary(max_size=120)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(sorted(TARGETS)), datagram=datagrams)
def test_any_datagram_is_counted_and_the_node_goes_on(harness, target, datagram) -> None:
    harness.send(target, datagram)
    assert harness.handler_errors() == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 63), position=st.integers(0, 2000), flip=st.integers(1, 255),
       target=st.sampled_from(sorted(TARGETS)))
def test_authentic_datagrams_with_a_byte_changed_are_dropped_quietly(harness, index, position,
                                                                      flip, target) -> None:
    packet = bytearray(harness.captured[index % len(harness.captured)])
    packet[position % len(packet)] ^= flip
    harness.send(target, bytes(packet))
    assert harness.handler_errors() == 0


def test_after_the_fuzzing_the_nodes_still_carry_traffic(harness) -> None:
    world = harness.world
    hoa, cn = IPv6Address("2001:db8:100::10"), IPv6Address("2001:db8:20::2")
    out, back = (ProbeStream(world, "mn", hoa, cn, 50), ProbeStream(world, "cn", cn, hoa, 50))
    world.tun_sinks["cn"], world.tun_sinks["mn"] = out.received, back.received
    out.start()
    back.start()
    world.run(asyncio.sleep(1.0))
    out.stop()
    back.stop()
    assert len(out.arrivals) >= 45 and len(back.arrivals) >= 45
    assert harness.handler_errors() == 0
