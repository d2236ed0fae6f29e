"""``vmip lab``: the network-namespace lab (docs/design.md §10, docs/lab.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmip.lab.errors import LabUsageError
from vmip.lab.topology import default_plan

NODES = ("ha", "cn", "mn", "mn2")

LAB_DESCRIPTION = """\
Build and drive a lab of network namespaces that has no link to the host's
network: nodes vmip-ha, vmip-cn, vmip-mn and vmip-mn2 joined by the router
vmip-net.  The mobile nodes have two access links, wifi0 (preferred) and
lte0 (its IPv4 behind the router's NAT, 203.0.113.1).  The underlay is
dual-stack with documentation prefixes only; per-node configs are written
to /run/vmip-lab/<node>/<node>.toml.  'lab start' runs a vmip node in each
namespace (static ESP keys, fresh for each lab).  Needs root."""

LAB_EPILOG = """\
examples:
  vmip lab up --json                       build the lab, print its topology
  vmip lab start                           run a vmip node in every namespace
  vmip lab start --driver raw              the same over native IPv6 (raw sockets)
  vmip lab exec mn -- ping -c3 2001:db8:20::2        MN -> CN through vmip0 (ESP)
  vmip lab exec mn -- vmip keys --wireshark
  vmip lab stop                            stop the nodes, keep the lab
  vmip lab exec mn -- ping -c3 -I lte0 2001:db8:20::2
  vmip lab shape mn lte0 --delay 30 --jitter 5 --loss 1 --rate 20
  vmip lab link mn wifi0 down              a handover: wifi gone, lte stays
  vmip lab status
  vmip lab down                            remove everything, also after a crash

addressing plan (node / router side):
  ha  eth0  192.0.2.2/28     2001:db8:10::2/64   (router ha0)
  cn  eth0  192.0.2.18/28    2001:db8:20::2/64   (router cn0)
  mn  wifi0 192.0.2.34/28    2001:db8:31::2/64   (router mn-wifi)
  mn  lte0  198.51.100.2/28  2001:db8:32::2/64   (router mn-lte, NAT)
  mn2 wifi0 192.0.2.50/28    2001:db8:41::2/64   (router mn2-wifi)
  mn2 lte0  198.51.100.18/28 2001:db8:42::2/64   (router mn2-lte, NAT)
  overlay: home prefix 2001:db8:100::/64, HA ::1, MN HoA ::10, MN2 HoA ::20
"""

SHAPE_EPILOG = """\
Directions are seen from the node: "out" shapes what NODE sends on IFACE
(its uplink), "in" what it receives (downlink), "both" (the default) each
way.  Delay and loss apply per direction, so "--delay 20" both ways gives a
40 ms round trip.  Each call replaces the link's profile in that direction;
with no option it removes the shaping.  Emulated in userspace at the router
(NFQUEUE), since this kernel has no netem.

examples:
  vmip lab shape mn lte0 --delay 30 --jitter 5 --loss 1 --rate 20
  vmip lab shape mn wifi0 --direction out --loss 10   10% uplink loss
  vmip lab shape mn lte0                              back to a perfect link
"""


def _print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _console():
    from rich.console import Console

    return Console()


def _cmd_up(args: argparse.Namespace) -> int:
    from vmip.lab.manage import lab_up

    topology = lab_up(keys=args.keys, driver=args.driver)
    if args.json:
        _print_json(topology)
        return 0
    from rich.table import Table

    table = Table(title="vmip lab is up", title_justify="left")
    for column in ("node", "netns", "interface", "underlay", "overlay / CoA"):
        table.add_column(column)
    for name, node in topology["nodes"].items():
        for position, (ifname, addresses) in enumerate(node["links"].items()):
            cells = list(node["overlay_addresses"]) if position == 0 else []
            if ifname in node.get("coa", {}):
                cells.append(f"CoA {node['coa'][ifname]}")
            overlay = "\n".join(cells)
            if node["interfaces"][ifname]["behind_nat"]:
                addresses = [f"{addresses[0]} (NAT)", *addresses[1:]]
            table.add_row(name, node["netns"], ifname, "\n".join(addresses), overlay)
    console = _console()
    console.print(table)
    console.print(f"router: {topology['router']['netns']}, NAT address "
                  f"{topology['router']['nat_address']}; driver {topology['driver']}")
    console.print(f"configs: {topology['lab_dir']}/<node>/<node>.toml")
    return 0


def _nodes_table(title: str, rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("node", "pid", "state", "control socket", "log"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["pid"]) if row["pid"] is not None else "-",
                      row["state"], row["control_socket"], row["log"])
    return table


def _cmd_start(args: argparse.Namespace) -> int:
    from vmip.lab.manage import lab_start

    topology = lab_start(keys=args.keys, timeout=args.timeout, driver=args.driver)
    if args.json:
        _print_json(topology)
        return 0
    rows = [{"name": name, **node} for name, node in topology["nodes"].items()]
    console = _console()
    console.print(_nodes_table("vmip lab nodes", rows))
    console.print("try: vmip lab exec mn -- ping -c3 2001:db8:20::2   "
                  "(then 'vmip lab stop' or 'vmip lab down')")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from vmip.lab.manage import lab_stop

    runs = lab_stop(timeout=args.timeout)
    if args.json:
        _print_json({"nodes": {run.name: run.as_dict() for run in runs}})
        return 0
    stopped = [f"{run.name} ({run.pid}{', killed' if run.state == 'killed' else ''})"
               for run in runs if run.pid is not None]
    print(f"stopped {len(stopped)} vmip nodes: {', '.join(stopped)}" if stopped
          else "no vmip node was running")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from vmip.lab.manage import lab_down

    report = lab_down(keep_files=args.keep_files)
    for warning in report.warnings:
        print(f"vmip lab down: warning: {warning}", file=sys.stderr)
    if report.namespaces:
        print(f"removed {len(report.namespaces)} namespaces ({', '.join(report.namespaces)})"
              + (f" and stopped {len(report.killed_pids)} processes" if report.killed_pids else ""))
    else:
        print("the lab was not up; nothing to remove")
    return 0


def _state_text(state: dict[str, Any]) -> str:
    if not state["exists"]:
        return "[red]missing[/red]"
    if not state["admin_up"]:
        return "[yellow]down[/yellow]"
    operstate = state["operstate"]
    return "[green]up[/green]" if operstate == "UP" else f"[yellow]{operstate.lower()}[/yellow]"


def _profile_text(entry: dict[str, Any]) -> str:
    parts = [f"{entry['direction']}:"]
    if entry["delay_ms"]:
        parts.append(f"delay {entry['delay_ms']:g} ms")
    if entry["jitter_ms"]:
        parts.append(f"jitter {entry['jitter_ms']:g} ms")
    if entry["loss"]:
        parts.append(f"loss {entry['loss'] * 100:g}%")
    if entry["rate_mbit"]:
        parts.append(f"rate {entry['rate_mbit']:g} Mbit/s")
    return " ".join(parts)


def _cmd_status(args: argparse.Namespace) -> int:
    from vmip.lab.manage import lab_status

    status = lab_status()
    if args.json:
        _print_json(status)
        return 0 if status["up"] else 1
    console = _console()
    if not any(status["namespaces"].values()):
        console.print("the lab is down (run 'vmip lab up')")
        return 1
    from rich.table import Table

    shaping: dict[tuple[str, str], list[str]] = {}
    for entry in status["shaping"]:
        shaping.setdefault((entry["node"], entry["ifname"]), []).append(_profile_text(entry))
    table = Table(title=f"vmip lab ({status['lab_dir']})", title_justify="left")
    for column in ("node", "interface", "state", "router side", "addresses", "shaping"):
        table.add_column(column)
    for name, node in status["nodes"].items():
        if not node["exists"]:
            table.add_row(name, "", f"[red]{node['netns']} missing[/red]", "", "", "")
            continue
        for ifname, iface in node["interfaces"].items():
            table.add_row(name, ifname, _state_text(iface["node"]),
                          f"{iface['router_ifname']} {_state_text(iface['router'])}",
                          "\n".join(iface["node"]["addresses"]),
                          "; ".join(shaping.get((name, ifname), [])) or "-")
    console.print(table)
    rows = [{"name": name, "pid": node["pid"],
             "state": "[green]running[/green]" if node["running"] else "stopped",
             "control_socket": node["control_socket"], "log": node["log"]}
            for name, node in status["nodes"].items() if node["exists"]]
    if rows:
        console.print(_nodes_table("vmip nodes ('vmip lab start' runs them)", rows))
    missing = [ns for ns, exists in status["namespaces"].items() if not exists]
    if missing:
        console.print(f"[red]missing namespaces:[/red] {', '.join(missing)} "
                      "(run 'vmip lab up' to repair)")
    return 0 if status["up"] else 1


def _cmd_exec(args: argparse.Namespace) -> int:
    from vmip.lab.manage import check_prerequisites
    from vmip.lab.netns import exec_in

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabUsageError("no command given; write it after '--', "
                            "e.g. vmip lab exec mn -- ping -c3 2001:db8:20::2")
    plan = default_plan()
    netns = plan.router_netns if args.node == "net" else plan.node(args.node).netns
    check_prerequisites()
    sys.stdout.flush()
    sys.stderr.flush()
    exec_in(netns, command)  # does not return: the command replaces this process


def _cmd_link(args: argparse.Namespace) -> int:
    from vmip.lab.manage import set_link_state

    set_link_state(None, args.node, args.iface, args.state == "up")
    return 0


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _percent(text: str) -> float:
    value = _non_negative(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is a percentage: 0 to 100")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _cmd_shape(args: argparse.Namespace) -> int:
    from vmip.lab.manage import check_prerequisites, load_emulation, shape_link

    default_plan().node(args.node).link(args.iface)  # name errors before the root check
    check_prerequisites()
    emulation = load_emulation()
    profile = emulation.LinkProfile(delay_ms=args.delay, jitter_ms=args.jitter,
                                    loss=args.loss / 100.0, rate_mbit=args.rate)
    shape_link(None, args.node, args.iface, args.direction, profile)
    return 0


def _add_keys_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", choices=("static", "ike"), default="static",
                        help="how the nodes' SAs are keyed: static (default; fresh random "
                             "keys in <node>/keys/) or ike (IKEv2 with a fresh PSK; every "
                             "SA negotiated, see docs/ike.md)")


def _add_driver_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--driver", choices=("udp", "raw"), default="udp",
                        help="how the nodes carry on-wire packets: udp (default; the overlay "
                             "over the IPv4 underlay, lte through NAT) or raw (native IPv6, "
                             "routed, no NAT; static keys only; see docs/links.md)")


def register(subparsers: Any) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    lab = subparsers.add_parser("lab", help="the network-namespace lab (as root)",
                                description=LAB_DESCRIPTION, epilog=LAB_EPILOG,
                                formatter_class=formatter)
    lab.set_defaults(func=lambda args: (lab.print_help(), 2)[1])
    commands = lab.add_subparsers(title="lab commands", metavar="COMMAND")

    up = commands.add_parser(
        "up", help="build the lab (idempotent: also repairs it)", formatter_class=formatter,
        description="Create the namespaces, veth links, addresses, routes, NAT and the "
                    "per-node configs.  Running it again on a lab that is up changes "
                    "nothing, or repairs what is missing (a link left down, a lost route).",
        epilog="examples:\n  vmip lab up\n  vmip lab up --json | jq .nodes.mn.coa\n")
    up.add_argument("--json", action="store_true",
                    help="print the topology as JSON (nodes, netns, addresses, CoAs, configs)")
    _add_keys_option(up)
    _add_driver_option(up)
    up.set_defaults(func=_cmd_up)

    start = commands.add_parser(
        "start", help="run a vmip node in every lab namespace (lab up first if needed)",
        formatter_class=formatter,
        description="Bring the lab up if it is not, write the configs (with --keys static: "
                    "static SAs and policies with fresh random keys, unless a node already "
                    "runs), then start 'vmip run -c <node>.toml --pcap-wire <node>/wire.pcap' "
                    "in every namespace, detached, logging to <node>/vmip.log, and wait until "
                    "each answers 'status' on /run/vmip/<netns>.sock.  A node already running "
                    "is left alone.",
        epilog="examples:\n  vmip lab start\n"
               "  vmip lab exec mn -- ping -c3 2001:db8:20::2      MN -> CN, ESP transport\n"
               "  vmip lab exec mn -- ping -c3 2001:db8:100::1     MN -> HA, ESP tunnel\n"
               "  vmip lab exec mn -- vmip sa list\n")
    start.add_argument("--json", action="store_true",
                       help="print the topology with each node's pid, log and socket as JSON")
    start.add_argument("--timeout", type=_positive, default=20.0, metavar="S",
                       help="how long each node may take to answer (default 20 s)")
    _add_keys_option(start)
    _add_driver_option(start)
    start.set_defaults(func=_cmd_start)

    stop = commands.add_parser(
        "stop", help="stop the vmip nodes (the lab stays up)", formatter_class=formatter,
        description="SIGTERM every lab node (it removes its TUN and control socket), SIGKILL "
                    "the ones still running after --timeout seconds.  Namespaces, links, "
                    "configs, logs and captures stay; 'vmip lab down' removes them.",
        epilog="example:\n  vmip lab stop\n")
    stop.add_argument("--json", action="store_true", help="print what was stopped as JSON")
    stop.add_argument("--timeout", type=_positive, default=5.0, metavar="S",
                      help="seconds between SIGTERM and SIGKILL (default 5)")
    stop.set_defaults(func=_cmd_stop)

    down = commands.add_parser(
        "down", help="remove every namespace, interface and process of the lab",
        formatter_class=formatter,
        description="Stop the link emulation, kill every process running in a lab "
                    "namespace, the vmip nodes too (found through /proc/PID/ns/net, so "
                    "also after a crash), "
                    "remove the namespaces (their interfaces, routes and NAT go with them) "
                    "and the lab directory /run/vmip-lab.",
        epilog="example:\n  vmip lab down\n")
    down.add_argument("--keep-files", action="store_true",
                      help="keep /run/vmip-lab (configs, logs, pcaps) for a post-mortem")
    down.set_defaults(func=_cmd_down)

    status = commands.add_parser(
        "status", help="namespaces, link states and shaping in force", formatter_class=formatter,
        description="Show which lab namespaces and interfaces exist, the state of both ends "
                    "of every access link and the link emulation in force.  Exit status 0 "
                    "when the lab is up, 1 when it is down or incomplete.",
        epilog="examples:\n  vmip lab status\n  vmip lab status --json\n")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_cmd_status)

    run = commands.add_parser(
        "exec", help="run a command inside a node's namespace", formatter_class=formatter,
        description="Run CMD inside the node's network namespace (NODE 'net' is the router), "
                    "with a /sys that shows that namespace's interfaces.  The exit status is "
                    "the command's.",
        epilog="examples:\n"
               "  vmip lab exec mn -- ping -c3 -I wifi0 2001:db8:10::2\n"
               "  vmip lab exec mn -- ping -c3 -I 198.51.100.2 192.0.2.2   (through the NAT)\n"
               "  vmip lab exec net -- tcpdump -ni mn-lte\n"
               "  vmip lab exec ha -- bash\n")
    run.add_argument("node", choices=(*NODES, "net"), metavar="NODE",
                     help="ha, cn, mn, mn2, or net (the router)")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                     help="the command and its arguments, after '--'")
    run.set_defaults(func=_cmd_exec)

    link = commands.add_parser(
        "link", help="take a node's access link down or up (handover)",
        formatter_class=formatter,
        description="Set the state of NODE's IFACE at both ends of the link, so the router "
                    "sees it too, as when a radio loses its network.  'up' also restores the "
                    "addresses and routes the kernel dropped.",
        epilog="examples:\n  vmip lab link mn wifi0 down    traffic moves to lte0\n"
               "  vmip lab link mn wifi0 up\n")
    link.add_argument("node", choices=NODES, metavar="NODE", help="ha, cn, mn or mn2")
    link.add_argument("iface", metavar="IFACE", help="wifi0 or lte0 (mn, mn2), eth0 (ha, cn)")
    link.add_argument("state", choices=("up", "down"), help="up or down")
    link.set_defaults(func=_cmd_link)

    shape = commands.add_parser(
        "shape", help="emulate delay, jitter, loss and rate on an access link",
        formatter_class=formatter,
        description="Emulate a link's delay, jitter, loss and rate at the router, per "
                    "direction.", epilog=SHAPE_EPILOG)
    shape.add_argument("node", choices=NODES, metavar="NODE", help="ha, cn, mn or mn2")
    shape.add_argument("iface", metavar="IFACE", help="wifi0 or lte0 (mn, mn2), eth0 (ha, cn)")
    shape.add_argument("--delay", type=_non_negative, default=0.0, metavar="MS",
                       help="one-way delay in milliseconds (default 0)")
    shape.add_argument("--jitter", type=_non_negative, default=0.0, metavar="MS",
                       help="uniform jitter of +/- MS around the delay; order is kept")
    shape.add_argument("--loss", type=_percent, default=0.0, metavar="PCT",
                       help="random loss in percent, 0 to 100 (default 0)")
    shape.add_argument("--rate", type=_positive, default=None, metavar="MBIT",
                       help="rate limit in Mbit/s (default: unlimited)")
    shape.add_argument("--direction", choices=("in", "out", "both"), default="both",
                       help="seen from the node: out = uplink, in = downlink (default both)")
    shape.set_defaults(func=_cmd_shape)
