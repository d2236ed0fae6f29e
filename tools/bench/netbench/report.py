"""The result of a run: its JSON document and its table (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from netbench.stats import Summary, difference, paired_ratios, ratio, summarize
from netbench.systems import INSTALL_ALL

#: The reference every ratio is taken against.
REFERENCE = "vmip"

Status = Literal["ok", "skipped", "failed"]


@dataclass
class SystemOutcome:
    """Everything one system produced in a run."""

    name: str
    status: Status = "ok"
    #: Why it was skipped or failed.
    reason: str | None = None
    #: For a skipped system: the command that installs what is missing.
    install: str | None = None
    #: One figure per repetition that worked.
    tcp_mbps: list[float] = field(default_factory=list)
    #: Median RTT of each repetition's pings.
    rtt_ms: list[float] = field(default_factory=list)
    #: Failed repetitions, one line each.
    errors: list[str] = field(default_factory=list)
    #: Version, mode, addresses: whatever tells what was measured.
    details: dict[str, Any] = field(default_factory=dict)
    #: The extra iperf3 tests (``bidir``, ``streams4``): Mbit/s per round,
    #: both directions or all streams summed.
    cases: dict[str, list[float]] = field(default_factory=dict)
    #: Failed repetitions of those, one line each per case.
    case_errors: dict[str, list[str]] = field(default_factory=dict)

    def settle(self) -> None:
        """A system that ran but produced no figure at all has failed."""
        if self.status == "ok" and (not self.tcp_mbps or not self.rtt_ms):
            self.status = "failed"
            self.reason = self.reason or ("no successful repetition: "
                                          + ("; ".join(self.errors[-3:]) or "nothing measured"))


def _median(summary: Summary | None) -> float | None:
    return None if summary is None else summary.median


def _case_entry(samples: list[float], reference: SystemOutcome | None, key: str,
                errors: list[str]) -> dict[str, Any]:
    summary = summarize(samples)
    entry: dict[str, Any] = {
        "mbps": _median(summary),
        "mbps_min": None if summary is None else summary.minimum,
        "mbps_max": None if summary is None else summary.maximum,
        "mbps_samples": list(samples),
        # this system / vmip, round by round: both measured under that round's load.
        "ratio_to_vmip": None if reference is None else _summary_dict(
            paired_ratios(samples, reference.cases.get(key, []))),
    }
    if errors:
        entry["errors"] = list(errors)
    return entry


def _system_entry(outcome: SystemOutcome, reference_tcp: float | None,
                  reference_rtt: float | None, reference: SystemOutcome | None = None,
                  case_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    tcp = summarize(outcome.tcp_mbps)
    rtt = summarize(outcome.rtt_ms)
    entry: dict[str, Any] = {
        "status": outcome.status,
        "tcp_mbps": _median(tcp),
        "rtt_ms": _median(rtt),
        "tcp_mbps_min": None if tcp is None else tcp.minimum,
        "tcp_mbps_max": None if tcp is None else tcp.maximum,
        "rtt_ms_min": None if rtt is None else rtt.minimum,
        "rtt_ms_max": None if rtt is None else rtt.maximum,
        "repetitions": {"tcp": len(outcome.tcp_mbps), "rtt": len(outcome.rtt_ms)},
        "tcp_mbps_samples": list(outcome.tcp_mbps),
        "rtt_ms_samples": list(outcome.rtt_ms),
        "tcp_ratio_to_vmip": ratio(_median(tcp), reference_tcp),
        "rtt_ratio_to_vmip": ratio(_median(rtt), reference_rtt),
        "details": dict(outcome.details),
    }
    if case_keys:
        entry["cases"] = {key: _case_entry(outcome.cases.get(key, []), reference, key,
                                           outcome.case_errors.get(key, []))
                          for key in case_keys}
    if outcome.reason:
        entry["reason"] = outcome.reason
    if outcome.install:
        entry["install"] = outcome.install
    if outcome.errors:
        entry["errors"] = list(outcome.errors)
    return entry


def build_report(outcomes: list[SystemOutcome], run: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` document: ``{"systems": {name: {"tcp_mbps", "rtt_ms", ...}}, ...}``.

    ``tcp_mbps`` and ``rtt_ms`` are medians over the repetitions (None for a
    system that was skipped or failed); ratios are to vmip's medians.
    """
    by_name = {outcome.name: outcome for outcome in outcomes}
    reference = by_name.get(REFERENCE)
    reference_tcp = _median(summarize(reference.tcp_mbps)) if reference else None
    reference_rtt = _median(summarize(reference.rtt_ms)) if reference else None
    case_keys = tuple(dict.fromkeys(key for outcome in outcomes for key in outcome.cases)) \
        or tuple(run.get("cases", {}))
    systems = {outcome.name: _system_entry(outcome, reference_tcp, reference_rtt, reference,
                                           case_keys)
               for outcome in outcomes}

    def median_of(name: str, metric: str) -> float | None:
        entry = systems.get(name)
        return None if entry is None else entry[metric]

    comparison: dict[str, Any] = {
        # The targets (docs/design.md §12): vmip >= 1.0x wireguard-go, RTT <= underlay + 0.3 ms.
        "vmip_tcp_over_wireguard_go": ratio(median_of("vmip", "tcp_mbps"),
                                            median_of("wireguard-go", "tcp_mbps")),
        "vmip_rtt_minus_underlay_ms": difference(median_of("vmip", "rtt_ms"),
                                                 median_of("underlay", "rtt_ms")),
    }
    floor = by_name.get("python-floor")
    if floor is not None and reference is not None:
        # What vmip's own code adds to the least Python that tunnels, round by
        # round (docs/benchmarks.md, "The Python floor").
        comparison["vmip_over_python_floor"] = {
            metric: _summary_dict(paired_ratios(getattr(reference, metric), getattr(floor, metric)))
            for metric in ("tcp_mbps", "rtt_ms")}
        comparison["python_floor_rtt_minus_underlay_ms"] = difference(
            median_of("python-floor", "rtt_ms"), median_of("underlay", "rtt_ms"))
    raw = by_name.get("vmip-raw")
    if raw is not None and reference is not None:
        # raw / udp round by round (docs/benchmarks.md, "vmip on the raw driver").
        comparison["vmip_raw_over_udp"] = {
            metric: _summary_dict(paired_ratios(getattr(raw, metric), getattr(reference, metric)))
            for metric in ("tcp_mbps", "rtt_ms")}
    wireguard = by_name.get("wireguard-go")
    if case_keys:
        # Per extra test: vmip / wireguard-go round by round (the target's direction).
        comparison["cases"] = {
            key: {"vmip_over_wireguard_go": None if reference is None or wireguard is None
                  else _summary_dict(paired_ratios(reference.cases.get(key, []),
                                                   wireguard.cases.get(key, [])))}
            for key in case_keys}
    return {"systems": systems, "comparison": comparison, "run": dict(run)}


