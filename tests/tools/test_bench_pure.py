"""tools/bench/run, the parts without root: parsers, statistics, report, options."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))

from netbench import cli
from netbench.errors import BenchError, ParseError
from netbench.parse import parse_iperf3_json, parse_ping
from netbench.report import (
    SystemOutcome,
    build_report,
    comparison_lines,
    note_lines,
    render_plain,
)
from netbench.stats import ratio, round_order, summarize
from netbench.systems import (
    EXTRA_SYSTEM_NAMES,
    SYSTEM_NAMES,
    OpenVpn,
    StrongswanLibipsec,
    WireguardGo,
)

from vmip.errors import VmipError

# -- iperf3 -J ----------------------------------------------------------------------


def iperf_document(received_bps: float, sent_bps: float, retransmits: int = 7) -> dict:
    """The parts of an iperf3 3.12 client report the harness reads, in iperf3's layout."""
    return {
        "start": {"version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 1}},
        "intervals": [],
        "end": {
            "streams": [],
            "sum_sent": {"start": 0, "end": 4.0, "seconds": 4.0, "bytes": 1,
                         "bits_per_second": sent_bps, "retransmits": retransmits,
                         "sender": True},
            "sum_received": {"start": 0, "end": 4.0, "seconds": 4.0, "bytes": 1,
                             "bits_per_second": received_bps, "sender": True},
        },
    }


@given(received=st.floats(min_value=0, max_value=1e12), sent=st.floats(min_value=0, max_value=1e12),
       retransmits=st.integers(min_value=0, max_value=10**6))
def test_iperf3_receiver_rate_in_megabits(received, sent, retransmits):
    result = parse_iperf3_json(json.dumps(iperf_document(received, sent, retransmits)))
    assert result.receiver_mbps == pytest.approx(received / 1e6)
    assert result.sender_mbps == pytest.approx(sent / 1e6)
    assert result.retransmits == retransmits
    assert result.seconds == 4.0


def test_iperf3_integer_rate_accepted():
    result = parse_iperf3_json(json.dumps(iperf_document(500_000_000, 510_000_000)))
    assert result.receiver_mbps == 500.0


def test_iperf3_error_report_is_a_parse_error():
    # What iperf3 -J prints when nothing listens on the other side.
    text = json.dumps({"start": {"connected": [], "version": "iperf 3.12"}, "intervals": [],
                       "end": {}, "error": "unable to connect to server: Connection refused"})
    with pytest.raises(ParseError, match="Connection refused"):
        parse_iperf3_json(text)


@pytest.mark.parametrize("mutate", [
    lambda doc: doc["end"].pop("sum_received"),
    lambda doc: doc["end"]["sum_sent"].pop("bits_per_second"),
    lambda doc: doc["end"]["sum_received"].__setitem__("bits_per_second", "fast"),
    lambda doc: doc["end"]["sum_received"].__setitem__("bits_per_second", True),
    lambda doc: doc["end"]["sum_received"].__setitem__("bits_per_second", -1),
    lambda doc: doc["end"]["sum_received"].__setitem__("bits_per_second", float("nan")),
    lambda doc: doc["end"]["sum_received"].__setitem__("seconds", float("inf")),
    lambda doc: doc.__setitem__("end", []),
    lambda doc: doc.pop("end"),
])
def test_iperf3_incomplete_report_is_a_parse_error(mutate):
    document = iperf_document(1e9, 1e9)
    mutate(document)
    with pytest.raises(ParseError):
        parse_iperf3_json(json.dumps(document))


@pytest.mark.parametrize("text", ["", "iperf3: error - unable to connect", "[1, 2]", "null",
                                  "{", "[" * 100_000, "1" * 5000])
def test_iperf3_non_report_is_a_parse_error(text):
    with pytest.raises(ParseError):
        parse_iperf3_json(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["end", "sum_sent", "sum_received", "bits_per_second",
                                       "seconds", "retransmits", "error", "x"]),
                      children, max_size=4),
    max_leaves=25)


