"""``vmip top``: the live dashboard of a running node, through its control socket."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from vmip.control.client import ControlClient
from vmip.errors import UsageError


def register(subparsers) -> None:
    top = subparsers.add_parser(
        "top", help="live dashboard of a running node (bindings, SAs, remap, links, events)",
        description="Live dashboard of the vmip node of this network namespace (or the one "
                    "listening on --socket): links with their measured round-trip time, loss "
                    "and packet rates, bindings and the "
                    "path of each flow (direct or via the HA), SAs, IRO remap rules and the "
                    "mobility event timeline.  Ctrl-C quits.")
    top.add_argument("--socket", type=Path, metavar="PATH",
                     help="control socket (default: this namespace's node)")
    top.add_argument("--interval", type=float, default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    top.add_argument("--count", type=int, default=0, metavar="N",
                     help="stop after N refreshes (0: run until Ctrl-C)")
    top.set_defaults(func=_top)


def _top(args: argparse.Namespace) -> int:
    from vmip.demo.dashboard import collect, render, render_text

    if not 0.1 <= args.interval <= 60:
        raise UsageError("--interval must be between 0.1 and 60 seconds")
    client = ControlClient(args.socket)
    # Fail early with the client's clear message when no node listens.
    client.call("ping")
    if args.json:
        print(json.dumps(collect(client), indent=2))
        return 0
    if args.once:
        size = shutil.get_terminal_size((80, 24))
        sys.stdout.write(render_text(collect(client), width=size.columns, height=size.lines))
        return 0

    from rich.console import Console
    from rich.live import Live

    console = Console()
    previous = None
    frames = 0
    try:
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                snapshot = collect(client)
                live.update(render(snapshot, previous, width=console.width,
                                   height=console.height), refresh=True)
                previous = snapshot
                frames += 1
                if args.count and frames >= args.count:
                    break
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0
