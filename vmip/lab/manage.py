"""Build, inspect, change and remove the lab (what ``vmip lab`` calls).

Everything is built with pyroute2 netlink requests from the host process:
namespaces, veth pairs (created in vmip-net with the peer placed straight
into the node's namespace, so the host namespace never sees an interface),
addresses, routes, policy-routing rules, link states.  Each step first
looks at what exists, so ``lab up`` is idempotent and also repairs a lab
whose links were taken down.  ``lab_start``/``lab_stop`` run and stop a
vmip node per node namespace (:mod:`vmip.lab.runner`).  The API is
synchronous (pyroute2's IPRoute runs its own event loop): call it from a
thread when inside asyncio.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from socket import AF_INET, AF_INET6
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmip.errors import VmipError
from vmip.lab import nat, runner
from vmip.lab.configs import (
    DEFAULT_KEY_MODE,
    check_lab_options,
    write_node_configs,
    write_private_file,
)
from vmip.lab.errors import LabError, LabNotUpError, LabPrerequisiteError, LabUsageError
from vmip.lab.netns import (
    create_netns,
    kill_netns_processes,
    list_netns,
    netns_exists,
    remove_netns,
    write_sysctls,
)
from vmip.lab.topology import (
    DEFAULT_DRIVER,
    NETNS_PREFIX,
    AccessLink,
    LabNode,
    LabPlan,
    default_plan,
    describe,
)
from vmip.log import get_logger

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

log = get_logger(__name__)

#: Where the lock that serialises lab changes lives (not in the lab dir: down removes that).
LOCK_DIR = Path("/run/lock")
#: How long a link may take to become operational before ``lab up`` gives up.
LINK_UP_TIMEOUT = 5.0
#: Priority of the source-address rules (before the main table's 32766).
RULE_PRIORITY = 100
#: Metric of the unreachable route that ends each link table, so a socket
#: bound to a link's address never falls through to another link.
LINK_TABLE_LAST_RESORT_METRIC = 10000
_IFF_UP = 0x1
_IFA_F_TENTATIVE = 0x40
_RT_SCOPE_LINK = 253

#: Shaping directions as the user sees them at the node ("out" = what the
#: node sends on IFACE, its uplink) mapped to the router's view used by
#: vmip.lab.emulation ("in" = what the router receives from its interface).
NODE_TO_ROUTER_DIRECTION = {"out": "in", "in": "out", "both": "both"}
ROUTER_TO_NODE_DIRECTION = {"in": "out", "out": "in", "both": "both"}

# Namespace-wide settings, written before any interface exists so every
# interface inherits them through the "default" entries.
_COMMON_SYSCTLS = {
    # Addresses usable at once (no RFC 4862 §5.4 DAD wait): DAD is skipped only
    # when both "all" and the interface say 0.
    "net/ipv6/conf/all/accept_dad": 0,
    "net/ipv6/conf/default/accept_dad": 0,
    # Keep IPv6 addresses while a link is down, as IPv4 does, so a handover
    # back to wifi0 finds its CoA still configured.
    "net/ipv6/conf/all/keep_addr_on_down": 1,
    "net/ipv6/conf/default/keep_addr_on_down": 1,
    # Paths are asymmetric on purpose while a link is down; strict reverse-path
    # filtering would drop them.
    "net/ipv4/conf/all/rp_filter": 0,
    "net/ipv4/conf/default/rp_filter": 0,
}
_ROUTER_SYSCTLS = {
    "net/ipv4/ip_forward": 1,
    "net/ipv6/conf/all/forwarding": 1,
}


def check_prerequisites(*, need_nft: bool = False) -> None:
    """Fail early, with a hint, when the lab cannot work here (exit status 2)."""
    if os.geteuid() != 0:
        raise LabPrerequisiteError(
            "the lab needs root (it creates network namespaces and interfaces). "
            "Hint: run it with sudo, e.g. 'sudo vmip lab up'")
    if need_nft:
        nat.nft_binary()
    if not Path("/proc/self/ns/net").exists():
        raise LabPrerequisiteError(
            "this kernel has no network namespaces (CONFIG_NET_NS). "
            "Hint: run the lab on a stock distribution kernel")


@contextmanager
def _lab_lock(plan: LabPlan) -> Iterator[None]:
    """Serialise lab changes: two 'lab up' at once would race on each interface."""
    lock_path = LOCK_DIR / f"{plan.lab_dir.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Netlink:
    """One IPRoute handle per namespace, opened on first use."""

    def __init__(self) -> None:
        self._handles: dict[str, IPRoute] = {}

    def __call__(self, netns: str) -> IPRoute:
        if netns not in self._handles:
            self._handles[netns] = IPRoute(netns=netns)
        return self._handles[netns]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _netlink_error(action: str, exc: NetlinkError) -> LabError:
    return LabError(f"{action}: {os.strerror(exc.code) if exc.code > 0 else exc}")


def _lookup(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _wait_until(predicate, what: str, timeout: float = LINK_UP_TIMEOUT) -> None:
    """Poll *predicate* (cheap netlink dumps) until true; bounded in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"{what} within {timeout:g} s")
        time.sleep(0.01)


