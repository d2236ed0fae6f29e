"""The multi-CoA demo's table, its ping and counter readers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmip.demo.metrics import Arrival
from vmip.demo.run import duplicate_bytes, format_multi_coa_report, parse_ping_arrivals


def row(frm: str, to: str, abrupt: bool, dup: int, bg: int, best: tuple[float, float],
        cost: int | None) -> dict:
    return {"from": frm, "to": to, "abrupt": abrupt, "t": 0.0,
            "interruption_ms": {"best": {"mn_to_cn": best[0], "cn_to_mn": best[1]},
                                "duplicate": {"mn_to_cn": 0.0, "cn_to_mn": 0.0}},
            "lost_packets": {"duplicate": dup, "best": 3},
            "background_lost": {"mn_to_cn": bg, "cn_to_mn": 0},
            "duplicate_overhead_bytes": cost, "tcp_survived": True,
            "timeline_ms": {"moved": 4.0, "settled": 71.0}}


REPORT = {
    "handovers": [row("wifi0", "lte0", True, 0, 2, (31.0, 58.0), 1500),
                  row("lte0", "wifi0", False, 0, 1, (0.0, 0.0), 248000)],
    "summary": {"handovers": 2, "abrupt_handovers": 1, "lost_packets": {"duplicate": 0, "best": 6},
                "lost_packets_duplicate_abrupt": 0, "background_lost": 3,
                "duplicate_overhead_bytes": 249500, "interruption_ms_p50": 0.0,
                "interruption_ms_max": 58.0,
                "targets": {"duplicate_lossless_on_abrupt": True, "best_within_one_rtt": False,
                            "best_over_rtt": [{"t": 0.0, "interruption_ms": 72.0, "rtt_ms": 60}],
                            "best_on_dying_link": 0, "tcp_survived": True}},
    "duration_s": 10.0, "driver": "udp",
}


def test_the_table_has_a_row_per_link_change_and_says_which_target_missed() -> None:
    text = format_multi_coa_report(REPORT)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    first = next(line for line in lines if line.startswith(" 1 "))
    assert first.split() == ["1", "wifi0", "lte0", "0", "2", "31", "58", "3", "1.5", "ok", "4",
                             "71"]
    assert any(line.startswith(" 2 lte0   wifi0") for line in lines)
    assert ("2 handovers (1 abrupt); duplicated: 0 lost on abrupt, 0 in all, "
            "3 background") in lines
    assert "duplicate mode cost 249.5 kB (24.9 kB/s)" in text
    assert "target 0 duplicated probes lost on abrupt handovers: met" in lines
    assert ("target best-link gap ≤ 1 RTT of the link left: NOT met "
            "(1 over, worst 72 ms)") in lines
    assert "target TCP survived every handover: met" in lines
    # The best-link class was not on wifi0 when it died: the gap tested no switch.
    assert "  the best-link class was on the dying link in 0 of 1 (others: no switch)" in lines
    assert "driver: udp (overlay over the IPv4 underlay, lte behind NAT)" in lines


def test_ping_replies_become_arrivals_sent_one_rtt_earlier() -> None:
    text = ("PING 2001:db8:20::2(2001:db8:20::2) from 2001:db8:100::10 : 56 data bytes\n"
            "[1700000000.250000] 64 bytes from 2001:db8:20::2: icmp_seq=1 ttl=64 time=10.0 ms\n"
            "[1700000000.700000] 64 bytes from 2001:db8:20::2: icmp_seq=3 ttl=64 time=60.0 ms\n"
            "\n--- 2001:db8:20::2 ping statistics ---\n"
            "3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\n")
    assert parse_ping_arrivals(text) == [Arrival(1, 1700000000.24, 1700000000.25),
                                         Arrival(3, 1700000000.64, 1700000000.7)]


def test_duplicate_bytes_is_found_in_whichever_section_holds_it() -> None:
    assert duplicate_bytes({"node": {"tx_packets": 9, "tx_duplicate_bytes": 4096},
                            "ipsec": {}}) == 4096
    assert duplicate_bytes({"mobility": {"tx_duplicate_bytes": 7}}) == 7
    # A node that never duplicated has no such counter: it cost nothing.
    assert duplicate_bytes({"node": {"tx_packets": 9}}) == 0 and duplicate_bytes("x") == 0


def test_the_benchmark_groups_link_changes_by_kind() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "bench" / "handover.py"
    spec = importlib.util.spec_from_file_location("bench_handover", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    handovers = [dict(h, trigger={"action": "down" if h["abrupt"] else "up"})
                 for h in REPORT["handovers"]]
    result = bench.analyse_multi_coa({**REPORT, "handovers": handovers * 2,
                                      "links": {"wifi0": {"rtt_ms": 10.0},
                                                "lte0": {"rtt_ms": 60.0}},
                                      "summary": {**REPORT["summary"], "tcp_survived_all": True}})
    down, up = result["groups"]
    assert (down["action"], down["to"], down["count"], down["rtt_ms"]) == ("down", "lte0", 2, 60.0)
    assert (down["best_p50_ms"], down["best_max_ms"], down["background_lost"]) == (58.0, 58.0, 4)
    assert (up["to"], up["overhead_bytes"]) == ("wifi0", 496000)


class RingNode:
    """A node's ``events`` command over a timeline that keeps only its last 3 events."""

    def __init__(self) -> None:
        self.timeline: list[dict] = []

    def publish(self, t: float) -> None:
        self.timeline = (self.timeline + [{"t": t, "event": "PathsChanged"}])[-3:]

    def call(self, command: str, since: float = 0) -> list[dict]:
        assert command == "events"
        return [e for e in self.timeline if e["t"] > since]


