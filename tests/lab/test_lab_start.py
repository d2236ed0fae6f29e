"""``vmip lab start``/``stop`` end to end: four vmip nodes, static ESP, the udp overlay.

One lab for the module, built by ``vmip lab start`` and removed by ``vmip
lab down`` in the fixture's finalizer, which also proves that nothing is
left (namespaces, processes, control sockets, host state).  The tests run
in file order: they start, use, stop and restart the same nodes.

Oracles: the kernel (pyroute2 link dumps, /proc), ping, iperf3's JSON
report, tcpdump captures dissected by tshark with the keys the node
exports, and the key files on disk.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_support import (
    LAB_NETNS,
    assert_host_untouched,
    host_snapshot,
    remove_stale_lab,
    teardown_lab,
    vmip_cli,
)
from pyroute2 import IPRoute

from vmip.lab.netns import popen_in, run_in

pytestmark = pytest.mark.root

NODES = ("ha", "cn", "mn", "mn2")
LAB_DIR = Path("/run/vmip-lab")
# The addressing plan (docs/lab.md), restated.
HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA = {"mn": "2001:db8:100::10", "mn2": "2001:db8:100::20"}
WIFI = {"mn": ("192.0.2.34", "2001:db8:31::2"), "mn2": ("192.0.2.50", "2001:db8:41::2")}
OVERLAY = {"ha": f"{HA}/64", "cn": f"{CN}/128", "mn": f"{HOA['mn']}/64",
           "mn2": f"{HOA['mn2']}/64"}
# configs/README.md: SAs per node, and the SPIs of mn's traffic with the CN and the HA.
SA_COUNT = {"ha": 8, "cn": 4, "mn": 8, "mn2": 8}
MN_CN_SPIS = {0x1301, 0x1302}
MN_HA_TUNNEL_SPIS = {0x1201, 0x1202}
MN_MN2_SPIS = {0x1401, 0x1402}
MN_SPIS = {0x1101, 0x1102} | MN_HA_TUNNEL_SPIS | MN_CN_SPIS | MN_MN2_SPIS


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' is missing (Debian package: apt-get install {tool})")


def vmip_in(node: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``vmip lab exec NODE -- vmip ARGS``: the client finds the node's socket by itself."""
    vmip = ["vmip"] if shutil.which("vmip") else [sys.executable, "-m", "vmip"]
    return vmip_cli("lab", "exec", node, "--", *vmip, *args, timeout=timeout)


def vmip_json(node: str, *args: str) -> Any:
    result = vmip_in(node, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sa_by_spi(node: str) -> dict[int, dict[str, Any]]:
    return {sa["spi"]: sa for sa in vmip_json(node, "sa", "list")}


def tun_present(netns: str) -> bool:
    with IPRoute(netns=netns) as ipr:
        return bool(ipr.link_lookup(ifname="vmip0"))


def tun_addresses(netns: str) -> list[str]:
    with IPRoute(netns=netns) as ipr:
        index = ipr.link_lookup(ifname="vmip0")[0]
        return [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
                if not a.get("IFA_ADDRESS", "").startswith("fe80")]


def netns_of(pid: int) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino


def netns_identity(netns: str) -> tuple[int, int]:
    st = os.stat(f"/run/netns/{netns}")
    return st.st_dev, st.st_ino


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def ping(node: str, destination: str, count: int = 3) -> subprocess.CompletedProcess:
    return run_in(f"vmip-{node}", ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2",
                                   destination], timeout=count * 2 + 10)


def wait_for_output(process: subprocess.Popen, stream, needle: str, timeout: float) -> None:
    """Read *stream* (raw, unbuffered) until *needle* appears; bounded in time."""
    deadline = time.monotonic() + timeout
    seen = b""
    fd = stream.fileno()
    while needle.encode() not in seen:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            process.kill()
            process.wait(5)
            raise AssertionError(f"{process.args[0]} never printed {needle!r}: {seen!r}")
        seen += chunk


