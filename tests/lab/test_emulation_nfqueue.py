"""The NFQUEUE client against the real kernel, in a namespace of its own.

Packets are UDP datagrams to loopback, queued by an OUTPUT rule.  Oracles:
scapy parses what the kernel copied, the receiving socket shows what got
through and in which order, /proc/net/netfilter/nfnetlink_queue shows what
the kernel holds and dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from vmip.lab import nfqueue as q

pytestmark = pytest.mark.root

NS = f"vt{os.getpid()}-q"
QUEUE = 77
PORT = 9100
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the body with this thread in ``ns``: sockets made there stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


def in_ns(*argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], check=True, capture_output=True,
                          text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        for tool in ("iptables", "ip6tables"):
            in_ns(tool, "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", str(PORT),
                  "-j", "NFQUEUE", "--queue-num", str(QUEUE))
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def udp_pair(request: pytest.FixtureRequest, netns: str) -> Iterator[tuple[socket.socket, ...]]:
    family = request.param
    address = "127.0.0.1" if family == socket.AF_INET else "::1"
    with entered(netns):
        receiver = socket.socket(family, socket.SOCK_DGRAM)
        sender = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((address, PORT))
    receiver.settimeout(2.0)
    sender.connect((address, PORT))
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


@contextlib.contextmanager
def bound(**options) -> Iterator[q.NfqueueSocket]:
    with entered(NS):
        sock = q.NfqueueSocket(QUEUE, **options)
    try:
        yield sock
    finally:
        sock.close()


def take(sock: q.NfqueueSocket, count: int) -> list[q.QueuedPacket]:
    packets: list[q.QueuedPacket] = []
    for _ in range(count * 4):  # bounded: each wait is at most 2 s
        if len(packets) >= count or not sock.wait_readable(2.0):
            break
        packets += [r for r in sock.receive() if isinstance(r, q.QueuedPacket)]
    assert len(packets) == count
    return packets


def received(receiver: socket.socket, count: int) -> list[bytes]:
    return [receiver.recv(2048) for _ in range(count)]


def nothing_more(receiver: socket.socket) -> bool:
    receiver.settimeout(0.2)
    try:
        receiver.recv(2048)
    except TimeoutError:
        return True
    return False


def kernel_queue() -> dict[str, int]:
    for line in in_ns("cat", "/proc/net/netfilter/nfnetlink_queue").splitlines():
        f = [int(x) for x in line.split()]
        if f[0] == QUEUE:
            return {"held": f[2], "copy_mode": f[3], "copy_range": f[4],
                    "queue_dropped": f[5]}
    return {}


def test_metadata_matches_what_scapy_reads(netns: str, udp_pair) -> None:
    sender, receiver = udp_pair
    with bound(copy_range=64) as sock:
        assert kernel_queue()["copy_mode"] == q.NFQNL_COPY_PACKET
        assert kernel_queue()["copy_range"] == 64
        sender.send(b"m" * 700)
        [packet] = take(sock, 1)
        assert len(packet.payload) == 64
        if sender.family == socket.AF_INET:
            parsed = IP(packet.payload)
            assert (packet.family, packet.hw_protocol) == (socket.AF_INET, 0x0800)
            assert packet.length == parsed.len == 20 + 8 + 700
        else:
            parsed = IPv6(packet.payload)
            assert (packet.family, packet.hw_protocol) == (socket.AF_INET6, 0x86DD)
            assert packet.length == parsed.plen + 40 == 40 + 8 + 700
        assert parsed[UDP].dport == PORT
        assert packet.outdev == 1  # lo is ifindex 1 in every namespace
        sock.verdict(packet.packet_id, q.NF_ACCEPT)
        assert received(receiver, 1) == [b"m" * 700]


def test_verdicts_can_come_later_and_in_any_order(netns: str, udp_pair) -> None:
    sender, receiver = udp_pair
    with bound() as sock:
        for payload in (b"one", b"two", b"three"):
            sender.send(payload)
        packets = take(sock, 3)
        assert nothing_more(receiver)  # all held by the kernel
        assert kernel_queue()["held"] == 3
        third, second, first = reversed(packets)
        sock.queue_verdict(third.packet_id, q.NF_ACCEPT)
        sock.queue_verdict(second.packet_id, q.NF_DROP)
        sock.queue_verdict(first.packet_id, q.NF_ACCEPT)
        sock.flush()
        receiver.settimeout(2.0)
        assert received(receiver, 2) == [b"three", b"one"]
        assert nothing_more(receiver)
        assert kernel_queue()["held"] == 0


def test_a_batch_verdict_covers_every_id_up_to_it(netns: str, udp_pair) -> None:
    sender, receiver = udp_pair
    with bound() as sock:
        for i in range(4):
            sender.send(bytes([i]))
        packets = take(sock, 4)
        sock.queue_batch_verdict(packets[2].packet_id, q.NF_ACCEPT)
        sock.flush()
        assert received(receiver, 3) == [b"\0", b"\1", b"\2"]
        assert kernel_queue()["held"] == 1
        sock.verdict(packets[3].packet_id, q.NF_ACCEPT)
        receiver.settimeout(2.0)
        assert received(receiver, 1) == [b"\3"]


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_a_full_queue_fails_open_only_when_asked(netns: str, udp_pair, fail_open: bool) -> None:
    sender, receiver = udp_pair
    with bound(max_len=2, fail_open=fail_open) as sock:
        before = kernel_queue()["queue_dropped"]
        for i in range(5):
            sender.send(bytes([i]))
        packets = take(sock, 2)
        assert kernel_queue()["held"] == 2
        if fail_open:
            # The three that found the queue full went straight through.
            assert received(receiver, 3) == [b"\2", b"\3", b"\4"]
        else:
            assert kernel_queue()["queue_dropped"] - before == 3
        assert nothing_more(receiver)
        sock.queue_batch_verdict(packets[-1].packet_id, q.NF_ACCEPT)
        sock.flush()
        receiver.settimeout(2.0)
        assert received(receiver, 2) == [b"\0", b"\1"]


def test_binding_a_queue_someone_else_holds_is_a_kernel_error(netns: str) -> None:
    with bound(), pytest.raises(q.NfqueueKernelError) as info, bound():
        pass
    assert info.value.errno == errno.EPERM


def test_closing_the_socket_unbinds_the_queue(netns: str) -> None:
    with bound():
        assert kernel_queue() != {}
    assert kernel_queue() == {}