@settings(max_examples=300)
@given(st.one_of(st.text(), json_values.map(json.dumps)))
def test_iperf3_parser_raises_only_parse_error(text):
    try:
        result = parse_iperf3_json(text)
    except ParseError:
        return
    assert math.isfinite(result.receiver_mbps) and result.receiver_mbps >= 0


# -- ping -------------------------------------------------------------------------

rtt_texts = st.one_of(
    st.integers(min_value=0, max_value=99_999).map(str),
    st.tuples(st.integers(min_value=0, max_value=9999), st.integers(min_value=0, max_value=999))
    .map(lambda pair: f"{pair[0]}.{pair[1]:03d}"),
)


def ping_output(times: list[str], duplicates: set[int], target: str = "2001:db8:a1::2") -> str:
    """Text in the layout of iputils ping 20221126."""
    lines = [f"PING {target}({target}) 56 data bytes"]
    for seq, time_text in enumerate(times, start=1):
        lines.append(f"64 bytes from {target}: icmp_seq={seq} ttl=64 time={time_text} ms")
        if seq in duplicates:
            lines.append(f"64 bytes from {target}: icmp_seq={seq} ttl=64 time=99.9 ms (DUP!)")
    lines += ["", f"--- {target} ping statistics ---",
              (f"{len(times) + 2} packets transmitted, {len(times)} received, "
               f"+{len(duplicates)} duplicates, 10% packet loss, time 951ms"),
              "rtt min/avg/max/mdev = 0.1/0.2/0.3/0.04 ms"]
    return "\n".join(lines) + "\n"


@given(times=st.lists(rtt_texts, min_size=1, max_size=30), data=st.data())
def test_ping_rtts_are_the_printed_times(times, data):
    duplicates = data.draw(st.sets(st.integers(min_value=1, max_value=len(times))))
    result = parse_ping(ping_output(times, duplicates))
    assert list(result.rtts_ms) == [float(text) for text in times]
    assert result.transmitted == len(times) + 2
    assert result.received == len(times)


def test_ping_real_transcript():
    # iputils ping 20221126 on this machine (first reply waited for ND).
    text = """PING 2001:db8:ff::2(2001:db8:ff::2) 56 data bytes
64 bytes from 2001:db8:ff::2: icmp_seq=1 ttl=64 time=1016 ms
64 bytes from 2001:db8:ff::2: icmp_seq=2 ttl=64 time=956 ms
64 bytes from 2001:db8:ff::2: icmp_seq=3 ttl=64 time=0.049 ms

--- 2001:db8:ff::2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 120ms
rtt min/avg/max/mdev = 0.049/657.350/1015.902/48.919 ms, pipe 3
"""
    result = parse_ping(text)
    assert result.rtts_ms == (1016.0, 956.0, 0.049)
    assert (result.transmitted, result.received) == (3, 3)


@pytest.mark.parametrize("text", [
    "",
    ("PING 2001:db8::2(2001:db8::2) 56 data bytes\n\n--- 2001:db8::2 ping statistics ---\n"
     "5 packets transmitted, 0 received, 100% packet loss, time 4087ms\n"),
    "ping: connect: Network is unreachable\n",
    "From 2001:db8::1 icmp_seq=1 Destination unreachable: Address unreachable\n",
])
def test_ping_without_replies_is_a_parse_error(text):
    with pytest.raises(ParseError):
        parse_ping(text)


@settings(max_examples=300)
@given(st.one_of(
    st.text(),
    st.lists(st.sampled_from(["64 bytes from ::1: icmp_seq=1 ttl=64 time=", "9" * 400, "0.5",
                              " ms", " (DUP!)", "\n", "3 packets transmitted, ", "2 received"]))
    .map("".join)))
def test_ping_parser_raises_only_parse_error(text):
    try:
        result = parse_ping(text)
    except ParseError:
        return
    assert result.rtts_ms and all(math.isfinite(rtt) for rtt in result.rtts_ms)


