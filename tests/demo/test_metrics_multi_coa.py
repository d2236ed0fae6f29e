"""The multi-CoA report's metrics on synthetic timelines (docs/demo.md, "Multi-CoA").

The streams are built to a known shape (which probes die, when the links and
the bound paths change) and the expected numbers follow from that shape.
"""

from __future__ import annotations

import pytest

from vmip.demo.metrics import (
    LAB_DROP_WINDOW,
    Arrival,
    ClassStreams,
    Trigger,
    carries,
    link_up,
    multi_coa_reports,
    multi_coa_summary,
)

INTERVAL = 0.01
HOA, CN = "2001:db8:100::10", "2001:db8:20::2"
WIFI, LTE = "2001:db8:31::2", "2001:db8:32::2"
COA_LINKS = {WIFI: "wifi0", LTE: "lte0"}
ONE_WAY = {"wifi0": 0.005, "lte0": 0.030}
RTT_MS = {"wifi0": 10.0, "lte0": 60.0}
#: wifi0 dies at 105.0 (abrupt), comes back at 110.0; the run ends at 115.0.
DOWN, UP, END = 105.0, 110.0, 115.0
TRIGGERS = [Trigger(DOWN, "wifi0", "down", done=DOWN + 0.02),
            Trigger(UP, "wifi0", "up", done=UP + 0.02)]


def paths(t: float, node: str, *coas: str) -> dict:
    pairs = [[1 if coa == WIFI else 2, coa] for coa in coas]
    if node == "mn":
        return {"t": t, "event": "PathsChanged", "local": HOA, "peer": CN, "accept": pairs,
                "send": pairs}
    return {"t": t, "event": "PathsChanged", "local": CN, "peer": HOA, "accept": pairs,
            "send": pairs}


#: Both sides hold both paths from 100.0; wifi's leaves at 105.06 (the MN saw the
#: link die, the CN heard of it); it is bound again at 112.05 (2 s hold-down + BU).
MN_EVENTS = [
    {"t": 99.0, "event": "CoaChanged", "old": None, "new": WIFI},
    paths(100.0, "mn", WIFI, LTE),
    {"t": 105.004, "event": "CoaChanged", "old": WIFI, "new": LTE},
    paths(105.004, "mn", LTE),
    {"t": 112.0, "event": "CoaChanged", "old": LTE, "new": WIFI},
    paths(112.05, "mn", WIFI, LTE),
]
CN_EVENTS = [{"t": 99.1, "event": "SendTo", "peer": HOA, "coa": WIFI},
             paths(100.0, "cn", WIFI, LTE), paths(105.06, "cn", LTE),
             paths(112.05, "cn", WIFI, LTE)]


def stream(*, lost: tuple[int, ...] = (), dead: tuple[float, float] | None = None,
           start: float = 100.0, count: int = 1500) -> list[Arrival]:
    """Probes every 10 ms from *start*, 30 ms one way; *lost* seqs and those sent in *dead* never arrive."""
    out = []
    for seq in range(count):
        sent = start + seq * INTERVAL
        if seq in lost or (dead and dead[0] <= sent < dead[1]):
            continue
        out.append(Arrival(seq, sent, sent + 0.030))
    return out


def seq_at(t: float) -> int:
    return round((t - 100.0) / INTERVAL)


def report(duplicate: ClassStreams, best: ClassStreams | None = None, **extra) -> list[dict]:
    best = best or ClassStreams(stream(), stream())
    return multi_coa_reports(
        triggers=TRIGGERS, events=MN_EVENTS, cn_events=CN_EVENTS, hoa=HOA, cn=CN,
        coa_links=COA_LINKS, one_way=ONE_WAY, streams={"duplicate": duplicate, "best": best},
        interval=INTERVAL, end=END, **extra)


def test_link_state_and_copies_in_flight() -> None:
    assert link_up(TRIGGERS, "wifi0", 104.99) and not link_up(TRIGGERS, "wifi0", 105.0)
    # Up only once the change is in place; lte0 never changed.
    assert not link_up(TRIGGERS, "wifi0", 110.01) and link_up(TRIGGERS, "wifi0", 110.02)
    assert link_up(TRIGGERS, "lte0", 107.0)
    # A copy sent 2 ms before the link died was still on it (5 ms one way).
    assert carries(TRIGGERS, "wifi0", 104.990, 0.005) and not carries(TRIGGERS, "wifi0", 104.998,
                                                                       0.005)


