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

Every table is bounded by the cores' binding caches: an entry exists only
while a core reports paths for that peer, and holds at most 16 pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from vmip.mobility.ancillary import Ancillary

__all__ = ["BoundPath", "PathTable"]

Pairs = tuple[tuple[int, IPv6Address], ...]


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

    def arrived(self, hoa: bytes, source: bytes) -> None:
        """An authenticated data packet from *hoa* arrived from the on-wire *source*.

        Call only after ESP verified it and the anti-replay window took it:
        the on-wire source is outside the ICV, so a held-back packet re-sent
        from another address passes ESP too, but only a bound CoA of that HoA
        can ever be mirrored.
        """
        entry = self._cn.get(hoa)
        if entry is None or entry.mirror == source or source not in entry.accept:
            return
        entry.mirror = source
        self.counters["mirror_moved"] += 1
        self._rebuild(hoa)

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
        else:
            self._lists.pop(key, None)


def pairs_text(pairs: Iterable[tuple[int, IPv6Address]]) -> str:
    """``1=2001:db8:31::2 2=2001:db8:32::2`` (for logs)."""
    return " ".join(f"{bid}={coa}" for bid, coa in pairs)
