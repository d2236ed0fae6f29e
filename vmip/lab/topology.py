"""The lab's addressing plan, as data (no I/O).

One router namespace (``vmip-net``) joins four node namespaces through one
veth pair per access link.  Everything the lab builds, every config it
writes and every field of ``vmip lab up --json`` is derived from
:func:`default_plan`, so the plan is stated exactly once.  Only
documentation prefixes are used (RFC 3849 for IPv6, RFC 5737 for IPv4), so
no lab address can collide with a real network.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any

from vmip.lab.errors import LabUsageError

#: Where ``vmip lab up`` writes configs, keys, logs, pcaps and its state.
LAB_DIR = Path("/run/vmip-lab")
#: Every lab namespace starts with this; tests must never use it for theirs.
NETNS_PREFIX = "vmip-"
ROUTER_NETNS = "vmip-net"
#: The router's public address behind which the lte links are SNATed.
NAT_ADDRESS = IPv4Address("203.0.113.1")
HOME_PREFIX = IPv6Network("2001:db8:100::/64")
#: The HA's underlay address: the router's next hop for the home prefix.
HOME_AGENT_UNDERLAY = IPv6Address("2001:db8:10::2")
#: Default ports of the udp driver and of RFC 3948 ESP-in-UDP.
OVERLAY_PORT = 6275
RFC3948_PORT = 4500


@dataclass(frozen=True)
class AccessLink:
    """One veth pair: ``name`` in the node's namespace, ``router_ifname`` in vmip-net."""

    name: str
    router_ifname: str
    node_ipv4: IPv4Interface
    router_ipv4: IPv4Interface
    node_ipv6: IPv6Interface
    router_ipv6: IPv6Interface
    behind_nat: bool = False
    #: Metric of this link's default routes on the node; lower is preferred.
    route_metric: int = 100
    #: Policy-routing table on a multi-homed node (0: the main table only).
    route_table: int = 0

    @property
    def node_addresses(self) -> list[IPv4Address | IPv6Address]:
        return [self.node_ipv4.ip, self.node_ipv6.ip]

    @property
    def router_addresses(self) -> list[IPv4Address | IPv6Address]:
        return [self.router_ipv4.ip, self.router_ipv6.ip]


@dataclass(frozen=True)
class LabNode:
    """A node namespace: its role, access links and overlay (TUN) addresses."""

    name: str
    role: str
    links: tuple[AccessLink, ...]
    #: Overlay addresses, the MN's home address first.
    overlay_addresses: tuple[IPv6Address, ...]

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def is_mobile(self) -> bool:
        return self.role == "mn"

    @property
    def multihomed(self) -> bool:
        return len(self.links) > 1

    @property
    def care_of_addresses(self) -> dict[str, IPv6Address]:
        """An MN's CoA on each link is its underlay IPv6 address there."""
        if not self.is_mobile:
            return {}
        return {link.name: link.node_ipv6.ip for link in self.links}

    def link(self, name: str) -> AccessLink:
        for link in self.links:
            if link.name == name:
                return link
        known = ", ".join(link.name for link in self.links)
        raise LabUsageError(f"node {self.name!r} has no interface {name!r}; it has: {known}")


@dataclass(frozen=True)
class LabPlan:
    nodes: tuple[LabNode, ...]
    lab_dir: Path = LAB_DIR
    router_netns: str = ROUTER_NETNS
    nat_address: IPv4Address = NAT_ADDRESS
    home_prefix: IPv6Network = HOME_PREFIX
    #: The router routes the home prefix to the HA, as a real home link would.
    home_agent_underlay: IPv6Address = HOME_AGENT_UNDERLAY
    overlay_port: int = OVERLAY_PORT
    #: How the nodes carry on-wire packets: ``udp`` (the overlay over the IPv4
    #: underlay, through the lte NAT) or ``raw`` (native IPv6, routed).
    driver: str = "udp"
    #: The multi-CoA variant of the node configs (docs/multi-coa.md): the MN
    #: registers one binding per link and sends by ``[[flow]]`` policy.
    multi_coa: bool = False

    def node(self, name: str) -> LabNode:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise LabUsageError(f"unknown lab node {name!r}; the nodes are: {known}")

    @property
    def namespaces(self) -> list[str]:
        """The router first: it must exist before veth peers are put in nodes."""
        return [self.router_netns] + [node.netns for node in self.nodes]

    @property
    def all_links(self) -> list[tuple[LabNode, AccessLink]]:
        return [(node, link) for node in self.nodes for link in node.links]

    @property
    def nat_inside_networks(self) -> list[IPv4Network]:
        return [link.node_ipv4.network for _, link in self.all_links if link.behind_nat]

    def node_dir(self, node: str) -> Path:
        return self.lab_dir / node

    def config_path(self, node: str) -> Path:
        return self.node_dir(node) / f"{node}.toml"

    @property
    def emulation_dir(self) -> Path:
        return self.lab_dir / "emulation"

    @property
    def state_file(self) -> Path:
        return self.lab_dir / "lab.json"


