"""The movement watcher on real netlink, in a namespace of the test's own.

Stand-in node services (the few the watcher uses) run in a child process
inside ``vt<pid>-mv``; the test takes veth links down and up with ``ip``
and reads the moves the child prints.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import asyncio, collections, ipaddress, sys, time
    from types import SimpleNamespace
    from vmip.node.events import EventHub
    from vmip.node.movement import MovementWatcher, _dump
    from vmip.node.pump import Pump

    class FakeServices:
        # The NodeServices the watcher uses: clocks, config, links, move, events, pump.
        def __init__(self):
            self.clock = time.monotonic
            self.wall_clock = time.time
            self.config = SimpleNamespace(links=[
                SimpleNamespace(name="wifi0", interface="w0", priority=10,
                                bind=ipaddress.ip_address("192.0.2.34")),
                SimpleNamespace(name="lte0", interface="l0", priority=20,
                                bind=ipaddress.ip_address("198.51.100.2"))],
                mobility=SimpleNamespace(home_agent=None))
            self.active_link = "wifi0"
            self.events = EventHub(time.time)
            self.pump = Pump(time.monotonic, collections.Counter())
        def link_names(self):
            return ["wifi0", "lte0"]
        def move(self, link):
            old, self.active_link = self.active_link, link
            print(f"MOVE {old} {link} {time.time():.3f}", flush=True)
            return {}
        def link_coa(self, link):
            return None
        def early_test(self, link, peer=None):
            return 0

    def stalling_dump(calls=[]):
        # A dump that takes 3 s after the first (a thread starved of the GIL).
        calls.append(1)
        if len(calls) > 1:
            time.sleep(3)
        return _dump()

    def late_dump(calls=[]):
        # A dump whose result reaches the loop 1.5 s after it read the links.
        calls.append(1)
        result = _dump()
        if len(calls) > 1:
            time.sleep(1.5)
        return result

    async def main():
        services = FakeServices()
        services.pump.attach(asyncio.get_running_loop())
        dump = stalling_dump if "stall" in sys.argv else late_dump if "late" in sys.argv else None
        watcher = MovementWatcher(services, hold_down=0.5, dump=dump)
        watcher.start(asyncio.get_running_loop())
        # Ready once the first dump was applied: both links known usable.
        while len(watcher.policy.usable_links(time.monotonic())) < 2:
            await asyncio.sleep(0.01)
        print("READY", flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        finally:
            watcher.close()
        print("STATUS", watcher.status()["current"], watcher.status()["errors"], flush=True)

    asyncio.run(main())
""")


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, timeout=10)


@pytest.fixture
def netns():
    name = f"vt{os.getpid()}-mv"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        ip(name, "link", "add", "w0", "type", "veth", "peer", "name", "w1")
        ip(name, "link", "add", "l0", "type", "veth", "peer", "name", "l1")
        ip(name, "addr", "add", "192.0.2.34/28", "dev", "w0")
        ip(name, "addr", "add", "198.51.100.2/28", "dev", "l0")
        for dev in ("w0", "w1", "l0", "l1"):
            ip(name, "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def _expect(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


@contextlib.contextmanager
def watcher_child(netns: str, *mode: str) -> Iterator[subprocess.Popen]:
    """The child (CHILD) in *netns*, with *mode* ("stall", "late") as its argument."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, *mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def _stop_expecting(proc: subprocess.Popen, current: str, timeout: float = 15) -> None:
    """Ask the child to stop; it must end on *current* with no watcher error."""
    proc.stdin.write("\n")
    proc.stdin.flush()
    status = _expect(proc, "STATUS", timeout).split()
    assert status[1:] == [current, "0"]


@pytest.mark.root
@pytest.mark.timeout(60)
def test_watcher_moves_on_link_loss_and_back_after_hold_down(netns):
    with watcher_child(netns) as proc:
        _expect(proc, "READY", 10)
        down_at = time.time()
        ip(netns, "link", "set", "w1", "down")        # the peer: w0 loses carrier
        move = _expect(proc, "MOVE", 5).split()
        assert move[1:3] == ["wifi0", "lte0"]
        assert float(move[3]) - down_at < 1.0          # at once, not after a rescan
        up_at = time.time()
        ip(netns, "link", "set", "w1", "up")
        move = _expect(proc, "MOVE", 5).split()
        assert move[1:3] == ["lte0", "wifi0"]
        assert float(move[3]) - up_at >= 0.5            # the hold-down was respected
        ip(netns, "addr", "del", "192.0.2.34/28", "dev", "w0")   # address lost: unusable
        move = _expect(proc, "MOVE", 5).split()
        assert move[1:3] == ["wifi0", "lte0"]
        _stop_expecting(proc, "lte0", 10)


@pytest.mark.root
@pytest.mark.timeout(60)
def test_a_link_going_down_is_acted_on_from_the_notification_not_the_dump(netns):
    """The dump of links and addresses runs on a thread that a busy node can
    starve (here: it takes 3 s); the notification that a watched link went
    down moves the CoA by itself, on the node's loop."""
    with watcher_child(netns, "stall") as proc:
        _expect(proc, "READY", 10)
        down_at = time.time()
        ip(netns, "link", "set", "w0", "down")
        move = _expect(proc, "MOVE", 10).split()
        assert move[1:3] == ["wifi0", "lte0"]
        assert float(move[3]) - down_at < 1.0, "the move waited for the dump"
        _stop_expecting(proc, "lte0")


def _silent(proc: subprocess.Popen, seconds: float) -> str | None:
    """The first line the child prints within *seconds*, or None."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return proc.stdout.readline().strip() if ready else None


@pytest.mark.root
@pytest.mark.timeout(60)
def test_a_dump_that_read_the_links_before_a_notification_does_not_undo_it(netns):
    """A dump in progress when a watched link goes down read it up; its
    result reaches the loop after the notification moved the CoA away (a
    starved thread).  It must not bring the dead link back (here: a move
    back to it after the hold-down, then away again when the next dump
    lands)."""
    with watcher_child(netns, "late") as proc:
        _expect(proc, "READY", 10)
        ip(netns, "addr", "add", "198.51.100.3/28", "dev", "l0")   # any change: a dump starts
        time.sleep(0.3)
        ip(netns, "link", "set", "w1", "down")                    # w0 loses carrier meanwhile
        move = _expect(proc, "MOVE", 5).split()
        assert move[1:3] == ["wifi0", "lte0"]
        assert _silent(proc, 4.0) is None, "a stale dump moved the CoA back"
        _stop_expecting(proc, "lte0")