def test_one_lte_loss_while_lte_alone_carries_copies_is_background() -> None:
    # Each direction loses one probe while only lte0 is up: 106.0 mn→cn, 108.0 cn→mn.
    rows = report(ClassStreams(stream(lost=(seq_at(106.0),)), stream(lost=(seq_at(108.0),))))
    down = rows[0]
    assert (down["from"], down["to"], down["abrupt"]) == ("wifi0", "lte0", True)
    assert down["lost_packets"] == {"duplicate": 0, "best": 0}
    assert down["background_lost"] == {"mn_to_cn": 1, "cn_to_mn": 1}


def test_a_loss_while_both_links_carry_copies_is_a_duplicate_loss() -> None:
    # 103.0: both paths bound, both links up: one copy would have been enough.
    rows = report(ClassStreams(stream(lost=(seq_at(103.0),)), stream()))
    # It belongs to no link change (before the first): the row of 105.0 has nothing.
    assert rows[0]["lost_packets"]["duplicate"] == 0
    rows = report(ClassStreams(stream(lost=(seq_at(113.0),)), stream()))
    up = rows[1]
    assert (up["from"], up["to"], up["abrupt"]) == ("lte0", "wifi0", False)
    assert up["lost_packets"]["duplicate"] == 1 and up["background_lost"]["mn_to_cn"] == 0


def test_during_the_hold_down_lte_alone_carries_copies() -> None:
    # 111.0: wifi0 is up again but not bound yet (bound at 112.05): lte0 alone.
    rows = report(ClassStreams(stream(), stream(lost=(seq_at(111.0),))))
    assert rows[1]["lost_packets"]["duplicate"] == 0
    assert rows[1]["background_lost"]["cn_to_mn"] == 1


def test_a_burst_is_a_duplicate_loss_even_on_one_link() -> None:
    # The CN stops for 40 ms right after wifi0 died: 4 probes, not random loss.
    rows = report(ClassStreams(stream(), stream(dead=(105.01, 105.05))))
    assert rows[0]["lost"]["duplicate"] == {"mn_to_cn": 0, "cn_to_mn": 4}
    assert rows[0]["lost_packets"]["duplicate"] == 4 and rows[0]["background_lost"]["cn_to_mn"] == 0
    assert rows[0]["interruption_ms"]["duplicate"]["cn_to_mn"] == pytest.approx(40.0, abs=0.5)


def test_the_copy_on_wifi_died_in_flight_so_lte_alone_carried_that_probe() -> None:
    # Sent 2 ms before wifi0 went down: its wifi copy died on the link.  It was
    # sent before that change, so it belongs to the window before it (opened here
    # by an lte0 "up" that changes nothing).
    t = 104.998
    arrivals = [a for a in stream(start=t - 500 * INTERVAL, count=1000) if a.seq != 500]
    triggers = [Trigger(102.0, "lte0", "up", done=102.0), *TRIGGERS]
    rows = multi_coa_reports(
        triggers=triggers, events=MN_EVENTS, cn_events=CN_EVENTS, hoa=HOA, cn=CN,
        coa_links=COA_LINKS, one_way=ONE_WAY,
        streams={"duplicate": ClassStreams(arrivals, stream()),
                 "best": ClassStreams(stream(), stream())}, interval=INTERVAL, end=END)
    assert rows[0]["background_lost"]["mn_to_cn"] == 1 and rows[0]["lost_packets"]["duplicate"] == 0
    assert rows[1]["background_lost"]["mn_to_cn"] == 0 and rows[1]["lost_packets"]["duplicate"] == 0


def test_background_never_exceeds_what_the_emulator_dropped() -> None:
    lost = (seq_at(106.0), seq_at(107.0), seq_at(108.0))
    drops = [(DOWN - 0.001, {"mn_to_cn": 10, "cn_to_mn": 3}),
             (UP - 0.001, {"mn_to_cn": 12, "cn_to_mn": 3}), (END, {"mn_to_cn": 12, "cn_to_mn": 3})]
    rows = report(ClassStreams(stream(lost=lost), stream(lost=(seq_at(106.5),))),
                  emulated_drops=drops)
    # mn→cn: the emulator dropped 2 datagrams there, so one of the 3 losses is ours.
    assert rows[0]["emulated_drops"] == {"mn_to_cn": 2, "cn_to_mn": 0}
    assert rows[0]["background_lost"] == {"mn_to_cn": 2, "cn_to_mn": 0}
    assert rows[0]["lost"]["duplicate"] == {"mn_to_cn": 1, "cn_to_mn": 1}


