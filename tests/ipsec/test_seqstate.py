"""Static SAs keep their sequence numbers across restarts and crashes (vmip.ipsec.seqstate).

RFC 4106 §3.1 / RFC 7634 §2: the AEAD IV (vmip: the sequence number) must
never repeat under a key; RFC 4303 §3.4.3: a receiver must not accept a
packet twice.  Each "process" here is a new SeqState and a new EspSA over
the same state directory, as after a restart; a "crash" drops them without
closing anything.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from ipaddress import IPv6Address
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmip.ipsec import seqstate
from vmip.ipsec.esp import EspSA
from vmip.ipsec.sa import Direction, SaParams
from vmip.ipsec.sad import SAD
from vmip.ipsec.seqstate import (
    FILE_NAME,
    HEADER,
    RECORD,
    WITNESS_NAME,
    SeqState,
    StateFileError,
    fingerprint,
    format_record,
    parse_state,
)
from vmip.ipsec.spd import SPD
from vmip.ipsec.static import StaticKeys, apply_reload, install, open_state, reload_diff

A = IPv6Address("2001:db8:a::1")
B = IPv6Address("2001:db8:b::1")
KEY = bytes(range(20))
OTHER_KEY = bytes(range(1, 21))
NH = 253  # RFC 3692 experimental: any payload, not a dummy (59)


def params(direction: Direction = Direction.OUT, *, key: bytes = KEY, spi: int = 0x0A01,
           esn: bool = True, name: str = "") -> SaParams:
    src, dst = (A, B) if direction is Direction.OUT else (B, A)
    return SaParams(spi=spi, direction=direction, src=src, dst=dst, suite="aes128gcm16",
                    enc_key=key, esn=esn, name=name or direction.value)


def sa(state: SeqState, direction: Direction = Direction.OUT, **kw) -> EspSA:
    esp = EspSA(params(direction, **kw), 0.0)
    state.attach(esp)
    return esp


def send(esp: EspSA, count: int) -> list[int]:
    """Sequence numbers of *count* packets sent (from their ESP header)."""
    sent = []
    for _ in range(count):
        packet = esp.protect(b"x" * 20, NH, 0.0)
        assert packet is not None
        sent.append(int.from_bytes(packet[4:8], "big") | (esp.seq >> 32 << 32))
    return sent


class FakeTimers:
    """call_later for the inbound trailing writes, fired by hand."""

    def __init__(self) -> None:
        self.pending: list = []
        self.delays: list[float] = []

    def __call__(self, delay: float, callback) -> None:
        self.pending.append(callback)
        self.delays.append(delay)

    def fire(self) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            callback()


@pytest.fixture
def small_blocks(monkeypatch):
    """Reserve 8 numbers at a time, so tests cross many reservations quickly."""
    monkeypatch.setattr(seqstate, "OUT_BLOCK", 8)


def records(state_dir: Path) -> dict:
    return parse_state((state_dir / FILE_NAME).read_bytes())


# -- the file -------------------------------------------------------------------


def test_first_start_creates_a_private_directory_file_and_readme(tmp_path):
    state_dir = tmp_path / "var" / "node"
    state = SeqState.open(state_dir, "a")
    assert state.problem is None
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / FILE_NAME).stat().st_mode) == 0o600
    assert (state_dir / FILE_NAME).read_bytes() == HEADER
    assert "node a" in (state_dir / WITNESS_NAME).read_text()
    state.close()


def test_an_empty_existing_directory_is_a_first_start(tmp_path):
    (tmp_path / "s").mkdir(mode=0o700)   # as a package or systemd StateDirectory= makes it
    state = SeqState.open(tmp_path / "s")
    assert state.problem is None
    state.close()


def test_records_round_trip_and_keep_their_slot(tmp_path):
    line = format_record("out", 0x0A01, "00112233aabbccdd", 65536)
    assert len(line) == RECORD and line.endswith(b"\n")
    assert parse_state(HEADER + line) == {("out", 0x0A01, "00112233aabbccdd"): (1, 65536)}


@pytest.mark.parametrize(("data", "problem"), [
    (b"", "empty"),
    (HEADER[:-1], "not a multiple of 64"),
    (b"x" * RECORD, "header"),
    (HEADER + b"out 00000a01 zz" + b" " * 48 + b"\n", "line 2 is not a record"),
    (HEADER + format_record("out", 1, "0" * 16, 5).replace(b"0005", b"0006"), "checksum"),
    (HEADER + format_record("in", 1, "0" * 16, 5) * 2, "line 3 repeats line 2"),
])
def test_a_damaged_file_names_what_is_wrong(data, problem):
    with pytest.raises(StateFileError, match=problem):
        parse_state(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=400),
    st.builds(lambda body, cut, junk: (HEADER + body)[:cut] + junk,
              st.lists(st.builds(format_record, st.sampled_from(["in", "out"]),
                                 st.integers(0, 0xFFFFFFFF), st.text("0123456789abcdef",
                                                                     min_size=16, max_size=16),
                                 st.integers(0, (1 << 64) - 1)), max_size=4).map(b"".join),
              st.integers(0, 400), st.binary(max_size=70)),
))
def test_parser_garbage_in_clear_error_out(data):
    """Whatever the bytes, the parser returns records or raises StateFileError, nothing else."""
    try:
        result = parse_state(data)
    except StateFileError as exc:
        assert str(exc)
    else:
        assert all(0 <= mark < 1 << 64 for _slot, mark in result.values())


# -- outbound: never the same (SPI, sequence number) twice --------------------------


def test_a_restarted_sender_resumes_past_every_number_it_may_have_used(tmp_path, small_blocks):
    first = SeqState.open(tmp_path / "s")
    sent = send(sa(first), 5)
    assert sent == [1, 2, 3, 4, 5]
    # Crash: the reservation on disk covers 1..8; closing writes nothing outbound.
    first.close()
    second = SeqState.open(tmp_path / "s")
    assert send(sa(second), 2) == [9, 10]
    second.close()


def test_the_mark_is_on_disk_before_a_number_past_the_old_one_is_used(tmp_path, small_blocks):
    state = SeqState.open(tmp_path / "s")
    esp = sa(state)
    for _ in range(20):
        send(esp, 1)
        (mark,) = (m for _slot, m in records(tmp_path / "s").values())
        assert mark >= esp.seq   # the file always covers what went out
    state.close()


def test_the_data_path_writes_once_per_block(tmp_path, small_blocks, monkeypatch):
    state = SeqState.open(tmp_path / "s")
    esp = sa(state)
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(seqstate.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    send(esp, 8 * 5)
    assert len(syncs) == 5
    state.close()


class Crash(BaseException):
    """The process dies here (raised from inside a write, like SIGKILL)."""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["before", "between", "after"])),
                min_size=1, max_size=8))
def test_no_sequence_number_is_reused_across_crash_points(tmp_path_factory, runs):
    """Run, crash (also in the middle of a reservation), restart, run...: no repeats."""
    state_dir = tmp_path_factory.mktemp("crash") / "s"
    old_block = seqstate.OUT_BLOCK
    seqstate.OUT_BLOCK = 8
    seen: list[int] = []
    try:
        for count, where in runs:
            state = SeqState.open(state_dir)
            esp = sa(state)
            seen += send(esp, count)
            # The next reservation dies before its write, between write and sync, or after.
            real_pwrite, real_fsync = os.pwrite, os.fsync

            def pwrite(fd, data, offset, where=where, real_pwrite=real_pwrite):
                if where == "before":
                    raise Crash
                return real_pwrite(fd, data, offset)

            def fsync(fd, where=where, real_fsync=real_fsync):
                if where == "between":
                    raise Crash
                real_fsync(fd)
                if where == "after":
                    raise Crash

            seqstate.os.pwrite, seqstate.os.fsync = pwrite, fsync
            try:
                while True:
                    seen += send(esp, 1)
            except Crash:
                pass
            finally:
                seqstate.os.pwrite, seqstate.os.fsync = real_pwrite, real_fsync
            state.close()   # the dead process's descriptor (and lock) goes away
    finally:
        seqstate.OUT_BLOCK = old_block
    assert len(seen) == len(set(seen)), "a sequence number was sent twice"
    assert seen == sorted(seen)


def test_a_failed_write_refuses_to_send_and_counts_it(tmp_path, small_blocks, monkeypatch, caplog):
    state = SeqState.open(tmp_path / "s")
    esp = sa(state)
    send(esp, 8)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seqstate.os, "fsync", full)
    with caplog.at_level(logging.ERROR, logger="vmip.ipsec.seqstate"):
        assert esp.protect(b"x", NH, 0.0) is None
        assert esp.protect(b"x", NH, 0.0) is None
    assert esp.drops["seq_state"] == 2
    assert esp.seq == 8
    assert sum("not written" in r.getMessage() for r in caplog.records) == 1   # once, not per packet
    monkeypatch.undo()
    assert send(esp, 1) == [9]
    state.close()


def test_new_keys_start_at_one_and_old_keys_keep_their_mark(tmp_path, small_blocks):
    state = SeqState.open(tmp_path / "s")
    send(sa(state), 3)
    assert send(sa(state, key=OTHER_KEY), 1) == [1]
    state.close()
    state = SeqState.open(tmp_path / "s")
    assert send(sa(state), 1) == [9]
    assert send(sa(state, key=OTHER_KEY), 1) == [9]
    state.close()


def test_resume_stops_at_the_end_of_the_sequence_space(tmp_path, small_blocks):
    """Without ESN the last number is 2^32-1 (RFC 4303 §3.3.3): a mark there exhausts the SA."""
    (tmp_path / "s").mkdir(mode=0o700)
    print_ = seqstate.fingerprint(params(esn=False))
    (tmp_path / "s" / FILE_NAME).write_bytes(HEADER + format_record("out", 0x0A01, print_,
                                                                    0xFFFFFFFE))
    os.chmod(tmp_path / "s" / FILE_NAME, 0o600)
    state = SeqState.open(tmp_path / "s")
    esp = sa(state, esn=False)
    assert send(esp, 1) == [0xFFFFFFFF]
    assert esp.protect(b"x", NH, 0.0) is None
    assert esp.drops["seq_overflow"] == 1
    state.close()


# -- inbound: a restarted receiver does not accept old packets --------------------


def pair(state_a: SeqState | None, state_b: SeqState, **kw) -> tuple[EspSA, EspSA]:
    """a's outbound SA (guarded by *state_a* if given) and b's matching inbound SA."""
    out = EspSA(params(Direction.OUT, **kw), 0.0)
    if state_a is not None:
        state_a.attach(out)
    inbound = EspSA(params(Direction.IN, **kw), 0.0)
    state_b.attach(inbound)
    return out, inbound


def test_a_restarted_receiver_drops_replays_and_accepts_the_next_packet(tmp_path):
    b = SeqState.open(tmp_path / "b")
    out, inbound = pair(None, b)
    old = [out.protect(b"p%d" % i, NH, 0.0) for i in range(5)]
    for packet in old:
        assert inbound.unprotect(packet, 0.0) is not None
    # b crashes (no loop: every new top was written at once) and restarts.
    b2_dir = tmp_path / "b"
    b.close()
    b2 = SeqState.open(b2_dir)
    inbound2 = EspSA(params(Direction.IN), 0.0)
    b2.attach(inbound2)
    for packet in old:
        assert inbound2.unprotect(packet, 0.0) is None
    assert inbound2.drops["replay"] == 5
    # a did not restart: its next packet is number 6, above b's mark: accepted.
    inbound2.unprotect(out.protect(b"new", NH, 0.0), 0.0)
    assert inbound2.replay.top == 6 and inbound2.drops["replay"] == 5
    b2.close()


def test_esn_inference_resumes_in_the_right_subspace(tmp_path):
    """A receiver restarted at 2^32+5 infers the high half of the next packets (RFC 4303 A2)."""
    b = SeqState.open(tmp_path / "b")
    out, inbound = pair(None, b)
    out.seq = (1 << 32) + 4
    inbound.replay.resume(1 << 32)           # it has received the first 2^32 packets
    assert inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0) is not None
    b.close()
    b = SeqState.open(tmp_path / "b")
    inbound = EspSA(params(Direction.IN), 0.0)
    b.attach(inbound)
    assert inbound.replay.top == (1 << 32) + 5
    inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    assert inbound.replay.top == (1 << 32) + 6 and not inbound.drops
    b.close()


@pytest.mark.parametrize("esn", [True, False])
def test_a_receiver_that_stayed_up_accepts_a_restarted_sender(tmp_path, small_blocks, esn):
    """The sender skips ahead; the receiver's window slides to it (no replay drop)."""
    a = SeqState.open(tmp_path / "a")
    out, inbound = pair(a, SeqState.open(tmp_path / "b"), esn=esn)
    for _ in range(3):
        inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    a.close()
    a = SeqState.open(tmp_path / "a")
    out = EspSA(params(Direction.OUT, esn=esn), 0.0)
    a.attach(out)
    inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    assert inbound.replay.top == 9 and not inbound.drops
    a.close()


