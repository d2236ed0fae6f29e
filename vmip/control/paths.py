"""Where the control socket lives.

One node per network namespace, so the socket is named after the namespace
the process runs in: ``/run/vmip/<netns>.sock``, or ``/run/vmip/vmip.sock``
when the namespace has no name (the host's).  A command started with
``ip netns exec vmip-mn`` (which is what ``vmip lab exec mn`` does) therefore
finds the node of that namespace without any flag.

``ip netns`` names a namespace by bind-mounting its nsfs file on
``/run/netns/<name>``; stat() of such a mount gives the namespace's own
device and inode, the same as stat() of ``/proc/thread-self/ns/net`` when
the calling thread is inside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

RUN_DIR: Final = Path("/run/vmip")
NETNS_DIR: Final = Path("/run/netns")
#: Socket name used in a namespace that has no name (normally the host's).
UNNAMED_NETNS_SOCKET: Final = "vmip"

# thread-self: a thread may have moved itself with setns(2); /proc/self would
# report the main thread's namespace.  Older kernels lack thread-self.
_OWN_NETNS_CANDIDATES: Final = (Path("/proc/thread-self/ns/net"), Path("/proc/self/ns/net"))


def _own_netns_identity() -> tuple[int, int] | None:
    for candidate in _OWN_NETNS_CANDIDATES:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        return st.st_dev, st.st_ino
    return None


def current_netns_name(netns_dir: Path = NETNS_DIR) -> str | None:
    """The ``ip netns`` name of the calling thread's network namespace, or None.

    If several names point at the same namespace the alphabetically first
    wins, so every process in it picks the same socket.
    """
    own = _own_netns_identity()
    if own is None:
        return None
    try:
        entries = sorted(os.scandir(netns_dir), key=lambda entry: entry.name)
    except OSError:
        return None
    for entry in entries:
        try:
            st = os.stat(entry.path)
        except OSError:  # a stale name whose mount is gone, or no permission
            continue
        if (st.st_dev, st.st_ino) == own:
            return entry.name
    return None


def socket_path_for_netns(netns: str | None, run_dir: Path = RUN_DIR) -> Path:
    """The control socket of the node running in namespace *netns* (None: unnamed)."""
    return run_dir / f"{netns or UNNAMED_NETNS_SOCKET}.sock"


def default_socket_path(run_dir: Path = RUN_DIR, netns_dir: Path = NETNS_DIR) -> Path:
    """``/run/vmip/<netns>.sock`` for the namespace this thread runs in, else ``/run/vmip/vmip.sock``."""
    return socket_path_for_netns(current_netns_name(netns_dir), run_dir)
