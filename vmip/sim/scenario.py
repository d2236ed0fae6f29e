"""``vmip sim``: the demo's roaming run on the in-process network, on virtual time.

The same topology and link profiles as ``vmip demo`` (HA, CN, two MNs; wifi
about 10 ms RTT, lte about 60 ms RTT with about 1% loss behind NAT), the same
probes (UDP from the MN's home address to the CN and back, 100 a second each
way, each carrying its sequence number and send time), the same link
schedule (the MN's wifi goes down, then up, every ``period`` seconds) and
the same report (:mod:`vmip.demo.metrics`): per handover the interruption in
each direction, packets lost, BU → BA time and whether an address ownership
test was needed.  What ``vmip demo`` cannot show without a kernel, the
simulator does not claim either: there is no TCP stream (``tcp_survived`` is
``null``), and times are the simulator's, not a machine's.

A run is a function of its seed: the same seed gives the same report, byte
for byte (``--json``).  Virtual time runs as fast as the nodes compute.

``multi_coa`` (``vmip sim --multi-coa``) runs the lab's multi-CoA configs
(:mod:`vmip.lab.configs`): the MN registers one binding per link, two probe
classes run both ways (port 5002, duplicated on every bound path; port 5003,
on the best path) and the report is the multi-CoA demo's
(:func:`vmip.demo.metrics.multi_coa_reports`): a row per link change with
the losses of each class, the background loss of lte (counted from the
simulated link's own drops) and the bytes the duplicates cost.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from vmip.demo import metrics
from vmip.demo.run import (
    LTE_LOSS,
    LTE_ONE_WAY_MS,
    PROBE_RATE,
    UDP_PORT,
    WIFI_ONE_WAY_MS,
    duplicate_bytes,
)
from vmip.lab.configs import BEST_PROBE_PORT, DUPLICATE_PROBE_PORT
from vmip.lab.emulation import LinkProfile
from vmip.node.events import event_record
from vmip.sim.network import AccessLink
from vmip.sim.world import SimWorld
from vmip.wire import proto
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

#: Probe payload: sequence number and the virtual time it was sent.
PROBE = struct.Struct("!Id")
SCENARIOS = ("roaming",)
DEFAULT_DURATION = 60.0
DEFAULT_PERIOD = 5.0
#: Virtual seconds the nodes get to register before the probes start.
SETTLE = 3.0
#: Round trip of each of the MN's links: the best-link target is one of the link that remains.
LINK_RTT_MS = {"wifi0": 2 * WIFI_ONE_WAY_MS, "lte0": 2 * LTE_ONE_WAY_MS}


@dataclass
class SimOptions:
    scenario: str = "roaming"
    duration: float = DEFAULT_DURATION
    period: float = DEFAULT_PERIOD
    seed: int = 1
    json_path: Path | None = None
    #: The multi-CoA configs, two probe classes and the multi-CoA report.
    multi_coa: bool = False


def demo_profiles() -> dict[tuple[str, str], LinkProfile]:
    """The demo's link shaping (per direction), at the MN's two access links."""
    return {("mn", "wifi0"): LinkProfile(delay_ms=WIFI_ONE_WAY_MS),
            ("mn", "lte0"): LinkProfile(delay_ms=LTE_ONE_WAY_MS, loss=LTE_LOSS)}


def udp_probe(src: IPv6Address, dst: IPv6Address, seq: int, sent: float,
              port: int = UDP_PORT) -> bytes:
    payload = PROBE.pack(seq, sent)
    segment = build_udp(port, port, payload, src.packed, dst.packed)
    return build_ipv6_header(src.packed, dst.packed, proto.UDP, len(segment)) + segment


def probe_of(packet: bytes, port: int = UDP_PORT) -> tuple[int, float] | None:
    """``(seq, sent)`` if *packet* is a probe (IPv6, UDP right after it, to *port*)."""
    if len(packet) < 48 + PROBE.size or packet[0] >> 4 != 6 or packet[6] != proto.UDP:
        return None
    if int.from_bytes(packet[42:44], "big") != port:
        return None
    seq, sent = PROBE.unpack_from(packet, 48)
    return seq, sent


class ProbeStream:
    """Probes one way, at a fixed rate, from one node's TUN to another's."""

    def __init__(self, world: SimWorld, sender: str, src: IPv6Address, dst: IPv6Address,
                 rate: float, port: int = UDP_PORT, offset: float = 0.0) -> None:
        self.world, self.sender, self.src, self.dst = world, sender, src, dst
        self.interval = 1.0 / rate
        self.port = port
        #: Seconds after start() of the first probe (streams side by side do not send together).
        self.offset = offset
        self.sent = 0
        self.arrivals: list[metrics.Arrival] = []
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.offset > 0:
            self._handle = self.world.loop.call_later(self.offset, self._tick)
        else:
            self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self.world.loop
        tun = self.world.tuns.get(self.sender)
        if tun is not None and self.sender in self.world.nodes:
            tun.inject(udp_probe(self.src, self.dst, self.sent, loop.time(), self.port))
            self.sent += 1
        self._handle = loop.call_later(self.interval, self._tick)

    def received(self, packet: bytes) -> bool:
        probe = probe_of(packet, self.port)
        if probe is None or packet[8:24] != self.src.packed:
            return False
        self.arrivals.append(metrics.Arrival(probe[0], probe[1], self.world.loop.time()))
        return True


def run_sim(options: SimOptions, *, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the scenario; print the demo's table; return (and maybe write) the report."""
    if options.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {options.scenario!r}; known: {', '.join(SCENARIOS)}")
    started = time.monotonic()
    with SimWorld(seed=options.seed, profiles=demo_profiles(),
                  multi_coa=options.multi_coa) as world:
        scenario = _roaming_multi_coa if options.multi_coa else _roaming
        report = world.run(scenario(world, options))
    report["wall_s"] = round(time.monotonic() - started, 2)
    if options.json_path is not None:
        # Everything but the wall time is a function of the seed.
        stable = {k: v for k, v in report.items() if k != "wall_s"}
        options.json_path.write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    out(format_sim_report(report))
    return report


