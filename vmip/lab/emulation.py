"""Per-link delay, jitter, loss and rate for the lab, with or without netem.

The lab's router namespace forwards every packet between nodes, so shaping
is applied there, per (interface, direction):

- ``"in"``  — packets the router forwards that arrived on ``ifname``
  (``iptables -t mangle -I FORWARD -i ifname``);
- ``"out"`` — packets the router forwards out of ``ifname`` (``-o ifname``);
- ``"both"`` — the two above, each with the same profile.

Backends (see docs/link-emulation.md):

- ``nfqueue`` (used on this kernel, which has no netem): one IPv4 and one
  IPv6 rule send the packets to an NFQUEUE queue read by a shaper process
  (:mod:`vmip.lab.shaper`) that runs inside the namespace.  The rules sit in
  the *mangle* FORWARD chain, so an accepted packet still goes through the
  filter table afterwards (an NFQUEUE verdict skips the rest of its own chain).
  ``--queue-bypass`` makes the kernel accept packets while no process listens,
  so a dead shaper never blackholes the lab.
- ``netem``: when the kernel has it, the ``"out"`` direction is a root netem
  qdisc on ``ifname``.  netem only acts on egress, and ``"in"`` would need an
  IFB device, so ``"in"`` stays on NFQUEUE even then.

State (one JSON record per shaped (ifname, direction), plus the shaper's log
and status files) lives under ``state_dir/link-emulation/<netns>/``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmip.errors import UsageError, VmipError
from vmip.log import get_logger

log = get_logger(__name__)

DIRECTIONS = ("in", "out")
BACKENDS = ("auto", "nfqueue", "netem")
QUEUE_BASE = 6275  # first NFQUEUE number we use in a namespace (any free one works)
QUEUE_SPAN = 1000
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 20.0
RULE_COMMENT_PREFIX = "vmip-emu"
DEFAULT_LIMIT = 1000

_NETNS_DIR = Path("/var/run/netns")
_IPTABLES = ("iptables", "ip6tables")
_INSTALL_HINT = "apt-get install iptables"


class EmulationError(VmipError):
    """Shaping could not be applied or removed."""


class EmulationUnavailable(EmulationError):
    """A tool or kernel feature the emulation needs is missing."""


class LinkProfileError(UsageError):
    """A link profile or its arguments are out of range."""


@dataclass(frozen=True)
class LinkProfile:
    """One direction of a link: delay and jitter in ms, loss a fraction 0..1,
    rate in Mbit/s (None: no rate limit).  ``LinkProfile()`` means "no shaping"."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "loss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise LinkProfileError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.loss > 1:
            raise LinkProfileError(
                f"loss is a fraction between 0 and 1 (0.1 = 10%), not {self.loss!r}")
        if self.rate_mbit is not None:
            value = self.rate_mbit
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise LinkProfileError(
                    f"rate_mbit must be a number > 0 (or None for no limit), not {value!r}")

    @property
    def is_neutral(self) -> bool:
        return (self.delay_ms == 0 and self.jitter_ms == 0 and self.loss == 0
                and self.rate_mbit is None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkProfile:
        try:
            return cls(**data)
        except TypeError as exc:
            raise LinkProfileError(f"bad link profile {data!r}: {exc}") from exc


# --- small helpers ------------------------------------------------------------

def _check_names(netns: str, ifname: str | None = None) -> None:
    if not netns or "/" in netns or netns in (".", "..") or netns != netns.strip():
        raise LinkProfileError(f"bad namespace name {netns!r}")
    # Linux interface names: at most 15 bytes, no '/', ':' or whitespace (dev_valid_name).
    if ifname is not None and (not re.fullmatch(r"[^/:\s]{1,15}", ifname)
                               or ifname in (".", "..")):
        raise LinkProfileError(f"bad interface name {ifname!r}")


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction in DIRECTIONS:
        return (direction,)
    raise LinkProfileError(f"direction must be 'in', 'out' or 'both', not {direction!r}")


def _require_netns(netns: str) -> None:
    if not (_NETNS_DIR / netns).exists():
        raise EmulationError(f"network namespace {netns!r} does not exist")


def _ns_dir(state_dir: Path, netns: str) -> Path:
    # Absolute: the shaper is given paths inside it and may run elsewhere.
    return Path(state_dir).resolve() / "link-emulation" / netns


def status_path(state_dir: Path, netns: str, ifname: str, direction: str) -> Path:
    """Where the shaper of (ifname, direction) writes its counters (SIGUSR1, exit)."""
    return _ns_dir(state_dir, netns) / f"{ifname}.{direction}.status"


@contextlib.contextmanager
def _locked(state_dir: Path, netns: str) -> Iterator[Path]:
    """Serialise concurrent callers on one namespace (queue numbers, records)."""
    directory = _ns_dir(state_dir, netns)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory


def _run_in_ns(netns: str, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              check=False)
    except FileNotFoundError as exc:
        raise EmulationUnavailable("the 'ip' command is missing (apt-get install iproute2)") from exc
    except subprocess.TimeoutExpired as exc:
        raise EmulationError(f"{shlex.join(cmd)} took more than {COMMAND_TIMEOUT_S} s") from exc
    if check and done.returncode != 0:
        raise EmulationError(f"{shlex.join(argv)} in {netns} failed: {done.stderr.strip()}")
    return done


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- processes ------------------------------------------------------------------

# Shapers this process started, so they can be reaped (no zombies in a
# long-lived caller such as a test session).
_children: dict[int, subprocess.Popen] = {}


def _start_time(pid: int) -> int | None:
    """Process start time (field 22 of /proc/PID/stat) or None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _process_alive(pid: int, start_time: int) -> bool:
    """Alive and still the same process (a recycled pid has another start time)."""
    return _start_time(pid) == start_time


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_TIMEOUT_S)


def _wait_exit(pidfd: int, timeout: float) -> bool:
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


def _stop_process(pid: int, start_time: int) -> None:
    """SIGTERM (the shaper then accepts what it holds), SIGKILL if it lingers.

    A pidfd pins the process, so a recycled pid is never signalled, and its
    readability is the exit event we wait for (bounded, no polling)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        _reap(pid)
        return
    try:
        if _start_time(pid) != start_time:
            return
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not _wait_exit(pidfd, STOP_TIMEOUT_S):
            log.warning("shaper ignored SIGTERM, killing it", pid=pid)
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            _wait_exit(pidfd, STOP_TIMEOUT_S)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
        _reap(pid)


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _start_shaper(netns: str, directory: Path, ifname: str, direction: str, queue: int,
                  profile: LinkProfile, seed: int | None) -> tuple[int, int]:
    """Start a shaper in ``netns`` and wait for 'ready' on a pipe (bounded)."""
    status_file = directory / f"{ifname}.{direction}.status"  # as status_path()
    argv = [sys.executable, "-m", "vmip.lab.shaper", "--queue", str(queue),
            "--delay-ms", repr(profile.delay_ms), "--jitter-ms", repr(profile.jitter_ms),
            "--loss", repr(profile.loss), "--limit", str(DEFAULT_LIMIT),
            "--status-file", str(status_file)]
    if profile.rate_mbit is not None:
        argv += ["--rate-mbit", repr(profile.rate_mbit)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    read_end, write_end = os.pipe()
    argv += ["--ready-fd", str(write_end)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
    log_path = directory / f"{ifname}.{direction}.log"
    try:
        with open(log_path, "ab") as log_file:
            # `ip netns exec` execs the command, so the pid is the shaper's own.
            child = subprocess.Popen(["ip", "netns", "exec", netns, *argv],
                                     stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                     pass_fds=(write_end,), start_new_session=True, env=env)
    except FileNotFoundError as exc:
        os.close(read_end)
        raise EmulationUnavailable("the 'ip' command is missing (apt-get install iproute2)") from exc
    finally:
        os.close(write_end)
    _children[child.pid] = child
    try:
        answer = _read_ready(read_end, READY_TIMEOUT_S)
    finally:
        os.close(read_end)
    start_time = _start_time(child.pid)
    if not answer.startswith("ready") or start_time is None:
        if start_time is not None:
            _stop_process(child.pid, start_time)
        _reap(child.pid)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        if answer.startswith(f"error errno={errno.EPERM} "):
            raise _QueueTaken(f"queue {queue} in {netns} is bound by another process")
        raise EmulationError(f"shaper for {ifname} {direction} in {netns} did not start "
                             f"({answer or 'no answer'}): {' | '.join(tail)}")
    return child.pid, start_time


def _read_ready(fd: int, timeout: float) -> str:
    """One line from the readiness pipe; '' on EOF (the shaper died) or timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return ""
        chunk = os.read(fd, 512)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


# --- rules -------------------------------------------------------------------

def _rule_spec(ifname: str, direction: str, queue: int) -> list[str]:
    match = "-i" if direction == "in" else "-o"
    return [match, ifname, "-m", "comment", "--comment",
            f"{RULE_COMMENT_PREFIX} {ifname} {direction}",
            "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]


def _insert_rules(netns: str, spec: list[str]) -> list[list[str]]:
    inserted: list[list[str]] = []
    try:
        for tool in _IPTABLES:
            # Insert at the head: a new rule takes over at once from an old
            # one it replaces, and no earlier mangle rule can skip it.
            _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-I", "FORWARD", "1", *spec])
            inserted.append([tool, "-w", "-t", "mangle", "-D", "FORWARD", *spec])
    except EmulationError:
        _delete_rules(netns, inserted)
        raise
    return inserted


def _delete_rules(netns: str, delete_commands: list[list[str]]) -> None:
    for command in delete_commands:
        _run_in_ns(netns, command, check=False)


def _rules_present(netns: str, delete_commands: list[list[str]]) -> bool:
    for command in delete_commands:
        check = ["-C" if word == "-D" else word for word in command]
        if _run_in_ns(netns, check, check=False).returncode != 0:
            return False
    return True


def _delete_stray_rules(netns: str) -> None:
    """Remove every rule carrying our comment (left by a crash or lost state)."""
    for tool in _IPTABLES:
        listing = _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-S", "FORWARD"], check=False)
        for line in listing.stdout.splitlines():
            if f'"{RULE_COMMENT_PREFIX} ' not in line or not line.startswith("-A "):
                continue
            words = shlex.split(line)
            _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-D", *words[1:]], check=False)


_nfqueue_checked: set[str] = set()


def check_nfqueue(netns: str) -> None:
    """iptables/ip6tables exist and can install an NFQUEUE rule in ``netns``."""
    if netns in _nfqueue_checked:
        return
    for tool in _IPTABLES:
        if shutil.which(tool) is None:
            raise EmulationUnavailable(
                f"{tool} is missing; link emulation needs it for NFQUEUE ({_INSTALL_HINT})")
    chain = "vmip-emu-probe"
    for tool in _IPTABLES:
        _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-N", chain], check=False)
        try:
            done = _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-A", chain, "-j", "NFQUEUE",
                                      "--queue-num", str(QUEUE_BASE), "--queue-bypass"],
                              check=False)
        finally:
            _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-F", chain], check=False)
            _run_in_ns(netns, [tool, "-w", "-t", "mangle", "-X", chain], check=False)
        if done.returncode != 0:
            raise EmulationUnavailable(
                f"{tool} cannot use the NFQUEUE target ({done.stderr.strip()}); the kernel needs "
                f"CONFIG_NETFILTER_XT_TARGET_NFQUEUE and nfnetlink_queue, userspace "
                f"needs iptables ({_INSTALL_HINT})")
    _nfqueue_checked.add(netns)


# --- netem -------------------------------------------------------------------

_netem_available: bool | None = None


def netem_available(netns: str) -> bool:
    """Probe once per process whether the kernel has netem: add a netem qdisc
    to a throw-away veth inside ``netns`` (this kernel answers ENOENT)."""
    global _netem_available
    if _netem_available is None:
        _netem_available = _probe_netem(netns)
        log.info("netem probe", available=_netem_available)
    return _netem_available


def _probe_netem(netns: str) -> bool:
    try:
        from pyroute2 import NetNS
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:
        return False
    probe = "vmipnetem0"
    try:
        with NetNS(netns) as ipr:
            with contextlib.suppress(NetlinkError):  # left over by an interrupted probe
                ipr.link("del", ifname=probe)
            ipr.link("add", ifname=probe, kind="veth", peer=probe + "p")
            try:
                index = ipr.link_lookup(ifname=probe)[0]
                ipr.tc("add", "netem", index, delay=1000)
                return True
            except NetlinkError:  # ENOENT (or EOPNOTSUPP) without netem
                return False
            finally:
                ipr.link("del", ifname=probe)
    except (NetlinkError, OSError) as exc:
        log.warning("netem probe failed", error=str(exc))
        return False


def netem_command(ifname: str, profile: LinkProfile) -> list[str]:
    """``tc`` arguments for a root netem qdisc with this profile."""
    argv = ["tc", "qdisc", "replace", "dev", ifname, "root", "netem",
            "limit", str(DEFAULT_LIMIT)]
    if profile.delay_ms or profile.jitter_ms:
        argv += ["delay", f"{profile.delay_ms}ms"]
        if profile.jitter_ms:
            argv += [f"{profile.jitter_ms}ms", "distribution", "uniform"]
    if profile.loss:
        argv += ["loss", "random", f"{profile.loss * 100}%"]
    if profile.rate_mbit is not None:
        argv += ["rate", f"{profile.rate_mbit}mbit"]
    return argv


# --- the API -----------------------------------------------------------------

def apply_profile(netns: str, ifname: str, direction: str, profile: LinkProfile,
                  state_dir: Path, *, backend: str = "auto", seed: int | None = None) -> None:
    """Shape the traffic ``netns`` forwards through ``ifname`` (see the module doc).

    ``LinkProfile()`` removes shaping; a new profile replaces the old one
    without a gap (new queue and rule first, then the old ones go); applying
    the same profile again does nothing while its shaper is alive.
    ``backend``: "auto" (netem if the kernel has it, for "out"), "nfqueue"
    or "netem"; ``seed`` makes the loss and jitter draws reproducible.
    """
    _check_names(netns, ifname)
    if not isinstance(profile, LinkProfile):
        raise LinkProfileError(f"profile must be a LinkProfile, not {type(profile).__name__}")
    directions = _directions(direction)
    if backend not in BACKENDS:
        raise LinkProfileError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    _require_netns(netns)
    with _locked(state_dir, netns) as directory:
        for one_direction in directions:
            _apply_one(netns, ifname, one_direction, profile, directory, backend, seed)


def _choose_backend(netns: str, direction: str, backend: str) -> str:
    if direction == "in":
        return "nfqueue"  # netem acts on egress only
    if backend == "netem":
        if not netem_available(netns):
            raise EmulationUnavailable("this kernel has no netem (CONFIG_NET_SCH_NETEM)")
        return "netem"
    if backend == "auto" and netem_available(netns):
        return "netem"
    return "nfqueue"


def _record_healthy(netns: str, record: dict[str, Any]) -> bool:
    if record.get("backend") == "netem":
        return True
    return (_process_alive(record["pid"], record["start_time"])
            and _rules_present(netns, record["rules"]))


def _apply_one(netns: str, ifname: str, direction: str, profile: LinkProfile,
               directory: Path, backend: str, seed: int | None) -> None:
    path = directory / f"{ifname}.{direction}.json"
    old = _read_json(path)
    if old is not None and LinkProfile.from_dict(old["profile"]) == profile \
            and old.get("seed") == seed and _record_healthy(netns, old):
        return
    if profile.is_neutral:
        if old is not None:
            _remove(netns, old)
        path.unlink(missing_ok=True)
        log.info("link shaping removed", netns=netns, ifname=ifname, direction=direction)
        return
    chosen = _choose_backend(netns, direction, backend)
    record: dict[str, Any] = {"netns": netns, "ifname": ifname, "direction": direction,
                              "profile": profile.to_dict(), "backend": chosen, "seed": seed}
    if chosen == "netem":
        if old is not None and old.get("backend") != "netem":
            _remove(netns, old)
        # `tc qdisc replace` swaps an old netem qdisc in place: nothing to remove after.
        old = None
        _run_in_ns(netns, netem_command(ifname, profile))
        record["rules"] = [["tc", "qdisc", "del", "dev", ifname, "root"]]
    else:
        check_nfqueue(netns)
        queue, pid, start_time = _start_shaper_on_free_queue(netns, directory, ifname, direction,
                                                             profile, seed)
        try:
            # Only now, with the queue bound, may packets be sent to it.
            rules = _insert_rules(netns, _rule_spec(ifname, direction, queue))
        except BaseException:
            _stop_process(pid, start_time)
            raise
        record.update(queue=queue, pid=pid, start_time=start_time, rules=rules)
        # A netem qdisc on this interface would shape a second time.
        if old is not None and old.get("backend") == "netem":
            _remove(netns, old)
            old = None
    _write_json(path, record)
    if old is not None:
        _remove(netns, old)
    log.info("link shaping applied", netns=netns, ifname=ifname, direction=direction,
             backend=chosen, **profile.to_dict())


class _QueueTaken(EmulationError):
    """Another process has this queue number bound."""


def _free_queues(directory: Path) -> Iterator[int]:
    """Queue numbers no record in this namespace uses (queues are per netns)."""
    used = set()
    for path in directory.glob("*.json"):
        record = _read_json(path)
        if record is not None and "queue" in record:
            used.add(record["queue"])
    return (queue for queue in range(QUEUE_BASE, QUEUE_BASE + QUEUE_SPAN) if queue not in used)


def _start_shaper_on_free_queue(netns: str, directory: Path, ifname: str, direction: str,
                                profile: LinkProfile, seed: int | None) -> tuple[int, int, int]:
    """Start a shaper on the first queue number that is really free: one that
    no record names may still be bound by a program we do not know about."""
    for attempt, queue in enumerate(_free_queues(directory)):
        try:
            pid, start_time = _start_shaper(netns, directory, ifname, direction, queue, profile,
                                            seed)
        except _QueueTaken:
            if attempt < 8:
                continue
            raise
        return queue, pid, start_time
    raise EmulationError("no free NFQUEUE number")


def _remove(netns: str, record: dict[str, Any]) -> None:
    """Rules first (traffic stops entering the queue), then the shaper, which
    accepts what it still holds on SIGTERM."""
    netns_exists = (_NETNS_DIR / netns).exists()
    if netns_exists:
        _delete_rules(netns, record.get("rules", []))
    if record.get("backend") != "netem" and "pid" in record:
        _stop_process(record["pid"], record["start_time"])


def current_profiles(netns: str, state_dir: Path) -> dict[tuple[str, str], LinkProfile]:
    """Profiles in effect in ``netns``: {(ifname, direction): profile}.

    A record whose shaper has died is left out: its traffic flows unshaped
    (``--queue-bypass``) until the profile is applied again."""
    _check_names(netns)
    profiles: dict[tuple[str, str], LinkProfile] = {}
    directory = _ns_dir(state_dir, netns)
    for path in sorted(directory.glob("*.json")):
        record = _read_json(path)
        if record is None or "profile" not in record:
            continue
        if record.get("backend") != "netem" and not _process_alive(record["pid"],
                                                                   record["start_time"]):
            continue
        profiles[(record["ifname"], record["direction"])] = LinkProfile.from_dict(
            record["profile"])
    return profiles


def shaper_pids(netns: str, state_dir: Path) -> dict[tuple[str, str], int]:
    """Recorded shaper process ids, for supervision and tests."""
    pids = {}
    for path in sorted(_ns_dir(state_dir, netns).glob("*.json")):
        record = _read_json(path)
        if record is not None and "pid" in record:
            pids[(record["ifname"], record["direction"])] = record["pid"]
    return pids


def shaper_status(netns: str, ifname: str, direction: str, state_dir: Path) -> dict | None:
    """The counters the shaper last wrote (on SIGUSR1 or when it stopped)."""
    return _read_json(status_path(state_dir, netns, ifname, direction))


def clear_all(netns: str, state_dir: Path) -> None:
    """Remove every shaping rule and stop every shaper of ``netns``.

    Works when the namespace is already gone (the processes are still killed:
    a shaper's netlink socket would otherwise keep the dead namespace alive)."""
    _check_names(netns)
    with _locked(state_dir, netns) as directory:
        for path in sorted(directory.glob("*.json")):
            record = _read_json(path)
            if record is not None:
                _remove(netns, record)
            path.unlink(missing_ok=True)
        if (_NETNS_DIR / netns).exists() and all(shutil.which(t) for t in _IPTABLES):
            _delete_stray_rules(netns)
    log.info("link shaping cleared", netns=netns)
