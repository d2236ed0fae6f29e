"""The demo report's table names the driver that carried the run."""

from __future__ import annotations

from vmip.demo.run import format_report

HANDOVER = {"from": "wifi0", "to": "lte0", "interruption_ms": {"mn_to_cn": 58.0, "cn_to_mn": 118.0},
            "lost_packets": 11, "bu_ba_ms": 141.0, "aot": True, "tcp_survived": True,
            "timeline_ms": {"moved": 28.0, "cn_sends": 128.0}}
SUMMARY = {"handovers": 1, "interruption_ms_p50": 118.0, "interruption_ms_p90": 118.0,
           "tcp_survived_all": True}


def test_the_driver_line_follows_the_table() -> None:
    for driver, note in (("raw", "native IPv6, routed, no NAT"),
                         ("udp", "overlay over the IPv4 underlay, lte behind NAT")):
        text = format_report({"handovers": [HANDOVER], "summary": SUMMARY, "driver": driver})
        assert f"driver: {driver} ({note})" in text.splitlines()


def test_a_report_without_a_driver_has_no_driver_line() -> None:
    # The simulator's scenarios report no driver: they run no link driver.
    text = format_report({"handovers": [HANDOVER], "summary": SUMMARY})
    assert not any(line.startswith("driver:") for line in text.splitlines())