def _operstate(ipr: IPRoute, index: int) -> str:
    links = ipr.get_links(index)
    return links[0].get("IFLA_OPERSTATE") if links else "MISSING"


def _ensure_addresses(ipr: IPRoute, index: int,
                      wanted: list[IPv4Interface | IPv6Interface]) -> None:
    present = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
    for iface in wanted:
        if (str(iface.ip), iface.network.prefixlen) in present:
            continue
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def _no_tentative_addresses(ipr: IPRoute, index: int) -> bool:
    return not any(a["flags"] & _IFA_F_TENTATIVE
                   for a in ipr.get_addr(index=index, family=AF_INET6))


def _ensure_rule(ipr: IPRoute, family: int, source: str, source_len: int, table: int) -> None:
    try:
        ipr.rule("add", family=family, src=source, src_len=source_len, table=table,
                 priority=RULE_PRIORITY)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _ensure_veth(netlink: _Netlink, plan: LabPlan, node: LabNode, link: AccessLink
                 ) -> tuple[int, int]:
    router, inside = netlink(plan.router_netns), netlink(node.netns)
    router_index, node_index = _lookup(router, link.router_ifname), _lookup(inside, link.name)
    if router_index is None or node_index is None:
        # Half a pair cannot happen through the lab; clear it if someone made one.
        if router_index is not None:
            router.link("del", index=router_index)
        if node_index is not None:
            inside.link("del", index=node_index)
        router.link("add", ifname=link.router_ifname, kind="veth",
                    peer={"ifname": link.name, "net_ns_fd": node.netns})
        router_index, node_index = _lookup(router, link.router_ifname), _lookup(inside, link.name)
        if router_index is None or node_index is None:
            raise LabError(f"veth {link.router_ifname}/{link.name} vanished after creation")
        log.debug("veth created", router_side=link.router_ifname, node=node.name, ifname=link.name)
    return router_index, node_index


