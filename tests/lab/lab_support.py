"""Helpers of the lab tests: the real CLI, ping, host snapshots, teardown checks.

The lab's namespace names are fixed (``vmip-*``), so only one lab can exist
on a machine; a lab found up before the tests is removed (with a warning)
rather than shared, since its state is unknown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import warnings
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from vmip.lab.netns import list_netns, pids_in_netns, run_in

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
