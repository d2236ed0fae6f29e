"""The bound paths between this node and each peer, with several bindings (sans-IO).

An MN with ``multiple_care_of`` holds one binding per usable link (RFC 5648
Binding Identifiers; the BID is the link's 1-based position in the config's
``[[link]]`` list).  The mobility cores say which (BID, CoA) pairs are bound
with each peer (:class:`~vmip.mobility.events.PathsChanged`); this table keeps
them and answers the send path's question, per packet: on which paths may
direct IPsec data to this peer go, best first (:meth:`PathTable.paths_to`)?

- **MN side** (key: the CN's or HA's address): the peer's ``accept`` pairs,
  the MN's primary CoA first (the core's order).  Each path names our link
  and its CoA as the on-wire source.
- **CN side** (key: the MN's home address): the ``send`` pairs (proven by
  the draft's address ownership test, §4.5.1).  The first one *mirrors* the
  MN: the CoA on which the latest authenticated data packet from that HoA
  arrived (:meth:`PathTable.arrived`, called after ESP verification and the
  anti-replay check, so a forged or replayed packet moves nothing), else the
  MN's primary CoA (the one the core's ``SendTo`` names), else the lowest BID.
- **HA side**: the bound CoAs are kept for :meth:`PathTable.holder_of` and
  :meth:`PathTable.bound`; the HA's own traffic to an MN goes through the
  tunnel, whose outer destination is the primary binding's CoA, so
  ``paths_to`` gives nothing there (docs/multi-coa.md).

**Hedging** (:meth:`PathTable.spare`): a best-link packet also goes on a
second path while the path chosen for it has fallen silent.  Each path
keeps when this peer's authenticated data last arrived on it and the
longest recent gap between arrivals (decaying by :data:`HEDGE_PEAK_DECAY`
per arrival); a path is *overdue* once it has been silent for
:data:`HEDGE_AFTER_PEAKS` times that gap (at least :data:`HEDGE_AFTER_MIN`).  A link that dies without warning is overdue
within a few packet gaps, well before the MN's netlink notices it and
before the CN hears from the MN on the other path: the hedge copy bridges
that time, and the receiver's anti-replay window drops it when the first
copy arrived after all.  A peer that merely went quiet stops the hedge
:data:`HEDGE_SPAN` after its last packet; a path silent while another one
delivers keeps it going (the MN's link stopped carrying, nobody said so).

Every table is bounded by the cores' binding caches: an entry exists only
while a core reports paths for that peer, and holds at most 16 pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from vmip.mobility.ancillary import Ancillary

__all__ = ["HEDGE_AFTER_MIN", "HEDGE_SPAN", "BoundPath", "PathTable"]

Pairs = tuple[tuple[int, IPv6Address], ...]

#: A path is not called silent before this many seconds without an arrival,
#: however regular its traffic (a scheduling hiccup is not a dead link).
HEDGE_AFTER_MIN = 0.005
#: Seconds after the peer's last packet on any path when hedging stops: a
#: peer that stopped talking does not keep our packets doubled.  Also the
#: largest inter-arrival sample the estimator takes.
HEDGE_SPAN = 0.5
#: A path is silent once it has been quiet this many times its longest
#: recent gap between arrivals ...
HEDGE_AFTER_PEAKS = 1.5
#: ... which fades by this factor per arrival (after an idle pause, some 60
#: arrivals bring it back to the traffic's rhythm).
HEDGE_PEAK_DECAY = 0.95
#: Seconds a silent link of ours that answered a probe goes unhedged: time
#: for the peer to come back to it (its data there ends the silence).
HEDGE_PROBE_TRUST = 0.25
#: Paths remembered per peer (a peer has at most max_care_of_addresses).
MAX_HEARD_PATHS = 16


@dataclass(slots=True)
class _Heard:
    """When a peer's data last arrived on one path, and its longest recent gap."""

    last: float
    peak: float | None = None      # the longest recent gap between arrivals (s)

    def note(self, now: float) -> None:
        gap = min(max(now - self.last, 0.0), HEDGE_SPAN)
        # A long gap is remembered at once and forgotten over a few dozen
        # arrivals: the traffic's own rhythm sets how long a silence is news.
        self.peak = gap if self.peak is None else max(gap, self.peak * HEDGE_PEAK_DECAY)
        self.last = now

    def overdue(self, now: float) -> bool:
        if self.peak is None:
            return False          # one arrival: no rhythm to judge by yet
        return now - self.last > max(HEDGE_AFTER_PEAKS * self.peak, HEDGE_AFTER_MIN)