def _ensure_link(netlink: _Netlink, plan: LabPlan, node: LabNode, link: AccessLink) -> None:
    """Make one access link exactly as the plan says, both ends, and up."""
    router, inside = netlink(plan.router_netns), netlink(node.netns)
    router_index, node_index = _ensure_veth(netlink, plan, node, link)
    for netns, ifname in ((plan.router_netns, link.router_ifname), (node.netns, link.name)):
        write_sysctls(netns, {f"net/ipv6/conf/{ifname}/accept_dad": 0,
                              f"net/ipv6/conf/{ifname}/keep_addr_on_down": 1})
    router.link("set", index=router_index, state="up")
    inside.link("set", index=node_index, state="up")
    _wait_until(lambda: _operstate(router, router_index) == "UP"
                and _operstate(inside, node_index) == "UP",
                f"{link.name} of {node.netns} did not become operational")

    _ensure_addresses(router, router_index, [link.router_ipv4, link.router_ipv6])
    _ensure_addresses(inside, node_index, [link.node_ipv4, link.node_ipv6])
    _wait_until(lambda: _no_tentative_addresses(router, router_index)
                and _no_tentative_addresses(inside, node_index),
                f"IPv6 addresses of {link.name} in {node.netns} stayed tentative")

    # Default routes through every link; the metric prefers wifi (lower wins).
    for family, gateway, anywhere in ((AF_INET, link.router_ipv4.ip, "0.0.0.0/0"),
                                      (AF_INET6, link.router_ipv6.ip, "::/0")):
        inside.route("replace", family=family, dst=anywhere, gateway=str(gateway),
                     oif=node_index, priority=link.route_metric)
    if node.multihomed and link.route_table:
        _ensure_link_table(inside, node_index, link)
    if node.links[0] is link and node.role == "ha":
        # The home link: the router sends the home prefix to the HA.
        router.route("replace", family=AF_INET6, dst=str(plan.home_prefix),
                     gateway=str(plan.home_agent_underlay), oif=router_index)


def _ensure_link_table(inside: IPRoute, node_index: int, link: AccessLink) -> None:
    """Source-based routing: what is sent from this link's addresses leaves on it."""
    table = link.route_table
    for family, node_iface, gateway, anywhere in (
            (AF_INET, link.node_ipv4, link.router_ipv4.ip, "0.0.0.0/0"),
            (AF_INET6, link.node_ipv6, link.router_ipv6.ip, "::/0")):
        extra = {"scope": _RT_SCOPE_LINK, "prefsrc": str(node_iface.ip)} if family == AF_INET else {}
        inside.route("replace", family=family, dst=str(node_iface.network), oif=node_index,
                     table=table, **extra)
        inside.route("replace", family=family, dst=anywhere, gateway=str(gateway),
                     oif=node_index, table=table, priority=link.route_metric)
        inside.route("replace", family=family, dst=anywhere, type="unreachable", table=table,
                     priority=LINK_TABLE_LAST_RESORT_METRIC)
        _ensure_rule(inside, family, str(node_iface.ip), node_iface.max_prefixlen, table)


def _ensure_namespace(netlink: _Netlink, netns: str, extra_sysctls: dict[str, int]) -> None:
    create_netns(netns)
    write_sysctls(netns, {**_COMMON_SYSCTLS, **extra_sysctls})
    ipr = netlink(netns)
    loopback = _lookup(ipr, "lo")
    if loopback is not None:
        ipr.link("set", index=loopback, state="up")


def lab_up(plan: LabPlan | None = None, *, keys: str = DEFAULT_KEY_MODE,
           driver: str = DEFAULT_DRIVER) -> dict[str, Any]:
    """Build (or repair) the whole lab and write its configs; return the topology.

    The topology is ``describe(plan)`` plus, per node, where its log,
    capture and control socket are and the pid of its vmip node (None when
    it does not run).  *driver* (``udp``, ``raw``) applies when no *plan*
    is given; a plan carries its own.
    """
    plan = plan or default_plan(driver=driver)
    check_lab_options(plan, keys)
    check_prerequisites(need_nft=True)
    with _lab_lock(plan):
        _build(plan, keys)
    return topology_with_nodes(plan)


def _node_sysctls(plan: LabPlan, node: LabNode) -> dict[str, int]:
    if node.role != "ha":
        return {}
    # On the native path (raw) packets for the home prefix reach the HA as
    # plain IPv6: its kernel forwards them into the TUN, whose route covers
    # the prefix, as a real home agent's does.  On udp they arrive inside
    # the overlay and the vmip process forwards; the kernel must not.
    return {"net/ipv6/conf/all/forwarding": 1 if plan.driver == "raw" else 0}


def recorded_driver(plan: LabPlan) -> str | None:
    """The driver the lab's configs were last written for (lab.json), if any."""
    try:
        return json.loads(plan.state_file.read_text()).get("driver")
    except (OSError, ValueError, AttributeError):
        return None


