"""ICMPv6 from the routers on the native path (``vmip lab start --driver raw``).

The router's route to the CN gets a locked MTU of 1360 (``ip route ... mtu
lock``), so the MN's full-size ESP towards the CN meets a real Packet Too
Big (RFC 4443 §3.2) from the router; then the route becomes unreachable,
so the same packets meet Destination Unreachable (§3.1).  The MN must take
the PTB as the path MTU of that on-wire destination and tell its own
senders (ping, TCP) through the TUN, with the ESP overhead taken off
(RFC 4301 §8.2).  A forged PTB, quoting an SPI the MN never sent on, must
change nothing.  docs/links.md, "ICMPv6 on the native path".
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest
from lab_support import (
    CN,
    HA,
    MN_COA,
    bound,
    events,
    lab_started,
    require,
    vmip_json,
    wait_for,
)

from vmip.lab.netns import entered, popen_in, run_in

pytestmark = pytest.mark.root

ROUTER = "vmip-net"
#: The router's address on the MN's wifi link: the source of its errors.
ROUTER_ON_WIFI = "2001:db8:31::1"
PATH_MTU = 1360
#: What fits inside: 1360 less ESP transport with AES-GCM (8 SPI/seq, 8 IV,
#: 2 trailer + padding to 4, 16 ICV).
INNER_MTU = 1324
MN_CN_OUT = 0x1301

#: The forged PTB's quote: an ESP packet "from the MN's CoA" to the CN with
#: an SPI the MN has no SA for (an on-path forger's guess).
FORGED_SPI = 0xDEAD


def forged_packet_too_big() -> None:
    """From the router (an on-path forger), a PTB claiming a 1280-octet path
    to the CN; the kernel of vmip-net sums the ICMPv6 checksum."""
    quote = (struct.pack("!IHBB", 6 << 28, 8 + 64, 50, 64)
             + socket.inet_pton(socket.AF_INET6, MN_COA["wifi0"])
             + socket.inet_pton(socket.AF_INET6, CN)
             + struct.pack("!II", FORGED_SPI, 1) + bytes(64))
    with entered(ROUTER):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    with sock:
        sock.sendto(struct.pack("!BBHI", 2, 0, 0, 1280) + quote, (MN_COA["wifi0"], 0))


def ping(size: int, count: int, *options: str) -> str:
    result = run_in("vmip-mn", ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2",
                                "-s", str(size), *options, CN], timeout=count * 3 + 10)
    return result.stdout


def received(ping_output: str) -> int:
    line = next(line for line in ping_output.splitlines() if "packets transmitted" in line)
    return int(line.split()[3])


def mn_icmp() -> dict:
    return vmip_json("mn", "counters")["icmp"]


@pytest.fixture(scope="module")
def raw_lab() -> Iterator[None]:
    require("ping", "iperf3")
    with lab_started("--driver", "raw"):
        wait_for("the MN bound with the HA and the CN on wifi0",
                 lambda: bound("mn", HA, MN_COA["wifi0"]) and bound("mn", CN, MN_COA["wifi0"]))
        yield


def test_a_forged_packet_too_big_changes_nothing(raw_lab) -> None:
    forged_packet_too_big()
    wait_for("the forged PTB counted", lambda: mn_icmp().get("icmp_drop_unknown_spi"))
    assert vmip_json("mn", "status")["path_mtu"] == []
    assert "icmp_rx_too_big" not in mn_icmp()


def test_packet_too_big_from_the_router_lowers_the_path_mtu(raw_lab) -> None:
    run_in(ROUTER, ["ip", "-6", "route", "replace", f"{CN}/128", "dev", "cn0",
                    "mtu", "lock", str(PATH_MTU)], timeout=10, check=True)
    # 1300 octets of ping: ESP to the CN is over 1360, the router answers PTB;
    # the MN answers its ping with PTB for 1360 less the ESP overhead.
    output = ping(1300, 2)
    assert f"Packet too big: mtu={INNER_MTU}" in output, output
    route = run_in("vmip-mn", ["ip", "-6", "route", "get", CN], timeout=10).stdout
    assert f"mtu {INNER_MTU}" in route, route
    # The largest ping that fits the path now passes unfragmented (-M do) ...
    output = ping(INNER_MTU - 48, 3, "-M", "do")
    assert received(output) == 3, output
    # ... and a larger one too: the MN's kernel fragments it to the MTU it was
    # told, vmip reassembles it before ESP and fragments the ESP packet to
    # the path MTU (docs/architecture.md, fragments).
    output = ping(1300, 3)
    assert received(output) == 3, output
    rows = vmip_json("mn", "status")["path_mtu"]
    assert [(row["destination"], row["mtu"]) for row in rows] == [(CN, PATH_MTU)], rows
    too_big = [e for e in events("mn", "OnWireIcmpError") if e["kind"] == "too_big"]
    assert too_big and too_big[-1]["reporter"] == ROUTER_ON_WIFI and too_big[-1]["mtu"] == PATH_MTU
    # The MN told its own sender (ping, through the TUN) how much less to send.
    assert vmip_json("mn", "counters")["node"]["tx_drop_too_big"] >= 1


def test_tcp_passes_the_narrow_path(raw_lab) -> None:
    server = ["iperf3", "-s", "-1", "-p", "5399", "-B", CN]
    srv = popen_in("vmip-cn", server, private_sysfs=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    try:
        wait_for("iperf3 listening", lambda: run_in(
            "vmip-cn", ["ss", "-Hltn", "sport", "= :5399"], timeout=5).stdout.strip())
        client = run_in("vmip-mn", ["iperf3", "-c", CN, "-p", "5399", "-t", "2", "-J"],
                        timeout=30)
        assert client.returncode == 0, client.stdout[-800:] + client.stderr
        report = json.loads(client.stdout)
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(5)
    link = vmip_json("mn", "counters")["links"]["wifi0"]
    # Everything was sized to the path before it reached the raw socket.
    assert link.get("tx_error_emsgsize", 0) == 0, link


def test_destination_unreachable_from_the_router_is_reported(raw_lab) -> None:
    before = mn_icmp().get("icmp_rx_unreachable", 0)
    run_in(ROUTER, ["ip", "-6", "route", "replace", "unreachable", f"{CN}/128"],
           timeout=10, check=True)
    try:
        assert received(ping(56, 2)) == 0
        wait_for("the unreachable counted",
                 lambda: mn_icmp().get("icmp_rx_unreachable", 0) > before)
        unreachable = [e for e in events("mn", "OnWireIcmpError") if e["kind"] == "unreachable"]
        assert unreachable[-1]["destination"] == CN, unreachable[-1]
    finally:
        run_in(ROUTER, ["ip", "-6", "route", "del", f"{CN}/128"], timeout=10)
    assert received(ping(56, 3)) >= 2