def test_parse_error_is_a_vmip_error():
    assert issubclass(ParseError, BenchError) and issubclass(BenchError, VmipError)


# -- statistics -------------------------------------------------------------------


def test_summary_median_and_range():
    odd = summarize([3.0, 1.0, 2.0])
    assert (odd.median, odd.minimum, odd.maximum, odd.count) == (2.0, 1.0, 3.0, 3)
    assert summarize([4.0, 1.0, 3.0, 2.0]).median == 2.5
    assert summarize([]) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_median_lies_within_the_range(samples):
    summary = summarize(samples)
    assert summary.minimum <= summary.median <= summary.maximum
    below = sum(1 for sample in samples if sample < summary.median)
    above = sum(1 for sample in samples if sample > summary.median)
    assert below <= len(samples) / 2 and above <= len(samples) / 2


def test_ratio():
    assert ratio(500.0, 250.0) == 2.0
    assert ratio(None, 250.0) is None
    assert ratio(500.0, None) is None
    assert ratio(500.0, 0.0) is None


@given(st.integers(min_value=1, max_value=7))
def test_rounds_rotate_so_every_system_holds_every_position_once(count):
    systems = [f"s{index}" for index in range(count)]
    rounds = [round_order(systems, index) for index in range(count)]
    for order in rounds:
        assert sorted(order) == systems
    for position in range(count):
        assert sorted(order[position] for order in rounds) == systems
    assert round_order(systems, count) == rounds[0]
    assert round_order([], 3) == []


# -- report -----------------------------------------------------------------------


def sample_outcomes() -> list[SystemOutcome]:
    return [
        SystemOutcome("vmip", tcp_mbps=[400.0, 500.0, 450.0], rtt_ms=[0.4, 0.5, 0.6],
                      details={"summary": "udp driver", "version": "vmip 0.1.0"}),
        SystemOutcome("vmip-raw", tcp_mbps=[200.0, 500.0, 225.0], rtt_ms=[0.8, 0.5, 0.9],
                      details={"summary": "raw driver"}),
        SystemOutcome("wireguard-go", tcp_mbps=[900.0, 800.0, 1000.0], rtt_ms=[0.2, 0.3, 0.25]),
        SystemOutcome("openvpn", status="skipped", reason="not installed: openvpn",
                      install="apt-get install openvpn openssl"),
        SystemOutcome("strongswan-libipsec", status="failed", reason="setup: charon exited 1"),
        SystemOutcome("underlay", tcp_mbps=[20000.0], rtt_ms=[0.05],
                      errors=["round 2 tcp: iperf3 -c x: no end"]),
    ]


def test_report_shape_medians_and_ratios():
    report = json.loads(json.dumps(build_report(sample_outcomes(), {"rounds": 3})))
    systems = report["systems"]
    assert list(systems) == ["vmip", "vmip-raw", "wireguard-go", "openvpn",
                             "strongswan-libipsec", "underlay"]
    vmip, wg = systems["vmip"], systems["wireguard-go"]
    assert (vmip["tcp_mbps"], vmip["rtt_ms"]) == (450.0, 0.5)
    assert (vmip["tcp_mbps_min"], vmip["tcp_mbps_max"]) == (400.0, 500.0)
    assert (vmip["rtt_ms_min"], vmip["rtt_ms_max"]) == (0.4, 0.6)
    assert vmip["tcp_ratio_to_vmip"] == 1.0
    assert wg["tcp_mbps"] == 900.0 and wg["tcp_ratio_to_vmip"] == 2.0
    assert wg["rtt_ms"] == 0.25 and wg["rtt_ratio_to_vmip"] == 0.5
    assert vmip["repetitions"] == {"tcp": 3, "rtt": 3}
    skipped = systems["openvpn"]
    assert skipped["status"] == "skipped" and skipped["tcp_mbps"] is None
    assert skipped["rtt_ms"] is None and skipped["install"].startswith("apt-get install")
    assert systems["strongswan-libipsec"]["status"] == "failed"
    assert systems["underlay"]["errors"] == ["round 2 tcp: iperf3 -c x: no end"]
    assert report["comparison"]["vmip_tcp_over_wireguard_go"] == 0.5
    assert report["comparison"]["vmip_rtt_minus_underlay_ms"] == pytest.approx(0.45)
    assert report["run"] == {"rounds": 3}


