"""The node's ports: what it needs from the outside world, and the real implementations.

A :class:`vmip.node.runtime.Node` talks to four things it does not own: a TUN
device, link drivers, the control socket and the movement watcher.  It gets
them through a :class:`NodePorts`, whose defaults are the real ones (a kernel
TUN, UDP or raw sockets, a Unix socket, netlink).  The in-process simulator
(:mod:`vmip.sim`) hands in memory-backed ones instead, the way wireguard-go's
``tun.Device`` and ``conn.Bind`` have ``tuntest`` and ``bindtest``: the same
node code runs in both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from vmip.links.base import LinkDriver


class TunPort(Protocol):
    """The TUN as the node uses it (:class:`vmip.node.tun.TunDevice`, :class:`vmip.sim.tun.MemoryTun`)."""

    name: str
    addresses: list[Any]
    counters: Any
    icmp_rate_limiter: Any

    def attach(self, on_packets: Callable[[list[bytes]], None], *,
               loop: asyncio.AbstractEventLoop, batch: int = ...) -> None: ...

    def write_soon(self, packet: bytes) -> None: ...

    def write(self, packet: bytes) -> bool: ...

    def send_packet_too_big(self, packet: bytes, mtu: int) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class MovementPort(Protocol):
    """Moves an MN's CoA when its links change (:class:`vmip.node.movement.MovementWatcher`)."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def close(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


def open_kernel_tun(name: str, addresses: Iterable[str], mtu: int,
                    routes: Iterable[str]) -> TunPort:
    from vmip.node.tun import TunDevice

    return TunDevice.open(name, list(addresses), mtu, list(routes))


def make_socket_link(link_config: Any) -> LinkDriver:
    from vmip.links import make_driver

    return make_driver(link_config)


def netlink_movement(services: Any) -> MovementPort:
    from vmip.node.movement import MovementWatcher

    return MovementWatcher(services)


@dataclass(frozen=True)
class NodePorts:
    """Factories for what a node opens at start; the defaults are the real ones."""

    #: ``(name, addresses, mtu, routes) -> TunPort``.
    open_tun: Callable[[str, Iterable[str], int, Iterable[str]], TunPort] = open_kernel_tun
    #: ``(link config) -> LinkDriver``.
    make_link: Callable[[Any], LinkDriver] = make_socket_link
    #: ``(NodeServices) -> MovementPort`` on a mobile node.
    movement: Callable[[Any], MovementPort] = netlink_movement
    #: Serve the control socket (the simulator talks to its nodes directly).
    control: bool = True
    #: Take SIGTERM, SIGINT and SIGHUP on the loop (one node per process).
    signals: bool = True
    #: The wall clock for timestamps people read (events); the simulator's is virtual.
    wall_clock: Callable[[], float] = time.time


REAL_PORTS = NodePorts()