def test_best_class_interruption_loss_and_the_cost_of_duplicates() -> None:
    # The CN's best-link probes sent in the 55 ms after wifi0 died are lost (it
    # still sent them there): 6 probes, a 70 ms gap between arrivals, 60 ms over the interval.
    best = ClassStreams(stream(), stream(dead=(105.0, 105.055)))
    overhead = [(DOWN - 0.001, {"mn": 1000, "cn": 2000}), (UP - 0.001, {"mn": 1000, "cn": 2100}),
                (END, {"mn": 61000, "cn": 62100})]
    rows = report(ClassStreams(stream(), stream()), best, overhead=overhead,
                  tcp_samples=[(104.0, 10), (106.0, 20), (111.0, 30)])
    assert rows[0]["interruption_ms"]["best"]["cn_to_mn"] == pytest.approx(60.0, abs=0.5)
    # The last probe before the silence arrived (104.99 + 30 ms) as the change was in
    # place (105.02), the first after it 70 ms later.
    assert rows[0]["best_gap_ms"]["cn_to_mn"] == [pytest.approx(0.0, abs=0.1),
                                                  pytest.approx(70.0, abs=0.1)]
    assert rows[0]["lost_packets"]["best"] == 6 and rows[0]["lost"]["best"]["cn_to_mn"] == 6
    # wifi0 down: nothing is duplicated on a dead link (100 bytes: before the CN heard of it).
    assert rows[0]["duplicate_overhead_bytes"] == 100
    assert rows[1]["duplicate_overhead_bytes"] == 120000
    assert rows[1]["duplicate_overhead_bytes_by_node"] == {"cn": 60000, "mn": 60000}
    assert [r["tcp_survived"] for r in rows] == [True, True]
    summary = multi_coa_summary(rows, RTT_MS)
    assert summary["duplicate_overhead_bytes"] == 120100
    assert summary["targets"]["duplicate_lossless_on_abrupt"] is True
    assert summary["targets"]["best_within_one_rtt"] is True      # 60 ms ≤ lte's 60 ms
    assert summary["targets"]["tcp_survived"] is True


def test_targets_name_what_missed() -> None:
    best = ClassStreams(stream(dead=(105.0, 105.08)), stream())   # 80 ms > 60 ms
    duplicate = ClassStreams(stream(dead=(105.0, 105.03)), stream())  # 3 probes in a burst
    rows = report(duplicate, best, tcp_samples=[(104.0, 10), (106.0, 10), (111.0, 10)])
    summary = multi_coa_summary(rows, RTT_MS)
    assert summary["lost_packets_duplicate_abrupt"] == 3
    assert summary["targets"]["duplicate_lossless_on_abrupt"] is False
    assert summary["targets"]["best_within_one_rtt"] is False
    assert summary["targets"]["best_over_rtt"] == [
        {"t": DOWN, "interruption_ms": pytest.approx(80.0, abs=0.5), "rtt_ms": 60.0}]
    # The received byte count stopped growing: TCP did not survive.
    assert summary["targets"]["tcp_survived"] is False


def test_no_tcp_and_no_readings_give_none_not_zero() -> None:
    rows = report(ClassStreams(stream(), stream()), tcp_samples=None)
    assert rows[0]["tcp_survived"] is None and rows[0]["duplicate_overhead_bytes"] is None
    assert rows[0]["emulated_drops"] is None
    summary = multi_coa_summary(rows, RTT_MS)
    assert summary["tcp_survived_all"] is None and summary["duplicate_overhead_bytes"] is None


def test_every_link_change_is_a_row_even_without_a_move() -> None:
    events = [e for e in MN_EVENTS if e["event"] != "CoaChanged" or e["t"] < 100]
    rows = multi_coa_reports(
        triggers=TRIGGERS, events=events, cn_events=CN_EVENTS, hoa=HOA, cn=CN,
        coa_links=COA_LINKS, one_way=ONE_WAY,
        streams={"duplicate": ClassStreams(stream(), stream()),
                 "best": ClassStreams(stream(), stream())}, interval=INTERVAL, end=END)
    assert [(r["from"], r["to"], r["timeline_ms"]["moved"]) for r in rows] == [
        ("wifi0", "wifi0", None), ("wifi0", "wifi0", None)]
    # The bound paths still changed: the MN's and the CN's last change, from the link change.
    assert rows[0]["timeline_ms"]["settled"] == pytest.approx(40.0, abs=0.1)


