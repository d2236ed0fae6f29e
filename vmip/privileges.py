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
_CAP_NET_BIND_SERVICE = 10
_CAP_SETPCAP = 8

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


# -- running without root ------------------------------------------------------

#: SO_BINDTODEVICE needs no capability from Linux 5.7 on (socket(7)).
_BINDTODEVICE_FREE_FROM = (5, 7)


class Need(TypedDict):
    """Something the node would do that this process may not (:func:`unprivileged_needs`)."""

    capability: str
    why: str
    fix: str


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release
    try:
        major, minor = release.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def _unprivileged_port_start() -> int:
    # net.ipv4.ip_unprivileged_port_start covers IPv6 sockets too.
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as start:
            return int(start.read())
    except (OSError, ValueError):
        return 1024


def _interface_exists(name: str) -> bool:
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _writable_directory(path: os.PathLike[str] | str) -> bool:
    """Whether this process may create *path* (its nearest existing ancestor is writable)."""
    from pathlib import Path

    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return os.access(parent, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def unprivileged_needs(config, control_path: os.PathLike[str] | str | None) -> list[Need]:
    """What starting the node from *config* needs that this process lacks.

    Empty for root (or any process holding CAP_NET_ADMIN, CAP_NET_RAW and
    CAP_NET_BIND_SERVICE as needed).  A user without capabilities can run a
    node whose TUN was prepared (``vmip tun create``), whose links are
    ``udp`` or ``rfc3948`` on ports it may bind, and whose control socket
    and state directory it may create; everything else is listed here with
    the capability (or permission) it needs, why, and how to do without.
    """
    effective = current_capabilities().get("CapEff", 0)

    def lacks(cap: int) -> bool:
        return not effective >> cap & 1

    needs: list[Need] = []
    tun = config.tun.name
    if lacks(CAP_NET_ADMIN) and not _interface_exists(tun):
        needs.append({"capability": "CAP_NET_ADMIN",
                      "why": f"creating the TUN {tun} and setting its addresses and routes",
                      "fix": f"prepare it once as root: vmip tun create --config FILE "
                             f"--user {_user_name(os.geteuid())}"})
    port_start = _unprivileged_port_start()
    ike = str(config.keys.mode) == "ike"
    for link in config.links:
        driver = str(link.driver)
        if driver == "raw" and lacks(CAP_NET_RAW):
            needs.append({"capability": "CAP_NET_RAW",
                          "why": f"link {link.name}: the raw driver sends and receives "
                                 "through raw IPv6 sockets",
                          "fix": "use driver \"udp\" or \"rfc3948\", or grant CAP_NET_RAW "
                                 "(systemd AmbientCapabilities=CAP_NET_RAW)"})
        ports = [link.port] if driver != "raw" and link.port else []
        if ike and driver == "rfc3948" and link.bind is not None:
            ports.append(500)   # IKE's own port beside 4500 (RFC 7296 §2)
        for port in ports:
            if port < port_start and lacks(_CAP_NET_BIND_SERVICE):
                needs.append({"capability": "CAP_NET_BIND_SERVICE",
                              "why": f"link {link.name}: binding UDP port {port} "
                                     f"(below net.ipv4.ip_unprivileged_port_start = {port_start})",
                              "fix": f"lower it (sysctl net.ipv4.ip_unprivileged_port_start="
                                     f"{port}) or grant CAP_NET_BIND_SERVICE"})
        if link.interface and lacks(CAP_NET_RAW) \
                and _kernel_version() < _BINDTODEVICE_FREE_FROM:
            needs.append({"capability": "CAP_NET_RAW",
                          "why": f"link {link.name}: SO_BINDTODEVICE to {link.interface} "
                                 "before Linux 5.7",
                          "fix": "remove link.interface, or run Linux 5.7 or later"})
    if control_path is not None and not _writable_directory(control_path):
        needs.append({"capability": "write permission",
                      "why": f"creating the control socket {control_path}",
                      "fix": "set control.socket (or vmip run --control-socket) to a path "
                             "of yours, e.g. $XDG_RUNTIME_DIR/vmip.sock"})
    if str(config.keys.mode) == "static" and config.keys.sa \
            and not os.path.isdir(config.keys.state_dir) \
            and not _writable_directory(config.keys.state_dir):
        needs.append({"capability": "write permission",
                      "why": f"creating the ESP sequence-number state {config.keys.state_dir}",
                      "fix": "set keys.state_dir to a directory of yours"})
    return needs


def can_drop() -> bool:
    """Whether this process is root with what dropping privileges takes (CAP_SETPCAP to
    shrink the bounding set); otherwise the node runs with what it was given."""
    return os.geteuid() == 0 and bool(current_capabilities().get("CapEff", 0) >> _CAP_SETPCAP & 1)


def check_unprivileged_start(config, control_path: os.PathLike[str] | str | None) -> None:
    """Refuse to start without what :func:`unprivileged_needs` lists, naming each
    capability, why and the fix; else log what the node runs with.

    ``vmip run`` calls it before opening anything when :func:`can_drop` is false.
    """
    needs = unprivileged_needs(config, control_path)
    who = _user_name(os.geteuid())
    if needs:
        lines = "; ".join(f"{n['capability']} for {n['why']} (fix: {n['fix']})" for n in needs)
        raise PrivilegeError(f"running as {who} without those privileges, this node cannot "
                             f"start: {lines}")
    summary = privilege_summary()
    prepared = not current_capabilities().get("CapEff", 0) >> CAP_NET_ADMIN & 1
    log.info("running unprivileged", user=summary["user"],
             capabilities=",".join(summary["capabilities"]) or "none",
             tun=f"{config.tun.name} prepared by vmip tun create" if prepared
             else config.tun.name,
             needs="none")


def seal_unprivileged() -> None:
    """no_new_privs for a node that started without privileges: no execve() may add any."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
