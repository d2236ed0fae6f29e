"""Link quality: round-trip time and loss per link, measured from the MN's own signalling.

Three pieces, each usable alone:

- :class:`LinkQuality`, sans-IO (numbers and times in, figures out, never
  raises): per link a smoothed RTT and its variation with RFC 6298 §2's
  arithmetic (SRTT/RTTVAR, alpha 1/8, beta 1/4, the first sample R sets
  SRTT = R and RTTVAR = R/2), a loss rate that is a decaying average of
  request outcomes (answered 0, unanswered 1; the first outcomes are
  averaged plainly, then each new one weighs :data:`LOSS_GAIN`), and how
  many samples and how old they are.  :meth:`LinkQuality.best` ranks links
  (see there).  Bounded: at most ``max_links`` links are kept.
- :class:`QualityFeed` turns the mobility core's report events into
  samples: Binding Update → Binding Acknowledgement, BU → Address Ownership
  Test Challenge, AOTR → BA, early tests (AOTO → AOTC, AOTR → AOTS), with
  retransmissions as losses.  A request belongs to the link whose
  care-of address it names (the node's ``[[link]]`` CoAs; an RFC 5648 BID
  names the same link, its 1-based position in that list).
- :class:`LinkProber` keeps bound but idle links measured when the MN
  registers one binding per link (``mobility.multiple_care_of``): every
  ``mobility.link_probe_interval`` seconds without a request on a link it
  asks the MN core for a binding refresh over it (``MobileNode.probe``).

docs/multi-coa.md, "Link quality", says what the figures mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from vmip.mobility import events as ev

#: RFC 6298 §2.3: SRTT gain and RTTVAR gain.
ALPHA = 1 / 8
BETA = 1 / 4
#: Weight of each new outcome in the loss average once more than 1/LOSS_GAIN were seen.
LOSS_GAIN = 1 / 8
#: Consecutive unanswered requests after which a link counts as failing.
FAILING_STREAK = 2
#: The loss rate used in the score is capped here: a link that lost
#: everything still has a finite (huge) score, so ties stay ordered.
MAX_SCORED_LOSS = 0.99
#: An outstanding request older than SRTT + 4 RTTVAR (RFC 6298 §2.3's RTO,
#: with this floor instead of its 1 s: signalling answers at once) makes
#: its link count as failing until an answer comes.
MIN_OVERDUE = 0.25
#: Samples above this are not round trips of a live link (a BA to a BU
#: that waited for a link to come back): ignored.
MAX_SAMPLE = 60.0
#: Seconds without any news after which a link's figures are stale.
DEFAULT_STALE_AFTER = 30.0
#: LinkProber.soon: at most one probe asked for per link per this many seconds.
SOON_MIN_GAP = 1.0
DEFAULT_MAX_LINKS = 64

#: Ranks of :meth:`LinkQuality.best`, best first.
GOOD, STALE, UNKNOWN, FAILING = "good", "stale", "unknown", "failing"
_RANK = {GOOD: 0, STALE: 1, UNKNOWN: 2, FAILING: 3}


@dataclass(frozen=True, slots=True)
class LinkStats:
    """What is known of one link at one instant (times in ms, ages in s)."""

    srtt_ms: float | None       # None until the first RTT sample
    rttvar_ms: float | None
    loss: float                 # 0..1, decaying average of request outcomes
    samples: int                # RTT samples taken
    outcomes: int               # requests whose fate is known (answered or not)
    lost_in_row: int            # unanswered requests since the last answer
    age_s: float | None         # since the last sample or outcome
    score_ms: float | None      # srtt / (1 - loss): expected time to get a message through
    state: str                  # good, stale, unknown, failing (see LinkQuality.best)


class _Link:
    __slots__ = ("last_answer", "last_news", "last_request", "loss", "lost_in_row",
                 "outcomes", "pending_since", "rttvar", "samples", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.loss = 0.0
        self.samples = 0
        self.outcomes = 0
        self.lost_in_row = 0
        self.last_news: float | None = None
        self.last_answer: float | None = None
        self.last_request: float | None = None
        self.pending_since: float | None = None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


class LinkQuality:
    """RTT and loss per link (sans-IO, bounded; see the module doc).

    Bad input (a negative sample or one above :data:`MAX_SAMPLE`, an
    infinite or NaN time, a link name that is not a string) is ignored and
    counted in :attr:`ignored`; no method raises.
    """

    def __init__(self, *, stale_after: float = DEFAULT_STALE_AFTER,
                 max_links: int = DEFAULT_MAX_LINKS) -> None:
        self.stale_after = stale_after
        self.max_links = max(1, max_links)
        self._links: dict[str, _Link] = {}
        self.ignored = 0
        # best() runs per packet on the send path: its last answer is kept
        # until the figures change (_version) or time crosses a state boundary.
        self._version = 0
        self._memo: tuple[tuple[str, ...], int, float, float, str | None] | None = None

    # -- input -------------------------------------------------------------------

    def _entry(self, link: Any, now: Any) -> _Link | None:
        if not isinstance(link, str) or not _finite(now):
            self.ignored += 1
            return None
        self._version += 1
        entry = self._links.get(link)
        if entry is None:
            if len(self._links) >= self.max_links:
                # Links are few (the config's); past the cap the one heard of least recently goes.
                oldest = min(self._links, key=lambda name: self._links[name].last_news or -math.inf)
                del self._links[oldest]
            entry = self._links[link] = _Link()
        return entry

    def rtt_sample(self, link: str, seconds: float, now: float) -> None:
        """One round trip over *link* took *seconds* (RFC 6298 §2.2, §2.3)."""
        if not _finite(seconds) or not 0 <= seconds <= MAX_SAMPLE:
            self.ignored += 1
            return
        entry = self._entry(link, now)
        if entry is None:
            return
        if entry.srtt is None:
            entry.srtt, entry.rttvar = seconds, seconds / 2
        else:
            entry.rttvar = (1 - BETA) * entry.rttvar + BETA * abs(entry.srtt - seconds)
            entry.srtt = (1 - ALPHA) * entry.srtt + ALPHA * seconds
        entry.samples += 1
        entry.last_news = entry.last_answer = now

    def request_sent(self, link: str, now: float) -> None:
        """A request that expects an answer left on *link* (for the overdue rule and the prober).

        The link is *pending* from its oldest request not followed by any answer."""
        entry = self._entry(link, now)
        if entry is None:
            return
        entry.last_request = now
        if entry.pending_since is None:
            entry.pending_since = now

    def outcome(self, link: str, answered: bool, now: float) -> None:
        """A request on *link* was answered, or given up on (retransmitted, timed out)."""
        entry = self._entry(link, now)
        if entry is None:
            return
        entry.outcomes += 1
        gain = max(LOSS_GAIN, 1 / entry.outcomes)
        entry.loss += gain * ((0.0 if answered else 1.0) - entry.loss)
        entry.loss = min(max(entry.loss, 0.0), 1.0)
        if answered:
            entry.lost_in_row = 0
            entry.pending_since = None
            entry.last_answer = now
        else:
            # Still nothing answered since the oldest request: it stays overdue
            # (a retransmission must not make a silent link look fine again).
            entry.lost_in_row += 1
        entry.last_news = now

    def forget(self, link: str) -> None:
        self._version += 1
        self._links.pop(link, None)

    # -- output ------------------------------------------------------------------

    def last_request(self, link: str) -> float | None:
        entry = self._links.get(link)
        return entry.last_request if entry is not None else None

    def last_answer(self, link: str) -> float | None:
        """When a request on *link* was last answered (it carried both ways then)."""
        entry = self._links.get(link)
        return entry.last_answer if entry is not None else None

    def _state(self, entry: _Link | None, now: float) -> str:
        if entry is None:
            return UNKNOWN
        if entry.lost_in_row >= FAILING_STREAK or (entry.srtt is None and entry.lost_in_row):
            return FAILING
        if entry.pending_since is not None and entry.srtt is not None \
                and now - entry.pending_since > max(entry.srtt + 4 * entry.rttvar, MIN_OVERDUE):
            return FAILING
        if entry.srtt is None:
            return UNKNOWN
        if entry.last_news is None or now - entry.last_news > self.stale_after:
            return STALE
        return GOOD

    @staticmethod
    def _score(entry: _Link) -> float | None:
        if entry.srtt is None:
            return None
        # Expected delivery time: each attempt gets through with 1 - loss
        # (geometric), each costs about one SRTT.
        return entry.srtt / (1 - min(entry.loss, MAX_SCORED_LOSS))

    def link(self, link: str, now: float) -> LinkStats | None:
        """The figures of *link*, or None when nothing was ever heard of it."""
        entry = self._links.get(link) if isinstance(link, str) else None
        if entry is None:
            return None
        score = self._score(entry)
        age = None
        if entry.last_news is not None and _finite(now):
            age = max(now - entry.last_news, 0.0)
        return LinkStats(
            srtt_ms=entry.srtt * 1000 if entry.srtt is not None else None,
            rttvar_ms=entry.rttvar * 1000 if entry.srtt is not None else None,
            loss=entry.loss, samples=entry.samples, outcomes=entry.outcomes,
            lost_in_row=entry.lost_in_row, age_s=age,
            score_ms=score * 1000 if score is not None else None,
            state=self._state(entry, now) if _finite(now) else UNKNOWN)

    def best(self, links: Iterable[str], now: float) -> str | None:
        """The link to send on among *links*, or None when none has any figure.

        Links rank by state first: ``good`` (an RTT known, fresh, answering),
        ``stale`` (no news for ``stale_after`` seconds), ``unknown`` (no RTT
        yet), ``failing`` (:data:`FAILING_STREAK` requests in a row
        unanswered, or no answer for longer than the RTO since the oldest
        request still unanswered): a link whose last
        requests all went unanswered loses against any that answers.  In a
        state, the lowest score wins (SRTT / (1 - loss), the expected time
        to get a message through); ties keep the order of *links*.
        """
        if not _finite(now):
            return None
        try:
            key = tuple(links)
        except Exception:   # noqa: BLE001 - an odd iterable is bad input, not a reason to fail
            self.ignored += 1
            return None
        memo = self._memo
        if memo is not None and memo[1] == self._version and memo[2] <= now < memo[3] \
                and memo[0] == key:
            return memo[4]
        chosen, until = self._rank(key, now)
        self._memo = (key, self._version, now, until, chosen)
        return chosen

    def _rank(self, candidates: tuple[Any, ...], now: float) -> tuple[str | None, float]:
        """best()'s answer, and until when it holds if no figure changes."""
        ranked = []
        known = False
        until = math.inf
        for index, name in enumerate(candidates):
            if not isinstance(name, str):
                continue
            entry = self._links.get(name)
            state = self._state(entry, now)
            score = self._score(entry) if entry is not None else None
            if entry is not None:
                known = True
                # When time alone changes this link's state: it goes stale, or
                # its oldest unanswered request becomes overdue (a hair early:
                # the comparisons in _state may round the other way).
                if entry.srtt is not None and entry.last_news is not None:
                    until = min(until, entry.last_news + self.stale_after - 1e-9)
                    if entry.pending_since is not None:
                        rto = max(entry.srtt + 4 * entry.rttvar, MIN_OVERDUE)
                        until = min(until, entry.pending_since + rto - 1e-9)
            ranked.append((_RANK[state], score if score is not None else math.inf, index, name))
        if not known:
            return None, math.inf
        return min(ranked)[3], max(now, until)

    def status(self, now: float) -> dict[str, dict[str, Any]]:
        """Per link its figures, rounded for people (``best`` marks the best of all)."""
        best = self.best(self._links, now)
        result: dict[str, dict[str, Any]] = {}
        for name in sorted(self._links):
            stats = self.link(name, now)
            if stats is None:
                continue
            result[name] = {
                "srtt_ms": _round(stats.srtt_ms), "rttvar_ms": _round(stats.rttvar_ms),
                "loss": round(stats.loss, 4), "samples": stats.samples,
                "outcomes": stats.outcomes, "lost_in_row": stats.lost_in_row,
                "age_s": _round(stats.age_s), "score_ms": _round(stats.score_ms),
                "state": stats.state, "best": name == best,
            }
        return result


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


