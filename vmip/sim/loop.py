"""An asyncio event loop whose clock is virtual: the simulator's time source.

The node's code schedules everything through its loop (``call_later``,
``call_at``, ``asyncio.sleep``) and reads time through the clock it was given.
This loop's :meth:`time` is a number that moves only when the loop has
nothing left to run now: instead of sleeping until the next timer, the
selector jumps the clock to it.  So a simulated minute takes as long as the
work done in it, and two runs that do the same work see the same times.

Nothing may wait on a real file descriptor in such a loop (no sockets, no
TUN): the simulator's links and TUNs are in memory and hand packets over
with ``call_at``.  The self-pipe that every selector loop owns is registered
but never polled.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class SimulationStalled(RuntimeError):
    """The loop has nothing to run and no timer: the simulation cannot go on."""


class _VirtualSelector(selectors.BaseSelector):
    """Keeps registrations, never polls: a wait of *timeout* moves the clock instead."""

    def __init__(self) -> None:
        self._map: dict[int, selectors.SelectorKey] = {}
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._map[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        if timeout is None:
            # Nothing scheduled at all: in a real loop this would sleep forever.
            raise SimulationStalled("nothing is scheduled: every node is idle for good")
        if timeout > 0:
            loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return dict(self._map)

    def close(self) -> None:
        self._map.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (seconds from *start*)."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        self._virtual_now = float(start)
        super().__init__(selector)
        selector.loop = self
        # Timers due within this much of "now" run in the same round; keep it
        # tiny so the order of close timers is the order of their deadlines.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (only the selector and tests call this)."""
        if seconds < 0:
            raise ValueError("virtual time never goes back")
        self._virtual_now += seconds
