"""The live dashboard: what a node says on its control socket, drawn with rich.

:func:`collect` asks one node for ``status``, ``sa.list``, ``remap.list``,
``mobility``, ``events`` and ``counters`` and returns a plain JSON-able
snapshot; :func:`render` turns a snapshot (and the previous one, for rates)
into a renderable that fits the given terminal height.  Rendering never
talks to a node, so the tests feed it recorded snapshots.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vmip.humanize import event_value, format_duration

#: Snapshot key → control command.
QUERIES = {"status": "status", "sas": "sa.list", "remap": "remap.list",
           "mobility": "mobility", "events": "events", "counters": "counters"}
#: Events worth a line on the timeline (the rest are plumbing).
TIMELINE_EVENTS = frozenset({
    "CoaChanged", "BindingUpdateSent", "BindingAccepted", "BindingRefused",
    "RegistrationTimeout", "BindingErrorReceived", "AotOfferSent", "AotResponseSent",
    "AotStatusReceived", "BindingCached", "BindingDeregistered", "BindingExpired",
    "AotChallengeSent", "DataPathChanged", "SendTo", "Moved",
})


def collect(client: Any, *, events_since: float = 0.0) -> dict[str, Any]:
    """One snapshot of a node; a failing query leaves ``{"error": message}``."""
    snapshot: dict[str, Any] = {"t": time.time()}
    for key, command in QUERIES.items():
        args = {"since": events_since} if command == "events" else {}
        try:
            snapshot[key] = client.call(command, **args)
        except Exception as exc:  # noqa: BLE001 - one broken query must not blank the screen
            snapshot[key] = {"error": str(exc)}
    return snapshot


def _ok(value: Any) -> bool:
    return not (isinstance(value, dict) and set(value) == {"error"})


def _answer(snapshot: Mapping[str, Any], key: str, failed: Any) -> Any:
    """The node's answer (decoded JSON) to query *key*, or *failed* if the query failed."""
    value = snapshot.get(key)
    return value if _ok(value) else failed


def link_rates(previous: Mapping[str, Any] | None, current: Mapping[str, Any]
               ) -> dict[str, tuple[float, float]]:
    """Packets per second (rx, tx) per link between two snapshots."""
    cur: Any = current.get("counters")   # decoded JSON
    if previous is None or not _ok(cur) or not _ok(previous.get("counters")):
        return {}
    dt = current["t"] - previous["t"]
    if dt <= 0:
        return {}
    before = previous["counters"].get("links", {})
    rates = {}
    for name, counts in cur.get("links", {}).items():
        old = before.get(name, {})
        rates[name] = (max(counts.get("rx", 0) - old.get("rx", 0), 0) / dt,
                       max(counts.get("tx", 0) - old.get("tx", 0), 0) / dt)
    return rates


