"""Retransmission timing and protocol constants (RFC 6275 §11.8, §12, §13).

Sans-IO: times are plain floats handed in by the caller (``now``); nothing
here reads a clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# RFC 6275 §12: the first home registration waits longer, since the HA runs
# DAD for the home address before answering (§11.8).
INITIAL_BINDACK_TIMEOUT_FIRST_REG = 1.5
INITIAL_BINDACK_TIMEOUT = 1.0
MAX_BINDACK_TIMEOUT = 32.0

#: RFC 6275 §12, §11.8: BUs to one peer per second, at most.
MAX_UPDATE_RATE = 3

#: A binding is refreshed when this share of its granted lifetime has passed
#: (RFC 6275 §11.7.1 only says "before it expires"; 80 % leaves room for the
#: retransmissions of the refresh: 84 s of 420 s).
REFRESH_FRACTION = 0.8

#: Seconds per lifetime unit in BU/BA (RFC 6275 §6.1.7).
LIFETIME_UNIT = 4


class Retransmission:
    """One message retransmitted with exponential back-off (RFC 6275 §11.8).

    The interval doubles after each retransmission until it reaches
    ``maximum``, then stays there ("MAY continue to send these messages at
    this slower rate indefinitely").  :meth:`expire` tells when the wait at
    the maximum interval ran out for the first time: the moment to report a
    timeout.
    """

    __slots__ = ("attempts", "deadline", "initial", "interval", "maximum", "timed_out")

    def __init__(self, now: float, initial: float, maximum: float = MAX_BINDACK_TIMEOUT):
        self.initial = initial
        self.maximum = maximum
        self.interval = min(initial, maximum)
        self.deadline = now + self.interval
        self.attempts = 1
        self.timed_out = False

    def expire(self, now: float) -> bool:
        """The deadline passed and the message is being resent: schedule the next one.

        Returns true once: when the wait that just ended was already at the
        maximum interval.
        """
        first_timeout = self.interval >= self.maximum and not self.timed_out
        if first_timeout:
            self.timed_out = True
        self.interval = min(self.interval * 2, self.maximum)
        self.deadline = now + self.interval
        self.attempts += 1
        return first_timeout

    def restart(self, now: float, initial: float | None = None) -> None:
        """Start over at the initial interval (a new message replaces the old one)."""
        if initial is not None:
            self.initial = initial
        self.interval = min(self.initial, self.maximum)
        self.deadline = now + self.interval
        self.attempts = 1
        self.timed_out = False


def earliest(*deadlines: float | None) -> float | None:
    """The smallest deadline that is set, or ``None``."""
    found: float | None = None
    for deadline in deadlines:
        if deadline is not None and (found is None or deadline < found):
            found = deadline
    return found


class Deadlines(Generic[K]):
    """The next deadline over many keys (bindings, peers) in O(log n).

    A heap of ``(deadline, serial, key)`` with lazy deletion: rescheduling or
    cancelling a key leaves its old heap entry behind, recognised as stale by
    its serial and skipped when it reaches the top.  The heap is rebuilt when
    stale entries outnumber live ones, so it stays O(live keys) however often
    keys are rescheduled (a binding refreshed every few minutes, for ever).
    """

    __slots__ = ("_heap", "_live", "_serial")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, tuple[float, int]] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def get(self, key: K) -> float | None:
        scheduled = self._live.get(key)
        return scheduled[0] if scheduled is not None else None

    def schedule(self, key: K, deadline: float | None) -> None:
        """*key* is due at *deadline* (``None``: never), replacing what it had."""
        if deadline is None:
            self._live.pop(key, None)
            return
        current = self._live.get(key)
        if current is not None and current[0] == deadline:
            return
        self._serial += 1
        self._live[key] = (deadline, self._serial)
        heapq.heappush(self._heap, (deadline, self._serial, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(when, serial, k) for k, (when, serial) in self._live.items()]
            heapq.heapify(self._heap)

    def cancel(self, key: K) -> None:
        self._live.pop(key, None)

    def next(self) -> float | None:
        """The earliest deadline of any key, or ``None``."""
        heap, live = self._heap, self._live
        while heap:
            deadline, serial, key = heap[0]
            current = live.get(key)
            if current is not None and current[1] == serial:
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[K]:
        """Every key due at or before *now*, earliest first; they are unscheduled."""
        due: list[K] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            _deadline, serial, key = heapq.heappop(heap)
            current = live.get(key)
            if current is not None and current[1] == serial:
                del live[key]
                due.append(key)
        return due
