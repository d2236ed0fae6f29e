"""Helpers of the lab tests: the real CLI, ping, host snapshots, teardown checks,
the lab's addressing plan and the node reads, waits and processes the scenarios share.

The lab's namespace names are fixed (``vmip-*``), so only one lab can exist
on a machine; a lab found up before the tests is removed (with a warning)
rather than shared, since its state is unknown.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import IO, Any

import pytest

from vmip.lab.netns import list_netns, pids_in_netns, popen_in, run_in

LAB_NETNS = ("vmip-net", "vmip-ha", "vmip-cn", "vmip-mn", "vmip-mn2")
#: Every interface name the lab uses; none may ever appear in the host namespace.
LAB_IFNAMES = ("ha0", "cn0", "mn-wifi", "mn-lte", "mn2-wifi", "mn2-lte", "wifi0", "lte0")
LAB_PREFIXES = [ip_network(p) for p in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                        "2001:db8::/32")]
HOST_SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
                "net/ipv6/conf/all/accept_dad", "net/ipv6/conf/default/accept_dad",
                "net/ipv6/conf/all/keep_addr_on_down", "net/ipv4/conf/all/rp_filter",
                "net/ipv4/conf/default/rp_filter")


def vmip_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real ``vmip`` command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "vmip", *args], capture_output=True, text=True,
                          check=False,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[2])


def ping(netns: str, source: str, destination: str, *, wait_s: float = 2.0,
         count: int = 1) -> bool:
    """One ping from *source* (an address: the socket is bound to it) in *netns*."""
    if shutil.which("ping") is None:
        pytest.skip("the 'ping' command is missing (Debian package iputils-ping)")
    result = run_in(netns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.01",
                            "-W", f"{wait_s:g}", "-I", source, destination],
                    timeout=wait_s * count + 10)
    return result.returncode == 0


def _in_lab_prefix(text: str | None) -> bool:
    if not text:
        return False
    try:
        address = ip_address(text)
    except ValueError:
        return False
    return any(address in prefix for prefix in LAB_PREFIXES)


def host_snapshot() -> dict[str, Any]:
    """What of the host namespace the lab could touch, read from the kernel.

    Only what could come from the lab is kept (its interface names, its
    prefixes, its routing tables, its sysctls, its nft table), so that other
    programs changing the host meanwhile cannot make the comparison fail.
    """
    from pyroute2 import IPRoute

    from vmip.lab.topology import default_plan

    lab_tables = {link.route_table for _, link in default_plan().all_links if link.route_table}
    with IPRoute() as ipr:
        links = sorted(name for name in (link.get("IFLA_IFNAME") for link in ipr.get_links())
                       if name in LAB_IFNAMES)
        addresses = sorted(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr()
                           if _in_lab_prefix(a.get("IFA_ADDRESS")))
        routes = sorted(
            (r["family"], str(r.get("RTA_DST")), r["dst_len"], r.get("RTA_TABLE"),
             str(r.get("RTA_GATEWAY")), r["type"])
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_routes(family=family, table=0)
            if r.get("RTA_TABLE") in lab_tables or _in_lab_prefix(r.get("RTA_DST"))
            or _in_lab_prefix(r.get("RTA_GATEWAY")) or _in_lab_prefix(r.get("RTA_PREFSRC")))
        rules = sorted((r["family"], str(r.get("FRA_SRC")), r["src_len"], r.get("FRA_TABLE"),
                        r.get("FRA_PRIORITY")) for r in ipr.get_rules()
                       if r.get("FRA_TABLE") in lab_tables or _in_lab_prefix(r.get("FRA_SRC")))
    sysctls = {key: Path("/proc/sys", key).read_text().strip() for key in HOST_SYSCTLS}
    nft_tables = ""
    if shutil.which("nft"):
        nft_tables = subprocess.run(["nft", "list", "tables"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout
    return {"links": links, "addresses": addresses, "routes": routes, "rules": rules,
            "sysctls": sysctls, "nft_tables": "vmip_lab" in nft_tables}


def assert_host_untouched(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["links"] == [], "a lab interface is in the host namespace"
    for key in ("links", "addresses", "routes", "rules", "sysctls"):
        assert after[key] == before[key], f"the host's {key} changed"
    assert after["nft_tables"] is False, "the lab's nft table is in the host namespace"


def netns_identities() -> dict[str, tuple[int, int]]:
    identities = {}
    for name in list_netns("vmip-"):
        st = os.stat(f"/run/netns/{name}")
        identities[name] = (st.st_dev, st.st_ino)
    return identities


def processes_in(identities: dict[str, tuple[int, int]]) -> list[int]:
    """Live processes whose network namespace is one of *identities* (also after unmount)."""
    wanted = set(identities.values())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def teardown_lab() -> None:
    """Remove the lab and prove nothing of it is left."""
    from vmip.lab.manage import lab_down

    identities = netns_identities()
    lab_down()
    assert list_netns("vmip-") == [], "lab namespaces left behind"
    assert processes_in(identities) == [], "processes left in the lab's namespaces"
    assert not Path("/run/vmip-lab").exists()


def remove_stale_lab() -> None:
    if list_netns("vmip-") or pids_in_netns(LAB_NETNS):
        warnings.warn("a vmip lab was up before the tests; it was removed", stacklevel=2)
        teardown_lab()


# --- the scenarios (test_iro_lab, test_ike_lab, test_iro_negative, test_iro_mnmn) ---------------

# The addressing plan (docs/lab.md), restated.
HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA = {"mn": "2001:db8:100::10", "mn2": "2001:db8:100::20"}
COA = {"mn": {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"},
       "mn2": {"wifi0": "2001:db8:41::2", "lte0": "2001:db8:42::2"}}
MN_COA = COA["mn"]
MN2_WIFI_COA = COA["mn2"]["wifi0"]
# RFC 8200 §4.2 / RFC 6275 §6.3, §6.4: the Home Address option and the type 2 routing header.
HAO_OPTION, RH2 = 201, 2

#: A UDP echo server (port 7, the lab's clear-text class): argv = address, datagrams to answer.
ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7)); s.settimeout(20)
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
#: Its client: argv = server address, datagrams to send; prints how many came back intact.
ECHO_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
got = 0
for i in range(int(sys.argv[2])):
    s.sendto(b"vmip-echo-%d" % i, (sys.argv[1], 7))
    try:
        got += s.recvfrom(2048)[0] == b"vmip-echo-%d" % i
    except TimeoutError:
        pass
print(got)
"""


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' is missing (Debian package: apt-get install {tool})")


