"""The raw driver between two network namespaces joined by a veth pair."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from linktest_helpers import ADDR_A, ADDR_B, TIMEOUT, Inbox, LinkSpec
from scapy.layers.inet6 import MIP6MH_BRR, ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6
from scapy.layers.ipsec import ESP

from vmip.links import LinkError, RawDriver

pytestmark = pytest.mark.root


async def start_raw(inbox_holder: dict, **settings) -> RawDriver:
    """Start a raw driver on the running loop; its Inbox is created there."""
    inbox = Inbox()
    inbox_holder["inbox"] = inbox
    driver = RawDriver(LinkSpec(driver="raw", **settings))
    await driver.start(asyncio.get_running_loop(), inbox)
    return driver


async def next_packet(holder: dict):
    return await holder["inbox"].get(TIMEOUT)


def test_handmade_packets_cross_with_the_right_addresses(netns_pair, netns_loops):
    ns_a, ns_b, if_a, if_b = netns_pair
    loop_a, loop_b = netns_loops(ns_a), netns_loops(ns_b)
    got_a: dict = {}
    got_b: dict = {}
    a = loop_a.call(start_raw(got_a, interface=if_a))
    b = loop_b.call(start_raw(got_b, interface=if_b, bind=ADDR_B))
    try:
        # ESP 50, IPv6-in-IPv6 41 and MH 135, each built by scapy.
        sent = [
            bytes(IPv6(src=ADDR_A, dst=ADDR_B, hlim=64)
                  / ESP(spi=0x1234, seq=1, data=bytes(range(48)))),
            bytes(IPv6(src=ADDR_A, dst=ADDR_B, hlim=64)
                  / IPv6(src="2001:db8:100::10", dst="2001:db8:20::2")
                  / ICMPv6EchoRequest(id=1, seq=1)),
            bytes(IPv6(src=ADDR_A, dst=ADDR_B, hlim=64, tc=0x20) / MIP6MH_BRR()),
        ]
        loop_a.call(_send_all(a, sent, (ADDR_B, 0)))
        for expected in sent:
            packet, endpoint, via = loop_b.call(next_packet(got_b))
            assert via is b
            assert endpoint == (ADDR_A, 0)
            # Directly connected: nothing changes the header on the way, so
            # the rebuilt packet is the sent one, octet for octet.
            assert packet == expected, IPv6(packet).show(dump=True)
        parsed = IPv6(sent[0])
        assert (parsed.src, parsed.dst, parsed[ESP].spi) == (ADDR_A, ADDR_B, 0x1234)
        assert a.counters["tx"] == 3 and b.counters["rx"] == 3
    finally:
        loop_a.call(a.close())
        loop_b.call(b.close())


async def _send_all(driver: RawDriver, packets: list[bytes], endpoint) -> None:
    driver.send_many((packet, endpoint) for packet in packets)


def test_icmpv6_errors_are_delivered_and_other_icmpv6_is_not(netns_pair, netns_loops):
    ns_a, ns_b, _, _ = netns_pair
    loop_a, loop_b = netns_loops(ns_a), netns_loops(ns_b)
    got_a: dict = {}
    got_b: dict = {}
    a = loop_a.call(start_raw(got_a))
    b = loop_b.call(start_raw(got_b))
    try:
        # B's kernel answers the echo request; the filter must hide the reply
        # from A and the request from B.
        echo = bytes(IPv6(src=ADDR_A, dst=ADDR_B) / ICMPv6EchoRequest(id=7, seq=1))
        loop_a.call(_send_all(a, [echo], (ADDR_B, 0)))
        # Then a datagram to a closed port: B answers port unreachable.
        loop_a.call(_udp_to_closed_port())
        packet, endpoint, _ = loop_a.call(next_packet(got_a))
        parsed = IPv6(packet)
        assert endpoint == (ADDR_B, 0)
        assert (parsed.src, parsed.dst, parsed.nh) == (ADDR_B, ADDR_A, 58)
        assert parsed.haslayer(ICMPv6DestUnreach) and parsed[ICMPv6DestUnreach].code == 4
        assert got_a["inbox"].queue.empty()
        assert got_b["inbox"].queue.empty()
    finally:
        loop_a.call(a.close())
        loop_b.call(b.close())


async def _udp_to_closed_port() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"probe", (ADDR_B, 9))


def test_malformed_packets_never_leave_and_closed_links_count_drops(netns_single,
                                                                    netns_loops):
    async def scenario():
        link = RawDriver(LinkSpec(driver="raw"))
        await link.start(asyncio.get_running_loop(), Inbox())
        good = bytes(IPv6(src="::1", dst="::1") / ESP(spi=0x999, seq=1, data=b"x" * 8))
        try:
            link.send(good[:30], ("::1", 0))
            link.send(b"\x45" + good[1:], ("::1", 0))
            link.send(good + b"\x00", ("::1", 0))
            assert (link.counters["tx_drop_short"], link.counters["tx_drop_version"],
                    link.counters["tx_drop_length"]) == (1, 1, 1)
            assert link.counters["tx"] == 0
        finally:
            await link.close()
        link.send(good, ("::1", 0))
        assert link.counters["tx_drop_closed"] == 1

    netns_loops(netns_single).call(scenario())


def test_configuration_mistakes_raise_link_error(netns_single, netns_loops):
    async def scenario():
        link = RawDriver(LinkSpec(name="raw0", driver="raw", bind="192.0.2.1"))
        with pytest.raises(LinkError, match="link raw0: a raw link binds an IPv6 address"):
            await link.start(asyncio.get_running_loop(), Inbox())
        assert not link.started
        with pytest.raises(LinkError, match="cannot receive protocol 255"):
            RawDriver(LinkSpec(driver="raw"), protocols=(50, 255))
        with pytest.raises(LinkError, match="cannot bind to interface 'nosuch0'"):
            await RawDriver(LinkSpec(driver="raw", interface="nosuch0")).start(
                asyncio.get_running_loop(), Inbox())

    netns_loops(netns_single).call(scenario())


def test_a_burst_of_esp_arrives_octet_for_octet_in_few_system_calls(netns_pair, netns_loops):
    """The ESP socket is read with recvmmsg: 48 packets sent at once, of
    varying size, traffic class and hop limit, each rebuilt exactly as sent,
    in fewer reads than packets."""
    ns_a, ns_b, if_a, if_b = netns_pair
    loop_a, loop_b = netns_loops(ns_a), netns_loops(ns_b)
    got_b: dict = {}
    a = loop_a.call(start_raw({}, interface=if_a))
    b = loop_b.call(start_raw(got_b, interface=if_b))
    try:
        sent = [bytes(IPv6(src=ADDR_A, dst=ADDR_B, hlim=64 - i % 3, tc=(i * 4) & 0xFF)
                      / ESP(spi=0x4242, seq=i + 1, data=bytes(range(256)) * (1 + i % 5)))
                for i in range(48)]
        # B's loop is kept busy while A sends, so the burst waits in the socket.
        busy = asyncio.run_coroutine_threadsafe(_hold_the_loop(0.3), loop_b.loop)
        loop_a.call(_send_all(a, sent, (ADDR_B, 0)))
        busy.result(TIMEOUT)
        arrived = [loop_b.call(next_packet(got_b)) for _ in sent]
        assert [packet for packet, _, _ in arrived] == sent
        assert {endpoint for _, endpoint, _ in arrived} == {(ADDR_A, 0)}
        assert b.counters["rx"] == 48
        assert 1 <= b.counters["rx_mmsg_batches"] < 48, b.counters
    finally:
        loop_a.call(a.close())
        loop_b.call(b.close())


async def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # blocks the event loop on purpose: no reader runs meanwhile


def test_control_messages_in_another_order_are_still_read():
    """The batched reader reads the kernel's usual layout with one unpack and
    walks anything else; unknown and truncated messages are skipped."""
    import struct
    import sys

    from vmip.links.raw import _walk_control

    def cmsg(level: int, kind: int, data: bytes) -> bytes:
        body = struct.pack("=QII", 16 + len(data), level, kind) + data
        return body + bytes(-len(body) % 8)

    native = sys.byteorder
    destination = socket.inet_pton(socket.AF_INET6, ADDR_B)
    control = bytearray(cmsg(41, 67, (0x2E).to_bytes(4, native)) + cmsg(0, 99, b"junk")
                        + cmsg(41, 50, destination + (3).to_bytes(4, native))
                        + cmsg(41, 52, (7).to_bytes(4, native)))
    assert _walk_control(control, len(control)) == (destination, 7, 0x2E)
    assert _walk_control(control, 30) == (None, 64, 0x2E)   # cut inside the second one
    assert _walk_control(bytearray(16), 16) == (None, 64, 0)  # a zero-length header
