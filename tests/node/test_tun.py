"""vmip.node.tun: the TUN device, inside a network namespace the test owns.

Each root test creates its own namespace ``vt<pid>-t``, moves the test's
thread into it (setns(2) affects only the calling thread), and always moves
back and deletes the namespace, also on failure.  The kernel (ip, ping, UDP
sockets) and scapy are the oracles.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    IPv6,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
)
from scapy.packet import Raw

from vmip.node.tun import (
    TX_QUEUE_LEN,
    IcmpErrorRateLimiter,
    TunDevice,
    TunError,
    packet_too_big,
)
from vmip.wire.errors import WireError

pytestmark = pytest.mark.timeout(60)

CLONE_NEWNET = 0x40000000
TUN_NAME = "vtun0"
TUN_V6 = "2001:db8:1::1/64"
TUN_V4 = "192.0.2.1/24"
ROUTED_V6 = "2001:db8:99::/48"
ROUTED_V4 = "198.51.100.0/24"
FAR_HOST = "2001:db8:99::7"  # reached through the TUN by the route above
SRC = bytes.fromhex("20010db8000100000000000000000001")  # 2001:db8:1::1

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace; the test's thread runs inside it until teardown."""
    name = f"vt{os.getpid()}-t"
    subprocess.run(["ip", "netns", "add", name], check=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(home)
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def tun(netns) -> Iterator[TunDevice]:
    device = TunDevice.open(TUN_NAME, [TUN_V6, TUN_V4], mtu=1400, routes=[ROUTED_V6, ROUTED_V4])
    try:
        yield device
    finally:
        device.close()


def _ip_json(netns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", "netns", "exec", netns, "ip", "-j", *args],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return json.loads(out or "[]")


def _wait_readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _read_until(tun: TunDevice, want, timeout: float = 10.0, max_packets: int = 10_000):
    """Read TUN packets until ``want(scapy_packet)`` holds; other traffic (MLD, RS) is skipped."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < max_packets:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _wait_readable(tun.fileno(), remaining):
            break
        for raw in tun.read_batch():
            seen += 1
            if raw[0] >> 4 == 6:
                packet = IPv6(raw)
                if want(packet):
                    return raw, packet
    pytest.fail("the expected packet never came out of the TUN")


def _run(loop_name, main):
    """Run *main* on a fresh loop of the kind named (asyncio.Runner is 3.11+)."""
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        return uvloop.run(main)
    return asyncio.run(main)


# -- configuration -----------------------------------------------------------


@pytest.mark.root
def test_tun_comes_up_with_its_addresses_mtu_and_routes(netns, tun):
    (link,) = _ip_json(netns, "link", "show", "dev", TUN_NAME)
    assert link["mtu"] == 1400
    assert "UP" in link["flags"]
    # A short transmit queue: a ping does not wait behind 500 bulk packets.
    assert link["txqlen"] == TX_QUEUE_LEN == 64
    assert link["link_type"] == "none"  # a TUN (layer 3), not a TAP
    assert link["ifindex"] == tun.index

    (addrs,) = _ip_json(netns, "addr", "show", "dev", TUN_NAME)
    by_address = {(a["local"], a["prefixlen"]): a for a in addrs["addr_info"]}
    assert ("2001:db8:1::1", 64) in by_address
    assert ("192.0.2.1", 24) in by_address
    assert not by_address[("2001:db8:1::1", 64)].get("tentative")  # usable at once (no DAD)

    v6_routes = {r["dst"] for r in _ip_json(netns, "-6", "route", "show", "dev", TUN_NAME)}
    v4_routes = {r["dst"] for r in _ip_json(netns, "-4", "route", "show", "dev", TUN_NAME)}
    assert {"2001:db8:99::/48", "2001:db8:1::/64"} <= v6_routes
    assert {"198.51.100.0/24", "192.0.2.0/24"} <= v4_routes
    (lookup,) = _ip_json(netns, "-6", "route", "get", FAR_HOST)
    assert lookup["dev"] == TUN_NAME


@pytest.mark.root
def test_the_kernel_sends_nothing_of_its_own_into_the_tun(netns, tun):
    """No multicast on the point-to-point TUN: no Router Solicitation
    (sent within a second of link-up, RFC 4861 §6.3.7) and no MLD report
    from the kernel for the node to drop."""
    (link,) = _ip_json(netns, "link", "show", "dev", TUN_NAME)
    assert "MULTICAST" not in link["flags"]
    seen: list[bytes] = []
    deadline = time.monotonic() + 1.5
    while (remaining := deadline - time.monotonic()) > 0:
        if _wait_readable(tun.fileno(), remaining):
            seen += tun.read_batch()
    assert seen == [], [IPv6(raw).summary() for raw in seen]


@pytest.mark.root
def test_default_route_and_no_addresses(netns):
    with TunDevice.open("vtun1", [], mtu=1280, routes=["::/0"]) as device:
        (lookup,) = _ip_json(netns, "-6", "route", "get", "2001:db8:ffff::1")
        assert lookup["dev"] == "vtun1"
        assert device.status()["routes"] == ["::/0"]


@pytest.mark.root
def test_close_removes_the_device(netns):
    device = TunDevice.open(TUN_NAME, [TUN_V6])
    assert _ip_json(netns, "link", "show", "dev", TUN_NAME)
    device.close()
    result = subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "show", "dev", TUN_NAME],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "does not exist" in result.stderr
    device.close()  # a second close is harmless
    with pytest.raises(TunError, match="closed"):
        device.read_batch()
    with pytest.raises(TunError, match="closed"):
        device.write(b"\x60" + bytes(39))


@pytest.mark.root
def test_the_same_name_cannot_be_opened_twice(netns, tun):
    with pytest.raises(TunError, match="in use"):
        TunDevice.open(TUN_NAME, [])


@pytest.mark.root
def test_failed_configuration_removes_the_device(netns):
    with pytest.raises(TunError, match="add address 2001:db8:1::1/64"):
        TunDevice.open("vtun2", [TUN_V6, TUN_V6])  # the second add fails: File exists
    result = subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "show", "dev", "vtun2"],
                            capture_output=True, timeout=10)
    assert result.returncode != 0


@pytest.mark.root
def test_addresses_receive_as_soon_as_open_returns(netns):
    """Linux installs an IPv6 address's local route a moment after adding it; open() waits.

    Without that wait a packet to the new address is dropped about one time
    in ten here, so the test opens the device several times.
    """
    for attempt in range(8):
        with TunDevice.open(TUN_NAME, [TUN_V6]) as device:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as receiver:
                receiver.bind(("2001:db8:1::1", 7000))
                receiver.settimeout(5)
                datagram = IPv6(src="2001:db8:1::9", dst="2001:db8:1::1") / UDP(
                    sport=7001, dport=7000) / Raw(b"attempt %d" % attempt)
                assert device.write(bytes(datagram))
                assert receiver.recv(100) == b"attempt %d" % attempt


@pytest.mark.root
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_open_from_inside_a_running_event_loop(netns, loop_name):
    # The node opens its TUN from its event loop; pyroute2's synchronous API
    # cannot run inside one, so open() must cope.
    async def scenario() -> list[dict]:
        with TunDevice.open(TUN_NAME, [TUN_V6], routes=[ROUTED_V6]):
            return _ip_json(netns, "-6", "route", "show", "dev", TUN_NAME)

    routes = _run(loop_name, scenario())
    assert "2001:db8:99::/48" in {r["dst"] for r in routes}


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "bad interface name"),
    ({"name": "x" * 16}, "bad interface name"),
    ({"name": "a/b"}, "bad interface name"),
    ({"addresses": ["2001:db8::zz/64"]}, "bad TUN address"),
    ({"routes": ["2001:db8::1/48"]}, "bad TUN route"),  # host bits set: a typo
    ({"addresses": [TUN_V6], "mtu": 1279}, "1280"),
    ({"addresses": [TUN_V4], "mtu": 67}, "out of range"),
    ({"mtu": 70000}, "out of range"),
])
def test_bad_arguments_are_refused_before_touching_the_kernel(kwargs, message):
    args = {"name": "vtun9", "addresses": [], "mtu": 1400, "routes": [], **kwargs}
    with pytest.raises(TunError, match=message):
        TunDevice.open(**args)


# -- packets -------------------------------------------------------------------


@pytest.mark.root
def test_ping_through_the_tun_with_read_batch(netns, tun):
    ping = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-6", "-n", "-c", "1",
                             "-W", "10", FAR_HOST],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _, request = _read_until(tun, lambda p: ICMPv6EchoRequest in p and p.dst == FAR_HOST)
        assert request.src == "2001:db8:1::1"  # the kernel picked the TUN's address
        echo = request[ICMPv6EchoRequest]
        reply = IPv6(src=request.dst, dst=request.src) / ICMPv6EchoReply(
            id=echo.id, seq=echo.seq, data=echo.data)
        assert tun.write(bytes(reply)) is True
        output, _ = ping.communicate(timeout=15)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert ping.returncode == 0, output
    assert "1 received" in output
    assert tun.counters.tx_packets == 1


@pytest.mark.root
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_ping_through_the_tun_with_the_event_loop(netns, tun, loop_name):
    async def scenario() -> tuple[int, str, list[int]]:
        batch_sizes: list[int] = []
        answered = asyncio.Event()

        def on_packets(batch: list[bytes]) -> None:
            batch_sizes.append(len(batch))
            for raw in batch:
                if raw[0] >> 4 != 6:
                    continue
                packet = IPv6(raw)
                if ICMPv6EchoRequest in packet and packet.dst == FAR_HOST:
                    echo = packet[ICMPv6EchoRequest]
                    tun.write(bytes(IPv6(src=packet.dst, dst=packet.src) / ICMPv6EchoReply(
                        id=echo.id, seq=echo.seq, data=echo.data)))
                    answered.set()

        tun.attach(on_packets, batch=16)
        try:
            ping = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", netns, "ping", "-6", "-n", "-c", "3", "-i", "0.2",
                "-W", "10", FAR_HOST,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                await asyncio.wait_for(answered.wait(), 15)
                output, _ = await asyncio.wait_for(ping.communicate(), 15)
            finally:
                if ping.returncode is None:
                    ping.kill()
                    await ping.wait()
        finally:
            tun.detach()
        return ping.returncode, output.decode(), batch_sizes

    returncode, output, batch_sizes = _run(loop_name, scenario())
    assert returncode == 0, output
    assert "3 received" in output
    assert batch_sizes and max(batch_sizes) <= 16


@pytest.mark.root
def test_reads_are_drained_in_batches(netns, tun):
    count, port = 20, 40000
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        for n in range(count):
            sender.sendto(b"batch-%02d" % n, (FAR_HOST, port))
    assert _wait_readable(tun.fileno(), 10)
    first = tun.read_batch(8)
    assert len(first) == 8  # at least 20 are waiting; never more than asked
    packets = list(first)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        more = tun.read_batch(8)
        if not more:
            break
        packets += more
    payloads = sorted(bytes(IPv6(p)[UDP].payload) for p in packets
                      if p[0] >> 4 == 6 and UDP in IPv6(p) and IPv6(p)[UDP].dport == port)
    assert payloads == [b"batch-%02d" % n for n in range(count)]


@pytest.mark.root
def test_ipv4_packets_pass_too(netns, tun):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"v4", ("198.51.100.9", 40001))
    assert _wait_readable(tun.fileno(), 10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for raw in tun.read_batch():
            if raw[0] >> 4 == 4:
                packet = IP(raw)
                assert (packet.dst, packet[UDP].dport, bytes(packet[UDP].payload)) == \
                    ("198.51.100.9", 40001, b"v4")
                return
        _wait_readable(tun.fileno(), max(0.0, deadline - time.monotonic()))
    pytest.fail("no IPv4 packet came out of the TUN")


@pytest.mark.root
def test_a_packet_that_is_not_ip_is_refused_and_counted(netns, tun):
    assert tun.write(b"\x00" * 40) is False
    assert tun.counters.tx_errors == 1


# -- Packet Too Big --------------------------------------------------------------


def _big_udp(size: int) -> bytes:
    return bytes(IPv6(src="2001:db8:1::1", dst=FAR_HOST) / UDP(sport=5000, dport=6000)
                 / Raw((bytes(range(256)) * (size // 256 + 1))[:size]))


def _checksum_is_valid(packet: IPv6) -> bool:
    icmp = packet[ICMPv6PacketTooBig]
    sent = icmp.cksum
    rebuilt = IPv6(bytes(packet))
    del rebuilt[ICMPv6PacketTooBig].cksum
    return IPv6(bytes(rebuilt))[ICMPv6PacketTooBig].cksum == sent


@pytest.mark.parametrize("payload", [10, 1200, 1400, 9000])
def test_packet_too_big_checked_by_scapy(payload):
    invoking = _big_udp(payload)
    router = bytes.fromhex("20010db8000100000000000000000002")
    raw = packet_too_big(invoking, 1300, router)
    packet = IPv6(raw)
    assert len(raw) <= 1280  # RFC 4443 §2.4(c)
    assert packet.src == "2001:db8:1::2"
    assert packet.dst == "2001:db8:1::1"  # back to the sender of the invoking packet
    assert packet.nh == 58 and packet.plen == len(raw) - 40
    ptb = packet[ICMPv6PacketTooBig]
    assert (ptb.type, ptb.code, ptb.mtu) == (2, 0, 1300)
    assert _checksum_is_valid(packet)
    quoted = bytes(ptb.payload)
    assert quoted == invoking[:1280 - 48]  # as much as fits, from the start
    if len(invoking) <= 1280 - 48:
        assert quoted == invoking


@given(st.binary(max_size=100))
def test_packet_too_big_refuses_anything_but_ipv6(junk):
    if len(junk) >= 40 and junk[0] >> 4 == 6:
        return
    with pytest.raises(WireError):
        packet_too_big(junk, 1280, SRC)


@pytest.mark.root
def test_packet_too_big_sets_the_kernels_path_mtu(netns, tun):
    """The kernel is the oracle: it accepts our PTB only if checksum and quote are right."""
    IPV6_MTU = 24  # linux/in6.h: the path MTU of a connected socket
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.connect((FAR_HOST, 6000))
        assert sender.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) == 1400
        sender.send(b"x" * 1300)
        raw, _ = _read_until(tun, lambda p: UDP in p and p[UDP].dport == 6000)
        assert len(raw) == 1348
        assert tun.send_packet_too_big(raw, 1300) is True
        deadline = time.monotonic() + 10
        while sender.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) != 1300:
            assert time.monotonic() < deadline, "the kernel ignored our Packet Too Big"
            # The kernel signals no event for a PMTU change that we could await.
            time.sleep(0.01)
    assert tun.counters.icmp_errors_sent == 1


@pytest.mark.root
def test_no_packet_too_big_about_an_icmpv6_error(netns, tun):
    error = bytes(IPv6(src="2001:db8:1::1", dst=FAR_HOST) / ICMPv6DestUnreach()
                  / Raw(b"\x60" + bytes(60)))
    assert tun.send_packet_too_big(error, 1300) is False  # RFC 4443 §2.4(e.1)
    multicast_source = _big_udp(100).replace(SRC, bytes.fromhex("ff02" + "00" * 13 + "01"), 1)
    assert tun.send_packet_too_big(multicast_source, 1300) is False  # §2.4(e.6)
    assert tun.counters.icmp_errors_sent == 0
    assert tun.counters.icmp_errors_suppressed == 2
    assert tun.counters.tx_packets == 0


@pytest.mark.root
def test_packet_too_big_is_rate_limited(netns, tun):
    tun.icmp_rate_limiter = IcmpErrorRateLimiter(rate_per_second=1, burst=3)
    invoking = _big_udp(1400)
    sent = [tun.send_packet_too_big(invoking, 1300, now=100.0) for _ in range(5)]
    assert sent == [True, True, True, False, False]
    assert tun.send_packet_too_big(invoking, 1300, now=101.0) is True


def test_rate_limiter_refills_over_time():
    limiter = IcmpErrorRateLimiter(rate_per_second=10, burst=2)
    assert [limiter.allow(0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow(0.05) is False  # half a token
    assert limiter.allow(0.1) is True   # one token after 100 ms at 10/s
    assert [limiter.allow(60.0) for _ in range(3)] == [True, True, False]  # capped at burst
    assert limiter.allow(59.0) is False  # time going backwards adds nothing


# -- the netlink notifications open() waits for -------------------------------------


def _rtm_newroute(dst: str, dst_len: int = 128, route_type: int = 2, family: int = 10) -> bytes:
    """An RTM_NEWROUTE message as pyroute2 (an independent encoder) builds it."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    message = rtmsg()
    message["header"]["type"] = 24
    message["family"], message["dst_len"], message["type"] = family, dst_len, route_type
    message["table"] = 255
    message["attrs"] = [("RTA_TABLE", 255), ("RTA_DST", dst), ("RTA_OIF", 3)]
    message.encode()
    return bytes(message.data)


def test_local_route_notifications_are_recognised():
    from vmip.node.tun import _local_route_destinations

    batch = (_rtm_newroute("2001:db8:1::1")
             + _rtm_newroute("2001:db8:1::", dst_len=64, route_type=1)   # the prefix route
             + _rtm_newroute("2001:db8:1::2", route_type=1)              # unicast, not local
             + _rtm_newroute("2001:db8:1::3"))
    assert list(_local_route_destinations(batch)) == [
        socket.inet_pton(socket.AF_INET6, "2001:db8:1::1"),
        socket.inet_pton(socket.AF_INET6, "2001:db8:1::3"),
    ]


def _mutated(message: bytes, position: int, value: int, cut: int) -> bytes:
    data = bytearray(message)
    data[position % len(data)] = value
    return bytes(data[:cut])


@given(st.binary(max_size=300) | st.builds(
    _mutated, st.just(_rtm_newroute("2001:db8:1::1") * 2), st.integers(0, 127),
    st.integers(0, 255), st.integers(0, 128)))
def test_local_route_parser_survives_any_bytes(data):
    from vmip.node.tun import _local_route_destinations

    for destination in _local_route_destinations(data):
        assert len(destination) == 16