def settle(state: SeqState) -> None:
    """What the syncer thread holds, written and synced now (it would in a moment)."""
    if state._syncer is not None:
        state._syncer.write_pending()


def test_inbound_marks_trail_the_traffic_with_a_loop(tmp_path):
    """Idle: written at the end of the loop round; under load at most once per interval."""
    timers = FakeTimers()
    b = SeqState.open(tmp_path / "b", call_later=timers)
    out, inbound = pair(None, b)

    def mark() -> int | None:
        return next((m for (d, _s, _f), (_slot, m) in records(tmp_path / "b").items()
                     if d == "in"), None)

    inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    assert mark() is None and timers.delays == [0.0]
    for _ in range(3):
        inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    assert mark() is None and len(timers.pending) == 1   # one flush for the interval
    timers.fire()
    assert mark() == 4 and timers.delays == [0.0, seqstate.IN_FLUSH_INTERVAL]
    timers.fire()                            # nothing moved: back to idle
    assert not timers.pending
    inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    assert mark() == 4 and timers.delays[-1] == 0.0
    timers.fire()
    settle(b)                                # the syncer thread's write
    assert mark() == 5
    b.close()


def test_moving_an_inbound_mark_does_no_disk_io_on_the_loop(tmp_path, monkeypatch):
    """Once a key has its record, the trailing write and its fsync happen on the
    syncer thread: the loop round after the packet (its reply, on a node that
    answers) waits for neither.  A clean stop leaves the last mark on disk."""
    io_on: list[str] = []
    real_pwrite, real_fsync = os.pwrite, os.fsync
    synced = threading.Event()

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        io_on.append(threading.current_thread().name)
        return real_pwrite(fd, data, offset)

    def fsync(fd: int) -> None:
        io_on.append(threading.current_thread().name)
        real_fsync(fd)
        synced.set()

    monkeypatch.setattr(seqstate.os, "pwrite", pwrite)
    monkeypatch.setattr(seqstate.os, "fsync", fsync)
    timers = FakeTimers()
    b = SeqState.open(tmp_path / "b", call_later=timers)
    out, inbound = pair(None, b)

    def mark() -> int | None:
        return next((m for (d, _s, _f), (_slot, m) in records(tmp_path / "b").items()
                     if d == "in"), None)

    assert inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0) is not None
    timers.fire()                            # the key's first record: a new slot, here
    timers.fire()                            # nothing moved: idle again
    assert mark() == 1 and not timers.pending
    me = threading.current_thread().name
    for expected in (2, 3):                  # twice: an idle SA authenticates a packet
        io_on.clear()
        synced.clear()
        assert inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0) is not None
        timers.fire()
        assert me not in io_on
        assert synced.wait(5), "the syncer thread never wrote the mark"
        assert mark() == expected and set(io_on) == {"vmip-seq-sync"}
        timers.fire()                        # idle again
    inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    timers.fire()                            # queued for the thread ...
    b.close()                                # ... and on disk when close returns
    assert mark() == 4


