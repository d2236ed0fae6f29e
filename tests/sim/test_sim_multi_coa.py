"""``vmip sim --multi-coa``: wifi → lte → wifi with one binding per link, on virtual time.

The demo's multi-CoA schedule, shortened: wifi0 dies at 5 s and 15 s (abrupt),
comes back at 10 s.  Oracles: the multi-CoA targets (docs/multi-coa.md) and
what the simulated lte0 itself dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmip.sim.scenario import SimOptions, run_sim

FIELDS = {"from", "to", "abrupt", "interruption_ms", "lost_packets", "lost", "background_lost",
          "emulated_drops", "duplicate_overhead_bytes", "tcp_survived", "timeline_ms"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("sim") / "mcoa.json"
    run_sim(SimOptions(duration=18, seed=5, multi_coa=True, json_path=path), out=lambda _: None)
    return json.loads(path.read_text())


def test_the_report_has_the_multi_coa_fields(report: dict) -> None:
    assert report["multi_coa"] is True and report["simulated"] is True
    rows = report["handovers"]
    assert [(r["trigger"]["action"], r["from"], r["to"]) for r in rows] == [
        ("down", "wifi0", "lte0"), ("up", "lte0", "wifi0"), ("down", "wifi0", "lte0")]
    for row in rows:
        assert set(row) >= FIELDS
        assert set(row["lost_packets"]) == {"duplicate", "best"}
        assert set(row["interruption_ms"]["best"]) == {"mn_to_cn", "cn_to_mn"}
        assert row["tcp_survived"] is None        # no TCP in the simulator
        assert isinstance(row["duplicate_overhead_bytes"], int)
    assert set(report["probes"]["classes"]) == {"duplicate", "best"}


def test_wifi_dying_loses_no_duplicated_probe_and_best_flows_switch_within_one_rtt(
        report: dict) -> None:
    summary = report["summary"]
    assert summary["abrupt_handovers"] == 2
    assert summary["lost_packets_duplicate_abrupt"] == 0
    assert summary["targets"]["duplicate_lossless_on_abrupt"] is True
    # Both ways, within lte0's 60 ms round trip, on each abrupt handover.
    assert summary["targets"]["best_within_one_rtt"] is True, summary["targets"]["best_over_rtt"]
    for row in report["handovers"]:
        if row["abrupt"]:
            assert all(v is not None and v <= 60 for v in row["interruption_ms"]["best"].values())


def test_background_loss_is_what_lte_dropped_and_duplicates_cost_bytes(report: dict) -> None:
    for row in report["handovers"]:
        for direction, lost in row["background_lost"].items():
            assert lost <= row["emulated_drops"][direction]
    # lte0 loses 0.5 % each way: over 10 s alone with 100 probes/s each way, some.
    assert report["summary"]["background_lost"] > 0
    # Both links bound again after wifi0 came back: every duplicated probe went twice.
    back = report["handovers"][1]
    assert back["duplicate_overhead_bytes"] > 100 * 100 * 2   # > 100 B × 100/s × 2 s, each side
    assert back["duplicate_overhead_bytes_by_node"]["mn"] > 0
    assert back["duplicate_overhead_bytes_by_node"]["cn"] > 0


def test_the_same_seed_gives_the_same_report(report: dict, tmp_path: Path) -> None:
    path = tmp_path / "again.json"
    run_sim(SimOptions(duration=18, seed=5, multi_coa=True, json_path=path), out=lambda _: None)
    assert json.loads(path.read_text()) == report
