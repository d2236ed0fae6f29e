"""Two network namespaces joined by a veth, and the processes started in them.

Nothing here touches the host's network: the veth's both ends live in the
two namespaces, and every process runs inside one of them.  Addresses come
from the documentation prefixes (RFC 5737, RFC 3849).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from netbench.errors import LabError

SIDES = ("a", "b")
UNDERLAY4 = {"a": "192.0.2.1", "b": "192.0.2.2"}
UNDERLAY6 = {"a": "2001:db8:ff::1", "b": "2001:db8:ff::2"}
VETH = "bench0"
UNDERLAY_MTU = 1500
WORKDIR_PREFIX = "netbench-"


def ip(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def netns_names(prefix: str) -> dict[str, str]:
    return {side: f"{prefix}-{side}" for side in SIDES}


def existing_netns() -> set[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10,
                            check=False)
    # Lines look like "vb-a (id: 3)" or just "vb-a".
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def delete_netns(netns: str) -> None:
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10, check=False)


def signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def netns_pids(netns: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                            timeout=10, check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _stop_pids_in(netns: str, grace: float = 5.0) -> None:
    """End the processes living in *netns* (only ours can be there): TERM, then KILL."""
    pids = netns_pids(netns)
    signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = netns_pids(netns)
    signal_pids(pids, signal.SIGKILL)


def cleanup_leftovers(prefix: str) -> list[str]:
    """Remove what an interrupted run with *prefix* left behind; returns what was removed."""
    removed: list[str] = []
    present = existing_netns()
    for netns in netns_names(prefix).values():
        if netns in present:
            _stop_pids_in(netns)
            delete_netns(netns)
            removed.append(f"netns {netns}")
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{prefix}-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"dir {path}")
    return removed


class Lab:
    """Namespaces ``<prefix>-a`` and ``<prefix>-b``, their processes and a work directory."""

    def __init__(self, prefix: str, keep_workdir: bool = False) -> None:
        self.prefix = prefix
        self.netns = netns_names(prefix)
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- topology --------------------------------------------------------------

    def build(self) -> None:
        clash = set(self.netns.values()) & existing_netns()
        if clash:
            raise LabError(f"namespace(s) {', '.join(sorted(clash))} exist already: another "
                           f"run, or leftovers (remove them with --cleanup)")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{self.prefix}-"))
        for side in SIDES:
            ip("netns", "add", self.netns[side])
            self._created.append(self.netns[side])
        ip("-n", self.netns["a"], "link", "add", VETH, "type", "veth", "peer", "name", VETH,
           "netns", self.netns["b"])
        for side in SIDES:
            ns = self.netns[side]
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", VETH, "mtu", str(UNDERLAY_MTU))
            ip("-n", ns, "addr", "add", f"{UNDERLAY4[side]}/24", "dev", VETH)
            # nodad: the address is usable at once; nobody else is on this link.
            ip("-n", ns, "addr", "add", f"{UNDERLAY6[side]}/64", "dev", VETH, "nodad")
            ip("-n", ns, "link", "set", VETH, "up")

    def path(self, name: str) -> Path:
        assert self.workdir is not None, "build() first"
        return self.workdir / name

    # -- processes -------------------------------------------------------------

    def run(self, side: str, cmd: Sequence[str], *, timeout: float = 30,
            env: dict[str, str] | None = None, umask: int = -1,
            ) -> subprocess.CompletedProcess[str]:
        """Run *cmd* to completion inside the namespace of *side*."""
        return subprocess.run(["ip", "netns", "exec", self.netns[side], *cmd],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              umask=umask, check=False)

    def spawn(self, side: str, cmd: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None, stdout_pipe: bool = False,
              ) -> subprocess.Popen[bytes]:
        """Start a long-lived process in the namespace of *side*; teardown ends it.

        Each gets its own session so a Ctrl-C on the terminal reaches only the
        harness, which then stops them in order.
        """
        with contextlib.ExitStack() as stack:
            # The child keeps its own copy of the log descriptor; ours closes here.
            out = stack.enter_context(open(log, "wb")) if log is not None else subprocess.DEVNULL
            proc = subprocess.Popen(["ip", "netns", "exec", self.netns[side], *cmd],
                                    stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if stdout_pipe else out,
                                    stderr=subprocess.STDOUT if log is not None
                                    else subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL after *grace* seconds."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def teardown(self) -> None:
        """Stop every process (newest first), delete the namespaces and the work directory."""
        for proc in reversed(list(self._procs)):
            try:
                self.stop(proc)
            except (OSError, subprocess.SubprocessError):
                pass
        for netns in reversed(self._created):
            try:
                # Anything that escaped its process group (a daemon's helper) goes too.
                _stop_pids_in(netns, grace=2.0)
            except (OSError, subprocess.SubprocessError):
                pass
            delete_netns(netns)
        self._created.clear()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bool:
    """Read *proc*'s stdout pipe until a line contains *needle*; False on EOF or timeout."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffered = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        chunk = os.read(fd, 4096)
        if not chunk:
            return False
        buffered = (buffered + chunk)[-65536:]
        if needle in buffered:
            return True


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll *predicate* until it is true or *timeout* seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
