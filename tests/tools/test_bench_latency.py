"""tools/bench: the ping options of run and the stage breakdown of tools/bench/latency (no root)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))

from netbench import cli
from netbench.latency import PATH, breakdown, read_trace, summarize_breakdown
from netbench.runner import PING_INTERVAL, loaded_ping_command


def test_ping_interval_and_loaded_ping_options():
    default = cli.options_from(cli.build_parser().parse_args([]))
    assert default.ping_interval == PING_INTERVAL and not default.loaded_ping
    options = cli.options_from(cli.build_parser().parse_args(
        ["--ping-interval", "1", "--loaded-ping"]))
    assert options.ping_interval == 1.0 and options.loaded_ping
    with pytest.raises(ValueError, match="--ping-interval"):
        cli.options_from(cli.build_parser().parse_args(["--ping-interval", "0"]))


def test_loaded_pings_stay_inside_the_transfer():
    command = loaded_ping_command("2001:db8:a1::2", 4.0, 0.05)
    script = command[-1]
    assert script.startswith("sleep 1;") and "-c 50 " in script and "2001:db8:a1::2" in script
    # A test too short for the delay still sends one ping, and never a negative count.
    assert "-c 1 " in loaded_ping_command("x", 0.5, 0.05)[-1]


def test_breakdown_lines_up_both_traces_with_the_probe(tmp_path):
    """Each segment is the time since the previous stage; the tail reaches the reply."""
    request, reply = "128:7:1", "129:7:1"
    times = {"a": {}, "b": {}}
    at = 1_000_000
    for _label, node, stage, kind in PATH:
        at += 10_000                                    # 10 µs per segment
        times[node][(stage, request if kind == "req" else reply)] = at
    for side in ("a", "b"):
        path = tmp_path / f"trace-{side}.txt"
        path.write_text("".join(f"{t} {stage} {key}\n" for (stage, key), t in times[side].items())
                        + "garbage line\n")
        times[side] = read_trace(path)
    probe = {"id": 7, "seq": 1, "sent_ns": 1_000_000, "reply_ns": at + 5_000}
    [row] = breakdown([probe], times)
    assert [row[label] for label, *_ in PATH] == [10.0] * len(PATH)
    assert row["a: kernel hands the reply to ping"] == 5.0
    assert row["total"] == (at + 5_000 - 1_000_000) / 1000
    missing = {"a": times["a"], "b": {}}                 # b's trace lost: its segments unknown
    [partial] = breakdown([probe], missing)
    assert partial["b: link reader woken"] is None and partial["a: TUN read"] == 10.0
    summary = summarize_breakdown([row, partial])
    assert summary["a: TUN read"]["n"] == 2 and summary["b: TUN write"]["n"] == 1
