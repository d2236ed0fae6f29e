"""Handover metrics from synthetic probe timestamps (the expected values follow
from how the streams are built, not from running our code)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.demo.metrics import (
    Arrival,
    Trigger,
    handover_reports,
    interruption_ms,
    lost_sequences,
    percentile,
    summary,
)

INTERVAL = 0.01   # 100 probes/s


def stream(start: float, count: int, *, delay: float, dead: tuple[float, float] | None = None,
           extra_delay_after: float | None = None, extra: float = 0.0) -> list[Arrival]:
    """Probes sent every INTERVAL from *start*; those sent in *dead* are lost."""
    out = []
    for seq in range(count):
        sent = start + seq * INTERVAL
        if dead and dead[0] <= sent < dead[1]:
            continue
        d = delay + (extra if extra_delay_after is not None and sent >= extra_delay_after else 0)
        out.append(Arrival(seq, sent, sent + d))
    return out


def test_steady_stream_has_no_interruption_and_no_loss():
    arrivals = stream(100.0, 500, delay=0.005)
    assert interruption_ms(arrivals, 101.0, 103.0, INTERVAL) == 0.0
    assert lost_sequences(arrivals, 101.0, 103.0) == []


def test_dead_period_gives_its_length_and_its_sequence_numbers():
    # Probes sent in [102.0, 102.3) are lost: 30 of them, a 300 ms hole.
    arrivals = stream(100.0, 500, delay=0.005, dead=(102.0, 102.3))
    assert interruption_ms(arrivals, 101.9, 104.0, INTERVAL) == pytest.approx(300.0, abs=0.5)
    assert lost_sequences(arrivals, 101.9, 104.0) == list(range(200, 230))


def test_path_change_to_a_longer_delay_shows_the_delay_step():
    # Switch from 5 ms to 35 ms one-way: the receiver waits 30 ms more once.
    arrivals = stream(100.0, 400, delay=0.005, extra_delay_after=102.0, extra=0.030)
    assert interruption_ms(arrivals, 101.5, 103.0, INTERVAL) == pytest.approx(30.0, abs=0.5)
    assert lost_sequences(arrivals, 101.5, 103.0) == []


def test_a_hole_the_next_link_change_starts_belongs_to_the_next_window():
    # The stream stops when the link changes at 103.0 (sent from 102.995 on: lost);
    # the window [101.0, 103.0) before that change saw no interruption.
    arrivals = stream(100.0, 500, delay=0.0, dead=(102.995, 103.3))
    assert interruption_ms(arrivals, 101.0, 103.0, INTERVAL) == 0.0
    assert interruption_ms(arrivals, 103.0, 104.0, INTERVAL) == pytest.approx(300.0, abs=0.5)


def test_stream_that_died_is_none():
    arrivals = stream(100.0, 100, delay=0.005)   # ends at ~101.0
    assert interruption_ms(arrivals, 102.0, 103.0, INTERVAL) is None
    assert interruption_ms([], 0.0, 1.0, INTERVAL) is None


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.01, 0.8))
def test_hole_anywhere_is_measured(hole_start_offset, hole_len):
    start = 100.0
    hole = (start + 1.0 + hole_start_offset, start + 1.0 + hole_start_offset + hole_len)
    arrivals = stream(start, 400, delay=0.002, dead=hole)
    lost = lost_sequences(arrivals, start + 0.5, start + 3.5)
    expected = [s for s in range(400) if hole[0] <= start + s * INTERVAL < hole[1]]
    assert lost == expected
    gap = interruption_ms(arrivals, start + 0.5, start + 3.5, INTERVAL)
    assert gap == pytest.approx(len(expected) * INTERVAL * 1000, abs=0.6)


EVENTS = [
    {"t": 90.0, "event": "CoaChanged", "old": None, "new": "2001:db8:31::2"},
    {"t": 102.010, "event": "CoaChanged", "old": "2001:db8:31::2", "new": "2001:db8:32::2"},
    {"t": 102.011, "event": "BindingUpdateSent", "peer": "2001:db8:10::2",
     "coa": "2001:db8:32::2", "attempt": 1},
    {"t": 102.012, "event": "BindingUpdateSent", "peer": "2001:db8:20::2",
     "coa": "2001:db8:32::2", "attempt": 1},
    {"t": 102.075, "event": "BindingAccepted", "peer": "2001:db8:10::2",
     "coa": "2001:db8:32::2", "lifetime": 420},
    {"t": 102.080, "event": "AotResponseSent", "peer": "2001:db8:20::2",
     "address": "2001:db8:32::2"},
    {"t": 102.142, "event": "BindingAccepted", "peer": "2001:db8:20::2",
     "coa": "2001:db8:32::2", "lifetime": 420},
    {"t": 107.0, "event": "CoaChanged", "old": "2001:db8:32::2", "new": "2001:db8:31::2"},
    {"t": 107.001, "event": "BindingUpdateSent", "peer": "2001:db8:20::2",
     "coa": "2001:db8:31::2", "attempt": 1},
    {"t": 107.013, "event": "BindingAccepted", "peer": "2001:db8:20::2",
     "coa": "2001:db8:31::2", "lifetime": 420},
]
LINKS = {"2001:db8:31::2": "wifi0", "2001:db8:32::2": "lte0"}


def test_handover_reports_pair_events_with_triggers():
    triggers = [Trigger(102.0, "wifi0", "down"), Trigger(105.0, "wifi0", "up")]
    up = stream(100.0, 1000, delay=0.005, dead=(102.0, 102.15))
    down = stream(100.0, 1000, delay=0.005, dead=(102.0, 102.2))
    tcp = [(101.0, 1000), (102.0, 2000), (102.5, 2500), (106.0, 4000), (108.0, 6000)]
    reports = handover_reports(triggers=triggers, events=EVENTS, coa_links=LINKS,
                               mn_to_cn=up, cn_to_mn=down, interval=INTERVAL,
                               tcp_samples=tcp, end=110.0)
    assert [(r["from"], r["to"]) for r in reports] == [("wifi0", "lte0"), ("lte0", "wifi0")]
    first, second = reports
    assert first["interruption_ms"]["mn_to_cn"] == pytest.approx(150, abs=0.5)
    assert first["interruption_ms"]["cn_to_mn"] == pytest.approx(200, abs=0.5)
    assert first["lost_packets"] == 15 + 20
    assert first["bu_ba_ms"] == pytest.approx(130.0)      # the CN, the slower peer
    assert first["bu_ba_ms_by_peer"]["2001:db8:10::2"] == pytest.approx(64.0)
    assert first["aot"] == "on-move"
    assert first["tcp_survived"] is True
    assert second["aot"] is None
    assert second["bu_ba_ms"] == pytest.approx(12.0)
    assert second["interruption_ms"] == {"mn_to_cn": 0.0, "cn_to_mn": 0.0}
    assert summary(reports)["handovers"] == 2
    assert summary(reports)["tcp_survived_all"] is True


def test_tcp_error_or_stall_means_not_survived():
    triggers = [Trigger(102.0, "wifi0", "down")]
    arr = stream(100.0, 600, delay=0.005)
    stalled = [(101.0, 1000), (102.0, 2000), (104.0, 2000)]
    reports = handover_reports(triggers=triggers, events=EVENTS[:2], coa_links=LINKS,
                               mn_to_cn=arr, cn_to_mn=arr, interval=INTERVAL,
                               tcp_samples=stalled, end=106.0)
    assert reports[0]["tcp_survived"] is False
    growing = [(101.0, 1000), (103.0, 3000)]
    reports = handover_reports(triggers=triggers, events=EVENTS[:2], coa_links=LINKS,
                               mn_to_cn=arr, cn_to_mn=arr, interval=INTERVAL,
                               tcp_samples=growing, tcp_error_at=103.5, end=106.0)
    assert reports[0]["tcp_survived"] is False


def test_percentile_is_nearest_rank():
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3
    assert percentile(list(range(1, 21)), 0.9) == 18
    assert percentile([], 0.5) is None


def test_timeline_counts_from_the_end_of_the_link_change():
    # The lab took 12 ms to take wifi down; the MN moved 8 ms later; the CN
    # switched its outbound rule 40 ms after that (values chosen here).
    trigger = Trigger(200.0, "wifi0", "down", done=200.012)
    mn_events = [{"t": 200.020, "event": "CoaChanged", "old": "2001:db8:31::2",
                  "new": "2001:db8:32::2"}]
    cn_events = [{"t": 199.0, "event": "SendTo", "coa": "2001:db8:32::2"},   # an older switch
                 {"t": 200.060, "event": "SendTo", "coa": "2001:db8:32::2"},
                 {"t": 200.070, "event": "SendTo", "coa": "2001:db8:31::2"}]
    arrivals = stream(199.0, 400, delay=0.005)
    (report,) = handover_reports(triggers=[trigger], events=mn_events, coa_links={},
                                 mn_to_cn=arrivals, cn_to_mn=arrivals, interval=INTERVAL,
                                 end=203.0, cn_events=cn_events)
    assert report["timeline_ms"] == pytest.approx({"link_change": 12.0, "moved": 8.0,
                                                   "cn_sends": 48.0})
    # Without CN events or a completion time: the trigger is the origin, no CN time.
    (plain,) = handover_reports(triggers=[Trigger(200.0, "wifi0", "down")], events=mn_events,
                                coa_links={}, mn_to_cn=arrivals, cn_to_mn=arrivals,
                                interval=INTERVAL, end=203.0)
    assert plain["timeline_ms"] == pytest.approx({"link_change": 0.0, "moved": 20.0,
                                                  "cn_sends": None})
