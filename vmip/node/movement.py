"""Movement detection on the MN: which access link carries the CoA.

Two layers, as everywhere in vmip:

- :class:`MovementPolicy` is sans-IO: it is told what each link looks like
  (usable or not, reachable or not) and the time, and it answers with
  :class:`MoveDecision` objects and a timer deadline.  Tests drive it with a
  fake clock.
- :class:`MovementWatcher` is the I/O: a netlink socket bound to the link,
  address and route multicast groups, read on the node's loop (pyroute2
  parses the messages).  A notification that a watched link went down is
  acted on at once; every burst also wakes a thread that dumps links and
  addresses with pyroute2's ``IPRoute`` (whose synchronous API runs an
  event loop of its own and cannot run on the node loop's thread, see
  :mod:`vmip.node.tun`) and hands the summary to the node's loop; the
  policy decides, ``services.move()`` acts.  Its timer is the policy's,
  kept by the node's pump.

The rules (RFC 6275 §11.5.1 leaves movement detection to the implementation;
these are vmip's choices, documented in docs/operations.md):

- a link is *usable* when its interface is administratively up, has carrier
  (operstate UP, or UNKNOWN with carrier) and holds the address the link
  binds to (any global address when it binds to the wildcard);
- the preferred link is the usable one with the lowest config ``priority``
  (wifi 10 before lte 20 in the lab), ties broken by name;
- when the current link stops being usable, the CoA moves at once to the
  best usable link left (break-before-make is forced on us);
- when a better link becomes usable, the CoA moves back only after it has
  stayed usable for ``hold_down`` seconds (no flapping); until then both
  links carry traffic: the old one stays current, and after the move the
  old link's socket stays open, so packets in flight on it still arrive
  (make-before-break);
- reachability: the MN's own registration with its HA is the probe.  A
  ``RegistrationTimeout`` for the HA on the current link's CoA marks that
  link unreachable for ``unreachable_penalty`` seconds (or until the link
  goes down and up again), which moves the CoA like a link loss.  A BA
  costs nothing extra on the wire, unlike a separate probe stream.
- ``vmip mn move LINK`` (a forced move) is obeyed; the policy then does not
  move back to a better link until that link changes state again;
- early tests (IRO draft §4.5.2): a link that becomes usable, and every
  usable standby link when a CN accepts the current CoA, has its CoA
  proven to the CNs over that link (``services.early_test``), so the move
  there needs no address test round trip.
- with ``[mobility] multiple_care_of`` (RFC 5648, docs/multi-coa.md) every
  usable, reachable link holds a binding of its own
  (``services.set_care_of_links``): a link that comes up is registered at
  once, one that goes down is removed at once (the core deregisters its
  BID over a remaining link), and the policy's choice is the primary one.
  The hold-down still applies to making a better link primary again.  No
  early tests: a link with its own binding has its CoA proven already.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from vmip.log import get_logger
from vmip.mobility.events import BindingAccepted, RegistrationTimeout
from vmip.node.events import TimedEvent

log = get_logger(__name__)

#: Seconds a better link must stay usable before the CoA moves back to it.
DEFAULT_HOLD_DOWN = 2.0
#: Seconds a link whose HA registration timed out stays out of the choice.
DEFAULT_UNREACHABLE_PENALTY = 10.0
#: Seconds between full re-reads of the links even without notifications
#: (a lost netlink notification must not leave the MN on a dead link forever).
RESCAN_INTERVAL = 2.0
#: How many decisions ``status()`` remembers.
HISTORY = 32
#: A binding per link (RFC 5648): a link whose binding came or went more
#: than once in the last REBIND_WINDOW seconds is added again only after
#: that, so that a flapping link costs at most MAX_UPDATE_RATE (3) BUs a
#: second for its BID (RFC 6275 §11.8).  Removing a dead link never waits.
REBIND_WINDOW = 1.0

_IFF_UP = 0x1
#: The rtnetlink multicast groups watched: links, IPv4/IPv6 addresses and routes.
_NOTIFY_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
                  | RTMGRP_IPV6_ROUTE)
#: Datagrams read per wake-up at most, and the buffer for each.
_NOTIFY_READS = 64
_NOTIFY_BUFFER = 65536
_MARSHAL = MarshalRtnl()
# Netlink framing (linux/netlink.h, linux/rtnetlink.h), host byte order: the
# header's length and type, an ifinfomsg after it, then route attributes.
_NLMSG_LEN_TYPE = struct.Struct("=IH")
_RTA_LEN_TYPE = struct.Struct("=HH")
_NLMSG_HEADER_LEN = 16
_IFINFO_END = _NLMSG_HEADER_LEN + 16
_LINK_MESSAGES = (16, 17)          # RTM_NEWLINK, RTM_DELLINK
_AF_UNSPEC = 0
_IFLA_IFNAME = 3
_NLA_TYPE_MASK = 0x3FFF
_IFA_F_TENTATIVE = 0x40
_IFA_F_DADFAILED = 0x08
_RT_SCOPE_UNIVERSE = 0


@dataclass(frozen=True, slots=True)
class MoveDecision:
    """Move the CoA to ``link`` now; ``reason`` says why (for logs and the dashboard)."""

    link: str
    previous: str | None
    reason: str


@dataclass(slots=True)
class _LinkState:
    priority: int
    usable: bool = False
    usable_since: float | None = None
    unreachable_until: float | None = None
    #: May the policy move back to this link when it is better than the current one?
    may_return: bool = True


class MovementPolicy:
    """Chooses the access link; sans-IO (inputs: observations and ``now``)."""

    def __init__(self, priorities: Mapping[str, int], current: str | None = None, *,
                 hold_down: float = DEFAULT_HOLD_DOWN,
                 unreachable_penalty: float = DEFAULT_UNREACHABLE_PENALTY) -> None:
        if not priorities:
            raise ValueError("a movement policy needs at least one link")
        if current is not None and current not in priorities:
            raise ValueError(f"unknown current link {current!r}")
        self.hold_down = hold_down
        self.unreachable_penalty = unreachable_penalty
        self.current = current
        self._links = {name: _LinkState(prio) for name, prio in priorities.items()}
        self._decisions: deque[MoveDecision] = deque()

    # -- inputs ------------------------------------------------------------------

    def observe(self, link: str, usable: bool, now: float) -> None:
        """The watcher's latest view of *link*; repeated identical views are no-ops."""
        state = self._state(link)
        if usable and not state.usable:
            state.usable, state.usable_since = True, now
            # A fresh attachment clears an old reachability verdict and a forced pin.
            state.unreachable_until = None
            state.may_return = True
        elif not usable and state.usable:
            state.usable, state.usable_since = False, None
        self._evaluate(now)

    def observe_all(self, usable: Mapping[str, bool], now: float) -> None:
        for link, is_usable in usable.items():
            if link in self._links:
                self.observe(link, is_usable, now)

    def reachability_lost(self, link: str, now: float) -> None:
        """The HA did not answer on *link*: keep it out of the choice for a while."""
        self._state(link).unreachable_until = now + self.unreachable_penalty
        self._evaluate(now)

    def forced(self, link: str, now: float) -> None:
        """An operator moved the CoA (``vmip mn move``): adopt it, do not undo it."""
        self._state(link)
        self.current = link
        for name, state in self._links.items():
            if name != link:
                state.may_return = False
        self._evaluate(now)

    # -- timers ------------------------------------------------------------------

    def get_timer(self) -> float | None:
        # Only a better link can change the choice on its own: when its
        # hold-down ends, or its unreachable verdict expires, whichever is later.
        deadlines = []
        for name, state in self._links.items():
            if self._better_than_current(name) and state.usable_since is not None \
                    and state.may_return:
                deadline = state.usable_since + self.hold_down
                if state.unreachable_until is not None:
                    deadline = max(deadline, state.unreachable_until)
                deadlines.append(deadline)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self._evaluate(now)

    # -- outputs -----------------------------------------------------------------

    def usable_links(self, now: float) -> list[str]:
        """Usable, reachable links, best first (the current one wherever it ranks)."""
        return sorted((name for name, s in self._links.items()
                       if s.usable and self._reachable(s, now)), key=self._rank)

    def standby(self, now: float) -> list[str]:
        """Usable, reachable links other than the current one, best first."""
        return sorted((name for name, s in self._links.items()
                       if s.usable and self._reachable(s, now) and name != self.current),
                      key=self._rank)

    def next_decision(self) -> MoveDecision | None:
        return self._decisions.popleft() if self._decisions else None

    def status(self, now: float) -> dict[str, Any]:
        return {
            "current": self.current,
            "hold_down_s": self.hold_down,
            "links": {
                name: {"priority": s.priority, "usable": s.usable,
                       "reachable": self._reachable(s, now),
                       "usable_for_s": round(now - s.usable_since, 3)
                       if s.usable_since is not None else None}
                for name, s in sorted(self._links.items(), key=lambda kv: kv[1].priority)},
        }

    # -- the rules ---------------------------------------------------------------

    def _state(self, link: str) -> _LinkState:
        try:
            return self._links[link]
        except KeyError:
            raise ValueError(f"unknown link {link!r}") from None

    @staticmethod
    def _reachable(state: _LinkState, now: float) -> bool:
        return state.unreachable_until is None or now >= state.unreachable_until

    def _better_than_current(self, name: str) -> bool:
        if self.current is None or name == self.current:
            return False
        return self._rank(name) < self._rank(self.current)

    def _rank(self, name: str) -> tuple[int, str]:
        return (self._links[name].priority, name)

    def _evaluate(self, now: float) -> None:
        for state in self._links.values():
            if state.unreachable_until is not None and now >= state.unreachable_until:
                state.unreachable_until = None
        candidates = sorted((name for name, s in self._links.items()
                             if s.usable and self._reachable(s, now)), key=self._rank)
        if not candidates:
            return  # nowhere to go: stay, the binding survives a short outage
        best = candidates[0]
        current = self.current
        if current is None or current not in candidates:
            # The current link is gone or unreachable: move at once.
            reason = "initial" if current is None else (
                "link down" if not self._links[current].usable else "unreachable")
            self._decide(best, reason)
            return
        for name in candidates:
            if name == current:
                break   # nothing better than the current link is usable
            state = self._links[name]
            if state.may_return and state.usable_since is not None \
                    and now - state.usable_since >= self.hold_down:
                self._decide(name, "better link")
                return

    def _decide(self, link: str, reason: str) -> None:
        decision = MoveDecision(link, self.current, reason)
        self.current = link
        self._decisions.append(decision)