async def _link_schedule(world: SimWorld, options: SimOptions, begin: float,
                         before_change: Callable[[], None] = lambda: None
                         ) -> list[metrics.Trigger]:
    """The demo's schedule: the MN's wifi0 down, then up, every ``period`` from *begin*;
    *before_change* runs at each change, just before it (counter readings)."""
    loop = world.loop
    triggers: list[metrics.Trigger] = []
    wifi_up = True
    end = begin + options.duration
    next_change = begin + options.period
    while next_change < end - 1e-9:
        await asyncio.sleep(next_change - loop.time())
        before_change()
        wifi_up = not wifi_up
        world.set_link("mn", "wifi0", wifi_up)
        now = loop.time()
        triggers.append(metrics.Trigger(now, "wifi0", "up" if wifi_up else "down", done=now))
        next_change += options.period
    await asyncio.sleep(max(0.0, end - loop.time()))
    return triggers


class Timeline:
    """Every event a node publishes from now on, after those it still remembers:
    a node keeps only its last few hundred (vmip.node.events.TIMELINE)."""

    def __init__(self, node: Any) -> None:
        self.records = node.events.records()
        node.events.subscribe(lambda timed: self.records.append(event_record(timed)))


class LinkDrops:
    """The simulated underlay's random drops on one of the MN's links, per direction:
    what the emulated loss took, to tell it from a handover's (vmip.demo.metrics)."""

    def __init__(self, world: SimWorld, node: str, link: str) -> None:
        self.node, self.link = node, link
        self.loop = world.loop
        self.counts = {"mn_to_cn": 0, "cn_to_mn": 0}
        #: When each drop happened: the loss is drawn as the datagram is sent.
        self.times: dict[str, list[float]] = {"mn_to_cn": [], "cn_to_mn": []}
        world.network.observers.append(self._observe)

    def _observe(self, src: AccessLink, dst: AccessLink | None, packet: bytes,
                 verdict: str) -> None:
        if verdict != "lost":
            return
        if (src.node, src.name) == (self.node, self.link):
            direction = "mn_to_cn"
        elif dst is not None and (dst.node, dst.name) == (self.node, self.link):
            direction = "cn_to_mn"
        else:
            return
        self.counts[direction] += 1
        self.times[direction].append(self.loop.time())