def test_a_move_at_the_instant_of_the_link_change_is_from_the_old_link() -> None:
    # The simulator's movement detection moves at the very instant of the change.
    events = [e if e["t"] != 105.004 else {**e, "t": DOWN} for e in MN_EVENTS]
    rows = multi_coa_reports(
        triggers=TRIGGERS, events=events, cn_events=CN_EVENTS, hoa=HOA, cn=CN,
        coa_links=COA_LINKS, one_way=ONE_WAY,
        streams={"duplicate": ClassStreams(stream(), stream()),
                 "best": ClassStreams(stream(), stream())}, interval=INTERVAL, end=END)
    assert [(r["from"], r["to"]) for r in rows] == [("wifi0", "lte0"), ("lte0", "wifi0")]
    assert rows[0]["timeline_ms"]["moved"] == -20.0   # before the change was in place


def test_the_primary_link_without_a_first_coa_change() -> None:
    from vmip.demo.metrics import primary_link

    # The MN's first registrations named its paths, primary first, but no CoaChanged.
    events = [paths(100.0, "mn", WIFI, LTE),
              {"t": 105.0, "event": "CareOfAddressesChanged", "hoa": HOA, "coas": [[2, LTE]]},
              {"t": 106.0, "event": "CareOfAddressesChanged", "hoa": HOA, "coas": []}]
    assert primary_link(events, COA_LINKS, 99.0) is None
    assert primary_link(events, COA_LINKS, 101.0) == "wifi0"
    assert primary_link(events, COA_LINKS, 105.5) == "lte0"
    assert primary_link(events, COA_LINKS, 107.0) is None     # no CoA usable at all


def test_the_settled_delay_tells_which_link_a_class_ran_on() -> None:
    # Best-link probes on wifi0 (5 ms) until it died, then on lte0 (30 ms), back on
    # wifi0 once it is bound again (112.05).
    on_wifi = lambda sent: sent < DOWN or sent >= 112.05  # noqa: E731
    best = [Arrival(a.seq, a.sent, a.sent + (0.005 if on_wifi(a.sent) else 0.030))
            for a in stream()]
    rows = report(ClassStreams(stream(), stream()), ClassStreams(best, best))
    assert rows[0]["one_way_ms"]["best"] == {"mn_to_cn": 30.0, "cn_to_mn": 30.0}
    assert rows[1]["one_way_ms"]["best"] == {"mn_to_cn": 5.0, "cn_to_mn": 5.0}
    assert rows[0]["one_way_ms"]["duplicate"]["mn_to_cn"] == 30.0


def test_an_abrupt_row_tests_the_best_link_switch_only_if_that_class_was_on_the_dying_link() -> None:
    on_wifi = lambda sent: sent < DOWN or sent >= 112.05  # noqa: E731
    switching = [Arrival(a.seq, a.sent, a.sent + (0.005 if on_wifi(a.sent) else 0.030))
                 for a in stream()]
    rows = report(ClassStreams(stream(), stream()), ClassStreams(switching, switching))
    assert rows[0]["best_link"] == {"before": {"mn_to_cn": "wifi0", "cn_to_mn": "wifi0"},
                                    "after": {"mn_to_cn": "lte0", "cn_to_mn": "lte0"}}
    assert multi_coa_summary(rows, RTT_MS)["targets"]["best_on_dying_link"] == 1
    # Best-link probes on lte0 all along (30 ms): wifi0's death did not touch them.
    rows = report(ClassStreams(stream(), stream()))
    assert rows[0]["best_link"]["before"] == {"mn_to_cn": "lte0", "cn_to_mn": "lte0"}
    assert multi_coa_summary(rows, RTT_MS)["targets"]["best_on_dying_link"] == 0


def test_with_the_emulators_drop_times_a_loss_is_background_exactly_when_it_was_dropped() -> None:
    # Two in a row while lte0 alone carried copies, both dropped by the emulator
    # at their send times (106.00, 106.01): chance, not the handover.
    burst = (seq_at(106.0), seq_at(106.01))
    single = seq_at(107.0)           # lost with no drop on the link at that time
    both = seq_at(113.0)             # lost while both links carried copies
    arrivals = stream(lost=(*burst, single, both))
    drops = {"mn_to_cn": [106.0, 106.01, 108.5, 113.0], "cn_to_mn": []}
    rows = report(ClassStreams(arrivals, stream()), drop_times=drops)
    assert rows[0]["background_lost"]["mn_to_cn"] == 2
    assert rows[0]["lost"]["duplicate"]["mn_to_cn"] == 1      # 107.0: nothing explains it
    assert rows[1]["lost"]["duplicate"]["mn_to_cn"] == 1      # 113.0: wifi0's copy should have come
    assert rows[1]["background_lost"]["mn_to_cn"] == 0


