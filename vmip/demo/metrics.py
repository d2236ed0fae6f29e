"""Handover metrics from packet timestamps (sans-IO: lists in, dicts out).

The inputs are what the probe receivers recorded (sequence number, the
sender's wall-clock send time, the receiver's wall-clock arrival time), the
moments the demo changed a link (*triggers*), the TCP receiver's progress
samples and the MN's event timeline (``vmip events``).  All clocks are the
same host clock: every lab namespace shares CLOCK_REALTIME.

Definitions (docs/demo.md):

- a *handover* is a ``CoaChanged`` event of the MN; it belongs to the latest
  trigger before it, and its *window* runs from that trigger to the next
  trigger (or the end of the run);
- the *interruption* in one direction is the longest silence between two
  consecutive probe arrivals that overlaps the window, minus the nominal
  probe interval (a stream that never stops scores 0); ``None`` when no
  probe arrived after the trigger at all;
- *lost packets* are the sequence numbers sent in the window (judged by the
  neighbouring arrivals' send times) that never arrived, both directions;
- *BU → BA* per peer is the time from the first ``BindingUpdateSent`` for
  the new CoA to the ``BindingAccepted`` for it; ``bu_ba_ms`` is the slowest
  peer (the handover is complete only when every peer follows);
- *AOT* says how the new CoA was proven to the CNs: ``"on-move"`` when an
  ``AotResponseSent`` for it appears between the BU and that BA (draft
  §4.5.1: the CN had no proof, the move waited one more round trip),
  ``"early"`` when instead an early test proved it before the move (an
  ``AotStatusReceived`` "proof valid" for it since the previous move,
  draft §4.5.2), ``None`` when neither: the CN still held the proof;
- the TCP connection *survived* when it reported no error and the bytes the
  receiver counted kept growing after the handover.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Arrival:
    seq: int
    sent: float
    received: float


@dataclass(frozen=True, slots=True)
class Trigger:
    """The demo changed a link at wall-clock ``t`` (``action``: "down" / "up")."""

    t: float
    link: str
    action: str
    #: When the change was in place (the lab's netlink calls returned).
    done: float | None = None


def _sorted(arrivals: Iterable[Arrival]) -> list[Arrival]:
    return sorted(arrivals, key=lambda a: a.received)


def longest_gap(arrivals: Sequence[Arrival], start: float, end: float,
                interval: float) -> tuple[float, float] | None:
    """The arrival times around the longest silence overlapping [start, end)
    (see :func:`interruption_ms`); None when there is none to speak of."""
    ordered = _sorted(arrivals)
    times = [a.received for a in ordered]
    if not times or times[-1] < start:
        return None
    first = max(bisect.bisect_left(times, start) - 1, 0)
    last = bisect.bisect_left(times, end)
    longest: tuple[float, float] | None = None
    for i in range(first, min(last + 1, len(times) - 1)):
        gap_start, gap_end = times[i], times[i + 1]
        # A gap whose first missing arrival was due at or after *end* is the
        # next window's (the next link change stopped the stream).
        if gap_end < start or gap_start + interval >= end:
            continue
        if longest is None or gap_end - gap_start > longest[1] - longest[0]:
            longest = (gap_start, gap_end)
    return longest


def interruption_ms(arrivals: Sequence[Arrival], start: float, end: float,
                    interval: float) -> float | None:
    """Longest arrival gap overlapping [start, end), minus *interval*, in ms."""
    if not arrivals or max(a.received for a in arrivals) < start:
        return None  # nothing arrived after the trigger: the stream died
    gap = longest_gap(arrivals, start, end, interval)
    longest = 0.0 if gap is None else gap[1] - gap[0]
    return round(max(longest - interval, 0.0) * 1000.0, 1)


def lost_sequences(arrivals: Sequence[Arrival], start: float, end: float) -> list[int]:
    """Sequence numbers sent within [start, end) that never arrived."""
    by_seq = sorted(arrivals, key=lambda a: a.seq)
    if not by_seq:
        return []
    seqs = [a.seq for a in by_seq]
    # Bracket the window with the last arrival sent before it and the first sent after it.
    before = [a.seq for a in by_seq if a.sent < start]
    after = [a.seq for a in by_seq if a.sent >= end]
    low = max(before) if before else seqs[0] - 1
    high = min(after) if after else seqs[-1] + 1
    sent_at = {a.seq: a.sent for a in by_seq}
    lost = []
    # Each hole between two arrivals: its probes were sent between theirs, evenly
    # spaced; one sent before *start* (or at or after *end*) is the neighbour
    # window's, so a hole across a link change is split, never counted twice.
    for below, above in itertools.pairwise(seqs):
        if above - below < 2 or above <= low or below >= high:
            continue
        step = (sent_at[above] - sent_at[below]) / (above - below)
        for seq in range(below + 1, above):
            sent = sent_at[below] + step * (seq - below)
            if low < seq < high and start <= sent < end:
                lost.append(seq)
    return lost


def _events_between(events: Sequence[Mapping[str, Any]], name: str, start: float,
                    end: float) -> list[Mapping[str, Any]]:
    return [e for e in events if e.get("event") == name and start <= e.get("t", 0) < end]


#: AotStatus code 1: the CN holds a valid proof (draft §4.4.4).
_PROOF_VALID = 1


def registration_times(events: Sequence[Mapping[str, Any]], coa: str | None, start: float,
                       end: float, since: float | None = None
                       ) -> tuple[dict[str, float], str | None]:
    """Per peer BU → BA (ms) for *coa* in [start, end), and how *coa* was proven
    (``"on-move"``, ``"early"`` or ``None``, see the module notes).

    *coa* None is the registration at home (a CoaChanged to no CoA).  *since*:
    where early tests count from (the previous move), default all before *start*."""
    sent: dict[str, float] = {}
    accepted: dict[str, float] = {}
    for e in events:
        t = e.get("t", 0.0)
        if not start <= t < end or e.get("coa") != coa:
            continue
        kind = e.get("event")
        if kind == "BindingUpdateSent":
            peer = e["peer"]     # both events always name their peer
            if peer not in sent:
                sent[peer] = t
        elif kind == "BindingAccepted":
            peer = e["peer"]
            if peer in sent and peer not in accepted and e.get("lifetime", 1) != 0:
                accepted[peer] = t
    times = {peer: round((accepted[peer] - sent[peer]) * 1000.0, 1) for peer in accepted}
    last_ba = max(accepted.values(), default=end)
    aot: str | None = None
    if any(e.get("address") == coa for e in
           _events_between(events, "AotResponseSent", start, last_ba + 1e-6)):
        aot = "on-move"
    elif coa is not None and any(
            e.get("address") == coa and e.get("code") == _PROOF_VALID for e in
            _events_between(events, "AotStatusReceived",
                            since if since is not None else float("-inf"), start)):
        aot = "early"
    return times, aot


def tcp_survived(samples: Sequence[tuple[float, int]], error_at: float | None,
                 after: float, until: float) -> bool:
    """No TCP error before *until*, and received bytes grew after *after*."""
    if error_at is not None and error_at < until:
        return False
    at_handover = 0
    for t, count in samples:
        if t <= after:
            at_handover = count
    return any(t > after and count > at_handover for t, count in samples)


def handover_reports(*, triggers: Sequence[Trigger], events: Sequence[Mapping[str, Any]],
                     coa_links: Mapping[str, str], mn_to_cn: Sequence[Arrival],
                     cn_to_mn: Sequence[Arrival], interval: float,
                     tcp_samples: Sequence[tuple[float, int]] = (),
                     tcp_error_at: float | None = None, end: float,
                     cn_events: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """One record per ``CoaChanged`` event that follows a trigger.

    The timeline of each (``timeline_ms``, from the moment the link change
    was in place): ``moved`` when the MN's CoA changed (movement detection),
    ``cn_sends`` when the CN's outbound rule switched to the new CoA (its
    ``SendTo``; needs *cn_events*).
    """
    ordered = sorted(triggers, key=lambda tr: tr.t)
    starts = [tr.t for tr in ordered]
    reports = []
    previous_move: float | None = None
    for event in sorted((e for e in events if e.get("event") == "CoaChanged"),
                        key=lambda e: e["t"]):
        t = event["t"]
        since, previous_move = previous_move, t
        index = bisect.bisect_right(starts, t) - 1
        if index < 0:
            continue   # the initial attachment, not a handover
        window_start = starts[index]
        window_end = starts[index + 1] if index + 1 < len(starts) else end
        new_coa = event.get("new")
        bu_ba, aot = registration_times(events, new_coa, t, window_end, since)
        lost = (lost_sequences(mn_to_cn, window_start, window_end),
                lost_sequences(cn_to_mn, window_start, window_end))
        trigger = ordered[index]
        origin = trigger.done if trigger.done is not None else trigger.t
        switch = next((e["t"] for e in sorted(cn_events, key=lambda e: e.get("t", 0.0))
                       if e.get("event") == "SendTo" and e.get("coa") == new_coa
                       and t <= e.get("t", 0.0) < window_end), None)
        timeline = {"link_change": round((origin - trigger.t) * 1000.0, 1),
                    "moved": round((t - origin) * 1000.0, 1),
                    "cn_sends": None if switch is None else round((switch - origin) * 1000.0, 1)}
        reports.append({
            "from": coa_links.get(str(event.get("old")), str(event.get("old"))),
            "to": coa_links.get(str(new_coa), str(new_coa)),
            "t": t,
            "trigger": {"link": ordered[index].link, "action": ordered[index].action,
                        "t": window_start},
            "interruption_ms": {
                "mn_to_cn": interruption_ms(mn_to_cn, window_start, window_end, interval),
                "cn_to_mn": interruption_ms(cn_to_mn, window_start, window_end, interval),
            },
            "lost_packets": len(lost[0]) + len(lost[1]),
            "lost": {"mn_to_cn": len(lost[0]), "cn_to_mn": len(lost[1])},
            "bu_ba_ms": max(bu_ba.values()) if bu_ba else None,
            "bu_ba_ms_by_peer": bu_ba,
            "aot": aot,
            "tcp_survived": tcp_survived(tcp_samples, tcp_error_at, t, window_end),
            "timeline_ms": timeline,
        })
    return reports


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a value that was measured)."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    rank = max(1, -(-round(fraction * 1000) * len(data) // 1000))
    return data[min(rank, len(data)) - 1]


def summary(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    worst = [max(v for v in r["interruption_ms"].values() if v is not None)
             if any(v is not None for v in r["interruption_ms"].values()) else None
             for r in reports]
    measured = [w for w in worst if w is not None]
    return {
        "handovers": len(reports),
        "interruption_ms_p50": percentile(measured, 0.5),
        "interruption_ms_p90": percentile(measured, 0.9),
        "interruption_ms_mean": round(statistics.fmean(measured), 1) if measured else None,
        "lost_packets": sum(r["lost_packets"] for r in reports),
        "aot": {kind: sum(1 for r in reports if r["aot"] == kind)
                for kind in ("early", "on-move")},
        "tcp_survived_all": all(r["tcp_survived"] for r in reports),
    }


# --- multi-CoA: one binding per link, flows sent duplicated or on the best link --------------
#
# Definitions (docs/demo.md, "Multi-CoA"):
#
# - a *handover* is a link change the demo made (a trigger): with one binding
#   per link nothing waits for the MN to move its CoA, so every link change
#   is a row, whether or not the MN's primary CoA changed;
# - a copy of a probe is *carried* on a link when the sender's bound paths
#   towards the peer include that link at the send time (the MN's, resp. the
#   CN's, latest ``PathsChanged``; without one, the primary CoA only) and the
#   link stays up until the copy has crossed it (its one-way delay);
# - a lost probe of the duplicate class is *background* (``background_lost``)
#   when the emulated random loss of the one link that carried it explains
#   it: where the emulator's drop times are known (the simulator's underlay,
#   the lab's shaper), a probe sent while one link carried copies with a drop
#   of its own at its send time (the lab: within ``LAB_DROP_WINDOW`` after
#   it), so two lost in a row are background when two drops explain them;
#   with counts only (netem), a single probe (both neighbours of the same
#   class and direction arrived) sent while one link carried copies, and no
#   more of them in a direction and window than the emulator dropped;
# - ``lost_packets.duplicate`` counts every other lost probe of the duplicate
#   class sent in the window: any loss while two links carried copies (one
#   copy is enough), any the emulator's drops do not explain;
# - ``lost_packets.best`` counts every lost probe of the best-link class sent
#   in the window, the emulated loss of the link it used included (as the
#   single-CoA report's ``lost_packets``);
# - ``duplicate_overhead_bytes``: the extra bytes the duplicated copies cost
#   in the window, the MN's and the CN's ``tx_duplicate_bytes`` counters read
#   at the link change that opens it and at the one that closes it.

#: The probe classes of the multi-CoA demo (vmip.lab.configs.demo_flows).
DUPLICATE, BEST = "duplicate", "best"
DIRECTIONS = ("mn_to_cn", "cn_to_mn")


@dataclass(frozen=True, slots=True)
class ClassStreams:
    """One probe class's arrivals, per direction."""

    mn_to_cn: Sequence[Arrival]
    cn_to_mn: Sequence[Arrival]

    def direction(self, name: str) -> Sequence[Arrival]:
        return self.mn_to_cn if name == "mn_to_cn" else self.cn_to_mn