@pytest.fixture(scope="module")
def started(host_before: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``vmip lab start --json`` on a fresh lab; ``lab down`` always, and nothing left."""
    remove_stale_lab()
    try:
        result = vmip_cli("lab", "start", "--json", timeout=120)
        assert result.returncode == 0, result.stderr
        yield json.loads(result.stdout)
    finally:
        teardown_lab()  # lab down, then: no namespace, no process, no lab dir
        assert not [p for p in Path("/run/vmip").glob("vmip-*.sock")], \
            "a lab node's control socket was left behind"
        assert_host_untouched(host_before, host_snapshot())


def test_start_runs_a_node_in_every_namespace(started: dict[str, Any]) -> None:
    assert set(started["nodes"]) == set(NODES)
    assert started["started"] == list(NODES)
    for name in NODES:
        entry = started["nodes"][name]
        pid = entry["pid"]
        assert entry["state"] == "started" and alive(pid)
        assert netns_of(pid) == netns_identity(f"vmip-{name}")
        assert entry["control_socket"] == f"/run/vmip/vmip-{name}.sock"
        assert entry["log"] == str(LAB_DIR / name / "vmip.log")
        assert entry["pcap"] == str(LAB_DIR / name / "wire.pcap")
        assert Path(entry["log"]).exists() and Path(entry["pcap"]).exists()
        assert OVERLAY[name] in tun_addresses(f"vmip-{name}")
        status = vmip_json(name, "status")
        assert (status["name"], status["pid"], status["sas"]) == (name, pid, SA_COUNT[name])
    lab_status = json.loads(vmip_cli("lab", "status", "--json").stdout)
    assert {name: (n["running"], n["pid"]) for name, n in lab_status["nodes"].items()} == {
        name: (True, started["nodes"][name]["pid"]) for name in NODES}


def test_start_again_leaves_running_nodes_and_their_keys_alone(started) -> None:
    keys_before = {p: p.read_bytes() for p in LAB_DIR.glob("*/keys/*")}
    assert len(keys_before) == 36  # 14 SAs (4 with two key files), a copy at each end
    result = vmip_cli("lab", "start", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    again = json.loads(result.stdout)
    assert again["started"] == []
    for name in NODES:
        assert again["nodes"][name]["state"] == "running"
        assert again["nodes"][name]["pid"] == started["nodes"][name]["pid"]
    assert {p: p.read_bytes() for p in LAB_DIR.glob("*/keys/*")} == keys_before
    table = vmip_cli("lab", "start")
    assert table.returncode == 0 and "running" in table.stdout
    assert str(started["nodes"]["mn"]["pid"]) in table.stdout
    # Another driver under running nodes would rewrite their configs: refused.
    switch = vmip_cli("lab", "start", "--driver", "raw", timeout=60)
    assert switch.returncode == 2, switch.stderr
    assert "run on the udp driver" in switch.stderr and "vmip lab stop" in switch.stderr
    assert json.loads((LAB_DIR / "lab.json").read_text())["driver"] == "udp"
    assert {p: p.read_bytes() for p in LAB_DIR.glob("*/keys/*")} == keys_before


@pytest.mark.parametrize("mobile", ["mn", "mn2"])
def test_ping_from_the_mobile_node_to_the_cn_and_the_ha(started, mobile: str) -> None:
    require("ping")
    index = 1 if mobile == "mn" else 2
    cn_out, tunnel_out = (index << 12) | 0x301, (index << 12) | 0x201
    before = sa_by_spi(mobile)
    to_cn = ping(mobile, CN)
    assert to_cn.returncode == 0, to_cn.stdout + to_cn.stderr
    to_ha = ping(mobile, HA)
    assert to_ha.returncode == 0, to_ha.stdout + to_ha.stderr
    after = sa_by_spi(mobile)
    # Through ESP: transport SAs with the CN, the tunnel SAs with the HA, both ways.
    for spi in (cn_out, cn_out + 1, tunnel_out, tunnel_out + 1):
        assert after[spi]["packets"] >= before[spi]["packets"] + 3, hex(spi)
    # With IRO the CoA, never the HoA, is on the wire: the CN and the HA
    # learned the CoA's locator from authenticated packets.
    wifi_endpoint = f"{WIFI[mobile][0]}:6275"
    cn_locators = {row["address"]: row for row in vmip_json("cn", "locators")}
    assert cn_locators[WIFI[mobile][1]]["endpoint"] == wifi_endpoint
    assert cn_locators[WIFI[mobile][1]]["source"] == "learned"
    assert HOA[mobile] not in cn_locators
    ha_locators = {row["address"]: row for row in vmip_json("ha", "locators")}
    assert ha_locators[WIFI[mobile][1]]["endpoint"] == wifi_endpoint


def iperf3(extra: list[str]) -> dict[str, Any]:
    """One iperf3 run MN -> CN through vmip0; returns the client's JSON report."""
    require("iperf3")
    port = "5301"
    server = popen_in("vmip-cn", ["iperf3", "-s", "-1", "-p", port, "-B", CN, "--forceflush"],
                      private_sysfs=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_output(server, server.stdout, "Server listening", timeout=10)
        client = run_in("vmip-mn", ["iperf3", "-c", CN, "-p", port, "-t", "2", "-J", *extra],
                        timeout=30)
        assert client.returncode == 0, client.stdout[-2000:] + client.stderr
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)
    return json.loads(client.stdout)


def test_iperf3_tcp_mn_to_cn(started) -> None:
    before = sa_by_spi("cn")[0x1301]["bytes"]
    report = iperf3([])
    assert report["start"]["connected"][0]["local_host"] == HOA["mn"]
    received = report["end"]["sum_received"]
    assert received["bytes"] > 0
    assert received["bits_per_second"] > 20e6, received
    # Every byte went through the CN's inbound SA from the MN's home address.
    assert sa_by_spi("cn")[0x1301]["bytes"] - before >= received["bytes"]


def test_iperf3_udp_mn_to_cn(started) -> None:
    before = sa_by_spi("cn")[0x1301]["packets"]
    report = iperf3(["-u", "-b", "20M"])
    summary = report["end"]["sum"]
    assert summary["packets"] > 1000, summary
    assert summary["lost_percent"] < 5, summary
    assert 15e6 < summary["bits_per_second"] < 25e6, summary
    assert sa_by_spi("cn")[0x1301]["packets"] - before >= summary["packets"]


def wireshark_rows() -> list[str]:
    result = vmip_in("mn", "keys", "--wireshark")
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_keys_wireshark_exports_the_mn_keys_from_the_key_files(started) -> None:
    rows = wireshark_rows()
    assert len(rows) == len(MN_SPIS)
    by_spi = {}
    for row in rows:
        fields = [field.strip('"') for field in row.split('","')]
        assert len(fields) == 8, row
        by_spi[int(fields[3], 16)] = fields
    assert set(by_spi) == MN_SPIS
    keys = LAB_DIR / "mn" / "keys"
    assert by_spi[0x1301][5] == "0x" + (keys / "mn-to-cn.key").read_text().strip()
    assert by_spi[0x1202][5] == "0x" + (keys / "ha-to-mn-tunnel.key").read_text().strip()
    assert by_spi[0x1101][5] == "0x" + (keys / "mn-to-ha-mh.enc").read_text().strip()
    assert by_spi[0x1101][7] == "0x" + (keys / "mn-to-ha-mh.auth").read_text().strip()


def tshark_fields(capture: Path, fields: list[str], rows: list[str] = ()) -> list[list[str]]:
    """Dissect *capture* as the udp overlay (a whole IPv6 packet per datagram)."""
    args = ["tshark", "-r", str(capture), "-d", "udp.port==6275,ipv6", "-T", "fields"]
    if rows:
        args += ["-o", "esp.enable_encryption_decode:TRUE",
                 "-o", "esp.enable_authentication_check:TRUE"]
        for row in rows:
            args += ["-o", f"uat:esp_sa:{row}"]
    for field in fields:
        args += ["-e", field]
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines() if line.strip()]


