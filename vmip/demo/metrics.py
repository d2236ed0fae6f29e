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
import statistics
from collections.abc import Iterable, Mapping, Sequence
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


def interruption_ms(arrivals: Sequence[Arrival], start: float, end: float,
                    interval: float) -> float | None:
    """Longest arrival gap overlapping [start, end), minus *interval*, in ms."""
    ordered = _sorted(arrivals)
    times = [a.received for a in ordered]
    if not times or times[-1] < start:
        return None  # nothing arrived after the trigger: the stream died
    first = max(bisect.bisect_left(times, start) - 1, 0)
    last = bisect.bisect_left(times, end)
    longest = 0.0
    for i in range(first, min(last + 1, len(times) - 1)):
        gap_start, gap_end = times[i], times[i + 1]
        # A gap whose first missing arrival was due at or after *end* is the
        # next window's (the next link change stopped the stream).
        if gap_end < start or gap_start + interval >= end:
            continue
        longest = max(longest, gap_end - gap_start)
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
    received = set(seqs)
    return [s for s in range(low + 1, high) if s not in received]


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