def _check_driver_change(plan: LabPlan) -> None:
    running = [node.name for node in plan.nodes if runner.running_pid(plan, node.name)]
    recorded = recorded_driver(plan)
    if running and recorded is not None and recorded != plan.driver:
        raise LabUsageError(f"the lab's nodes run on the {recorded} driver "
                            f"({', '.join(running)}); run 'vmip lab stop' before "
                            f"switching to --driver {plan.driver}")


def _build(plan: LabPlan, keys: str) -> None:
    """Namespaces, links, NAT, configs and keys; the caller holds the lab lock."""
    started = time.monotonic()
    _check_driver_change(plan)
    with _Netlink() as netlink:
        try:
            _ensure_namespace(netlink, plan.router_netns, _ROUTER_SYSCTLS)
            for node in plan.nodes:
                _ensure_namespace(netlink, node.netns, _node_sysctls(plan, node))
            for node, link in plan.all_links:
                _ensure_link(netlink, plan, node, link)
            router = netlink(plan.router_netns)
            nat_iface = IPv4Interface(f"{plan.nat_address}/32")
            loopback = _lookup(router, "lo")
            if loopback is None:
                raise LabError(f"{plan.router_netns} has no loopback interface")
            _ensure_addresses(router, loopback, [nat_iface])
        except NetlinkError as exc:
            raise _netlink_error("building the lab failed", exc) from exc
    nat.apply_nat(plan)
    plan.lab_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Fresh keys unless a node runs: it holds the current ones, and a new key
    # at one end only would cut its SAs.
    running = [node.name for node in plan.nodes if runner.running_pid(plan, node.name)]
    write_node_configs(plan, keys, fresh_keys=not running)
    topology = describe(plan)
    for name, entry in topology["nodes"].items():
        entry.update(_node_file_fields(plan, name))
    write_private_file(plan.state_file, json.dumps(topology, indent=2) + "\n", mode=0o644)
    log.info("lab up", namespaces=len(plan.namespaces), sas=keys, driver=plan.driver,
             fresh=not running,
             seconds=round(time.monotonic() - started, 3))


def _node_file_fields(plan: LabPlan, name: str) -> dict[str, str]:
    files = runner.node_files(plan, name)
    return {"log": str(files.log), "pcap": str(files.pcap),
            "control_socket": str(files.control_socket)}


def topology_with_nodes(plan: LabPlan) -> dict[str, Any]:
    """``describe(plan)`` with each node's log, pcap, control socket and pid."""
    topology = describe(plan)
    for name, entry in topology["nodes"].items():
        entry.update(_node_file_fields(plan, name))
        entry["pid"] = runner.running_pid(plan, name)
    return topology


def lab_start(plan: LabPlan | None = None, *, keys: str = DEFAULT_KEY_MODE,
              timeout: float = runner.READY_TIMEOUT,
              driver: str = DEFAULT_DRIVER) -> dict[str, Any]:
    """Bring the lab up if needed and run a vmip node in every namespace.

    Idempotent: a node already running is left alone (and the keys it uses
    are kept).  Returns the topology (as :func:`lab_up`) with ``started``:
    the nodes this call started, and per node ``state`` (started / running).
    """
    plan = plan or default_plan(driver=driver)
    check_lab_options(plan, keys)
    check_prerequisites(need_nft=True)
    with _lab_lock(plan):
        _build(plan, keys)
        runs = runner.start_nodes(plan, timeout=timeout)
    topology = topology_with_nodes(plan)
    for run in runs:
        topology["nodes"][run.name]["state"] = run.state
    topology["started"] = [run.name for run in runs if run.state == "started"]
    log.info("lab start", started=",".join(topology["started"]) or "-")
    return topology


def lab_stop(plan: LabPlan | None = None, *,
             timeout: float = runner.STOP_TIMEOUT) -> list[runner.NodeRun]:
    """Stop every lab node: SIGTERM, then SIGKILL after *timeout*; the lab stays up."""
    plan = plan or default_plan()
    check_prerequisites()
    with _lab_lock(plan):
        runs = runner.stop_nodes(plan, timeout=timeout)
    log.info("lab stop", stopped=",".join(r.name for r in runs if r.pid is not None) or "-")
    return runs


