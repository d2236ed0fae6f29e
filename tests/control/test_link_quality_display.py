"""``vmip bindings`` shows the MN's link quality (what a node's ``mobility`` command answers)."""

from __future__ import annotations

import json

import pytest

from vmip.cli.main import main
from vmip.cli.render import format_milliseconds, format_percent

MOBILITY = {
    "counters": {}, "remap": {},
    "mn": {"hoa": "2001:db8:100::10", "home_agent": "2001:db8:100::1",
           "coa": "2001:db8:31::2", "counters": {},
           "binding_update_list": [{"peer": "2001:db8:100::1", "home": True, "state": "bound",
                                    "coa": "2001:db8:31::2", "sequence": 7, "lifetime": 420,
                                    "direct": None}]},
    "cn": {"binding_cache": [], "proofs": 0, "counters": {}},
    "movement": None,
    "link_quality": {
        "lte0": {"srtt_ms": 62.0, "rttvar_ms": 3.5, "loss": 0.25, "samples": 4, "outcomes": 8,
                 "lost_in_row": 2, "age_s": 1.5, "score_ms": 82.7, "state": "failing",
                 "best": False},
        "wifi0": {"srtt_ms": 12.0, "rttvar_ms": 1.0, "loss": 0.0, "samples": 9, "outcomes": 9,
                  "lost_in_row": 0, "age_s": 0.5, "score_ms": 12.0, "state": "good",
                  "best": True},
    },
}


@pytest.mark.parametrize("value, text", [(0.004, "4 µs"), (4.2, "4 ms"), (12.0, "12 ms"),
                                         (1300.0, "1.3 s")])
def test_format_milliseconds(value, text):
    assert format_milliseconds(value) == text


@pytest.mark.parametrize("value, text", [(0.0, "0%"), (0.005, "0.5%"), (0.25, "25%"),
                                         (1.0, "100%")])
def test_format_percent(value, text):
    assert format_percent(value) == text


def test_vmip_bindings_prints_a_link_quality_table(start_server, capsys):
    server = start_server({"mobility": lambda args: MOBILITY})
    assert main(["bindings", "--socket", str(server.path)]) == 0
    out = capsys.readouterr().out
    assert "link quality" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("wifi0", "lte0")}
    assert rows["wifi0"] == ["wifi0", "good", "12", "ms", "1", "ms", "0%", "9", "500", "ms",
                             "yes"]
    assert rows["lte0"] == ["lte0", "failing", "62", "ms", "4", "ms", "25%", "4", "1.5", "s",
                            "no"]
    assert main(["bindings", "--socket", str(server.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["link_quality"] == MOBILITY["link_quality"]


def test_vmip_top_link_table_shows_rtt_loss_and_a_failing_link():
    from vmip.demo.dashboard import render_text

    status = {"name": "mn", "roles": ["mn"], "active_link": "wifi0", "uptime_s": 9,
              "links": [{"name": "wifi0"}, {"name": "lte0"}, {"name": "eth9"}],
              "link_quality": MOBILITY["link_quality"]}
    snapshot = {"t": 1.0, "status": status, "sas": [], "remap": {"rules": []},
                "mobility": MOBILITY, "events": [], "counters": {"links": {}}}
    text = render_text(snapshot, None, width=80, height=24)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    assert rows["link"] == ["link", "state", "rtt", "loss", "rx", "pkt/s", "tx", "pkt/s"]
    assert rows["wifi0"] == ["wifi0", "active", "best", "12ms", "0%", "0", "0"]
    assert rows["lte0"] == ["lte0", "failing", "62ms", "25%", "0", "0"]
    assert rows["eth9"] == ["eth9", "-", "-", "-", "0", "0"]     # nothing measured
    assert max(len(line) for line in text.splitlines()) <= 80