#: A cumulative counter read at a moment: ``(t, {key: value})``.
Snapshot = tuple[float, Mapping[str, float]]


def _change_times(trigger: Trigger) -> float:
    # A link is taken down from the moment the demo asks (what is in flight may
    # die at once) and counts as up only once the change is in place.
    if trigger.action == "down":
        return trigger.t
    return trigger.done if trigger.done is not None else trigger.t


def link_up(triggers: Sequence[Trigger], link: str, t: float) -> bool:
    """Whether *link* was up at *t* (every link starts up; the triggers change that)."""
    state = True
    for trigger in sorted(triggers, key=_change_times):
        if trigger.link == link and _change_times(trigger) <= t:
            state = trigger.action == "up"
    return state


def carries(triggers: Sequence[Trigger], link: str, t: float, one_way: float) -> bool:
    """A copy sent on *link* at *t* crossed it: up at *t* and not taken down before it arrived."""
    if not link_up(triggers, link, t):
        return False
    return not any(tr.link == link and tr.action == "down" and t < tr.t <= t + one_way
                   for tr in triggers)


def bound_links(events: Sequence[Mapping[str, Any]], peer: str, fields: Sequence[str],
                coa_links: Mapping[str, str], primary: str | None, t: float) -> list[str]:
    """The links a node sent copies towards *peer* on at *t*: its latest ``PathsChanged``
    for that peer (the first of *fields* that is not empty), else the *primary* link."""
    latest: Mapping[str, Any] | None = None
    for e in events:
        if e.get("event") == "PathsChanged" and str(e.get("peer")) == peer \
                and e.get("t", 0.0) <= t and (latest is None or e["t"] >= latest["t"]):
            latest = e
    if latest is not None:
        for name in fields:
            paths = latest.get(name) or []
            if paths:
                return [coa_links.get(str(coa), str(coa)) for _, coa in paths]
    return [primary] if primary is not None else []


