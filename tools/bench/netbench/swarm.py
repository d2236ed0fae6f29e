"""tools/bench/swarm: one real vmip home agent, N emulated mobile nodes.

Builds two namespaces of its own (``<prefix>-ha``, ``<prefix>-mn``, prefix
``vsw<pid>`` by default, never the lab's ``vmip-``) joined by one veth,
writes the HA's config for N MNs (:mod:`netbench.swarm_config`), starts
``python -m vmip run`` in the HA namespace (optionally under cProfile),
emulates the MNs from this process with a UDP socket opened in the MN
namespace (:mod:`netbench.swarm_mn`), and reports JSON: bindings held,
the highest BU rate with no BA lost, BU -> BA times, and the HA's memory
and CPU from /proc.  Everything it starts is stopped and removed on exit,
failure and signals included; ``--cleanup`` removes what a killed run left.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from netbench.errors import BenchError, LabError, SetupError
from netbench.lab import delete_netns, existing_netns, ip, netns_pids, signal_pids, tail
from netbench.swarm_config import (
    HA_UNDERLAY,
    LINK_NAME,
    MN_UNDERLAY,
    OVERLAY_PORT,
    make_mns,
    write_ha_files,
)
from netbench.swarm_mn import Swarm, register_all, run_step

REPO = Path(__file__).resolve().parents[3]
WORKDIR_PREFIX = "vswarm-"
NETNS_RE = re.compile(r"^vsw\d+-(ha|mn)$")
DEFAULT_RATES = (25, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000, 4000)
#: A step is sustained when at least this share of its BAs came back within the step.
KEEP_UP = 0.95
#: The project's targets (docs/scale.md).
TARGET_BINDINGS = 10_000
TARGET_BU_PER_S = 2_000
TARGET_P99_MS = 50.0
TARGET_BYTES_PER_BINDING = 4096
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc ------------------------------------------------------------------------------

def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (proc(5): fields 14 and 15, after the command in parentheses)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def parse_rates(text: str) -> list[float]:
    rates = [float(word) for word in text.split(",") if word.strip()]
    if not rates or any(rate <= 0 for rate in rates) or rates != sorted(rates):
        raise ValueError("rates must be positive and increasing, e.g. 100,200,400")
    return rates


def sustained(step: dict) -> bool:
    """No BA lost, the rate really offered, and the HA kept pace: at least KEEP_UP of the
    BAs came back while the step ran (a queue that only grows would lose nothing in a
    few seconds but answer later and later)."""
    return (step["lost"] == 0 and step["sent"] > 0 and step["answered"] == step["sent"]
            and not step.get("behind", False)
            and step["answered_in_step"] >= KEEP_UP * step["sent"])


def highest_sustained(steps: list[dict], *, p99_limit_ms: float | None = None) -> dict | None:
    """The step of highest offered rate that was sustained (and had p99 within the limit),
    among the steps before the first one that was not."""
    best = None
    for step in steps:
        ok = sustained(step)
        if ok and p99_limit_ms is not None:
            p99 = step["bu_ba_ms"]["p99"]
            ok = p99 is not None and p99 <= p99_limit_ms
        if not ok:
            break
        best = step
    return best


# --- namespaces and the HA process ----------------------------------------------------------

def cleanup_leftovers() -> list[str]:
    """Stop and remove every swarm namespace and work dir (names only this tool uses)."""
    removed = []
    for netns in sorted(existing_netns()):
        if NETNS_RE.match(netns):
            pids = netns_pids(netns)
            signal_pids(pids, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = netns_pids(netns)
            signal_pids(pids, signal.SIGKILL)
            delete_netns(netns)
            removed.append(f"netns {netns}")
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"dir {path}")
    return removed


class SwarmLab:
    """The two namespaces, the veth, the work dir and the HA process; teardown() undoes all."""

    def __init__(self, prefix: str, keep_workdir: bool = False) -> None:
        self.ns_ha, self.ns_mn = f"{prefix}-ha", f"{prefix}-mn"
        self.keep_workdir = keep_workdir
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{prefix}-"))
        os.chmod(self.workdir, 0o700)
        self._created: list[str] = []
        self.ha: subprocess.Popen[bytes] | None = None

    def build(self) -> None:
        clash = {self.ns_ha, self.ns_mn} & existing_netns()
        if clash:
            raise LabError(f"namespace(s) {', '.join(sorted(clash))} exist already "
                           "(remove leftovers with --cleanup)")
        for netns in (self.ns_ha, self.ns_mn):
            ip("netns", "add", netns)
            self._created.append(netns)
        ip("-n", self.ns_ha, "link", "add", LINK_NAME, "type", "veth", "peer", "name",
           LINK_NAME, "netns", self.ns_mn)
        for netns, address in ((self.ns_ha, HA_UNDERLAY), (self.ns_mn, MN_UNDERLAY)):
            ip("-n", netns, "link", "set", "lo", "up")
            ip("-n", netns, "addr", "add", f"{address}/24", "dev", LINK_NAME)
            ip("-n", netns, "link", "set", LINK_NAME, "up")

    def start_ha(self, config: Path, control: Path, *, profile: Path | None) -> None:
        python = [sys.executable]
        if profile is not None:
            # cProfile writes its file when the HA returns from SIGTERM (vmip.node.runtime).
            python += ["-m", "cProfile", "-o", str(profile)]
        cmd = ["ip", "netns", "exec", self.ns_ha, *python, "-m", "vmip", "run", "-c",
               str(config), "--control-socket", str(control)]
        # The child keeps its own copy of the log descriptor; ours closes here.
        with open(self.workdir / "ha.log", "wb") as log:
            self.ha = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=REPO,
                                       start_new_session=True)

    def stop_ha(self, grace: float) -> int | None:
        proc, self.ha = self.ha, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except ProcessLookupError:
                pass
        return proc.returncode

    def mn_socket(self) -> socket.socket:
        """A UDP socket in the MN namespace (this thread enters it just to create it)."""
        from vmip.lab.netns import entered

        with entered(self.ns_mn):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.bind((MN_UNDERLAY, 0))
        sock.setblocking(False)
        return sock

    def teardown(self) -> None:
        try:
            self.stop_ha(grace=30)
        except (OSError, subprocess.SubprocessError):
            pass
        for netns in reversed(self._created):
            pids = netns_pids(netns)
            signal_pids(pids, signal.SIGKILL)
            delete_netns(netns)
        self._created.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def control_call(path: Path, cmd: str, timeout: float = 60.0) -> Any:
    from vmip.control.client import ControlClient

    return ControlClient(path, timeout=timeout).call(cmd)


def wait_ready(lab: SwarmLab, control: Path, timeout: float) -> float:
    """Seconds until the HA's control socket answers; SetupError on exit or timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if lab.ha is None or lab.ha.poll() is not None:
            raise SetupError("the HA exited during start-up:\n" + tail(lab.workdir / "ha.log"))
        if control.exists():
            with contextlib.suppress(Exception):   # not ready yet, whatever the reason
                control_call(control, "status", timeout=5)
                return time.monotonic() - start
        time.sleep(0.2)
    raise SetupError(f"the HA did not answer on its control socket within {timeout:.0f} s "
                     f"(raise --start-timeout):\n" + tail(lab.workdir / "ha.log"))


