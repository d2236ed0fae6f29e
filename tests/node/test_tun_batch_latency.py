"""A lone inbound packet reaches the TUN in the loop round it arrived; a burst is coalesced.

Two real nodes in one process on 127.0.0.1 (udp driver, static ESP SAs), each
with a real :class:`TunDevice` whose descriptor is one end of a
SOCK_SEQPACKET pair instead of /dev/net/tun, so no root is needed and every
TUN write is one record the test reads back.  The test hands node a's
outbound path a batch, then runs node b's link reader callback by hand, with
no event-loop round in between, and looks at what b wrote.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct

from pairlab import protect_policies, static_keys

from vmip.config import load_config
from vmip.config.keyfile import write_key_file
from vmip.node.latency_trace import LatencyTrace
from vmip.node.ports import NodePorts
from vmip.node.runtime import Node
from vmip.node.tun import VIRTIO_NET_HDR_GSO_TCPV6, VNET_HDR_LEN, TunDevice

OVERLAY = {"a": "2001:db8:a1::1", "b": "2001:db8:a1::2"}
SPI = {"a": 0xA101, "b": 0xA102}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_text(me: str, peer: str, ports: dict[str, int], tmp) -> str:
    return f"""\
[node]
name = "t-{me}"
roles = ["cn"]

[tun]
name = "vmip0"
addresses = ["{OVERLAY[me]}/64"]
mtu = 1400
routes = ["{OVERLAY[peer]}/128"]

[[link]]
name = "lo"
driver = "udp"
bind = "127.0.0.1"
port = {ports[me]}
keepalive = 0

[[peer]]
name = "t-{peer}"
prefixes = ["{OVERLAY[peer]}/128"]
endpoint = "127.0.0.1:{ports[peer]}"
framing = "udp"

""" + static_keys(me, peer, key_dir=tmp, state_dir=tmp / f"state-{me}", addresses=OVERLAY,
                  spis=SPI) \
        + protect_policies(me, peer, out_sa="out", in_sa="in", addresses=OVERLAY)


class SocketTun:
    """What TunDevice needs of a pytun device: a descriptor, a name, close."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self.name = name

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def packet(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64) \
        + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def echo_request(seq: int) -> bytes:
    # The checksum is not checked on the way: ESP carries the packet as it is.
    return packet(OVERLAY["a"], OVERLAY["b"], 58, struct.pack("!BBHHH", 128, 0, 0, 7, seq)
                  + bytes(56))


def tcp_segment(seq: int, size: int) -> bytes:
    header = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 0x50, 0x10, 512, 0, 0)
    return packet(OVERLAY["a"], OVERLAY["b"], 6, header + bytes(size))


def records(sock: socket.socket) -> list[bytes]:
    """Every record written to the TUN so far (without blocking)."""
    got = []
    while True:
        try:
            got.append(sock.recv(70000, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return got


async def started_pair(tmp_path, trace: bool = False,
                       ) -> tuple[dict[str, Node], dict[str, socket.socket]]:
    for side in ("a", "b"):
        write_key_file(tmp_path / f"{side}.key", os.urandom(20))
    ports = {"a": free_port(), "b": free_port()}
    nodes: dict[str, Node] = {}
    peers: dict[str, socket.socket] = {}
    for me, peer in (("a", "b"), ("b", "a")):
        path = tmp_path / f"{me}.toml"
        path.write_text(config_text(me, peer, ports, tmp_path))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        peers[me] = theirs

        def open_tun(name, addresses, mtu, routes, ours=ours):
            return TunDevice(SocketTun(ours, name), 0, mtu,
                             [ipaddress.ip_interface(a) for a in addresses], [], offload=True)

        nodes[me] = Node(load_config(path), config_path=path,
                         ports=NodePorts(open_tun=open_tun, control=False, signals=False))
        if trace:
            LatencyTrace(tmp_path / f"trace-{me}.txt").install(nodes[me])
        await nodes[me].start()
    return nodes, peers


async def close_pair(nodes: dict[str, Node], peers: dict[str, socket.socket]) -> None:
    for node in nodes.values():
        await node.close()
    for sock in peers.values():
        sock.close()


def test_a_lone_packet_reaches_the_tun_in_the_round_it_was_received(tmp_path):
    async def scenario() -> None:
        nodes, peers = await started_pair(tmp_path)
        try:
            a, b = nodes["a"], nodes["b"]
            request = echo_request(1)
            a._on_tun_packets([request])     # encrypted and sent to b's socket
            # b's link reader runs once, as the loop would on its wake-up; no
            # loop round follows before the TUN is looked at.
            b.links["lo"]._on_readable()
            written = records(peers["b"])
            assert [w[VNET_HDR_LEN:] for w in written] == [request]
            assert written[0][:VNET_HDR_LEN] == bytes(VNET_HDR_LEN)
            assert b.tun is not None and b.tun.counters.tx_packets == 1
            assert b.counters["rx_delivered"] == 1
        finally:
            await close_pair(nodes, peers)

    asyncio.run(scenario())


def test_a_burst_is_still_coalesced_into_one_tun_write(tmp_path):
    """Three segments of one flow, read in one wake-up: one GSO write at the round's end."""
    async def scenario() -> None:
        nodes, peers = await started_pair(tmp_path)
        try:
            a, b = nodes["a"], nodes["b"]
            size = 1000
            burst = [tcp_segment(1 + i * size, size) for i in range(3)]
            a._on_tun_packets(burst)
            b.links["lo"]._on_readable()
            await asyncio.sleep(0)                        # the burst's flush: this round's end
            written = records(peers["b"])
            assert len(written) == 1                      # one write for the burst
            header = written[0][:VNET_HDR_LEN]
            assert header[1] == VIRTIO_NET_HDR_GSO_TCPV6
            assert struct.unpack_from("=H", header, 4)[0] == size   # gso_size
            assert len(written[0]) - VNET_HDR_LEN == 60 + 3 * size
            assert b.tun is not None
            assert (b.tun.counters.tx_gro_writes, b.tun.counters.tx_gro_segments) == (1, 3)
        finally:
            await close_pair(nodes, peers)

    asyncio.run(scenario())


def test_the_latency_trace_records_every_stage_of_an_echo(tmp_path):
    """VMIP_TRACE_LATENCY's wrappers: a's outbound stages and b's inbound ones, in order."""
    async def scenario() -> None:
        nodes, peers = await started_pair(tmp_path, trace=True)
        try:
            a, b = nodes["a"], nodes["b"]
            peers["a"].send(bytes(VNET_HDR_LEN) + echo_request(5))
            assert a.tun is not None
            a.tun._on_readable(a._on_tun_packets, 64)    # as the loop would on a's wake-up
            b.links["lo"]._on_readable()
            assert len(records(peers["b"])) == 1
        finally:
            await close_pair(nodes, peers)               # the traces are written on close

    asyncio.run(scenario())
    key = "128:7:5"
    stages = {}
    for side in ("a", "b"):
        for line in (tmp_path / f"trace-{side}.txt").read_text().splitlines():
            t, stage, k = line.split()
            assert k == key
            stages[side, stage] = int(t)
    order = [("a", "tun_wake"), ("a", "tun_read"), ("a", "encrypt"), ("a", "link_send"),
             ("b", "link_wake"), ("b", "decrypt"), ("b", "tun_queue"), ("b", "tun_write")]
    assert set(order) <= set(stages)
    assert [stages[s] for s in order] == sorted(stages[s] for s in order)
    # The kernel queued the datagram while a was still inside sendto.
    assert stages["a", "encrypt"] <= stages["b", "link_rx_kernel"] <= stages["b", "link_wake"]
