"""The rfc3948 driver on loopback: ESP vs IKE vs keepalive (RFC 3948 §2)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from linktest_helpers import Inbox, LinkSpec, recvfrom, run
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.links import Rfc3948Driver

MARKER = b"\x00\x00\x00\x00"
IKE_MESSAGE = bytes(range(1, 29)) + b"IKE_SA_INIT body"   # 28-octet header + body


def esp(spi: int = 0x2001, seq: int = 1) -> bytes:
    return bytes(ESP(spi=spi, seq=seq, data=b"\xab" * 40))


async def start(bind, inbox: Inbox, ike: Inbox | None = None, **settings) -> Rfc3948Driver:
    driver = Rfc3948Driver(LinkSpec(driver="rfc3948", bind=bind, **settings))
    on_ike = None
    if ike is not None:
        def on_ike(message, endpoint):
            ike.queue.put_nowait((message, endpoint))
    await driver.start(asyncio.get_running_loop(), inbox, on_ike=on_ike)
    return driver


@pytest.mark.parametrize("bind", [None, "0.0.0.0", "127.0.0.2"])
def test_esp_over_ipv4_becomes_an_ipv4_mapped_onwire_packet(bind):
    """Sent from 127.0.0.1 to 127.0.0.2: the rebuilt header must carry both,
    mapped, whether the socket is dual-stack, IPv4-wildcard or bound."""
    async def scenario():
        inbox = Inbox()
        link = await start(bind, inbox)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        try:
            payload = esp(seq=3)
            peer.sendto(payload, ("127.0.0.2", link.local_endpoint[1]))
            packet, endpoint, via = await inbox.get()
            assert via is link
            assert endpoint == ("127.0.0.1", peer.getsockname()[1])
            parsed = IPv6(packet)
            assert (parsed.src, parsed.dst, parsed.nh, parsed.plen) == \
                ("::ffff:127.0.0.1", "::ffff:127.0.0.2", 50, len(payload))
            assert (parsed[ESP].spi, parsed[ESP].seq) == (0x2001, 3)
            assert packet[40:] == payload
        finally:
            peer.close()
            await link.close()

    run(scenario)


def test_esp_over_ipv6_loopback():
    async def scenario():
        inbox = Inbox()
        link = await start("::", inbox)
        peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        peer.bind(("::1", 0))
        try:
            peer.sendto(esp(seq=4), ("::1", link.local_endpoint[1]))
            packet, endpoint, _ = await inbox.get()
            parsed = IPv6(packet)
            assert (parsed.src, parsed.dst, parsed.nh) == ("::1", "::1", 50)
            assert parsed[ESP].seq == 4
            assert endpoint == ("::1", peer.getsockname()[1])
        finally:
            peer.close()
            await link.close()

    run(scenario)


def test_marker_keepalive_and_junk_are_told_apart():
    async def scenario():
        inbox, ike = Inbox(), Inbox()
        link = await start("127.0.0.1", inbox, ike)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        try:
            target = link.local_endpoint
            for datagram in (MARKER + IKE_MESSAGE, b"\xff", b"\x00\x00\x10",
                             b"\x12\x34\x56\x78\x00", MARKER, esp(seq=9)):
                peer.sendto(datagram, target)
            message, endpoint = await asyncio.wait_for(ike.queue.get(), 5)
            assert message == IKE_MESSAGE                      # marker stripped
            assert endpoint == peer.getsockname()
            packet, _, _ = await inbox.get()                   # only the ESP packet
            assert IPv6(packet)[ESP].seq == 9
            assert inbox.queue.empty() and ike.queue.empty()
            assert link.counters["rx"] == 1
            assert link.counters["rx_ike"] == 1
            assert link.counters["rx_keepalive"] == 1
            assert link.counters["rx_drop_short"] == 2
            assert link.counters["rx_drop_ike_empty"] == 1
        finally:
            peer.close()
            await link.close()

    run(scenario)


def test_ike_without_a_handler_is_counted():
    async def scenario():
        inbox = Inbox()
        link = await start("127.0.0.1", inbox)               # no on_ike
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            peer.sendto(MARKER + IKE_MESSAGE, link.local_endpoint)
            peer.sendto(esp(), link.local_endpoint)
            await inbox.get()
            assert link.counters["rx_drop_ike_unhandled"] == 1
        finally:
            peer.close()
            await link.close()

    run(scenario)


def test_send_strips_the_ipv6_header_and_send_ike_adds_the_marker():
    async def scenario():
        link = await start("127.0.0.1", Inbox())
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        try:
            payload = esp(seq=5)
            onwire = bytes(IPv6(src="::ffff:127.0.0.1", dst="::ffff:127.0.0.1") / ESP(
                spi=0x2001, seq=5, data=b"\xab" * 40))
            assert onwire[40:] == payload
            link.send(onwire, peer.getsockname())
            datagram, _ = await recvfrom(peer, 2000, 5)
            assert datagram == payload
            link.send_ike(IKE_MESSAGE, peer.getsockname())
            datagram, _ = await recvfrom(peer, 2000, 5)
            assert datagram == MARKER + IKE_MESSAGE
            assert (link.counters["tx"], link.counters["tx_ike"]) == (1, 1)
        finally:
            peer.close()
            await link.close()

    run(scenario)


def test_only_bare_esp_packets_can_be_sent():
    async def scenario():
        link = await start("127.0.0.1", Inbox())
        try:
            target = ("127.0.0.1", 9)
            link.send(bytes(IPv6(dst="::1") / UDP()), target)           # not ESP
            onwire = bytes(IPv6(src="::1", dst="::1") / ESP(spi=1, seq=1, data=b"x" * 8))
            link.send(onwire[:-1], target)                                # truncated
            link.send(onwire[:44], target)                                # not even SPI+seq
            assert link.counters["tx_drop_not_esp"] == 2
            assert link.counters["tx_drop_length"] == 1
            assert link.counters["tx"] == 0
        finally:
            await link.close()

    run(scenario)


def test_two_rfc3948_links_reproduce_the_onwire_packet():
    """Sender strips, receiver rebuilds: with the lab's defaults (hop limit
    64, no traffic class or flow label) the packet arrives identical."""
    async def scenario():
        inbox_a, inbox_b = Inbox(), Inbox()
        a = await start("127.0.0.1", inbox_a)
        b = await start("127.0.0.2", inbox_b)
        try:
            onwire = bytes(IPv6(src="::ffff:127.0.0.1", dst="::ffff:127.0.0.2", hlim=64)
                           / ESP(spi=0x3003, seq=77, data=b"\x01" * 100))
            a.send(onwire, b.local_endpoint)
            packet, endpoint, _ = await inbox_b.get()
            assert packet == onwire
            assert endpoint == a.local_endpoint
        finally:
            await a.close()
            await b.close()

    run(scenario)