def profile_rows(path: Path, limit: int = 40) -> list[dict]:
    """The HA's profile, by cumulative time: file:function, calls, tottime, cumtime."""
    stats = pstats.Stats(str(path))
    rows = []
    for (file, line, function), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append({"function": f"{_short(file)}:{line}:{function}", "calls": calls,
                     "tottime_s": round(tottime, 4), "cumtime_s": round(cumtime, 4)})
    rows.sort(key=lambda row: row["cumtime_s"], reverse=True)
    return rows[:limit]


def _short(file: str) -> str:
    marker = "/vmip/"
    return "vmip/" + file.rsplit(marker, 1)[1] if marker in file else file


# --- one run -------------------------------------------------------------------------------

def measure(args: argparse.Namespace, progress: Callable[[str], None]) -> dict:
    started = time.monotonic()
    deadline = started + args.time_limit
    prefix = args.ns_prefix or f"vsw{os.getpid()}"
    load_before = os.getloadavg()
    lab = SwarmLab(prefix, keep_workdir=args.keep_workdir)
    result: dict[str, Any] = {"mns": args.mns}
    swarm = None
    try:
        lab.build()
        t0 = time.monotonic()
        mns = make_mns(args.mns, tunnel=args.tunnel_sas)
        control = lab.workdir / "ha.sock"
        config = write_ha_files(mns, lab.workdir, control_socket=control,
                                state_dir=lab.workdir / "state", log_level=args.log_level)
        provision_s = time.monotonic() - t0
        progress(f"provisioned {args.mns} MNs in {provision_s:.1f} s "
                 f"({config.stat().st_size} bytes of config)")
        profile = lab.workdir / "ha.prof" if args.profile else None
        lab.start_ha(config, control, profile=profile)
        startup_s = wait_ready(lab, control, min(args.start_timeout, deadline - time.monotonic()))
        pid = lab.ha.pid
        status = control_call(control, "status")
        rss_start = proc_rss_bytes(pid)
        cpu_start = proc_cpu_seconds(pid)
        progress(f"HA ready in {startup_s:.1f} s (pid {pid}, {status['sas']} SAs, "
                 f"{status['policies']} policies, RSS {rss_start >> 20} MiB)")

        swarm = Swarm(mns, lab.mn_socket(), (HA_UNDERLAY, OVERLAY_PORT))
        rss_before = proc_rss_bytes(pid)
        cpu0 = proc_cpu_seconds(pid)
        registration = register_all(swarm, window=args.window,
                                    timeout=max(5.0, min(args.register_timeout,
                                                         deadline - time.monotonic())))
        registration["ha_cpu_s"] = round(proc_cpu_seconds(pid) - cpu0, 3)
        rss_after = proc_rss_bytes(pid)
        progress(f"registered {registration['bound']}/{args.mns} in "
                 f"{registration['seconds']:.1f} s ({registration['bu_per_s']} BU/s)")
        mobility = control_call(control, "mobility")
        bindings = len(mobility["ha"]["binding_cache"])

        rounds = []
        for round_index in range(args.rounds):
            steps = []
            for rate in args.rates:
                if time.monotonic() + args.step_seconds + args.grace + 5 > deadline:
                    progress("time limit reached: no more steps")
                    break
                marks: dict[str, float] = {}
                before = proc_cpu_seconds(pid)
                t_start = time.monotonic()

                def on_sent(marks=marks, before=before, t_start=t_start) -> None:
                    marks["cpu_step"] = proc_cpu_seconds(pid) - before
                    marks["wall_step"] = time.monotonic() - t_start

                step = run_step(swarm, rate, args.step_seconds, move_every=args.move_every,
                                grace=args.grace, on_sent=on_sent)
                cpu_total = proc_cpu_seconds(pid) - before
                row = step.summary()
                row["ha_cpu_percent"] = round(100 * marks["cpu_step"] / marks["wall_step"], 1)
                row["ha_cpu_ms_per_bu"] = round(1000 * cpu_total / step.answered, 4) \
                    if step.answered else None
                # The emulator fell behind its own schedule: the rate was not offered.
                achieved = row["achieved_bu_per_s"] or 0
                row["behind"] = achieved < 0.95 * rate
                row["sustained"] = sustained(row)
                steps.append(row)
                progress(f"round {round_index + 1} rate {rate:g}: sent {step.sent} "
                         f"answered {step.answered} lost {step.lost} "
                         f"p50 {row['bu_ba_ms']['p50']} p99 {row['bu_ba_ms']['p99']} ms, "
                         f"HA CPU {row['ha_cpu_percent']} %")
                if not row["sustained"]:
                    break
            rounds.append(steps)

        rss_end = proc_rss_bytes(pid)
        final = control_call(control, "mobility")
        status_end = control_call(control, "status")
        counters = control_call(control, "counters")
        result.update(summarize_rounds(rounds))
        result.update({
            "bindings": bindings,
            "bindings_end": len(final["ha"]["binding_cache"]),
            "ha_rss_bytes_per_binding": round((rss_after - rss_before) / bindings, 1)
            if bindings else None,
            "startup_s": round(startup_s, 3),
            "provision_s": round(provision_s, 3),
            "registration": registration,
            "rounds": rounds,
            "ha": {
                "pid": pid, "rss_start_bytes": rss_start, "rss_before_bytes": rss_before,
                "rss_after_registration_bytes": rss_after, "rss_end_bytes": rss_end,
                "rss_start_bytes_per_mn": round(rss_start / args.mns, 1),
                "startup_cpu_s": round(cpu_start, 3),
                "sas": status_end["sas"], "policies": status_end["policies"],
                "locators": status_end["locators"],
                # Frozen start-up objects and the collector's pauses (docs/scale.md).
                "gc": status_end.get("gc"),
                "config_bytes": config.stat().st_size,
                "ha_counters": final["ha"]["counters"], "node_counters": counters["node"],
                "mobility_counters": counters["mobility"],
                "state_file_bytes": _size(lab.workdir / "state" / "esp-seq.state"),
            },
            "emulator": dict(swarm.counters),
        })
        if args.restart:
            result["restart"] = restart_and_register(args, lab, swarm, config, control,
                                                     deadline, progress)
    finally:
        if swarm is not None:
            swarm.close()
            swarm.sock.close()
        code = None
        try:
            code = lab.stop_ha(grace=args.stop_timeout)
        finally:
            result["ha_exit"] = code
            if args.profile and (lab.workdir / "ha.prof").exists():
                result["profile"] = profile_rows(lab.workdir / "ha.prof", args.profile_rows)
                if args.profile_out:
                    shutil.copy(lab.workdir / "ha.prof", args.profile_out)
            log = lab.workdir / "ha.log"
            if args.ha_log_out and log.exists():
                shutil.copy(log, args.ha_log_out)
            lab.teardown()
    result["targets"] = targets(result)
    result["run"] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "rates": args.rates, "step_seconds": args.step_seconds, "grace": args.grace,
        "rounds": args.rounds, "move_every": args.move_every, "window": args.window,
        "tunnel_sas": args.tunnel_sas, "log_level": args.log_level,
        "profiled": bool(args.profile),
        "host": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg(), "kernel": os.uname().release},
        "netns": [lab.ns_ha, lab.ns_mn],
    }
    return result