def test_many_idle_inbound_sas_share_one_fsync_per_interval(tmp_path, monkeypatch):
    """A HA's BUs come round-robin from many MNs, each SA idle in between: the
    marks of every SA that moved are written together, one fsync, not one per BU."""
    timers = FakeTimers()
    b = SeqState.open(tmp_path / "b", call_later=timers)
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(seqstate.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    pairs = [pair(None, b, spi=0x100 + i, key=bytes([i]) * 20) for i in range(200)]
    for _round in range(3):
        for out, inbound in pairs:
            assert inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0) is not None
        timers.fire()
        settle(b)
    assert len(syncs) == 3
    marks = {s: m for (d, s, _f), (_slot, m) in records(tmp_path / "b").items() if d == "in"}
    assert marks == {0x100 + i: 3 for i in range(200)}
    timers.fire()
    assert not timers.pending and len(syncs) == 3    # all idle again: nothing to write
    b.close()


def test_close_writes_the_last_inbound_mark(tmp_path):
    timers = FakeTimers()
    b = SeqState.open(tmp_path / "b", call_later=timers)
    out, inbound = pair(None, b)
    for _ in range(4):
        inbound.unprotect(out.protect(b"x", NH, 0.0), 0.0)
    b.close()
    assert {m for (d, *_), (_s, m) in records(tmp_path / "b").items() if d == "in"} == {4}