def _summary_dict(summary: Summary | None) -> dict[str, float] | None:
    if summary is None:
        return None
    return {"min": summary.minimum, "median": summary.median, "max": summary.maximum}


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


TABLE_HEADER = ["system", "TCP Mbit/s", "min–max", "× vmip", "RTT ms", "min–max", "× vmip"]


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row of text cells per system, in the report's order (header excluded)."""
    rows: list[list[str]] = []
    for name, entry in report["systems"].items():
        tcp, rtt = entry["tcp_mbps"], entry["rtt_ms"]
        rows.append([
            name,
            _number(tcp, 0),
            "" if tcp is None else
            f"{_number(entry['tcp_mbps_min'], 0)}–{_number(entry['tcp_mbps_max'], 0)}",
            _ratio_text(entry["tcp_ratio_to_vmip"]),
            _number(rtt, 3),
            "" if rtt is None else
            f"{_number(entry['rtt_ms_min'], 3)}–{_number(entry['rtt_ms_max'], 3)}",
            _ratio_text(entry["rtt_ratio_to_vmip"]),
        ])
    return rows


def note_lines(report: dict[str, Any]) -> list[str]:
    """What each system was (or why it has no figures), one line each."""
    lines = []
    for name, entry in report["systems"].items():
        if entry["status"] != "ok":
            note = f"{entry['status']}: {entry.get('reason', '')}"
            if entry.get("install"):
                note += f" (install: {entry['install']}; every peer: {INSTALL_ALL})"
        else:
            note = str(entry["details"].get("summary", ""))
            version = entry["details"].get("version")
            if version:
                note += f"; {version}"
            if entry.get("errors"):
                note += f"; {len(entry['errors'])} failed repetition(s): {entry['errors'][0]}"
        lines.append(f"{name}: {note}")
    return lines


