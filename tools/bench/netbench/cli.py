"""Command line of ``tools/bench/run``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from netbench.errors import BenchError
from netbench.lab import cleanup_leftovers
from netbench.report import TABLE_HEADER, comparison_lines, note_lines, render_plain, table_rows
from netbench.runner import Options, required_tools_missing, run_benchmark
from netbench.systems import EXTRA_SYSTEM_NAMES, OPENVPN_MODES, SYSTEM_NAMES

#: (seconds per iperf3 test, rounds, pings per round)
QUICK = (4.0, 5, 20)
FULL = (10.0, 5, 100)

DESCRIPTION = """\
Single-stream TCP throughput (iperf3) and ping RTT through vmip, wireguard-go,
OpenVPN, strongSwan with kernel-libipsec and the bare underlay, all between two
network namespaces of their own (no link to the host), tunnels at MTU 1400.
Repetitions are interleaved round-robin; the table shows the median, the
min-max over rounds and the ratio to vmip."""

EPILOG = """\
examples:
  tools/bench/run --quick
  tools/bench/run --systems vmip,underlay --seconds 3 --rounds 2 --json /tmp/b.json
  tools/bench/run --quick --bidir --streams 4 --cpu
  tools/bench/run --cleanup          # remove namespaces an interrupted run left

needs root (namespaces).  Exit status: 0 when every system that was not skipped
produced figures, 1 when one failed, 2 on usage errors, 130 when interrupted."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C so the finally blocks tear down."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parse_systems(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = SYSTEM_NAMES + EXTRA_SYSTEM_NAMES
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown system(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(known)}")
    return list(dict.fromkeys(names))  # keep order, drop repeats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/bench/run", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"short run: {QUICK[0]:g} s per test, {QUICK[1]} rounds, "
                             f"{QUICK[2]} pings (under 5 minutes); default "
                             f"{FULL[0]:g} s, {FULL[1]} rounds, {FULL[2]} pings")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the results here")
    parser.add_argument("--systems", type=parse_systems, default=list(SYSTEM_NAMES),
                        help=f"comma-separated subset of {','.join(SYSTEM_NAMES)} (the "
                             f"default: all of them); also {','.join(EXTRA_SYSTEM_NAMES)}, "
                             f"the least Python that tunnels, as a reference for vmip's "
                             f"own cost per crossing")
    parser.add_argument("--seconds", type=float, help="iperf3 duration of each test")
    parser.add_argument("--rounds", type=int, help="repetitions per system")
    parser.add_argument("--ping-count", type=int, help="pings per repetition (0.05 s apart)")
    parser.add_argument("--ping-interval", type=float, default=0.05, metavar="S",
                        help="seconds between pings (default 0.05; 1 shows an idle tunnel)")
    parser.add_argument("--loaded-ping", action="store_true",
                        help="also ping during each iperf3 test (details.loaded_rtt_ms_samples)")
    parser.add_argument("--bidir", action="store_true",
                        help="also an iperf3 --bidir test per round and system (both directions "
                             "summed; same-round ratios to vmip)")
    parser.add_argument("--streams", type=int, default=1, metavar="N",
                        help="also an iperf3 -P N test per round and system when N > 1 "
                             "(streams summed; same-round ratios to vmip)")
    parser.add_argument("--cpu", action="store_true",
                        help="measure each process's CPU, iperf3's and the machine's idle time "
                             "during every iperf3 test (details.cpu)")
    parser.add_argument("--openvpn-mode", choices=OPENVPN_MODES, default="auto",
                        help="tls (AES-256-GCM), static (AES-256-CBC+SHA256), or auto: tls, "
                             "falling back to static")
    parser.add_argument("--ns-prefix", default="vb", metavar="PREFIX",
                        help="namespaces are PREFIX-a and PREFIX-b (default vb)")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep configs and daemon logs (path printed) for debugging")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove the namespaces and work dirs a previous run left, then exit")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    seconds, rounds, pings = QUICK if args.quick else FULL
    options = Options(
        systems=args.systems,
        seconds=args.seconds if args.seconds is not None else seconds,
        rounds=args.rounds if args.rounds is not None else rounds,
        ping_count=args.ping_count if args.ping_count is not None else pings,
        prefix=args.ns_prefix,
        openvpn_mode=args.openvpn_mode,
        keep_workdir=args.keep_workdir,
        quick=args.quick,
        ping_interval=args.ping_interval,
        loaded_ping=args.loaded_ping,
        bidir=args.bidir,
        streams=args.streams,
        cpu=args.cpu,
    )
    if not 0.5 <= options.seconds <= 600:
        raise ValueError("--seconds must be between 0.5 and 600")
    if not 1 <= options.rounds <= 100:
        raise ValueError("--rounds must be between 1 and 100")
    if not 0.01 <= options.ping_interval <= 5:
        raise ValueError("--ping-interval must be between 0.01 and 5")
    if not 1 <= options.ping_count <= 10000:
        raise ValueError("--ping-count must be between 1 and 10000")
    if not 1 <= options.streams <= 128:
        raise ValueError("--streams must be between 1 and 128 (iperf3 -P)")
    return options


def print_table(report: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(render_plain(report))
        return
    table = Table(title="single-stream TCP and ping RTT, tunnels at MTU 1400")
    for index, heading in enumerate(TABLE_HEADER):
        table.add_column(heading, justify="left" if index == 0 else "right", no_wrap=True)
    for row in table_rows(report):
        table.add_row(*row)
    # Not a terminal (a file, a pipe): wide enough that nothing wraps.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    for line in note_lines(report) + [""] + comparison_lines(report):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        print("tools/bench/run: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if args.cleanup:
        removed = cleanup_leftovers(options.prefix)
        print("removed: " + (", ".join(removed) if removed else "nothing"))
        return 0
    absent = required_tools_missing()
    if absent:
        print(f"tools/bench/run: missing {', '.join(absent)} "
              "(apt-get install iproute2 iperf3 iputils-ping)", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    try:
        report = run_benchmark(options, progress)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"tools/bench/run: interrupted ({exc or 'SIGINT'}); namespaces removed",
              file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"tools/bench/run: {exc}", file=sys.stderr)
        return 1
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    failed = [name for name, entry in report["systems"].items() if entry["status"] == "failed"]
    return 1 if failed else 0
