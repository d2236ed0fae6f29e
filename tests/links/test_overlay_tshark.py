"""tshark, an independent dissector, reads what the drivers put on the wire.

Captured on the loopback of a namespace the test creates: the overlay on
UDP 6275 over IPv4 and IPv6 (dissected with ``-d udp.port==6275,ipv6``, as
docs/links.md tells users to) and ESP-in-UDP / IKE on 4500 (tshark's own
RFC 3948 dissector).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading

import pytest
from linktest_helpers import TIMEOUT, Inbox, LinkSpec
from scapy.contrib.ikev2 import IKEv2
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP

from vmip.links import Rfc3948Driver, UdpDriver

pytestmark = pytest.mark.root

TSHARK = shutil.which("tshark")
CAPTURED = 5  # 2 overlay datagrams, ESP-in-UDP, IKE, keepalive

OVERLAY_V4 = bytes(IPv6(src="2001:db8:31::2", dst="2001:db8:10::2", hlim=64)
                   / ESP(spi=0x1001, seq=41, data=bytes(64)))
OVERLAY_V6 = bytes(IPv6(src="2001:db8:32::2", dst="2001:db8:100::1", hlim=64)
                   / ESP(spi=0x1002, seq=42, data=bytes(64)))
ESP_IN_UDP = bytes(IPv6(src="::ffff:127.0.0.1", dst="::ffff:127.0.0.2")
                   / ESP(spi=0x2003, seq=43, data=bytes(32)))
IKE = bytes(IKEv2(init_SPI=b"\x11" * 8, exch_type=34))


def start_capture(netns: str, pcap: str) -> tuple[subprocess.Popen, threading.Thread]:
    """Start tshark and return once it reports the capture has started."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, TSHARK, "-i", "lo", "-f", "udp",
         "-c", str(CAPTURED), "-a", "duration:20", "-w", pcap],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            # "Capturing on" comes first, before dumpcap is ready; this
            # message comes once it is.
            if "Capture started" in line:
                ready.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    if not ready.wait(TIMEOUT):
        stop_capture(process, watcher)
        raise AssertionError(f"tshark did not start capturing: {''.join(lines)}")
    return process, watcher


def stop_capture(process: subprocess.Popen, watcher: threading.Thread) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(TIMEOUT)
    watcher.join(TIMEOUT)            # it ends at EOF on stderr
    assert process.stderr is not None
    process.stderr.close()


async def send_everything() -> None:
    loop = asyncio.get_running_loop()
    hub_inbox, esp_inbox, ike_inbox = Inbox(), Inbox(), Inbox()
    hub = UdpDriver(LinkSpec(port=6275))                       # dual-stack [::]:6275
    v4 = UdpDriver(LinkSpec(bind="127.0.0.1"))
    v6 = UdpDriver(LinkSpec(bind="::1"))
    gateway = Rfc3948Driver(LinkSpec(driver="rfc3948", bind="127.0.0.2", port=4500))
    client = Rfc3948Driver(LinkSpec(driver="rfc3948", bind="127.0.0.1", keepalive=3600))
    await hub.start(loop, hub_inbox)
    for driver in (v4, v6, client):
        await driver.start(loop, Inbox())
    await gateway.start(loop, esp_inbox,
                        on_ike=lambda message, endpoint: ike_inbox.queue.put_nowait(message))
    try:
        v4.send(OVERLAY_V4, ("127.0.0.1", 6275))
        v6.send(OVERLAY_V6, ("::1", 6275))
        client.send(ESP_IN_UDP, ("127.0.0.2", 4500))
        client.send_ike(IKE, ("127.0.0.2", 4500))
        client.send_keepalive(("127.0.0.2", 4500))
        # Every datagram arrived, so the capture saw them all.
        assert (await hub_inbox.get())[0] == OVERLAY_V4
        assert (await hub_inbox.get())[0] == OVERLAY_V6
        assert (await esp_inbox.get())[0] == ESP_IN_UDP
        assert await asyncio.wait_for(ike_inbox.queue.get(), TIMEOUT) == IKE
    finally:
        for driver in (hub, v4, v6, gateway, client):
            await driver.close()


def read_fields(pcap: str, *options: str) -> list[list[str]]:
    fields = ["frame.protocols", "ipv6.src", "ipv6.dst", "esp.spi", "esp.sequence",
              "isakmp.ispi", "udp.dstport"]
    command = [TSHARK, "-r", pcap, *options, "-T", "fields", "-E", "occurrence=l",
               "-E", "separator=|"]
    for field in fields:
        command += ["-e", field]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            timeout=TIMEOUT).stdout
    return [line.split("|") for line in output.splitlines()]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (Debian package tshark)")
def test_tshark_dissects_the_overlay_and_esp_in_udp(netns_single, netns_loops, tmp_path):
    pcap = str(tmp_path / "links.pcapng")
    capture, watcher = start_capture(netns_single, pcap)
    try:
        netns_loops(netns_single).call(send_everything())
        capture.wait(TIMEOUT)            # exits by itself after CAPTURED packets
    finally:
        stop_capture(capture, watcher)

    rows = read_fields(pcap, "-d", "udp.port==6275,ipv6")
    assert len(rows) == CAPTURED
    overlay = [row for row in rows if row[6] == "6275"]
    assert len(overlay) == 2
    for row, sent in zip(overlay, (OVERLAY_V4, OVERLAY_V6), strict=True):
        inner = IPv6(sent)
        protocols, src, dst, spi, seq = row[:5]
        assert protocols.endswith(":udp:ipv6:esp"), protocols
        # occurrence=l: the last IPv6 header, i.e. the on-wire packet inside.
        assert (src, dst) == (inner.src, inner.dst)
        assert (int(spi, 16), int(seq)) == (inner[ESP].spi, inner[ESP].seq)

    # Without the -d the payload stays opaque: the framing is ours.
    plain = [row for row in read_fields(pcap) if row[6] == "6275"]
    assert all(":ipv6" not in row[0].split(":udp")[-1] for row in plain)

    encapsulated = [row for row in rows if row[6] == "4500"]
    by_kind = {row[0].split(":udp:")[-1]: row for row in encapsulated}
    assert set(by_kind) == {"udpencap:esp", "udpencap:isakmp", "udpencap"}, by_kind
    assert int(by_kind["udpencap:esp"][3], 16) == 0x2003
    assert int(by_kind["udpencap:esp"][4]) == 43
    assert by_kind["udpencap:isakmp"][5] == "11" * 8