@dataclass(frozen=True, slots=True)
class BoundPath:
    """One bound path to a peer.

    ``link``: on an MN, our link for this BID; ``None`` on a CN or HA.
    ``local``: the on-wire source to use (an MN's CoA for this link).
    ``remote``: the on-wire destination to use (on a CN: the MN's CoA).
    """

    bid: int
    link: str | None
    local: IPv6Address | None
    remote: IPv6Address | None
    _ancillary: Ancillary = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ancillary", Ancillary.of(self.local, self.remote))

    def ancillary(self) -> Ancillary:
        """What :meth:`vmip.mobility.remap.RemapEngine.outbound` takes for this path."""
        return self._ancillary

    def as_dict(self) -> dict[str, object]:
        return {"bid": self.bid, "link": self.link,
                "local": str(self.local) if self.local is not None else None,
                "remote": str(self.remote) if self.remote is not None else None}


@dataclass
class _PeerSide:
    """A CN's (or HA's) view of one MN's bindings."""

    accept: dict[bytes, int]                 # CoA -> BID
    send: Pairs
    primary: bytes | None = None             # the CoA the core's SendTo names
    mirror: bytes | None = None              # where its latest authenticated data came from


_NO_PATHS: list[BoundPath] = []


class PathTable:
    """Bound paths per peer; see the module doc."""

    def __init__(self, link_of_bid: Callable[[int], str | None] = lambda bid: None) -> None:
        self._link_of_bid = link_of_bid
        self._mn: dict[bytes, Pairs] = {}
        self._cn: dict[bytes, _PeerSide] = {}
        self._ha: dict[bytes, Pairs] = {}
        # HA: an MN's bound CoA -> its home address (a tunnel's outer source).
        self._ha_holder: dict[bytes, IPv6Address] = {}
        # What paths_to answers, rebuilt when a peer's paths or mirror change.
        self._lists: dict[bytes, list[BoundPath]] = {}
        # Per peer with paths: per path (an MN's link, or the MN's CoA on a
        # CN), when its data last arrived there (hedging, module doc).
        self._heard: dict[bytes, dict[str | bytes, _Heard]] = {}
        #: True while any peer has several-binding paths: the per-packet
        #: arrival note is skipped otherwise.
        self.active = False
        #: MN: ``link`` -> when a request over our *link* was last answered
        #: (``LinkQuality.last_answer``); and ``(link, since)`` -> measure
        #: *link* soon unless asked since then (``LinkProber.soon``).  A
        #: silent link that answered is not hedged for a while (:meth:`spare`).
        self.last_answer: Callable[[str], float | None] | None = None
        self.check_link: Callable[[str, float], None] | None = None
        #: ``mirror_moved``: the CN's best path followed the MN's.
        self.counters: Counter[str] = Counter()

    # -- what the cores report ---------------------------------------------------

    def mn_paths(self, peer: IPv6Address, accept: Pairs) -> None:
        """MN side: direct data to *peer* may use these (BID, our CoA), primary first."""
        key = peer.packed
        if accept:
            self._mn[key] = tuple(accept)
        else:
            self._mn.pop(key, None)
        self._rebuild(key)

    def peer_paths(self, hoa: IPv6Address, accept: Pairs, send: Pairs, *,
                   home_agent: bool = False) -> tuple[IPv6Address, ...]:
        """CN or HA side: the MN *hoa*'s bound CoAs (accepted from, and proven to
        send to).  Returns the CoAs that were bound and no longer are."""
        key = hoa.packed
        if home_agent:
            before = self._ha.get(key, ())
            for _bid, coa in before:
                if self._ha_holder.get(coa.packed) == hoa:
                    del self._ha_holder[coa.packed]
            if accept:
                self._ha[key] = tuple(accept)
                for _bid, coa in accept:
                    self._ha_holder[coa.packed] = hoa
            else:
                self._ha.pop(key, None)
            now = {coa for _bid, coa in accept}
            return tuple(coa for _bid, coa in before if coa not in now)
        entry = self._cn.get(key)
        before_cn = dict(entry.accept) if entry is not None else {}
        if accept or send:
            if entry is None:
                entry = self._cn[key] = _PeerSide({}, ())
            entry.accept = {coa.packed: bid for bid, coa in accept}
            entry.send = tuple(send)
            if entry.mirror is not None and entry.mirror not in entry.accept:
                entry.mirror = None      # only a bound CoA can be mirrored
        else:
            self._cn.pop(key, None)
        self._rebuild(key)
        remaining = entry.accept if entry is not None and (accept or send) else {}
        return tuple(IPv6Address(coa) for coa, _bid in sorted(before_cn.items(),
                                                               key=lambda item: item[1])
                     if coa not in remaining)

    def primary(self, hoa: IPv6Address, coa: IPv6Address | None) -> None:
        """CN side: the MN's primary binding is sent to *coa* (the core's SendTo)."""
        key = hoa.packed
        entry = self._cn.get(key)
        if entry is None:
            return
        entry.primary = coa.packed if coa is not None else None
        self._rebuild(key)

    # -- per packet -----------------------------------------------------------------

    def arrived(self, peer: bytes, source: bytes, now: float, link: str | None = None) -> None:
        """An authenticated data packet from *peer* (its SA-level address: an
        MN's HoA, a CN's address) arrived from the on-wire *source*, on our
        *link*.

        Call only after ESP verified it and the anti-replay window took it:
        the on-wire source is outside the ICV, so a held-back packet re-sent
        from another address passes ESP too, but only a bound CoA of that HoA
        can ever be mirrored or noted.
        """
        entry = self._cn.get(peer)
        if entry is not None and source in entry.accept:
            self._hear(peer, source, now)
            if entry.mirror != source:
                entry.mirror = source
                self.counters["mirror_moved"] += 1
                self._rebuild(peer)
        if link is not None and peer in self._mn:
            self._hear(peer, link, now)

    def spare(self, peer: bytes, chosen: BoundPath, paths: list[BoundPath],
              now: float) -> BoundPath | None:
        """The path a best-link packet to *peer* should also take because
        *chosen* (one of *paths*) has gone silent, else None (module doc)."""
        heard = self._heard.get(peer)
        if heard is None or len(paths) < 2:
            return None
        mine = heard.get(chosen.link if chosen.link is not None
                         else chosen.remote.packed if chosen.remote is not None else b"")
        if mine is None or not mine.overdue(now):
            return None
        if now - mine.last > HEDGE_SPAN and not any(
                other is not mine and now - other.last <= HEDGE_SPAN for other in heard.values()):
            return None
        link = chosen.link
        if link is not None:
            # Our link is silent, but is it dead?  The peer may only have
            # followed our hedge copies, which arrive first on a path that is
            # faster one way: then nothing comes back on the chosen link
            # again and the hedge would never end.  A request answered over
            # it since the silence began says it carries: no hedge for
            # HEDGE_PROBE_TRUST, time for the peer to come back to it; still
            # silent then (its path to the peer alone is broken), hedge and
            # ask again.
            answered = self.last_answer(link) if self.last_answer is not None else None
            since = mine.last
            if answered is not None and answered > since:
                if now - answered <= HEDGE_PROBE_TRUST:
                    return None
                since = answered
            if self.check_link is not None:
                self.check_link(link, since)
        for path in paths:
            if path != chosen:
                return path
        return None

    def paths_to(self, peer: bytes) -> list[BoundPath]:
        """The bound paths for direct IPsec data to *peer* (16 bytes, SA-level), best
        first; ``[]``: no multi-CoA binding (send as with one binding).  The list
        is shared: read it, never change it."""
        return self._lists.get(peer, _NO_PATHS)

    # -- lookups ---------------------------------------------------------------------

    def holder_of(self, coa: bytes) -> IPv6Address | None:
        """HA side: the home address one of whose bindings names *coa*."""
        return self._ha_holder.get(coa)

    def bound(self, hoa: IPv6Address, coa: bytes, *, home_only: bool = False) -> bool:
        """Does a binding of *hoa* name *coa*: at our HA role, or (unless
        *home_only*) proven at our CN role?"""
        if any(bound.packed == coa for _bid, bound in self._ha.get(hoa.packed, ())):
            return True
        if home_only:
            return False
        entry = self._cn.get(hoa.packed)
        return entry is not None and any(bound.packed == coa for _bid, bound in entry.send)

    def home_coas(self, hoa: IPv6Address) -> tuple[IPv6Address, ...]:
        """HA side: the CoAs the bindings of *hoa* name."""
        return tuple(coa for _bid, coa in self._ha.get(hoa.packed, ()))

    def accepting(self, hoa: IPv6Address, coa: bytes) -> bool:
        """CN side: does a binding of *hoa* accept data from *coa* (proven or not)?"""
        entry = self._cn.get(hoa.packed)
        return entry is not None and coa in entry.accept

    def mirror(self, hoa: IPv6Address) -> IPv6Address | None:
        entry = self._cn.get(hoa.packed)
        return IPv6Address(entry.mirror) if entry is not None and entry.mirror else None

    def status(self) -> list[dict[str, object]]:
        """One row per peer with paths (``vmip bindings``)."""
        rows: list[dict[str, object]] = []
        for key, pairs in self._mn.items():
            rows.append({"role": "mn", "peer": str(IPv6Address(key)),
                         "paths": [path.as_dict() for path in self._lists.get(key, ())],
                         "bids": [bid for bid, _coa in pairs]})
        for key, entry in self._cn.items():
            rows.append({"role": "cn", "peer": str(IPv6Address(key)),
                         "paths": [{"bid": bid, "link": None, "local": None, "remote": str(coa)}
                                   for bid, coa in self._cn_order(entry)],
                         "accept": [{"bid": bid, "coa": str(IPv6Address(coa))}
                                    for coa, bid in sorted(entry.accept.items(),
                                                           key=lambda item: item[1])],
                         "mirror": str(IPv6Address(entry.mirror)) if entry.mirror else None})
        for key, pairs in self._ha.items():
            rows.append({"role": "ha", "peer": str(IPv6Address(key)),
                         "accept": [{"bid": bid, "coa": str(coa)} for bid, coa in pairs]})
        return rows

    # -- internals ---------------------------------------------------------------------

    def _hear(self, peer: bytes, key: str | bytes, now: float) -> None:
        heard = self._heard.get(peer)
        if heard is None:
            heard = self._heard[peer] = {}
        noted = heard.get(key)
        if noted is None:
            if len(heard) >= MAX_HEARD_PATHS:
                return
            heard[key] = _Heard(now)
        else:
            noted.note(now)

    def _cn_order(self, entry: _PeerSide) -> list[tuple[int, IPv6Address]]:
        first = [pair for pair in entry.send if pair[1].packed == entry.mirror]
        second = [pair for pair in entry.send
                  if pair[1].packed == entry.primary and pair not in first]
        return first + second + [pair for pair in entry.send if pair not in first + second]

    def _rebuild(self, key: bytes) -> None:
        mine = self._mn.get(key)
        theirs = self._cn.get(key)
        peer_order = self._cn_order(theirs) if theirs is not None else []
        paths: list[BoundPath]
        if mine:
            # MN-MN: our CoAs as sources; the other MN's best CoA, if our CN
            # role holds it, as the destination.
            remote = peer_order[0][1] if peer_order else None
            paths = [BoundPath(bid, self._link_of_bid(bid), coa, remote) for bid, coa in mine]
        else:
            paths = [BoundPath(bid, None, None, coa) for bid, coa in peer_order]
        if paths:
            self._lists[key] = paths
            heard = self._heard.get(key)
            if heard:
                # Only the paths still bound keep their history.
                keys = {path.link if path.link is not None else
                        path.remote.packed if path.remote is not None else b""
                        for path in paths}
                if theirs is not None:
                    keys.update(theirs.accept)
                for gone in [k for k in heard if k not in keys]:
                    del heard[gone]
        else:
            self._lists.pop(key, None)
            self._heard.pop(key, None)
        self.active = bool(self._lists)


def pairs_text(pairs: Iterable[tuple[int, IPv6Address]]) -> str:
    """``1=2001:db8:31::2 2=2001:db8:32::2`` (for logs)."""
    return " ".join(f"{bid}={coa}" for bid, coa in pairs)