def test_the_event_log_keeps_what_the_node_forgets() -> None:
    from vmip.demo.run import EventLog

    node = RingNode()
    log = EventLog(node)
    for t in range(1, 11):
        node.publish(float(t))
        if t % 2 == 0:
            log.poll()
    assert [e["t"] for e in log.events] == [float(t) for t in range(1, 11)]
    assert len(node.timeline) == 3


def test_the_multi_coa_demo_waits_for_every_binding_with_the_ha_and_the_cn() -> None:
    from vmip.demo.run import registered

    ha, cn, mn2 = "2001:db8:100::1", "2001:db8:20::2", "2001:db8:100::20"
    entries = [{"peer": ha, "state": "bound"}, {"peer": ha, "state": "bound"},
               {"peer": cn, "state": "bound"}, {"peer": cn, "state": "registering"},
               {"peer": mn2, "state": "bound"}, {"peer": mn2, "state": "registering"}]
    assert not registered(entries, {ha, cn})       # the CN's lte0 binding is not there yet
    entries[3]["state"] = "bound"
    assert registered(entries, {ha, cn})           # mn2's lte0 binding cannot come (NAT)
    assert not registered(entries)                 # the single-CoA demo waits for all
    assert not registered(entries[:2], {ha, cn})   # no entry for the CN at all


def test_the_live_status_line_shows_what_the_duplicates_cost_so_far(tmp_path) -> None:
    from vmip.demo.run import _Run, _status_lines

    run = _Run(plan=None, workdir=tmp_path, multi_coa=True)
    run.overhead = [(1.0, {"mn": 1000.0, "cn": 0.0}), (6.0, {"mn": 150000.0, "cn": 100000.0})]
    assert _status_lines(run, {}, 0.0, 10.0)[1].endswith(" · dup 250 kB")
    run.multi_coa = False
    assert "dup" not in _status_lines(run, {}, 0.0, 10.0)[1]


class _Plan:
    """What the demo's emulator reader needs of a lab plan."""

    def __init__(self, state: Path) -> None:
        self.emulation_dir, self.router_netns = state, "vmip-net"

    def node(self, name: str):
        return SimpleNamespace(link=lambda link: SimpleNamespace(router_ifname="mn-lte"))


def _drops_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vmip.demo import run
    from vmip.lab import emulation

    monkeypatch.setattr(emulation, "shaper_pids", lambda netns, state: {
        ("mn-lte", "in"): 101, ("mn-lte", "out"): 102})
    signalled: list[int] = []
    monkeypatch.setattr(run.os, "kill", lambda pid, sig: signalled.append(pid))
    reader = run._EmulatorDrops(_Plan(tmp_path))

    def answer(moment: float, statuses: dict[str, dict]) -> None:
        reader.request(moment)
        for direction, status in statuses.items():
            path = emulation.status_path(tmp_path, "vmip-net", "mn-lte", direction)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(status))
        reader.collect(wait=1.0)
        assert sorted(signalled[-2:]) == [101, 102]
    return reader, answer


def test_the_emulators_drop_times_are_the_union_of_its_readings(tmp_path, monkeypatch) -> None:
    reader, answer = _drops_reader(tmp_path, monkeypatch)
    # The shaper lists its latest drops only; two in one queue read share a time.
    answer(5.0, {"in": {"dropped_loss": 3, "loss_drop_times": [1.0, 1.0, 2.0]},
                 "out": {"dropped_loss": 1, "loss_drop_times": [1.5]}})
    answer(10.0, {"in": {"dropped_loss": 5, "loss_drop_times": [2.0, 7.0, 7.0]},
                  "out": {"dropped_loss": 1, "loss_drop_times": [1.5]}})
    assert reader.result() == [(5.0, {"mn_to_cn": 3, "cn_to_mn": 1}),
                               (10.0, {"mn_to_cn": 5, "cn_to_mn": 1})]
    assert reader.times() == {"mn_to_cn": [1.0, 1.0, 2.0, 7.0, 7.0], "cn_to_mn": [1.5]}


def test_a_shaper_that_lists_no_drop_times_leaves_the_counts_only(tmp_path, monkeypatch) -> None:
    reader, answer = _drops_reader(tmp_path, monkeypatch)
    answer(5.0, {"in": {"dropped_loss": 3}, "out": {"dropped_loss": 1, "loss_drop_times": [1.5]}})
    assert reader.result() == [(5.0, {"mn_to_cn": 3, "cn_to_mn": 1})]
    assert reader.times() is None