def restart_and_register(args: argparse.Namespace, lab: SwarmLab, swarm: Swarm, config: Path,
                         control: Path, deadline: float, progress: Callable[[str], None]
                         ) -> dict:
    """Stop the HA (SIGTERM), start it again on the same config and state file, and
    register every MN once more: the sequence-number state of all its static SAs
    must be read back (docs/ipsec.md), and every MN's next BU accepted."""
    state_file = lab.workdir / "state" / "esp-seq.state"
    code = lab.stop_ha(grace=args.stop_timeout)
    state_bytes = _size(state_file)
    lab.start_ha(config, control, profile=None)
    startup_s = wait_ready(lab, control, min(args.start_timeout, deadline - time.monotonic()))
    pid = lab.ha.pid
    cpu0 = proc_cpu_seconds(pid)
    registration = register_all(swarm, window=args.window,
                                timeout=max(5.0, min(args.register_timeout,
                                                     deadline - time.monotonic())))
    registration["ha_cpu_s"] = round(proc_cpu_seconds(pid) - cpu0, 3)
    bindings = len(control_call(control, "mobility")["ha"]["binding_cache"])
    counters = control_call(control, "counters")
    progress(f"restarted in {startup_s:.1f} s with a {state_bytes}-byte state file; "
             f"{bindings} bindings again in {registration['seconds']:.1f} s")
    return {"first_exit": code, "state_file_bytes": state_bytes,
            "startup_s": round(startup_s, 3), "bindings": bindings,
            "registration": registration, "node_counters": counters["node"]}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def summarize_rounds(rounds: list[list[dict]]) -> dict:
    """Per round the highest sustained step; the figures are their medians (min/max kept)."""
    best = [highest_sustained(steps) for steps in rounds]
    best_50 = [highest_sustained(steps, p99_limit_ms=TARGET_P99_MS) for steps in rounds]
    rates = [step["offered_bu_per_s"] if step else 0 for step in best]
    out: dict[str, Any] = {
        "bu_per_s": median(rates) if rates else 0,
        "bu_per_s_rounds": rates,
        "bu_per_s_p99_within_50ms": median(
            [step["offered_bu_per_s"] if step else 0 for step in best_50]) if best_50 else 0,
    }
    chosen = [step for step in best if step]
    out["bu_ba_ms"] = {
        "p50": _med([s["bu_ba_ms"]["p50"] for s in chosen]),
        "p99": _med([s["bu_ba_ms"]["p99"] for s in chosen]),
        "p99_rounds": [s["bu_ba_ms"]["p99"] for s in chosen],
        "move_p99": _med([s["bu_ba_ms_move"]["p99"] for s in chosen]),
        "refresh_p99": _med([s["bu_ba_ms_refresh"]["p99"] for s in chosen]),
    }
    out["ha_cpu_percent"] = _med([s["ha_cpu_percent"] for s in chosen])
    out["ha_cpu_ms_per_bu"] = _med([s["ha_cpu_ms_per_bu"] for s in chosen])
    # HA CPU per BU at the lowest rate: the cost with no queueing at all.
    first = [steps[0]["ha_cpu_ms_per_bu"] for steps in rounds if steps]
    out["ha_cpu_ms_per_bu_lowest_rate"] = _med(first)
    return out