# -- the feeds: the MN's signalling ----------------------------------------------------

#: Request/answer exchanges followed at once (one per peer and address; bounded).
MAX_EXCHANGES = 256


@dataclass(slots=True)
class _Exchange:
    link: str
    kind: str             # "bu", "aotr" (registration proof), "aoto", "test-aotr" (early test)
    sent_at: float
    retransmitted: bool   # Karn: no RTT from a request that left more than once
    #: A BU's Binding Identifier (RFC 5648) and whether it deregisters (lifetime 0).
    bid: int | None = None
    deregisters: bool = False


class QualityFeed:
    """The MN's report events → :class:`LinkQuality` samples and outcomes.

    Round trips: BU → BA (the BA's own ``rtt``, matched to its BU by
    sequence number, so also right after retransmissions), BU → AOTC and
    AOTR → BA when the CN asks for a proof (draft §4.5.1), AOTO → AOTC and
    AOTR → AOTS for early tests (§4.5.2).  Losses: a BU, AOTR or AOTO sent
    again, and an early test given up, but only towards a peer that
    answered before (over any link): a peer that never answered (not
    running, not reachable at all) says nothing about our link.  An answer
    of any kind (a refusal too) counts as answered: the link carried it.

    Exchanges with another mobile node (*peer_is_mobile*) are left out: their
    round trip crosses that node's own access link, and its first
    transmission may go through the home agents (draft §5.2.2 example 4).
    """

    def __init__(self, services: Any, quality: LinkQuality,
                 peer_is_mobile: Callable[[IPv6Address], bool] | None = None) -> None:
        self.services = services
        self.quality = quality
        self.peer_is_mobile = peer_is_mobile or (lambda peer: False)
        self._exchanges: dict[tuple[IPv6Address, IPv6Address], _Exchange] = {}
        #: Peers that answered some request of ours (bounded with the exchanges).
        self._answering: dict[IPv6Address, None] = {}
        services.events.subscribe(self._on_event)

    def close(self) -> None:
        self.services.events.unsubscribe(self._on_event)

    def link_of(self, address: Any, bid: Any = None) -> str | None:
        """The link whose care-of address is *address*; else the link BID *bid* names."""
        names = self.services.link_names()
        if address is not None:
            for name in names:
                if self.services.link_coa(name) == address:
                    return str(name)
        if isinstance(bid, int) and not isinstance(bid, bool):
            configured = [link.name for link in self.services.config.links]
            if 1 <= bid <= len(configured) and configured[bid - 1] in names:
                return str(configured[bid - 1])
        return None

    def _remember(self, key: tuple[IPv6Address, IPv6Address], exchange: _Exchange) -> None:
        self._exchanges.pop(key, None)
        if len(self._exchanges) >= MAX_EXCHANGES:
            del self._exchanges[next(iter(self._exchanges))]
        self._exchanges[key] = exchange
        self.quality.request_sent(exchange.link, exchange.sent_at)

    def _answered(self, peer: IPv6Address, link: str, now: float) -> None:
        self._answering.pop(peer, None)
        if len(self._answering) >= MAX_EXCHANGES:
            del self._answering[next(iter(self._answering))]
        self._answering[peer] = None
        self.quality.outcome(link, True, now)

    def _lost(self, peer: IPv6Address, link: str, now: float) -> None:
        if peer in self._answering:
            self.quality.outcome(link, False, now)

    def _on_event(self, timed: Any) -> None:
        event = timed.event
        peer = getattr(event, "peer", None)
        if not isinstance(event, ev.Report) or not isinstance(peer, IPv6Address) \
                or self.peer_is_mobile(peer):
            return
        now = self.services.clock()
        quality = self.quality
        if isinstance(event, ev.BindingUpdateSent):
            link = self.link_of(event.coa, getattr(event, "bid", None))
            if link is None or event.coa is None:
                return
            key = (event.peer, event.coa)
            if event.attempt > 1:
                previous = self._exchanges.get(key)
                # The BU (or AOTR) before this one went unanswered.
                self._lost(event.peer, previous.link if previous is not None else link, now)
            self._remember(key, _Exchange(link, "bu", now, event.attempt > 1,
                                          getattr(event, "bid", None), event.lifetime == 0))
        elif isinstance(event, ev.AotResponseSent):
            key = (event.peer, event.address)
            exchange = self._exchanges.get(key)
            if exchange is None:
                return      # a HoA test (through the HA), or a challenge we did not ask for
            if exchange.kind in ("bu", "aoto"):
                # The AOTC answered the BU or the AOTO.
                if not exchange.retransmitted:
                    quality.rtt_sample(exchange.link, now - exchange.sent_at, now)
                self._answered(event.peer, exchange.link, now)
                kind = "aotr" if exchange.kind == "bu" else "test-aotr"
                self._remember(key, _Exchange(exchange.link, kind, now, False))
            else:
                # The same AOTR again: the one before went unanswered.
                self._lost(event.peer, exchange.link, now)
                self._remember(key, _Exchange(exchange.link, exchange.kind, now, True))
        elif isinstance(event, ev.AotOfferSent):
            key = (event.peer, event.address)
            link = self.link_of(event.address)
            if link is None:
                return
            again = key in self._exchanges and self._exchanges[key].kind == "aoto"
            if again:
                self._lost(event.peer, link, now)
            self._remember(key, _Exchange(link, "aoto", now, again))
        elif isinstance(event, ev.BindingAccepted):
            link = self.link_of(event.coa, getattr(event, "bid", None))
            exchange = self._exchanges.pop((event.peer, event.coa), None) \
                if event.coa is not None else None
            if exchange is None:
                return
            if exchange.kind == "bu":
                # The core matched this BA to its BU by sequence number: never ambiguous.
                quality.rtt_sample(exchange.link, event.rtt, now)
            elif not exchange.retransmitted:
                quality.rtt_sample(exchange.link, now - exchange.sent_at, now)
            self._answered(event.peer, link or exchange.link, now)
        elif isinstance(event, (ev.BindingRefused, ev.AotStatusReceived)):
            address = event.coa if isinstance(event, ev.BindingRefused) else event.address
            if address is None:
                return
            exchange = self._exchanges.pop((event.peer, address), None)
            if exchange is None:
                return
            if not exchange.retransmitted:
                quality.rtt_sample(exchange.link, now - exchange.sent_at, now)
            self._answered(event.peer, exchange.link, now)
        elif isinstance(event, ev.BindingDeregistered):
            # A deregistration's BA (the event names no CoA): the deregistering
            # BU out to that peer for that BID answered.  Other requests of that
            # BID (a refresh still out on a link that just died) are void: no
            # sample, no outcome; timing them would charge their link the time
            # the deregistration took, sent over another link.
            for key in [k for k in self._exchanges if k[0] == event.peer]:
                exchange = self._exchanges[key]
                if exchange.kind != "bu" or (event.bid is not None and exchange.bid != event.bid):
                    continue
                del self._exchanges[key]
                if not exchange.deregisters:
                    continue
                if not exchange.retransmitted:
                    quality.rtt_sample(exchange.link, now - exchange.sent_at, now)
                self._answered(event.peer, exchange.link, now)
        elif isinstance(event, ev.RegistrationTimeout) and event.stage == "early-test" \
                and event.coa is not None:
            # The MN gives up an early test: its last AOTO or AOTR went unanswered.
            exchange = self._exchanges.pop((event.peer, event.coa), None)
            if exchange is not None:
                self._lost(event.peer, exchange.link, now)


