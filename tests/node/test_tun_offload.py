"""TUN offload: the virtio_net_hdr parser and TCP coalescing (GRO) for writes.

Oracles: scapy builds every segment and checks checksums; the kernel
segments our super-packets when it forwards them out of a plain TUN (that
is what it would send), and must give back exactly the original segments.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from test_tun import netns  # noqa: F401 - the namespace fixture

from vmip.node.tun import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR_LEN,
    TunDevice,
    VnetHeader,
    VnetHeaderError,
    coalesce_tcp,
    complete_checksum,
    parse_vnet_header,
    tcp6_checksum_ok,
)

pytestmark = pytest.mark.timeout(60)

SRC, DST = "2001:db8:1::2", "2001:db8:99::7"
TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]


def segment(seq: int, payload: bytes, flags: str = "A", sport: int = 40000,
            options=TIMESTAMPS, hlim: int = 64, dst: str = DST, ack: int = 77) -> bytes:
    return bytes(IPv6(src=SRC, dst=dst, hlim=hlim)
                 / TCP(sport=sport, dport=5201, seq=seq, ack=ack, flags=flags, window=501,
                       options=options) / payload)


def stream(count: int, size: int, first_seq: int = 1000, last_size: int | None = None,
           last_flags: str = "PA", sport: int = 40000) -> list[bytes]:
    packets, seq = [], first_seq
    for index in range(count):
        last = index == count - 1
        length = last_size if last and last_size is not None else size
        payload = bytes((seq + i) % 251 for i in range(length))
        packets.append(segment(seq & 0xFFFFFFFF, payload, last_flags if last else "A", sport))
        seq += length
    return packets


# -- virtio_net_hdr ----------------------------------------------------------


@given(st.binary(max_size=64))
def test_vnet_parser_raises_only_its_error(data):
    try:
        header, packet = parse_vnet_header(data)
    except VnetHeaderError:
        return
    assert len(packet) == len(data) - VNET_HDR_LEN
    assert header.pack() == data[:VNET_HDR_LEN]


@given(st.builds(VnetHeader, flags=st.sampled_from([0, 1, 2, 3]),
                 gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84]),
                 hdr_len=st.integers(0, 0xFFFF), gso_size=st.integers(1, 0xFFFF),
                 csum_start=st.integers(0, 40), csum_offset=st.sampled_from([6, 16])))
def test_vnet_header_round_trip(header):
    frame = header.pack() + bytes(100)
    assert parse_vnet_header(frame) == (header, bytes(100))


@pytest.mark.parametrize("frame", [
    bytes(9),                                              # truncated
    VnetHeader(flags=0x10).pack(),                         # unknown flag
    VnetHeader(gso_type=2).pack(),                         # unknown GSO type
    VnetHeader(gso_type=VIRTIO_NET_HDR_GSO_TCPV6).pack() + bytes(80),  # no segment size
    VnetHeader(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=40, csum_offset=16).pack()
    + bytes(50),                                           # checksum past the end
])
def test_vnet_parser_refuses(frame):
    with pytest.raises(VnetHeaderError):
        parse_vnet_header(frame)


# -- checksums against scapy ------------------------------------------------


@given(st.binary(max_size=1500), st.integers(0, 0xFFFFFFFF))
@settings(max_examples=60)
def test_checksum_check_agrees_with_scapy(payload, seq):
    packet = segment(seq, payload)
    assert tcp6_checksum_ok(packet)
    flipped = bytearray(packet)
    flipped[-1 if payload else 50] ^= 0x01
    assert not tcp6_checksum_ok(bytes(flipped))


@given(st.binary(max_size=1500))
@settings(max_examples=60)
def test_completing_a_partial_checksum_gives_scapys(payload):
    full = segment(5, payload)
    # What a kernel with TUN_F_CSUM leaves: the folded pseudo-header sum.
    length = len(full) - 40
    words = (int.from_bytes(full[8:40], "big") + length + 6) % 0xFFFF
    partial = full[:56] + words.to_bytes(2, "big") + full[58:]
    assert complete_checksum(partial, 40, 16) == full


# -- coalescing -------------------------------------------------------------


def test_a_stream_becomes_one_super_packet():
    packets = stream(10, 1200, last_size=300)
    (header, merged, segments), = coalesce_tcp(packets)
    # No NEEDS_CSUM: the checksum is complete and the kernel verifies it.
    vnet = VnetHeader(0, VIRTIO_NET_HDR_GSO_TCPV6, 72, 1200, 0, 0)
    assert parse_vnet_header(header + merged)[0] == vnet
    assert segments == 10
    parsed = IPv6(merged)
    first = IPv6(packets[0])
    assert parsed.plen == len(merged) - 40
    assert parsed[TCP].seq == first[TCP].seq and parsed[TCP].ack == first[TCP].ack
    assert parsed[TCP].flags == "PA"
    assert parsed[TCP].options == first[TCP].options
    assert bytes(parsed[TCP].payload) == b"".join(bytes(IPv6(p)[TCP].payload) for p in packets)
    # scapy computes the same checksum for the merged packet.
    rebuilt = IPv6(merged)
    del rebuilt[TCP].chksum
    assert bytes(rebuilt) == merged


def test_a_bad_segment_spoils_its_super_packets_checksum():
    packets = stream(6, 1000, last_size=999)
    bad = bytearray(packets[3])
    bad[-10] ^= 0x40
    packets[3] = bytes(bad)
    (_, merged, segments), = coalesce_tcp(packets)
    assert segments == 6 and not tcp6_checksum_ok(merged)


@pytest.mark.parametrize("breaker", [
    lambda p: segment(99999, b"x" * 1200),                        # sequence gap
    lambda p: segment(1000 + 2 * 1200, b"x" * 1300),              # longer than the first
    lambda p: segment(1000 + 2 * 1200, b"x" * 1200, flags="FA"),  # FIN
    lambda p: segment(1000 + 2 * 1200, b"x" * 1200, hlim=3),      # other hop limit
    lambda p: segment(1000 + 2 * 1200, b"x" * 1200, options=[]),  # other options
])
def test_what_breaks_a_run_passes_unchanged(breaker):
    head = stream(2, 1200, last_flags="A")
    odd = breaker(segment(1000 + 2 * 1200, b"x" * 1200))
    out = coalesce_tcp(head + [odd])
    assert [(segments, packet) for _, packet, segments in out][-1] == (1, odd)
    assert out[0][2] == 2


def test_psh_and_short_segments_end_a_run_and_flows_stay_apart():
    a = stream(3, 1000, last_flags="PA", sport=1)            # PSH on the third
    b = stream(4, 800, last_size=100, last_flags="A", sport=2)
    after_psh = segment(1000 + 3 * 1000, b"y" * 1000, sport=1)
    mixed = [a[0], b[0], a[1], b[1], b[2], a[2], after_psh, b[3]]
    out = coalesce_tcp(mixed)
    assert [segments for _, _, segments in out] == [3, 4, 1]
    assert out[2][1] == after_psh


def test_odd_segment_sizes_are_not_merged():
    assert [n for _, _, n in coalesce_tcp(stream(3, 1001, last_flags="A"))] == [1, 1, 1]


flows = st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(1, 150).map(lambda n: 2 * n),
                           st.sampled_from(["A", "A", "A", "PA", "FA", "SA"]),
                           st.sampled_from([0, 0, 0, 1])), max_size=24)


@given(flows)
@settings(max_examples=80, deadline=None)
def test_resegmenting_gives_back_every_segment(plan):
    """Cutting each super-packet at its segment size (what TSO does) yields
    the input, per flow, in order; nothing is lost or invented."""
    seqs = {1: 1000, 2: 0xFFFFFF00}           # flow 2 wraps around 2**32
    packets = []
    for sport, size, flags, gap in plan:
        payload = bytes([sport]) * size
        packets.append(segment(seqs[sport], payload, flags, sport))
        seqs[sport] = (seqs[sport] + size + gap * 7) & 0xFFFFFFFF
    out = coalesce_tcp(packets)
    resegmented: dict[int, list[tuple[int, bytes, str]]] = {1: [], 2: []}
    for header, packet, segments in out:
        tcp = IPv6(packet)[TCP]
        body = bytes(tcp.payload)
        if segments == 1:
            assert header == bytes(VNET_HDR_LEN)
            assert packet in packets
            resegmented[tcp.sport].append((tcp.seq, body, str(tcp.flags)))
            continue
        size = parse_vnet_header(header + packet)[0].gso_size
        pieces = [body[i:i + size] for i in range(0, len(body), size)]
        assert len(pieces) == segments
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            flags = str(tcp.flags) if last else str(tcp.flags).replace("P", "")
            resegmented[tcp.sport].append(((tcp.seq + index * size) & 0xFFFFFFFF, piece, flags))
    for sport in (1, 2):
        expected = [(IPv6(p)[TCP].seq, bytes(IPv6(p)[TCP].payload), str(IPv6(p)[TCP].flags))
                    for p in packets if IPv6(p)[TCP].sport == sport]
        assert resegmented[sport] == expected


# -- the kernel as the oracle -----------------------------------------------


def _read_tcp(device: TunDevice, count: int, timeout: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([device.fileno()], [], [], remaining)[0]:
            break
        got += [p for p in device.read_batch() if len(p) > 40 and p[6] == 6]
    return got


@pytest.fixture
def forwarding_pair(netns) -> Iterator[tuple[TunDevice, TunDevice]]:  # noqa: F811
    """TUN ``vgro0`` (offload) where packets come in, plain TUN ``vgro1``
    where the kernel forwards them to 2001:db8:99::/48."""
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                    "net.ipv6.conf.all.forwarding=1"], check=True, timeout=10)
    inbound = TunDevice.open("vgro0", ["2001:db8:1::1/64"], mtu=1400, offload=True)
    try:
        outbound = TunDevice.open("vgro1", [], mtu=1400, routes=["2001:db8:99::/48"],
                                  offload=False)
        try:
            yield inbound, outbound
        finally:
            outbound.close()
    finally:
        inbound.close()


@pytest.mark.root
def test_the_kernel_segments_a_super_packet_into_the_original_segments(forwarding_pair):
    inbound, outbound = forwarding_pair
    packets = stream(12, 1200, last_size=333)
    (header, merged, segments), = coalesce_tcp(packets)
    assert segments == 12
    os.writev(inbound.fileno(), (header, merged))
    got = _read_tcp(outbound, len(packets))
    # Forwarding decrements the hop limit; everything else is as sent.
    expected = [p[:7] + bytes((p[7] - 1,)) + p[8:] for p in packets]
    assert got == expected


@pytest.mark.root
def test_queued_writes_reach_the_kernel_coalesced(forwarding_pair):
    inbound, outbound = forwarding_pair
    packets = stream(6, 1000, last_size=10) + [segment(1, b"other flow", sport=9)]

    async def scenario() -> None:
        inbound.attach(lambda batch: None)
        try:
            for packet in packets:
                inbound.write_soon(packet)
            assert inbound.counters.tx_packets == 0       # nothing until the loop turns
            await asyncio.sleep(0)
        finally:
            inbound.detach()

    asyncio.run(scenario())
    assert inbound.counters.tx_packets == len(packets)
    assert inbound.counters.tx_gro_writes == 1 and inbound.counters.tx_gro_segments == 6
    assert inbound.counters.tx_bytes == sum(map(len, packets))
    got = _read_tcp(outbound, len(packets))
    assert sorted(got) == sorted(p[:7] + bytes((p[7] - 1,)) + p[8:] for p in packets)


def _tcp_in_csum_errors() -> int:
    """TCP InCsumErrors of this thread's namespace (IPv4 and IPv6 alike)."""
    with open("/proc/thread-self/net/snmp") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("InCsumErrors")])


