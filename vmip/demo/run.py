"""The orchestration behind ``vmip demo`` and ``tools/bench/handover.py``.

Synchronous on purpose: the lab API (pyroute2's sync IPRoute) and the
control client are blocking, and the only concurrency needed lives in
other processes (the nodes, the traffic agents).  One loop, ticking every
``TICK`` seconds, refreshes the dashboard and fires the scheduled link
changes; everything is torn down in ``finally`` (and SIGTERM/SIGHUP are
turned into the same path as Ctrl-C).

``DemoOptions.multi_coa`` (``vmip demo --multi-coa``): the lab's multi-CoA
configs (:mod:`vmip.lab.configs`), two probe classes (duplicated, best link)
and the multi-CoA report (:func:`vmip.demo.metrics.multi_coa_reports`); at
each link change the demo also reads the MN's and the CN's
``tx_duplicate_bytes`` and the lte emulator's drop counters.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmip.control.client import ControlClient
from vmip.demo import metrics
from vmip.demo.dashboard import collect, render
from vmip.errors import UsageError, VmipError
from vmip.lab.configs import BEST_PROBE_PORT, DUPLICATE_PROBE_PORT, TCP_STREAM_PORT
from vmip.log import get_logger

log = get_logger(__name__)

TICK = 0.25
#: Seconds between link changes: long enough for the hold-down (2 s) and
#: for the streams to settle before the next change.
DEFAULT_PERIOD = 5.0
#: The emulated links (round-trip times of docs/design.md §12: wifi ≈ 10 ms,
#: lte ≈ 60 ms with 1% loss; each direction gets half the delay).
WIFI_ONE_WAY_MS = 5.0
LTE_ONE_WAY_MS = 30.0
LTE_LOSS = 0.005          # per direction: ≈ 1% for a round trip
PROBE_RATE = 100.0        # probes per second, each direction
UDP_PORT, TCP_PORT = DUPLICATE_PROBE_PORT, TCP_STREAM_PORT
#: The multi-CoA demo's probe classes, by port (the configs' [[flow]] tables).
PROBE_CLASSES = {metrics.DUPLICATE: DUPLICATE_PROBE_PORT, metrics.BEST: BEST_PROBE_PORT}
#: Round trip of each of the MN's links (the best-link target: one RTT of the link that remains).
LINK_RTT_MS = {"wifi0": 2 * WIFI_ONE_WAY_MS, "lte0": 2 * LTE_ONE_WAY_MS}
PING_INTERVAL = 0.2
#: Seconds between two reads of the MN's and the CN's new events (EventLog).
EVENT_POLL = 1.0
REGISTRATION_TIMEOUT = 20.0


class DemoError(VmipError):
    """The demo could not run (the lab did not come up, traffic did not flow...)."""


@dataclass
class DemoOptions:
    duration: float = 60.0
    ui: bool = True
    json_path: Path | None = None
    pcap_dir: Path | None = None
    keys: str = "static"
    #: The lab's link driver: ``udp`` (overlay) or ``raw`` (native IPv6).
    driver: str = "udp"
    #: Run until this many link changes were made (the benchmark), not for a duration.
    changes: int | None = None
    period: float = DEFAULT_PERIOD
    shape: bool = True
    #: One binding per link, flows duplicated or on the best link (docs/multi-coa.md).
    multi_coa: bool = False


@dataclass
class _Run:
    plan: Any
    workdir: Path
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)
    ping: subprocess.Popen | None = None
    triggers: list[metrics.Trigger] = field(default_factory=list)
    wifi_up: bool = True
    lab_built: bool = False
    multi_coa: bool = False
    #: Multi-CoA: ``tx_duplicate_bytes`` of the MN and the CN at each link change.
    overhead: list[metrics.Snapshot] = field(default_factory=list)
    clients: dict[str, ControlClient] = field(default_factory=dict)
    drops: _EmulatorDrops | None = None


#: The router's view of the MN's link: "in" comes from the MN, "out" goes to it.
EMULATOR_DIRECTIONS = {"in": "mn_to_cn", "out": "cn_to_mn"}


class _EmulatorDrops:
    """The lte emulator's random drops on the MN's lte0, per direction, read at
    each link change: the shapers write their counters on SIGUSR1 (a moment
    later), so a reading is asked for at the change and collected on a later tick.
    Each reading also lists when the shaper dropped its latest datagrams
    (``loss_drop_times``); the union of the readings is :meth:`times`.
    None where the link is shaped by netem, which keeps no such counters here."""

    def __init__(self, plan: Any) -> None:
        from vmip.lab.emulation import shaper_pids

        self.plan = plan
        self.ifname = plan.node("mn").link("lte0").router_ifname
        pids = shaper_pids(plan.router_netns, plan.emulation_dir)
        self.pids = {direction: pids[(self.ifname, direction)] for direction in EMULATOR_DIRECTIONS
                     if (self.ifname, direction) in pids}
        self.readings: list[metrics.Snapshot] = []
        # Per direction: the number of each drop (1, 2, ...: ``dropped_loss``
        # counts them) -> its time; two drops can share a time (one queue read).
        self._times: dict[str, dict[int, float]] | None = {name: {} for name in
                                                           EMULATOR_DIRECTIONS.values()}
        self._pending: list[tuple[float, float]] = []   # (moment, signalled at)
        self.failed = not self.pids or len(self.pids) != len(EMULATOR_DIRECTIONS)

    def request(self, moment: float) -> None:
        if self.failed:
            return
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                self.failed = True
                return
        self._pending.append((moment, time.time()))

    def collect(self, *, wait: float = 0.0) -> None:
        """Turn the answered requests into readings (waiting up to *wait* s for them)."""
        from vmip.lab.emulation import status_path

        deadline = time.monotonic() + wait
        while self._pending and not self.failed:
            moment, signalled = self._pending[0]
            values = {}
            times: dict[str, list[float] | None] = {}
            for direction, name in EMULATOR_DIRECTIONS.items():
                path = status_path(self.plan.emulation_dir, self.plan.router_netns, self.ifname,
                                   direction)
                try:
                    if path.stat().st_mtime < signalled - 0.01:
                        break
                    status = json.loads(path.read_text())
                    values[name] = status["dropped_loss"]
                except (OSError, ValueError, KeyError):
                    break
                listed = status.get("loss_drop_times")
                times[name] = listed if isinstance(listed, list) else None
            if len(values) == len(EMULATOR_DIRECTIONS):
                self.readings.append((moment, values))
                self._merge_times(values, times)
                self._pending.pop(0)
                continue
            if time.monotonic() >= deadline:
                if time.time() - signalled > 5.0:
                    self.failed = True   # a shaper that never answers: no readings at all
                return
            time.sleep(0.02)

    def _merge_times(self, counts: dict[str, Any], times: dict[str, list[float] | None]) -> None:
        """Number the listed times: the last of them is drop number ``dropped_loss``."""
        if self._times is None:
            return
        for name, listed in times.items():
            if listed is None or not isinstance(counts[name], int) \
                    or not all(isinstance(t, (int, float)) for t in listed):
                self._times = None   # a shaper that does not list them: counts only
                return
            first = counts[name] - len(listed) + 1
            for number, t in enumerate(listed, start=first):
                self._times[name][number] = float(t)

    def result(self) -> list[metrics.Snapshot] | None:
        return None if self.failed else self.readings

    def times(self) -> dict[str, list[float]] | None:
        """When the emulator dropped each datagram, per direction (wall clock);
        None when a shaper did not say (the report then falls back to the counts)."""
        if self.failed or self._times is None or not self.readings:
            return None
        return {name: sorted(times.values()) for name, times in self._times.items()}


class EventLog:
    """A node's event timeline, gathered during the run: the node keeps only its
    last few hundred events (``vmip.node.events.TIMELINE``), fewer than a long
    run with one binding per link makes, so the demo asks for the new ones
    (``events`` with ``since``) every ``EVENT_POLL`` seconds and at the end."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.last_poll = 0.0

    def poll(self) -> None:
        since = self.events[-1]["t"] if self.events else 0
        try:
            new = self.client.call("events", since=since) if since else self.client.call("events")
        except VmipError as exc:
            log.warning("demo could not read a node's events", error=str(exc))
            return
        if isinstance(new, list):
            self.events.extend(e for e in new if isinstance(e, dict) and e.get("t", 0) > since)
        self.last_poll = time.monotonic()

    def poll_every(self, seconds: float) -> None:
        if time.monotonic() - self.last_poll >= seconds:
            self.poll()