def test_underlay_capture_decodes_in_tshark(started, tmp_path: Path) -> None:
    require("tcpdump", "tshark", "ping")
    capture = tmp_path / "mn-wifi.pcap"
    # 3 pings MN -> CN and 3 MN -> HA: 12 overlay datagrams on the MN's wifi link.
    dump = popen_in("vmip-net", ["tcpdump", "-n", "-U", "-i", "mn-wifi", "-c", "12",
                                 "-w", str(capture), "udp", "port", "6275"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_output(dump, dump.stderr, "listening on", timeout=10)
        assert ping("mn", CN).returncode == 0
        assert ping("mn", HA).returncode == 0
        dump.wait(20)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait(5)
    assert dump.returncode == 0

    plain = tshark_fields(capture, ["ip.src", "ip.dst", "esp.spi", "ipv6.src"])
    assert len(plain) == 12
    spis = {int(spi, 16) for _, _, spi, _ in plain}
    assert spis == MN_CN_SPIS | MN_HA_TUNNEL_SPIS
    assert {src for src, _, _, _ in plain} == {WIFI["mn"][0], "192.0.2.18", "192.0.2.2"}
    for _, _, spi, ipv6_src in plain:
        on_wire_source = ipv6_src.split(",")[0]
        # IRO: transport with the CN remapped to the wifi CoA (the HoA never on
        # the foreign link, draft appendix J); the tunnel's outer header on the CoA too.
        expected = {0x1301: WIFI["mn"][1], 0x1302: CN, 0x1201: WIFI["mn"][1], 0x1202: HA}
        assert on_wire_source == expected[int(spi, 16)]

    decrypted = tshark_fields(capture, ["esp.spi", "icmpv6.type", "esp.icv_good", "ipv6.src"],
                              wireshark_rows())
    assert len(decrypted) == 12
    by_spi: dict[int, set[str]] = {}
    for spi, icmp_type, icv_good, ipv6_src in decrypted:
        assert icv_good in ("1", "True"), decrypted
        by_spi.setdefault(int(spi, 16), set()).add(icmp_type)
        if int(spi, 16) == 0x1201:  # the inner packet of the tunnel: HoA -> HA
            assert ipv6_src.split(",")[1:] == [HOA["mn"]]
    # Echo requests (128) out, echo replies (129) back, on both paths.
    assert by_spi == {0x1301: {"128"}, 0x1302: {"129"}, 0x1201: {"128"}, 0x1202: {"129"}}


def test_stop_stops_every_node_and_removes_the_tuns(started) -> None:
    pids = {name: started["nodes"][name]["pid"] for name in NODES}
    result = vmip_cli("lab", "stop", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    stopped = json.loads(result.stdout)["nodes"]
    assert {name: (n["pid"], n["state"]) for name, n in stopped.items()} == {
        name: (pids[name], "stopped") for name in NODES}  # SIGTERM sufficed
    for name in NODES:
        assert not alive(pids[name])
        assert not tun_present(f"vmip-{name}")
        assert not Path(f"/run/vmip/vmip-{name}.sock").exists()
        assert not (LAB_DIR / name / "vmip.pid").exists()
    # The lab itself stays up; its logs tell the nodes stopped cleanly.
    assert all(os.path.exists(f"/run/netns/{netns}") for netns in LAB_NETNS)
    assert "node stopped" in (LAB_DIR / "mn" / "vmip.log").read_text()
    status = json.loads(vmip_cli("lab", "status", "--json").stdout)
    assert not any(node["running"] for node in status["nodes"].values())
    again = vmip_cli("lab", "stop")
    assert again.returncode == 0 and "no vmip node was running" in again.stdout


def test_a_node_dying_at_start_is_reported_with_its_log(started) -> None:
    # Hold the CN's overlay port so its node cannot bind it and exits.
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.bind(('0.0.0.0', 6275))\n"
              "print('bound', flush=True)\n"
              "sys.stdin.read()\n")
    holder = popen_in("vmip-cn", [sys.executable, "-c", script], private_sysfs=False,
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_for_output(holder, holder.stdout, "bound", timeout=10)
        failed = vmip_cli("lab", "start", timeout=60)
        assert failed.returncode == 1
        assert "vmip node cn exited" in failed.stderr
        assert "Address already in use" in failed.stderr  # the tail of cn's log
    finally:
        holder.stdin.close()
        holder.wait(10)
    status = json.loads(vmip_cli("lab", "status", "--json").stdout)
    assert {name: node["running"] for name, node in status["nodes"].items()} == {
        "ha": True, "cn": False, "mn": True, "mn2": True}
    assert not tun_present("vmip-cn")

    # Once the port is free, start completes the lab: only cn is started, the
    # keys of the running nodes are kept, and traffic flows again.
    retry = vmip_cli("lab", "start", "--json", timeout=60)
    assert retry.returncode == 0, retry.stderr
    assert json.loads(retry.stdout)["started"] == ["cn"]
    assert ping("mn", CN, count=1).returncode == 0
    # The lab is left with nodes running: the finalizer's 'lab down' must stop them.
