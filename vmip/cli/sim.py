"""``vmip sim``: the roaming demo on the in-process simulated network (no root)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmip.errors import UsageError


def register(subparsers) -> None:
    sim = subparsers.add_parser(
        "sim", help="the roaming demo on a simulated network: no root, no namespaces",
        description="Runs the demo's topology (HA, CN, two MNs; wifi ≈ 10 ms RTT, lte ≈ 60 ms "
                    "RTT with 1%% loss behind NAT) as real vmip nodes in one process, joined by "
                    "a simulated underlay on virtual time.  UDP probes flow both ways between "
                    "the MN's home address and the CN while the MN's wifi goes down and up "
                    "every 5 s; the report is the demo's (interruption per direction, packets "
                    "lost, BU → BA, AOT).  With --multi-coa the MN keeps one binding per "
                    "link (wifi0 and lte0 at once) and sends the probes of port 5002 "
                    "duplicated on every bound path and those of port 5003 on the best "
                    "link; the report has a row per link change with each class's losses, "
                    "lte's background loss and the bytes the duplicates cost.  The same "
                    "seed gives the same report, byte for byte.  Runs as any user, on any "
                    "machine.  See docs/sim.md.",
        epilog="examples:\n  vmip sim --duration 60 --seed 7 --json report.json\n"
               "  vmip sim --multi-coa --duration 40",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("--scenario", choices=("roaming",), default="roaming",
                     help="what to simulate (default roaming: wifi → lte → wifi)")
    sim.add_argument("--duration", type=float, default=60.0, metavar="S",
                     help="virtual seconds of traffic and handovers (default 60)")
    sim.add_argument("--seed", type=int, default=1, metavar="N",
                     help="seed of every random draw (loss, jitter); default 1")
    sim.add_argument("--json", type=Path, metavar="FILE",
                     help="write the report as JSON (the same for the same seed)")
    sim.add_argument("--multi-coa", action="store_true",
                     help="one binding per link, probes duplicated (port 5002) and on the "
                          "best link (5003); the multi-CoA report (docs/multi-coa.md)")
    sim.set_defaults(func=_sim)


def _sim(args: argparse.Namespace) -> int:
    from vmip import log
    from vmip.sim.scenario import SimOptions, run_sim

    if args.log_level == "info":
        # Four nodes' info logs would bury the report: ask with --log-level debug.
        log.setup("warning", args.log_format)
    if not 10 <= args.duration <= 3600:
        raise UsageError("--duration must be between 10 and 3600 virtual seconds")
    report = run_sim(SimOptions(scenario=args.scenario, duration=args.duration, seed=args.seed,
                                json_path=args.json, multi_coa=args.multi_coa))
    return 0 if report["summary"]["handovers"] > 0 else 1