def primary_link(events: Sequence[Mapping[str, Any]], coa_links: Mapping[str, str],
                 t: float, kind: str = "CoaChanged", key: str = "new") -> str | None:
    """The link of the latest *kind* event's CoA at or before *t* (the MN's primary
    CoA: ``CoaChanged.new``; the CN's: ``SendTo.coa``).  On the MN a
    ``CareOfAddressesChanged`` (primary first) counts too, and before any of
    them the first path of its first ``PathsChanged`` (the primary first)."""
    value = None
    found = False
    first_path = None
    for e in sorted(events, key=lambda e: e.get("t", 0.0)):
        if e.get("t", 0.0) > t:
            break
        if e.get("event") == kind:
            value, found = e.get(key), True
        elif kind == "CoaChanged" and e.get("event") == "CareOfAddressesChanged":
            coas = e.get("coas") or []
            value, found = (coas[0][1] if coas else None), True
        elif kind == "CoaChanged" and e.get("event") == "PathsChanged" and first_path is None:
            paths = e.get("accept") or []
            first_path = paths[0][1] if paths else None
    if not found:
        value = first_path
    return None if value is None else coa_links.get(str(value), str(value))


def window_delta(snapshots: Sequence[Snapshot], start: float, end: float) -> dict[str, float] | None:
    """How much each counter grew between the last reading at or before *start*
    and the last one at or before *end*; None when either is missing."""
    def at(moment: float) -> Mapping[str, float] | None:
        found = None
        for t, values in sorted(snapshots, key=lambda s: s[0]):
            if t <= moment:
                found = values
        return found

    first, last = at(start), at(end)
    if first is None or last is None:
        return None
    return {key: last[key] - first.get(key, 0) for key in last}


