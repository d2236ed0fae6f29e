"""Python's cyclic garbage collector in a long-running node: freeze, and time it.

A node's start-up makes most of the objects it will ever hold: the parsed
config, every SA with its ESP transform, the policies, the IRO rules and
their indexes (about 27 kB per provisioned MN on a home agent,
docs/scale.md).  They live as long as the node, yet each full collection
(generation 2) walks every one of them again, with the loop stopped: at
10,000 MNs a pause of the order of a second.  :func:`freeze_start_up`
collects once and then moves what survived into the permanent generation
(``gc.freeze``), out of every later collection's walk; what the node makes
afterwards (bindings, locators, flows) is collected as before.

:class:`GcPauses` times every collection through ``gc.callbacks`` (one
callback at the start and one at the end of each, nothing per object or
per packet) and keeps, per generation, how many ran and the longest pause:
the ``gc`` block of ``vmip status``.
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["GcPauses", "freeze_start_up", "status"]


class GcPauses:
    """Collections per generation and the longest pause of each (ms)."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self._clock = clock
        self._started: float | None = None
        self.collections = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self.total_ms = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        started, self._started = self._started, None
        generation = info.get("generation", 2)
        if started is None or not 0 <= generation <= 2:
            return
        pause = (self._clock() - started) * 1000.0
        self.collections[generation] += 1
        self.total_ms += pause
        self.longest_ms[generation] = max(self.longest_ms[generation], pause)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        while self in gc.callbacks:
            gc.callbacks.remove(self)


#: The process's timer, installed by :func:`freeze_start_up` (``vmip run``).
PAUSES = GcPauses()


def freeze_start_up() -> int:
    """Collect, then freeze what the process holds now; time collections from
    here on.  Returns how many objects were frozen (``vmip run`` after the
    node started)."""
    gc.collect()
    gc.freeze()
    PAUSES.install()
    return gc.get_freeze_count()


def status() -> dict[str, Any]:
    """The ``gc`` block of ``vmip status``."""
    return {
        "frozen_objects": gc.get_freeze_count(),
        "collections": list(PAUSES.collections),
        "longest_pause_ms": [round(ms, 3) for ms in PAUSES.longest_ms],
        "total_pause_ms": round(PAUSES.total_ms, 3),
        "timed": PAUSES in gc.callbacks,
    }
