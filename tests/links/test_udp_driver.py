"""The udp overlay driver on IPv4 and IPv6 loopback."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import uvloop
from linktest_helpers import Inbox, LinkSpec, recvfrom, run
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.links import LinkError, RawDriver, Rfc3948Driver, UdpDriver, make_driver
from vmip.links.framing import NAT_KEEPALIVE

LOOP_FACTORIES = {"asyncio": None, "uvloop": uvloop.new_event_loop}


def onwire(seq: int = 1, size: int = 64) -> bytes:
    """An on-wire ESP packet built by scapy (CoA → HA, lab addresses)."""
    return bytes(IPv6(src="2001:db8:31::2", dst="2001:db8:10::2")
                 / ESP(spi=0x1001, seq=seq, data=bytes(size)))


async def started(bind: str | None, inbox: Inbox, **settings) -> UdpDriver:
    driver = UdpDriver(LinkSpec(bind=bind, **settings))
    await driver.start(asyncio.get_running_loop(), inbox)
    return driver


@pytest.mark.parametrize("loop_name", LOOP_FACTORIES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_round_trip_over_loopback(host, loop_name):
    async def scenario():
        inbox_a, inbox_b = Inbox(), Inbox()
        a = await started(host, inbox_a)
        b = await started(host, inbox_b)
        try:
            packet = onwire(seq=7)
            a.send(packet, (host, b.local_endpoint[1]))
            got, endpoint, via = await inbox_b.get()
            assert got == packet and via is b
            assert endpoint == (host, a.local_endpoint[1])
            assert IPv6(got)[ESP].seq == 7
            reply = onwire(seq=8, size=1300)
            b.send(reply, endpoint)                     # answer where it came from
            got, endpoint, via = await inbox_a.get()
            assert got == reply and via is a and endpoint == (host, b.local_endpoint[1])
            assert a.counters["tx"] == a.counters["rx"] == 1
            assert b.counters["tx"] == b.counters["rx"] == 1
        finally:
            await a.close()
            await b.close()

    run(scenario, loop_factory=LOOP_FACTORIES[loop_name])


def test_dual_stack_link_serves_ipv4_and_ipv6_peers():
    async def scenario():
        inbox_hub, inbox4, inbox6 = Inbox(), Inbox(), Inbox()
        hub = await started(None, inbox_hub)          # no bind: dual-stack [::]
        peer4 = await started("127.0.0.1", inbox4)
        peer6 = await started("::1", inbox6)
        try:
            port = hub.local_endpoint[1]
            peer4.send(onwire(1), ("127.0.0.1", port))
            _, from4, _ = await inbox_hub.get()
            # IPv4 peers are reported as plain IPv4, never ::ffff:-mapped.
            assert from4 == ("127.0.0.1", peer4.local_endpoint[1])
            peer6.send(onwire(2), ("::1", port))
            _, from6, _ = await inbox_hub.get()
            assert from6 == ("::1", peer6.local_endpoint[1])
            hub.send(onwire(3), from4)
            hub.send(onwire(4), from6)
            assert IPv6((await inbox4.get())[0])[ESP].seq == 3
            assert IPv6((await inbox6.get())[0])[ESP].seq == 4
        finally:
            for driver in (hub, peer4, peer6):
                await driver.close()

    run(scenario)


def test_malformed_datagrams_are_dropped_and_counted_per_reason():
    async def scenario():
        inbox = Inbox()
        link = await started("::1", inbox)
        raw = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            target = ("::1", link.local_endpoint[1])
            good = onwire(9)
            ipv4_header = bytes.fromhex("45000054") + bytes(80)
            for datagram in (b"", good[:39], ipv4_header, good[:-3], good + b"\x00",
                             NAT_KEEPALIVE, good):
                raw.sendto(datagram, target)
            packet, _, _ = await inbox.get()
            assert packet == good
            assert inbox.queue.empty()
            assert link.counters["rx"] == 1
            assert link.counters["rx_drop_short"] == 2
            assert link.counters["rx_drop_version"] == 1
            assert link.counters["rx_drop_length"] == 2
            assert link.counters["rx_keepalive"] == 1
        finally:
            raw.close()
            await link.close()

    run(scenario)


def test_a_failing_handler_is_counted_and_reading_goes_on():
    async def scenario():
        inbox = Inbox()
        calls = []

        def handler(packet, endpoint, driver):
            calls.append(packet)
            if len(calls) == 1:
                raise RuntimeError("bug in the node")
            inbox(packet, endpoint, driver)

        link = UdpDriver(LinkSpec(bind="127.0.0.1"))
        await link.start(asyncio.get_running_loop(), handler)
        sender = await started("127.0.0.1", Inbox())
        try:
            sender.send(onwire(1), link.local_endpoint)
            sender.send(onwire(2), link.local_endpoint)
            packet, _, _ = await inbox.get()
            assert IPv6(packet)[ESP].seq == 2
            assert link.counters["rx_handler_error"] == 1
        finally:
            await link.close()
            await sender.close()

    run(scenario)


def test_keepalive_is_one_ff_octet_sent_to_idle_targets():
    async def scenario():
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        link = await started("127.0.0.1", Inbox(), keepalive=0.05)
        try:
            link.add_keepalive_target(listener.getsockname())
            datagram, source = await recvfrom(listener, 100, 5)
            assert datagram == b"\xff"
            assert source == link.local_endpoint
            datagram, _ = await recvfrom(listener, 100, 5)
            assert datagram == b"\xff"                 # periodic
            assert link.counters["tx_keepalive"] >= 2
            assert link.counters["tx"] == 0            # keepalives are not packets
        finally:
            listener.close()
            await link.close()

    run(scenario)


def test_keepalives_are_off_when_interval_is_zero():
    async def scenario():
        link = await started("127.0.0.1", Inbox(), keepalive=0)
        link.add_keepalive_target(("127.0.0.1", 9))   # accepted, ignored
        assert link.keepalive_interval == 0
        await link.close()

    run(scenario)


def test_send_problems_are_counted_never_raised():
    async def scenario():
        link = await started("127.0.0.1", Inbox())
        link.send(onwire(), ("::1", 6275))                     # IPv6 on an IPv4 socket
        assert link.counters["tx_drop_family"] == 1
        link.send(b"\x60" + bytes(70000), ("127.0.0.1", 9))    # larger than any datagram
        assert link.counters["tx_error_emsgsize"] == 1
        await link.close()
        link.send(onwire(), ("127.0.0.1", 9))
        assert link.counters["tx_drop_closed"] == 1
        assert link.counters["tx"] == 0
        await link.close()                                     # twice is fine

    run(scenario)


def test_bind_failures_raise_link_error_naming_the_link():
    async def scenario():
        first = await started("127.0.0.1", Inbox())
        try:
            clash = UdpDriver(LinkSpec(name="wifi0", bind="127.0.0.1",
                                       port=first.local_endpoint[1]))
            with pytest.raises(LinkError, match=r"link wifi0: cannot bind udp socket to "
                                                r"127\.0\.0\.1:\d+: Address already in use"):
                await clash.start(asyncio.get_running_loop(), Inbox())
            with pytest.raises(LinkError, match="bind must be an IP address"):
                await UdpDriver(LinkSpec(bind="wifi0")).start(asyncio.get_running_loop(),
                                                             Inbox())
            with pytest.raises(LinkError, match="already started"):
                await first.start(asyncio.get_running_loop(), Inbox())
        finally:
            await first.close()

    run(scenario)


@pytest.mark.root
def test_interface_binding():
    async def scenario():
        inbox = Inbox()
        link = await started(None, inbox, interface="lo")
        sender = await started("::1", Inbox())
        try:
            sender.send(onwire(5), ("::1", link.local_endpoint[1]))
            packet, _, _ = await inbox.get()
            assert IPv6(packet)[ESP].seq == 5
            with pytest.raises(LinkError, match="cannot bind to interface 'nosuch0'"):
                await UdpDriver(LinkSpec(interface="nosuch0")).start(
                    asyncio.get_running_loop(), Inbox())
        finally:
            await link.close()
            await sender.close()

    run(scenario)


def test_bursts_are_drained_in_batches_and_send_many_keeps_order():
    count = 500

    async def scenario():
        inbox = Inbox()
        link = UdpDriver(LinkSpec(bind="::1"), batch=8)
        await link.start(asyncio.get_running_loop(), inbox)
        sender = await started("::1", Inbox())
        try:
            target = ("::1", link.local_endpoint[1])
            sender.send_many((onwire(seq), target) for seq in range(1, count + 1))
            seqs = [IPv6((await inbox.get())[0])[ESP].seq for _ in range(count)]
            assert seqs == list(range(1, count + 1))
            assert sender.counters["tx"] == link.counters["rx"] == count
        finally:
            await link.close()
            await sender.close()

    run(scenario)


@pytest.mark.parametrize("loop_name", LOOP_FACTORIES)
def test_loopback_round_trip_rate(loop_name, record_property):
    """Ping-pong of 1400-octet packets between two links: every packet comes
    back; the rate is recorded (docs/links.md quotes it)."""
    rounds = 3000

    async def scenario():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        state = {"n": 0}

        def echo(packet, endpoint, driver):
            driver.send(packet, endpoint)

        def pong(packet, endpoint, driver):
            state["n"] += 1
            if state["n"] == rounds:
                done.set_result(None)
            else:
                driver.send(packet, endpoint)

        a = UdpDriver(LinkSpec(bind="127.0.0.1"))
        b = UdpDriver(LinkSpec(bind="127.0.0.1"))
        await a.start(loop, pong)
        await b.start(loop, echo)
        try:
            began = time.perf_counter()
            a.send(onwire(size=1350), b.local_endpoint)
            await asyncio.wait_for(done, 20)
            elapsed = time.perf_counter() - began
        finally:
            await a.close()
            await b.close()
        return rounds / elapsed

    rate = run(scenario, loop_factory=LOOP_FACTORIES[loop_name], timeout=30)
    record_property("round_trips_per_second", round(rate))
    print(f"\n{loop_name}: {rate:,.0f} round trips/s over loopback")
    assert rate > 0


def test_make_driver_picks_the_class_and_refuses_unknown_drivers():
    assert type(make_driver(LinkSpec(driver="udp"))) is UdpDriver
    assert type(make_driver(LinkSpec(driver="raw"))) is RawDriver
    assert type(make_driver(LinkSpec(driver="rfc3948"))) is Rfc3948Driver
    with pytest.raises(LinkError, match="unknown driver 'wireguard'; write one of udp, raw"):
        make_driver(LinkSpec(name="x", driver="wireguard"))
    with pytest.raises(LinkError, match="batch"):
        make_driver(LinkSpec(), batch=0)
