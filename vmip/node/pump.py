"""One timer for every core a node drives, and one place where a core's bug stops.

aioquic's asyncio protocol drives its ``QuicConnection`` the same way after
every input: hand it the input, send what it queued, then arm one timer at
``get_timer()``.  A vmip node drives several sans-IO cores (the SAD's
lifetimes, the MIPv6 cores, the IKE SAs, the movement policy); each is a
:class:`Driven` here, and :class:`Pump` keeps a single loop timer at the
earliest of their deadlines.  When it fires, every core whose deadline has
come gets ``handle_timer(now)``; each call runs under :meth:`Pump.guard`, so a
bug in one core is logged (once per kind) and counted, and the node goes on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from vmip.log import get_logger

log = get_logger(__name__)


class Driven(Protocol):
    """A core the pump keeps on time."""

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class Pump:
    """Keeps one timer at the earliest deadline of the cores it drives."""

    def __init__(self, clock: Callable[[], float], counters: Counter[str]) -> None:
        self.clock = clock
        self.counters = counters
        self._cores: list[tuple[str, Driven]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._arm_pending = False
        self._logged: set[tuple[str, str]] = set()

    def add(self, name: str, core: Driven) -> None:
        self._cores.append((name, core))
        self.arm()

    def remove(self, core: Driven) -> None:
        self._cores = [(n, c) for n, c in self._cores if c is not core]
        self.arm()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.arm()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._deadline = None
        self._loop = None

    # -- arming ---------------------------------------------------------------

    def arm(self) -> None:
        """Put the one timer at the earliest deadline (call after any input)."""
        loop = self._loop
        if loop is None:
            return
        deadline = None
        for name, core in self._cores:
            timer = self.guard(name, core.get_timer)
            if timer is not None and (deadline is None or timer < deadline):
                deadline = timer
        if deadline == self._deadline and (deadline is None or self._handle is not None):
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = deadline
        if deadline is not None:
            self._handle = loop.call_later(max(0.0, deadline - self.clock()), self._fire)

    def arm_soon(self) -> None:
        """Arm once the current loop round is done (many changes, one look)."""
        if self._loop is None or self._arm_pending:
            return
        self._arm_pending = True
        self._loop.call_soon(self._arm_now)

    def _arm_now(self) -> None:
        self._arm_pending = False
        self.arm()

    def _fire(self) -> None:
        self._handle = None
        self._deadline = None
        now = self.clock()
        for name, core in list(self._cores):
            deadline = self.guard(name, core.get_timer)
            if deadline is not None and deadline <= now:
                self.guard(name, core.handle_timer, now)
        self.arm()

    # -- isolation --------------------------------------------------------------

    def guard(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """Run *call*; a bug in it is logged once per kind, counted, and swallowed."""
        try:
            return call(*args)
        except Exception as exc:  # a core's bug must cost its own work, not the node
            self.counters[f"core_error_{what}"] += 1
            key = (what, type(exc).__name__)
            if key not in self._logged:
                self._logged.add(key)
                log.exception("core failed; the node goes on", core=what,
                              error=f"{type(exc).__name__}: {exc}")
            return None
