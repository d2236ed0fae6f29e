"""Dropping root after start-up, keeping only the capabilities the node needs.

The node needs root to create its TUN, bind its sockets and (for the ``raw``
driver) open raw sockets.  Once those exist it changes to an unprivileged
user and keeps only CAP_NET_ADMIN (route and address changes when the CoA
moves) and, for the ``raw`` driver, CAP_NET_RAW.  Linux drops every
capability on setuid() unless PR_SET_KEEPCAPS is set first; the effective
set must then be raised again with capset(2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
import struct

from vmip.errors import VmipError
from vmip.log import get_logger

log = get_logger(__name__)

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

_PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(VmipError):
    """The node could not change user or keep its capabilities."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _capset(caps: list[int]) -> None:
    libc = _libc()
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    header = struct.pack("II", _LINUX_CAPABILITY_VERSION_3, 0)
    low, high = mask & 0xFFFFFFFF, mask >> 32
    # Two __user_cap_data_struct {effective, permitted, inheritable}.
    data = struct.pack("IIIIII", low, low, 0, high, high, 0)
    hbuf = ctypes.create_string_buffer(header)
    dbuf = ctypes.create_string_buffer(data)
    if libc.capset(hbuf, dbuf) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset failed: {os.strerror(err)}")


def current_capabilities() -> dict[str, int]:
    """The capability masks of this process, from /proc/self/status."""
    caps = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Cap"):
                name, value = line.split(":", 1)
                caps[name] = int(value.strip(), 16)
    return caps


def drop_privileges(user: str, keep: list[int]) -> None:
    """Become *user* (and its primary group), keeping only *keep* capabilities."""
    if os.geteuid() != 0:
        log.info("not root; nothing to drop", user=user)
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"user {user!r} does not exist; create it (useradd --system {user}) "
            f"or remove node.user from the config") from None
    libc = _libc()
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_KEEPCAPS) failed: {os.strerror(ctypes.get_errno())}")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    _capset(keep)
    libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    log.info("dropped privileges", user=user, group=group,
             capabilities=",".join({CAP_NET_ADMIN: "net_admin", CAP_NET_RAW: "net_raw"}.get(c, str(c))
                                   for c in keep) or "none")
