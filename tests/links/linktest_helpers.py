"""Shared helpers for the link tests: settings, async runner, namespaces."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: Upper bound for anything a test awaits.
TIMEOUT = 10.0

# Documentation prefix (RFC 3849) of the two-namespace raw tests.
ADDR_A = "2001:db8:7a::1"
ADDR_B = "2001:db8:7a::2"


@dataclass(frozen=True)
class LinkSpec:
    """Stands in for vmip.config.LinkConfig (same field names)."""

    name: str = "test0"
    driver: str = "udp"
    interface: str | None = None
    bind: Any = None
    port: int = 0
    coa: Any = None
    priority: int = 0
    keepalive: float = 0


def run(coro_factory: Callable[[], Coroutine[Any, Any, T]], *, loop_factory=None,
        timeout: float = TIMEOUT) -> T:
    """Run one test coroutine on a fresh loop, bounded in time."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro_factory(), timeout)

    if loop_factory is None:
        return asyncio.run(bounded())
    # asyncio.Runner(loop_factory=...) is Python 3.11+; uvloop.run takes one on 3.10 too.
    import uvloop
    return uvloop.run(bounded(), loop_factory=loop_factory)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def recvfrom(sock, size: int, timeout: float = TIMEOUT):
    """``loop.sock_recvfrom`` (Python 3.11+), bounded, on 3.10 too: wait until
    the non-blocking *sock* is readable, then read one datagram."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return sock.recvfrom(size)
        except BlockingIOError:
            pass
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, readable)
        try:
            await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
        finally:
            loop.remove_reader(sock.fileno())


class Inbox:
    """``on_packet`` callback that queues ``(packet, endpoint, driver)``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, packet: bytes, endpoint, driver) -> None:
        self.queue.put_nowait((packet, endpoint, driver))

    async def get(self, timeout: float = TIMEOUT):
        return await asyncio.wait_for(self.queue.get(), timeout)


# -- network namespaces ---------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], check=False, capture_output=True, text=True,
                            timeout=TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def enter_netns(name: str) -> None:
    """Move the *calling thread* into a named network namespace."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def wait_operstate_up(netns: str, ifname: str, timeout: float = 5.0) -> None:
    """Poll (bounded) until the interface reports carrier."""
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads(ip("-n", netns, "-j", "link", "show", "dev", ifname))
        if info and info[0].get("operstate") == "UP":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ifname} in {netns} not UP after {timeout}s: {info}")
        time.sleep(0.02)


class NetnsLoop:
    """An asyncio loop running in a thread that lives in a network namespace.

    Network namespaces are per thread on Linux, so the test process can hold
    drivers in two namespaces at once; sockets keep the namespace they were
    created in.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop: asyncio.AbstractEventLoop | None = None
        started: Future = Future()
        self._thread = threading.Thread(target=self._main, args=(started,), daemon=True,
                                        name=f"netns-{netns}")
        self._thread.start()
        started.result(TIMEOUT)

    def _main(self, started: Future) -> None:
        try:
            enter_netns(self.netns)
            self.loop = asyncio.new_event_loop()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def call(self, coro: Awaitable[T], timeout: float = TIMEOUT) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore

    def stop(self) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
