"""One benchmark run: build the lab, bring every system up, interleave the rounds, tear down."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netbench.cpu import CpuProbe, cpu_line
from netbench.errors import MeasureError, ParseError, SetupError
from netbench.lab import Lab, LabError, netns_pids, wait_for_line
from netbench.parse import IperfResult, parse_iperf3_json, parse_ping
from netbench.report import SystemOutcome, build_report
from netbench.stats import round_order, summarize
from netbench.systems import INSTALL_ALL, TUNNEL_MTU, System, make_system

IPERF_PORT = 5201
PING_INTERVAL = 0.05
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
Progress = Callable[[str], None]


@dataclass
class Options:
    systems: list[str]
    seconds: float
    rounds: int
    ping_count: int
    prefix: str = "vb"
    openvpn_mode: str = "auto"
    keep_workdir: bool = False
    quick: bool = False
    #: Seconds between pings (ping -i); 1 s shows the cost of an idle tunnel.
    ping_interval: float = PING_INTERVAL
    #: Also ping during each iperf3 test (RTT under load).
    loaded_ping: bool = False
    #: Also an ``iperf3 --bidir`` test per round and system.
    bidir: bool = False
    #: Also an ``iperf3 -P N`` test per round and system when N > 1.
    streams: int = 1
    #: Measure the CPU of every process and the machine's idle time per test.
    cpu: bool = False


@dataclass(frozen=True)
class Case:
    """One kind of iperf3 test run for every system each round."""

    key: str                 # JSON key: "bidir", "streams4"
    label: str               # for people
    args: tuple[str, ...]    # added to iperf3 -c


def extra_cases(options: Options) -> list[Case]:
    """The tests besides the single-stream one, in the order they run."""
    cases = []
    if options.bidir:
        cases.append(Case("bidir", "TCP both ways (--bidir), sum", ("--bidir",)))
    if options.streams > 1:
        cases.append(Case(f"streams{options.streams}",
                          f"{options.streams} TCP streams (-P {options.streams}), sum",
                          ("-P", str(options.streams))))
    return cases


def measure_rtt(lab: Lab, target: str, count: int,
                interval: float = PING_INTERVAL) -> tuple[float, int]:
    """Median RTT (ms) of *count* pings from side a, and how many were lost."""
    deadline = int(count * interval + 5)
    try:
        result = lab.run("a", ["ping", "-n", "-c", str(count), "-i", str(interval),
                               "-W", "1", "-w", str(deadline), target], timeout=deadline + 10)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"ping {target} did not end in {deadline + 10} s") from None
    try:
        ping = parse_ping(result.stdout)
    except ParseError as exc:
        raise MeasureError(f"ping {target}: {exc} (exit {result.returncode})") from None
    summary = summarize(ping.rtts_ms)
    assert summary is not None  # parse_ping never returns an empty list
    return summary.median, count - len(ping.rtts_ms)


LOADED_PING_DELAY = 1.0


def loaded_ping_command(target: str, seconds: float, interval: float) -> list[str]:
    """ping during an iperf3 test: from 1 s after its start to 0.5 s before its end."""
    count = max(1, min(1000, int((seconds - LOADED_PING_DELAY - 0.5) / interval)))
    script = f"sleep {LOADED_PING_DELAY:g}; exec ping -n -c {count} -i {interval:g} -W 1 {target}"
    return ["sh", "-c", script]


def iperf3_client_command(target: str, seconds: float, args: tuple[str, ...] = ()) -> list[str]:
    return ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J",
            "--connect-timeout", "3000", *args]


def measure_tcp(lab: Lab, target: str, seconds: float,
                loaded: list[float] | None = None, args: tuple[str, ...] = (),
                cpu: CpuProbe | None = None, cpu_out: list[dict[str, Any]] | None = None,
                ) -> IperfResult:
    """One iperf3 TCP test (single stream unless *args* say otherwise) from
    side a to a one-off server on side b.

    With *loaded* (a list), pings run during the test; their median RTT
    (ms) is appended to it.  With *cpu*, the CPU figures of the test
    (netbench.cpu) are appended to *cpu_out*."""
    # -i 0: no per-second lines to fill the pipe nobody reads after "listening".
    server = lab.spawn("b", ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "-i", "0",
                             "--forceflush"], stdout_pipe=True)
    try:
        if not wait_for_line(server, b"Server listening", 10):
            raise MeasureError("iperf3 server did not start listening in 10 s")
        limit = seconds + 20
        pinger = None
        if loaded is not None:
            pinger = lab.spawn("a", loaded_ping_command(target, seconds, PING_INTERVAL),
                               stdout_pipe=True)
        if cpu is not None:
            cpu.begin()
        try:
            result = lab.run("a", iperf3_client_command(target, seconds, args), timeout=limit)
        except subprocess.TimeoutExpired:
            raise MeasureError(f"iperf3 -c {target} did not end in {limit:.0f} s") from None
        if cpu is not None and cpu_out is not None:
            try:
                server.wait(5)   # -1: it ends after the test; reaped, its CPU counts
            except subprocess.TimeoutExpired:
                pass
            cpu_out.append(cpu.end())
        if pinger is not None and loaded is not None:
            try:
                out, _ = pinger.communicate(timeout=10)
                during = summarize(parse_ping(out.decode(errors="replace")).rtts_ms)
                if during is not None:
                    loaded.append(round(during.median, 4))
            except (ParseError, subprocess.TimeoutExpired):
                pass   # no figure for this round; the throughput stands
            finally:
                lab.stop(pinger, grace=1)
        try:
            return parse_iperf3_json(result.stdout)
        except ParseError as exc:
            raise MeasureError(f"iperf3 -c {target}: {exc}") from None
    finally:
        lab.stop(server, grace=2)


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def run_benchmark(options: Options, progress: Progress) -> dict[str, Any]:
    """Run everything and return the report (see netbench.report.build_report)."""
    started = time.monotonic()
    load_before = os.getloadavg()
    systems: list[System] = [make_system(name, options.openvpn_mode) for name in options.systems]
    outcomes = {system.name: SystemOutcome(system.name) for system in systems}
    active: list[System] = []
    for system in systems:
        missing = system.missing()
        if missing is not None:
            outcome = outcomes[system.name]
            outcome.status = "skipped"
            outcome.reason, outcome.install = missing.reason, missing.install
            progress(f"{system.name}: skipped ({missing.reason}; install: {missing.install}, "
                     f"or every peer at once: {INSTALL_ALL})")
        else:
            active.append(system)

    lab = Lab(options.prefix, keep_workdir=options.keep_workdir)
    orders: list[list[str]] = []
    cases = extra_cases(options)

    def namespace_pids() -> dict[int, str]:
        return {pid: side for side in ("a", "b") for pid in netns_pids(lab.netns[side])}

    probe = CpuProbe(namespace_pids) if options.cpu else None
    try:
        lab.build()
        progress(f"namespaces {lab.netns['a']} and {lab.netns['b']} up, work dir {lab.workdir}")
        ready: list[System] = []
        for system in active:
            begun = time.monotonic()
            try:
                system.setup(lab)
            except (SetupError, LabError, OSError, subprocess.SubprocessError) as exc:
                outcome = outcomes[system.name]
                outcome.status, outcome.reason = "failed", f"setup: {exc}"
                progress(f"{system.name}: setup failed: {exc}")
                continue
            ready.append(system)
            progress(f"{system.name}: up in {time.monotonic() - begun:.1f} s "
                     f"({system.details.get('summary', '')})")
        for round_index in range(options.rounds):
            order = round_order(ready, round_index)
            orders.append([system.name for system in order])
            for system in order:
                outcome = outcomes[system.name]
                line = f"round {round_index + 1}/{options.rounds} {system.name}:"
                try:
                    rtt, lost = measure_rtt(lab, system.target, options.ping_count,
                                            options.ping_interval)
                    # ping prints microseconds; more digits are float noise.
                    outcome.rtt_ms.append(round(rtt, 4))
                    outcome.details["pings_lost"] = outcome.details.get("pings_lost", 0) + lost
                    line += f" rtt {rtt:.3f} ms" + (f" ({lost} lost)" if lost else "")
                except (MeasureError, OSError, subprocess.SubprocessError) as exc:
                    outcome.errors.append(f"round {round_index + 1} rtt: {exc}")
                    line += f" rtt failed ({exc})"
                cpu_lines = []
                try:
                    loaded = outcome.details.setdefault("loaded_rtt_ms_samples", []) \
                        if options.loaded_ping else None
                    cpu_out = outcome.details.setdefault("cpu", {}).setdefault("tcp", []) \
                        if probe is not None else None
                    tcp = measure_tcp(lab, system.target, options.seconds, loaded,
                                      cpu=probe, cpu_out=cpu_out)
                    if loaded:
                        line += f", loaded rtt {loaded[-1]:.3f} ms"
                    outcome.tcp_mbps.append(round(tcp.receiver_mbps, 2))
                    outcome.details.setdefault("tcp_retransmits", []).append(tcp.retransmits)
                    line += f", tcp {tcp.receiver_mbps:.0f} Mbit/s"
                    if cpu_out:
                        cpu_lines.append(f"  cpu during tcp: {cpu_line(cpu_out[-1])}")
                except (MeasureError, OSError, subprocess.SubprocessError) as exc:
                    outcome.errors.append(f"round {round_index + 1} tcp: {exc}")
                    line += f", tcp failed ({exc})"
                for case in cases:
                    try:
                        cpu_out = outcome.details.setdefault("cpu", {}).setdefault(case.key, []) \
                            if probe is not None else None
                        result = measure_tcp(lab, system.target, options.seconds, None,
                                             case.args, cpu=probe, cpu_out=cpu_out)
                        outcome.cases.setdefault(case.key, []).append(round(result.total_mbps, 2))
                        if result.reverse_receiver_mbps is not None:
                            outcome.details.setdefault(f"{case.key}_mbps_each_way", []).append(
                                [round(result.receiver_mbps, 2),
                                 round(result.reverse_receiver_mbps, 2)])
                        line += f", {case.key} {result.total_mbps:.0f} Mbit/s"
                        if cpu_out:
                            cpu_lines.append(f"  cpu during {case.key}: {cpu_line(cpu_out[-1])}")
                    except (MeasureError, OSError, subprocess.SubprocessError) as exc:
                        # A missing sample breaks this case's round pairing only.
                        outcome.case_errors.setdefault(case.key, []).append(
                            f"round {round_index + 1}: {exc}")
                        line += f", {case.key} failed ({exc})"
                progress(line)
                for cpu_text in cpu_lines:
                    progress(cpu_text)
    finally:
        progress("tearing down")
        # A second Ctrl-C must not cut the teardown short and leave namespaces.
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in DEFERRED_SIGNALS}
        try:
            lab.teardown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    for system in systems:
        outcomes[system.name].details.update(system.details)
        outcomes[system.name].settle()
    run = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": options.quick,
        "seconds": options.seconds,
        "rounds": options.rounds,
        "ping_count": options.ping_count,
        "ping_interval_s": options.ping_interval,
        "loaded_ping": options.loaded_ping,
        "cases": {case.key: {"label": case.label, "iperf3_args": list(case.args)}
                  for case in cases},
        "cpu": options.cpu,
        "tunnel_mtu": TUNNEL_MTU,
        "underlay_mtu": 1500,
        "order": orders,
        "duration_s": round(time.monotonic() - started, 1),
        "host": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(value, 2) for value in load_before],
            "loadavg_after": [round(value, 2) for value in os.getloadavg()],
            "python": platform.python_version(),
        },
        "tools": {
            "iperf3": _tool_version(["iperf3", "--version"]),
            "ping": _tool_version(["ping", "-V"]),
        },
        "method": ("per round and system: ping -c N -i 0.05 (median RTT of the round), then one "
                   "single-stream iperf3 TCP test from side a to side b (receiver goodput); "
                   "figures are the median and min-max over rounds; rounds rotate the order"),
    }
    return build_report([outcomes[system.name] for system in systems], run)


def required_tools_missing() -> list[str]:
    return [tool for tool in ("ip", "iperf3", "ping") if shutil.which(tool) is None]
