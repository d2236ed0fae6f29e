"""The link shaper: delay, jitter, loss and rate for one NFQUEUE queue.

One process per shaped (interface, direction), run inside the router
namespace by :mod:`vmip.lab.emulation`::

    python -m vmip.lab.shaper --queue N --delay-ms D --jitter-ms J --loss L \\
        --rate-mbit R [--seed S] [--limit P] [--status-file F] [--ready-fd FD]
    python -m vmip.lab.shaper --spec spec.json      # the same keys, in JSON

The scheduling is sans-IO (:class:`LinkScheduler`: packet id, length and
time in, release times out) so it is tested with a fake clock; the asyncio
layer (:class:`ShaperService`) reads the queue, gives DROP verdicts at once
and ACCEPT verdicts when a timer says a packet's release time has come.  No
packet is ever held by sleeping: the kernel keeps it until the verdict.

Model, per packet, in arrival order:

1. drop with probability ``loss`` (counted ``dropped_loss``; the wall-clock
   time of the latest :data:`LOSS_DROP_TIMES_KEPT` such drops is kept, so
   that a report can tell which lost packet the emulator took);
2. drop when ``limit`` packets are already held (tail drop, ``dropped_queue``);
3. with a rate, the packet is serialised after the bytes queued ahead of it
   (virtual finish time: ``tx_end = max(now, previous tx_end) + 8*len/rate``);
4. release at ``max(tx_end + delay + U(-jitter, +jitter), previous release)``.

Step 4 keeps the link FIFO: a packet never overtakes an earlier one, so TCP
sees no reordering.  netem instead sorts by each packet's own send time, so
jitter larger than the packet spacing reorders packets there.  The price of
FIFO is that jitter can only push a packet later than its predecessor's
release, which raises the mean delay a little when packets are close together.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmip.errors import UsageError, VmipError
from vmip.lab import nfqueue
from vmip.log import get_logger

# Not __name__: run with -m, that would be "__main__", outside the vmip logger tree.
log = get_logger("vmip.lab.shaper")


#: Random-loss drops whose wall-clock time the status file lists (the latest ones):
#: the multi-CoA demo reads them at every link change, 5 s apart, and lte0's
#: 0.5 % of a few hundred datagrams a second is a few drops a second.
LOSS_DROP_TIMES_KEPT = 4096


class ShaperSpecError(UsageError):
    """A shaper parameter is out of range or of the wrong type."""


@dataclass(frozen=True)
class ShaperSpec:
    """What one shaper does; times in milliseconds, loss a fraction 0..1."""

    queue: int = 0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_mbit: float | None = None
    limit: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.queue, bool) or not isinstance(self.queue, int) \
                or not 0 <= self.queue <= 0xFFFF:
            raise ShaperSpecError(f"queue must be an integer 0..65535, not {self.queue!r}")
        for name in ("delay_ms", "jitter_ms"):
            _check_number(name, getattr(self, name), minimum=0.0)
        _check_number("loss", self.loss, minimum=0.0, maximum=1.0)
        if self.rate_mbit is not None:
            _check_number("rate_mbit", self.rate_mbit, minimum=0.0)
            if self.rate_mbit <= 0:
                raise ShaperSpecError("rate_mbit must be > 0 (omit it for no rate limit)")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ShaperSpecError(f"limit must be a positive integer, not {self.limit!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ShaperSpecError(f"seed must be an integer, not {self.seed!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ShaperSpec:
        if not isinstance(data, Mapping):
            raise ShaperSpecError("a shaper spec is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ShaperSpecError(f"unknown shaper spec keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def _check_number(name: str, value: object, *, minimum: float,
                  maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ShaperSpecError(f"{name} must be a finite number, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f"..{maximum}" if maximum is not None else " or more"
        raise ShaperSpecError(f"{name} must be {minimum}{upper}, not {value!r}")


@dataclass
class ShaperCounters:
    received: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    released: int = 0


@dataclass
class LinkScheduler:
    """Sans-IO release scheduling for one direction of one link (times in seconds).

    Release times never decrease (step 4 of the model), so the held packets
    form a FIFO whose head is always the next one due: a deque is the whole
    timer structure, and the event loop needs one timer for its head.
    """

    spec: ShaperSpec
    rng: random.Random = field(default_factory=random.Random)
    counters: ShaperCounters = field(default_factory=ShaperCounters)

    def __post_init__(self) -> None:
        self._held: collections.deque[tuple[float, int]] = collections.deque()
        self._tx_free_at = -math.inf
        self._last_release = -math.inf
        self._delay = self.spec.delay_ms / 1000.0
        self._jitter = self.spec.jitter_ms / 1000.0
        self._bits_per_second = (self.spec.rate_mbit * 1e6) if self.spec.rate_mbit else None

    @property
    def held(self) -> int:
        return len(self._held)

    def admit(self, packet_id: int, length: int, now: float) -> float | None:
        """Take one arriving packet; its release time, or None if it is dropped."""
        self.counters.received += 1
        if self.spec.loss and self.rng.random() < self.spec.loss:
            self.counters.dropped_loss += 1
            return None
        if len(self._held) >= self.spec.limit:
            self.counters.dropped_queue += 1
            return None
        ready = now
        if self._bits_per_second is not None:
            # Virtual finish time: the link is busy until the bytes ahead are sent.
            tx_start = max(now, self._tx_free_at)
            self._tx_free_at = tx_start + 8.0 * length / self._bits_per_second
            ready = self._tx_free_at
        delay = self._delay
        if self._jitter:
            delay += self.rng.uniform(-self._jitter, self._jitter)
        release = max(ready + max(delay, 0.0), self._last_release)
        self._last_release = release
        self._held.append((release, packet_id))
        return release

    def next_release(self) -> float | None:
        return self._held[0][0] if self._held else None

    def pop_due(self, now: float) -> list[int]:
        """Packet ids whose release time has come, in arrival order."""
        due: list[int] = []
        while self._held and self._held[0][0] <= now:
            due.append(self._held.popleft()[1])
        self.counters.released += len(due)
        return due

    def drain(self) -> list[int]:
        """Everything still held (on shutdown: release rather than lose them)."""
        due = [packet_id for _, packet_id in self._held]
        self._held.clear()
        self.counters.released += len(due)
        return due


class ShaperService:
    """The asyncio side: queue socket in, verdicts out, one timer for the head."""

    def __init__(self, queue: nfqueue.NfqueueSocket, scheduler: LinkScheduler,
                 loop: asyncio.AbstractEventLoop, status_file: Path | None = None,
                 wall_clock: Callable[[], float] = time.time):
        self._queue = queue
        self._scheduler = scheduler
        self._loop = loop
        self._status_file = status_file
        self._wall_clock = wall_clock
        # Wall clock, not the loop's: every lab namespace shares CLOCK_REALTIME,
        # so these compare with the send times the demo's probes carry.
        self.loss_drop_times: collections.deque[float] = collections.deque(
            maxlen=LOSS_DROP_TIMES_KEPT)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self.verdict_errors = 0
        self.stopped = loop.create_future()

    def start(self) -> None:
        self._loop.add_reader(self._queue.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            records = self._queue.receive()
        except nfqueue.NfqueueError as exc:
            log.error("queue read failed", queue=self._queue.queue_num, error=str(exc))
            self.stop()
            return
        now = self._loop.time()
        wall = self._wall_clock()
        counters = self._scheduler.counters
        for record in records:
            if isinstance(record, nfqueue.NetlinkAck):
                if record.error:
                    self.verdict_errors += 1
                continue
            lost_before = counters.dropped_loss
            if self._scheduler.admit(record.packet_id, record.length, now) is None:
                self._queue.queue_verdict(record.packet_id, nfqueue.NF_DROP)
                if counters.dropped_loss != lost_before:
                    self.loss_drop_times.append(wall)
        self._release_due(now)

    def _on_timer(self) -> None:
        # Timers may fire a little before their deadline (clock rounding); the
        # deadline has been reached as far as the schedule is concerned.
        now = max(self._loop.time(), self._timer_when)
        self._timer = None
        self._timer_when = math.inf
        self._release_due(now)

    def _release_due(self, now: float) -> None:
        due = self._scheduler.pop_due(now)
        if due:
            # FIFO release and immediate drops mean every held id up to the
            # last due one is due: one batch verdict covers them all.
            self._queue.queue_batch_verdict(due[-1], nfqueue.NF_ACCEPT)
        try:
            self._queue.flush()
        except nfqueue.NfqueueError as exc:
            log.error("verdict failed", queue=self._queue.queue_num, error=str(exc))
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self._scheduler.next_release()
        if deadline is None or deadline >= self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def status(self) -> dict[str, Any]:
        counters = asdict(self._scheduler.counters)
        return {"queue": self._queue.queue_num, "pid": os.getpid(), **counters,
                "held": self._scheduler.held, "verdict_errors": self.verdict_errors,
                "malformed": getattr(self._queue, "malformed", 0),
                "loss_drop_times": [round(t, 6) for t in self.loss_drop_times],
                "spec": asdict(self._scheduler.spec)}

    def write_status(self) -> None:
        if self._status_file is None:
            return
        tmp = self._status_file.with_name(self._status_file.name + ".tmp")
        tmp.write_text(json.dumps(self.status(), indent=2) + "\n")
        os.replace(tmp, self._status_file)  # readers never see a half-written file

    def stop(self) -> None:
        """Accept everything still held, then stop (SIGTERM): never lose packets."""
        if self.stopped.done():
            return
        self._loop.remove_reader(self._queue.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = self._scheduler.drain()
        try:
            if held:
                self._queue.queue_batch_verdict(held[-1], nfqueue.NF_ACCEPT)
            self._queue.flush()
        except nfqueue.NfqueueError as exc:
            log.error("final verdict failed", queue=self._queue.queue_num, error=str(exc))
        self.stopped.set_result(None)


def _runner() -> Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]:
    # uvloop.run runs on a uvloop loop on every Python vmip supports
    # (asyncio.Runner and asyncio.run's loop_factory are 3.11+ and 3.12+).
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run
    return uvloop.run


async def run(spec: ShaperSpec, *, status_file: Path | None = None,
              ready: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Bind the queue, shape until SIGTERM/SIGINT, return the final counters."""
    loop = asyncio.get_running_loop()
    # The kernel queue holds every packet we hold plus those not yet read; it
    # must be longer than our own limit so that our tail drop acts first and
    # the kernel's fail-open (accept when full) is only a last resort.
    queue = nfqueue.NfqueueSocket(spec.queue, max_len=max(2 * spec.limit, spec.limit + 1024))
    try:
        scheduler = LinkScheduler(spec, random.Random(spec.seed))
        service = ShaperService(queue, scheduler, loop, status_file)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.stop)
        loop.add_signal_handler(signal.SIGUSR1, service.write_status)
        service.start()
        log.info("shaper ready", **{k: v for k, v in asdict(spec).items() if v is not None})
        if ready is not None:
            ready(f"ready {spec.queue}")
        await service.stopped
        service.write_status()
        return service.status()
    finally:
        queue.close()