def _link(name: str, router_ifname: str, ipv4: str, ipv6: str, *, nat: bool = False,
          metric: int = 100, table: int = 0) -> AccessLink:
    """Build a link from the node's addresses; the router takes the first host.

    In the plan the router is always the first host of each subnet (.1, .17,
    .33, .49, and ``::1``), the node the second.
    """
    node_v4 = IPv4Interface(ipv4)
    node_v6 = IPv6Interface(ipv6)
    router_v4 = IPv4Interface(f"{next(node_v4.network.hosts())}/{node_v4.network.prefixlen}")
    router_v6 = IPv6Interface(f"{node_v6.network.network_address + 1}/{node_v6.network.prefixlen}")
    return AccessLink(name, router_ifname, node_v4, router_v4, node_v6, router_v6,
                      behind_nat=nat, route_metric=metric, route_table=table)


def _mobile_links(prefix: str, wifi_v4: str, wifi_v6: str, lte_v4: str, lte_v6: str
                  ) -> tuple[AccessLink, AccessLink]:
    # wifi preferred by metric; tables 10 and 20 carry the source-based routes.
    return (
        _link("wifi0", f"{prefix}-wifi", wifi_v4, wifi_v6, metric=100, table=10),
        _link("lte0", f"{prefix}-lte", lte_v4, lte_v6, nat=True, metric=200, table=20),
    )


#: The lab's link drivers (``vmip lab up --driver``).
LAB_DRIVERS = ("udp", "raw")
DEFAULT_DRIVER = "udp"


def check_driver(driver: str) -> None:
    """Refuse drivers the lab cannot build (exit status 2)."""
    if driver not in LAB_DRIVERS:
        raise LabUsageError(f"--driver must be one of {', '.join(LAB_DRIVERS)}, not {driver!r}")


def default_plan(lab_dir: Path = LAB_DIR, driver: str = DEFAULT_DRIVER, *,
                 multi_coa: bool = False) -> LabPlan:
    """The fixed lab addressing plan (docs/lab.md has it as a table)."""
    check_driver(driver)
    return LabPlan(
        nodes=(
            LabNode("ha", "ha", (_link("eth0", "ha0", "192.0.2.2/28", "2001:db8:10::2/64"),),
                    (IPv6Address("2001:db8:100::1"),)),
            # The CN's overlay address is its underlay IPv6 address.
            LabNode("cn", "cn", (_link("eth0", "cn0", "192.0.2.18/28", "2001:db8:20::2/64"),),
                    (IPv6Address("2001:db8:20::2"),)),
            LabNode("mn", "mn", _mobile_links("mn", "192.0.2.34/28", "2001:db8:31::2/64",
                                              "198.51.100.2/28", "2001:db8:32::2/64"),
                    (IPv6Address("2001:db8:100::10"),)),
            LabNode("mn2", "mn", _mobile_links("mn2", "192.0.2.50/28", "2001:db8:41::2/64",
                                               "198.51.100.18/28", "2001:db8:42::2/64"),
                    (IPv6Address("2001:db8:100::20"),)),
        ),
        lab_dir=lab_dir,
        driver=driver,
        multi_coa=multi_coa,
    )


def describe(plan: LabPlan) -> dict[str, Any]:
    """The topology document ``vmip lab up --json`` prints.

    Contract (docs/design.md §10): ``nodes.NODE.{netns, role, overlay_addresses,
    coa (MNs only), links, config}`` never change name; new fields may be
    added.  Addresses in ``links`` and ``overlay_addresses`` are bare
    addresses; the ``interfaces`` extra gives prefixes, gateways and the
    router side.
    """
    nodes: dict[str, Any] = {}
    for node in plan.nodes:
        entry: dict[str, Any] = {
            "netns": node.netns,
            "role": node.role,
            "overlay_addresses": [str(a) for a in node.overlay_addresses],
        }
        if node.is_mobile:
            entry["coa"] = {name: str(a) for name, a in node.care_of_addresses.items()}
        entry["links"] = {link.name: [str(a) for a in link.node_addresses] for link in node.links}
        entry["config"] = str(plan.config_path(node.name))
        entry["interfaces"] = {
            link.name: {
                "router_ifname": link.router_ifname,
                "addresses": [str(link.node_ipv4), str(link.node_ipv6)],
                "gateways": [str(a) for a in link.router_addresses],
                "behind_nat": link.behind_nat,
                "default_route_metric": link.route_metric,
            }
            for link in node.links
        }
        nodes[node.name] = entry
    router_interfaces = {
        link.router_ifname: [str(link.router_ipv4), str(link.router_ipv6)]
        for _, link in plan.all_links
    }
    return {
        "nodes": nodes,
        "router": {
            "netns": plan.router_netns,
            "interfaces": router_interfaces,
            "nat_address": str(plan.nat_address),
            "nat_inside": [str(n) for n in plan.nat_inside_networks],
            "routes": {str(plan.home_prefix): str(plan.home_agent_underlay)},
        },
        "home_prefix": str(plan.home_prefix),
        "driver": plan.driver,
        "overlay_port": plan.overlay_port,
        "lab_dir": str(plan.lab_dir),
    }