def flow_paths(snapshot: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(peer, state, CoA, path) per binding the node holds or asked for."""
    mobility = snapshot.get("mobility")
    if not _ok(mobility) or not isinstance(mobility, dict):
        return []
    rows = []
    mn = mobility.get("mn")
    if mn:
        for entry in mn.get("binding_update_list", []):
            peer = entry.get("peer", "?")
            if entry.get("home"):
                path = "home agent"
            else:
                # IPsec data to this CN leaves from the CoA only once the CN
                # proved it (draft §4.5.1); until then it goes through the HA.
                path = "direct" if entry.get("direct") else "via HA"
            rows.append((peer, str(entry.get("state", "?")), str(entry.get("coa") or "-"), path))
    for role in ("ha", "cn"):
        part = mobility.get(role) or {}
        for entry in part.get("binding_cache", []):
            rows.append((str(entry.get("hoa", "?")), "cached", str(entry.get("coa") or "-"),
                         "home reg." if role == "ha" else "direct"))
    return rows


def rtt_text(milliseconds: Any) -> str:
    """A smoothed RTT for the link table: ``4.2ms``, ``62ms``, ``1.3s``; ``-`` if unknown."""
    if not isinstance(milliseconds, (int, float)) or milliseconds < 0:
        return "-"
    if milliseconds < 10:
        return f"{milliseconds:.1f}ms"
    if milliseconds < 1000:
        return f"{milliseconds:.0f}ms"
    return f"{milliseconds / 1000:.1f}s"


def loss_text(loss: Any) -> str:
    """A loss rate (0..1) as a percentage: ``0%``, ``0.5%``, ``12%``."""
    if not isinstance(loss, (int, float)) or not 0 <= loss <= 1:
        return "-"
    percent = loss * 100
    if percent == 0:
        return "0%"
    return f"{percent:.1f}%" if percent < 10 else f"{percent:.0f}%"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _event_line(event: Mapping[str, Any], width: int) -> str:
    stamp = datetime.fromtimestamp(event.get("t", 0)).strftime("%H:%M:%S.%f")[:-3]
    details = " ".join(f"{k}={event_value(k, v)}" for k, v in event.items()
                       if k not in ("t", "event", "hoa") and v not in (None, ""))
    return _clip(f"{stamp} {event.get('event', '?')} {details}", width)


def _uptime(seconds: Any) -> str:
    try:
        return format_duration(float(seconds)).replace(" ", "")
    except (TypeError, ValueError):
        return "?"


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_header=True,
                  header_style="bold", expand=False)
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    return table


def render(snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None, *,
           width: int = 80, height: int = 24, extra: Sequence[str] = ()) -> RenderableType:
    """The dashboard for one node, in at most *height* lines of *width* columns."""
    status = _answer(snapshot, "status", {})
    mobility = _answer(snapshot, "mobility", {})
    mn = (mobility or {}).get("mn") or {}
    movement = (mobility or {}).get("movement") or {}
    parts: list[RenderableType] = []
    used = 0

    name = status.get("name", "?")
    roles = ",".join(status.get("roles", []))
    head = Text(_clip(f"vmip top · {name} ({roles}) · link {status.get('active_link') or '-'}"
                      f" · CoA {mn.get('coa') or '-'} · up {_uptime(status.get('uptime_s', 0))}",
                      width), style="bold reverse")
    parts.append(head)
    used += 1
    for line in extra:
        parts.append(Text(_clip(line, width)))
        used += 1
    errors = [k for k in QUERIES if not _ok(snapshot.get(k))]
    if errors:
        message = snapshot[errors[0]]["error"]
        parts.append(Text(_clip(f"! {', '.join(errors)}: {message}", width), style="red"))
        used += 1

    # Links: priority, usability (movement watcher), measured quality, rates.
    rates = link_rates(previous, snapshot)
    links = _table("link", "state", "rtt", "loss", "rx pkt/s", "tx pkt/s")
    mv_links = movement.get("links", {}) if isinstance(movement, dict) else {}
    measured = status.get("link_quality") or {}
    for link in status.get("links", []):
        lname = link.get("name", "?")
        link_state = []
        if lname == status.get("active_link"):
            link_state.append("active")
        info = mv_links.get(lname)
        if info is not None:
            link_state.append("up" if info.get("usable") else "DOWN")
            if not info.get("reachable", True):
                link_state.append("unreach")
        quality = measured.get(lname) if isinstance(measured, dict) else None
        quality = quality if isinstance(quality, dict) else {}
        if quality.get("state") in ("failing", "stale"):
            link_state.append(str(quality["state"]))
        elif quality.get("best") and len(measured) > 1:
            link_state.append("best")
        rx, tx = rates.get(lname, (0.0, 0.0))
        links.add_row(lname, " ".join(link_state) or "-", rtt_text(quality.get("srtt_ms")),
                      loss_text(quality.get("loss")) if quality else "-",
                      f"{rx:.0f}", f"{tx:.0f}")
    parts.append(links)
    used += 1 + len(status.get("links", []))

    flows = flow_paths(snapshot)
    if flows:
        table = _table("binding peer", "state", "CoA", "path")
        for peer, state, coa, path in flows[:4]:
            table.add_row(peer, state, coa, path)
        parts.append(table)
        used += 1 + min(len(flows), 4)

    sas = _answer(snapshot, "sas", [])
    remap = _answer(snapshot, "remap", {})
    rules = (remap or {}).get("rules", [])
    rule_lines = rules if isinstance(rules, list) else str(rules).splitlines()
    events = [e for e in _answer(snapshot, "events", [])
              if e.get("event") in TIMELINE_EVENTS]
    # What is left goes to SAs, remap rules and the timeline, in that order of need.
    left = max(height - used - 3, 3)
    sa_rows = min(len(sas), max(2, left // 3))
    remap_rows = min(len(rule_lines), 2)
    event_rows = max(left - sa_rows - remap_rows - 1, 1)

    sa_table = _table(f"SAs ({len(sas)})", "spi", "dir", "pkts", "peer")
    for sa in sorted(sas, key=lambda s: -s.get("packets", 0))[:sa_rows]:
        peer = sa.get("dst") if sa.get("direction") == "out" else sa.get("src")
        sa_table.add_row(str(sa.get("name", "?")), f"{sa.get('spi', 0):#x}",
                         str(sa.get("direction", "?")), str(sa.get("packets", 0)), str(peer))
    parts.append(sa_table)

    parts.append(Text(_clip(f"remap rules: {len(rule_lines)}", width), style="bold"))
    for rule in rule_lines[:remap_rows]:
        parts.append(Text(_clip("  " + str(rule), width)))

    parts.append(Text("events", style="bold"))
    for event in events[-event_rows:]:
        parts.append(Text(_event_line(event, width)))
    return Group(*parts)


def render_text(snapshot: Mapping[str, Any], previous: Mapping[str, Any] | None = None, *,
                width: int = 80, height: int = 24, extra: Sequence[str] = ()) -> str:
    """The dashboard as plain text (``vmip top --once``, tests)."""
    from rich.console import Console

    console = Console(width=width, height=height, record=True, file=_Null(),
                      color_system=None, force_terminal=False)
    console.print(render(snapshot, previous, width=width, height=height, extra=extra))
    return console.export_text()


class _Null(io.StringIO):
    """A text file that keeps nothing (the recording console keeps the text)."""

    def write(self, data: str) -> int:
        return len(data)
