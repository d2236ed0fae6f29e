"""CPU accounting during one iperf3 test (``tools/bench/run --cpu``).

What it answers: with both tunnel endpoints, iperf3's client and server on
one machine, which process used how much CPU, and how much of the machine
stayed idle (a core a multi-queue design could use).  Sources, all deltas
over the test: ``/proc/stat`` (per-CPU jiffies: idle + iowait against the
rest), ``/proc/PID/stat`` (utime + stime of every process in the two
namespaces) and ``getrusage(RUSAGE_CHILDREN)`` for iperf3, which starts and
ends inside the window.  Parsers are pure; malformed text raises ParseError.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netbench.errors import ParseError

#: Clock ticks per second of /proc's utime/stime and /proc/stat.
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    """One ``cpuN`` line of /proc/stat, in ticks."""

    idle: int      # idle + iowait: time nothing ran
    busy: int      # user, nice, system, irq, softirq, steal
    #: Of busy: interrupts and softirqs (packet processing charged to no process).
    irq: int = 0

    @property
    def total(self) -> int:
        return self.idle + self.busy


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """Per-CPU times (``cpu0``, ``cpu1``, ...; the summed ``cpu`` line too)."""
    cpus: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu"):
            continue
        if len(fields) < 5 or not all(f.isdigit() and len(f) < 20 for f in fields[1:]):
            raise ParseError(f"/proc/stat: malformed line {line[:80]!r}")
        values = [int(f) for f in fields[1:9]]
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        cpus[fields[0]] = CpuTimes(idle=idle + iowait,
                                   busy=user + nice + system + irq + softirq + steal,
                                   irq=irq + softirq)
    if not any(name != "cpu" for name in cpus):
        raise ParseError("/proc/stat has no cpuN line")
    return cpus


def parse_pid_stat(text: str) -> tuple[str, int]:
    """(comm, utime + stime in ticks) from one /proc/PID/stat."""
    # comm is in parentheses and may hold spaces or ')': the last ')' ends it.
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ParseError("/proc/PID/stat: no (comm)")
    rest = text[close_paren + 1:].split()
    # After comm: state(3) ... utime is field 14, stime 15 (proc(5)); rest[0] is field 3.
    if len(rest) < 13 or not rest[11].isdigit() or not rest[12].isdigit():
        raise ParseError("/proc/PID/stat: no utime/stime")
    return text[open_paren + 1:close_paren], int(rest[11]) + int(rest[12])


def process_label(comm: str, cmdline: list[str], side: str) -> str:
    """``vmip-a`` for a vmip node (its config's name), else ``comm@side``."""
    if "-c" in cmdline:
        index = cmdline.index("-c")
        if index + 1 < len(cmdline) and cmdline[index + 1].endswith(".toml"):
            return Path(cmdline[index + 1]).stem
    return f"{comm}@{side}"


@dataclass(frozen=True)
class _Snapshot:
    at: float
    cpus: dict[str, CpuTimes]
    pids: dict[int, tuple[str, int]]     # pid -> (label, ticks)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _pid_entry(pid: int, side: str) -> tuple[str, int] | None:
    try:
        comm, ticks = parse_pid_stat(_read(f"/proc/{pid}/stat"))
        cmdline = _read(f"/proc/{pid}/cmdline").split("\0")
    except (OSError, ParseError):
        return None     # gone in between
    return process_label(comm, cmdline, side), ticks


def summarize_window(before: _Snapshot, after: _Snapshot, iperf3_ticks: int) -> dict[str, Any]:
    """The figures of one window (percent of one core; pure)."""
    wall = max(after.at - before.at, 1e-6)
    per_cpu = {}
    idle_ticks = total_ticks = irq_ticks = 0
    for name, end in after.cpus.items():
        start = before.cpus.get(name)
        if name == "cpu" or start is None:
            continue
        idle, total = end.idle - start.idle, end.total - start.total
        idle_ticks, total_ticks = idle_ticks + idle, total_ticks + total
        irq_ticks += end.irq - start.irq
        per_cpu[name] = round(100.0 * (1 - idle / total), 1) if total > 0 else None
    cpus = len(per_cpu)
    # Both in units of one core's time over the window.
    idle_cores = cpus * idle_ticks / total_ticks if total_ticks > 0 else None
    processes: dict[str, float] = {}
    for pid, (label, ticks) in after.pids.items():
        if pid in before.pids:
            used = ticks - before.pids[pid][1]
            processes[label] = processes.get(label, 0.0) + round(100.0 * used / TICKS / wall, 1)
    iperf3 = round(100.0 * iperf3_ticks / TICKS / wall, 1)
    busy = None if idle_cores is None else round(100.0 * (cpus - idle_cores), 1)
    listed = sum(processes.values()) + iperf3
    return {
        "wall_s": round(wall, 3),
        "cpus": cpus,
        "busy_pct_per_cpu": per_cpu,
        "idle_cores": None if idle_cores is None else round(idle_cores, 3),
        "busy_pct": busy,
        "processes_pct": dict(sorted(processes.items(), key=lambda kv: -kv[1])),
        "iperf3_pct": iperf3,
        # Interrupts and softirqs (network receive work), whoever they interrupted.
        "irq_pct": None if total_ticks <= 0 else round(100.0 * cpus * irq_ticks / total_ticks, 1),
        # Busy time not charged to a listed process: irq_pct and every other
        # program on the machine.
        "rest_pct": None if busy is None else round(busy - listed, 1),
    }


class CpuProbe:
    """One measurement window: ``begin()`` before the test, ``end()`` after it."""

    def __init__(self, pids_of: Callable[[], Mapping[int, str]],
                 read: Callable[[str], str] = _read) -> None:
        self._pids_of = pids_of        # pid -> side, the namespaces' processes
        self._read = read
        self._before: _Snapshot | None = None
        self._sides: dict[int, str] = {}
        self._children = 0

    def _children_ticks(self) -> int:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return round((usage.ru_utime + usage.ru_stime) * TICKS)

    def _snapshot(self, sides: Mapping[int, str]) -> _Snapshot:
        pids = {}
        for pid, side in sides.items():
            entry = _pid_entry(pid, side)
            if entry is not None:
                pids[pid] = entry
        return _Snapshot(time.monotonic(), parse_proc_stat(self._read("/proc/stat")), pids)

    def begin(self) -> None:
        # Listing the namespaces' processes runs `ip`: before the children's count.
        self._sides = dict(self._pids_of())
        self._before = self._snapshot(self._sides)
        self._children = self._children_ticks()

    def end(self) -> dict[str, Any]:
        """The window's figures; iperf3 must have been reaped (waited for) by now."""
        assert self._before is not None, "end() without begin()"
        children = self._children_ticks() - self._children
        after = self._snapshot(self._sides)
        return summarize_window(self._before, after, children)


def cpu_line(figures: dict[str, Any]) -> str:
    """One progress line: idle cores, then who used what."""
    parts = [f"idle {figures['idle_cores']:.2f} of {figures['cpus']} cores"
             if figures["idle_cores"] is not None else "idle ?"]
    parts += [f"{name} {pct:.0f}%" for name, pct in figures["processes_pct"].items() if pct >= 1]
    parts.append(f"iperf3 {figures['iperf3_pct']:.0f}%")
    if figures["rest_pct"] is not None:
        parts.append(f"rest {figures['rest_pct']:.0f}% (of it irq+softirq "
                     f"{figures['irq_pct']:.0f}%)")
    return ", ".join(parts)
