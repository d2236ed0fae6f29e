"""tools/bench/netbench/floor_relay.py, the benchmark's reference relay, without root:
two relays joined by loopback UDP, each with a pipe standing in for its TUN."""

from __future__ import annotations

import secrets
import select
import socket
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))

from netbench.floor_relay import KEY_FILE_OCTETS, Relay, parse_args


class Side:
    """A relay whose TUN is one end of a datagram socket pair (packet boundaries
    kept, one descriptor both ways, as a TUN's); the host holds the other end."""

    def __init__(self, key: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.tun, self.host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tun.setblocking(False)
        self.host.setblocking(False)
        self.key = key
        self.relay: Relay | None = None

    def connect(self, peer: Side) -> None:
        self.relay = Relay(self.tun.fileno(), self.sock, peer.sock.getsockname(), self.key)

    def close(self) -> None:
        for sock in (self.sock, self.tun, self.host):
            sock.close()


@pytest.fixture
def pair():
    key = secrets.token_bytes(KEY_FILE_OCTETS)
    a, b = Side(key), Side(key)
    a.connect(b)
    b.connect(a)
    yield a, b
    a.close()
    b.close()


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2.0)[0], "no datagram within 2 s"


def carry(a: Side, b: Side, packet: bytes) -> bytes:
    a.host.send(packet)
    a.relay.on_tun_readable()
    wait_readable(b.sock)
    b.relay.on_socket_readable()
    return b.host.recv(65536)


@settings(max_examples=30, deadline=None)
@given(packet=st.binary(min_size=1, max_size=1400))
def test_a_packet_comes_out_of_the_other_side_unchanged(packet):
    key = secrets.token_bytes(KEY_FILE_OCTETS)
    a, b = Side(key), Side(key)
    try:
        a.connect(b)
        b.connect(a)
        assert carry(a, b, packet) == packet
        assert carry(b, a, packet[::-1]) == packet[::-1]
        assert (a.relay.sent, b.relay.sent, a.relay.dropped, b.relay.dropped) == (1, 1, 0, 0)
    finally:
        a.close()
        b.close()


def test_a_datagram_that_does_not_authenticate_is_dropped_and_counted(pair):
    a, b = pair
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for datagram in (b"", b"short", bytes(8) + secrets.token_bytes(40)):
            forger.sendto(datagram, b.sock.getsockname())
            wait_readable(b.sock)
            b.relay.on_socket_readable()
        assert b.relay.dropped == 3
        with pytest.raises(BlockingIOError):
            b.host.recv(65536)
        # And the relay still carries real traffic afterwards.
        assert carry(a, b, b"after") == b"after"
    finally:
        forger.close()


def test_a_key_file_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="not 20"):
        Relay(0, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("127.0.0.1", 1), b"short")


def test_every_option_but_mtu_is_required():
    args = parse_args(["--tun", "t", "--address", "2001:db8::1/64", "--bind", "192.0.2.1",
                       "--peer", "192.0.2.2", "--port", "1", "--key-file", "k"])
    assert args.mtu == 1400
    with pytest.raises(SystemExit):
        parse_args(["--tun", "t"])
