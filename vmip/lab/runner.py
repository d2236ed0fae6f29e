"""Start, find and stop the vmip node of each lab namespace (``vmip lab start/stop``).

Each node runs as ``python -m vmip run -c <node>.toml --pcap-wire
<node>/wire.pcap`` inside its namespace, detached from the caller (its own
session, stdin from /dev/null, stdout and stderr appended to
``<node>/vmip.log``), so it outlives ``vmip lab start``.  Its pid goes to
``<node>/vmip.pid``.

A node counts as running when the pid file names a live ``vmip run``
process inside the node's namespace, or, failing that, when something
answers ``status`` on the namespace's control socket (a node started by
hand with ``vmip lab exec mn -- vmip run ...``).  A node is *ready* once
it answers ``status`` with its own pid: only then are its TUN, links and
SAs in place.  Every wait here is bounded in time.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vmip
from vmip.control.client import ControlClient
from vmip.control.errors import ControlError
from vmip.control.paths import socket_path_for_netns
from vmip.lab.errors import LabError
from vmip.lab.netns import netns_path, popen_in
from vmip.lab.topology import LabPlan
from vmip.log import get_logger

log = get_logger(__name__)

LOG_NAME = "vmip.log"
PCAP_NAME = "wire.pcap"
PID_NAME = "vmip.pid"
#: How long a node may take to answer ``status`` after it was started.
READY_TIMEOUT = 20.0
#: How long ``lab stop`` waits after SIGTERM before SIGKILL, and after SIGKILL.
STOP_TIMEOUT = 5.0
KILL_TIMEOUT = 3.0
#: Lines of a node's log quoted when it fails to start.
LOG_TAIL_LINES = 25
#: Bound on one control-socket probe.
PROBE_TIMEOUT = 1.0
_POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class NodeFiles:
    """Where a lab node's config, log, capture, pid and control socket live."""

    config: Path
    log: Path
    pcap: Path
    pid_file: Path
    control_socket: Path

    def as_dict(self) -> dict[str, str]:
        return {"config": str(self.config), "log": str(self.log), "pcap": str(self.pcap),
                "control_socket": str(self.control_socket)}


def node_files(plan: LabPlan, name: str) -> NodeFiles:
    node = plan.node(name)
    node_dir = plan.node_dir(name)
    return NodeFiles(config=plan.config_path(name), log=node_dir / LOG_NAME,
                     pcap=node_dir / PCAP_NAME, pid_file=node_dir / PID_NAME,
                     control_socket=socket_path_for_netns(node.netns))


@dataclass
class NodeRun:
    """What ``lab start``/``lab stop`` did to one node."""

    name: str
    netns: str
    pid: int | None
    #: started | running (was already) | stopped | killed | not running
    state: str
    files: NodeFiles

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "netns": self.netns, "pid": self.pid, "state": self.state,
                **self.files.as_dict()}


# --- processes ------------------------------------------------------------------------------

def _proc_state(pid: int) -> str | None:
    """The state letter of *pid* (``R``, ``S``, ``Z`` ...), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The state follows the parenthesised command name, which may contain spaces.
    return text.rsplit(")", 1)[1].split()[0]


def is_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie's TUN and sockets are already closed)."""
    return _proc_state(pid) not in (None, "Z", "X")


