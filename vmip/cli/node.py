"""``vmip run`` and the commands that ask a running node through its control socket.

Every client command finds the node of the current network namespace by
itself (``/run/vmip/<netns>.sock``), so ``vmip lab exec mn -- vmip status``
needs no flags; ``--socket`` points elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from vmip.cli.render import Column, add_json_flag, print_json, print_record, print_rows
from vmip.control.client import ControlClient

RUN_EPILOG = """\
examples:
  vmip run -c configs/mn.toml
  vmip run -c /run/vmip-lab/mn/mn.toml --pcap-wire /tmp/mn-wire.pcap --user nobody

signals: SIGTERM or SIGINT stop the node cleanly (TUN removed, sockets
closed); SIGHUP re-reads the config and changes only the SAs, policies and
peers that changed.

privileges: after start-up the node keeps only CAP_NET_ADMIN (plus CAP_NET_RAW
for the raw driver) with no_new_privs set, as root or as node.user/--user;
key files must then be readable by that identity for SIGHUP to reload them.
Without root: prepare the TUN once with 'vmip tun create --config FILE --user
USER' (as root), then run as USER with no capability (docs/unprivileged.md).
"""


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run", help="run a vmip node from its config",
        description="Run one vmip node: open its TUN, its links and its control socket, "
                    "install its SAs and policies, and forward until stopped.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("-c", "--config", required=True, type=Path, help="the node's TOML config")
    run.add_argument("--pcap-wire", metavar="FILE",
                     help="write every on-wire IPv6 packet to FILE (pcap, LINKTYPE_IPV6)")
    run.add_argument("--pcap-inner", metavar="FILE",
                     help="write every inner packet (as the TUN sees it) to FILE")
    drop = run.add_mutually_exclusive_group()
    drop.add_argument("--user", metavar="USER",
                      help="after start-up, become USER keeping only CAP_NET_ADMIN "
                           "(and CAP_NET_RAW for the raw driver); default: node.user of the "
                           "config, else stay root with only those capabilities")
    drop.add_argument("--no-drop", action="store_true",
                      help="keep every privilege after start-up (debugging only; "
                           "ignores node.user)")
    run.add_argument("--control-socket", type=Path, metavar="PATH",
                     help="control socket path (default: control.socket, else /run/vmip/<netns>.sock)")
    run.set_defaults(func=_run)

    def client(name: str, help_text: str, func, description: str | None = None):
        parser = subparsers.add_parser(name, help=help_text, description=description or help_text)
        parser.add_argument("--socket", type=Path, metavar="PATH",
                            help="the node's control socket (default: the one of this namespace)")
        add_json_flag(parser)
        parser.set_defaults(func=func)
        return parser

    client("status", "show a running node: roles, TUN, links, SA and policy counts", _status)
    sa = subparsers.add_parser("sa", help="security associations of a running node")
    sa_sub = sa.add_subparsers(title="commands", metavar="COMMAND")
    sa_list = sa_sub.add_parser("list", help="list the SAs (no keys)")
    sa_list.add_argument("--socket", type=Path, metavar="PATH")
    add_json_flag(sa_list)
    sa_list.set_defaults(func=_sa_list)
    sa.set_defaults(func=lambda args: (sa.print_help(), 2)[1])
    spd = subparsers.add_parser("spd", help="security policies of a running node")
    spd_sub = spd.add_subparsers(title="commands", metavar="COMMAND")
    spd_list = spd_sub.add_parser("list", help="list the policies, in lookup order")
    spd_list.add_argument("--socket", type=Path, metavar="PATH")
    add_json_flag(spd_list)
    spd_list.set_defaults(func=_spd_list)
    spd.set_defaults(func=lambda args: (spd.print_help(), 2)[1])
    client("locators", "the locator table: on-wire address -> underlay endpoint", _locators)
    client("counters", "packet counters and drops by reason", _counters)
    keys = client("keys", "export the live SAs' keys for Wireshark", _keys,
                  description="Print one tshark 4.0 esp_sa UAT row per live SA. Use as: "
                              "tshark -o esp.enable_encryption_decode:TRUE "
                              "-o 'uat:esp_sa:ROW' ... (keys are secrets: mind where they go)")
    keys.add_argument("--wireshark", action="store_true", required=True,
                      help="rows in Wireshark's esp_sa format")
    remap = subparsers.add_parser("remap", help="IRO remap rules of a running node")
    remap_sub = remap.add_subparsers(title="commands", metavar="COMMAND")
    remap_list = remap_sub.add_parser(
        "list", help="the rules, in the draft's own syntax (draft-ebalard-mext-ipsec-ro §5.2)")
    remap_list.add_argument("--socket", type=Path, metavar="PATH")
    add_json_flag(remap_list)
    remap_list.set_defaults(func=_remap_list)
    remap.set_defaults(func=lambda args: (remap.print_help(), 2)[1])

    mn = subparsers.add_parser("mn", help="mobile node commands (move to another access link)")
    mn_sub = mn.add_subparsers(title="commands", metavar="COMMAND")
    move = mn_sub.add_parser(
        "move", help="make LINK the access link: new CoA, remap rules, BUs to the HA and CNs",
        description="Force a movement (draft §6.1): the MN takes the care-of address of LINK, "
                    "every remap rule naming the old CoA is rewritten, the tunnel SAs follow, "
                    "and Binding Updates go to the HA and to every CN.  On a node that is "
                    "no MN, LINK is an rfc3948 link: the IKE SAs to gateways move to its "
                    "address with MOBIKE (RFC 4555, docs/ike.md).",
        epilog="examples: vmip lab exec mn -- vmip mn move lte0\n"
               "          vmip mn move wan1        (an IPsec client with two rfc3948 links)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    move.add_argument("link", help="the link's name in the config, e.g. wifi0 or lte0")
    move.add_argument("--socket", type=Path, metavar="PATH")
    add_json_flag(move)
    move.set_defaults(func=_mn_move)
    mn.set_defaults(func=lambda args: (mn.print_help(), 2)[1])

    client("bindings", "binding update list (MN), binding caches (HA, CN) and proofs",
           _bindings)
    client("events", "the mobility event timeline (registrations, AOT, moves)", _events)

    cap = subparsers.add_parser("capture", help="start or stop a capture on a running node")
    cap_sub = cap.add_subparsers(title="commands", metavar="COMMAND")
    start = cap_sub.add_parser("start", help="write on-wire (and/or inner) packets to pcap files")
    start.add_argument("--wire", metavar="FILE", help="on-wire packets to FILE")
    start.add_argument("--inner", metavar="FILE", help="inner packets to FILE")
    start.add_argument("--socket", type=Path, metavar="PATH")
    start.set_defaults(func=_capture_start)
    stop = cap_sub.add_parser("stop", help="stop capturing; print the files and packet counts")
    stop.add_argument("--socket", type=Path, metavar="PATH")
    stop.set_defaults(func=_capture_stop)
    cap.set_defaults(func=lambda args: (cap.print_help(), 2)[1])


def _run(args) -> int:
    from vmip import log
    from vmip.config import load_config
    from vmip.node.launch import run_node

    def trust_the_node_user(document) -> None:
        # Key files the node's user owns stay readable after the switch
        # (SIGHUP reloads them): accept them at start too.  Read from the
        # parsed document, before its key files are checked: the file is
        # read once (it holds every MN of a large home agent).
        node = document.get("node")
        user = args.user or (node.get("user") if isinstance(node, dict) else None)
        if not isinstance(user, str) or not user:
            return
        import pwd

        from vmip.config.keyfile import trust_key_file_owner

        try:
            trust_key_file_owner(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass  # drop_privileges explains a missing user

    config = load_config(args.config,
                         before_check=None if args.no_drop else trust_the_node_user)
    user = None if args.no_drop else (args.user or getattr(config.node, "user", None))
    logging_cfg = config.logging
    log.setup(args.log_level if args.log_level != "info" else str(logging_cfg.level),
              args.log_format if args.log_format != "text" else str(logging_cfg.format),
              file=str(logging_cfg.file) if logging_cfg.file else None)
    # uvloop.run and asyncio.run differ in their keyword arguments; only the
    # coroutine is passed here.
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    if args.control_socket is not None:
        import dataclasses
        config = dataclasses.replace(config, control=dataclasses.replace(
            config.control, socket=args.control_socket))
    return runner(run_node(config, config_path=args.config, pcap_wire=args.pcap_wire,
                           pcap_inner=args.pcap_inner, drop_to=user,
                           drop=not args.no_drop))


def _client(args) -> ControlClient:
    return ControlClient(getattr(args, "socket", None))


def _status(args) -> int:
    status = _client(args).call("status")
    if args.json:
        print_json(status)
        return 0
    tun = status.get("tun") or {}
    record = dict(status)
    record["roles"] = ", ".join(status.get("roles", []))
    record["tun"] = f"{tun.get('name')} mtu {tun.get('mtu')} " + " ".join(tun.get("addresses", []))
    record["links"] = ", ".join(
        f"{link['name']} ({link['driver']}"
        + (f", own {' '.join(link['own_addresses'])}" if link.get("own_addresses") else "") + ")"
        for link in status["links"])
    # Path MTUs routers reported for on-wire destinations (raw links).
    record["path_mtu"] = ", ".join(f"{row['destination']} {row['mtu']}"
                                   for row in status.get("path_mtu") or []) or None
    privileges = status.get("privileges") or {}
    record["privileges"] = (f"{privileges.get('user')}, capabilities "
                            f"{','.join(privileges.get('capabilities', [])) or 'none'}"
                            f"{', no_new_privs' if privileges.get('no_new_privs') else ''}"
                            if privileges else None)
    print_record(record, ["name", "version", "roles", "pid", Column("uptime_s", "uptime",
                 kind="duration"), "tun", "links", "path_mtu", "sas", "policies", "locators",
                 "control", "privileges"],
                 title=f"vmip node {status.get('name')}")
    return 0


def _sa_list(args) -> int:
    rows = _client(args).call("sa.list")
    print_rows(rows, ["name", Column("spi", kind="hex"), "direction", "src", "dst", "mode",
                      "suite", "state", Column("packets", kind="count"),
                      Column("bytes", kind="bytes")], as_json=args.json, title="SAs")
    return 0


def _spd_list(args) -> int:
    rows = _client(args).call("spd.list")
    if not args.json:
        # The table joins an SA bundle into one cell; --json keeps the list.
        rows = [{**row, "sa": ", ".join(row.get("sa", []))} for row in rows]
    print_rows(rows, ["name", "direction", "selector", "action", "sa", "priority"],
               as_json=args.json, title="policies")
    return 0


def _locators(args) -> int:
    rows = _client(args).call("locators")
    columns = list(rows[0].keys()) if rows else ["prefix", "endpoint"]
    print_rows(rows, columns, as_json=args.json, title="locators")
    return 0


def _counters(args) -> int:
    counters = _client(args).call("counters")
    if args.json:
        print_json(counters)
        return 0
    rows = []
    for section in ("node", "ipsec", "esp", "icmp"):
        for name, value in sorted(counters.get(section, {}).items()):
            rows.append({"where": section, "counter": name, "value": value})
    for link, values in sorted(counters.get("links", {}).items()):
        for name, value in sorted(values.items()):
            rows.append({"where": f"link {link}", "counter": name, "value": value})
    for flow in counters.get("flows", []):
        rows.append({"where": f"flow {flow['name']}", "counter": f"packets ({flow['send']})",
                     "value": flow["packets"]})
    tun = counters.get("tun", {})
    for name in ("rx_packets", "tx_packets", "tx_dropped", "tx_errors", "icmp_errors_sent"):
        if name in tun:
            rows.append({"where": "tun", "counter": name, "value": tun[name]})
    print_rows(rows, ["where", "counter", Column("value", kind="count")], title="counters")
    return 0


def _keys(args) -> int:
    result = _client(args).call("keys.wireshark")
    if args.json:
        print_json(result)
        return 0
    for row in result["rows"]:
        sys.stdout.write(row + "\n")
    return 0


def _remap_list(args) -> int:
    result = _client(args).call("remap.list")
    if args.json:
        print_json(result)
        return 0
    for rule in result["rules"]:
        sys.stdout.write(rule + "\n")
    if not result["rules"]:
        sys.stdout.write("(no remap rules)\n")
    return 0


def _mn_move(args) -> int:
    result = _client(args).call("mn.move", link=args.link)
    if args.json:
        print_json(result)
    else:
        where = (f"CoA {result['coa']}" if "coa" in result
                 else f"{result.get('ike_sas', 0)} IKE SA(s) moved with MOBIKE")
        print(f"moved to {result['link']} ({where}); was on {result.get('previous') or '-'}")
    return 0


def _bindings(args) -> int:
    status = _client(args).call("mobility")
    if args.json:
        print_json(status)
        return 0
    if "mn" in status:
        mn = status["mn"]
        print_rows(mn["binding_update_list"],
                   ["peer", "bid", "home", "state", "coa", "sequence", "lifetime", "direct"],
                   title=f"binding update list (HoA {mn['hoa']}, CoA {mn['coa']})")
    if "ha" in status:
        print_rows(status["ha"]["binding_cache"], ["hoa", "bid", "coa", "sequence", "lifetime"],
                   title=f"home agent {status['ha']['address']}: binding cache")
    cn = status["cn"]
    print_rows(cn["binding_cache"], ["hoa", "bid", "local", "coa", "sequence", "lifetime"],
               title=f"correspondent: binding cache ({cn.get('proofs')} proven CoAs)")
    # Several bindings per HoA (RFC 5648): the paths data may take, best first.
    rows = [{"role": entry["role"], "peer": entry["peer"], "order": order, "bid": path["bid"],
             "link": path["link"] or "-", "via": path["local"] or path["remote"],
             "mirror": "yes" if entry.get("mirror") and entry["mirror"] == path["remote"]
             else ""}
            for entry in status.get("paths", []) for order, path in
            enumerate(entry.get("paths", []), start=1)]
    if rows:
        print_rows(rows, ["role", "peer", "order", "bid", "link", "via", "mirror"],
                   title="bound paths (RFC 5648), best first")
    quality = status.get("link_quality") or {}
    if "mn" in status or quality:
        # Measured from the MN's own signalling over each link (docs/multi-coa.md).
        print_rows([{"link": name, **row} for name, row in quality.items()],
                   ["link", "state", "srtt_ms", "rttvar_ms", "loss", "samples", "age_s",
                    "best"], title="link quality", empty="(nothing measured yet)")
    return 0


def _events(args) -> int:
    rows = _client(args).call("events")
    if args.json:
        print_json(rows)
        return 0
    import time as _time

    from vmip.cli.render import event_value
    for row in rows:
        row["time"] = _time.strftime("%H:%M:%S", _time.localtime(row["t"])) + \
            f".{int(row['t'] * 1000) % 1000:03d}"
        row["details"] = " ".join(f"{k}={event_value(k, v)}" for k, v in row.items()
                                  if k not in ("t", "time", "event", "details"))
    print_rows(rows, ["time", "event", "details"], title="mobility events")
    return 0


def _capture_start(args) -> int:
    if not args.wire and not args.inner:
        print("vmip capture start: give --wire FILE and/or --inner FILE", file=sys.stderr)
        return 2
    wire = str(Path(args.wire).resolve()) if args.wire else None
    inner = str(Path(args.inner).resolve()) if args.inner else None
    result = _client(args).call("pcap.start", wire=wire, inner=inner)
    print_json(result)
    return 0


def _capture_stop(args) -> int:
    print_json(_client(args).call("pcap.stop"))
    return 0