@pytest.mark.root
@pytest.mark.parametrize("corrupt", [False, True])
def test_a_local_tcp_socket_reads_a_super_packet(netns, corrupt):  # noqa: F811
    """The production path: the kernel's TCP receives our super-packet
    (checksum verified in full) and the socket reads the original bytes."""
    device = TunDevice.open("vgro0", ["2001:db8:1::1/64"], mtu=1400, offload=True)
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        server.bind(("2001:db8:1::1", 5201))
        server.listen(1)
        server.settimeout(10)
        local = "2001:db8:1::1"
        device.write(segment(999, b"", "S", options=[], dst=local, ack=0))
        reply = next(IPv6(p) for p in _read_tcp(device, 1) if IPv6(p)[TCP].flags == "SA")
        ack = reply[TCP].seq + 1
        device.write(segment(1000, b"", "A", options=[], dst=local, ack=ack))
        peer, _ = server.accept()
        peer.settimeout(10)
        packets, seq = [], 1000
        for index in range(10):
            payload = bytes((index * 7 + i) % 256 for i in range(1200))
            packets.append(segment(seq, payload, "PA" if index == 9 else "A", options=[],
                                   dst=local, ack=ack))
            seq += len(payload)
        if corrupt:
            bad = bytearray(packets[4])
            bad[-1] ^= 0x01
            packets[4] = bytes(bad)
        errors_before = _tcp_in_csum_errors()
        (header, merged, segments), = coalesce_tcp(packets)
        assert segments == 10
        os.writev(device.fileno(), (header, merged))
        if corrupt:
            deadline = time.monotonic() + 10
            while _tcp_in_csum_errors() == errors_before and time.monotonic() < deadline:
                select.select([peer], [], [], 0.01)
            assert _tcp_in_csum_errors() == errors_before + 1
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(65536)
        else:
            expected = b"".join(IPv6(p)[TCP].load for p in packets)
            got = b""
            while len(got) < len(expected):
                chunk = peer.recv(65536)
                assert chunk
                got += chunk
            assert got == expected
        peer.close()
    finally:
        server.close()
        device.close()