def test_report_without_vmip_has_no_ratios():
    report = build_report([SystemOutcome("underlay", tcp_mbps=[1.0], rtt_ms=[1.0])], {})
    assert report["systems"]["underlay"]["tcp_ratio_to_vmip"] is None
    assert report["comparison"] == {"vmip_tcp_over_wireguard_go": None,
                                    "vmip_rtt_minus_underlay_ms": None}


def test_raw_over_udp_is_taken_round_by_round():
    report = build_report(sample_outcomes(), {})
    # Per round: 200/400, 500/500, 225/450 and 0.8/0.4, 0.5/0.5, 0.9/0.6.
    assert report["comparison"]["vmip_raw_over_udp"] == {
        "tcp_mbps": {"min": 0.5, "median": 0.5, "max": 1.0},
        "rtt_ms": {"min": 1.0, "median": pytest.approx(1.5), "max": 2.0}}
    assert "vmip-raw / vmip TCP throughput, same round: 0.50× (min 0.50×, max 1.00×)" in \
        comparison_lines(report)
    # A failed repetition on one side: the rounds no longer pair up.
    outcomes = sample_outcomes()
    outcomes[1].tcp_mbps.pop()
    assert build_report(outcomes, {})["comparison"]["vmip_raw_over_udp"]["tcp_mbps"] is None


def test_system_without_any_figure_fails():
    outcome = SystemOutcome("vmip", tcp_mbps=[500.0], errors=["round 1 rtt: ping: no replies"])
    outcome.settle()
    assert outcome.status == "failed" and "no replies" in outcome.reason
    measured = SystemOutcome("underlay", tcp_mbps=[1.0], rtt_ms=[1.0])
    measured.settle()
    assert measured.status == "ok"


def test_plain_table_names_every_system_and_the_skip_reason():
    text = render_plain(build_report(sample_outcomes(), {}))
    for name in SYSTEM_NAMES:
        assert name in text
    assert ("skipped: not installed: openvpn (install: apt-get install openvpn openssl; "
            "every peer: tools/install-deps --bench)") in text
    assert "450" in text and "2.00×" in text
    assert any(line.startswith("vmip: udp driver; vmip 0.1.0")
               for line in note_lines(build_report(sample_outcomes(), {})))


# -- options and missing software --------------------------------------------------


def test_systems_option():
    assert cli.parse_systems("vmip, underlay,vmip") == ["vmip", "underlay"]
    with pytest.raises(Exception, match="unknown system"):
        cli.parse_systems("vmip,ipsec-tools")
    args = cli.build_parser().parse_args([])
    assert args.systems == list(SYSTEM_NAMES)
    # The reference relay runs only when asked for.
    assert "python-floor" in EXTRA_SYSTEM_NAMES and "python-floor" not in args.systems
    assert cli.parse_systems("vmip,python-floor") == ["vmip", "python-floor"]


