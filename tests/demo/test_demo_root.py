"""``vmip demo --no-ui --duration 30 --json F`` end to end (builds and removes the lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_demo(report_file: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """``vmip demo --no-ui ARGS --json FILE``: its exit, and the report it wrote.

    Skips when a lab exists (the demo builds its own); removes whatever the
    demo left behind, and fails the test for it."""
    from vmip.lab.netns import list_netns

    if list_netns("vmip-"):
        pytest.skip("a vmip lab exists already (another run owns it): the demo builds its own")
    try:
        proc = subprocess.run([sys.executable, "-m", "vmip", "demo", "--no-ui", *args,
                               "--json", str(report_file)], capture_output=True, text=True,
                              timeout=85, env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        leftover = list_netns("vmip-")
        if leftover:
            subprocess.run([sys.executable, "-m", "vmip", "lab", "down"], timeout=30,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert leftover == [], f"the demo left namespaces behind: {leftover}"
    return proc, json.loads(report_file.read_text())


@pytest.mark.root
@pytest.mark.timeout(90)
def test_demo_30s_reports_handovers_and_tcp_survives(tmp_path):
    proc, report = run_demo(tmp_path / "r.json", "--duration", "30")
    # The report names the driver that carried it, in JSON and under the table.
    # (--driver raw is not run here, to keep CI short: tests/lab/test_iro_lab.py
    # covers the native lab's handovers under TCP.)
    assert report["driver"] == "udp" and "driver: udp (" in proc.stdout
    assert report["links"]["lte0"]["nat"] is True
    handovers = report["handovers"]
    assert len(handovers) >= 2
    for h in handovers:
        assert set(h) >= {"from", "to", "interruption_ms", "lost_packets", "bu_ba_ms", "aot",
                          "tcp_survived"}
        assert set(h["interruption_ms"]) == {"mn_to_cn", "cn_to_mn"}
        assert {h["from"], h["to"]} == {"wifi0", "lte0"}
        assert isinstance(h["lost_packets"], int) and h["aot"] in (None, "early", "on-move")
        assert h["tcp_survived"] is True
        assert h["bu_ba_ms"] is not None and h["bu_ba_ms"] > 0
        # The streams came back after each handover (a number, not None).
        assert all(v is not None for v in h["interruption_ms"].values())
    # Both directions of handover happened, by the MN's own decision.
    assert {(h["from"], h["to"]) for h in handovers} == {("wifi0", "lte0"), ("lte0", "wifi0")}
    assert report["summary"]["tcp_survived_all"] is True


@pytest.mark.root
@pytest.mark.timeout(90)
def test_demo_multi_coa_duplicates_survive_wifi_dying(tmp_path):
    """``vmip demo --multi-coa --duration 20``: wifi0 down, up, down; one binding per link."""
    proc, report = run_demo(tmp_path / "mcoa.json", "--multi-coa", "--duration", "20")
    assert report["multi_coa"] is True
    rows = report["handovers"]
    assert [r["trigger"]["action"] for r in rows] == ["down", "up", "down"]
    for row in rows:
        assert set(row) >= {"lost_packets", "interruption_ms", "duplicate_overhead_bytes",
                            "background_lost", "emulated_drops", "tcp_survived"}
        assert set(row["lost_packets"]) == {"duplicate", "best"}
        assert set(row["interruption_ms"]["best"]) == {"mn_to_cn", "cn_to_mn"}
        # TCP on the best link survives every link change.
        assert row["tcp_survived"] is True
        # What lte0's emulator dropped bounds what is called background.
        if row["emulated_drops"] is not None:
            for direction, lost in row["background_lost"].items():
                assert lost <= row["emulated_drops"][direction]
    abrupt = [row for row in rows if row["abrupt"]]
    for row in abrupt:
        assert all(v is not None for v in row["interruption_ms"]["best"].values())
    # wifi0 died without warning: the duplicated probes lose nothing (lte0's
    # random loss while it alone carried copies is background, matched to
    # the shaper's own drops), where the best-link class loses what was in
    # flight on wifi0.  Its gap is within lte0's round trip in the lab runs
    # (25-46 ms against 60, docs/multi-coa.md); a run-once test on a shared
    # machine asserts 1.5 round trips, the report checks the target itself.
    duplicate_lost = sum(row["lost_packets"]["duplicate"] for row in abrupt)
    assert duplicate_lost == 0, abrupt
    rtt = report["links"]["lte0"]["rtt_ms"]
    for row in abrupt:
        assert max(row["interruption_ms"]["best"].values()) <= 1.5 * rtt, row
    # wifi0 back and bound again: the duplicates cost bytes on both sides.
    assert rows[1]["duplicate_overhead_bytes"] > 0
    assert all(v > 0 for v in rows[1]["duplicate_overhead_bytes_by_node"].values())
    summary = report["summary"]
    assert summary["targets"]["tcp_survived"] is True
    target = summary["targets"]["duplicate_lossless_on_abrupt"]
    assert f"target 0 duplicated probes lost on abrupt handovers: {'met' if target else 'NOT met'}" \
        in proc.stdout