def _signal_ready(fd: int) -> Callable[[str], None]:
    """Write one line to the readiness pipe, once (a second call does nothing)."""
    state = {"open": True}

    def ready(message: str) -> None:
        if state["open"]:
            state["open"] = False
            try:
                os.write(fd, (message + "\n").encode())
            finally:
                os.close(fd)
    return ready


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmip.lab.shaper",
                                description="Emulate delay, jitter, loss and rate on an NFQUEUE.")
    p.add_argument("--spec", type=Path, help="JSON object with the keys below (flags override)")
    p.add_argument("--queue", type=int, help="NFQUEUE number to bind")
    p.add_argument("--delay-ms", type=float)
    p.add_argument("--jitter-ms", type=float)
    p.add_argument("--loss", type=float, help="loss probability, a fraction 0..1")
    p.add_argument("--rate-mbit", type=float)
    p.add_argument("--limit", type=int, help="packets held at most (tail drop beyond)")
    p.add_argument("--seed", type=int)
    p.add_argument("--status-file", type=Path, help="counters are written here on SIGUSR1 and exit")
    p.add_argument("--ready-fd", type=int, help="write 'ready N' to this fd once bound")
    p.add_argument("--log-level", default="info")
    return p


def spec_from_args(args: argparse.Namespace) -> ShaperSpec:
    data: dict[str, Any] = {}
    if args.spec is not None:
        try:
            data = json.loads(args.spec.read_text())
        except (OSError, ValueError) as exc:
            raise ShaperSpecError(f"cannot read shaper spec {args.spec}: {exc}") from exc
        if not isinstance(data, dict):
            raise ShaperSpecError("a shaper spec is a JSON object")
    for name in ("queue", "delay_ms", "jitter_ms", "loss", "rate_mbit", "limit", "seed"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    if "queue" not in data:
        raise ShaperSpecError("--queue (or 'queue' in --spec) is required")
    return ShaperSpec.from_mapping(data)


def main(argv: list[str] | None = None) -> int:
    from vmip import log as vmip_log

    args = build_parser().parse_args(argv)
    vmip_log.setup(level=args.log_level)
    ready = _signal_ready(args.ready_fd) if args.ready_fd is not None else None
    try:
        spec = spec_from_args(args)
        final = _runner()(run(spec, status_file=args.status_file, ready=ready))
    except VmipError as exc:
        log.error("shaper failed", error=str(exc))
        if ready is not None:
            # The errno lets the caller retry another queue number when this
            # one is taken (EPERM: bound by another process).
            code = getattr(exc, "errno", 0)
            with contextlib.suppress(OSError):
                ready(f"error errno={code} {exc}")
        return getattr(exc, "exit_status", 1)
    log.info("shaper stopped", **{k: v for k, v in final.items()
                                  if k not in ("spec", "loss_drop_times")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
