"""Per-crossing timestamps of ICMPv6 echoes through a running node (debugging aid).

Off unless ``VMIP_TRACE_LATENCY`` names a directory when ``vmip run``
starts: then :func:`install` wraps the node's TUN, link drivers and IPsec
engine (instance attributes, before the node starts) so that every ICMPv6
Echo Request or Reply crossing the node leaves one line per stage in
``<dir>/trace-<node name>.txt``.  Nothing on the per-packet paths tests a
flag when it is off: the wrappers are simply not there.

Stages (``CLOCK_MONOTONIC`` nanoseconds, comparable between the processes
of one machine): ``tun_wake`` (the TUN reader callback was entered),
``tun_read``, ``encrypt`` (``engine.outbound`` returned), ``link_send``
(the datagram's ``sendto`` returned), ``link_rx_kernel`` (when the kernel
queued the datagram on the link socket, ``SIOCGSTAMPNS``), ``link_wake``
(the link's reader callback was entered), ``decrypt``, ``tun_queue``
(:meth:`write_soon` called), ``tun_write`` (the packet was written).
``tools/bench/latency`` builds a pair of nodes, pings through them and
turns two such files into a per-stage breakdown (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import struct
import time
from pathlib import Path
from typing import Any, TextIO

ENV_VAR = "VMIP_TRACE_LATENCY"

_SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("@ll")
_ICMPV6 = 58
_ESP = 50
_ECHO_TYPES = (128, 129)
#: Datagrams up to this size get a kernel receive timestamp (pings do).
_SMALL = 512


def echo_key(packet: bytes) -> str | None:
    """``"128:id:seq"`` for an ICMPv6 echo right after the IPv6 header, else None."""
    if len(packet) >= 48 and packet[0] >> 4 == 6 and packet[6] == _ICMPV6 \
            and packet[40] in _ECHO_TYPES:
        return f"{packet[40]}:{int.from_bytes(packet[44:46], 'big')}:" \
               f"{int.from_bytes(packet[46:48], 'big')}"
    return None


def _esp_key(wire: bytes) -> bytes | None:
    if len(wire) >= 48 and wire[6] == _ESP:
        return bytes(wire[40:48])   # SPI and sequence number: one datagram
    return None


class LatencyTrace:
    """The wrappers and the file they write to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = open(path, "a", buffering=1 << 16)  # noqa: SIM115
        self._wire_keys: dict[bytes, str] = {}
        self._tun_wake = 0
        self._link_wake = 0
        #: (kernel receive time, reader callback entry) of the datagram being handled.
        self._pending_rx: tuple[int | None, int] = (None, 0)
        # The kernel's receive timestamps are CLOCK_REALTIME.
        self._real_minus_mono = time.time_ns() - time.monotonic_ns()

    def record(self, stage: str, key: str, t_ns: int) -> None:
        if self._file is not None:
            self._file.write(f"{t_ns} {stage} {key}\n")

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    # -- wrapping ------------------------------------------------------------

    def install(self, node: Any) -> None:
        node.ports = dataclasses.replace(node.ports, open_tun=self._wrap_open_tun(node.ports.open_tun),
                                         make_link=self._wrap_make_link(node.ports.make_link))
        self._wrap_engine(node.engine)
        deliver = node._on_link_packet
        trace = self

        def on_link_packet(wire: bytes, endpoint: Any, link: Any) -> None:
            # The kernel's receive time of the datagram; small ones only, so
            # that a bulk transfer does not pay an ioctl per packet.
            stamp = trace._peek_link_stamp(link) if len(wire) <= _SMALL else None
            trace._pending_rx = (stamp, trace._link_wake)
            deliver(wire, endpoint, link)

        node._on_link_packet = on_link_packet
        close = node.close

        async def traced_close() -> None:
            try:
                await close()
            finally:
                trace.close()

        node.close = traced_close

    def _peek_link_stamp(self, link: Any) -> int | None:
        sock = getattr(link, "_sock", None)
        if sock is None:
            return None
        try:
            raw = fcntl.ioctl(sock.fileno(), _SIOCGSTAMPNS, bytes(_TIMESPEC.size))
        except OSError:
            return None
        seconds, nanos = _TIMESPEC.unpack(raw)
        return seconds * 1_000_000_000 + nanos - self._real_minus_mono

    def _wrap_engine(self, engine: Any) -> None:
        outbound, inbound = engine.outbound, engine.inbound
        trace = self

        def traced_outbound(packet: bytes, now: float) -> Any:
            result = outbound(packet, now)
            key = echo_key(packet)
            if key is not None:
                trace.record("encrypt", key, time.monotonic_ns())
                wire = result.packet
                if wire is not None:
                    esp = _esp_key(wire)
                    if esp is not None:
                        if len(trace._wire_keys) > 4096:
                            trace._wire_keys.clear()
                        trace._wire_keys[esp] = key
            return result

        def traced_inbound(packet: bytes, now: float) -> Any:
            result = inbound(packet, now)
            inner = result.packet
            key = echo_key(inner) if inner is not None else None
            if key is not None:
                done = time.monotonic_ns()
                stamp, wake = trace._pending_rx
                if stamp is not None:
                    trace.record("link_rx_kernel", key, stamp)
                trace.record("link_wake", key, wake)
                trace.record("decrypt", key, done)
            return result

        engine.outbound = traced_outbound
        engine.inbound = traced_inbound

    def _wrap_open_tun(self, open_tun: Any) -> Any:
        trace = self

        def traced_open_tun(*args: Any) -> Any:
            tun = open_tun(*args)
            read_batch, write_soon, write = tun.read_batch, tun.write_soon, tun.write

            def traced_read_batch(*a: Any, **k: Any) -> list[bytes]:
                wake = time.monotonic_ns()
                packets: list[bytes] = read_batch(*a, **k)
                done = time.monotonic_ns()
                for packet in packets:
                    key = echo_key(packet)
                    if key is not None:
                        trace.record("tun_wake", key, wake)
                        trace.record("tun_read", key, done)
                return packets

            def traced_write_soon(packet: bytes) -> None:
                key = echo_key(packet)
                if key is not None:
                    trace.record("tun_queue", key, time.monotonic_ns())
                write_soon(packet)

            def traced_write(packet: bytes) -> bool:
                written: bool = write(packet)
                key = echo_key(packet)
                if key is not None:
                    trace.record("tun_write", key, time.monotonic_ns())
                return written

            tun.read_batch, tun.write_soon, tun.write = \
                traced_read_batch, traced_write_soon, traced_write
            flush = getattr(tun, "flush", None)
            if flush is not None:
                def traced_flush() -> None:
                    keys = [k for k in map(echo_key, getattr(tun, "_pending", ())) if k]
                    flush()
                    done = time.monotonic_ns()
                    for key in keys:
                        trace.record("tun_write", key, done)

                tun.flush = traced_flush
            return tun

        return traced_open_tun

    def _wrap_make_link(self, make_link: Any) -> Any:
        trace = self

        def traced_make_link(config: Any) -> Any:
            driver = make_link(config)
            send = driver.send
            on_readable = getattr(driver, "_on_readable", None)

            def traced_send(packet: bytes, endpoint: Any) -> None:
                send(packet, endpoint)
                esp = _esp_key(packet)
                key = trace._wire_keys.pop(esp, None) if esp is not None else None
                if key is not None:
                    trace.record("link_send", key, time.monotonic_ns())

            driver.send = traced_send
            start = driver.start

            async def traced_start(*a: Any, **k: Any) -> None:
                await start(*a, **k)
                # The first SIOCGSTAMPNS turns the socket's receive timestamps
                # on; before it, the kernel would answer with the time of asking.
                trace._peek_link_stamp(driver)

            driver.start = traced_start
            if on_readable is not None:
                def traced_on_readable() -> None:
                    trace._link_wake = time.monotonic_ns()
                    on_readable()

                driver._on_readable = traced_on_readable
            return driver

        return traced_make_link


def install_from_env(node: Any) -> LatencyTrace | None:
    """Trace *node* when ``VMIP_TRACE_LATENCY`` names a directory (before ``start``)."""
    directory = os.environ.get(ENV_VAR)
    if not directory:
        return None
    path = Path(directory) / f"trace-{node.config.node.name}.txt"
    trace = LatencyTrace(path)
    trace.install(node)
    return trace