@contextmanager
def lab_started(*start_args: str) -> Iterator[None]:
    """``vmip lab start`` (the real CLI); always torn down, and the host checked untouched."""
    before = host_snapshot()
    remove_stale_lab()
    try:
        result = vmip_cli("lab", "start", *start_args, "--json", timeout=120)
        assert result.returncode == 0, result.stderr
        yield
    finally:
        teardown_lab()
        assert_host_untouched(before, host_snapshot())


def vmip_json(node: str, *args: str) -> Any:
    """``vmip <args> --json`` run at the lab's *node*, parsed."""
    vmip = ["vmip"] if shutil.which("vmip") else [sys.executable, "-m", "vmip"]
    result = vmip_cli("lab", "exec", node, "--", *vmip, *args, "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0,
             interval: float = 0.1) -> Any:
    """Poll *check* (a control-socket read) until it is truthy; bounded."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {value!r}")


def bound_in(update_list: list[dict[str, Any]], peer: str, coa: str) -> bool:
    """The MN's binding update list holds *peer* bound on *coa*."""
    return any(e["peer"] == peer and e["state"] == "bound" and e["coa"] == coa
               for e in update_list)


def bound(node: str, peer: str, coa: str) -> bool:
    return bound_in(vmip_json(node, "bindings")["mn"]["binding_update_list"], peer, coa)


def events(node: str, name: str) -> list[dict[str, Any]]:
    return [e for e in vmip_json(node, "events") if e.get("event") == name]


def ping_at(destination: str, count: int = 3, node: str = "mn") -> subprocess.CompletedProcess:
    """``ping`` run at the lab's *node* (from whatever source its routes pick)."""
    return run_in(f"vmip-{node}", ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2",
                                   destination], timeout=count * 2 + 10)


def move(link: str, timeout: float = 15.0) -> None:
    """``vmip mn move`` at the MN, until it is bound with the HA and the CN on *link*."""
    vmip_json("mn", "mn", "move", link)
    wait_for(f"the MN bound with the HA and the CN on {link}",
             lambda: bound("mn", HA, MN_COA[link]) and bound("mn", CN, MN_COA[link]),
             timeout=timeout)