async def _started(world: SimWorld) -> tuple[IPv6Address, IPv6Address]:
    """Start every node and let them settle; the MN's home address and the CN's."""
    await world.start_all()
    plan = world.plan
    hoa = IPv6Address(plan.node("mn").overlay_addresses[0])
    cn = IPv6Address(plan.node("cn").overlay_addresses[0])
    await asyncio.sleep(SETTLE)
    return hoa, cn


async def _roaming_multi_coa(world: SimWorld, options: SimOptions) -> dict[str, Any]:
    loop = world.loop
    hoa, cn = await _started(world)
    interval = 1.0 / PROBE_RATE
    # Two classes both ways; the best-link one half an interval later.
    classes = {metrics.DUPLICATE: (DUPLICATE_PROBE_PORT, 0.0),
               metrics.BEST: (BEST_PROBE_PORT, interval / 2)}
    to_cn = {name: ProbeStream(world, "mn", hoa, cn, PROBE_RATE, port, offset)
             for name, (port, offset) in classes.items()}
    to_mn = {name: ProbeStream(world, "cn", cn, hoa, PROBE_RATE, port, offset)
             for name, (port, offset) in classes.items()}
    world.tun_sinks["cn"] = lambda packet: any(s.received(packet) for s in to_cn.values())
    world.tun_sinks["mn"] = lambda packet: any(s.received(packet) for s in to_mn.values())
    drops = LinkDrops(world, "mn", "lte0")
    timelines = {name: Timeline(world.nodes[name]) for name in ("mn", "cn")}
    overhead: list[metrics.Snapshot] = []
    emulated: list[metrics.Snapshot] = []

    def read_counters() -> None:
        now = loop.time()
        overhead.append((now, {name: duplicate_bytes({"node": dict(world.nodes[name].counters)})
                               for name in ("mn", "cn")}))
        emulated.append((now, dict(drops.counts)))

    for stream in (*to_cn.values(), *to_mn.values()):
        stream.start()
    begin = loop.time()
    read_counters()
    triggers = await _link_schedule(world, options, begin, read_counters)
    end = loop.time()
    for stream in (*to_cn.values(), *to_mn.values()):
        stream.stop()
    # Probes in flight land within a second; the readings close the last window.
    await asyncio.sleep(1.0)
    read_counters()
    mn = world.nodes["mn"]
    coa_links = {str(link.coa): link.name for link in mn.config.links if link.coa is not None}
    streams = {name: metrics.ClassStreams(to_cn[name].arrivals, to_mn[name].arrivals)
               for name in classes}
    handovers = metrics.multi_coa_reports(
        triggers=triggers, events=timelines["mn"].records, cn_events=timelines["cn"].records,
        hoa=str(hoa), cn=str(cn), coa_links=coa_links,
        one_way={"wifi0": WIFI_ONE_WAY_MS / 1000.0, "lte0": LTE_ONE_WAY_MS / 1000.0},
        streams=streams, interval=interval, end=end,
        tcp_samples=None,    # no TCP in the simulator
        overhead=[(t, v) for t, v in overhead if t < end] + [(end, overhead[-1][1])],
        emulated_drops=[(t, v) for t, v in emulated if t < end] + [(end, emulated[-1][1])],
        drop_times=drops.times)
    summary = metrics.multi_coa_summary(handovers, LINK_RTT_MS)
    return {
        "handovers": _rounded(handovers),
        "summary": _rounded(summary),
        "multi_coa": True,
        "links": {"wifi0": {"rtt_ms": LINK_RTT_MS["wifi0"]},
                  "lte0": {"rtt_ms": LINK_RTT_MS["lte0"], "loss_per_direction": LTE_LOSS,
                           "nat": True}},
        "probes": {"rate_per_s": PROBE_RATE,
                   "classes": {name: {"port": port,
                                      "mn_to_cn": {"sent": to_cn[name].sent,
                                                   "received": len(to_cn[name].arrivals)},
                                      "cn_to_mn": {"sent": to_mn[name].sent,
                                                   "received": len(to_mn[name].arrivals)}}
                               for name, (port, _) in classes.items()}},
        "emulated_drops": dict(drops.counts),
        "triggers": [{"t": round(t.t - begin, 6), "link": t.link, "action": t.action}
                     for t in triggers],
        "duration_s": options.duration,
        "scenario": options.scenario,
        "seed": options.seed,
        "simulated": True,
        "network": dict(sorted(world.network.counters.items())),
    }