def test_vmip_over_the_python_floor_is_taken_round_by_round():
    outcomes = [SystemOutcome("vmip", tcp_mbps=[400.0, 600.0], rtt_ms=[0.9, 1.0]),
                SystemOutcome("python-floor", tcp_mbps=[800.0, 600.0], rtt_ms=[0.45, 0.4]),
                SystemOutcome("underlay", tcp_mbps=[9000.0, 9000.0], rtt_ms=[0.05, 0.05])]
    comparison = build_report(outcomes, {})["comparison"]
    assert comparison["vmip_over_python_floor"] == {
        "tcp_mbps": {"min": 0.5, "median": 0.75, "max": 1.0},
        "rtt_ms": {"min": 2.0, "median": 2.25, "max": 2.5}}
    assert comparison["python_floor_rtt_minus_underlay_ms"] == pytest.approx(0.375)
    lines = comparison_lines(build_report(outcomes, {}))
    assert "vmip / python-floor RTT, same round: 2.00–2.25–2.50×" in lines
    assert any(line.startswith("python-floor RTT − underlay RTT: +0.375 ms") for line in lines)
    assert "vmip_over_python_floor" not in build_report(outcomes[:1], {})["comparison"]


def test_quick_defaults_and_overrides():
    options = cli.options_from(cli.build_parser().parse_args(["--quick", "--rounds", "1"]))
    assert options.quick and options.rounds == 1 and options.seconds == cli.QUICK[0]
    full = cli.options_from(cli.build_parser().parse_args([]))
    assert (full.seconds, full.rounds, full.ping_count) == cli.FULL
    with pytest.raises(SystemExit):
        cli.main(["--seconds", "0"])


def test_quick_run_fits_in_five_minutes():
    seconds, rounds, pings = cli.QUICK
    # Per test: iperf3 itself, the pings, and about 2 s of process start-up
    # and connection set-up; plus about 30 s to bring the six systems up.
    per_test = seconds + pings * 0.05 + 2
    assert rounds * len(SYSTEM_NAMES) * per_test + 30 < 300


def absent(_program: str) -> None:
    return None


def test_missing_programs_give_reason_and_install_command(tmp_path):
    wg = WireguardGo().missing(which=absent)
    assert "wireguard-go" in wg.reason
    # Every program named, and the package of each (unshare is util-linux's).
    assert wg.install == "apt-get install wireguard-go wireguard-tools util-linux"
    only_wg = WireguardGo().missing(which=lambda p: None if p == "wg" else f"/usr/bin/{p}")
    assert only_wg.reason == "not installed: wg"
    assert only_wg.install == "apt-get install wireguard-tools"
    ovpn = OpenVpn("tls").missing(which=absent)
    assert "openvpn" in ovpn.reason and "apt-get install openvpn" in ovpn.install
    swan = StrongswanLibipsec(plugin_dir=tmp_path).missing(which=absent)
    assert "kernel-libipsec" in swan.reason and "kdf" in swan.reason
    assert "libcharon-extra-plugins" in swan.install
    assert WireguardGo().missing(which=lambda program: f"/usr/bin/{program}") is None


# -- the extra iperf3 tests: --bidir, --streams N ------------------------------------


def test_bidir_and_streams_options_make_their_cases():
    from netbench.runner import extra_cases, iperf3_client_command

    options = cli.options_from(cli.build_parser().parse_args(
        ["--quick", "--bidir", "--streams", "4", "--cpu"]))
    assert options.bidir and options.streams == 4 and options.cpu
    cases = extra_cases(options)
    assert [(case.key, case.args) for case in cases] == [("bidir", ("--bidir",)),
                                                         ("streams4", ("-P", "4"))]
    command = iperf3_client_command("2001:db8:a1::2", 4.0, cases[1].args)
    assert command[:3] == ["iperf3", "-c", "2001:db8:a1::2"] and command[-2:] == ["-P", "4"]
    assert "-J" in command
    plain = cli.options_from(cli.build_parser().parse_args([]))
    assert extra_cases(plain) == [] and not plain.cpu
    # One stream is the single-stream test every run has: no extra case.
    assert extra_cases(cli.options_from(cli.build_parser().parse_args(["--streams", "1"]))) == []
    for bad in (["--streams", "0"], ["--streams", "129"], ["--streams", "four"]):
        with pytest.raises(SystemExit):
            cli.main(bad)