def test_in_the_lab_a_drop_explains_the_probe_sent_just_before_it() -> None:
    # A real run (lab, 2026-12-03): 4.5 s after wifi0 died, lte0 alone carrying,
    # the CN's duplicated probes 3722 and 3723 (10 ms apart; the best-link probe
    # between them arrived) were both dropped by lte0's shaper.  A shaper drops
    # a datagram after the sender's TUN read, ESP and UDP send: 0.1 ms after
    # the probe's send time typically, over 0.5 ms in 1 % of the probes.
    pair = (seq_at(109.5), seq_at(109.51))
    arrivals = stream(lost=pair)
    drops = {"mn_to_cn": [], "cn_to_mn": [109.50015, 109.5112]}
    rows = report(ClassStreams(stream(), arrivals), drop_times=drops,
                  drop_window=LAB_DROP_WINDOW)
    assert rows[0]["lost"]["duplicate"]["cn_to_mn"] == 0
    assert rows[0]["background_lost"]["cn_to_mn"] == 2
    # The exact window of the simulator does not reach the second drop...
    rows = report(ClassStreams(stream(), arrivals), drop_times=drops)
    assert rows[0]["lost"]["duplicate"]["cn_to_mn"] == 1
    # ...and without drop times the pair is a burst: the handover's.
    rows = report(ClassStreams(stream(), arrivals))
    assert rows[0]["lost"]["duplicate"]["cn_to_mn"] == 2


def test_in_the_lab_each_drop_explains_one_probe_and_only_in_its_window() -> None:
    pair = (seq_at(109.5), seq_at(109.51))
    arrivals = stream(lost=pair)
    # One drop between the two: it explains the first (earliest-first), not both.
    rows = report(ClassStreams(stream(), arrivals), drop_times={"cn_to_mn": [109.505]},
                  drop_window=LAB_DROP_WINDOW)
    assert rows[0]["background_lost"]["cn_to_mn"] == 1
    assert rows[0]["lost"]["duplicate"]["cn_to_mn"] == 1
    # A drop 40 ms after the send (another datagram) or 5 ms before it explains nothing.
    lone = stream(lost=(seq_at(108.0),))
    for drop in (108.040, 107.995):
        rows = report(ClassStreams(stream(), lone), drop_times={"cn_to_mn": [drop]},
                      drop_window=LAB_DROP_WINDOW)
        assert rows[0]["lost"]["duplicate"]["cn_to_mn"] == 1, drop
    # While both links carried copies a drop on lte0 explains nothing (wifi0's copy
    # should have come) and is not used up by that probe.
    both = stream(lost=(seq_at(113.0), seq_at(113.5)))
    rows = report(ClassStreams(both, stream()), drop_times={"mn_to_cn": [113.0002]},
                  drop_window=(0.002, 0.6))
    assert rows[1]["lost"]["duplicate"]["mn_to_cn"] == 2


def test_ping_per_window_lost_and_settled_round_trip() -> None:
    # One echo every 200 ms; 10 ms round trips on wifi0, 60 ms on lte0; one lost at 106.0.
    ping = [Arrival(n, 100.0 + 0.2 * n, 100.0 + 0.2 * n + (0.010 if 100.0 + 0.2 * n < DOWN
                                                         or 100.0 + 0.2 * n >= 112.05 else 0.060))
            for n in range(75) if 100.0 + 0.2 * n != 106.0]
    rows = report(ClassStreams(stream(), stream()), ping=ping)
    assert [r["ping_lost"] for r in rows] == [1, 0]
    assert [r["ping_rtt_ms"] for r in rows] == [60.0, 10.0]


def test_a_hole_across_a_link_change_is_split_between_the_windows_never_counted_twice() -> None:
    from vmip.demo.metrics import lost_sequences

    # Pings every 200 ms; 0.2 s before and 0.2 s after the change at 105.0 lost.
    ping = [Arrival(n, 104.0 + 0.2 * n, 104.0 + 0.2 * n + 0.06) for n in range(11)
            if n not in (4, 6)]
    assert lost_sequences(ping, 100.0, 105.0) == [4]
    assert lost_sequences(ping, 105.0, 110.0) == [6]