def _netns_identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_vmip_run(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"run" in argv and any(b"vmip" in arg for arg in argv)


def _pid_from_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _reap(pid: int) -> None:
    """Collect *pid*'s exit status if it is our child (an in-process ``lab start``)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def running_pid(plan: LabPlan, name: str) -> int | None:
    """The pid of the vmip node running in *name*'s namespace, or None."""
    node = plan.node(name)
    files = node_files(plan, name)
    pid = _pid_from_file(files.pid_file)
    # The pid file alone could name a recycled pid: check namespace and command.
    if pid is not None and is_alive(pid) and _is_vmip_run(pid):
        wanted = _netns_identity(netns_path(node.netns))
        if wanted is not None and _netns_identity(f"/proc/{pid}/ns/net") == wanted:
            return pid
    return _pid_from_control_socket(files.control_socket)


def _pid_from_control_socket(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        status = ControlClient(path, timeout=PROBE_TIMEOUT).call("status")
    except ControlError:
        return None
    pid = status.get("pid") if isinstance(status, dict) else None
    return pid if isinstance(pid, int) else None


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise LabError(f"cannot signal the vmip node {pid}: {exc.strerror}") from exc


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    remaining = set(pids)
    deadline = time.monotonic() + timeout
    while remaining:
        for pid in list(remaining):
            _reap(pid)
            if not is_alive(pid):
                remaining.discard(pid)
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    return remaining


def _remove_stale_socket(path: Path) -> None:
    """Unlink a control socket nothing listens on (left by a node that was killed)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    if _pid_from_control_socket(path) is None:
        path.unlink(missing_ok=True)


# --- start ----------------------------------------------------------------------------------

def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last *lines* lines of *path* written after byte *offset*."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) if text else "(the log is empty)"


def node_command(files: NodeFiles) -> list[str]:
    return [sys.executable, "-m", "vmip", "run", "-c", str(files.config),
            "--pcap-wire", str(files.pcap)]


def _child_environment() -> dict[str, str]:
    # The node must import this very vmip, also when it is run from a source
    # tree rather than installed: put its parent directory first on the path.
    source_root = str(Path(vmip.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [source_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


@dataclass
class _Starting:
    name: str
    process: subprocess.Popen
    log_offset: int


def _launch(plan: LabPlan, name: str) -> _Starting:
    node = plan.node(name)
    files = node_files(plan, name)
    command = node_command(files)
    # The node creates its capture exclusively (never through an existing
    # name); each start begins a new one, as it always did.
    files.pcap.unlink(missing_ok=True)
    with open(files.log, "ab") as log_file:
        os.fchmod(log_file.fileno(), 0o600)
        log_file.write(f"=== vmip lab start {time.strftime('%Y-%m-%dT%H:%M:%S')}: "
                       f"{' '.join(command)} (netns {node.netns})\n".encode())
        log_file.flush()
        offset = log_file.tell()
        process = popen_in(node.netns, command, private_sysfs=True,
                           stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                           start_new_session=True, close_fds=True, cwd=plan.node_dir(name),
                           env=_child_environment())
    files.pid_file.write_text(f"{process.pid}\n")
    log.info("lab node started", node=name, pid=process.pid, log=str(files.log))
    return _Starting(name, process, offset)


def _ready(starting: _Starting, files: NodeFiles) -> bool:
    return _pid_from_control_socket(files.control_socket) == starting.process.pid


def _abandon(starting: _Starting, files: NodeFiles) -> None:
    """Stop a node that failed to come up, so no half-started node is left."""
    process = starting.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(KILL_TIMEOUT)
    files.pid_file.unlink(missing_ok=True)
    _remove_stale_socket(files.control_socket)


def _wait_ready(plan: LabPlan, pending: list[_Starting], timeout: float) -> None:
    """Until every started node answers ``status``; fail with its log if one dies."""
    deadline = time.monotonic() + timeout
    waiting = list(pending)
    while waiting:
        for starting in list(waiting):
            files = node_files(plan, starting.name)
            returncode = starting.process.poll()
            if returncode is not None:
                tail = log_tail(files.log, starting.log_offset)
                files.pid_file.unlink(missing_ok=True)
                _remove_stale_socket(files.control_socket)
                # The nodes still starting are left to come up: 'lab stop' finds them.
                raise LabError(f"the vmip node {starting.name} exited with status {returncode} "
                               f"while starting; the end of {files.log}:\n{tail}")
            if _ready(starting, files):
                waiting.remove(starting)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            stuck = waiting[0]
            files = node_files(plan, stuck.name)
            tail = log_tail(files.log, stuck.log_offset)
            for starting in waiting:
                _abandon(starting, node_files(plan, starting.name))
            raise LabError(f"the vmip node {stuck.name} did not answer on "
                           f"{files.control_socket} within {timeout:g} s (stopped it); "
                           f"the end of {files.log}:\n{tail}")
        time.sleep(_POLL_INTERVAL)


def start_nodes(plan: LabPlan, names: Iterable[str] | None = None, *,
                timeout: float = READY_TIMEOUT) -> list[NodeRun]:
    """Start every node of *names* (default: all) that does not run yet; wait until ready.

    A node already running is left alone.  If one fails, the error carries
    the end of its log; the nodes that did come up keep running.
    """
    wanted = list(names) if names is not None else [node.name for node in plan.nodes]
    runs: dict[str, NodeRun] = {}
    pending: list[_Starting] = []
    for name in wanted:
        node = plan.node(name)
        files = node_files(plan, name)
        pid = running_pid(plan, name)
        if pid is not None:
            runs[name] = NodeRun(name, node.netns, pid, "running", files)
            continue
        files.pid_file.unlink(missing_ok=True)
        starting = _launch(plan, name)
        pending.append(starting)
        runs[name] = NodeRun(name, node.netns, starting.process.pid, "started", files)
    _wait_ready(plan, pending, timeout)
    return [runs[name] for name in wanted]


# --- stop -----------------------------------------------------------------------------------

def stop_nodes(plan: LabPlan, names: Iterable[str] | None = None, *,
               timeout: float = STOP_TIMEOUT) -> list[NodeRun]:
    """SIGTERM every running node, SIGKILL those still there after *timeout*.

    SIGTERM lets a node remove its TUN and control socket itself; after a
    SIGKILL the kernel removes the TUN and this removes the stale socket.
    """
    wanted = list(names) if names is not None else [node.name for node in plan.nodes]
    pids = {name: running_pid(plan, name) for name in wanted}
    for name, pid in pids.items():
        if pid is not None:
            log.info("stopping lab node", node=name, pid=pid)
            _signal(pid, signal.SIGTERM)
    stubborn = _wait_gone([pid for pid in pids.values() if pid is not None], timeout)
    for pid in stubborn:
        log.warning("lab node ignored SIGTERM, killing it", pid=pid)
        _signal(pid, signal.SIGKILL)
    still_there = _wait_gone(stubborn, KILL_TIMEOUT)
    if still_there:
        raise LabError("vmip nodes did not exit after SIGKILL: "
                       + ", ".join(str(pid) for pid in sorted(still_there)))
    runs = []
    for name, pid in pids.items():
        files = node_files(plan, name)
        files.pid_file.unlink(missing_ok=True)
        _remove_stale_socket(files.control_socket)
        state = "not running" if pid is None else "killed" if pid in stubborn else "stopped"
        runs.append(NodeRun(name, plan.node(name).netns, pid, state, files))
    return runs


def remove_stale_sockets(plan: LabPlan) -> None:
    """After every lab process is gone: drop control sockets a killed node left."""
    for node in plan.nodes:
        _remove_stale_socket(node_files(plan, node.name).control_socket)