def bidir_document(forward_bps: float, reverse_bps: float, streams: int = 1) -> dict:
    document = iperf_document(forward_bps, forward_bps)
    document["start"]["test_start"]["num_streams"] = streams
    document["end"]["sum_sent_bidir_reverse"] = {"seconds": 4.0, "bits_per_second": reverse_bps,
                                                 "sender": False}
    document["end"]["sum_received_bidir_reverse"] = {"seconds": 4.0,
                                                     "bits_per_second": reverse_bps,
                                                     "sender": False}
    return document


def test_iperf3_bidir_sums_both_directions():
    result = parse_iperf3_json(json.dumps(bidir_document(300e6, 100e6, streams=2)))
    assert result.receiver_mbps == 300.0 and result.reverse_receiver_mbps == 100.0
    assert result.total_mbps == 400.0 and result.streams == 2
    one_way = parse_iperf3_json(json.dumps(iperf_document(250e6, 250e6)))
    assert one_way.reverse_receiver_mbps is None and one_way.total_mbps == 250.0
    assert one_way.streams == 1
    broken = bidir_document(300e6, 100e6)
    broken["end"]["sum_received_bidir_reverse"]["bits_per_second"] = "fast"
    with pytest.raises(ParseError, match="bidir_reverse"):
        parse_iperf3_json(json.dumps(broken))


def test_iperf3_from_iperf3_312_bidir_and_parallel_streams():
    # The layout iperf3 3.12 prints for -c ::1 -t 1 -b 50M --bidir -P 2 -J (abridged).
    text = json.dumps({
        "start": {"test_start": {"protocol": "TCP", "num_streams": 2, "reverse": 0}},
        "end": {"streams": [],
                "sum_sent": {"seconds": 1.0, "bits_per_second": 100653230.67, "retransmits": 0,
                             "sender": True},
                "sum_received": {"seconds": 1.0, "bits_per_second": 100636426.07,
                                 "sender": True},
                "sum_sent_bidir_reverse": {"seconds": 1.0, "bits_per_second": 100653230.67,
                                           "retransmits": 0, "sender": False},
                "sum_received_bidir_reverse": {"seconds": 1.0, "bits_per_second": 100636426.07,
                                               "sender": False},
                "cpu_utilization_percent": {}}})
    result = parse_iperf3_json(text)
    assert result.streams == 2
    assert result.total_mbps == pytest.approx(201.27, abs=0.01)


@given(streams=st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()))
def test_iperf3_stream_count_never_breaks_the_parse(streams):
    document = iperf_document(1e6, 1e6)
    document["start"]["test_start"]["num_streams"] = streams
    result = parse_iperf3_json(json.dumps(document))
    assert 1 <= result.streams <= 128


def case_outcomes() -> list[SystemOutcome]:
    outcomes = sample_outcomes()
    outcomes[0].cases = {"bidir": [200.0, 300.0, 250.0], "streams4": [400.0, 500.0, 450.0]}
    outcomes[2].cases = {"bidir": [400.0, 300.0, 750.0], "streams4": [800.0, 1000.0]}
    outcomes[2].case_errors = {"streams4": ["round 3: iperf3 -c x: no end"]}
    return outcomes


