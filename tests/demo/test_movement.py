"""The movement policy with a fake clock, and the link-usability reading."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import threading
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from vmip.node.movement import (
    MovementPolicy,
    MovementWatcher,
    WatchedLink,
    link_notices,
    links_reported_down,
    usable_links,
)

PRIO = {"wifi0": 10, "lte0": 20}


def decisions(policy: MovementPolicy) -> list[tuple[str, str]]:
    out = []
    while (d := policy.next_decision()) is not None:
        out.append((d.link, d.reason))
    return out


def test_both_up_stays_on_preferred_link():
    p = MovementPolicy(PRIO, "wifi0", hold_down=2.0)
    p.observe_all({"wifi0": True, "lte0": True}, 0.0)
    assert decisions(p) == []
    assert p.current == "wifi0"
    assert p.get_timer() is None


def test_current_link_down_moves_at_once():
    p = MovementPolicy(PRIO, "wifi0", hold_down=2.0)
    p.observe_all({"wifi0": True, "lte0": True}, 0.0)
    p.observe("wifi0", False, 5.0)
    assert decisions(p) == [("lte0", "link down")]
    assert p.current == "lte0"


def test_better_link_returns_after_hold_down_only():
    p = MovementPolicy(PRIO, "wifi0", hold_down=2.0)
    p.observe_all({"wifi0": True, "lte0": True}, 0.0)
    p.observe("wifi0", False, 5.0)
    decisions(p)
    p.observe("wifi0", True, 10.0)
    assert decisions(p) == []            # not yet: hold-down
    assert p.get_timer() == pytest.approx(12.0)
    p.handle_timer(11.9)
    assert decisions(p) == []
    p.handle_timer(12.0)
    assert decisions(p) == [("wifi0", "better link")]
    assert p.get_timer() is None


def test_flapping_link_restarts_hold_down():
    p = MovementPolicy(PRIO, "lte0", hold_down=2.0)
    p.observe("lte0", True, 0.0)
    p.observe("wifi0", True, 1.0)
    p.observe("wifi0", False, 2.5)
    p.observe("wifi0", True, 2.8)
    p.handle_timer(3.0)          # would have been due for the first "up"
    assert decisions(p) == []
    p.handle_timer(4.8)
    assert decisions(p) == [("wifi0", "better link")]


def test_no_usable_link_keeps_current():
    p = MovementPolicy(PRIO, "wifi0")
    p.observe_all({"wifi0": False, "lte0": False}, 0.0)
    assert decisions(p) == []
    assert p.current == "wifi0"
    p.observe("lte0", True, 1.0)      # the first link that appears is taken at once
    assert decisions(p) == [("lte0", "link down")]


def test_unreachable_link_is_left_and_penalty_expires():
    p = MovementPolicy(PRIO, "wifi0", hold_down=1.0, unreachable_penalty=10.0)
    p.observe_all({"wifi0": True, "lte0": True}, 0.0)
    p.reachability_lost("wifi0", 3.0)
    assert decisions(p) == [("lte0", "unreachable")]
    assert p.get_timer() == pytest.approx(13.0)
    p.handle_timer(13.0)
    assert decisions(p) == [("wifi0", "better link")]


def test_link_bounce_clears_unreachable_verdict():
    p = MovementPolicy(PRIO, "wifi0", hold_down=1.0, unreachable_penalty=100.0)
    p.observe_all({"wifi0": True, "lte0": True}, 0.0)
    p.reachability_lost("wifi0", 1.0)
    decisions(p)
    p.observe("wifi0", False, 2.0)
    p.observe("wifi0", True, 3.0)
    p.handle_timer(4.0)
    assert decisions(p) == [("wifi0", "better link")]


def test_forced_move_is_not_undone_until_the_better_link_changes():
    p = MovementPolicy(PRIO, "wifi0", hold_down=1.0)
    p.observe_all({"wifi0": True, "lte0": True}, 0.0)
    p.forced("lte0", 5.0)
    p.handle_timer(100.0)
    assert decisions(p) == []
    assert p.current == "lte0"
    p.observe("wifi0", False, 101.0)
    p.observe("wifi0", True, 102.0)
    p.handle_timer(103.0)
    assert decisions(p) == [("wifi0", "better link")]


def test_forced_move_to_a_dead_link_moves_away():
    p = MovementPolicy(PRIO, "wifi0")
    p.observe_all({"wifi0": True, "lte0": False}, 0.0)
    p.forced("lte0", 1.0)
    assert decisions(p) == [("wifi0", "link down")]


def test_standby_links_are_the_usable_reachable_ones_besides_the_current():
    """Where early tests go (IRO draft §4.5.2): every link the MN may move to."""
    p = MovementPolicy({"wifi0": 10, "lte0": 20, "eth0": 5}, "wifi0", hold_down=2.0)
    p.observe_all({"wifi0": True, "lte0": True, "eth0": False}, 0.0)
    assert p.standby(0.0) == ["lte0"]
    p.observe("eth0", True, 1.0)             # better, in its hold-down: standby too
    assert p.standby(1.0) == ["eth0", "lte0"]
    p.reachability_lost("lte0", 1.5)
    assert p.standby(1.5) == ["eth0"]
    p.handle_timer(3.0)                      # eth0's hold-down over: current now
    assert p.current == "eth0" and p.standby(3.0) == ["wifi0"]


def test_unknown_link_is_an_error():
    with pytest.raises(ValueError):
        MovementPolicy(PRIO, "eth9")
    with pytest.raises(ValueError):
        MovementPolicy(PRIO).observe("eth9", True, 0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["wifi0", "lte0", "tick", "lost"]), st.booleans(),
                          st.floats(0, 5)), max_size=60))
def test_random_histories_keep_invariants(steps):
    """Whatever happens: the policy sits on a usable reachable link whenever one
    exists, never on a worse one for longer than the hold-down allows."""
    p = MovementPolicy(PRIO, "wifi0", hold_down=2.0, unreachable_penalty=3.0)
    now = 0.0
    usable = {"wifi0": False, "lte0": False}
    for what, flag, dt in steps:
        now += dt
        timer = p.get_timer()
        if timer is not None and timer <= now:
            p.handle_timer(now)
        if what in usable:
            usable[what] = flag
            p.observe(what, flag, now)
        elif what == "lost" and p.current is not None:
            p.reachability_lost(p.current, now)
        else:
            p.handle_timer(now)
        decisions(p)
        status = p.status(now)["links"]
        live = [n for n, s in status.items() if s["usable"] and s["reachable"]]
        if live:
            assert p.current in live
        t = p.get_timer()
        assert t is None or t >= now - 1e-9 or t == pytest.approx(now)


LINKS = [{"index": 2, "name": "wifi0", "up": True, "operstate": "UP", "carrier": 1},
         {"index": 3, "name": "lte0", "up": True, "operstate": "UP", "carrier": 1}]
WATCHED = [WatchedLink("wifi0", "wifi0", 10, ipaddress.ip_address("192.0.2.34")),
           WatchedLink("lte0", "lte0", 20, None)]


def test_usable_links_needs_up_carrier_and_bound_address():
    addrs = [{"index": 2, "address": "192.0.2.34", "tentative": False},
             {"index": 3, "address": "2001:db8:32::2", "tentative": False}]
    assert usable_links(WATCHED, LINKS, addrs) == {"wifi0": True, "lte0": True}
    down = [dict(LINKS[0], operstate="DOWN"), LINKS[1]]
    assert usable_links(WATCHED, down, addrs) == {"wifi0": False, "lte0": True}
    admin_down = [LINKS[0], dict(LINKS[1], up=False)]
    assert usable_links(WATCHED, admin_down, addrs) == {"wifi0": True, "lte0": False}


def test_usable_links_without_the_bound_address_or_only_tentative():
    addrs = [{"index": 2, "address": "192.0.2.99", "tentative": False},
             {"index": 3, "address": "2001:db8:32::2", "tentative": True},
             {"index": 3, "address": "fe80::1", "tentative": False}]
    assert usable_links(WATCHED, LINKS, addrs) == {"wifi0": False, "lte0": False}
    assert usable_links(WATCHED, [], []) == {"wifi0": False, "lte0": False}


# -- notifications: bad news acted on before the dump --------------------------------

NOTIFIED = [WatchedLink("wifi0", "w0", 10, None), WatchedLink("lte0", "l0", 20, None)]


def link_message(kind: int, name: str, flags: int, operstate: str | None = None,
                 carrier: int | None = None, family: int = 0) -> bytes:
    message = ifinfmsg()
    message["index"], message["flags"], message["family"] = 3, flags, family
    message["attrs"] = [("IFLA_IFNAME", name)]
    if operstate is not None:
        message["attrs"].append(("IFLA_OPERSTATE", operstate))
    if carrier is not None:
        message["attrs"].append(("IFLA_CARRIER", carrier))
    message["header"]["type"] = kind
    message.encode()
    return bytes(message.data)


def parsed(*datagrams: bytes) -> list:
    return [m for data in datagrams for m in MarshalRtnl().parse(data)]


def test_a_notification_reports_a_watched_link_down_and_nothing_else() -> None:
    address = ifaddrmsg()
    address["index"], address["attrs"] = 3, [("IFA_ADDRESS", "192.0.2.1")]
    address["header"]["type"] = RTM_NEWADDR
    address.encode()
    messages = parsed(
        link_message(RTM_NEWLINK, "w0", 0x1, "UP", 1),               # fine
        link_message(RTM_NEWLINK, "l0", 0x1, "UNKNOWN", 1),          # fine (a TUN-like link)
        link_message(RTM_NEWLINK, "eth9", 0x0, "DOWN"),              # not watched
        bytes(address.data))
    assert links_reported_down(NOTIFIED, messages) == []
    assert links_reported_down(NOTIFIED, parsed(link_message(RTM_NEWLINK, "w0", 0x0))) \
        == ["wifi0"]                                                    # admin down
    assert links_reported_down(NOTIFIED, parsed(
        link_message(RTM_NEWLINK, "w0", 0x1, "LOWERLAYERDOWN", 0),   # carrier lost
        link_message(RTM_NEWLINK, "l0", 0x1, "UNKNOWN", 0),          # no carrier
        link_message(RTM_NEWLINK, "w0", 0x1, "DOWN", 0))) == ["wifi0", "lte0"]
    assert links_reported_down(NOTIFIED, parsed(link_message(RTM_DELLINK, "l0", 0x1, "UP"))) \
        == ["lte0"]                                                     # removed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_datagram_on_the_notification_socket_never_raises(data: bytes) -> None:
    try:
        messages = list(MarshalRtnl().parse(data))
    except Exception:   # noqa: BLE001 - the watcher counts these (errors) and dumps
        return
    down = links_reported_down(NOTIFIED, messages)
    assert set(down) <= {"wifi0", "lte0"} and len(down) == len(set(down))


AF_BRIDGE = 7


def test_a_bridge_ports_news_is_not_the_links() -> None:
    """Released from a bridge, a port gets an RTM_DELLINK of family AF_BRIDGE
    (seen on Linux 6.x with ``ip link set w0 nomaster``) while the link
    itself stays up: not a reason to leave it."""
    assert links_reported_down(NOTIFIED, parsed(
        link_message(RTM_DELLINK, "w0", 0x11043, "UP", family=AF_BRIDGE),
        link_message(RTM_NEWLINK, "l0", 0x0, "DOWN", family=AF_BRIDGE))) == []
    datagram = link_message(RTM_DELLINK, "w0", 0x11043, "UP", family=AF_BRIDGE)
    assert list(link_notices(datagram, {"w0"})) == []


def test_only_the_watched_links_messages_are_handed_to_the_parser() -> None:
    address = ifaddrmsg()
    address["index"], address["attrs"] = 3, [("IFA_ADDRESS", "192.0.2.1")]
    address["header"]["type"] = RTM_NEWADDR
    address.encode()
    wanted = link_message(RTM_NEWLINK, "w0", 0x0, "DOWN")
    gone = link_message(RTM_DELLINK, "l0", 0x1)
    datagram = (bytes(address.data) + link_message(RTM_NEWLINK, "eth9", 0x0) + wanted
                + link_message(RTM_NEWLINK, "w0x", 0x0) + gone)
    assert list(link_notices(datagram, {"w0", "l0"})) == [wanted, gone]
    assert links_reported_down(NOTIFIED, [m for notice in link_notices(datagram, {"w0", "l0"})
                                          for m in MarshalRtnl().parse(notice)]) \
        == ["wifi0", "lte0"]
    assert list(link_notices(wanted[:40], {"w0"})) == []          # truncated


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from([b"", b"w0", b"l0\0"]))
def test_the_notice_filter_never_raises_and_keeps_whole_link_messages(data: bytes,
                                                                     name: bytes) -> None:
    if name:
        # Now and then a well-formed link message of one of ours, after noise.
        data = data + link_message(RTM_NEWLINK, name.rstrip(b"\0").decode(), 0x0)
    for notice in link_notices(data, {"w0", "l0"}):
        assert notice in data and len(notice) >= 32
        assert int.from_bytes(notice[4:6], "little") in (RTM_NEWLINK, RTM_DELLINK)


# -- the watcher's plumbing, without netlink -------------------------------------------


class _Services:
    """The NodeServices the watcher uses, stand-ins (no netlink, no node)."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from vmip.node.events import EventHub
        from vmip.node.pump import Pump

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
        self.pump = Pump(time.monotonic, Counter())

    def link_names(self) -> list[str]:
        return ["wifi0", "lte0"]

    def move(self, link: str) -> dict:
        self.active_link = link
        return {}

    def link_coa(self, link: str) -> None:
        return None

    def early_test(self, link: str, peer=None) -> int:
        return 0


