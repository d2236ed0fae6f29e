"""``vmip check -c FILE``: validate a node config and print the effective one."""

from __future__ import annotations

import argparse
import json
import os
import sys

from vmip.config import dump_effective, load_config, to_dict

DESCRIPTION = """\
Validate a node config and print the effective configuration: the same
settings with every default filled in and every path made absolute, as TOML
(or JSON with --json).  Nothing is started and no packet is sent.

What is checked:
  - TOML syntax (with line and column), unknown keys (with the closest known
    one), value types, addresses, prefixes (no host bits), port ranges;
  - roles: an MN needs home_address, home_agent and a link with a coa, inside
    the home prefix; an HA needs home_prefix;
  - keys: SA names unique, SPIs 256..0xffffffff and unique per direction and
    destination, known suites, key files present, private (mode 600) and of
    the size the suite needs; every SA a policy names exists;
  - IKE settings when keys.mode = "ike".

Key material is never printed, only the paths of key files.
"""

EPILOG = """\
examples:
  vmip check -c configs/mn.toml              print the effective config
  vmip check -c configs/ha.toml --json | jq .keys.sa
  vmip check -c /run/vmip-lab/mn/mn.toml -q && echo ok

exit status: 0 valid, 2 invalid (one line on stderr: file, key, problem and
what to write instead), e.g.
  vmip: error: configs/mn.toml: link[1].coa: "2001:db8::zz" is not an IPv6
  address; write a care-of address such as "2001:db8:31::2"

The example configs use example keys: run 'chmod 600 configs/keys/*' once
after a fresh clone (git does not keep file modes).  Reference:
docs/configuration.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a node config and print the effective one",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", required=True, metavar="FILE",
                        help="the node's TOML config file")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print the effective config as JSON instead of TOML")
    output.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing when the config is valid (exit status only)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)  # ConfigError → main prints it, exit status 2
    if args.quiet:
        return 0
    text = json.dumps(to_dict(cfg), indent=2) + "\n" if args.json else dump_effective(cfg)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, grep -q) has what it wanted; keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
