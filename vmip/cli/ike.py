"""``vmip ike list|initiate|terminate|rekey``: IKEv2 SAs of a running node.

The node must run with ``keys.mode = "ike"``; each command asks it through
its control socket (``ike.list``, ``ike.initiate``, ``ike.terminate``,
``ike.rekey``), like ``vmip sa list``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmip.cli.render import Column, add_json_flag, print_json, print_rows
from vmip.control.client import ControlClient
from vmip.errors import UsageError

IKE_EPILOG = """\
The node must run with keys.mode = "ike" and an [ike] section; NAME is the
name of an [[ike.peer]] in its config.

examples:
  vmip ike list                 IKE SAs with their CHILD_SAs and SPIs, then the
                                peers that failed or were terminated (last error)
  vmip ike list --json          the same, as JSON (with counters and cookie stats)
  vmip ike initiate ha          start IKE_SA_INIT + IKE_AUTH with peer "ha" (exit 1
                                if an IKE SA with it exists already)
  vmip ike rekey ha             rekey every CHILD_SA with "ha" (CREATE_CHILD_SA)
  vmip ike rekey ha --ike       rekey the IKE SA itself
  vmip ike terminate ha         DELETE the IKE SA; its CHILD_SAs leave the SAD; no
                                retry until 'vmip ike initiate ha'

The ESP SAs IKE made show in "vmip sa list" (origin ike), their policies in
"vmip spd list" (names ike-<child>-...).
"""


def register(subparsers) -> None:
    ike = subparsers.add_parser(
        "ike", help="IKEv2 SAs of a running node: list, initiate, terminate, rekey",
        description="Look at and drive the IKEv2 SAs of the node running in this network "
                    "namespace.", epilog=IKE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ike.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, help_text: str, func, *, takes_name: bool = True):
        parser = sub.add_parser(name, help=help_text, description=help_text, epilog=IKE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        if takes_name:
            parser.add_argument("name", metavar="NAME", help="an [[ike.peer]] name from the config")
        parser.add_argument("--socket", type=Path, metavar="PATH",
                            help="the node's control socket (default: the one of this namespace)")
        add_json_flag(parser)
        parser.set_defaults(func=func)
        return parser

    command("list", "list the IKE SAs, their CHILD_SAs and counters", _list, takes_name=False)
    command("initiate", "start an IKE SA (and its first CHILD_SA) with a configured peer",
            _initiate)
    command("terminate", "delete the IKE SA with a peer and every CHILD_SA it made", _terminate)
    rekey = command("rekey", "rekey the CHILD_SAs (or, with --ike, the IKE SA) with a peer",
                    _rekey)
    rekey.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
    ike.set_defaults(func=lambda args: (ike.print_help(), 2)[1])


def _client(args) -> ControlClient:
    return ControlClient(args.socket)


def _check_name(name: str) -> str:
    if not name or name.startswith("-"):
        raise UsageError(f"{name!r} is not a peer name; see 'vmip ike list' for the peers")
    return name


def _list(args) -> int:
    result = _client(args).call("ike.list")
    if args.json:
        print_json(result)
        return 0
    rows = []
    for sa in result.get("sas", []):
        children = sa.get("children") or [{}]
        for child in children:
            rows.append({
                "peer": sa["name"], "state": sa["state"], "role": sa["role"],
                "local": sa["local"], "remote": sa["remote"],
                "ike_spis": f"{sa['spi_i']}:{sa['spi_r']}",
                "child": child.get("name"), "spi_in": child.get("spi_in"),
                "spi_out": child.get("spi_out"), "suite": child.get("suite"),
                "mode": child.get("mode"), "age_s": sa.get("age_s"),
            })
    # SPIs of CHILD_SAs in hex, as 'vmip sa list' shows them (0x00001234).
    print_rows(rows, ["peer", "state", "role", "local", "remote", Column("ike_spis", "IKE SPIS"),
                      "child", Column("spi_in", "SPI IN", kind="hex"),
                      Column("spi_out", "SPI OUT", kind="hex"), "suite", "mode", "age_s"],
               as_json=False, title="IKE SAs", empty="no IKE SA")
    # Peers that are not simply up: why the last try failed, when the next comes.
    troubled = [{"peer": p["name"],
                 "state": "terminated" if p.get("terminated") else
                 "retrying" if p.get("retry_in_s") is not None else "-",
                 "retry_in_s": p.get("retry_in_s"),
                 "failures": p.get("failures", 0), "last_error": p.get("last_error")}
                for p in result.get("peers", [])
                if p.get("terminated") or p.get("failures") or p.get("last_error")]
    if troubled:
        print()
        print_rows(troubled, ["peer", "state", Column("retry_in_s", "NEXT TRY S"), "failures",
                              "last_error"], as_json=False, title="IKE peers not up")
    return 0


def _initiate(args) -> int:
    result = _client(args).call("ike.initiate", name=_check_name(args.name))
    if args.json:
        print_json(result)
    elif result.get("already"):
        print(f"vmip: nothing done: an IKE SA with {args.name} exists already "
              f"({result['state']}); 'vmip ike terminate {args.name}' first to start anew",
              file=sys.stderr)
    else:
        print(f"IKE SA with {args.name} started ({result['state']}); see 'vmip ike list'")
    # Nothing started is not success: scripts must be able to tell.
    return 1 if result.get("already") else 0


def _terminate(args) -> int:
    result = _client(args).call("ike.terminate", name=_check_name(args.name))
    if args.json:
        print_json(result)
    else:
        print(f"{result['terminated']} IKE SA(s) with {args.name} being deleted")
    return 0


def _rekey(args) -> int:
    result = _client(args).call("ike.rekey", name=_check_name(args.name), ike=args.ike)
    if args.json:
        print_json(result)
    else:
        print(f"{result['rekeys']} {result['what']} rekey(s) with {args.name} started")
    return 0
