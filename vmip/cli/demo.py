"""``vmip demo``: the lab, traffic, wifi → lte → wifi handovers, a dashboard, a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmip.errors import UsageError


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="one-command demo: lab, traffic, handovers, live dashboard, report (root)",
        description="Builds the lab (HA, CN, MN; wifi ≈ 10 ms RTT, lte ≈ 60 ms RTT with 1% "
                    "loss behind NAT), starts the nodes, runs a TCP stream, UDP probes and a "
                    "ping from the MN's home address to the CN, takes wifi0 down and up so the "
                    "MN hands over wifi → lte → wifi by itself, shows a live dashboard and ends "
                    "with a report per handover.  Everything is removed at the end, on Ctrl-C "
                    "and on errors.  With --multi-coa the MN registers one binding per link "
                    "(wifi0 and lte0 at once): the interactive traffic (UDP probes on port "
                    "5002, ping) is sent duplicated on every bound path, a second probe "
                    "stream (5003) and the TCP stream on the best link, and the report has a "
                    "row per link change with the duplicated probes lost, lte's background "
                    "loss, the best-link interruption and the bytes the duplicates cost.  "
                    "See docs/demo.md.")
    demo.add_argument("--duration", type=float, default=60.0, metavar="S",
                      help="seconds of traffic and handovers (default 60; one link change "
                           "every 5 s)")
    demo.add_argument("--no-ui", action="store_true", help="no live dashboard, just the report")
    demo.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    demo.add_argument("--pcap-dir", type=Path, metavar="DIR",
                      help="keep the nodes' wire captures and ESP keys (Wireshark rows) here")
    demo.add_argument("--keys", choices=("static", "ike"), default="static",
                      help="how the lab keys its SAs (default static)")
    demo.add_argument("--driver", choices=("udp", "raw"), default="udp",
                      help="how the nodes carry on-wire packets: udp (default, the overlay "
                           "through the lte NAT) or raw (native IPv6, routed)")
    demo.add_argument("--multi-coa", action="store_true",
                      help="one binding per link; interactive traffic duplicated on every "
                           "path, bulk on the best link; the multi-CoA report "
                           "(docs/multi-coa.md)")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from vmip.demo.run import DemoOptions, run_demo

    if not 10 <= args.duration <= 3600:
        raise UsageError("--duration must be between 10 and 3600 seconds")
    options = DemoOptions(duration=args.duration, ui=not args.no_ui, json_path=args.json,
                          pcap_dir=args.pcap_dir, keys=args.keys,
                          driver=args.driver, multi_coa=args.multi_coa)
    try:
        report = run_demo(options)
    except KeyboardInterrupt:
        return 130
    summary = report["summary"]
    return 0 if summary["handovers"] > 0 and summary["tcp_survived_all"] else 1
