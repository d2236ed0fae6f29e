"""The shaper's scheduling (fake clock, seeded RNG) and its asyncio glue (no root)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmip.errors import UsageError
from vmip.lab import nfqueue
from vmip.lab.emulation import (
    EmulationError,
    LinkProfile,
    LinkProfileError,
    apply_profile,
    netem_command,
)
from vmip.lab.shaper import (
    LinkScheduler,
    ShaperService,
    ShaperSpec,
    ShaperSpecError,
    build_parser,
    spec_from_args,
)


def scheduler(**spec) -> LinkScheduler:
    seed = spec.pop("seed", 1)
    return LinkScheduler(ShaperSpec(**spec), random.Random(seed))


# --- LinkScheduler -----------------------------------------------------------------

def test_fixed_delay_releases_each_packet_delay_after_arrival() -> None:
    s = scheduler(delay_ms=20.0)
    assert s.admit(1, 100, now=10.000) == pytest.approx(10.020)
    assert s.admit(2, 100, now=10.005) == pytest.approx(10.025)
    assert s.next_release() == pytest.approx(10.020)
    assert s.pop_due(10.019) == []
    assert s.pop_due(10.020) == [1]
    assert s.pop_due(11.0) == [2]
    assert s.next_release() is None


def test_rate_serialises_a_burst() -> None:
    # 1250-byte packets at 1 Mbit/s take 10 ms each on the wire.
    s = scheduler(rate_mbit=1.0)
    releases = [s.admit(i, 1250, now=0.0) for i in range(5)]
    assert releases == pytest.approx([0.010, 0.020, 0.030, 0.040, 0.050])


def test_rate_gives_no_credit_for_idle_time() -> None:
    s = scheduler(rate_mbit=1.0, delay_ms=5.0)
    assert s.admit(1, 1250, now=0.0) == pytest.approx(0.015)
    # After a long idle period a packet still needs its own serialisation time.
    assert s.admit(2, 1250, now=1.0) == pytest.approx(1.015)
    assert s.admit(3, 1250, now=1.0) == pytest.approx(1.025)


def test_loss_rate_matches_the_probability() -> None:
    s = scheduler(loss=0.1, seed=42)
    n = 20000
    for i in range(n):
        s.admit(i, 100, now=i * 1e-4)
    # Binomial(20000, 0.1): sigma ~ 42 packets; 4 sigma bounds.
    assert abs(s.counters.dropped_loss - 2000) < 170
    assert s.counters.received == n


def test_zero_loss_and_full_loss() -> None:
    keep, lose = scheduler(), scheduler(loss=1.0)
    for i in range(100):
        assert keep.admit(i, 100, now=0.0) == 0.0
        assert lose.admit(i, 100, now=0.0) is None
    assert keep.pop_due(0.0) == list(range(100))
    assert lose.counters.dropped_loss == 100


def test_tail_drop_when_the_queue_is_full() -> None:
    s = scheduler(delay_ms=100.0, limit=5)
    admitted = [s.admit(i, 100, now=0.0) is not None for i in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    assert s.counters.dropped_queue == 3
    assert s.pop_due(0.1) == [0, 1, 2, 3, 4]
    assert s.admit(8, 100, now=0.1) is not None  # room again


def test_jitter_spreads_delays_around_the_mean_when_packets_are_spaced() -> None:
    # Packets 100 ms apart, jitter ±10 ms: FIFO never has to hold one back, so
    # the delays are the uniform draws themselves.
    s = scheduler(delay_ms=30.0, jitter_ms=10.0, seed=3)
    delays = []
    for i in range(2000):
        s.pop_due(i * 0.1)
        delays.append(s.admit(i, 100, now=i * 0.1) - i * 0.1)
    assert min(delays) >= 0.020 and max(delays) <= 0.040
    assert sum(delays) / len(delays) == pytest.approx(0.030, abs=0.0005)
    # Uniform on [20, 40] ms has standard deviation 20/sqrt(12) ms.
    mean = sum(delays) / len(delays)
    sd = math.sqrt(sum((d - mean) ** 2 for d in delays) / len(delays))
    assert sd == pytest.approx(0.020 / math.sqrt(12), rel=0.1)


def test_jitter_larger_than_delay_never_releases_before_arrival() -> None:
    s = scheduler(delay_ms=1.0, jitter_ms=5.0, seed=5)
    for i in range(500):
        now = i * 0.01
        assert s.admit(i, 100, now) >= now


def test_drain_returns_everything_held_in_order() -> None:
    s = scheduler(delay_ms=1000.0)
    for i in range(4):
        s.admit(100 + i, 100, now=0.0)
    assert s.drain() == [100, 101, 102, 103]
    assert s.held == 0 and s.counters.released == 4


arrivals = st.lists(st.tuples(st.floats(0, 0.05), st.integers(40, 1500)), min_size=1,
                    max_size=200)


@settings(max_examples=200)
@given(gaps_and_sizes=arrivals, delay=st.floats(0, 100), jitter=st.floats(0, 100),
       loss=st.floats(0, 1), rate=st.none() | st.floats(0.1, 1000), limit=st.integers(1, 300),
       seed=st.integers(0, 2**32))
def test_schedule_invariants(gaps_and_sizes, delay, jitter, loss, rate, limit, seed) -> None:
    s = scheduler(delay_ms=delay, jitter_ms=jitter, loss=loss, rate_mbit=rate, limit=limit,
                  seed=seed)
    now, previous_release, wire_bits = 0.0, -math.inf, 0.0
    released: list[int] = []
    for packet_id, (gap, size) in enumerate(gaps_and_sizes):
        now += gap
        released += s.pop_due(now)
        release = s.admit(packet_id, size, now)
        if release is None:
            continue
        # FIFO: never before an earlier packet; never before its own arrival
        # plus the minimum delay; never later than the worst case allows.
        assert release >= previous_release
        assert release >= now + max(0.0, delay - jitter) / 1000 - 1e-9
        if rate is not None:
            wire_bits += 8 * size
            assert release >= now + 8 * size / (rate * 1e6) - 1e-9
        previous_release = release
    released += s.drain()
    c = s.counters
    assert c.received == len(gaps_and_sizes)
    assert c.received == c.dropped_loss + c.dropped_queue + c.released
    assert released == sorted(released)  # arrival order
    assert len(released) == c.released


# --- ShaperSpec, CLI and LinkProfile validation ----------------------------------------

@pytest.mark.parametrize("bad", [
    {"delay_ms": -1}, {"jitter_ms": float("nan")}, {"loss": 1.5}, {"loss": -0.1},
    {"rate_mbit": 0}, {"rate_mbit": float("inf")}, {"limit": 0}, {"queue": 70000},
    {"queue": True}, {"delay_ms": "20"}, {"seed": 1.5},
])
def test_bad_shaper_specs_are_refused(bad: dict) -> None:
    with pytest.raises(ShaperSpecError):
        ShaperSpec(**bad)


def test_spec_file_and_flags(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"queue": 3, "delay_ms": 20, "loss": 0.5}))
    args = build_parser().parse_args(["--spec", str(spec_file), "--loss", "0.25"])
    assert spec_from_args(args) == ShaperSpec(queue=3, delay_ms=20, loss=0.25)
    spec_file.write_text(json.dumps({"queue": 3, "delay": 20}))
    with pytest.raises(ShaperSpecError, match="unknown"):
        spec_from_args(build_parser().parse_args(["--spec", str(spec_file)]))
    with pytest.raises(ShaperSpecError, match="required"):
        spec_from_args(build_parser().parse_args(["--delay-ms", "5"]))


@pytest.mark.parametrize("bad", [
    {"delay_ms": -5}, {"jitter_ms": float("inf")}, {"loss": 2}, {"loss": 10.0},
    {"rate_mbit": 0}, {"rate_mbit": -1}, {"delay_ms": None}, {"loss": True},
])
def test_bad_link_profiles_are_refused_with_a_usage_error(bad: dict) -> None:
    with pytest.raises(LinkProfileError) as info:
        LinkProfile(**bad)
    assert isinstance(info.value, UsageError)
    assert next(iter(bad)) in str(info.value)


def test_neutral_profile() -> None:
    assert LinkProfile().is_neutral
    assert LinkProfile(delay_ms=0, loss=0.0) == LinkProfile()
    assert not LinkProfile(rate_mbit=5).is_neutral


def test_apply_profile_checks_its_arguments_before_touching_anything(tmp_path: Path) -> None:
    with pytest.raises(LinkProfileError, match="direction"):
        apply_profile("x", "eth0", "sideways", LinkProfile(delay_ms=1), tmp_path)
    with pytest.raises(LinkProfileError, match="interface"):
        apply_profile("x", "a/b", "in", LinkProfile(delay_ms=1), tmp_path)
    with pytest.raises(LinkProfileError, match="backend"):
        apply_profile("x", "eth0", "in", LinkProfile(delay_ms=1), tmp_path, backend="tbf")
    with pytest.raises(EmulationError, match="does not exist"):
        apply_profile("vt-no-such-namespace", "eth0", "in", LinkProfile(delay_ms=1), tmp_path)
    assert not (tmp_path / "link-emulation").exists()


def test_missing_iptables_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmip.lab import emulation

    monkeypatch.setattr(emulation.shutil, "which",
                        lambda tool: None if tool == "ip6tables" else f"/usr/sbin/{tool}")
    with pytest.raises(emulation.EmulationUnavailable, match="apt-get install iptables"):
        emulation.check_nfqueue("vt-never-probed")


def test_netem_command() -> None:
    argv = netem_command("eth1", LinkProfile(delay_ms=20, jitter_ms=5, loss=0.1, rate_mbit=8))
    assert argv[:7] == ["tc", "qdisc", "replace", "dev", "eth1", "root", "netem"]
    text = " ".join(argv)
    assert "delay 20ms 5ms distribution uniform" in text
    assert "loss random 10.0%" in text
    assert "rate 8mbit" in text


# --- ShaperService with a stand-in queue socket ---------------------------------------

class FakeQueue:
    """Duck-types NfqueueSocket: a socketpair gives the event loop a readable fd."""

    queue_num = 9

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._inbox: list[nfqueue.QueuedPacket] = []
        self._pending: list[tuple[str, int, int]] = []
        self.sent: list[tuple[float, str, int, int]] = []
        self._loop = loop
        self.changed = asyncio.Event()

    def deliver(self, *packet_ids: int) -> None:
        self._inbox += [nfqueue.QueuedPacket(queue_num=9, family=2, packet_id=i,
                                             hw_protocol=0x800, hook=2, length=100,
                                             payload=b"") for i in packet_ids]
        self._writer.send(b"x")

    def fileno(self) -> int:
        return self._reader.fileno()

    def receive(self):
        try:
            self._reader.recv(100)
        except BlockingIOError:
            pass
        records, self._inbox = self._inbox, []
        return records

    def queue_verdict(self, packet_id: int, verdict: int) -> None:
        self._pending.append(("one", packet_id, verdict))

    def queue_batch_verdict(self, packet_id: int, verdict: int) -> None:
        self._pending.append(("batch", packet_id, verdict))

    def flush(self) -> None:
        now = self._loop.time()
        self.sent += [(now, kind, i, v) for kind, i, v in self._pending]
        self._pending = []
        self.changed.set()  # the service flushes after every read and every timer

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


async def _until(queue: FakeQueue, predicate, timeout: float = 2.0) -> None:
    async def changes() -> None:
        while not predicate():
            queue.changed.clear()
            await queue.changed.wait()

    await asyncio.wait_for(changes(), timeout)  # asyncio.timeout is 3.11+


def test_service_drops_at_once_and_releases_on_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeQueue(loop)
        # loss=0.5 with this seed drops some of the ten; which ones is the RNG's business.
        spec = ShaperSpec(queue=9, delay_ms=30.0, loss=0.5, seed=11)
        sched = LinkScheduler(spec, random.Random(11))
        service = ShaperService(fake, sched, loop, tmp_path / "status")
        service.start()
        start = loop.time()
        fake.deliver(*range(1, 11))
        await _until(fake, lambda: sched.held + sched.counters.dropped_loss == 10
                     and sched.counters.dropped_loss == len([s for s in fake.sent
                                                             if s[1] == "one"]))
        drops = [s for s in fake.sent if s[1] == "one"]
        assert all(v == nfqueue.NF_DROP and t - start < 0.025 for t, _, _, v in drops)
        await _until(fake, lambda: any(s[1] == "batch" for s in fake.sent))
        [(when, _, last_id, verdict)] = [s for s in fake.sent if s[1] == "batch"]
        kept = sorted(set(range(1, 11)) - {i for _, _, i, _ in drops})
        assert verdict == nfqueue.NF_ACCEPT and last_id == kept[-1]
        assert when - start >= 0.030
        service.write_status()
        status = json.loads((tmp_path / "status").read_text())
        assert status["received"] == 10
        assert status["released"] == len(kept)
        assert status["dropped_loss"] == len(drops)
        fake.close()

    asyncio.run(scenario())


def test_service_lists_the_wall_clock_time_of_each_random_loss_drop(tmp_path: Path) -> None:
    """The multi-CoA report matches each lost probe to a drop by time: every
    random-loss drop is listed, with the wall clock of the read that took it
    (two in one read share a time); tail drops are not random loss."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeQueue(loop)
        wall = iter([1000.5, 1000.75, 1001.0])
        sched = LinkScheduler(ShaperSpec(queue=9, delay_ms=50.0, loss=0.5, limit=3, seed=3),
                              random.Random(3))
        service = ShaperService(fake, sched, loop, tmp_path / "status",
                                wall_clock=lambda: next(wall))
        service.start()
        seen: list[tuple[float, int]] = []
        for batch in ((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)):
            fake.deliver(*batch)
            await _until(fake, lambda last=batch[-1]: sched.counters.received == last)
            seen.append((service.loss_drop_times[-1] if service.loss_drop_times else 0.0,
                         sched.counters.dropped_loss))
        counters = sched.counters
        assert counters.dropped_loss >= 2 and counters.dropped_queue >= 1
        service.write_status()
        status = json.loads((tmp_path / "status").read_text())
        times = status["loss_drop_times"]
        assert len(times) == status["dropped_loss"] == counters.dropped_loss
        # Each read's drops carry that read's time, in order.
        expected: list[float] = []
        before = 0
        for when, (_, total) in zip((1000.5, 1000.75, 1001.0), seen, strict=True):
            expected += [when] * (total - before)
            before = total
        assert times == expected
        fake.close()

    asyncio.run(scenario())


