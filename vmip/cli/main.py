"""The ``vmip`` command: one entry point, one module per subcommand family.

Each module in :data:`SUBCOMMANDS` has ``register(subparsers)`` that adds its
parser(s) and sets ``func`` (called with the parsed namespace, returns the
exit status).  Errors derived from :class:`vmip.errors.VmipError` are printed
as one clear line and turned into their ``exit_status`` (default 1); a
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vmip import __version__, log
from vmip.errors import VmipError

#: Subcommand modules, in the order ``vmip --help`` lists them.
SUBCOMMANDS = [
    "vmip.cli.node",
    "vmip.cli.tun",
    "vmip.cli.check",
    "vmip.cli.init",
    "vmip.cli.lab",
    "vmip.cli.demo",
    "vmip.cli.sim",
    "vmip.cli.top",
    "vmip.cli.ike",
    "vmip.cli.completion",
]

DESCRIPTION = """\
vmip: Mobile IPv6 with IPsec Route Optimization (IRO), in userspace on a TUN.

A vmip node reads inner packets from its TUN device, applies the SPD and ESP
(static keys or IKEv2), rewrites on-wire addresses with the IRO remap rules
(draft-ebalard-mext-ipsec-ro), and carries the result over UDP (the overlay),
raw IPv6 sockets or RFC 3948 ESP-in-UDP.  No kernel MIPv6 or IPsec needed.
"""

EPILOG = """\
first steps (as root):
  vmip lab up && vmip lab start       build the lab, start HA, CN, MN, MN2 (static keys)
  vmip lab exec mn -- vmip bindings   the MN's registrations with its HA and CN
  vmip lab exec mn -- ping -c3 2001:db8:20::2    MN (HoA) -> CN, direct with IRO
  vmip lab exec mn -- vmip remap list the IRO remap rules, in the draft's syntax
  vmip lab exec mn -- vmip mn move lte0          hand over to the lte link
  vmip lab exec mn -- vmip keys --wireshark      keys for tshark/Wireshark
  vmip check -c configs/mn.toml       validate a node config, print the effective one
  vmip lab down                       remove every namespace and process of the lab

Run 'vmip COMMAND --help' for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmip",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmip {__version__}")
    parser.add_argument("--log-level", default="info", choices=log.LEVELS,
                        help="how much to log on stderr (default: info)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="log as text for people or JSON lines for machines")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks on errors")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(args.log_level, args.log_format)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except VmipError as exc:
        if args.debug:
            raise
        print(f"vmip: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)
    except KeyboardInterrupt:
        return 130
