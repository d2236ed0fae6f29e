"""Named network namespaces: create, enter, run commands in, empty, remove.

Namespaces are the ones ``ip netns`` knows (bind mounts under /run/netns),
created and removed with pyroute2, never by shelling out to ``ip``.
Sysctls of a namespace are written through /proc/sys while the calling
thread is inside it: /proc/sys/net shows the namespace of whoever opens it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from pyroute2 import netns as pyroute2_netns

from vmip.lab.errors import LabError, LabNotUpError
from vmip.log import get_logger

log = get_logger(__name__)

NETNS_RUN_DIR = Path("/run/netns")

# <sched.h> and <sys/mount.h>; only used to give commands a private /sys.
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_MNT_DETACH = 2


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def list_netns(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.startswith(prefix))


def create_netns(name: str) -> bool:
    """Create *name* unless it exists; return whether it was created."""
    if netns_exists(name):
        return False
    try:
        pyroute2_netns.create(name)
    except OSError as exc:
        raise LabError(f"cannot create network namespace {name}: {exc}") from exc
    log.debug("netns created", netns=name)
    return True


def remove_netns(name: str) -> None:
    """Unmount and unlink *name*; the kernel frees it when nothing holds it."""
    if not netns_exists(name):
        return
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LabError(f"cannot remove network namespace {name}: {exc}") from exc
    log.debug("netns removed", netns=name)


def _require(name: str) -> Path:
    path = netns_path(name)
    if not path.exists():
        raise LabNotUpError(f"network namespace {name} does not exist; run 'vmip lab up' first")
    return path


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with the calling thread inside namespace *name*.

    Sockets created in the body stay in *name* after it ends, which is how
    tests open a server "in vmip-ha" without a subprocess.
    """
    target = os.open(_require(name), os.O_RDONLY)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        pyroute2_netns.setns(target, flags=0)
        try:
            yield
        finally:
            pyroute2_netns.setns(home, flags=0)
    finally:
        os.close(target)
        os.close(home)


def write_sysctls(name: str, settings: dict[str, str | int]) -> None:
    """Set ``net.*`` sysctls (keys such as ``net/ipv6/conf/all/forwarding``) inside *name*."""
    with entered(name):
        for key, value in settings.items():
            try:
                with open(Path("/proc/sys") / key, "w") as handle:
                    handle.write(f"{value}\n")
            except OSError as exc:
                raise LabError(f"cannot set {key.replace('/', '.')}={value} in {name}: {exc}"
                               ) from exc


def read_sysctl(name: str, key: str) -> str:
    with entered(name):
        return (Path("/proc/sys") / key).read_text().strip()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _private_sysfs() -> None:
    """Give this process a /sys that lists its namespace's interfaces.

    Like ``ip netns exec``: tools such as ``tcpdump -D`` read /sys/class/net,
    which otherwise still shows the host's interfaces.  Best effort: without
    it everything that uses netlink still works.
    """
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS) != 0:
        return
    # Keep our unmount from propagating back to the host's mount table.
    if libc.mount(b"none", b"/", None, _MS_SLAVE | _MS_REC, None) != 0:
        return
    libc.umount2(b"/sys", _MNT_DETACH)
    libc.mount(b"vmip-lab", b"/sys", b"sysfs", 0, None)


def _enter_for_child(name: str, private_sysfs: bool) -> None:
    pyroute2_netns.setns(str(netns_path(name)), flags=0, fork=False)
    if private_sysfs:
        _private_sysfs()


def popen_in(name: str, argv: Sequence[str], *, private_sysfs: bool = True,
             **popen_kwargs: Any) -> subprocess.Popen:
    """Start *argv* inside namespace *name* (the child calls setns before exec)."""
    _require(name)
    try:
        # setns must run in the child between fork and exec, and Python 3.11
        # has no os.setns; the child calls only setns (and unshare/mount for /sys).
        return subprocess.Popen(
            list(argv), preexec_fn=lambda: _enter_for_child(name, private_sysfs),  # noqa: PLW1509
            **popen_kwargs)
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc


def run_in(name: str, argv: Sequence[str], *, timeout: float = 30.0, input: str | None = None,
           check: bool = False, private_sysfs: bool = False) -> subprocess.CompletedProcess:
    """Run *argv* in *name* to completion, capturing text output."""
    proc = popen_in(name, argv, private_sysfs=private_sysfs, text=True,
                    stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise LabError(f"{argv[0]} in {name} did not finish within {timeout:g} s") from exc
    result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check and result.returncode != 0:
        detail = (err or out).strip().splitlines()
        raise LabError(f"{' '.join(argv)} in {name} failed (exit {result.returncode})"
                       + (f": {detail[0]}" if detail else ""))
    return result


def exec_in(name: str, argv: Sequence[str]) -> NoReturn:
    """Replace this process by *argv* running inside *name* (``vmip lab exec``).

    Exec rather than fork: the command's exit status, signals and terminal
    are then exactly the caller's.
    """
    _require(name)
    _enter_for_child(name, private_sysfs=True)
    try:
        os.execvp(argv[0], list(argv))
    except FileNotFoundError:
        error = LabError(f"command not found: {argv[0]}")
        error.exit_status = 127  # as a shell reports it
        raise error from None
    except PermissionError:
        error = LabError(f"command not executable: {argv[0]}")
        error.exit_status = 126
        raise error from None


def _netns_identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _is_gone(pid: int) -> bool:
    """A pid that exited (or is a zombie waiting for its parent) is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _own_lineage() -> set[int]:
    """This process and its ancestors: never kill the caller of ``lab down``."""
    lineage = set()
    pid = os.getpid()
    for _ in range(64):
        lineage.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent <= 1:
            break
        pid = parent
    return lineage


def pids_in_netns(names: Iterable[str]) -> dict[int, str]:
    """Every live process whose network namespace is one of *names*."""
    wanted = {}
    for name in names:
        identity = _netns_identity(netns_path(name))
        if identity is not None:
            wanted[identity] = name
    found: dict[int, str] = {}
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        identity = _netns_identity(f"/proc/{entry}/ns/net")
        if identity in wanted and not _is_gone(int(entry)):
            found[int(entry)] = wanted[identity]
    return found


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    remaining = set(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = {pid for pid in remaining if not _is_gone(pid)}
        if remaining:
            time.sleep(0.02)
    return remaining


def kill_netns_processes(names: Iterable[str], timeout: float = 3.0) -> list[int]:
    """SIGTERM every process in *names*, SIGKILL the ones still there; return the pids."""
    spared = _own_lineage()
    victims = {pid: ns for pid, ns in pids_in_netns(names).items() if pid not in spared}
    for pid, ns in victims.items():
        log.info("stopping lab process", pid=pid, netns=ns)
        _signal(pid, signal.SIGTERM)
    stubborn = _wait_gone(victims, timeout)
    for pid in stubborn:
        log.warning("lab process ignored SIGTERM, killing it", pid=pid, netns=victims[pid])
        _signal(pid, signal.SIGKILL)
    still_there = _wait_gone(stubborn, timeout)
    if still_there:
        raise LabError("lab processes did not exit after SIGKILL: "
                       + ", ".join(str(pid) for pid in sorted(still_there)))
    return sorted(victims)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise LabError(f"cannot signal process {pid}: {exc}") from exc
