"""Dropping root after start-up, keeping only the capabilities the node needs.

The node needs root to create its TUN, bind its sockets and (for the ``raw``
driver) open raw sockets.  Once those exist it keeps only CAP_NET_ADMIN
(route and address changes when the CoA moves) and, for the ``raw`` driver,
CAP_NET_RAW, by default as root (:func:`drop_capabilities`), or as the
unprivileged ``node.user`` (:func:`drop_privileges`).  Both also set
no_new_privs and empty the bounding set of everything else, so neither an
execve() of a set-uid or file-capability binary nor root's execve() rule can
bring a capability back.  Linux drops every capability on setuid() unless
PR_SET_KEEPCAPS is set first; the effective set must then be raised again
with capset(2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
import struct
from typing import TypedDict

from vmip.errors import VmipError
from vmip.log import get_logger

log = get_logger(__name__)

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: capabilities(7) names, by number, lower case without the CAP_ prefix.
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)


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


def cap_names(mask: int) -> list[str]:
    """The names of the capabilities set in *mask* (``cap_40`` past the known ones)."""
    return [CAP_NAMES[bit] if bit < len(CAP_NAMES) else f"cap_{bit}"
            for bit in range(mask.bit_length()) if mask >> bit & 1]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last:
            return int(last.read())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def _prctl(option: int, arg: int, what: str) -> None:
    if _libc().prctl(option, arg, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl({what}) failed: {os.strerror(ctypes.get_errno())}")


def _seal(keep: list[int]) -> None:
    """no_new_privs, and a bounding set of *keep* only (needs CAP_SETPCAP: call it first)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            _prctl(_PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP {cap}")


def _clear_ambient() -> None:
    # Older kernels lack ambient capabilities; there is nothing to clear then.
    _libc().prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


class PrivilegeSummary(TypedDict):
    """:func:`privilege_summary`: plain JSON for ``vmip status`` and the log."""

    uid: int
    user: str
    capabilities: list[str]
    bounding: list[str]
    no_new_privs: bool


def privilege_summary() -> PrivilegeSummary:
    """What this process may do, for ``vmip status`` and the log."""
    caps = current_capabilities()
    try:
        no_new_privs = bool(_libc().prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0))
    except (OSError, AttributeError):  # pragma: no cover - libc without prctl
        no_new_privs = False
    return {
        "uid": os.geteuid(),
        "user": _user_name(os.geteuid()),
        "capabilities": cap_names(caps.get("CapEff", 0)),
        "bounding": cap_names(caps.get("CapBnd", 0)),
        "no_new_privs": no_new_privs,
    }


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def drop_capabilities(keep: list[int], *, quiet: bool = False) -> None:
    """Stay root but keep only *keep* capabilities, sealed (the default without node.user).

    The uid stays 0, so files and directories root owns (the control
    socket's directory, root's key files) stay usable through their owner
    permission bits; everything a capability grants beyond *keep* is gone.
    """
    if os.geteuid() != 0:
        if not quiet:
            log.info("not root; nothing to drop")
        return
    _seal(keep)
    _capset(keep)
    _clear_ambient()
    if not quiet:
        log.info("dropped capabilities", user="root",
                 capabilities=",".join(cap_names(sum(1 << c for c in keep))) or "none",
                 no_new_privs=True)


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
    _seal(keep)
    _prctl(_PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    _capset(keep)
    libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    _clear_ambient()
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    log.info("dropped privileges", user=user, group=group,
             capabilities=",".join(cap_names(sum(1 << c for c in keep))) or "none",
             no_new_privs=True)


def drop_nothing() -> None:
    """``vmip run --no-drop``: keep every privilege (debugging only), and say so."""
    summary = privilege_summary()
    log.warning("keeping every privilege (--no-drop): a flaw in the node is a flaw as root",
                user=summary["user"], capabilities=len(summary["capabilities"]))