def test_cases_are_reported_as_same_round_ratios():
    run = {"cases": {"bidir": {"label": "TCP both ways (--bidir), sum"},
                     "streams4": {"label": "4 TCP streams (-P 4), sum"}}}
    report = json.loads(json.dumps(build_report(case_outcomes(), run)))
    wg = report["systems"]["wireguard-go"]["cases"]
    assert wg["bidir"]["mbps"] == 400.0 and wg["bidir"]["mbps_samples"] == [400.0, 300.0, 750.0]
    # Round by round: 400/200, 300/300, 750/250; not the ratio of the medians (400/250).
    assert wg["bidir"]["ratio_to_vmip"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert report["systems"]["vmip"]["cases"]["bidir"]["ratio_to_vmip"] == \
        {"min": 1.0, "median": 1.0, "max": 1.0}
    # A failed repetition: the rounds no longer pair, no ratio rather than a wrong one.
    assert wg["streams4"]["ratio_to_vmip"] is None
    assert wg["streams4"]["errors"] == ["round 3: iperf3 -c x: no end"]
    assert report["systems"]["openvpn"]["cases"]["bidir"]["mbps"] is None
    assert report["comparison"]["cases"]["bidir"]["vmip_over_wireguard_go"] == {
        "min": pytest.approx(1 / 3), "median": 0.5, "max": 1.0}
    lines = comparison_lines(report)
    assert "bidir: TCP both ways (--bidir), sum; Mbit/s median (min–max), × vmip same round " \
           "min–median–max" in lines
    assert "  wireguard-go: 400 (300–750), 1.00–2.00–3.00×" in lines
    assert "  vmip / wireguard-go, same round: 0.33–0.50–1.00×" in lines
    assert "  openvpn: –" in lines
    assert "streams4" in render_plain(report)


def test_no_cases_no_case_keys():
    report = build_report(sample_outcomes(), {})
    assert "cases" not in report["comparison"]
    assert all("cases" not in entry for entry in report["systems"].values())


# -- --cpu: /proc parsers and one window's figures ------------------------------------


PROC_STAT = """cpu  1000 0 500 8000 100 0 200 0 0 0
cpu0 500 0 250 4000 50 0 100 0 0 0
cpu1 500 0 250 4000 50 0 100 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_proc_stat_parser():
    from netbench.cpu import CpuTimes, parse_proc_stat

    cpus = parse_proc_stat(PROC_STAT)
    assert set(cpus) == {"cpu", "cpu0", "cpu1"}
    assert cpus["cpu0"] == CpuTimes(idle=4050, busy=850, irq=100)
    with pytest.raises(ParseError):
        parse_proc_stat("cpu0 1 2 x 4\n")
    with pytest.raises(ParseError):
        parse_proc_stat("intr 1 2 3\n")


def test_pid_stat_parser_takes_comm_with_spaces_and_parentheses():
    from netbench.cpu import parse_pid_stat

    # state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    fields = "S 1 2 3 0 -1 4194560 10 0 0 0 150 25 0 0 20 0 1"
    assert parse_pid_stat(f"4242 (a (b) c) {fields}") == ("a (b) c", 175)
    with pytest.raises(ParseError):
        parse_pid_stat("4242 (x) S 1 2")
    with pytest.raises(ParseError):
        parse_pid_stat("no parentheses")


@given(st.text(max_size=300))
def test_proc_parsers_raise_only_parse_error(text):
    from netbench.cpu import parse_pid_stat, parse_proc_stat

    for parser in (parse_proc_stat, parse_pid_stat):
        try:
            parser(text)
        except ParseError:
            pass


def test_process_labels_name_vmip_nodes_by_their_config():
    from netbench.cpu import process_label

    assert process_label("python3", ["/usr/bin/python3", "-m", "vmip", "run", "-c",
                                     "/tmp/w/vmip-raw-a.toml", "--control-socket", "s"],
                         "a") == "vmip-raw-a"
    assert process_label("wireguard-go", ["wireguard-go", "-f", "wg0"], "b") == "wireguard-go@b"


def test_cpu_window_figures():
    from netbench.cpu import TICKS, CpuTimes, _Snapshot, cpu_line, summarize_window

    # 2 s on 2 CPUs: cpu0 fully busy, cpu1 half idle; vmip-a 1 s of CPU, vmip-b 0.5 s,
    # iperf3 0.2 s; a process that left in between is not counted.
    before = _Snapshot(10.0, {"cpu0": CpuTimes(100, 100, 10), "cpu1": CpuTimes(100, 100, 0)},
                       {1: ("vmip-a", 0), 2: ("vmip-b", 0), 3: ("gone@a", 0)})
    after = _Snapshot(12.0, {"cpu0": CpuTimes(100, 100 + 2 * TICKS, 10 + TICKS // 2),
                             "cpu1": CpuTimes(100 + TICKS, 100 + TICKS, 0)},
                      {1: ("vmip-a", TICKS), 2: ("vmip-b", TICKS // 2)})
    figures = summarize_window(before, after, iperf3_ticks=TICKS // 5)
    assert figures["cpus"] == 2 and figures["wall_s"] == 2.0
    assert figures["busy_pct_per_cpu"] == {"cpu0": 100.0, "cpu1": 50.0}
    assert figures["idle_cores"] == 0.5 and figures["busy_pct"] == 150.0
    assert figures["processes_pct"] == {"vmip-a": 50.0, "vmip-b": 25.0}
    assert figures["iperf3_pct"] == 10.0
    assert figures["irq_pct"] == 25.0
    assert figures["rest_pct"] == 65.0
    assert cpu_line(figures) == ("idle 0.50 of 2 cores, vmip-a 50%, vmip-b 25%, iperf3 10%, "
                                 "rest 65% (of it irq+softirq 25%)")


def test_cpu_probe_reads_the_namespaces_processes(tmp_path):
    import os

    from netbench.cpu import CpuProbe

    probe = CpuProbe(lambda: {os.getpid(): "a"})
    probe.begin()
    sum(range(2_000_000))   # some CPU of our own
    figures = probe.end()
    assert figures["cpus"] == os.cpu_count()
    (label, used), = figures["processes_pct"].items()
    assert label.endswith("@a") and used >= 0
    assert figures["idle_cores"] is not None and 0 <= figures["idle_cores"] <= figures["cpus"]


# -- tools/install-deps: arguments (no install) ----------------------------------------

INSTALL_DEPS = Path(__file__).resolve().parents[2] / "tools" / "install-deps"


def install_deps(*args: str):
    import subprocess

    return subprocess.run(["bash", str(INSTALL_DEPS), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def dry_run_packages(*args: str) -> list[str]:
    result = install_deps("--dry-run", *args)
    assert result.returncode == 0, result.stderr
    line, = [line for line in result.stdout.splitlines() if line.startswith("packages: ")]
    return line.removeprefix("packages: ").split()


def test_install_deps_bench_adds_every_peer_package_and_nothing_else_changes():
    from netbench.systems import PACKAGE_OF, SWAN_PACKAGES

    normal, bench = dry_run_packages(), dry_run_packages("--bench")
    assert "wireguard-go" not in normal and "openvpn" not in normal
    assert bench[:len(normal)] == normal
    # Whatever tools/bench/run tells a user to install, --bench installs.
    assert set(PACKAGE_OF.values()) | set(SWAN_PACKAGES.split()) | {"iperf3", "iputils-ping",
                                                                     "iproute2"} <= set(bench)
    assert install_deps("--bench", "--dry-run").stdout == install_deps("--dry-run",
                                                                       "--bench").stdout


def test_install_deps_dry_run_says_what_is_missing_and_installs_nothing():
    result = install_deps("--dry-run", "--bench")
    assert result.returncode == 0
    missing_line, = [line for line in result.stdout.splitlines() if line.startswith("missing: ")]
    if missing_line != "missing: none":
        assert "would run: apt-get update && apt-get install" in result.stdout
    else:
        assert "apt-get install" not in result.stdout   # idempotent: nothing to do


@pytest.mark.parametrize("args", [["--bnech"], ["--bench", "extra"], ["-x"]])
def test_install_deps_refuses_unknown_arguments(args):
    result = install_deps(*args, "--dry-run")
    assert result.returncode == 2
    assert f"unknown argument '{args[-1]}'" in result.stderr
    assert "usage: tools/install-deps [--bench]" in result.stderr


def test_install_deps_help():
    result = install_deps("--help")
    assert result.returncode == 0 and "--bench" in result.stderr