# -- the prober: bound but idle links ------------------------------------------------------

class LinkProber:
    """Every ``mobility.link_probe_interval`` seconds without a request on a
    bound link, a binding refresh over it (``MobileNode.probe(bid, now)``).

    Only on an MN with ``mobility.multiple_care_of`` (one binding per link:
    the refresh of one binding measures its link).  A driven core of the
    node's pump; *probe* is ``(bid, now) -> sent``.
    """

    def __init__(self, services: Any, quality: LinkQuality,
                 probe: Callable[[int, float], bool]) -> None:
        self.services = services
        self.quality = quality
        self.probe = probe
        self._next: dict[str, float] = {}
        # A link never probed is due since the prober began: a fixed time, so
        # that the pump, which compares a core's deadline with its own "now"
        # taken a moment earlier, sees it due (a deadline of "now" read anew
        # at each look would always lie ahead and re-arm the timer at once).
        self._since = services.clock()
        # Links to measure at once (``soon``): since when they are due.
        self._asap: dict[str, float] = {}
        self.probes = 0

    def interval(self) -> float:
        mobility = self.services.config.mobility
        if not getattr(mobility, "multiple_care_of", False):
            return 0.0
        return float(getattr(mobility, "link_probe_interval", 0.0) or 0.0)

    def _links(self) -> list[tuple[int, str]]:
        """(BID, link) of every running link with a CoA: BID = position in ``[[link]]``."""
        running = set(self.services.link_names())
        return [(bid, link.name) for bid, link in enumerate(self.services.config.links, 1)
                if link.name in running and link.coa is not None]

    def soon(self, link: str, since: float) -> None:
        """Measure *link* now unless a request left on it after *since* (the
        hedge asks when its silence began: dead, or only not chosen?), or
        less than :data:`SOON_MIN_GAP` ago (a jittery peer's every pause
        must not become a Binding Update)."""
        last = self.quality.last_request(link)
        now = self.services.clock()
        if link in self._asap or self.interval() <= 0 or (
                last is not None and (last > since or now - last < SOON_MIN_GAP)):
            return
        self._asap[link] = now       # a fixed time, as _since: the pump sees it due
        self.services.pump.arm_soon()

    def _due(self, link: str, interval: float) -> float:
        asap = self._asap.get(link)
        if asap is not None:
            return asap
        last = self.quality.last_request(link)
        due = self._next.get(link, self._since)
        if last is not None:
            due = max(due, last + interval)
        return due

    def get_timer(self) -> float | None:
        interval = self.interval()
        if interval <= 0:
            return None
        dues = [self._due(link, interval) for _, link in self._links()]
        return min(dues) if dues else None

    def handle_timer(self, now: float) -> None:
        interval = self.interval()
        if interval <= 0:
            return
        for bid, link in self._links():
            if self._due(link, interval) > now:
                continue
            # Sent or not (no binding on that link yet, one in flight), look again in one interval.
            self._asap.pop(link, None)
            self._next[link] = now + interval
            if self.probe(bid, now):
                self.probes += 1


def install(services: Any, mobility: Any) -> tuple[QualityFeed, LinkProber | None]:
    """Feed ``services.link_quality`` from the node's events; on an MN (*mobility*
    has an MN core), the prober on the node's pump."""
    quality = services.link_quality
    home_prefix = services.config.mobility.home_prefix
    if home_prefix is None and mobility.hoa is not None:
        home_prefix = IPv6Network(f"{mobility.hoa}/64", strict=False)

    def peer_is_mobile(peer: IPv6Address) -> bool:
        # Another MN: registered with our CN role, or on our own home link (not our HA).
        if mobility.cn.knows_mobile(peer):
            return True
        return home_prefix is not None and peer in home_prefix and peer != mobility.home_agent

    feed = QualityFeed(services, quality, peer_is_mobile)
    prober = None
    if mobility.mn is not None:
        def probe(bid: int, now: float) -> bool:
            send = getattr(mobility.mn, "probe", None)
            if send is None or not send(bid, now):
                return False
            mobility.pump(now)    # the refresh BU leaves now
            return True
        prober = LinkProber(services, quality, probe)
        services.pump.add("link_prober", prober)
    return feed, prober
