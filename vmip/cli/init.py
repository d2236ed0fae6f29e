"""``vmip init DIR``: write the configs, keys and units of a whole network (docs/init.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmip.errors import UsageError

DESCRIPTION = """\
Write a complete network into DIR: one config per node (home agent, mobile
nodes, correspondents), their keys (IKEv2 certificates from a CA made here,
or static keys), a systemd unit and a README per node saying what to copy
where.  Every config passes 'vmip check'.  DIR must not exist or be empty;
nothing is left behind when something is wrong.
"""

EPILOG = """\
examples:
  vmip init ~/vmip-net --ha ha=192.0.2.1:6275 --mn laptop --cn web=198.51.100.7:6275
  vmip init ~/vmip-net --ha ha=[2001:db8::1]:6275 --mn laptop:wlan0,wwan0 --keys static
  vmip init ~/vmip-net --add-mn phone         add a mobile node, keep every key
  vmip init ~/vmip-net --from network.toml    a hand-written description

NAME: letters, digits, '.', '_', '-'.  HOST: an IPv4 or IPv6 address (node
configs take addresses, not host names).  --mn NAME:IF1,IF2 gives the mobile
node one link per interface (else one link, routed by the system);
--mn NAME=HOA picks its home address inside the home prefix.

exit status: 0 written, 2 bad description (one line: what and the fix).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "init", help="generate the configs, keys and units of a whole network",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, metavar="DIR",
                        help="where to write the network (new or empty; with --add-mn, "
                             "a directory 'vmip init' made)")
    parser.add_argument("--ha", metavar="NAME=HOST:PORT",
                        help="the home agent and where the other nodes reach it")
    parser.add_argument("--mn", action="append", default=[],
                        metavar="NAME[:IFACES][=HOA]", help="a mobile node (repeat for more)")
    parser.add_argument("--cn", action="append", default=[], metavar="NAME=HOST:PORT",
                        help="a correspondent node and where it is reached (repeat for more)")
    parser.add_argument("--keys", choices=("ike", "static"), default=None,
                        help="IKEv2 with certificates from a new CA (default) or static "
                             "keys, one file per SA")
    parser.add_argument("--home-prefix", metavar="PREFIX",
                        help="the home prefix (default: a random ULA /64, RFC 4193)")
    parser.add_argument("--domain", default=None, metavar="DOMAIN",
                        help="domain of the nodes' IKE identities (default vmip.internal)")
    parser.add_argument("--from", dest="from_file", type=Path, metavar="FILE",
                        help="read the network from a description file (network.toml format)")
    parser.add_argument("--add-mn", metavar="NAME[:IFACES][=HOA]",
                        help="add a mobile node to the network in DIR and regenerate its "
                             "configs, keeping existing keys and certificates")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmip.init.generate import generate, load_description, read_description_file
    from vmip.init.network import DEFAULT_DOMAIN, add_mobile_node, build_network

    if args.add_mn is not None:
        extra = [flag for flag, value in (("--ha", args.ha), ("--mn", args.mn),
                                          ("--cn", args.cn), ("--keys", args.keys),
                                          ("--home-prefix", args.home_prefix),
                                          ("--domain", args.domain),
                                          ("--from", args.from_file)) if value]
        if extra:
            raise UsageError(f"--add-mn takes the rest from {args.directory}/network.toml; "
                             f"drop {', '.join(extra)}")
        network = add_mobile_node(load_description(args.directory), args.add_mn)
        result = generate(network, args.directory, regenerate=True)
        name = network.mns[-1].name
        print(f"added mobile node {name} (home address {network.mns[-1].home_address}) "
              f"to {result.directory}")
        changed = [path for path in result.changed if path.endswith(".toml")
                   and not path.startswith("network")]
        if changed:
            verb = "restart" if network.keys == "ike" else "reload"
            print("changed configs (copy them to their hosts, then 'systemctl "
                  f"{verb} vmip-NAME'):")
            for path in changed:
                print(f"  {result.directory / path}")
        print(f"new node: {result.directory / name}/ (see its README.md)")
        return 0
    if args.from_file is not None:
        extra = [flag for flag, value in (("--ha", args.ha), ("--mn", args.mn),
                                          ("--cn", args.cn), ("--home-prefix", args.home_prefix),
                                          ("--domain", args.domain)) if value]
        if extra:
            raise UsageError(f"--from describes the whole network; drop {', '.join(extra)} "
                             f"or write them into {args.from_file}")
        network = read_description_file(args.from_file)
        if args.keys:
            from vmip.init.network import with_keys
            network = with_keys(network, args.keys)
    else:
        network = build_network(ha=args.ha, mns=args.mn, cns=args.cn,
                                keys=args.keys or "ike", home_prefix=args.home_prefix,
                                domain=args.domain or DEFAULT_DOMAIN)
    result = generate(network, args.directory)
    out = sys.stdout
    out.write(f"wrote a network of {len(result.configs)} nodes to {result.directory} "
              f"({network.keys} keys, home prefix {network.home_prefix})\n")
    for name, config_path in result.configs.items():
        out.write(f"  {name:<12} {config_path}\n")
    out.write(f"each node's README.md says where to copy it; start with "
              f"{result.directory}/README.md\n")
    return 0
