"""The lab, built for real: topology, reachability, NAT, policy routing, handover.

One lab serves the whole module (building it takes a fraction of a second,
but sharing keeps the suite to a few seconds); tests that change it put it
back in a ``finally``.  The oracles are the kernel (pyroute2 dumps), ping,
and sockets opened inside the namespaces.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from lab_support import LAB_NETNS, assert_host_untouched, host_snapshot, ping, vmip_cli
from pyroute2 import IPRoute

from vmip.lab.netns import entered, run_in

pytestmark = pytest.mark.root

# The addressing plan, copied from docs/lab.md (not from vmip.lab.topology):
# node -> {ifname: (router ifname, IPv4/len, IPv6/len)}.
PLAN = {
    "ha": {"eth0": ("ha0", "192.0.2.2/28", "2001:db8:10::2/64")},
    "cn": {"eth0": ("cn0", "192.0.2.18/28", "2001:db8:20::2/64")},
    "mn": {"wifi0": ("mn-wifi", "192.0.2.34/28", "2001:db8:31::2/64"),
           "lte0": ("mn-lte", "198.51.100.2/28", "2001:db8:32::2/64")},
    "mn2": {"wifi0": ("mn2-wifi", "192.0.2.50/28", "2001:db8:41::2/64"),
            "lte0": ("mn2-lte", "198.51.100.18/28", "2001:db8:42::2/64")},
}
ROUTER_SIDE = {"ha0": ("192.0.2.1/28", "2001:db8:10::1/64"),
               "cn0": ("192.0.2.17/28", "2001:db8:20::1/64"),
               "mn-wifi": ("192.0.2.33/28", "2001:db8:31::1/64"),
               "mn-lte": ("198.51.100.1/28", "2001:db8:32::1/64"),
               "mn2-wifi": ("192.0.2.49/28", "2001:db8:41::1/64"),
               "mn2-lte": ("198.51.100.17/28", "2001:db8:42::1/64")}
OVERLAY = {"ha": ["2001:db8:100::1"], "cn": ["2001:db8:20::2"], "mn": ["2001:db8:100::10"],
           "mn2": ["2001:db8:100::20"]}
ROLES = {"ha": "ha", "cn": "cn", "mn": "mn", "mn2": "mn"}
NAT_ADDRESS = "203.0.113.1"
IFA_F_TENTATIVE = 0x40


def bare(address_with_len: str) -> str:
    return address_with_len.split("/")[0]


def kernel_addresses(netns: str, ifname: str) -> list[tuple[str, int, int]]:
    with IPRoute(netns=netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)
        assert index, f"{ifname} missing in {netns}"
        return [(a.get("IFA_ADDRESS"), a["prefixlen"], a["flags"])
                for a in ipr.get_addr(index=index[0])]


def link_counters(netns: str, ifname: str) -> dict[str, int]:
    with IPRoute(netns=netns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return link.get("IFLA_STATS64")


def link_flags(netns: str, ifname: str) -> tuple[bool, str]:
    with IPRoute(netns=netns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return bool(link["flags"] & 1), link.get("IFLA_OPERSTATE")


def kernel_state() -> dict[str, Any]:
    """Links, addresses, routes and rules of every lab namespace, for comparisons."""
    state = {}
    for netns in LAB_NETNS:
        with IPRoute(netns=netns) as ipr:
            state[netns] = {
                "links": sorted((l.get("IFLA_IFNAME"), l["flags"] & 1) for l in ipr.get_links()),
                "addresses": sorted(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                                    for a in ipr.get_addr()
                                    if not a.get("IFA_ADDRESS").startswith("fe80")),
                "routes": sorted((r["family"], str(r.get("RTA_DST")), r["dst_len"],
                                  r.get("RTA_TABLE"), str(r.get("RTA_GATEWAY")),
                                  r.get("RTA_PRIORITY"), r["type"])
                                 for family in (socket.AF_INET, socket.AF_INET6)
                                 for r in ipr.get_routes(family=family, table=0)
                                 if not str(r.get("RTA_DST", "")).startswith(("fe80", "ff00"))),
                "rules": sorted((r["family"], str(r.get("FRA_SRC")), r.get("FRA_TABLE"),
                                 r.get("FRA_PRIORITY")) for r in ipr.get_rules()),
            }
    return state


# --- topology -------------------------------------------------------------------------------

def test_up_json_has_every_contract_field_with_the_planned_addresses(lab: dict) -> None:
    result = vmip_cli("lab", "up", "--json")
    assert result.returncode == 0, result.stderr
    topology = json.loads(result.stdout)
    assert set(topology["nodes"]) == set(PLAN)
    for name, links in PLAN.items():
        node = topology["nodes"][name]
        assert node["netns"] == f"vmip-{name}"
        assert node["role"] == ROLES[name]
        assert node["overlay_addresses"] == OVERLAY[name]
        assert {ifname: sorted(addrs) for ifname, addrs in node["links"].items()} == \
            {ifname: sorted([bare(v4), bare(v6)]) for ifname, (_, v4, v6) in links.items()}
        if ROLES[name] == "mn":
            assert node["coa"] == {ifname: bare(v6) for ifname, (_, _, v6) in links.items()}
        else:
            assert "coa" not in node
        assert Path(node["config"]).is_file()
        assert Path(node["config"]).parent.parent == Path(topology["lab_dir"])
    assert topology["router"]["netns"] == "vmip-net"
    assert topology["router"]["nat_address"] == NAT_ADDRESS


def test_the_kernel_has_the_planned_addresses_usable_at_once(lab: dict) -> None:
    for name, links in PLAN.items():
        for ifname, (router_ifname, v4, v6) in links.items():
            for netns, dev, wanted in ((f"vmip-{name}", ifname, (v4, v6)),
                                       ("vmip-net", router_ifname, ROUTER_SIDE[router_ifname])):
                present = kernel_addresses(netns, dev)
                by_text = {f"{address}/{length}": flags for address, length, flags in present}
                for address in wanted:
                    assert address in by_text, f"{address} missing on {dev} in {netns}"
                    # DAD is off in the lab: no address waits in the tentative state.
                    assert not by_text[address] & IFA_F_TENTATIVE
                assert link_flags(netns, dev) == (True, "UP")
    assert (NAT_ADDRESS, 32) in {(a, n) for a, n, _ in kernel_addresses("vmip-net", "lo")}


def test_up_twice_changes_nothing(lab: dict) -> None:
    from vmip.lab.manage import lab_up

    before = kernel_state()
    assert lab_up() == lab
    assert kernel_state() == before


def test_generated_configs_are_private_and_load(lab: dict) -> None:
    for name, node in lab["nodes"].items():
        path = Path(node["config"])
        assert path.stat().st_mode & 0o777 == 0o600
        assert (path.parent / "keys").stat().st_mode & 0o777 == 0o700
        try:
            from vmip.config import load_config
        except ImportError:
            continue  # test_lab_plan.py reports the missing loader
        assert load_config(path).node.name == name


def test_host_namespace_is_untouched_while_the_lab_is_up(lab: dict,
                                                        host_before: dict[str, Any]) -> None:
    assert_host_untouched(host_before, host_snapshot())


# --- reachability ----------------------------------------------------------------------------

MN_SOURCES = {("wifi0", 4): "192.0.2.34", ("wifi0", 6): "2001:db8:31::2",
              ("lte0", 4): "198.51.100.2", ("lte0", 6): "2001:db8:32::2"}
TARGETS = {("ha", 4): "192.0.2.2", ("ha", 6): "2001:db8:10::2",
           ("cn", 4): "192.0.2.18", ("cn", 6): "2001:db8:20::2",
           # mn2's lte0 IPv4 is behind the NAT: reachable through its wifi0 only.
           ("mn2", 4): "192.0.2.50", ("mn2", 6): "2001:db8:42::2"}


@pytest.mark.parametrize("target", ["ha", "cn", "mn2"])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("link", ["wifi0", "lte0"])
def test_mn_reaches_every_node_over_each_link(lab: dict, link: str, family: int,
                                              target: str) -> None:
    assert ping("vmip-mn", MN_SOURCES[(link, family)], TARGETS[(target, family)])


def test_the_home_prefix_is_routed_to_the_ha(lab: dict) -> None:
    # Give the HA its on-wire address for a moment, as its TUN will have it.
    with IPRoute(netns="vmip-ha") as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.addr("add", index=lo, address="2001:db8:100::1", prefixlen=128)
        try:
            assert ping("vmip-cn", "2001:db8:20::2", "2001:db8:100::1")
            assert ping("vmip-mn", "2001:db8:32::2", "2001:db8:100::1")
        finally:
            ipr.addr("del", index=lo, address="2001:db8:100::1", prefixlen=128)


def test_nat_lets_no_unsolicited_packet_in_to_an_lte_address(lab: dict) -> None:
    assert not ping("vmip-ha", "192.0.2.2", "198.51.100.2", wait_s=0.5)
    assert not ping("vmip-mn2", "192.0.2.50", "198.51.100.2", wait_s=0.5)
    # IPv6 is routed, not translated: the same link is reachable over IPv6.
    assert ping("vmip-ha", "2001:db8:10::2", "2001:db8:32::2")


@pytest.mark.parametrize("link, other", [("lte0", "wifi0"), ("wifi0", "lte0")])
def test_a_socket_bound_to_a_link_address_leaves_through_that_link(lab: dict, link: str,
                                                                   other: str) -> None:
    """Source-based policy routing: even to the CN, which the main table sends via wifi0."""
    router_ifname = {"wifi0": "mn-wifi", "lte0": "mn-lte"}
    pings = 5
    for family in (4, 6):
        before = {l: link_counters("vmip-net", router_ifname[l]) for l in (link, other)}
        assert ping("vmip-mn", MN_SOURCES[(link, family)], TARGETS[("cn", family)], count=pings)
        after = {l: link_counters("vmip-net", router_ifname[l]) for l in (link, other)}
        assert after[link]["rx_packets"] - before[link]["rx_packets"] >= pings
        assert after[other]["rx_packets"] - before[other]["rx_packets"] < pings


# --- NAT -----------------------------------------------------------------------------------

def socket_in(netns: str, family: int, kind: int, bind: tuple[str, int]) -> socket.socket:
    with entered(netns):
        sock = socket.socket(family, kind)
    sock.settimeout(3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(bind)
    return sock


@pytest.mark.parametrize("source, seen_as", [
    ("198.51.100.2", NAT_ADDRESS),        # lte0 IPv4: translated by the router
    ("192.0.2.34", "192.0.2.34"),         # wifi0 IPv4: routed as is
    ("2001:db8:32::2", "2001:db8:32::2"),  # lte0 IPv6: routed as is
])
def test_udp_echo_server_in_ha_sees_the_expected_source(lab: dict, source: str,
                                                        seen_as: str) -> None:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    server_address = "2001:db8:10::2" if family == socket.AF_INET6 else "192.0.2.2"
    server = socket_in("vmip-ha", family, socket.SOCK_DGRAM, (server_address, 7001))
    client = socket_in("vmip-mn", family, socket.SOCK_DGRAM, (source, 0))
    with server, client:
        client.sendto(b"hello", (server_address, 7001))
        data, peer = server.recvfrom(100)
        assert data == b"hello"
        assert peer[0] == seen_as
        # The echo goes back to what the server saw; the NAT maps it back to the MN.
        server.sendto(b"echo:" + data, peer)
        reply, origin = client.recvfrom(100)
        assert reply == b"echo:hello"
        assert origin[0] == server_address


def test_tcp_from_lte_ipv4_reaches_the_ha_from_the_nat_address(lab: dict) -> None:
    server = socket_in("vmip-ha", socket.AF_INET, socket.SOCK_STREAM, ("192.0.2.2", 7002))
    server.listen(1)
    client = socket_in("vmip-mn", socket.AF_INET, socket.SOCK_STREAM, ("198.51.100.2", 0))
    with server, client:
        client.connect(("192.0.2.2", 7002))  # the kernel completes the handshake
        connection, peer = server.accept()
        with connection:
            assert peer[0] == NAT_ADDRESS
            connection.sendall(b"seen " + peer[0].encode())
            assert client.recv(100) == b"seen " + NAT_ADDRESS.encode()


# --- handover --------------------------------------------------------------------------------

def test_link_down_stops_wifi0_and_lte0_keeps_working(lab: dict) -> None:
    result = vmip_cli("lab", "link", "mn", "wifi0", "down")
    assert result.returncode == 0, result.stderr
    try:
        # Both ends are down: the router sees the link go too.
        assert link_flags("vmip-mn", "wifi0")[0] is False
        assert link_flags("vmip-net", "mn-wifi")[0] is False
        assert not ping("vmip-mn", "192.0.2.34", "192.0.2.2", wait_s=0.5)
        assert not ping("vmip-mn", "2001:db8:31::2", "2001:db8:10::2", wait_s=0.5)
        assert ping("vmip-mn", "198.51.100.2", "192.0.2.2")
        assert ping("vmip-mn", "2001:db8:32::2", "2001:db8:10::2")
        # Unbound traffic falls back to the lte default route.
        assert run_in("vmip-mn", ["ping", "-n", "-q", "-c1", "-W2", "2001:db8:20::2"]
                      ).returncode == 0
        status = json.loads(vmip_cli("lab", "status", "--json").stdout)
        wifi = status["nodes"]["mn"]["interfaces"]["wifi0"]
        assert not wifi["node"]["admin_up"] and not wifi["router"]["admin_up"]
    finally:
        result = vmip_cli("lab", "link", "mn", "wifi0", "up")
    assert result.returncode == 0, result.stderr
    assert ping("vmip-mn", "192.0.2.34", "192.0.2.2")
    assert ping("vmip-mn", "2001:db8:31::2", "2001:db8:10::2")


def test_link_rejects_an_interface_the_node_does_not_have(lab: dict) -> None:
    result = vmip_cli("lab", "link", "mn", "eth0", "down")
    assert result.returncode == 2
    assert "wifi0" in result.stderr and "lte0" in result.stderr


# --- status and exec ------------------------------------------------------------------------

def test_status_json_reports_namespaces_and_links(lab: dict) -> None:
    result = vmip_cli("lab", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["up"] is True
    assert set(status["namespaces"]) == set(LAB_NETNS) and all(status["namespaces"].values())
    for name, links in PLAN.items():
        for ifname, (router_ifname, v4, v6) in links.items():
            entry = status["nodes"][name]["interfaces"][ifname]
            assert entry["router_ifname"] == router_ifname
            assert entry["node"]["operstate"] == entry["router"]["operstate"] == "UP"
            assert {v4, v6} <= set(entry["node"]["addresses"])
    human = vmip_cli("lab", "status")
    assert human.returncode == 0
    assert "mn-wifi" in human.stdout and "lte0" in human.stdout


def test_exec_runs_in_the_node_namespace_and_returns_the_exit_status(lab: dict) -> None:
    inode = os.stat("/run/netns/vmip-mn").st_ino
    result = vmip_cli("lab", "exec", "mn", "--", "sh", "-c",
                      "stat -L -c %i /proc/self/ns/net; ls /sys/class/net; exit 7")
    assert result.returncode == 7, result.stderr
    lines = result.stdout.split()
    assert int(lines[0]) == inode
    assert sorted(lines[1:]) == ["lo", "lte0", "wifi0"]
    assert vmip_cli("lab", "exec", "mn", "--", "no-such-command-xyz").returncode == 127
    router = vmip_cli("lab", "exec", "net", "--", "ls", "/sys/class/net")
    assert router.returncode == 0
    assert {"ha0", "cn0", "mn-wifi", "mn-lte", "mn2-wifi", "mn2-lte"} <= set(router.stdout.split())


# --- shaping (vmip.lab.emulation, written by another helper) ---------------------------------

def rtt_ms(netns: str, source: str, destination: str, count: int = 5) -> float:
    result = run_in(netns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2",
                            "-I", source, destination], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    # "rtt min/avg/max/mdev = 40.1/40.3/40.9/0.2 ms": take the minimum.
    summary = next(line for line in result.stdout.splitlines() if "min/avg/max" in line)
    return float(summary.split("=")[1].split("/")[0])


@pytest.fixture
def emulation(lab: dict):
    emulation = pytest.importorskip("vmip.lab.emulation",
                                    reason="vmip.lab.emulation (link emulation) not written yet")
    yield emulation
    from vmip.lab.topology import default_plan

    emulation.clear_all("vmip-net", default_plan().emulation_dir)


def test_shape_delays_both_ways_and_clears(emulation) -> None:
    result = vmip_cli("lab", "shape", "mn", "wifi0", "--delay", "20")
    assert result.returncode == 0, result.stderr
    assert rtt_ms("vmip-mn", "192.0.2.34", "192.0.2.2") >= 38  # 20 ms each way
    assert rtt_ms("vmip-mn", "198.51.100.2", "192.0.2.2") < 15  # lte0 untouched
    status = json.loads(vmip_cli("lab", "status", "--json").stdout)
    shaped = {(e["node"], e["ifname"], e["direction"]): e["delay_ms"] for e in status["shaping"]}
    assert shaped == {("mn", "wifi0", "in"): 20, ("mn", "wifi0", "out"): 20}
    assert vmip_cli("lab", "shape", "mn", "wifi0").returncode == 0
    assert rtt_ms("vmip-mn", "192.0.2.34", "192.0.2.2") < 15
    assert json.loads(vmip_cli("lab", "status", "--json").stdout)["shaping"] == []


@pytest.mark.parametrize("direction, uplink_arrives", [("out", False), ("in", True)])
def test_shape_direction_is_seen_from_the_node(emulation, direction: str,
                                               uplink_arrives: bool) -> None:
    result = vmip_cli("lab", "shape", "mn", "lte0", "--loss", "100", "--direction", direction)
    assert result.returncode == 0, result.stderr
    server = socket_in("vmip-ha", socket.AF_INET6, socket.SOCK_DGRAM, ("2001:db8:10::2", 7003))
    client = socket_in("vmip-mn", socket.AF_INET6, socket.SOCK_DGRAM, ("2001:db8:32::2", 0))
    with server, client:
        server.settimeout(0.5)
        client.sendto(b"uplink", ("2001:db8:10::2", 7003))
        try:
            arrived = server.recvfrom(100)[0] == b"uplink"
        except TimeoutError:
            arrived = False
    assert arrived is uplink_arrives
    # Either way the round trip is broken: one of its two directions loses everything.
    assert not ping("vmip-mn", "2001:db8:32::2", "2001:db8:10::2", wait_s=0.5)


def test_shape_rejects_a_loss_over_100_percent(lab: dict) -> None:
    result = vmip_cli("lab", "shape", "mn", "lte0", "--loss", "150")
    assert result.returncode == 2
    assert "percentage" in result.stderr
