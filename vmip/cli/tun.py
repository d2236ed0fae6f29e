"""``vmip tun create`` / ``vmip tun delete``: a TUN prepared by root for an unprivileged node."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DESCRIPTION = """\
Prepare the node's TUN once, as root, so that 'vmip run' can then run as an
ordinary user without any capability: 'create' makes a persistent TUN owned
by USER, with the MTU, addresses and routes of the config's [tun] section;
the node attaches to it (the kernel lets its owner do that) and checks that
it still matches the config.  It stays, without carrier, while no node runs,
until 'vmip tun delete' or a reboot.  Run both in the node's network
namespace.  docs/unprivileged.md tells the whole story.
"""

EPILOG = """\
examples:
  vmip tun create --config /etc/vmip/mn.toml --user alice     (as root, once)
  vmip run --config /etc/vmip/mn.toml --control-socket $XDG_RUNTIME_DIR/vmip.sock
                                                               (as alice)
  vmip tun delete --config /etc/vmip/mn.toml                  (as root)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    tun = subparsers.add_parser(
        "tun", help="prepare (or remove) a persistent TUN for running a node unprivileged",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = tun.add_subparsers(title="commands", metavar="COMMAND")
    create = sub.add_parser(
        "create", help="make the config's TUN persistent and owned by USER (as root)",
        description="Create the TUN of the config's [tun] section as a persistent device "
                    "owned by USER, with its MTU, addresses and routes.")
    create.add_argument("-c", "--config", required=True, type=Path, help="the node's TOML config")
    create.add_argument("--user", required=True, metavar="USER",
                        help="the user that will run 'vmip run' (name or uid)")
    create.add_argument("--group", metavar="GROUP",
                        help="also let members of GROUP attach to it (name or gid)")
    create.set_defaults(func=_create)
    delete = sub.add_parser("delete", help="remove a persistent TUN (as root)",
                            description="Remove the persistent TUN of the config (or --name).")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("-c", "--config", type=Path, help="the node's TOML config")
    which.add_argument("--name", help="the TUN's name")
    delete.set_defaults(func=_delete)
    tun.set_defaults(func=lambda args: (tun.print_help(), 2)[1])


def _uid(user: str) -> int:
    import pwd

    from vmip.errors import VmipError

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        if user.isdigit():
            return int(user)
        raise VmipError(f"no user {user!r}: give an existing user name or a uid") from None


def _gid(group: str) -> int:
    import grp

    from vmip.errors import VmipError

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise VmipError(f"no group {group!r}: give an existing group name or a gid") from None


def _create(args) -> int:
    from vmip.config import load_config
    from vmip.node.tun import create_persistent

    config = load_config(args.config, check_key_files=False)
    uid = _uid(args.user)
    gid = _gid(args.group) if args.group else None
    tun = config.tun
    create_persistent(tun.name, uid, gid, [str(a) for a in tun.addresses], tun.mtu,
                      [str(r) for r in tun.routes])
    print(f"{tun.name}: persistent TUN for {args.user} (uid {uid}), mtu {tun.mtu}, "
          f"addresses {' '.join(map(str, tun.addresses)) or '-'}, "
          f"routes {' '.join(map(str, tun.routes)) or '-'}")
    if os.geteuid() == uid:
        return 0
    print(f"now, as {args.user}: vmip run --config {args.config}")
    return 0


def _delete(args) -> int:
    from vmip.node.tun import delete_persistent

    if args.config is not None:
        from vmip.config import load_config

        name = load_config(args.config, check_key_files=False).tun.name
    else:
        name = args.name
    delete_persistent(name)
    print(f"{name}: deleted")
    return 0