#: A drop the emulator timed within this of a lost probe's send time was that probe's
#: (the simulator: its underlay draws the loss as the node sends, at the probe's instant).
DROP_MATCH = 0.0005
#: The lab's window, (before, after) a lost probe's send time: its shaper drops a
#: datagram when it reads it, after the sending node's TUN read, ESP and UDP send
#: (measured on a loaded 2-core VM: 0.2-0.4 ms typically; the nodes alone, send
#: time to wire, 0.6 ms at p99, 8 ms at p99.9, 18 ms at most), and a lost
#: probe's send time is interpolated from its neighbours' (docs/demo.md).
LAB_DROP_WINDOW = (0.002, 0.025)


def _send_time(sent_at: Mapping[int, float], seq: int) -> float | None:
    """When the lost probe *seq* was sent: between its nearest neighbours that arrived."""
    below = max((s for s in sent_at if s < seq), default=None)
    above = min((s for s in sent_at if s > seq), default=None)
    if below is None or above is None:
        return None
    return sent_at[below] + (sent_at[above] - sent_at[below]) * (seq - below) / (above - below)


def split_duplicate_losses(arrivals: Sequence[Arrival], lost: Sequence[int],
                           single_carrier: Callable[[float], bool],
                           emulated_drops: float | None,
                           drop_times: Sequence[float] | None = None,
                           drop_window: tuple[float, float] = (DROP_MATCH, DROP_MATCH)
                           ) -> tuple[list[int], list[int]]:
    """``(handover losses, background losses)`` among the *lost* sequence numbers
    of one direction of the duplicate class (see the notes above).

    *drop_times*: when the emulator dropped each datagram of this direction on
    the link (the simulator's underlay, the lab's shaper): a probe lost while
    one link carried it is then background exactly when a drop falls within
    *drop_window* (seconds before, after) of its send time, each drop
    explaining one probe at most (two losses in a row are two drops)."""
    sent_at = {a.seq: a.sent for a in arrivals}
    drops = sorted(drop_times) if drop_times is not None else None
    handover: list[int] = []
    background: list[int] = []
    used: set[int] = set()
    for seq in sorted(lost):
        if drops is not None:
            sent = _send_time(sent_at, seq)
            if sent is None or not single_carrier(sent):
                handover.append(seq)
                continue
            # The earliest drop in the window not taken by an earlier probe: the
            # windows have one length, so earliest-first matches the most.
            near = bisect.bisect_left(drops, sent - drop_window[0])
            while near in used:
                near += 1
            if near < len(drops) and drops[near] <= sent + drop_window[1]:
                used.add(near)
                background.append(seq)
            else:
                handover.append(seq)
            continue
        before, after = sent_at.get(seq - 1), sent_at.get(seq + 1)
        if before is not None and after is not None and single_carrier((before + after) / 2) and (
                emulated_drops is None or len(background) < emulated_drops):
            background.append(seq)
        else:
            handover.append(seq)
    return handover, background