# -- an unusable state: refuse, say so, count it ---------------------------------


def refused(state_dir: Path, caplog) -> tuple[SeqState, EspSA, EspSA]:
    with caplog.at_level(logging.ERROR, logger="vmip.ipsec.seqstate"):
        state = SeqState.open(state_dir)
        out = sa(state, Direction.OUT)
        inbound = sa(state, Direction.IN)
    assert state.problem and state.fix
    assert any("refuse to send" in r.getMessage() for r in caplog.records)
    assert out.protect(b"x", NH, 0.0) is None and out.drops["seq_state"] == 1
    assert out.seq == 0
    good = EspSA(params(Direction.OUT), 0.0)
    assert inbound.unprotect(good.protect(b"x", NH, 0.0), 0.0) is None
    assert inbound.drops["seq_state"] == 1
    return state, out, inbound


def test_a_corrupt_file_refuses_both_directions(tmp_path, caplog):
    SeqState.open(tmp_path / "s").close()
    with open(tmp_path / "s" / FILE_NAME, "ab") as handle:
        handle.write(b"\x00garbage" * 8)
    state, _, _ = refused(tmp_path / "s", caplog)
    assert "corrupt" in state.problem and "new keys" in state.fix


def test_a_file_deleted_from_a_used_directory_is_not_a_first_start(tmp_path, caplog):
    SeqState.open(tmp_path / "s").close()
    (tmp_path / "s" / FILE_NAME).unlink()
    state, _, _ = refused(tmp_path / "s", caplog)
    assert "missing" in state.problem and "remove" in state.fix
    assert not (tmp_path / "s" / FILE_NAME).exists()   # not silently made again


