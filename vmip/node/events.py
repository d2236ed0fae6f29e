"""Typed events inside a node, and their JSON form at the edge.

The cores report what happened as typed objects (:mod:`vmip.mobility.events`
and the like).  Inside the node they stay typed: :class:`EventHub` hands each
one, with the time it happened, to whoever subscribed (the movement watcher
waits for a ``RegistrationTimeout`` of its HA, not for a string).  Only the
control socket, the dashboard and the reports turn them into JSON, with
:func:`event_record`.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vmip.log import get_logger

log = get_logger(__name__)

#: How many events the node remembers for ``vmip events`` and the dashboard.
TIMELINE = 500


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """An event and the wall-clock time it was published."""

    t: float
    event: Any


Listener = Callable[[TimedEvent], None]


class EventHub:
    """Publish typed events to listeners; keep the last :data:`TIMELINE` of them."""

    def __init__(self, wall_clock: Callable[[], float], size: int = TIMELINE) -> None:
        self.wall_clock = wall_clock
        self.timeline: collections.deque[TimedEvent] = collections.deque(maxlen=size)
        self._listeners: list[Listener] = []
        self.listener_errors = 0

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def publish(self, event: Any) -> TimedEvent:
        timed = TimedEvent(self.wall_clock(), event)
        self.timeline.append(timed)
        for listener in list(self._listeners):
            try:
                listener(timed)
            except Exception:  # a broken listener costs its own work, not the node
                self.listener_errors += 1
                log.exception("event listener failed", event_type=type(event).__name__)
        return timed

    def records(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The timeline as JSON-ready dicts, newer than *since* (wall clock)."""
        return [event_record(e) for e in self.timeline if e.t > since]


def event_fields(event: Any) -> dict[str, Any]:
    """A dataclass event's fields, by name (in declaration order)."""
    names = getattr(type(event), "__dataclass_fields__", {})
    return {name: getattr(event, name) for name in names}


def event_record(timed: TimedEvent) -> dict[str, Any]:
    """``{"t": ..., "event": "BindingAccepted", "peer": "2001:db8::1", ...}``."""
    return {"t": timed.t, "event": type(timed.event).__name__,
            **{k: jsonable(v) for k, v in event_fields(timed.event).items()}}


def jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def records_of(events: Iterable[TimedEvent]) -> list[dict[str, Any]]:
    return [event_record(e) for e in events]
