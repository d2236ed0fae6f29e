"""Per-flow send policy over several bound paths: best link, a named link, or all.

With multiple care-of addresses (RFC 5648) a peer may be reached on several
paths at once.  RFC 6089 binds flows, described by traffic selectors, to
one or more binding identifiers and signals those bindings to the peer.
vmip takes the model but not the signalling: each node's ``[[flow]]``
tables (docs/configuration.md) say how *it sends* each flow, because what
a node sends is all its own policy can decide; a peer mirrors the MN's
choice for "best" flows by itself (``MobilityAgent.paths_to``), and
duplicate copies need nothing from the receiver but its anti-replay window
(docs/multi-coa.md, "Per-flow policy and duplicate mode").

Two parts, both sans-IO:

- :class:`FlowPolicy` classifies an inner packet (before ESP) into a
  :class:`FlowMode`.  The flows are compiled into a private
  :class:`~vmip.ipsec.spd.SPD`, one BYPASS entry per flow in file order, so
  matching is the SPD's (RFC 4301 §4.4.1.1 selectors read through the
  extension headers by :func:`~vmip.wire.flow.flow_key`) and a known flow
  costs one cached dict lookup.  A node without ``[[flow]]`` pays one branch.
- :class:`FlowSender` turns the mode and the bound paths towards the packet's
  peer into the ancillary data of each copy to send.

Fragments: the node reassembles the host's fragments before ESP (RFC 4303
§3.1.1), so in a running node every fragment follows its datagram's flow.
Given a non-first fragment by itself, the classifier sees no ports (they
are in the first fragment), as the SPD does: OPAQUE ports, which only flows
without port selectors match (RFC 4301 §4.4.1.1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Network
from typing import TYPE_CHECKING, Any, Protocol

from vmip.ipsec.sa import Direction
from vmip.ipsec.spd import SPD, Action, Policy, Selector
from vmip.wire.errors import WireError
from vmip.wire.flow import flow_key

if TYPE_CHECKING:
    from vmip.mobility.ancillary import Ancillary

__all__ = ["BEST", "DUPLICATE", "FlowMode", "FlowPolicy", "FlowRule", "FlowSender",
           "PathLike"]

#: Flows remembered by the classifier's cache at most (the SPD's clear-on-full).
FLOW_CACHE_SIZE = 4096

_OUT = Direction.OUT
_DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class FlowMode:
    """How a flow is sent: ``best``, ``duplicate`` or ``link`` (with its link)."""

    send: str
    link: str | None = None

    @classmethod
    def parse(cls, text: str) -> FlowMode:
        """``"best"``, ``"duplicate"`` or ``"link:<name>"``; ValueError otherwise."""
        if text == "best":
            return BEST
        if text == "duplicate":
            return DUPLICATE
        if text.startswith("link:") and len(text) > 5:
            return cls("link", text[5:])
        raise ValueError(f"{text!r} is not best, duplicate or link:<name>")

    def __str__(self) -> str:
        return f"link:{self.link}" if self.send == "link" else self.send


BEST = FlowMode("best")
DUPLICATE = FlowMode("duplicate")


@dataclass(frozen=True, slots=True)
class FlowRule:
    """One ``[[flow]]``: a selector on the inner packet as sent, and its mode.

    ``protocol`` None is any; ``remote`` the inner destination (None: any);
    ports are inclusive ``(low, high)`` ranges of the inner source
    (``local_ports``) and destination (``remote_ports``), None: any.
    """

    name: str
    mode: FlowMode = BEST
    protocol: int | None = None
    remote: IPv6Network | None = None
    local_ports: tuple[int, int] | None = None
    remote_ports: tuple[int, int] | None = None

    def selector(self) -> Selector:
        return Selector(remote=self.remote, proto=self.protocol,
                        local_ports=self.local_ports, remote_ports=self.remote_ports)

    @classmethod
    def from_config(cls, flow: Any) -> FlowRule:
        """From a :class:`vmip.config.model.FlowConfig`."""
        return cls(flow.name, FlowMode.parse(flow.send), flow.protocol, flow.remote,
                   flow.local_ports, flow.remote_ports)


class FlowPolicy:
    """First matching flow wins; a packet that matches none (or cannot be read) is best."""

    __slots__ = ("_modes", "_spd", "matched", "rules")

    def __init__(self, rules: Iterable[FlowRule] = (), *,
                 cache_size: int = FLOW_CACHE_SIZE) -> None:
        self.rules: tuple[FlowRule, ...] = tuple(rules)
        #: Packets classified per flow name ("" for those no flow matched).
        self.matched: Counter[str] = Counter()
        self._spd: SPD | None = None
        self._modes: dict[str, FlowMode] = {}
        if self.rules:
            spd = SPD(cache_size=cache_size)
            for index, rule in enumerate(self.rules):
                # Priority = file order: the SPD's first match is the file's.
                spd.add(Policy(rule.name, _OUT, rule.selector(), Action.BYPASS, (),
                               priority=index))
                self._modes[rule.name] = rule.mode
            self._spd = spd

    @classmethod
    def from_config(cls, flows: Iterable[Any]) -> FlowPolicy:
        return cls(FlowRule.from_config(flow) for flow in flows)

    def __bool__(self) -> bool:
        return self._spd is not None

    def classify(self, inner: bytes) -> FlowMode:
        """The mode of the inner packet *inner* (as it leaves, before ESP).  Never raises."""
        spd = self._spd
        if spd is None:
            return BEST
        try:
            policy = spd.lookup(_OUT, flow_key(inner))
        except WireError:
            self.matched["unreadable"] += 1
            return BEST
        if policy is None:
            self.matched[""] += 1
            return BEST
        self.matched[policy.name] += 1
        return self._modes[policy.name]

    def status(self) -> list[dict[str, Any]]:
        """Each flow with its mode and the packets it classified (``vmip counters``)."""
        return [{"name": rule.name, "send": str(rule.mode), "packets": self.matched[rule.name]}
                for rule in self.rules]


class PathLike(Protocol):
    """What :class:`FlowSender` needs of a bound path (:class:`vmip.node.paths.BoundPath`)."""

    @property
    def link(self) -> str | None: ...

    def ancillary(self) -> Ancillary: ...


class FlowSender:
    """Which copies of an ESP packet go out, and on which bound paths.

    *paths_to*: the SA-level peer (16 bytes) → the bound paths towards it, in
    default preference order (``MobilityAgent.paths_to``); ``[]`` when the
    peer has no multi-CoA binding.  *best_link*: ``(links, now)`` → the link
    with the best measured quality or None (``LinkQuality.best``).
    *counters*: where ``tx_duplicate_copies`` and ``tx_duplicate_bytes`` go,
    and ``tx_hedge_copies`` / ``tx_hedge_bytes``.  *spare*: ``(peer, chosen,
    paths, now)`` → a second path for a best-link packet while *chosen* has
    gone silent, else None (``PathTable.spare``, docs/multi-coa.md).
    """

    __slots__ = ("_best_link", "_paths_to", "_spare", "counters", "policy")

    def __init__(self, policy: FlowPolicy,
                 paths_to: Callable[[bytes], Sequence[PathLike]] | None,
                 best_link: Callable[[Iterable[str], float], str | None] | None,
                 counters: Counter[str],
                 spare: Callable[[bytes, Any, Any, float], PathLike | None] | None = None
                 ) -> None:
        self.policy = policy
        self._paths_to = paths_to
        self._best_link = best_link
        self._spare = spare
        self.counters = counters

    def copies(self, inner: bytes, esp: bytes, now: float) -> list[Ancillary] | None:
        """The ancillary data of each copy of *esp* to send, or None: send as before.

        *inner* is the packet before ESP (the flow is read there), *esp* what
        ESP made of it (its destination is the SA-level peer).  Duplicate mode
        sends the same ESP bytes on every path; the extra copies are counted.
        """
        paths_to = self._paths_to
        if paths_to is None:
            return None
        peer = esp[24:40]
        paths = paths_to(peer)
        if not paths:
            return None
        mode = self.policy.classify(inner)
        if mode.send == _DUPLICATE and len(paths) > 1:
            extra = len(paths) - 1
            self.counters["tx_duplicate_copies"] += extra
            self.counters["tx_duplicate_bytes"] += extra * len(esp)
            return [path.ancillary() for path in paths]
        if mode.link is not None:
            for path in paths:
                if path.link == mode.link:
                    return [path.ancillary()]
            self.counters["tx_flow_link_unbound"] += 1
        chosen = self._best(paths, now)
        spare = self._spare
        if spare is not None and len(paths) > 1:
            # The chosen path went silent: a hedge copy on another one, the
            # same ESP bytes, so the receiver keeps whichever arrives first.
            other = spare(peer, chosen, paths, now)
            if other is not None:
                self.counters["tx_hedge_copies"] += 1
                self.counters["tx_hedge_bytes"] += len(esp)
                return [chosen.ancillary(), other.ancillary()]
        return [chosen.ancillary()]

    def _best(self, paths: Sequence[PathLike], now: float) -> PathLike:
        """The MN's best measured link among the paths', else the first path."""
        best_link = self._best_link
        if best_link is not None and len(paths) > 1:
            links = [path.link for path in paths if path.link is not None]
            if links:
                chosen = best_link(links, now)
                if chosen is not None:
                    for path in paths:
                        if path.link == chosen:
                            return path
        return paths[0]