def _med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(median(present), 4) if present else None


def targets(result: dict) -> dict:
    bpb = result.get("ha_rss_bytes_per_binding")
    p99 = (result.get("bu_ba_ms") or {}).get("p99")
    return {
        "bindings_held": {"target": TARGET_BINDINGS, "value": result.get("bindings"),
                          "met": (result.get("bindings") or 0) >= TARGET_BINDINGS},
        "bu_per_s": {"target": TARGET_BU_PER_S, "value": result.get("bu_per_s"),
                     "met": (result.get("bu_per_s_p99_within_50ms") or 0) >= TARGET_BU_PER_S},
        "p99_ms": {"target": TARGET_P99_MS, "value": p99,
                   "met": p99 is not None and p99 <= TARGET_P99_MS},
        "bytes_per_binding": {"target": TARGET_BYTES_PER_BINDING, "value": bpb,
                              "met": bpb is not None and bpb <= TARGET_BYTES_PER_BINDING},
    }


# --- CLI ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarm", description="One vmip home agent against N emulated mobile nodes: "
        "bindings held, BU rate, BU->BA time, HA memory and CPU (docs/scale.md).")
    parser.add_argument("--mns", type=int, help="number of emulated mobile nodes (1-65536)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument("--rates", type=parse_rates, default=list(DEFAULT_RATES),
                        help="offered BU rates per second, increasing (default: "
                             f"{','.join(map(str, DEFAULT_RATES))})")
    parser.add_argument("--step-seconds", type=float, default=3.0,
                        help="seconds of each rate step (default 3)")
    parser.add_argument("--grace", type=float, default=2.0,
                        help="seconds to wait for the last BAs of a step (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the rate search (default 1)")
    parser.add_argument("--move-every", type=int, default=2,
                        help="every k-th BU is a move to a new CoA, 0 for none (default 2)")
    parser.add_argument("--window", type=int, default=64,
                        help="outstanding BUs during the initial registration (default 64)")
    parser.add_argument("--tunnel-sas", action="store_true",
                        help="also give each MN the ESP tunnel SA pair (the HA migrates it)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                        help="the HA's log level (default info, as configs/ha.toml)")
    parser.add_argument("--profile", action="store_true",
                        help="run the HA under cProfile; the JSON gets the top functions")
    parser.add_argument("--profile-rows", type=int, default=40)
    parser.add_argument("--profile-out", type=Path, help="keep the HA's .prof file here")
    parser.add_argument("--ha-log-out", type=Path, help="keep the HA's log here")
    parser.add_argument("--start-timeout", type=float, default=600.0,
                        help="seconds the HA may take to start (default 600)")
    parser.add_argument("--register-timeout", type=float, default=300.0,
                        help="seconds for the initial registration of every MN (default 300)")
    parser.add_argument("--stop-timeout", type=float, default=120.0,
                        help="seconds the HA may take to exit on SIGTERM (default 120)")
    parser.add_argument("--time-limit", type=float, default=1800.0,
                        help="upper bound on the whole run in seconds (default 1800)")
    parser.add_argument("--ns-prefix", help="namespaces PREFIX-ha and PREFIX-mn "
                                            "(default vsw<pid>; must match vsw<digits>)")
    parser.add_argument("--restart", action="store_true",
                        help="at the end, restart the HA on its state file and register "
                        "every MN again")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--cleanup", action="store_true",
                        help="stop and remove what earlier swarm runs left, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def progress(text: str) -> None:
        print(f"swarm: {text}", file=sys.stderr, flush=True)

    if os.geteuid() != 0:
        progress("needs root (network namespaces)")
        return 2
    if args.cleanup:
        for item in cleanup_leftovers():
            progress(f"removed {item}")
        return 0
    if args.mns is None or not 1 <= args.mns <= 65536:
        parser.error("--mns N is required (1-65536)")
    if args.ns_prefix is not None and not re.fullmatch(r"vsw\d+", args.ns_prefix):
        parser.error("--ns-prefix must look like vsw<digits> (--cleanup relies on it)")

    # SIGTERM/SIGHUP tear down like Ctrl-C does (measure()'s finally).
    def interrupted(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        result = measure(args, progress)
    except KeyboardInterrupt:
        progress("interrupted; cleaned up")
        return 130
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        progress(f"failed: {exc}")
        return 1
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps({k: result.get(k) for k in (
        "mns", "bindings", "bu_per_s", "bu_per_s_p99_within_50ms", "bu_ba_ms",
        "ha_rss_bytes_per_binding", "ha_cpu_percent", "ha_cpu_ms_per_bu", "startup_s")},
        indent=2))
    return 0