@dataclass
class DownReport:
    namespaces: list[str] = field(default_factory=list)
    killed_pids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_emulation() -> ModuleType:
    try:
        return importlib.import_module("vmip.lab.emulation")
    except ModuleNotFoundError as exc:
        if exc.name != "vmip.lab.emulation":
            raise
        raise LabPrerequisiteError(
            "link emulation (vmip.lab.emulation) is not part of this vmip. "
            "Hint: update vmip") from exc


def lab_down(plan: LabPlan | None = None, *, keep_files: bool = False) -> DownReport:
    """Remove every namespace, interface and process of the lab, even after a crash.

    Processes are found by their network namespace (/proc/PID/ns/net), so a
    process left by a crashed run is found without any record of it.  The
    veth pairs, addresses, routes and nft/iptables state die with the
    namespaces.  Any ``vmip-*`` namespace counts as the lab's.
    """
    plan = plan or default_plan()
    check_prerequisites()
    report = DownReport()
    with _lab_lock(plan):
        present = sorted(set(list_netns(NETNS_PREFIX)) | {ns for ns in plan.namespaces
                                                          if netns_exists(ns)})
        # Also without vmip-net: shapers of a half-removed lab still hold its namespace.
        if netns_exists(plan.router_netns) or plan.emulation_dir.exists():
            try:
                load_emulation().clear_all(plan.router_netns, plan.emulation_dir)
            except (VmipError, OSError) as exc:
                # Its shapers run in vmip-net and die below with everything else.
                report.warnings.append(f"link emulation cleanup: {exc}")
                log.warning("link emulation cleanup failed", error=str(exc))
        report.killed_pids = kill_netns_processes(present)
        runner.remove_stale_sockets(plan)  # of nodes that had to be SIGKILLed
        for netns in present:
            remove_netns(netns)
        report.namespaces = present
        if not keep_files:
            shutil.rmtree(plan.lab_dir, ignore_errors=True)
        left = list_netns(NETNS_PREFIX)
        if left:
            raise LabError("namespaces still present after 'lab down': " + ", ".join(left))
    log.info("lab down", namespaces=len(present), killed=len(report.killed_pids))
    return report


def is_up(plan: LabPlan | None = None) -> bool:
    plan = plan or default_plan()
    return all(netns_exists(ns) for ns in plan.namespaces)


def _require_up(plan: LabPlan) -> None:
    missing = [ns for ns in plan.namespaces if not netns_exists(ns)]
    if missing:
        raise LabNotUpError(f"the lab is not up ({', '.join(missing)} missing). "
                            "Hint: run 'vmip lab up'")


def set_link_state(plan: LabPlan | None, node_name: str, ifname: str, up: bool) -> None:
    """Take a node's access link down or up, at both ends (the router sees it too).

    Down is what a radio losing its network looks like to both sides; up
    restores addresses and routes the kernel dropped with the link.
    """
    plan = plan or default_plan()
    node = plan.node(node_name)
    link = node.link(ifname)
    check_prerequisites()
    with _lab_lock(plan):
        _require_up(plan)
        with _Netlink() as netlink:
            try:
                if up:
                    _ensure_link(netlink, plan, node, link)
                else:
                    router, inside = netlink(plan.router_netns), netlink(node.netns)
                    router_index, node_index = _ensure_veth(netlink, plan, node, link)
                    inside.link("set", index=node_index, state="down")
                    router.link("set", index=router_index, state="down")
            except NetlinkError as exc:
                raise _netlink_error(f"setting {ifname} of {node.netns} {'up' if up else 'down'}",
                                     exc) from exc
    log.info("lab link", node=node_name, ifname=ifname, state="up" if up else "down")