def test_the_listed_drop_times_are_bounded() -> None:
    from vmip.lab.shaper import LOSS_DROP_TIMES_KEPT

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeQueue(loop)
        clock = iter(range(10**6))
        sched = LinkScheduler(ShaperSpec(queue=9, loss=1.0), random.Random(1))
        service = ShaperService(fake, sched, loop, wall_clock=lambda: float(next(clock)))
        service.start()
        total = LOSS_DROP_TIMES_KEPT + 10
        for first in range(1, total + 1, 500):
            last = min(first + 499, total)
            fake.deliver(*range(first, last + 1))
            await _until(fake, lambda last=last: sched.counters.received == last)
        times = service.status()["loss_drop_times"]
        assert sched.counters.dropped_loss == total
        assert len(times) == LOSS_DROP_TIMES_KEPT and times == sorted(times)
        fake.close()

    asyncio.run(scenario())


def test_service_stop_accepts_what_it_holds() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeQueue(loop)
        sched = LinkScheduler(ShaperSpec(queue=9, delay_ms=60_000.0))
        service = ShaperService(fake, sched, loop)
        service.start()
        fake.deliver(5, 6, 7)
        await _until(fake, lambda: sched.held == 3)
        service.stop()
        await service.stopped
        assert fake.sent[-1][1:] == ("batch", 7, nfqueue.NF_ACCEPT)
        assert sched.held == 0
        fake.close()

    asyncio.run(scenario())