# ---------------------------------------------------------------------------
# Reading the links (pure functions over pyroute2 messages, testable with dicts)


@dataclass(frozen=True, slots=True)
class WatchedLink:
    """What the watcher needs from a link's config."""

    name: str
    interface: str
    priority: int
    #: The address the link binds to; None or a wildcard: any global address.
    bind: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


#: Seconds the MN still takes IPsec packets addressed to the CoA it left.
#: Peers keep sending there until our BU reaches them, and what is already in
#: flight on the old link (one-way lte ≈ 30 ms in the lab) still arrives.
DEFAULT_PREVIOUS_COA_GRACE = 1.0


class PreviousCoas:
    """CoAs the MN left moments ago, and the packets still arriving at them (sans-IO).

    After a move the MN's inbound remap rules name only the new CoA, so a
    packet a CN sent to the old one before our BU reached it failed the
    expected-address check and was dropped: 3-17 probes per lte->wifi
    handover in the lab (docs/demo.md, "Handover benchmark").  The docs promise make-before-break (the
    old link's socket stays open); this is the other half: for ``grace``
    seconds such a packet is taken as if it had reached the current CoA.
    Nothing is trusted by this: ESP (ICV, anti-replay) and the inbound policy
    check still run on it, and the MN did own the old address.
    """

    def __init__(self, grace: float = DEFAULT_PREVIOUS_COA_GRACE) -> None:
        self.grace = grace
        self._until: dict[bytes, float] = {}
        self._current: bytes | None = None
        self.redirected = 0

    def moved(self, old: ipaddress.IPv6Address | None, new: ipaddress.IPv6Address | None,
              now: float) -> None:
        self._current = None if new is None else new.packed
        if new is not None:
            self._until.pop(new.packed, None)    # back on it: it is current again
        if old is not None and new is not None:
            self._until[old.packed] = now + self.grace
        else:
            self._until.clear()                  # home (or first CoA): nothing to carry over
        for address in [a for a, until in self._until.items() if until <= now]:
            del self._until[address]

    def redirect(self, wire: bytes, now: float) -> bytes | None:
        """*wire* with its destination set to the current CoA, if it was sent to a CoA
        left less than ``grace`` seconds ago; else ``None``."""
        if self._current is None or len(wire) < 40 or not self._until:
            return None
        until = self._until.get(bytes(wire[24:40]))
        if until is None:
            return None
        if until <= now:
            del self._until[bytes(wire[24:40])]
            return None
        self.redirected += 1
        return b"".join((wire[:24], self._current, wire[40:]))