async def _roaming(world: SimWorld, options: SimOptions) -> dict[str, Any]:
    loop = world.loop
    hoa, cn = await _started(world)
    to_cn = ProbeStream(world, "mn", hoa, cn, PROBE_RATE)
    to_mn = ProbeStream(world, "cn", cn, hoa, PROBE_RATE)
    world.tun_sinks["cn"] = to_cn.received
    world.tun_sinks["mn"] = to_mn.received
    to_cn.start()
    to_mn.start()
    begin = loop.time()
    triggers = await _link_schedule(world, options, begin)
    end = begin + options.duration
    to_cn.stop()
    to_mn.stop()
    # Probes in flight land within a second.
    await asyncio.sleep(1.0)
    mn, cn_node = world.nodes["mn"], world.nodes["cn"]
    coa_links = {str(link.coa): link.name for link in mn.config.links if link.coa is not None}
    handovers = metrics.handover_reports(
        triggers=triggers, events=mn.events.records(), coa_links=coa_links,
        mn_to_cn=to_cn.arrivals, cn_to_mn=to_mn.arrivals, interval=1.0 / PROBE_RATE,
        end=end, cn_events=cn_node.events.records())
    for handover in handovers:
        handover["tcp_survived"] = None    # no TCP in the simulator
    summary = metrics.summary(handovers)
    summary["tcp_survived_all"] = None
    report = {
        "handovers": _rounded(handovers),
        "summary": _rounded(summary),
        "links": {"wifi0": {"rtt_ms": 2 * WIFI_ONE_WAY_MS},
                  "lte0": {"rtt_ms": 2 * LTE_ONE_WAY_MS, "loss_per_direction": LTE_LOSS,
                           "nat": True}},
        "probes": {"rate_per_s": PROBE_RATE,
                   "mn_to_cn": {"sent": to_cn.sent, "received": len(to_cn.arrivals)},
                   "cn_to_mn": {"sent": to_mn.sent, "received": len(to_mn.arrivals)}},
        "triggers": [{"t": round(t.t - begin, 6), "link": t.link, "action": t.action}
                     for t in triggers],
        "duration_s": options.duration,
        "scenario": options.scenario,
        "seed": options.seed,
        "simulated": True,
        "network": dict(sorted(world.network.counters.items())),
    }
    return report


def _rounded(value: Any) -> Any:
    """Floats to microseconds: the report's times are virtual, finer digits are noise."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def format_sim_report(report: dict[str, Any]) -> str:
    from vmip.demo.run import format_multi_coa_report, format_report

    probes = report["probes"]
    if report.get("multi_coa"):
        lines = [format_multi_coa_report(report)]
        for name, counts in probes["classes"].items():
            lines.append(f"probes {name}: mn→cn {counts['mn_to_cn']['received']}/"
                         f"{counts['mn_to_cn']['sent']}, cn→mn {counts['cn_to_mn']['received']}/"
                         f"{counts['cn_to_mn']['sent']}")
        lines.append(f"{report['duration_s']:.0f} s simulated (seed {report['seed']}) in "
                     f"{report.get('wall_s', 0):.1f} s")
        return "\n".join(lines)
    lines = [format_report(report)]
    lines.append(f"probes: mn→cn {probes['mn_to_cn']['received']}/{probes['mn_to_cn']['sent']}, "
                 f"cn→mn {probes['cn_to_mn']['received']}/{probes['cn_to_mn']['sent']}; "
                 f"{report['duration_s']:.0f} s simulated (seed {report['seed']}) in "
                 f"{report.get('wall_s', 0):.1f} s")
    return "\n".join(lines)
