"""Real nodes on the simulated network: the lab's four nodes, in one process.

:class:`SimWorld` writes the lab's configs and static keys (the same
generator ``vmip lab`` uses, :mod:`vmip.lab.configs`) into a directory of its
own, builds one :class:`vmip.node.runtime.Node` per lab node with memory
ports (:class:`~vmip.sim.tun.MemoryTun`, :class:`~vmip.sim.network.SimLink`,
:class:`SimMovement`), joins them through a :class:`~vmip.sim.network.SimNetwork`
laid out like the lab (every access link to one router; the MNs' ``lte0``
behind a NAT) and runs them on a :class:`~vmip.sim.loop.VirtualTimeLoop`.
Nothing here needs root, namespaces or a kernel feature.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmip.config import load_config
from vmip.lab import configs as lab_configs
from vmip.lab.emulation import LinkProfile
from vmip.lab.topology import NAT_ADDRESS, OVERLAY_PORT, LabPlan, default_plan
from vmip.links.base import PacketHandler
from vmip.node.movement import MovementWatcher
from vmip.node.ports import NodePorts
from vmip.node.runtime import Node
from vmip.node.services import NodeServices
from vmip.sim.layouts import LAYOUTS, apply_split
from vmip.sim.loop import VirtualTimeLoop
from vmip.sim.network import SimLink, SimNetwork
from vmip.sim.tun import MemoryTun

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


@dataclass
class _HostLink:
    """Link settings for a host that is not a vmip node."""

    name: str
    driver: str = "udp"
    interface: str | None = None
    bind: str | None = None
    port: int | None = None
    keepalive: float = 0.0


class SimMovement(MovementWatcher):
    """The MN's movement detection, told link states by the simulator instead of netlink."""

    def __init__(self, services: NodeServices, network: SimNetwork, name: str) -> None:
        super().__init__(services, dump=lambda: ([], []))
        self.network = network
        self.node_name = name

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.services.events.subscribe(self._on_mobility_event)
        self.services.pump.add("movement", self)
        self.rescan()

    def rescan(self) -> None:
        """A link changed state (the simulator's netlink notification)."""
        if self._loop is None:
            return
        usable = {w.name: self.network.is_up(self.node_name, w.name) for w in self.watched}
        self.scans += 1
        self._apply(usable)

    def close(self) -> None:
        self._stop.set()
        self.detach()


class SimWorld:
    """The lab's topology with real nodes on virtual time."""

    def __init__(self, *, seed: int = 0, workdir: Path | None = None,
                 profiles: dict[tuple[str, str], LinkProfile] | None = None,
                 keys: str = "static", layout: str = "lab", multi_coa: bool = False) -> None:
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vmip-sim-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.loop = VirtualTimeLoop()
        self.network = SimNetwork(self.loop, seed)
        # multi_coa: the lab's multi-CoA configs (vmip.lab.configs, docs/multi-coa.md).
        self.plan: LabPlan = default_plan(lab_dir=workdir, multi_coa=multi_coa)
        self.keys = keys
        self.config_paths = lab_configs.write_node_configs(self.plan, keys)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown SA layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if layout == "split":
            # MH and data in separate SAs between each MN and the CN (vmip.sim.layouts).
            apply_split(self.plan, self.config_paths)
        self.nodes: dict[str, Node] = {}
        self.tuns: dict[str, MemoryTun] = {}
        self.movements: dict[str, SimMovement] = {}
        #: Per node: called with every packet its TUN hands to the host.
        self.tun_sinks: dict[str, Callable[[bytes], object]] = {}
        for node in self.plan.nodes:
            for link in node.links:
                nat = str(NAT_ADDRESS) if link.behind_nat else None
                profile = (profiles or {}).get((node.name, link.name))
                self.network.add_access(node.name, link.name, str(link.node_ipv4.ip), nat=nat,
                                        profile=profile)

    # -- nodes ----------------------------------------------------------------------

    def ports_for(self, name: str) -> NodePorts:
        node_plan = self.plan.node(name)
        addresses = {link.name: str(link.node_ipv4.ip) for link in node_plan.links}
        network = self.network

        def open_tun(tun_name: str, tun_addresses: Any, mtu: int, routes: Any) -> MemoryTun:
            tun = MemoryTun(tun_name, tun_addresses, mtu, routes,
                            on_write=lambda packet: self._to_host(name, packet))
            self.tuns[name] = tun
            return tun

        def make_link(link_config: Any) -> SimLink:
            return SimLink(link_config, network, addresses[link_config.name],
                           link_config.port or OVERLAY_PORT)

        def movement(services: NodeServices) -> SimMovement:
            watcher = SimMovement(services, network, name)
            self.movements[name] = watcher
            return watcher

        return NodePorts(open_tun=open_tun, make_link=make_link, movement=movement,
                         control=False, signals=False, wall_clock=self.loop.time)

    def _to_host(self, name: str, packet: bytes) -> None:
        sink = self.tun_sinks.get(name)
        if sink is not None:
            sink(packet)

    async def start(self, name: str) -> Node:
        """Build and start *name*'s node from its config (again, after a restart)."""
        config = load_config(self.config_paths[name])
        # A simulated node keeps its sequence-number state in the world's
        # directory, never where the config says (the host's /var/lib/vmip).
        config = replace(config, keys=replace(config.keys,
                                              state_dir=self.workdir / name / "state"))
        node = Node(config, config_path=self.config_paths[name], clock=self.loop.time,
                    ports=self.ports_for(name))
        await node.start()
        self.nodes[name] = node
        return node

    async def stop(self, name: str) -> None:
        node = self.nodes.pop(name)
        await node.close()

    async def start_all(self) -> None:
        for name in ("ha", "cn", "mn", "mn2"):
            await self.start(name)

    async def close(self) -> None:
        # Mobile nodes first: they deregister with the HA and the CN on the way out.
        for name in reversed(list(self.nodes)):
            await self.stop(name)

    # -- the underlay ------------------------------------------------------------------

    def add_host(self, name: str, address: str, port: int = OVERLAY_PORT,
                 on_packet: PacketHandler | None = None) -> SimLink:
        """A host of someone else's on the underlay (an attacker), with one socket."""
        self.network.add_access(name, "eth0", address)
        link = SimLink(_HostLink(name=f"{name}-eth0"), self.network, address, port)
        link.open(self.loop, on_packet or (lambda *_: None))
        return link

    def set_link(self, node: str, link: str, up: bool) -> None:
        """Take an access link down or up, and tell the MN's movement detection."""
        self.network.set_up(node, link, up)
        watcher = self.movements.get(node)
        if watcher is not None:
            watcher.rescan()

    # -- running -------------------------------------------------------------------------

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def cleanup(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.close())
            self.loop.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