def usable_links(watched: Iterable[WatchedLink], links: Iterable[dict],
                 addresses: Iterable[dict]) -> dict[str, bool]:
    """Which watched links are usable, from plain summaries of a netlink dump.

    *links*: ``{"index", "name", "up", "operstate", "carrier"}``;
    *addresses*: ``{"index", "address", "tentative"}``.
    """
    by_name = {link["name"]: link for link in links}
    addrs: dict[int, set[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    for entry in addresses:
        if entry.get("tentative"):
            continue  # RFC 4862 §5.4: a tentative address cannot be used yet
        try:
            address = ipaddress.ip_address(entry["address"])
        except ValueError:
            continue
        addrs.setdefault(entry["index"], set()).add(address)
    result = {}
    for want in watched:
        link = by_name.get(want.interface)
        ok = False
        if link is not None and link["up"]:
            operstate = link.get("operstate")
            ok = operstate == "UP" or (operstate == "UNKNOWN" and bool(link.get("carrier")))
        if ok and link is not None:
            held = addrs.get(link["index"], set())
            if want.bind is not None and not want.bind.is_unspecified:
                ok = want.bind in held
            else:
                ok = any(not a.is_link_local and not a.is_loopback for a in held)
        result[want.name] = ok
    return result


def links_reported_down(watched: Iterable[WatchedLink], messages: Iterable[Any]) -> list[str]:
    """The watched links that a batch of netlink notifications shows unusable:
    an RTM_DELLINK, or an RTM_NEWLINK whose link is down (the same test as
    :func:`usable_links`, without the addresses a notification lacks).

    Only bad news is taken from a notification: a link coming up still needs
    its addresses, which only the dump that follows gives."""
    by_interface = {want.interface: want.name for want in watched}
    down: list[str] = []
    for message in messages:
        try:
            event = message["event"]
            if event not in ("RTM_NEWLINK", "RTM_DELLINK") or message["family"] != _AF_UNSPEC:
                continue   # AF_BRIDGE: a bridge port's news (released: RTM_DELLINK), not the link's
            name = by_interface.get(message.get_attr("IFLA_IFNAME"))
            if name is None or name in down:
                continue
            if event == "RTM_DELLINK" or not message["flags"] & _IFF_UP:
                down.append(name)
                continue
            operstate = message.get_attr("IFLA_OPERSTATE")
            if operstate is not None and not (
                    operstate == "UP"
                    or (operstate == "UNKNOWN" and bool(message.get_attr("IFLA_CARRIER")))):
                down.append(name)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue   # a message of another shape: the dump decides
    return down


def link_notices(data: bytes, interfaces: Container[str]) -> Iterator[bytes]:
    """The link messages of one netlink datagram that concern *interfaces*
    (RTM_NEWLINK and RTM_DELLINK of family AF_UNSPEC naming one of them).

    pyroute2 takes some 90 us to parse one message: on the node's loop only
    these are worth it, not every route or address change, nor another
    interface's news (a burst of them would hold the data path up)."""
    end = len(data)
    offset = 0
    while offset + _NLMSG_HEADER_LEN <= end:
        length, kind = _NLMSG_LEN_TYPE.unpack_from(data, offset)
        if length < _NLMSG_HEADER_LEN or offset + length > end:
            return                                  # truncated: the dump decides
        if kind in _LINK_MESSAGES and length >= _IFINFO_END \
                and data[offset + _NLMSG_HEADER_LEN] == _AF_UNSPEC:
            name = _ifname(data, offset + _IFINFO_END, offset + length)
            if name is not None and name in interfaces:
                yield data[offset:offset + length]
        offset += (length + 3) & ~3


def _ifname(data: bytes, start: int, end: int) -> str | None:
    """IFLA_IFNAME among the route attributes in data[start:end], if any."""
    while start + 4 <= end:
        size, kind = _RTA_LEN_TYPE.unpack_from(data, start)
        if size < 4 or start + size > end:
            return None
        if kind & _NLA_TYPE_MASK == _IFLA_IFNAME:
            return data[start + 4:start + size].split(b"\0", 1)[0].decode("utf-8", "replace")
        start += (size + 3) & ~3
    return None


def _read(ipr: Any) -> tuple[list[dict], list[dict]]:
    links = [{"index": m["index"], "name": m.get_attr("IFLA_IFNAME"),
              "up": bool(m["flags"] & _IFF_UP),
              "operstate": m.get_attr("IFLA_OPERSTATE"),
              "carrier": m.get_attr("IFLA_CARRIER")} for m in ipr.get_links()]
    addrs = [{"index": m["index"], "address": m.get_attr("IFA_ADDRESS"),
              "tentative": bool((m.get_attr("IFA_FLAGS") or m["flags"])
                                & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED))}
             for m in ipr.get_addr() if m["scope"] == _RT_SCOPE_UNIVERSE]
    return links, addrs


def _dump() -> tuple[list[dict], list[dict]]:
    """One-shot dump on a socket of its own (for callers outside the watcher)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return _read(ipr)


class _PersistentDump:
    """Dumps on one netlink socket kept open by the watcher's thread.

    Opening a fresh pyroute2 IPRoute per scan cost 2-11 ms on every link
    change (the handover work, docs/demo.md), time the MN spends on a dead link before it moves.
    """

    def __init__(self) -> None:
        self._ipr: Any = None

    def __call__(self) -> tuple[list[dict], list[dict]]:
        from pyroute2 import IPRoute

        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            return _read(self._ipr)
        except Exception:
            self.close()   # a broken socket is reopened on the next scan
            raise

    def close(self) -> None:
        if self._ipr is not None:
            ipr, self._ipr = self._ipr, None
            with contextlib.suppress(OSError, ValueError):   # already broken: nothing to free
                ipr.close()


# ---------------------------------------------------------------------------
# The I/O layer


@dataclass
class _History:
    entries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))


class MovementWatcher:
    """Watches the MN's access links through netlink and moves the CoA.

    Created by the runtime on an MN with the node's
    :class:`~vmip.node.services.NodeServices`; ``start(loop)`` on the node's
    loop, ``close()`` when the node stops, ``status()`` for ``vmip bindings``
    and the dashboard.  The pump calls ``get_timer``/``handle_timer``.
    """

    def __init__(self, services: Any, *, hold_down: float = DEFAULT_HOLD_DOWN,
                 unreachable_penalty: float = DEFAULT_UNREACHABLE_PENALTY,
                 dump: Callable[[], tuple[list[dict], list[dict]]] | None = None) -> None:
        self.services = services
        names = set(services.link_names())
        self.watched = [WatchedLink(link.name, link.interface or link.name, link.priority,
                                    link.bind)
                        for link in services.config.links if link.name in names]
        self.policy = MovementPolicy({w.name: w.priority for w in self.watched},
                                     services.active_link, hold_down=hold_down,
                                     unreachable_penalty=unreachable_penalty)
        self._own_dump = _PersistentDump() if dump is None else None
        self._dump: Callable[[], tuple[list[dict], list[dict]]] = \
            dump if dump is not None else self._own_dump   # type: ignore[assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._history = _History()
        self.scans = 0
        self.errors = 0
        #: Early tests of standby links' CoAs offered to CNs (draft §4.5.2).
        self.early_tests = 0
        #: RFC 5648: one binding per usable link (the links and the primary last handed over).
        self.multiple_care_of = bool(getattr(services.config.mobility, "multiple_care_of", False))
        self._bound_links: tuple[tuple[str, ...], str | None] = ((), None)
        # Per link, when its binding last came or went (two are enough, see
        # REBIND_WINDOW), and when a link held back may be bound again.
        self._rebinds: dict[str, deque[float]] = {}
        self._rebind_at: float | None = None
        #: Links held back because they came and went too often (REBIND_WINDOW).
        self.rebinds_held = 0
        #: Notifications that took a link out before any dump (``_on_notification``).
        self.notified_down = 0
        self._events: Any = None
        self._interfaces = frozenset(want.interface for want in self.watched)
        # Notification rounds that took a link out, and per link the last
        # such round: a dump that began before it read that link as it was.
        self._down_rounds = 0
        self._reported_down: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.watched:
            return
        self._loop = loop
        self._wake_r, self._wake_w = os.pipe()
        # Written on the loop: a full pipe (the dump thread stuck or gone)
        # already says "look again", it must not block the node.
        os.set_blocking(self._wake_w, False)
        self.services.events.subscribe(self._on_mobility_event)
        self.services.pump.add("movement", self)
        self._listen(loop)
        self._thread = threading.Thread(target=self._run, name="vmip-movement", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._unlisten()
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=3.0)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None
        self.detach()

    def detach(self) -> None:
        """Stop listening to the node (events, timer)."""
        self.services.events.unsubscribe(self._on_mobility_event)
        self.services.pump.remove(self)

    def status(self) -> dict:
        now = self.services.clock()
        return {"automatic": self._thread is not None, **self.policy.status(now),
                "scans": self.scans, "errors": self.errors, "early_tests": self.early_tests,
                "notified_down": self.notified_down,
                "bound_links": list(self._bound_links[0]), "rebinds_held": self.rebinds_held,
                "decisions": list(self._history.entries)}

    # -- netlink notifications, on the node's loop ----------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read link and address notifications on the loop itself.

        A link that goes down is acted on from the notification, in this
        loop round: on a thread of its own it first waited for the GIL the
        busy data path holds (5 ms at a time, ``sys.getswitchinterval``),
        and again for each system call of the dump (14-24 ms in the lab
        under load).  pyroute2's synchronous ``IPRoute`` cannot run inside
        a running loop, so the socket is a plain one and pyroute2 only
        parses; the dump, which confirms and finds what came up, stays on
        the thread."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:  # no netlink here: the periodic scan goes on
            log.warning("movement watcher: no netlink notifications", error=str(exc))
            self.errors += 1
            return
        try:
            sock.setblocking(False)
            sock.bind((0, _NOTIFY_GROUPS))
            loop.add_reader(sock.fileno(), self._on_notification)
        except (OSError, RuntimeError) as exc:
            sock.close()
            log.warning("movement watcher: no netlink notifications", error=str(exc))
            self.errors += 1
            return
        self._events = sock

    def _unlisten(self) -> None:
        sock, self._events = self._events, None
        if sock is None:
            return
        with contextlib.suppress(Exception):   # the loop is gone already: nothing to remove
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
        sock.close()

    def _on_notification(self) -> None:
        sock = self._events
        if sock is None:
            return
        messages: list[Any] = []
        for _ in range(_NOTIFY_READS):
            try:
                data = sock.recv(_NOTIFY_BUFFER)
            except BlockingIOError:
                break
            except OSError as exc:
                # ENOBUFS: notifications were lost; the dump below sees the truth.
                self.errors += 1
                log.debug("movement watcher: notifications lost", error=str(exc))
                break
            try:
                for notice in link_notices(data, self._interfaces):
                    messages.extend(_MARSHAL.parse(notice))
            except Exception:  # noqa: BLE001 - unreadable: the dump decides
                self.errors += 1
        down = links_reported_down(self.watched, messages)
        if down:
            self.notified_down += 1
            self._down_rounds += 1
            for name in down:
                self._reported_down[name] = self._down_rounds
            self._apply(dict.fromkeys(down, False))
        # Any change means "look again": the dump confirms, and sees links come up.
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # -- the dump thread -------------------------------------------------------------

    def _run(self) -> None:
        wake = self._wake_r
        assert wake is not None      # start() made the pipe before the thread
        try:
            self._scan()
            while not self._stop.is_set():
                ready, _, _ = select.select([wake], [], [], RESCAN_INTERVAL)
                if self._stop.is_set():
                    break
                if ready:
                    # Every wake-up asked for a scan: one scan answers them all.
                    with contextlib.suppress(OSError):
                        os.read(wake, 4096)
                self._scan()
        except Exception as exc:  # noqa: BLE001 - the thread ends, the node goes on
            self.errors += 1
            log.warning("movement watcher stopped", error=str(exc))
        finally:
            if self._own_dump is not None:
                self._own_dump.close()

    def _scan(self) -> None:
        began = self._down_rounds        # read before the dump reads the links
        try:
            links, addrs = self._dump()
        except Exception as exc:  # noqa: BLE001 - counted; the next scan tries again
            self.errors += 1
            log.warning("movement watcher: dump failed", error=str(exc))
            return
        usable = usable_links(self.watched, links, addrs)
        self.scans += 1
        loop = self._loop
        if loop is not None and not self._stop.is_set():
            try:
                loop.call_soon_threadsafe(self._apply_dump, usable, began)
            except RuntimeError:
                pass  # the loop closed under us: the node is stopping

    # -- on the node's loop --------------------------------------------------------

    def _apply_dump(self, usable: dict[str, bool], began: int) -> None:
        """A dump's verdicts, save a link that it read as usable before a
        notification said it went down: the dump that notification asked
        for decides that link (a starved thread's stale view must not move
        the CoA back to a dead link)."""
        reported = self._reported_down
        self._apply({name: ok for name, ok in usable.items()
                     if not ok or reported.get(name, 0) <= began})

    def _apply(self, usable: dict[str, bool]) -> None:
        if self._stop.is_set():
            return
        self._sync_forced()
        now = self.services.clock()
        before = set(self.policy.standby(now))
        self.policy.observe_all(usable, now)
        self._act()
        if self.multiple_care_of:
            return   # every usable link has a binding of its own: nothing to prove early
        # A link that just became usable is where the MN may move next: after
        # the hold-down if it is better, at once if the current link fails.
        # Prove its CoA to the CNs now, over that link (draft §4.5.2), so the
        # move itself needs no address test round trip.
        for link in self.policy.standby(now):
            if link not in before:
                self._early_test(link)

    def _early_test(self, link: str, peer: Any = None) -> None:
        loop = self._loop
        if loop is None:
            return
        # Out of the event or netlink delivery: the test sends and pumps.
        loop.call_soon(self._run_early_test, link, peer)

    def _run_early_test(self, link: str, peer: Any) -> None:
        if self._stop.is_set() or link == self.services.active_link:
            return
        try:
            started = self.services.early_test(link, peer)
        except Exception as exc:  # noqa: BLE001 - an optimisation; counted, the node goes on
            self.errors += 1
            log.warning("early test failed", link=link, error=str(exc))
            return
        self.early_tests += started

    def _on_mobility_event(self, timed: TimedEvent) -> None:
        event = timed.event
        if isinstance(event, BindingAccepted):
            self._on_binding_accepted(event)
            return
        # Only the HA's silence counts: a CN may simply not implement IRO.
        if not isinstance(event, RegistrationTimeout):
            return
        if event.peer != self.services.config.mobility.home_agent:
            return
        if self.multiple_care_of:
            # Every link has a binding of its own: the one whose CoA went
            # unanswered leaves the set for a while, primary or not.
            for link in self.services.link_names():
                if event.coa is not None and event.coa == self.services.link_coa(link):
                    self.policy.reachability_lost(link, self.services.clock())
                    self._act()
            return
        current = self.services.active_link
        if current is None or event.coa != self.services.link_coa(current):
            return
        self.policy.reachability_lost(current, self.services.clock())
        self._act()

    def _on_binding_accepted(self, event: BindingAccepted) -> None:
        """A CN accepted our current CoA: prove the standby links' CoAs to it too
        (draft §4.5.2 names multi-homed nodes with "a list of possible CoAs
        they will switch to if they lose their primary connectivity")."""
        if event.peer == self.services.config.mobility.home_agent or event.lifetime == 0 \
                or self.multiple_care_of:
            return
        current = self.services.active_link
        if current is None or event.coa != self.services.link_coa(current):
            return
        for link in self.policy.standby(self.services.clock()):
            self._early_test(link, event.peer)

    def _sync_forced(self) -> None:
        """``vmip mn move`` changed the link behind the policy's back: adopt it."""
        active = self.services.active_link
        if active is not None and active != self.policy.current \
                and active in self.services.link_names():
            self.policy.forced(active, self.services.clock())

    def _act(self) -> None:
        self._drain()
        self.services.pump.arm()

    def _drain(self) -> None:
        last = None
        while (decision := self.policy.next_decision()) is not None:
            last = decision   # only where the policy ended up matters
        if self.multiple_care_of:
            self._bind_links(last)
            return
        if last is not None and last.link != self.services.active_link:
            decision, previous = last, self.services.active_link
            try:
                self.services.move(decision.link)
            except Exception as exc:  # noqa: BLE001 - counted and logged; stay put
                self.errors += 1
                log.warning("automatic move failed", link=decision.link, error=str(exc))
                return
            entry = {"t": self.services.wall_clock(), "from": previous, "to": decision.link,
                     "reason": decision.reason}
            self._history.entries.append(entry)
            log.info("automatic move", **{k: v or "-" for k, v in entry.items() if k != "t"})

    def _bind_links(self, decision: MoveDecision | None) -> None:
        """RFC 5648: a binding on every usable, reachable link, the policy's
        choice primary.  Nothing usable: the bindings stay (a short outage)."""
        now = self.services.clock()
        usable = self.policy.usable_links(now)
        if not usable:
            return
        current = self.policy.current
        primary = current if current in usable else usable[0]
        bound = set(self._bound_links[0])
        links = []
        self._rebind_at = None
        for link in usable:
            recent = [t for t in self._rebinds.get(link, ()) if t > now - REBIND_WINDOW]
            if link in bound or link == primary or len(recent) <= 1:
                links.append(link)
                continue
            # A flapping link: bound again once its older change is a window old.
            self.rebinds_held += 1
            again = recent[-2] + REBIND_WINDOW
            self._rebind_at = again if self._rebind_at is None else min(self._rebind_at, again)
        wanted = (tuple(links), primary)
        if wanted == self._bound_links and primary == self.services.active_link:
            return
        previous = self.services.active_link
        try:
            self.services.set_care_of_links(links, primary)
        except Exception as exc:  # noqa: BLE001 - counted and logged; try again next look
            self.errors += 1
            log.warning("binding the usable links failed", links=",".join(links),
                        error=str(exc))
            return
        for link in bound.symmetric_difference(links):
            self._rebinds.setdefault(link, deque(maxlen=2)).append(now)
        self._bound_links = wanted
        if primary != previous:
            entry = {"t": self.services.wall_clock(), "from": previous, "to": primary,
                     "reason": decision.reason if decision is not None else "primary",
                     "links": ",".join(links)}
            self._history.entries.append(entry)
            log.info("automatic move", **{k: v or "-" for k, v in entry.items() if k != "t"})

    # -- the pump's side ----------------------------------------------------------

    def get_timer(self) -> float | None:
        deadlines = [t for t in (self.policy.get_timer(), self._rebind_at) if t is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self._sync_forced()
        self.policy.handle_timer(now)
        self._drain()
