"""An in-memory TUN: the node's side behaves like :class:`vmip.node.tun.TunDevice`.

What the node writes (packets for the host's stack) goes to ``on_write``;
what an application would send into the TUN is handed in with
:meth:`MemoryTun.inject`, which the node's loop delivers on its next round,
the way a readable TUN file descriptor would.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from vmip.node.tun import IcmpErrorRateLimiter, TunCounters, packet_too_big
from vmip.wire.icmpv6 import PACKET_TOO_BIG, may_send_error


class MemoryTun:
    """The TUN port of a simulated node (same attributes the node reads)."""

    def __init__(self, name: str, addresses: Iterable[Any], mtu: int,
                 routes: Iterable[Any] = (), *,
                 on_write: Callable[[bytes], None] | None = None) -> None:
        self.name = name
        self.index = 0
        self.mtu = mtu
        self.addresses = [ipaddress.ip_interface(a) for a in addresses]
        self.routes = [ipaddress.ip_network(r) for r in routes]
        self.counters = TunCounters()
        self.icmp_rate_limiter = IcmpErrorRateLimiter()
        self.on_write = on_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_packets: Callable[[list[bytes]], None] | None = None
        self._pending: list[bytes] = []
        self._closed = False

    # -- the node's side --------------------------------------------------------

    def attach(self, on_packets: Callable[[list[bytes]], None], *,
               loop: asyncio.AbstractEventLoop, batch: int = 64) -> None:
        self._on_packets = on_packets
        self._loop = loop

    def detach(self) -> None:
        self._on_packets = None

    def write_soon(self, packet: bytes) -> None:
        self.write(packet)

    def flush(self) -> None:
        pass

    def write(self, packet: bytes) -> bool:
        if self._closed:
            self.counters.tx_errors += 1
            return False
        self.counters.tx_packets += 1
        self.counters.tx_bytes += len(packet)
        if self.on_write is not None:
            self.on_write(packet)
        return True

    def send_packet_too_big(self, packet: bytes, mtu: int, *, src: Any = None,
                            now: float | None = None) -> bool:
        if not may_send_error(packet, PACKET_TOO_BIG):
            self.counters.icmp_errors_suppressed += 1
            return False
        if not self.icmp_rate_limiter.allow(now if now is not None else self._now()):
            self.counters.icmp_errors_suppressed += 1
            return False
        source = src if src is not None else next(
            a.ip.packed for a in self.addresses if a.version == 6)
        self.counters.icmp_errors_sent += 1
        return self.write(packet_too_big(packet, mtu, source))

    def close(self) -> None:
        self._closed = True
        self._on_packets = None

    @property
    def closed(self) -> bool:
        return self._closed

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "mtu": self.mtu,
                "addresses": [str(a) for a in self.addresses],
                "routes": [str(r) for r in self.routes], "open": not self._closed,
                **asdict(self.counters)}

    # -- the host's side ---------------------------------------------------------

    def inject(self, packet: bytes) -> None:
        """An application sends *packet* into the TUN: the node reads it next round."""
        if self._closed or self._on_packets is None or self._loop is None:
            return
        if not self._pending:
            self._loop.call_soon(self._deliver)
        self._pending.append(packet)

    def _deliver(self) -> None:
        packets, self._pending = self._pending, []
        handler = self._on_packets
        if handler is None or not packets:
            return
        self.counters.rx_packets += len(packets)
        self.counters.rx_bytes += sum(map(len, packets))
        self.counters.rx_batches += 1
        handler(packets)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0