def test_netem_path_replaces_in_place_and_removes_on_neutral(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The netem backend cannot run on this kernel; its bookkeeping can."""
    import subprocess

    from vmip.lab import emulation

    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (netns_dir / "vt-fake").touch()
    commands: list[list[str]] = []

    def fake_run(netns: str, argv: list[str], *, check: bool = True):
        commands.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(emulation, "_NETNS_DIR", netns_dir)
    monkeypatch.setattr(emulation, "_run_in_ns", fake_run)
    monkeypatch.setattr(emulation, "_netem_available", True)
    state = tmp_path / "state"

    first, second = LinkProfile(delay_ms=20), LinkProfile(delay_ms=30, loss=0.01)
    emulation.apply_profile("vt-fake", "eth1", "out", first, state)
    emulation.apply_profile("vt-fake", "eth1", "out", first, state)  # no change
    emulation.apply_profile("vt-fake", "eth1", "out", second, state)
    assert emulation.current_profiles("vt-fake", state) == {("eth1", "out"): second}
    emulation.apply_profile("vt-fake", "eth1", "out", LinkProfile(), state)
    assert commands == [netem_command("eth1", first), netem_command("eth1", second),
                        ["tc", "qdisc", "del", "dev", "eth1", "root"]]
    assert emulation.current_profiles("vt-fake", state) == {}