def wait_for_output(process: subprocess.Popen, stream: IO[bytes], needle: str,
                    timeout: float) -> None:
    """Read *stream* until *needle* appears; the process is killed if it never does."""
    deadline = time.monotonic() + timeout
    seen = b""
    while needle.encode() not in seen:
        ready, _, _ = select.select([stream.fileno()], [], [],
                                    max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        if not chunk:
            process.kill()
            process.wait(5)
            raise AssertionError(f"{process.args[0]} never printed {needle!r}: {seen!r}")
        seen += chunk


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def udp_echo_mn_to_cn(count: int) -> None:
    """*count* clear-text UDP echoes from the MN to the CN; every one must come back."""
    server = popen_in("vmip-cn", [sys.executable, "-c", ECHO_SERVER, CN, str(count)],
                      private_sysfs=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_output(server, server.stdout, "ready", timeout=10)
        client = run_in("vmip-mn", [sys.executable, "-c", ECHO_CLIENT, CN, str(count)],
                        timeout=30)
        assert client.returncode == 0, client.stderr
        assert int(client.stdout.strip()) == count
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(5)


#: What the MN's on-wire packets look like on an access link, per lab driver
#: (tcpdump filters): the overlay's UDP 6275, or native IPv6 itself.
WIRE_FILTERS = {"udp": ["udp", "port", "6275"], "raw": ["ip6"]}


@contextmanager
def access_links_captured(directory: Path, driver: str = "udp") -> Iterator[dict[str, Path]]:
    """tcpdump of the on-wire packets (the overlay's UDP 6275, or native IPv6 on
    the raw driver) on the MN's two access links, in *directory*."""
    captures = {name: directory / f"{name}.pcap" for name in ("mn-wifi", "mn-lte")}
    dumps = []
    try:
        for name, path in captures.items():
            dump = popen_in("vmip-net", ["timeout", "60", "tcpdump", "-n", "-U", "-i", name,
                                         "-w", str(path), *WIRE_FILTERS[driver]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dumps.append(dump)
            wait_for_output(dump, dump.stderr, "listening on", timeout=10)
        yield captures
    finally:
        for dump in dumps:
            stop(dump)


def tshark(capture: Path, fields: list[str], rows: list[str] = (),
           display_filter: str | None = None) -> list[list[str]]:
    """*fields* of each packet of *capture* (the overlay's UDP 6275 decoded as IPv6).

    With *rows* (``vmip keys --wireshark`` lines) ESP is decrypted and its ICV checked.
    """
    args = ["tshark", "-r", str(capture), "-d", "udp.port==6275,ipv6", "-T", "fields",
            "-E", "occurrence=a", "-E", "aggregator=,"]
    if rows:
        args += ["-o", "esp.enable_encryption_decode:TRUE",
                 "-o", "esp.enable_authentication_check:TRUE"]
        for row in rows:
            args += ["-o", f"uat:esp_sa:{row}"]
    if display_filter:
        args += ["-Y", display_filter]
    for field in fields:
        args += ["-e", field]
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines() if line.strip()]


@contextmanager
def ping_and_tcp_mn_to_cn(iperf_port: int) -> Iterator[dict[str, str]]:
    """150 pings (20/s) and a 6 s iperf3 TCP stream (100 Mbit/s) from the MN to the CN.

    Both run while the block does; when it ends normally, the yielded dict
    gets their outputs: ``"iperf"`` (iperf3's JSON report) and ``"ping"``.
    """
    server = popen_in("vmip-cn", ["iperf3", "-s", "-1", "-p", str(iperf_port), "-B", CN,
                                  "--forceflush"], private_sysfs=False,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_output(server, server.stdout, "Server listening", timeout=10)
        pinger = popen_in("vmip-mn", ["ping", "-n", "-q", "-i", "0.05", "-c", "150",
                                      "-W", "1", CN], private_sysfs=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # 100 Mbit/s: a real TCP stream, and captures tshark reads in seconds.
        client = popen_in("vmip-mn", ["iperf3", "-c", CN, "-p", str(iperf_port), "-t", "6",
                                      "-J", "-b", "100M"],
                          private_sysfs=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
        outputs: dict[str, str] = {}
        yield outputs
        outputs["iperf"], _ = client.communicate(timeout=30)
        outputs["ping"], _ = pinger.communicate(timeout=30)
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(5)


def assert_tcp_and_ping_survived(handover: dict[str, Any]) -> None:
    """The handover fixture's iperf3 report and ping output: the stream and the pings went on."""
    report = handover["iperf"]
    assert "error" not in report, report.get("error")
    assert report["end"]["sum_received"]["bytes"] > 1_000_000
    assert report["start"]["connected"][0]["local_host"] == HOA["mn"]
    summary = [line for line in handover["ping"].splitlines() if "packets transmitted" in line]
    transmitted, received = (int(summary[0].split()[i]) for i in (0, 3))
    assert transmitted >= 100 and transmitted - received <= 10, summary


def assert_no_hao_rh2_or_hoa_on_the_wire(link: str, capture: Path) -> None:
    """Every packet of *capture*, undecrypted: HAO and RH2 would be in the outer header."""
    outer_rows = tshark(capture, ["ipv6.src", "ipv6.dst", "ipv6.opt.type",
                                  "ipv6.routing.type"])
    assert outer_rows, f"nothing captured on {link}"
    for src, dst, options, routing in outer_rows:
        # Draft appendix J: no HAO, no type 2 routing header on the foreign link.
        assert str(HAO_OPTION) not in options.split(","), (link, options)
        assert str(RH2) not in routing.split(","), (link, routing)
        # The HoA in no outer IPv6 header (the first, on-wire one).
        outer = (src.split(",")[0], dst.split(",")[0])
        assert HOA["mn"] not in outer, (link, outer)