def shape_link(plan: LabPlan | None, node_name: str, ifname: str, direction: str,
               profile: Any) -> None:
    """Apply an emulation profile to a node's access link, at the router.

    *direction* is the node's view: "out" shapes what the node sends on
    *ifname* (uplink), "in" what it receives (downlink), "both" either way.
    """
    plan = plan or default_plan()
    if direction not in NODE_TO_ROUTER_DIRECTION:
        raise LabUsageError(f"direction must be in, out or both, not {direction!r}")
    link = plan.node(node_name).link(ifname)
    check_prerequisites()
    _require_up(plan)
    emulation = load_emulation()
    plan.emulation_dir.mkdir(parents=True, exist_ok=True)
    unavailable = getattr(emulation, "EmulationUnavailable", ())
    try:
        emulation.apply_profile(plan.router_netns, link.router_ifname,
                                NODE_TO_ROUTER_DIRECTION[direction], profile, plan.emulation_dir)
    except unavailable as exc:
        # A missing tool is a prerequisite problem: exit status 2, like the others.
        raise LabPrerequisiteError(str(exc)) from exc
    log.info("lab shape", node=node_name, ifname=ifname, direction=direction,
             profile=str(profile))


def _interface_state(ipr: IPRoute | None, ifname: str) -> dict[str, Any]:
    index = _lookup(ipr, ifname) if ipr is not None else None
    if ipr is None or index is None:
        return {"exists": False, "admin_up": False, "operstate": "MISSING", "addresses": []}
    link = ipr.get_links(index)[0]
    addresses = [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
                 if not str(a.get("IFA_ADDRESS", "")).startswith("fe80:")]
    return {"exists": True, "admin_up": bool(link["flags"] & _IFF_UP),
            "operstate": link.get("IFLA_OPERSTATE"), "addresses": addresses}


def _shaping(plan: LabPlan) -> list[dict[str, Any]]:
    try:
        emulation = load_emulation()
    except LabPrerequisiteError:
        return []
    by_router_ifname = {link.router_ifname: (node, link) for node, link in plan.all_links}
    shaped = []
    for (router_ifname, router_direction), profile in sorted(
            emulation.current_profiles(plan.router_netns, plan.emulation_dir).items()):
        node, link = by_router_ifname.get(router_ifname, (None, None))
        shaped.append({
            "node": node.name if node else None,
            "ifname": link.name if link else None,
            "router_ifname": router_ifname,
            "direction": ROUTER_TO_NODE_DIRECTION.get(router_direction, router_direction),
            "router_direction": router_direction,
            "delay_ms": profile.delay_ms, "jitter_ms": profile.jitter_ms,
            "loss": profile.loss, "rate_mbit": profile.rate_mbit,
        })
    return shaped


def lab_status(plan: LabPlan | None = None) -> dict[str, Any]:
    """What exists now: namespaces, both ends of every link, shaping in force."""
    plan = plan or default_plan()
    check_prerequisites()
    namespaces = {ns: netns_exists(ns) for ns in plan.namespaces}
    status: dict[str, Any] = {"up": all(namespaces.values()), "lab_dir": str(plan.lab_dir),
                              "namespaces": namespaces, "nodes": {}, "shaping": []}
    with _Netlink() as netlink:
        def handle(netns: str) -> IPRoute | None:
            return netlink(netns) if namespaces[netns] else None

        try:
            for node in plan.nodes:
                interfaces = {}
                for link in node.links:
                    interfaces[link.name] = {
                        "node": _interface_state(handle(node.netns), link.name),
                        "router_ifname": link.router_ifname,
                        "router": _interface_state(handle(plan.router_netns), link.router_ifname),
                    }
                pid = runner.running_pid(plan, node.name) if namespaces[node.netns] else None
                status["nodes"][node.name] = {"netns": node.netns,
                                              "exists": namespaces[node.netns],
                                              "config": str(plan.config_path(node.name)),
                                              "interfaces": interfaces,
                                              "running": pid is not None, "pid": pid,
                                              **_node_file_fields(plan, node.name)}
        except NetlinkError as exc:
            raise _netlink_error("reading the lab's interfaces failed", exc) from exc
    if namespaces[plan.router_netns]:
        status["shaping"] = _shaping(plan)
    return status