def settled_delay_ms(arrivals: Sequence[Arrival], start: float, end: float, *,
                     whole: bool = False) -> float | None:
    """Median one-way delay (ms) of the probes sent in the second half of [start, end)
    (*whole*: all of it): which link a class ran on (wifi0 5 ms, lte0 30 ms)."""
    first = start if whole else (start + end) / 2
    delays = sorted(a.received - a.sent for a in arrivals if first <= a.sent < end)
    if not delays:
        return None
    return round(delays[len(delays) // 2] * 1000.0, 1)


def link_of_delay(delay_ms: float | None, one_way: Mapping[str, float]) -> str | None:
    """The link whose one-way delay (s) is nearest *delay_ms*."""
    if delay_ms is None or not one_way:
        return None
    return min(one_way, key=lambda link: abs(one_way[link] * 1000.0 - delay_ms))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def multi_coa_reports(*, triggers: Sequence[Trigger], events: Sequence[Mapping[str, Any]],
                      cn_events: Sequence[Mapping[str, Any]], hoa: str, cn: str,
                      coa_links: Mapping[str, str], one_way: Mapping[str, float],
                      streams: Mapping[str, ClassStreams], interval: float, end: float,
                      tcp_samples: Sequence[tuple[float, int]] | None = (),
                      tcp_error_at: float | None = None,
                      overhead: Sequence[Snapshot] = (),
                      emulated_drops: Sequence[Snapshot] | None = None,
                      drop_times: Mapping[str, Sequence[float]] | None = None,
                      drop_window: tuple[float, float] = (DROP_MATCH, DROP_MATCH),
                      ping: Sequence[Arrival] | None = None) -> list[dict[str, Any]]:
    """One record per link change of the multi-CoA demo (see the notes above).

    *streams* maps ``"duplicate"`` and ``"best"`` to their probes; *one_way*
    each link's one-way delay (s); *overhead* readings of ``{"mn": bytes,
    "cn": bytes}`` of ``tx_duplicate_bytes`` taken at each link change and at
    the end; *emulated_drops* readings of ``{"mn_to_cn": n, "cn_to_mn": n}``,
    the datagrams the link emulator dropped on the MN's links; *drop_times*,
    where known, when it dropped each (per direction, matched to a lost probe
    within *drop_window* of its send time: :func:`split_duplicate_losses`); *tcp_samples*
    None where no TCP ran (the simulator: ``tcp_survived`` is then None).
    """
    ordered = sorted(triggers, key=lambda tr: tr.t)
    mn_events = sorted(events, key=lambda e: e.get("t", 0.0))
    cn_sorted = sorted(cn_events, key=lambda e: e.get("t", 0.0))

    def single_carrier(direction: str) -> Callable[[float], bool]:
        def check(t: float) -> bool:
            if direction == "mn_to_cn":
                links = bound_links(mn_events, cn, ("accept", "send"), coa_links,
                                    primary_link(mn_events, coa_links, t), t)
            else:
                links = bound_links(cn_sorted, hoa, ("send",), coa_links,
                                    primary_link(cn_sorted, coa_links, t, "SendTo", "coa"), t)
            alive = [link for link in set(links)
                     if carries(ordered, link, t, one_way.get(link, 0.0))]
            return len(alive) <= 1
        return check

    reports = []
    previous_move: float | None = None
    for index, trigger in enumerate(ordered):
        start = trigger.t
        stop = ordered[index + 1].t if index + 1 < len(ordered) else end
        origin = trigger.done if trigger.done is not None else trigger.t
        moves = [e for e in mn_events if e.get("event") == "CoaChanged" and start <= e["t"] < stop]
        move = moves[0] if moves else None
        since, previous_move = previous_move, (move["t"] if move else previous_move)
        drops = window_delta(emulated_drops, start, stop) if emulated_drops is not None else None
        lost: dict[str, dict[str, int]] = {DUPLICATE: {}, BEST: {}}
        background: dict[str, int] = {}
        interruption: dict[str, dict[str, float | None]] = {DUPLICATE: {}, BEST: {}}
        gaps: dict[str, list[float | None] | None] = {}
        delays: dict[str, dict[str, float | None]] = {DUPLICATE: {}, BEST: {}}
        # Which link the best-link class ran on in the second before the change.
        best_before: dict[str, str | None] = {}
        for direction in DIRECTIONS:
            for name in (DUPLICATE, BEST):
                arrivals = streams[name].direction(direction)
                interruption[name][direction] = interruption_ms(arrivals, start, stop, interval)
                delays[name][direction] = settled_delay_ms(arrivals, start, stop)
                if name == BEST:
                    best_before[direction] = link_of_delay(
                        settled_delay_ms(arrivals, start - 1.0, start, whole=True), one_way)
                if name == BEST:
                    gap = longest_gap(arrivals, start, stop, interval)
                    gaps[direction] = None if gap is None else [_ms(gap[0] - origin),
                                                                _ms(gap[1] - origin)]
                missing = lost_sequences(arrivals, start, stop)
                if name == BEST:
                    lost[BEST][direction] = len(missing)
                    continue
                handover, quiet = split_duplicate_losses(
                    arrivals, missing, single_carrier(direction),
                    None if drops is None else drops.get(direction, 0),
                    None if drop_times is None else drop_times.get(direction, ()),
                    drop_window)
                lost[DUPLICATE][direction], background[direction] = len(handover), len(quiet)
        cost = window_delta(overhead, start, stop)
        changes = [e["t"] for e in (*mn_events, *cn_sorted)
                   if e.get("event") in ("PathsChanged", "CareOfAddressesChanged")
                   and start <= e.get("t", 0.0) < stop]
        bu_ba, aot = ({}, None) if move is None else registration_times(
            mn_events, move.get("new"), move["t"], stop, since)
        # Strictly before the change: a move can share its instant (the simulator's).
        before = primary_link(mn_events, coa_links, start - 1e-6)
        after = primary_link(mn_events, coa_links, stop - 1e-9)
        ping_lost = None if ping is None else len(lost_sequences(ping, start, stop))
        # A reply's received - sent is its round trip: which links ping's copies took.
        ping_rtt = None if ping is None else settled_delay_ms(ping, start, stop)
        reports.append({
            "from": before, "to": after, "t": start,
            "trigger": {"link": trigger.link, "action": trigger.action, "t": start},
            # The link died without warning: the case the duplicate mode is for.
            "abrupt": trigger.action == "down",
            "interruption_ms": interruption,
            # Where the best-link class's longest silence was: its last arrival
            # before it and the first after, in ms from the link change in place.
            "best_gap_ms": gaps,
            # Per class, the median one-way delay in the window's second half: the
            # link it ran on once settled (same host clock at both ends).
            "one_way_ms": delays,
            # The best-link class's link before the change and once settled: an
            # abrupt row only tests the best-link switch if that class was on
            # the link that died.
            "best_link": {"before": best_before,
                          "after": {d: link_of_delay(delays[BEST][d], one_way)
                                    for d in DIRECTIONS}},
            "lost_packets": {DUPLICATE: sum(lost[DUPLICATE].values()),
                             BEST: sum(lost[BEST].values())},
            "lost": lost,
            "background_lost": background,
            "emulated_drops": None if drops is None else {d: int(drops.get(d, 0))
                                                         for d in DIRECTIONS},
            "duplicate_overhead_bytes": None if cost is None else int(sum(cost.values())),
            "duplicate_overhead_bytes_by_node": None if cost is None else
            {node: int(value) for node, value in sorted(cost.items())},
            "ping_lost": ping_lost,
            "ping_rtt_ms": ping_rtt,
            "bu_ba_ms": max(bu_ba.values()) if bu_ba else None,
            "bu_ba_ms_by_peer": bu_ba,
            "aot": aot,
            "tcp_survived": None if tcp_samples is None else
            tcp_survived(tcp_samples, tcp_error_at, start, stop),
            "timeline_ms": {"link_change": _ms(origin - trigger.t),
                            "moved": None if move is None else _ms(move["t"] - origin),
                            "settled": _ms(max(changes) - origin) if changes else None},
        })
    return reports


def multi_coa_summary(reports: Sequence[Mapping[str, Any]],
                      rtt_ms: Mapping[str, float]) -> dict[str, Any]:
    """Totals over the run and the targets (docs/multi-coa.md): no duplicate-class
    loss on an abrupt handover, best-link interruption within one RTT of the
    link that remains, TCP alive after every handover."""
    abrupt = [r for r in reports if r["abrupt"]]
    best = [max((v for v in r["interruption_ms"][BEST].values() if v is not None), default=None)
            if all(v is not None for v in r["interruption_ms"][BEST].values()) else None
            for r in reports]
    measured = [w for w in best if w is not None]
    over_rtt = []
    for r, worst in zip(reports, best):
        if not r["abrupt"]:
            continue
        limit = rtt_ms.get(str(r["to"]))
        if worst is None or limit is None or worst > limit:
            over_rtt.append({"t": r["t"], "interruption_ms": worst, "rtt_ms": limit})
    # Abrupt rows where the best-link class was on the link that died (either way):
    # only those show the switch; the others show a flow the change did not touch.
    switched = [r for r in abrupt
                if r["trigger"]["link"] in (r.get("best_link") or {}).get("before", {}).values()]
    costs = [r["duplicate_overhead_bytes"] for r in reports]
    tcp = [r["tcp_survived"] for r in reports]
    tcp_all = None if any(v is None for v in tcp) else all(tcp)
    return {
        "handovers": len(reports),
        "abrupt_handovers": len(abrupt),
        "lost_packets": {DUPLICATE: sum(r["lost_packets"][DUPLICATE] for r in reports),
                         BEST: sum(r["lost_packets"][BEST] for r in reports)},
        "lost_packets_duplicate_abrupt": sum(r["lost_packets"][DUPLICATE] for r in abrupt),
        "background_lost": sum(sum(r["background_lost"].values()) for r in reports),
        "duplicate_overhead_bytes": None if any(c is None for c in costs) else int(sum(costs)),
        # Worse direction of the best-link class, as the single-CoA report's.
        "interruption_ms_p50": percentile(measured, 0.5),
        "interruption_ms_p90": percentile(measured, 0.9),
        "interruption_ms_max": max(measured) if measured else None,
        "tcp_survived_all": tcp_all,
        "targets": {
            "duplicate_lossless_on_abrupt": all(r["lost_packets"][DUPLICATE] == 0
                                                for r in abrupt) and bool(abrupt),
            "best_within_one_rtt": not over_rtt and bool(abrupt),
            "best_over_rtt": over_rtt,
            "best_on_dying_link": len(switched),
            "tcp_survived": tcp_all,
        },
    }