class _QuietSocket:
    def recv(self, size: int) -> bytes:
        raise BlockingIOError

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def test_notifications_never_block_the_loop_on_a_stuck_dump_thread() -> None:
    """Each notification round wakes the dump thread through a pipe.  If
    that thread is stuck in a dump (or died), the pipe fills after 64 KiB of
    rounds: the node's loop must not then block in the write."""
    release = threading.Event()
    calls: list[int] = []

    def dump():
        calls.append(1)
        if len(calls) > 1:
            release.wait(30)
        return [], []

    loop = asyncio.new_event_loop()
    watcher = MovementWatcher(_Services(), dump=dump)
    watcher._listen = lambda loop: None
    try:
        watcher.start(loop)
        watcher._events = _QuietSocket()
        rounds = threading.Thread(target=lambda: [watcher._on_notification()
                                                  for _ in range(70_000)], daemon=True)
        rounds.start()
        rounds.join(5)
        blocked = rounds.is_alive()
    finally:
        release.set()
        if watcher._wake_r is not None:
            # Unblock a stuck writer before closing (so the test ends either way).
            os.set_blocking(watcher._wake_r, False)
            deadline = time.monotonic() + 30
            while rounds.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    os.read(watcher._wake_r, 65536)
            os.set_blocking(watcher._wake_w, False)
        watcher._events = None
        watcher.close()
        loop.close()
    assert not blocked, "the loop blocked writing to the dump thread's pipe"
