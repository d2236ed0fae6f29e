"""vmip.node.quality: the per-link RTT/loss estimator, its feed from the MN's events, the prober."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv6Address
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.mobility import events as ev
from vmip.node.events import EventHub
from vmip.node.pump import Pump
from vmip.node.quality import (
    FAILING,
    FAILING_STREAK,
    GOOD,
    STALE,
    LinkProber,
    LinkQuality,
    QualityFeed,
)

# -- the estimator ----------------------------------------------------------------------


def test_rfc6298_arithmetic():
    quality = LinkQuality()
    quality.rtt_sample("wifi0", 0.100, 1.0)
    stats = quality.link("wifi0", 1.0)
    assert stats is not None
    # RFC 6298 §2.2: the first sample R gives SRTT = R, RTTVAR = R/2.
    assert stats.srtt_ms == pytest.approx(100.0)
    assert stats.rttvar_ms == pytest.approx(50.0)
    quality.rtt_sample("wifi0", 0.200, 2.0)
    stats = quality.link("wifi0", 2.0)
    assert stats is not None
    # §2.3: RTTVAR = 3/4 * 50 + 1/4 * |100 - 200|; SRTT = 7/8 * 100 + 1/8 * 200.
    assert stats.rttvar_ms == pytest.approx(62.5)
    assert stats.srtt_ms == pytest.approx(112.5)
    assert stats.samples == 2
    assert stats.age_s == pytest.approx(0.0)
    assert quality.link("wifi0", 5.5).age_s == pytest.approx(3.5)


def test_loss_is_a_decaying_average_of_outcomes():
    quality = LinkQuality()
    quality.outcome("lte0", False, 0.0)
    assert quality.link("lte0", 0.0).loss == 1.0     # the first outcome is all there is
    quality.outcome("lte0", True, 1.0)
    assert quality.link("lte0", 1.0).loss == pytest.approx(0.5)
    for t in range(2, 40):
        quality.outcome("lte0", True, float(t))
    assert quality.link("lte0", 40.0).loss < 0.01
    assert quality.link("lte0", 40.0).outcomes == 40


def test_score_is_srtt_over_delivery_probability():
    quality = LinkQuality()
    quality.rtt_sample("lte0", 0.060, 0.0)
    quality.outcome("lte0", True, 0.0)
    quality.outcome("lte0", False, 0.0)
    stats = quality.link("lte0", 0.0)
    assert stats.loss == pytest.approx(0.5)
    assert stats.score_ms == pytest.approx(120.0)


def test_best_prefers_the_faster_link_and_switches_when_it_degrades():
    quality = LinkQuality()
    for t in range(5):
        quality.rtt_sample("wifi0", 0.012, float(t))
        quality.outcome("wifi0", True, float(t))
        quality.rtt_sample("lte0", 0.062, float(t))
        quality.outcome("lte0", True, float(t))
    assert quality.best(["lte0", "wifi0"], 5.0) == "wifi0"
    quality.rtt_sample("wifi0", 0.400, 6.0)
    quality.outcome("wifi0", True, 6.0)
    assert quality.best(["lte0", "wifi0"], 6.0) == "wifi0"     # one slow sample is smoothed
    quality.rtt_sample("wifi0", 0.400, 7.0)
    quality.outcome("wifi0", True, 7.0)
    assert quality.best(["lte0", "wifi0"], 7.0) == "lte0"


def test_a_link_losing_everything_lately_loses_against_one_that_answers():
    quality = LinkQuality()
    for t in range(20):
        quality.rtt_sample("wifi0", 0.005, float(t))
        quality.outcome("wifi0", True, float(t))
    quality.rtt_sample("lte0", 0.500, 0.0)
    quality.outcome("lte0", True, 0.0)
    assert quality.best(["wifi0", "lte0"], 20.0) == "wifi0"
    quality.outcome("wifi0", False, 21.0)
    assert quality.best(["wifi0", "lte0"], 21.0) == "wifi0"   # one loss in twenty-one
    quality.outcome("wifi0", False, 22.0)
    assert quality.link("wifi0", 22.0).state == FAILING
    assert quality.best(["wifi0", "lte0"], 22.0) == "lte0"
    quality.outcome("wifi0", True, 23.0)                   # it answers again
    assert quality.best(["wifi0", "lte0"], 23.0) == "wifi0"


def test_an_overdue_request_makes_its_link_fail_until_answered():
    quality = LinkQuality()
    for link, rtt in (("wifi0", 0.010), ("lte0", 0.060)):
        quality.rtt_sample(link, rtt, 0.0)
        quality.outcome(link, True, 0.0)
    quality.request_sent("wifi0", 1.0)
    assert quality.best(["wifi0", "lte0"], 1.1) == "wifi0"   # not overdue yet
    assert quality.link("wifi0", 1.3).state == FAILING     # past max(RTO, 0.25 s)
    assert quality.best(["wifi0", "lte0"], 1.3) == "lte0"
    quality.outcome("wifi0", True, 1.4)
    assert quality.best(["wifi0", "lte0"], 1.4) == "wifi0"


def test_a_silent_link_stays_failing_through_its_retransmissions():
    quality = LinkQuality()
    for link, rtt in (("wifi0", 0.010), ("lte0", 0.060)):
        quality.rtt_sample(link, rtt, 0.0)
        quality.outcome(link, True, 0.0)
    quality.request_sent("wifi0", 1.0)           # a probe, never answered
    for t in (1.3, 1.99):
        assert quality.best(["wifi0", "lte0"], t) == "lte0"
    quality.outcome("wifi0", False, 2.0)         # sent again at +1 s: one loss
    quality.request_sent("wifi0", 2.0)
    for t in (2.0, 2.1, 2.9):
        assert quality.best(["wifi0", "lte0"], t) == "lte0"
    quality.outcome("wifi0", True, 3.0)
    assert quality.best(["wifi0", "lte0"], 3.0) == "wifi0"


def test_stale_figures_rank_after_fresh_ones_and_unknown_links_give_none():
    quality = LinkQuality(stale_after=30.0)
    assert quality.best(["wifi0", "lte0"], 0.0) is None
    quality.rtt_sample("wifi0", 0.010, 0.0)
    quality.rtt_sample("lte0", 0.060, 25.0)
    assert quality.link("wifi0", 31.0).state == STALE
    assert quality.link("lte0", 31.0).state == GOOD
    assert quality.best(["wifi0", "lte0"], 31.0) == "lte0"
    assert quality.best(["eth9"], 31.0) is None
    assert quality.best(["eth9", "wifi0"], 31.0) == "wifi0"


def test_status_marks_the_best_link():
    quality = LinkQuality()
    quality.rtt_sample("wifi0", 0.012, 0.0)
    quality.outcome("wifi0", True, 0.0)
    quality.rtt_sample("lte0", 0.062, 0.0)
    status = quality.status(1.0)
    assert status["wifi0"] == {"srtt_ms": 12.0, "rttvar_ms": 6.0, "loss": 0.0, "samples": 1,
                               "outcomes": 1, "lost_in_row": 0, "age_s": 1.0,
                               "score_ms": 12.0, "state": "good", "best": True}
    assert status["lte0"]["best"] is False


def test_the_table_is_bounded():
    quality = LinkQuality(max_links=4)
    for i in range(50):
        quality.rtt_sample(f"l{i}", 0.01, float(i))
    assert len(quality.status(50.0)) == 4
    assert set(quality.status(50.0)) == {"l46", "l47", "l48", "l49"}


_times = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**6)
_names = st.sampled_from(["wifi0", "lte0", "eth0"]) | st.none() | st.integers()
_ops = st.lists(st.tuples(st.sampled_from(["rtt", "outcome", "request", "best", "link",
                                           "status"]),
                          _names, _times, _times, st.booleans()), max_size=60)


@settings(max_examples=300)
@given(_ops)
def test_never_raises_and_stays_in_range(ops):
    quality = LinkQuality(max_links=2)
    for op, name, a, b, flag in ops:
        if op == "rtt":
            quality.rtt_sample(name, a, b)
        elif op == "outcome":
            quality.outcome(name, flag, b)
        elif op == "request":
            quality.request_sent(name, b)
        elif op == "best":
            chosen = quality.best([name, "wifi0"], b)
            assert chosen is None or chosen in (name, "wifi0")
        elif op == "link":
            quality.link(name, b)
        else:
            quality.status(b)
        rows = quality.status(0.0)
        assert len(rows) <= 2
        for row in rows.values():
            assert 0.0 <= row["loss"] <= 1.0
            assert row["srtt_ms"] is None or row["srtt_ms"] >= 0
            assert row["rttvar_ms"] is None or row["rttvar_ms"] >= 0


_timed_ops = st.lists(st.tuples(st.sampled_from(["rtt", "ok", "lost", "request", "best"]),
                                st.sampled_from(["wifi0", "lte0"]),
                                st.floats(0.0, 2.0), st.floats(0.0, 40.0)), max_size=50)


@settings(max_examples=300)
@given(_timed_ops)
def test_the_kept_answer_of_best_is_always_the_fresh_one(ops):
    quality = LinkQuality(stale_after=5.0)
    now = 0.0
    for op, name, value, step in ops:
        now += step / 10
        if op == "rtt":
            quality.rtt_sample(name, value, now)
        elif op in ("ok", "lost"):
            quality.outcome(name, op == "ok", now)
        elif op == "request":
            quality.request_sent(name, now)
        for links in (["wifi0", "lte0"], ["lte0"]):
            # The same question at later and later times: the kept answer must
            # expire when a link goes stale or a request becomes overdue.
            for later in (0.0, 0.1, 0.26, 0.3, 1.0, 4.99, 5.0, 5.01, 7.0):
                fresh = quality._rank(tuple(links), now + later)[0]
                assert quality.best(links, now + later) == fresh, (links, now, later)


@given(st.lists(st.floats(0.0, 60.0), min_size=1, max_size=40))
def test_srtt_stays_between_the_smallest_and_largest_sample(samples):
    quality = LinkQuality()
    for t, sample in enumerate(samples):
        quality.rtt_sample("wifi0", sample, float(t))
    srtt = quality.link("wifi0", 0.0).srtt_ms / 1000
    assert min(samples) - 1e-9 <= srtt <= max(samples) + 1e-9


@given(st.lists(st.booleans(), max_size=40), st.booleans())
def test_loss_moves_the_obvious_way(history, answered):
    quality = LinkQuality()
    for t, outcome in enumerate(history):
        quality.outcome("lte0", outcome, float(t))
    before = quality.link("lte0", 0.0)
    quality.outcome("lte0", answered, 100.0)
    after = quality.link("lte0", 100.0).loss
    if before is not None:
        assert (after <= before.loss + 1e-12) if answered else (after >= before.loss - 1e-12)


@given(st.lists(st.floats(0.0, 60.0), min_size=1, max_size=20), st.floats(0.0, 60.0))
def test_a_sample_pulls_srtt_towards_itself(history, sample):
    quality = LinkQuality()
    for t, value in enumerate(history):
        quality.rtt_sample("wifi0", value, float(t))
    before = quality.link("wifi0", 0.0).srtt_ms
    quality.rtt_sample("wifi0", sample, 100.0)
    after = quality.link("wifi0", 100.0).srtt_ms
    low, high = sorted((before, sample * 1000))
    assert low - 1e-6 <= after <= high + 1e-6


_history = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0.001, 5.0),
                              st.booleans()), max_size=20)


@given(_history)
def test_a_loss_on_the_other_link_never_changes_the_choice(history):
    quality = LinkQuality()
    for t, (name, rtt, ok) in enumerate(history):
        quality.rtt_sample(name, rtt, t * 0.01)
        quality.outcome(name, ok, t * 0.01)
    now = len(history) * 0.01
    chosen = quality.best(["a", "b"], now)
    if chosen is None:
        return
    quality.outcome("b" if chosen == "a" else "a", False, now)
    assert quality.best(["a", "b"], now) == chosen


@given(_history, st.sampled_from(["a", "b"]))
def test_a_loss_never_lowers_a_links_score(history, name):
    quality = LinkQuality()
    quality.rtt_sample(name, 0.05, 0.0)
    for t, (link, rtt, ok) in enumerate(history):
        quality.rtt_sample(link, rtt, t * 0.01)
        quality.outcome(link, ok, t * 0.01)
    before = quality.link(name, 1.0).score_ms
    quality.outcome(name, False, 1.0)
    assert quality.link(name, 1.0).score_ms >= before - 1e-9


@given(st.floats(0.001, 10.0), st.floats(0.001, 10.0), st.lists(st.booleans(), max_size=20))
def test_same_outcomes_the_faster_link_wins(fast, slow, outcomes):
    if math.isclose(fast, slow):
        return
    fast, slow = min(fast, slow), max(fast, slow)
    quality = LinkQuality()
    for name, rtt in (("b", slow), ("a", fast)):
        quality.rtt_sample(name, rtt, 0.0)
        for outcome in outcomes:
            quality.outcome(name, outcome, 0.0)
    assert quality.best(["b", "a"], 0.0) == "a"


@given(st.floats(0.0001, 59.0), st.floats(0.0001, 59.0), st.integers(0, 10))
def test_an_answering_link_beats_one_whose_last_requests_all_failed(good_rtt, bad_rtt, good_losses):
    quality = LinkQuality()
    quality.rtt_sample("bad", bad_rtt, 0.0)
    quality.outcome("bad", True, 0.0)
    for _ in range(FAILING_STREAK):
        quality.outcome("bad", False, 0.0)
    quality.rtt_sample("good", good_rtt, 0.0)
    for _ in range(good_losses):
        quality.outcome("good", False, 0.0)
    quality.outcome("good", True, 0.0)
    assert quality.best(["bad", "good"], 0.0) == "good"


# -- the feed -----------------------------------------------------------------------------

HA = IPv6Address("2001:db8:100::1")
CN = IPv6Address("2001:db8:20::2")
HOA = IPv6Address("2001:db8:100::10")
WIFI = IPv6Address("2001:db8:31::2")
LTE = IPv6Address("2001:db8:32::2")


@dataclass
class _Link:
    name: str
    coa: IPv6Address | None


class FakeServices:
    """The slice of NodeServices the feed and the prober use, on a hand-set clock."""

    def __init__(self, probe_interval: float = 5.0, multiple: bool = True) -> None:
        self.now = 0.0
        self.events = EventHub(lambda: self.now)
        self.config = SimpleNamespace(
            links=[_Link("wifi0", WIFI), _Link("lte0", LTE), _Link("eth9", None)],
            mobility=SimpleNamespace(multiple_care_of=multiple,
                                     link_probe_interval=probe_interval))

    def clock(self) -> float:
        return self.now

    def link_names(self) -> list[str]:
        return [link.name for link in self.config.links]

    def link_coa(self, name):
        return next((link.coa for link in self.config.links if link.name == name), None)


def _feed():
    services = FakeServices()
    quality = LinkQuality()
    feed = QualityFeed(services, quality)
    return services, quality, feed


def _at(services, t, event):
    services.now = t
    services.events.publish(event)


def test_feed_bu_to_ba_gives_the_bas_rtt_on_the_coas_link():
    services, quality, _keep = _feed()
    _at(services, 1.0, ev.BindingUpdateSent(HA, HOA, WIFI, 7, 420, 1))
    _at(services, 1.012, ev.BindingAccepted(HA, HOA, WIFI, 420, 0.012))
    stats = quality.link("wifi0", 1.012)
    assert stats.srtt_ms == pytest.approx(12.0)
    assert stats.outcomes == 1 and stats.loss == 0.0
    assert quality.link("lte0", 1.012) is None


def test_feed_a_challenged_bu_gives_two_round_trips_not_their_sum():
    services, quality, _keep = _feed()
    _at(services, 0.0, ev.BindingUpdateSent(CN, HOA, LTE, 1, 420, 1))
    _at(services, 0.062, ev.AotResponseSent(CN, HOA, LTE))       # the AOTC came
    _at(services, 0.124, ev.BindingAccepted(CN, HOA, LTE, 420, 0.124))
    stats = quality.link("lte0", 0.124)
    assert stats.samples == 2
    assert stats.srtt_ms == pytest.approx(62.0)


def test_feed_retransmissions_are_losses_and_karn_skips_their_rtt():
    services, quality, _keep = _feed()
    _at(services, 0.0, ev.BindingUpdateSent(HA, HOA, WIFI, 1, 420, 1))
    _at(services, 0.01, ev.BindingAccepted(HA, HOA, WIFI, 420, 0.01))   # HA answers: a peer
    _at(services, 5.0, ev.BindingUpdateSent(CN, HOA, WIFI, 1, 420, 1))
    _at(services, 5.01, ev.AotResponseSent(CN, HOA, WIFI))
    _at(services, 6.01, ev.AotResponseSent(CN, HOA, WIFI))   # AOTR again: lost
    _at(services, 6.5, ev.BindingAccepted(CN, HOA, WIFI, 420, 1.5))
    stats = quality.link("wifi0", 6.5)
    # 0.01 (HA BA), 0.01 (BU → AOTC); the AOTR → BA after a retransmission gives none.
    assert stats.samples == 2
    assert stats.outcomes == 4
    assert stats.loss == pytest.approx(0.25)


def test_feed_counts_no_loss_towards_a_peer_that_never_answered():
    services, quality, _keep = _feed()
    _at(services, 0.0, ev.BindingUpdateSent(CN, HOA, WIFI, 1, 420, 1))
    _at(services, 1.0, ev.BindingUpdateSent(CN, HOA, WIFI, 2, 420, 2))
    _at(services, 3.0, ev.BindingUpdateSent(CN, HOA, WIFI, 3, 420, 3))
    stats = quality.link("wifi0", 3.0)
    assert stats.outcomes == 0


def test_feed_early_tests_measure_the_tested_link():
    services, quality, _keep = _feed()
    _at(services, 0.0, ev.AotOfferSent(CN, HOA, LTE))
    _at(services, 0.06, ev.AotResponseSent(CN, HOA, LTE))
    _at(services, 0.12, ev.AotStatusReceived(CN, HOA, LTE, 1))
    stats = quality.link("lte0", 0.12)
    assert stats.samples == 2 and stats.srtt_ms == pytest.approx(60.0)
    _at(services, 10.0, ev.AotOfferSent(CN, HOA, LTE))
    _at(services, 11.0, ev.AotOfferSent(CN, HOA, LTE))
    _at(services, 40.0, ev.RegistrationTimeout(CN, HOA, LTE, "early-test"))
    stats = quality.link("lte0", 40.0)
    assert stats.lost_in_row == 2 and stats.state == FAILING


def test_feed_leaves_out_exchanges_with_other_mobile_nodes():
    services = FakeServices()
    quality = LinkQuality()
    other_mn = IPv6Address("2001:db8:100::20")
    QualityFeed(services, quality, peer_is_mobile=lambda peer: peer == other_mn)
    # Its first BU goes through both home agents: 16 ms, not this link's 12.
    _at(services, 0.0, ev.BindingUpdateSent(other_mn, HOA, WIFI, 1, 420, 1))
    _at(services, 0.016, ev.BindingAccepted(other_mn, HOA, WIFI, 420, 0.016))
    assert quality.link("wifi0", 0.016) is None
    _at(services, 1.0, ev.BindingUpdateSent(HA, HOA, WIFI, 2, 420, 1))
    _at(services, 1.012, ev.BindingAccepted(HA, HOA, WIFI, 420, 0.012))
    assert quality.link("wifi0", 1.012).srtt_ms == pytest.approx(12.0)


def test_feed_maps_a_bid_when_no_coa_matches():
    _services, _quality, feed = _feed()
    assert feed.link_of(LTE) == "lte0"
    assert feed.link_of(IPv6Address("2001:db8:99::1"), 2) == "lte0"
    assert feed.link_of(None, 1) == "wifi0"
    assert feed.link_of(None, 0) is None and feed.link_of(None, 9) is None
    assert feed.link_of(None, True) is None


def test_feed_ignores_what_is_not_the_mns_signalling():
    services, quality, feed = _feed()
    _at(services, 0.0, ev.BindingCached(HOA, WIFI, 420, True))
    _at(services, 0.0, ev.BindingUpdateSent(HA, HOA, None, 1, 0, 1))   # from home
    _at(services, 0.0, "not an event")
    assert quality.status(0.0) == {}
    feed.close()
    _at(services, 1.0, ev.BindingUpdateSent(HA, HOA, WIFI, 2, 420, 1))
    assert quality.status(1.0) == {}


# -- the prober ----------------------------------------------------------------------------


def test_prober_refreshes_idle_bound_links_only():
    services = FakeServices(probe_interval=5.0)
    quality = LinkQuality()
    probed: list[tuple[int, float]] = []
    bound = {1}

    def probe(bid: int, now: float) -> bool:
        probed.append((bid, now))
        if bid in bound:
            quality.request_sent("wifi0" if bid == 1 else "lte0", now)
            return True
        return False

    prober = LinkProber(services, quality, probe)
    assert prober.get_timer() == 0.0
    prober.handle_timer(0.0)
    # eth9 has no CoA: no BID of it is ever probed.
    assert probed == [(1, 0.0), (2, 0.0)]
    assert prober.get_timer() == 5.0
    # Signalling over wifi0 at t=3 (a move, a refresh) postpones its probe.
    quality.request_sent("wifi0", 3.0)
    services.now = 5.0
    prober.handle_timer(5.0)
    assert probed[2:] == [(2, 5.0)]
    assert prober.get_timer() == 8.0
    bound.add(2)
    services.now = 10.0
    prober.handle_timer(10.0)
    assert probed[3:] == [(1, 10.0), (2, 10.0)]
    assert prober.probes == 3


def test_prober_probes_under_a_real_pump_on_a_real_clock():
    """The node's pump takes its "now" before it asks a core for its
    deadline; a link never probed must be due by then, or the pump re-arms
    at once, forever, and no probe leaves (as in the lab before this)."""
    import asyncio
    import time

    services = FakeServices(probe_interval=0.05)
    services.clock = time.monotonic          # a clock that moves between two reads
    quality = LinkQuality()
    probed: list[int] = []

    def probe(bid: int, now: float) -> bool:
        probed.append(bid)
        quality.request_sent("wifi0" if bid == 1 else "lte0", now)
        return True

    prober = LinkProber(services, quality, probe)
    looks = 0
    get_timer = prober.get_timer

    def counted() -> float | None:
        nonlocal looks
        looks += 1
        return get_timer()

    prober.get_timer = counted               # type: ignore[method-assign]

    async def run() -> None:
        pump = Pump(time.monotonic, Counter())
        pump.add("link_prober", prober)
        pump.attach(asyncio.get_running_loop())
        await asyncio.sleep(0.3)
        pump.close()

    asyncio.run(run())
    # Both links at once, then about every 50 ms each, and no busy re-arming.
    assert probed[:2] == [1, 2] and 8 <= len(probed) <= 16, probed
    assert looks < 100, looks


def test_prober_measures_a_hedged_link_soon_once_per_silence_and_answers_say_so():
    """The hedge asks whether its silent link still carries: one probe at
    once, none while a request sent since the silence began is out; an
    answer after that instant is what ``last_answer`` reports."""
    services = FakeServices(probe_interval=5.0)
    armed: list[bool] = []
    services.pump = SimpleNamespace(arm_soon=lambda: armed.append(True))
    quality = LinkQuality()
    probed: list[tuple[int, float]] = []

    def probe(bid: int, now: float) -> bool:
        probed.append((bid, now))
        quality.request_sent("wifi0" if bid == 1 else "lte0", now)
        return True

    prober = LinkProber(services, quality, probe)
    prober.handle_timer(0.0)
    quality.outcome("wifi0", True, 0.02)
    quality.outcome("lte0", True, 0.03)
    del probed[:]
    services.now = 1.0
    assert prober.get_timer() == 5.0
    # wifi0 silent since 0.9: measured now, not in four seconds.
    prober.soon("wifi0", 0.9)
    assert armed == [True] and prober.get_timer() == 1.0
    prober.handle_timer(1.0)
    assert probed == [(1, 1.0)] and prober.get_timer() == 5.0
    prober.soon("wifi0", 0.9)           # already asked since that silence began
    services.now = 1.5
    prober.soon("wifi0", 1.2)           # a new silence, but the last probe is 0.5 s old
    assert armed == [True] and prober.get_timer() == 5.0     # lte0's, not wifi0's
    services.now = 2.0
    prober.soon("wifi0", 1.2)
    assert armed == [True, True] and prober.get_timer() == 2.0
    assert quality.last_answer("wifi0") == 0.02
    quality.rtt_sample("wifi0", 0.01, 1.01)
    assert quality.last_answer("wifi0") == 1.01
    quality.outcome("wifi0", False, 1.2)            # a loss is news, not an answer
    assert quality.last_answer("wifi0") == 1.01 and quality.last_answer("eth9") is None


@pytest.mark.parametrize("interval, multiple", [(0.0, True), (5.0, False)])
def test_prober_is_off_without_multiple_care_of_or_with_interval_0(interval, multiple):
    services = FakeServices(probe_interval=interval, multiple=multiple)
    probed = []
    prober = LinkProber(services, LinkQuality(), lambda bid, now: probed.append(bid) or True)
    assert prober.get_timer() is None
    prober.handle_timer(100.0)
    assert probed == []


def test_feed_a_deregistration_times_its_own_bu_not_a_refresh_lost_on_a_dead_link():
    """Wifi dies with a refresh BU out on it; the MN deregisters wifi's BID
    over lte.  The deregistration's answer times the lte BU only: wifi gets
    no sample of the time that took."""
    services, quality, _keep = _feed()
    _at(services, 0.0, ev.BindingUpdateSent(HA, HOA, WIFI, 1, 420, 1, 1))
    _at(services, 0.01, ev.BindingAccepted(HA, HOA, WIFI, 420, 0.01, bid=1))
    _at(services, 5.0, ev.BindingUpdateSent(HA, HOA, WIFI, 2, 420, 1, 1))   # a probe; wifi dies
    _at(services, 5.8, ev.BindingUpdateSent(HA, HOA, LTE, 3, 0, 1, 1))      # dereg BID 1 via lte
    _at(services, 5.86, ev.BindingDeregistered(HA, HOA, 1))
    wifi = quality.link("wifi0", 5.86)
    assert wifi.samples == 1 and wifi.srtt_ms == pytest.approx(10.0)
    lte = quality.link("lte0", 5.86)
    assert lte.samples == 1 and lte.srtt_ms == pytest.approx(60.0)