def test_a_symlinked_state_file_is_refused(tmp_path, caplog):
    SeqState.open(tmp_path / "s").close()
    os.replace(tmp_path / "s" / FILE_NAME, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", tmp_path / "s" / FILE_NAME)
    state, _, _ = refused(tmp_path / "s", caplog)
    assert "symbolic link" in state.problem


def test_a_state_file_others_may_write_is_refused(tmp_path, caplog):
    SeqState.open(tmp_path / "s").close()
    os.chmod(tmp_path / "s" / FILE_NAME, 0o666)
    state, _, _ = refused(tmp_path / "s", caplog)
    assert "chmod 600" in state.fix


def test_two_processes_on_one_state_directory(tmp_path, caplog):
    first = SeqState.open(tmp_path / "s")
    state, _, _ = refused(tmp_path / "s", caplog)
    assert "another vmip process" in state.problem
    first.close()


# -- static keying attaches every SA it installs ------------------------------------


def test_install_and_reload_attach_and_detach(tmp_path, small_blocks):
    state = SeqState.open(tmp_path / "s")
    sad, spd = SAD(), SPD()
    keys = StaticKeys({"out": params(Direction.OUT, name="out"),
                       "in": params(Direction.IN, name="in")})
    install(keys, sad, spd, 0.0, state=state)
    out = sad.outbound("out")
    assert out.seq_guard is state
    send(out, 3)
    new = StaticKeys({"out": params(Direction.OUT, name="out", key=OTHER_KEY),
                      "in": keys.sas["in"]})
    apply_reload(reload_diff(keys, new), sad, spd, 1.0, state=state)
    replaced = sad.outbound("out")
    assert replaced is not out and replaced.seq_guard is state
    assert send(replaced, 1) == [1]          # new key: a new nonce space
    state.close()


def test_first_reservations_after_start_share_an_fsync_and_stay_ahead_of_use(tmp_path,
                                                                             monkeypatch):
    """A restarted HA answers its MNs one after the other: the first SA's
    reservation carries the blocks of up to OUT_BATCH others, so 600 SAs cost
    3 fsyncs, not 600; and every number each SA sends is below a mark that
    was on disk (synced) before the packet left (RFC 4303 §3.3.3)."""
    state_dir = tmp_path / "a"
    a = SeqState.open(state_dir)
    syncs = []
    synced: dict[int, int] = {}          # SPI -> outbound mark on disk at the last fsync
    real_fsync = os.fsync

    def fsync(fd):
        syncs.append(fd)
        real_fsync(fd)
        synced.update({spi: m for (d, spi, _f), (_slot, m) in records(state_dir).items()
                       if d == "out"})

    monkeypatch.setattr(seqstate.os, "fsync", fsync)
    sas = [sa(a, Direction.OUT, spi=0x100 + i, key=bytes([i % 256, i // 256]) * 10)
           for i in range(600)]
    for _round in range(2):
        for esp in sas:
            [number] = send(esp, 1)
            assert number <= synced[esp.spi]
    assert len(syncs) == 3                  # ceil(600 / (1 + OUT_BATCH))
    a.close()
    # After a restart each SA resumes above everything it sent.
    a = SeqState.open(state_dir)
    again = [sa(a, Direction.OUT, spi=0x100 + i, key=bytes([i % 256, i // 256]) * 10)
             for i in (0, 299, 599)]
    assert all(send(esp, 1)[0] > 2 for esp in again)
    a.close()


def test_a_reservation_riding_along_is_dropped_with_its_sa(tmp_path):
    a = SeqState.open(tmp_path / "a")
    first = sa(a, Direction.OUT, spi=0x101)
    second = sa(a, Direction.OUT, spi=0x102, key=OTHER_KEY)
    send(first, 1)                          # reserves second's block too
    a.detach(second)
    assert not a._ahead and not a._cold_out
    a.close()


def test_a_home_agent_with_10000_mns_restarts_with_its_state(tmp_path, caplog):
    """20,000 static SAs (an MH pair per MN) leave 20,000 records, 1.28 MB:
    the limit grows with the config's SAs, so the next start reads them."""
    state_dir = tmp_path / "ha"
    first = SeqState.open(state_dir)
    first.close()
    print_ = fingerprint(params(Direction.IN))
    lines = [format_record("in" if i % 2 else "out", 0x1000 + i, print_, 7) for i in range(20000)]
    with open(state_dir / FILE_NAME, "ab") as file:
        file.write(b"".join(lines))
    assert (state_dir / FILE_NAME).stat().st_size > seqstate.MAX_FILE
    cfg = SimpleNamespace(keys=SimpleNamespace(mode="static", sa=[None] * 20000,
                                               state_dir=state_dir),
                          node=SimpleNamespace(name="ha"))
    state = open_state(cfg)
    assert state is not None and state.problem is None
    resumed = EspSA(params(Direction.IN, spi=0x1000 + 19999), 0.0)
    state.attach(resumed)
    assert resumed.replay.top == 7
    # Resuming is counted, not logged at info per SA (two per MN on a HA).
    with caplog.at_level(logging.INFO, logger="vmip.ipsec.seqstate"):
        for i in range(1, 401, 2):
            state.attach(EspSA(params(Direction.IN, spi=0x1000 + i), 0.0))
    assert state.resumed == 201 and not caplog.records
    state.close()
    # A file far larger than the config explains is still refused, with the fix.
    small = SeqState.open(state_dir, static_sas=2)
    assert small.fd is None and "records per static SA" in (small.problem or "")
    assert "new keys" in (small.fix or "")
