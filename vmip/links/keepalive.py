"""NAT keepalive scheduling, sans-IO (time in, endpoints out).

RFC 3948 §4: a NAT keepalive (one octet 0xFF) is sent to a peer only when
no other packet went to it during the interval, so that a busy link costs
nothing extra.  The driver calls :meth:`KeepaliveSchedule.note_sent` on its
send path and :meth:`KeepaliveSchedule.due` when the timer fires.
"""

from __future__ import annotations

from vmip.links.base import Endpoint
from vmip.links.errors import LinkError


class KeepaliveSchedule:
    """Which targets need a keepalive, and when to look again."""

    __slots__ = ("_deadline", "_recent", "_targets", "interval")

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise LinkError(f"keepalive interval must be positive, not {interval!r}")
        self.interval = float(interval)
        self._targets: set[Endpoint] = set()
        # Endpoints that got traffic since the last tick: they need no keepalive.
        self._recent: set[Endpoint] = set()
        self._deadline: float | None = None

    @property
    def targets(self) -> frozenset[Endpoint]:
        return frozenset(self._targets)

    def add_target(self, endpoint: Endpoint) -> None:
        self._targets.add(endpoint)

    def remove_target(self, endpoint: Endpoint) -> None:
        self._targets.discard(endpoint)
        self._recent.discard(endpoint)

    def note_sent(self, endpoint: Endpoint) -> None:
        """Data went to *endpoint*: it refreshed the NAT mapping already."""
        if endpoint in self._targets:
            self._recent.add(endpoint)

    def start(self, now: float) -> float:
        """Arm the schedule; returns the first deadline."""
        self._deadline = now + self.interval
        return self._deadline

    def next_deadline(self) -> float | None:
        return self._deadline

    def due(self, now: float) -> list[Endpoint]:
        """Targets that need a keepalive at *now* (empty before the deadline).

        Once the deadline passed, the next one is ``now + interval``: a late
        timer does not cause a burst of catch-up keepalives.
        """
        if self._deadline is None or now < self._deadline:
            return []
        idle = sorted(self._targets - self._recent)
        self._recent.clear()
        self._deadline = now + self.interval
        return idle