def duplicate_bytes(counters: Any) -> int:
    """``tx_duplicate_bytes`` in a node's ``counters`` answer (whichever section holds
    it; 0 when no section does: that node never duplicated anything)."""
    if not isinstance(counters, dict):
        return 0
    for section in counters.values():
        if isinstance(section, dict) and "tx_duplicate_bytes" in section:
            return int(section["tx_duplicate_bytes"])
    return 0


_MAIN_PID = os.getpid()


def _raise_stop(signum: int, frame: Any) -> None:
    # pyroute2's NetNS forks helpers that inherit this handler and are ended
    # with SIGTERM: in them, die the default way instead of raising.
    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt


def _check_environment() -> None:
    if os.geteuid() != 0:
        raise UsageError("vmip demo builds network namespaces: run it as root")
    from vmip.lab.netns import list_netns
    from vmip.lab.topology import NETNS_PREFIX

    present = list_netns(NETNS_PREFIX)
    if present:
        raise UsageError(f"a lab already exists ({', '.join(present)}): the demo builds its own; "
                         "remove it first with `vmip lab down`")


def run_demo(options: DemoOptions, *, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the lab, run traffic and handovers, return (and print) the report."""
    from vmip.lab import manage
    from vmip.lab.topology import default_plan

    _check_environment()
    plan = default_plan(driver=options.driver, multi_coa=options.multi_coa)
    run = _Run(plan, Path(tempfile.mkdtemp(prefix="vmip-demo-")), multi_coa=options.multi_coa)
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old_handlers[sig] = signal.signal(sig, _raise_stop)
        except ValueError:
            pass   # not the main thread
    report: dict[str, Any] | None = None   # None: interrupted
    try:
        report = _run(run, options, out)
    except KeyboardInterrupt:
        report = None
    finally:
        _stop_traffic(run)
        if options.pcap_dir is not None and run.lab_built:
            try:
                _save_captures(run, options.pcap_dir)
            except (OSError, VmipError) as exc:
                out(f"warning: could not save the captures: {exc}")
        if run.lab_built or _lab_present():
            manage.lab_down(plan)
        shutil.rmtree(run.workdir, ignore_errors=True)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if report is None:
        out("interrupted: the lab was removed")
        raise KeyboardInterrupt
    return report


def _lab_present() -> bool:
    from vmip.lab.netns import list_netns
    from vmip.lab.topology import NETNS_PREFIX

    return bool(list_netns(NETNS_PREFIX))


def _run(run: _Run, options: DemoOptions, out: Callable[[str], None]) -> dict[str, Any]:
    from vmip.lab import manage

    plan = run.plan
    out("building the lab and starting HA, CN, MN ...")
    run.lab_built = True
    if options.shape:
        # Shape before the nodes start: their first exchanges, and so the MN's
        # link quality, see the emulated links from the start, as on a real
        # network (shaped after, the first samples are the bare veths').
        manage.lab_up(plan, keys=options.keys)
        _shape(plan)
    manage.lab_start(plan, keys=options.keys)
    mn_client = ControlClient(_socket(plan, "mn"))
    clients = {name: ControlClient(_socket(plan, name)) for name in ("mn", "cn", "ha")}
    run.clients = clients
    _wait_registered(mn_client, {str(plan.node(name).overlay_addresses[0]) for name in ("ha", "cn")}
                     if run.multi_coa else None)
    if run.multi_coa and options.shape:
        out(_wait_link_quality(mn_client))
    logs = {name: EventLog(clients[name]) for name in ("mn", "cn")}
    hoa, cn_addr = str(plan.node("mn").overlay_addresses[0]), str(plan.node("cn").overlay_addresses[0])
    coa_links = {str(addr): name for name, addr in plan.node("mn").care_of_addresses.items()}
    _start_traffic(run, hoa, cn_addr)
    _wait_traffic(run)
    out("traffic flows: TCP stream, UDP probes and ping from the MN's HoA to the CN")

    if run.multi_coa:
        run.drops = _EmulatorDrops(plan) if options.shape else None
        _read_counters(run, time.time())
    started = time.time()
    settle = 2.0
    tail = 3.0
    if options.changes is not None:
        changes = options.changes
        end_at = started + settle + changes * options.period + tail
    else:
        changes = max(int((options.duration - settle - tail) // options.period), 0)
        end_at = started + max(options.duration, settle + tail)
    schedule = [started + settle + i * options.period for i in range(changes)]

    live = None
    console = None
    if options.ui:
        from rich.console import Console
        from rich.live import Live

        console = Console()
        live = Live(console=console, screen=True, auto_refresh=False)
        live.start()
    previous = None
    try:
        while time.time() < end_at:
            now = time.time()
            if schedule and now >= schedule[0]:
                schedule.pop(0)
                _toggle_wifi(run)
            if live is not None and console is not None:
                snapshot = collect(mn_client)
                extra = _status_lines(run, clients, started, end_at)
                live.update(render(snapshot, previous, width=console.width,
                                   height=console.height, extra=extra), refresh=True)
                previous = snapshot
            if run.drops is not None:
                run.drops.collect()
            for event_log in logs.values():
                event_log.poll_every(EVENT_POLL)
            time.sleep(max(0.0, min(TICK, end_at - time.time())))
    finally:
        if live is not None:
            live.stop()
    end = time.time()
    if run.multi_coa:
        _read_counters(run, end)
        if run.drops is not None:
            run.drops.collect(wait=2.0)
    for event_log in logs.values():
        event_log.poll()
    events, cn_events = logs["mn"].events, logs["cn"].events
    final = {name: _safe(functools.partial(collect, client)) for name, client in clients.items()}
    records = _stop_traffic(run)
    ping = _ping_summary(run)
    mn_rec, cn_rec = records.get("mn", {}), records.get("cn", {})
    to_arrivals = lambda rec: [metrics.Arrival(*a) for a in rec.get("arrivals", [])]
    tcp = cn_rec.get("tcp", {})
    errors = [t for t in (tcp.get("error_at"), mn_rec.get("tcp", {}).get("error_at")) if t]
    tcp_samples = [tuple(s) for s in tcp.get("samples", [])]
    report: dict[str, Any]
    if run.multi_coa:
        report = _multi_coa_report(run, events, cn_events, coa_links, mn_rec, cn_rec,
                                   tcp_samples, min(errors) if errors else None, end,
                                   hoa, cn_addr)
    else:
        handovers = metrics.handover_reports(
            triggers=run.triggers, events=events, coa_links=coa_links,
            mn_to_cn=to_arrivals(cn_rec), cn_to_mn=to_arrivals(mn_rec),
            interval=1.0 / PROBE_RATE, tcp_samples=tcp_samples,
            tcp_error_at=min(errors) if errors else None, end=end, cn_events=cn_events)
        report = {"handovers": handovers, "summary": metrics.summary(handovers),
                  "probes": {"rate_per_s": PROBE_RATE,
                             "mn_to_cn": {"sent": mn_rec.get("probes_sent"),
                                          "received": len(cn_rec.get("arrivals", []))},
                             "cn_to_mn": {"sent": cn_rec.get("probes_sent"),
                                          "received": len(mn_rec.get("arrivals", []))}}}
    report.update({
        "driver": plan.driver,
        "links": {"wifi0": {"rtt_ms": 2 * WIFI_ONE_WAY_MS},
                  "lte0": {"rtt_ms": 2 * LTE_ONE_WAY_MS, "loss_per_direction": LTE_LOSS,
                           "nat": plan.driver != "raw"}},
        "tcp": {"bytes": tcp.get("bytes"), "error": tcp.get("error") or
                mn_rec.get("tcp", {}).get("error")},
        "ping": ping,
        "triggers": [{"t": t.t, "done": t.done, "link": t.link, "action": t.action}
                     for t in run.triggers],
        "duration_s": round(end - started, 1),
        "keys": options.keys,
        "final_snapshots": final,
    })
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2))
    out(format_multi_coa_report(report) if run.multi_coa else format_report(report))
    return report


def _read_counters(run: _Run, moment: float) -> None:
    """Multi-CoA: the MN's and the CN's duplicate bytes, and the emulator's drops, now."""
    readings = {}
    for name in ("mn", "cn"):
        try:
            readings[name] = float(duplicate_bytes(run.clients[name].call("counters")))
        except VmipError as exc:
            log.warning("demo could not read a node's counters", node=name, error=str(exc))
            return   # a missing reading leaves that window's cost unknown, never 0
    run.overhead.append((moment, readings))
    if run.drops is not None:
        run.drops.request(moment)


def _class_arrivals(record: dict[str, Any], name: str) -> list[metrics.Arrival]:
    classes = record.get("probe_classes", {})
    return [metrics.Arrival(*a) for a in classes.get(name, {}).get("arrivals", [])]


def _multi_coa_report(run: _Run, events: list, cn_events: list, coa_links: dict[str, str],
                      mn_rec: dict[str, Any], cn_rec: dict[str, Any],
                      tcp_samples: list, tcp_error_at: float | None, end: float,
                      hoa: str, cn: str) -> dict[str, Any]:
    streams = {name: metrics.ClassStreams(_class_arrivals(cn_rec, name),
                                          _class_arrivals(mn_rec, name))
               for name in PROBE_CLASSES}
    drop_times = run.drops.times() if run.drops is not None else None
    handovers = metrics.multi_coa_reports(
        triggers=run.triggers, events=events, cn_events=cn_events, hoa=hoa, cn=cn,
        coa_links=coa_links,
        one_way={"wifi0": WIFI_ONE_WAY_MS / 1000.0, "lte0": LTE_ONE_WAY_MS / 1000.0},
        streams=streams, interval=1.0 / PROBE_RATE, end=end, tcp_samples=tcp_samples,
        tcp_error_at=tcp_error_at, overhead=run.overhead,
        emulated_drops=run.drops.result() if run.drops is not None else None,
        drop_times=drop_times, drop_window=metrics.LAB_DROP_WINDOW,
        ping=_ping_arrivals(run))
    classes = {}
    for name, port in PROBE_CLASSES.items():
        classes[name] = {
            "port": port,
            "mn_to_cn": {"sent": mn_rec.get("probe_classes", {}).get(name, {}).get("sent"),
                         "received": len(streams[name].mn_to_cn)},
            "cn_to_mn": {"sent": cn_rec.get("probe_classes", {}).get(name, {}).get("sent"),
                         "received": len(streams[name].cn_to_mn)}}
    return {"handovers": handovers,
            "summary": metrics.multi_coa_summary(handovers, LINK_RTT_MS),
            "multi_coa": True,
            "probes": {"rate_per_s": PROBE_RATE, "classes": classes},
            # When lte0's emulator dropped a datagram, per direction (wall clock):
            # what background_lost was matched against.
            "emulated_drop_times": drop_times,
            "traffic_modes": {"probes 5002": "duplicate", "ping": "duplicate",
                              "probes 5003": "best", "tcp 5001": "best"}}


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a report field, not a reason to lose the report
        return {"error": str(exc)}


def _socket(plan: Any, name: str) -> Path:
    from vmip.lab.runner import node_files

    return node_files(plan, name).control_socket


def _netem_possible() -> bool:
    """Whether the kernel may have netem, without creating anything to find out."""
    if Path("/sys/module/sch_netem").exists():
        return True
    try:
        return subprocess.run(["modinfo", "-n", "sch_netem"], capture_output=True,
                              timeout=5, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _shape(plan: Any) -> None:
    """wifi ≈ 10 ms RTT, lte ≈ 60 ms RTT with loss, applied at the router.

    Same as ``manage.shape_link`` but with the backend chosen here: the
    emulation's own netem probe (a pyroute2 NetNS helper process) sometimes
    hangs on kernels without netem, so on those we ask for nfqueue directly.
    """
    from vmip.lab.emulation import LinkProfile, apply_profile
    from vmip.lab.manage import NODE_TO_ROUTER_DIRECTION

    backend = "auto" if _netem_possible() else "nfqueue"
    plan.emulation_dir.mkdir(parents=True, exist_ok=True)
    mn = plan.node("mn")
    for ifname, profile in (("wifi0", LinkProfile(delay_ms=WIFI_ONE_WAY_MS)),
                            ("lte0", LinkProfile(delay_ms=LTE_ONE_WAY_MS, loss=LTE_LOSS))):
        apply_profile(plan.router_netns, mn.link(ifname).router_ifname,
                      NODE_TO_ROUTER_DIRECTION["both"], profile, plan.emulation_dir,
                      backend=backend)


def registered(entries: list[dict[str, Any]], peers: set[str] | None = None) -> bool:
    """Every binding update list entry is bound (with *peers*: every entry of those
    peers, and each of them has one).  With one binding per link an entry is a
    (peer, BID): the lte0 CoA cannot be bound at the other MN (no hairpinning
    through the NAT, docs/iro.md), so the multi-CoA demo waits for the HA and the CN."""
    if peers is not None:
        entries = [e for e in entries if str(e.get("peer")) in peers]
        if {str(e.get("peer")) for e in entries} != peers:
            return False
    return bool(entries) and all(str(e.get("state")) == "bound" for e in entries)


def _wait_registered(client: ControlClient, peers: set[str] | None = None) -> None:
    """Until the MN's bindings (with *peers* only, if given) are accepted."""
    deadline = time.monotonic() + REGISTRATION_TIMEOUT
    last: list[tuple[Any, Any]] | str | None = None
    while time.monotonic() < deadline:
        try:
            mobility = client.call("mobility")
            entries = (mobility.get("mn") or {}).get("binding_update_list", [])
            last = [(e.get("peer"), e.get("state")) for e in entries]
            if registered(entries, peers):
                return
        except VmipError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise DemoError(f"the MN did not register within {REGISTRATION_TIMEOUT:.0f} s: {last}")


#: How long the multi-CoA demo waits for the MN's link quality to rank its links.
LINK_QUALITY_TIMEOUT = 15.0


def _wait_link_quality(client: ControlClient, preferred: str = "wifi0") -> str:
    """Until the MN's link quality ranks *preferred* best, at most
    LINK_QUALITY_TIMEOUT s; a line saying what it measured.

    The MN's first BU on each link is timed cold (a node just started:
    100 ms and more on a 10 ms link), and SRTT forgets a sample by 1/8 per
    probe (one a second): the schedule starts once the figures are the
    links' own, so that the best-link class starts on the better link."""
    deadline = time.monotonic() + LINK_QUALITY_TIMEOUT
    figures: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            figures = client.call("status").get("link_quality") or {}
        except VmipError:
            figures = {}
        if (figures.get(preferred) or {}).get("best"):
            break
        time.sleep(0.2)
    text = ", ".join(f"{name} {info.get('srtt_ms')} ms" for name, info in sorted(figures.items()))
    best = next((name for name, info in figures.items() if info.get("best")), None)
    if best == preferred:
        return f"link quality: {text} (best: {best})"
    return (f"link quality still ranks {best or 'nothing'} best after "
            f"{LINK_QUALITY_TIMEOUT:.0f} s: {text or 'no figures'}; going on")


def _start_traffic(run: _Run, hoa: str, cn: str) -> None:
    from vmip.lab.netns import popen_in

    for role, netns, local, peer in (("cn", "vmip-cn", cn, hoa), ("mn", "vmip-mn", hoa, cn)):
        argv = [sys.executable, "-m", "vmip.demo.traffic", "--role", role, "--local", local,
                "--peer", peer, "--rate", str(PROBE_RATE), "--udp-port", str(UDP_PORT),
                "--tcp-port", str(TCP_PORT), "--out", str(run.workdir / f"{role}.json"),
                "--status", str(run.workdir / f"{role}.status")]
        if run.multi_coa:
            for name, port in PROBE_CLASSES.items():
                argv += ["--probe-class", f"{name}={port}"]
        with open(run.workdir / f"{role}.log", "wb") as log_file:   # the child keeps its copy
            run.agents[role] = popen_in(netns, argv, stdout=log_file, stderr=subprocess.STDOUT,
                                        env=_child_env())
        if role == "cn":
            _wait_file(run.workdir / "cn.status", 5.0)
    with open(run.workdir / "ping.log", "wb") as ping_log:
        # -D: each reply's wall-clock time, for the per-window losses (multi-CoA).
        run.ping = popen_in("vmip-mn", ["ping", "-6", "-n", "-D", "-i", str(PING_INTERVAL),
                                        "-I", hoa, cn],
                            stdout=ping_log, stderr=subprocess.STDOUT)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise DemoError(f"the traffic agent did not start ({path.name} missing)")
        time.sleep(0.05)


def _read_status(run: _Run, role: str) -> dict[str, Any]:
    try:
        return json.loads((run.workdir / f"{role}.status").read_text())
    except (OSError, ValueError):
        return {}


def _wait_traffic(run: _Run, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mn, cn = _read_status(run, "mn"), _read_status(run, "cn")
        if mn.get("probes_received") and cn.get("probes_received") and cn.get("tcp_bytes"):
            return
        for role, proc in run.agents.items():
            if proc.poll() is not None:
                log_text = (run.workdir / f"{role}.log").read_text(errors="replace")[-400:]
                raise DemoError(f"the {role} traffic agent exited: {log_text}")
        time.sleep(0.1)
    raise DemoError("no traffic between the MN's HoA and the CN within "
                    f"{timeout:.0f} s (mn: {_read_status(run, 'mn')}, cn: {_read_status(run, 'cn')})")


def _toggle_wifi(run: _Run) -> None:
    from vmip.lab import manage

    up = not run.wifi_up
    if run.multi_coa:
        _read_counters(run, time.time())   # closes the window before this change
    asked = time.time()
    manage.set_link_state(run.plan, "mn", "wifi0", up)
    # Both ends: the lab's netlink calls take a while; detection counts from their end.
    run.triggers.append(metrics.Trigger(asked, "wifi0", "up" if up else "down", done=time.time()))
    run.wifi_up = up


def _stop_traffic(run: _Run) -> dict[str, dict[str, Any]]:
    procs = list(run.agents.items())
    if run.ping is not None:
        procs.append(("ping", run.ping))
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if _ != "ping" else signal.SIGINT)
    for _, proc in procs:
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2.0)
    run.agents.clear()
    run.ping = None
    records = {}
    for role in ("mn", "cn"):
        try:
            records[role] = json.loads((run.workdir / f"{role}.json").read_text())
        except (OSError, ValueError):
            pass
    return records


def _ping_summary(run: _Run) -> dict[str, Any]:
    try:
        text = (run.workdir / "ping.log").read_text(errors="replace")
    except OSError:
        return {}
    match = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", text)]
    return {"transmitted": int(match.group(1)) if match else None,
            "received": int(match.group(2)) if match else len(rtts),
            "rtt_ms_median": sorted(rtts)[len(rtts) // 2] if rtts else None}


def parse_ping_arrivals(text: str) -> list[metrics.Arrival]:
    """``ping -D`` replies as arrivals: (icmp_seq, sent = received - RTT, received)."""
    arrivals = []
    for match in re.finditer(r"^\[(\d+\.\d+)\].*?icmp_seq=(\d+).*?time=([\d.]+) ms",
                             text, re.MULTILINE):
        received, seq, rtt = float(match.group(1)), int(match.group(2)), float(match.group(3))
        arrivals.append(metrics.Arrival(seq, received - rtt / 1000.0, received))
    return arrivals


def _ping_arrivals(run: _Run) -> list[metrics.Arrival] | None:
    try:
        return parse_ping_arrivals((run.workdir / "ping.log").read_text(errors="replace"))
    except OSError:
        return None


def _status_lines(run: _Run, clients: dict[str, ControlClient], started: float,
                  end_at: float) -> list[str]:
    mn, cn = _read_status(run, "mn"), _read_status(run, "cn")
    now = time.time()
    last = run.triggers[-1] if run.triggers else None
    change = f"last change: {last.link} {last.action} {now - last.t:.1f}s ago" if last else \
        "no link change yet"
    # Multi-CoA: the duplicates' extra bytes as of the last link change (MN + CN).
    cost = (f" · dup {sum(run.overhead[-1][1].values()) / 1e3:.0f} kB"
            if run.multi_coa and run.overhead else "")
    return [(f"demo {now - started:.0f}/{end_at - started:.0f}s · wifi0 "
             f"{'up' if run.wifi_up else 'DOWN'} · {change}"),
            (f"probes mn→cn {cn.get('probes_received', 0)}/{mn.get('probes_sent', 0)} · cn→mn "
             f"{mn.get('probes_received', 0)}/{cn.get('probes_sent', 0)} · TCP "
             f"{cn.get('tcp_bytes', 0) / 1e6:.1f} MB{' ERROR' if cn.get('tcp_error') else ''}"
             f"{cost}")]


def _save_captures(run: _Run, pcap_dir: Path) -> None:
    from vmip.lab.runner import node_files

    pcap_dir.mkdir(parents=True, exist_ok=True)
    for name in ("mn", "cn", "ha"):
        files = node_files(run.plan, name)
        src = Path(files.pcap)
        if src.exists():
            shutil.copyfile(src, pcap_dir / f"{name}-wire.pcap")
        try:
            rows = ControlClient(files.control_socket).call("keys.wireshark")
            (pcap_dir / f"{name}-esp_sa").write_text(json.dumps(rows, indent=2))
        except VmipError:
            pass


def _tcp_cell(survived: bool | None) -> str:
    """``ok``, ``LOST``, or ``-`` where no TCP ran (the simulator)."""
    return "-" if survived is None else "ok" if survived else "LOST"


#: How each lab driver carries on-wire packets, for the report's driver line.
DRIVER_NOTES = {"udp": "overlay over the IPv4 underlay, lte behind NAT",
                "raw": "native IPv6, routed, no NAT"}


def format_report(report: dict[str, Any]) -> str:
    """The end-of-run table (plain text, fits 80 columns)."""
    lines = [(f"{'#':>2} {'from':6} {'to':6} {'mn→cn ms':>9} {'cn→mn ms':>9} {'lost':>5} "
              f"{'BU→BA ms':>9} {'AOT':>7} {'TCP':>4} {'move':>5} {'CN':>5}")]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    for i, h in enumerate(report["handovers"], 1):
        lines.append(f"{i:>2} {h['from']:6} {h['to']:6} {fmt(h['interruption_ms']['mn_to_cn']):>9} "
                     f"{fmt(h['interruption_ms']['cn_to_mn']):>9} {h['lost_packets']:>5} "
                     f"{fmt(h['bu_ba_ms']):>9} {h['aot'] or 'no':>7} "
                     f"{_tcp_cell(h['tcp_survived']):>4} "
                     f"{fmt(h.get('timeline_ms', {}).get('moved')):>5} "
                     f"{fmt(h.get('timeline_ms', {}).get('cn_sends')):>5}")
    s = report["summary"]
    tcp = {None: "", True: "; TCP survived every handover", False: "; TCP was LOST"}
    lines.append(f"{s['handovers']} handovers; interruption p50 {fmt(s['interruption_ms_p50'])} ms,"
                 f" p90 {fmt(s['interruption_ms_p90'])} ms{tcp[s.get('tcp_survived_all')]}")
    aot = s.get("aot")
    if aot is not None:
        lines.append(f"CoAs proven by an early test: {aot.get('early', 0)}, by a test on the "
                     f"move: {aot.get('on-move', 0)} (draft §4.5.2, §4.5.1)")
    driver = report.get("driver")
    if driver is not None:
        lines.append(f"driver: {driver} ({DRIVER_NOTES.get(driver, driver)})")
    lines.append("move: link change in place -> MN's CoA changed; CN: -> CN sends to the new "
                 "CoA (ms)")
    return "\n".join(lines)


def _kb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:.1f}"


def _met(value: bool | None) -> str:
    return "-" if value is None else "met" if value else "NOT met"


def format_multi_coa_report(report: dict[str, Any]) -> str:
    """The multi-CoA table: a row per link change (plain text, fits 80 columns)."""
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    lines = [f"{'':16}{'duplicate':>10}  {'best: interruption, lost':>24}",
             (f"{'#':>2} {'from':6} {'to':6} {'lost':>5} {'bg':>3} {'mn→cn ms':>9} "
              f"{'cn→mn ms':>9} {'lost':>5} {'dup kB':>7} {'TCP':>4} {'move':>5} {'settle':>6}")]
    for i, h in enumerate(report["handovers"], 1):
        best = h["interruption_ms"]["best"]
        lines.append(
            f"{i:>2} {h['from']!s:6} {h['to']!s:6} {h['lost_packets']['duplicate']:>5} "
            f"{sum(h['background_lost'].values()):>3} {fmt(best['mn_to_cn']):>9} "
            f"{fmt(best['cn_to_mn']):>9} {h['lost_packets']['best']:>5} "
            f"{_kb(h['duplicate_overhead_bytes']):>7} {_tcp_cell(h['tcp_survived']):>4} "
            f"{fmt(h['timeline_ms']['moved']):>5} {fmt(h['timeline_ms']['settled']):>6}")
    s = report["summary"]
    lines.append(
        f"{s['handovers']} handovers ({s['abrupt_handovers']} abrupt); duplicated: "
        f"{s['lost_packets_duplicate_abrupt']} lost on abrupt, "
        f"{s['lost_packets']['duplicate']} in all, {s['background_lost']} background")
    lines.append(f"best link: interruption p50 {fmt(s['interruption_ms_p50'])} ms, max "
                 f"{fmt(s['interruption_ms_max'])} ms; {s['lost_packets']['best']} probes lost")
    cost = s["duplicate_overhead_bytes"]
    duration = report.get("duration_s")
    rate = (f" ({cost / duration / 1000:.1f} kB/s)" if cost is not None and duration
            else "")
    lines.append(f"duplicate mode cost {_kb(cost)} kB{rate} of extra copies (MN + CN)")
    targets = s["targets"]
    over = targets["best_over_rtt"]
    worst = max((o["interruption_ms"] for o in over if o["interruption_ms"] is not None),
                default=None)
    lines.append("target 0 duplicated probes lost on abrupt handovers: "
                 + _met(targets["duplicate_lossless_on_abrupt"]))
    lines.append("target best-link gap ≤ 1 RTT of the link left: "
                 + _met(targets["best_within_one_rtt"])
                 + (f" ({len(over)} over, worst {fmt(worst)} ms)" if over else ""))
    on_dying = targets.get("best_on_dying_link")
    if on_dying is not None and on_dying < s["abrupt_handovers"]:
        # Met or not, a row where the best-link class was elsewhere tested no switch.
        lines.append(f"  the best-link class was on the dying link in {on_dying} of "
                     f"{s['abrupt_handovers']} (others: no switch)")
    lines.append("target TCP survived every handover: " + _met(targets["tcp_survived"]))
    driver = report.get("driver")
    if driver is not None:
        lines.append(f"driver: {driver} ({DRIVER_NOTES.get(driver, driver)})")
    lines.append("duplicate lost: both ways; bg: lte's random loss while lte alone carried")
    lines.append("ms after the link change: move -> MN's primary CoA changed, "
                 "settle -> paths")
    return "\n".join(lines)