def comparison_lines(report: dict[str, Any]) -> list[str]:
    comparison = report["comparison"]
    lines = []
    tcp_ratio = comparison["vmip_tcp_over_wireguard_go"]
    if tcp_ratio is not None:
        lines.append(f"vmip / wireguard-go TCP throughput: {tcp_ratio:.2f}× (target ≥ 1.00×)")
    rtt_extra = comparison["vmip_rtt_minus_underlay_ms"]
    if rtt_extra is not None:
        lines.append(f"vmip RTT − underlay RTT: {rtt_extra:+.3f} ms (target ≤ +0.300 ms)")
    for metric, what in (("tcp_mbps", "TCP throughput"), ("rtt_ms", "RTT")):
        paired = (comparison.get("vmip_raw_over_udp") or {}).get(metric)
        if paired is not None:
            lines.append(f"vmip-raw / vmip {what}, same round: {paired['median']:.2f}× "
                         f"(min {paired['min']:.2f}×, max {paired['max']:.2f}×)")
    for metric, what in (("tcp_mbps", "TCP throughput"), ("rtt_ms", "RTT")):
        paired = (comparison.get("vmip_over_python_floor") or {}).get(metric)
        if paired is not None:
            lines.append(f"vmip / python-floor {what}, same round: {_range_text(paired)}")
    floor_extra = comparison.get("python_floor_rtt_minus_underlay_ms")
    if floor_extra is not None:
        lines.append(f"python-floor RTT − underlay RTT: {floor_extra:+.3f} ms "
                     f"(the least any Python tunnel pays here)")
    lines += case_lines(report)
    return lines


def _range_text(summary: dict[str, float] | None) -> str:
    if summary is None:
        return "–"
    return f"{summary['min']:.2f}–{summary['median']:.2f}–{summary['max']:.2f}×"


def case_lines(report: dict[str, Any]) -> list[str]:
    """The extra iperf3 tests: per system the median and its same-round ratio to vmip."""
    lines = []
    for key, case in (report["comparison"].get("cases") or {}).items():
        label = report["run"].get("cases", {}).get(key, {}).get("label", key)
        lines.append(f"{key}: {label}; Mbit/s median (min–max), × vmip same round min–median–max")
        for name, entry in report["systems"].items():
            figures = (entry.get("cases") or {}).get(key)
            if figures is None or figures["mbps"] is None:
                lines.append(f"  {name}: –")
                continue
            lines.append(f"  {name}: {figures['mbps']:.0f} ({figures['mbps_min']:.0f}–"
                         f"{figures['mbps_max']:.0f}), {_range_text(figures['ratio_to_vmip'])}")
        ratio_vw = case.get("vmip_over_wireguard_go")
        if ratio_vw is not None:
            lines.append(f"  vmip / wireguard-go, same round: {_range_text(ratio_vw)}")
    return lines


def render_plain(report: dict[str, Any]) -> str:
    rows = [TABLE_HEADER] + table_rows(report)
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines + [""] + note_lines(report) + [""] + comparison_lines(report))
