"""UDP segmentation offload in the udp driver: send_many and UDP_GRO reads.

The oracle is the kernel: a plain socket without UDP_GRO receives what the
wire carries, one datagram per packet, and must see exactly what per-packet
sends would have produced.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from linktest_helpers import Inbox, LinkSpec, run
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.links import Rfc3948Driver, UdpDriver
from vmip.links.udp import SOL_UDP, UDP_GRO, UDP_SEGMENT


def onwire(seq: int, size: int) -> bytes:
    """An on-wire ESP packet built by scapy, *size* octets of ESP data."""
    return bytes(IPv6(src="2001:db8:31::2", dst="2001:db8:10::2")
                 / ESP(spi=0x1001, seq=seq, data=bytes([seq % 256]) * size))


def plain_receiver(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5)
    return sock


def drain(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_run_of_equal_packets_leaves_as_separate_datagrams(host):
    async def scenario():
        driver = UdpDriver(LinkSpec(bind=host))
        await driver.start(asyncio.get_running_loop(), Inbox())
        receiver = plain_receiver(host)
        try:
            packets = [onwire(seq, 1300) for seq in range(1, 20)] + [onwire(20, 200)]
            endpoint = (host, receiver.getsockname()[1])
            driver.send_many([(packet, endpoint) for packet in packets])
            assert drain(receiver, len(packets)) == packets
            assert driver.counters["tx"] == len(packets)
            assert driver.counters["tx_gso_batches"] == 1
        finally:
            receiver.close()
            await driver.close()

    run(scenario)


def test_runs_break_on_endpoint_and_size_changes():
    async def scenario():
        driver = UdpDriver(LinkSpec(bind="127.0.0.1"))
        await driver.start(asyncio.get_running_loop(), Inbox())
        first, second = plain_receiver("127.0.0.1"), plain_receiver("127.0.0.1")
        try:
            to_first = ("127.0.0.1", first.getsockname()[1])
            to_second = ("127.0.0.1", second.getsockname()[1])
            plan = [(onwire(1, 900), to_first), (onwire(2, 900), to_first),
                    (onwire(3, 100), to_first),       # shorter: ends the run
                    (onwire(4, 900), to_first),       # a new run after a short one
                    (onwire(5, 900), to_second),
                    (onwire(6, 1000), to_second),     # larger: cannot join
                    (onwire(7, 1000), to_second), (onwire(8, 1000), to_first)]
            driver.send_many(plan)
            expect_first = [p for p, e in plan if e == to_first]
            expect_second = [p for p, e in plan if e == to_second]
            assert drain(first, len(expect_first)) == expect_first
            assert drain(second, len(expect_second)) == expect_second
            assert driver.counters["tx"] == len(plan)
            # Runs of two or more: (1,2,3) and (6,7).
            assert driver.counters["tx_gso_batches"] == 2
        finally:
            first.close()
            second.close()
            await driver.close()

    run(scenario)


def test_a_coalesced_read_is_delivered_packet_by_packet_in_order():
    async def scenario():
        inbox = Inbox()
        driver = UdpDriver(LinkSpec(bind="::1"))
        await driver.start(asyncio.get_running_loop(), inbox)
        sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            packets = [onwire(seq, 1200) for seq in range(1, 31)] + [onwire(31, 40)]
            # One GSO send built here, independently of the driver's send path.
            sender.sendmsg(packets, [(SOL_UDP, UDP_SEGMENT, len(packets[0]).to_bytes(2, "little"))],
                           0, driver.local_endpoint)
            got = [(await inbox.get())[0] for _ in packets]
            assert got == packets
            assert driver.counters["rx"] == len(packets)
            assert driver.counters["rx_gro_batches"] >= 1
        finally:
            sender.close()
            await driver.close()

    run(scenario)


def test_rfc3948_keeps_its_own_per_datagram_paths():
    async def scenario():
        driver = Rfc3948Driver(LinkSpec(driver="rfc3948", bind="127.0.0.1"))
        await driver.start(asyncio.get_running_loop(), Inbox())
        try:
            assert not driver._gso and not driver._gro
            assert driver._sock.getsockopt(SOL_UDP, UDP_GRO) == 0
        finally:
            await driver.close()

    run(scenario)
