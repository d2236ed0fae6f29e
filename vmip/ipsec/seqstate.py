"""Sequence-number state of static SAs, kept across restarts and crashes.

With static keys an SA's key outlives the process, but its counters do not.
The AEAD suites use the 64-bit sequence number as IV (RFC 4106 §3.1,
RFC 7634 §2), so a sender that began again at 1 would repeat (key, nonce)
pairs, and a receiver with a fresh window (RFC 4303 §3.4.3) would accept
replays of old packets.  This module keeps one small file per node,
``<state_dir>/esp-seq.state``, with one record per static SA key:

* **outbound**: a *reserved* high-water mark.  Before the sender uses a
  number above the mark it writes ``mark + OUT_BLOCK`` and fsyncs; at start
  it skips to the mark, so a number is never sent twice under one key
  (RFC 4303 §3.3.3), whatever the moment of a crash.  The data path only
  compares the next number with the cached mark.  The first reservation
  after start also reserves the blocks of up to ``OUT_BATCH`` other SAs that
  have not reserved yet, in the same fsync: a home agent answering its
  MNs' first BUs after a restart pays one fsync per ``OUT_BATCH`` MNs, and
  each of those marks is on disk before its SA uses a number above it.
* **inbound**: the highest authenticated number, written after the fact,
  for every SA that moved at once (one fsync for all of them, however many
  MNs a home agent serves): at the end of the loop round when nothing was
  moving, then at most every ``IN_FLUSH_INTERVAL`` seconds while SAs keep
  moving, and at exit.  After a restart every number at or below it is a
  replay.  It never exceeds what the sender has sent, so a sender that did
  not restart is accepted at once, and one that did restart skips past its
  own reserved mark, which is at least as high.  docs/ipsec.md explains the
  rule and its one gap (packets accepted in the last ``IN_FLUSH_INTERVAL``
  before a crash).

Records are bound to the SA's direction, SPI and a fingerprint of its keys,
so new keys start from 1 and an old key, put back, finds its old mark.  A
state file that is missing (in a state directory that was in use),
corrupt, unreadable, or in use by another process makes every static SA
refuse to send and receive (drop reason ``seq_state``) until the operator
acts; the log line says what to do.  The file is opened once, before the
node drops privileges, and only ever written through that descriptor.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import os
import re
import stat
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmip.errors import VmipError
from vmip.log import get_logger

if TYPE_CHECKING:
    from vmip.ipsec.esp import EspSA

log = get_logger(__name__)

FILE_NAME = "esp-seq.state"
#: Written next to the state file; its presence tells "deleted" from "never made".
WITNESS_NAME = "README"
DEFAULT_STATE_ROOT = Path("/var/lib/vmip")
#: Every record, the header included, is one 64-byte line: aligned writes of
#: 64 bytes never straddle a disk sector, so a crash cannot tear one.
RECORD = 64
HEADER = b"vmip esp-seq state 1".ljust(RECORD - 1) + b"\n"
#: Outbound numbers reserved per write (one fsync per OUT_BLOCK packets).
OUT_BLOCK = 1 << 16
#: Outbound SAs not yet reserved since start whose block rides along with another's.
OUT_BATCH = 256
#: Inbound: marks are written (all SAs together) at most this long after they moved.
IN_FLUSH_INTERVAL = 0.1
#: Seconds the syncer thread waits after being handed inbound records
#: before it writes them: the packet that moved the mark goes first.
SYNC_DELAY = 0.005
#: Smallest limit on the state file read (each key ever used is a line).
MAX_FILE = 1 << 20
#: Lines allowed per static SA of the config beyond MAX_FILE: the key in use
#: and earlier keys of that SA, whose marks are kept (an old key put back).
RECORDS_PER_SA = 8


def state_file_limit(static_sas: int) -> int:
    """The largest state file a node with *static_sas* static SAs reads.

    It grows with the SAs the config holds (a home agent: two or four per
    MN), so a large node can restart; a file far larger than its config
    explains is refused as damaged.
    """
    return max(MAX_FILE, RECORD * (1 + RECORDS_PER_SA * max(0, static_sas)))


_RECORD_RE = re.compile(rb"(in |out) ([0-9a-f]{8}) ([0-9a-f]{16}) ([0-9a-f]{16}) ([0-9a-f]{8}) *\n")
_WITNESS_TEXT = """\
This directory holds the ESP sequence-number state of vmip node {node}
({file}).  Do not delete or edit it: with static keys that would let the
node send AEAD nonces it already used (RFC 4106 §3.1).  To start afresh,
write new keys for every static SA on both nodes, then remove the whole
directory.  See docs/ipsec.md, "Static keys across restarts".
"""

Scheduler = Callable[[float, Callable[[], None]], object]
RecordKey = tuple[str, int, str]


class StateFileError(VmipError):
    """The state file cannot be trusted; the message says why, ``fix`` what to do (if known)."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.fix = fix


def fingerprint(params) -> str:
    """16 hex digits naming an SA's keys (a one-way hash: nothing of the key shows)."""
    digest = hashlib.sha256(b"vmip esp-seq fingerprint\0" + params.suite.encode() + b"\0"
                            + bytes(params.enc_key) + b"\0" + bytes(params.auth_key))
    return digest.hexdigest()[:16]


def format_record(direction: str, spi: int, print_: str, mark: int) -> bytes:
    """One 64-byte record line; the CRC-32 catches a line damaged on disk."""
    body = f"{direction:<3} {spi:08x} {print_} {mark:016x}".encode()
    line = body + b" %08x" % zlib.crc32(body)
    return line.ljust(RECORD - 1) + b"\n"


def parse_state(data: bytes) -> dict[RecordKey, tuple[int, int]]:
    """``(direction, spi, fingerprint) -> (slot, mark)``; :class:`StateFileError` if bad."""
    if not data:
        raise StateFileError("the file is empty (truncated, or not written by vmip)")
    if len(data) % RECORD:
        raise StateFileError(f"its length, {len(data)} bytes, is not a multiple of {RECORD}")
    if data[:RECORD] != HEADER:
        raise StateFileError("its first line is not the vmip esp-seq header")
    records: dict[RecordKey, tuple[int, int]] = {}
    for slot in range(1, len(data) // RECORD):
        line = data[slot * RECORD:(slot + 1) * RECORD]
        match = _RECORD_RE.fullmatch(line)
        if match is None:
            raise StateFileError(f"line {slot + 1} is not a record")
        direction, spi, print_, mark, crc = match.groups()
        body = line[:len(direction) + 43]  # "dir spi fingerprint mark", without the CRC
        if zlib.crc32(body) != int(crc, 16):
            raise StateFileError(f"line {slot + 1} fails its checksum")
        key = (direction.decode().strip(), int(spi, 16), print_.decode())
        if key in records:
            raise StateFileError(f"line {slot + 1} repeats line {records[key][0] + 1}")
        records[key] = (slot, int(mark, 16))
    return records


def _record_key(esp: EspSA) -> RecordKey:
    return (esp.params.direction.value, esp.spi, fingerprint(esp.params))


class SeqState:
    """The open state file of one node, and the SAs it guards.

    Use :meth:`open` (it never raises).  A state that could not be opened
    has ``problem`` and ``fix`` set and refuses every SA attached to it.
    *call_later(delay, fn)* schedules the inbound trailing writes (default:
    the running asyncio loop; without one every accepted packet above the
    mark is written at once).
    """

    def __init__(self, path: Path, fd: int | None, records: dict[RecordKey, tuple[int, int]],
                 *, problem: str | None = None, fix: str | None = None,
                 call_later: Scheduler | None = None) -> None:
        self.path = path
        self.fd = fd
        self.problem = problem
        self.fix = fix
        self._slots = {key: slot for key, (slot, _mark) in records.items()}
        self._marks = {key: mark for key, (_slot, mark) in records.items()}
        self._next_slot = max(self._slots.values(), default=0) + 1
        self._call_later = call_later
        self._inbound: dict[int, tuple[EspSA, RecordKey]] = {}
        # Inbound SAs whose replay top moved since the last flush, and
        # whether that flush is scheduled: one fsync per interval for all.
        self._moving: dict[int, tuple[EspSA, RecordKey]] = {}
        self._flush_armed = False
        # The last flush wrote something: the next one waits IN_FLUSH_INTERVAL.
        self._busy = False
        self._failing: set[RecordKey] = set()
        # Trailing inbound writes are done by a thread of their own (_Syncer):
        # on the loop, the pwrite (≈ 0.2 ms cold) and the fsync (milliseconds)
        # ran right after the packet that moved the mark, ahead of its reply.
        # The lock orders every record write, the thread's and the loop's.
        self._io = threading.Lock()
        self._syncer: _Syncer | None = None
        # Outbound SAs that have not reserved a block since attach, and blocks
        # reserved for them ahead (durable) by another SA's reservation.
        self._cold_out: dict[int, tuple[EspSA, RecordKey]] = {}
        self._ahead: dict[RecordKey, int] = {}
        #: SAs attached that resumed from a recorded mark.
        self.resumed = 0
        if fd is not None:
            atexit.register(self.flush)

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], node: str = "vmip", *,
             call_later: Scheduler | None = None, static_sas: int = 0) -> SeqState:
        """Open (first start: create) ``state_dir/esp-seq.state`` and lock it.

        *static_sas*: how many static SAs the config has; the file may hold
        up to :func:`state_file_limit` of it.
        """
        directory = Path(state_dir)
        path = directory / FILE_NAME
        try:
            fd, records, created = _open_file(directory, node, state_file_limit(static_sas))
        except StateFileError as exc:
            fix = (f"write new keys for every static SA on both nodes, then remove {directory} "
                   "(vmip makes it afresh); until then these SAs stay unused")
            return cls._broken(path, str(exc), exc.fix or fix, call_later)
        except OSError as exc:
            problem = f"cannot open it: {os.strerror(exc.errno or 0) or exc}"
            fix = (f"make {directory} a directory the node can write (mode 0700, owned by the "
                   "user that starts vmip), or set keys.state_dir")
            return cls._broken(path, problem, fix, call_later)
        log.info("sequence-number state created" if created else "sequence-number state opened",
                 path=str(path), records=len(records))
        return cls(path, fd, records, call_later=call_later)

    @classmethod
    def _broken(cls, path: Path, problem: str, fix: str,
                call_later: Scheduler | None) -> SeqState:
        log.error("static SAs refuse to send: sequence-number state unusable", path=str(path),
                  problem=problem, fix=fix)
        return cls(path, None, {}, problem=problem, fix=fix, call_later=call_later)

    def close(self) -> None:
        """Write the inbound marks and close the file (also done at exit)."""
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.stop()   # writes what it holds; before the descriptor goes
        self.flush()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            atexit.unregister(self.flush)
            os.close(fd)

    # -- SAs -------------------------------------------------------------------

    def attach(self, esp: EspSA) -> None:
        """Guard *esp*: skip to its recorded mark, and keep the mark on disk from now on."""
        key = _record_key(esp)
        if self.fd is None:
            esp.refuse_for("seq_state")
            log.error("static SA refused: no sequence-number state", sa=esp.params.name,
                      spi=f"{esp.spi:#010x}", path=str(self.path), problem=self.problem,
                      fix=self.fix)
            return
        mark = self._marks.get(key, 0)
        if key[0] == "out":
            # RFC 4303 §3.3.3: every number up to the mark may have been sent.
            esp.guard_sequence(self, mark)
            self._cold_out[id(esp)] = (esp, key)
        else:
            # RFC 4303 §3.4.3: everything up to the mark was received before.
            esp.guard_replay(self, mark)
            self._inbound[id(esp)] = (esp, key)
        if mark:
            # Debug per SA (a home agent has two per MN); install() says how many at info.
            self.resumed += 1
            log.debug("sequence numbers resumed", sa=esp.params.name, spi=f"{esp.spi:#010x}",
                      direction=key[0], mark=mark)

    def detach(self, esp: EspSA) -> None:
        """Stop guarding *esp* (deleted or replaced), writing its inbound mark first."""
        entry = self._inbound.pop(id(esp), None)
        self._moving.pop(id(esp), None)
        if self._cold_out.pop(id(esp), None) is not None or self._ahead:
            self._ahead.pop(_record_key(esp), None)
        if entry is not None:
            self._write_inbound([entry])

    def reserve(self, esp: EspSA, seq: int) -> int:
        """Outbound slow path: the new ceiling (>= *seq*), or 0 if it could not be written."""
        key = _record_key(esp)
        self._cold_out.pop(id(esp), None)
        ahead = self._ahead.pop(key, 0)
        if ahead >= seq:
            return ahead                     # reserved (and synced) with another SA's block
        mark = min(seq - 1 + OUT_BLOCK, esp.seq_limit)
        batch = [(key, mark, esp)]
        riders: list[tuple[int, RecordKey, int]] = []
        for other_id, (other, other_key) in self._cold_out.items():
            if len(riders) >= OUT_BATCH:
                break
            if other_key in self._ahead or other_key == key:
                continue
            other_mark = min(other.seq + OUT_BLOCK, other.seq_limit)
            if other_mark > other.seq:
                riders.append((other_id, other_key, other_mark))
                batch.append((other_key, other_mark, other))
        if not self._write(batch, blame=1):
            return 0
        for other_id, other_key, other_mark in riders:
            self._ahead[other_key] = other_mark
            del self._cold_out[other_id]
        return mark

    def replay_advanced(self, esp: EspSA) -> None:
        """Inbound: *esp* authenticated a packet above its mark; write it soon (see module)."""
        entry = self._inbound.get(id(esp))
        if entry is None:
            return
        call_later = self._call_later or _loop_call_later()
        if call_later is None:
            self._write_inbound([entry])  # no loop: esp keeps notifying, each top written
            return
        esp._replay_notify = False
        self._moving[id(esp)] = entry
        if not self._flush_armed:
            self._flush_armed = True
            # Idle until now: at the end of this loop round, so a lone packet
            # is on disk at once; busy: with everything else that moves.
            call_later(IN_FLUSH_INTERVAL if self._busy else 0.0, self._flush_moving)

    def flush(self) -> None:
        """Write every inbound mark that moved (at exit, on close)."""
        if self._syncer is not None:
            self._syncer.write_pending()
        self._write_inbound(list(self._inbound.values()))

    # -- internals -------------------------------------------------------------

    def _flush_moving(self) -> None:
        """The trailing write: every SA that moved, one fsync; still moving ones stay watched."""
        self._flush_armed = False
        moving, self._moving = self._moving, {}
        live = [entry for entry in moving.values() if id(entry[0]) in self._inbound]
        moved = {id(esp) for esp, _key in self._write_inbound(live, background=True)}
        self._busy = bool(moved)
        for esp, key in live:
            if id(esp) in moved:
                self._moving[id(esp)] = (esp, key)   # still moving: look again later
            else:
                esp._replay_notify = True            # idle: its next packet arms a flush
        if self._moving:
            call_later = self._call_later or _loop_call_later()
            if call_later is not None:
                self._flush_armed = True
                call_later(IN_FLUSH_INTERVAL, self._flush_moving)
            else:
                for esp, _key in self._moving.values():
                    esp._replay_notify = True
                self._moving.clear()

    def _write_inbound(self, entries: list[tuple[EspSA, RecordKey]], *,
                       background: bool = False) -> list[tuple[EspSA, RecordKey]]:
        """Write the replay tops that moved, one fsync for all; those written.

        *background*: records of keys that have their slot go to the syncer
        thread, which writes and fsyncs them ``SYNC_DELAY`` later; the loop
        goes on at once.  A key's first record is still written here: a new
        slot must never leave a hole, which would read as a corrupt file.
        """
        if self.fd is None:
            return []
        moved = [(esp, key) for esp, key in entries if esp.replay.top > self._marks.get(key, 0)]
        if moved and background and all(key in self._slots for _esp, key in moved):
            if self._syncer is None:
                self._syncer = _Syncer(self.fd, self.path, self._io)
            tops = [(key, esp.replay.top) for esp, key in moved]
            self._syncer.write([(self._slots[key] * RECORD, format_record(*key, top))
                                for key, top in tops])
            self._marks.update(tops)
            return moved
        if moved and self._write([(key, esp.replay.top, esp) for esp, key in moved]):
            return moved
        return []

    def _write(self, records: list[tuple[RecordKey, int, EspSA]], *,
               blame: int | None = None) -> bool:
        """pwrite each record into its slot (a new key: the next free one), then one fsync.

        A failure is logged for the first *blame* records (default: all):
        blocks reserved ahead for other SAs are simply not made.
        """
        fd = self.fd
        if fd is None:
            return False
        new_slots: dict[RecordKey, int] = {}
        try:
            with self._io:   # not overtaken by an older record of the syncer thread
                for key, mark, _esp in records:
                    slot = self._slots.get(key) or new_slots.get(key)
                    if slot is None:
                        slot = new_slots[key] = self._next_slot + len(new_slots)
                    written = os.pwrite(fd, format_record(*key, mark), slot * RECORD)
                    if written != RECORD:
                        raise OSError(errno.EIO, "short write")
            os.fsync(fd)
        except OSError as exc:
            for key, _mark, esp in records[:blame]:
                if key in self._failing:
                    continue
                self._failing.add(key)
                log.error("sequence-number state not written", path=str(self.path),
                          sa=esp.params.name, spi=f"{esp.spi:#010x}", direction=key[0],
                          problem=os.strerror(exc.errno or 0) or str(exc),
                          fix="free space or repair the disk; sending stays refused until then"
                          if key[0] == "out" else "free space or repair the disk")
            return False
        self._slots.update(new_slots)
        self._next_slot += len(new_slots)
        for key, mark, _esp in records:
            self._failing.discard(key)
            self._marks[key] = mark
        return True


class _Syncer:
    """A daemon thread that writes trailing inbound records and fsyncs the file.

    :meth:`write` queues records (a newer one for the same offset replaces
    the older) and wakes the thread, which waits ``SYNC_DELAY``, writes what
    is queued and fsyncs once, under the owner's I/O lock.  :meth:`stop`
    writes what is left and returns when the thread is gone, so the
    descriptor may be closed after it.
    """

    def __init__(self, fd: int, path: Path, io: threading.Lock) -> None:
        self._fd = fd
        self._path = path
        self._io = io
        self._queue_lock = threading.Lock()
        self._queued: dict[int, bytes] = {}
        self._wanted = threading.Event()
        self._stopping = False
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="vmip-seq-sync", daemon=True)
        self._thread.start()

    def write(self, records: list[tuple[int, bytes]]) -> None:
        with self._queue_lock:   # never waits for the disk
            self._queued.update(records)
        self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()
        self.write_pending()

    def write_pending(self) -> None:
        """Write and sync what is queued, from the calling thread."""
        try:
            with self._io:   # on disk and synced when this returns, whoever wrote it
                with self._queue_lock:
                    queued, self._queued = self._queued, {}
                for offset, record in queued.items():
                    if os.pwrite(self._fd, record, offset) != len(record):
                        raise OSError(errno.EIO, "short write")
                if queued:
                    os.fsync(self._fd)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.error("sequence-number state not written", path=str(self._path),
                          problem=os.strerror(exc.errno or 0) or str(exc),
                          fix="free space or repair the disk")
            return
        self._failed = False

    def _run(self) -> None:
        while not self._stopping:
            self._wanted.wait()
            if self._stopping:
                return
            # The packet that moved the mark, and its reply, go first: this
            # thread would take the GIL while the loop's is in a system call.
            time.sleep(SYNC_DELAY)
            self._wanted.clear()
            self.write_pending()


def _loop_call_later() -> Scheduler | None:
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    # No delay: after the callbacks of this loop round (the packets read in it).
    return lambda delay, fn: loop.call_soon(fn) if delay <= 0 else loop.call_later(delay, fn)


def _open_file(directory: Path, node: str, limit: int = MAX_FILE
               ) -> tuple[int, dict[RecordKey, tuple[int, int]], bool]:
    """``(fd, records, created)``; :class:`StateFileError` or :class:`OSError` if not."""
    created_dir = False
    if not directory.exists() and not directory.is_symlink():
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        created_dir = True
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dir_stat = os.fstat(dir_fd)
        if dir_stat.st_mode & 0o022:
            raise StateFileError(f"{directory} is writable by group or others "
                                 f"(mode {stat.S_IMODE(dir_stat.st_mode):04o})",
                                 f"run chmod 700 {directory}")
        try:
            fd = os.open(FILE_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            created = False
        except FileNotFoundError:
            names = [n for n in os.listdir(dir_fd) if not n.startswith(f".{FILE_NAME}.")]
            if names and not created_dir:
                # The directory was in use (our README is there): the file was deleted.
                raise StateFileError(f"{FILE_NAME} is missing from {directory}, which holds "
                                     f"{', '.join(sorted(names)[:3])}: it was deleted or "
                                     "moved") from None
            fd = _create(dir_fd)
            created = True
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateFileError(f"{directory / FILE_NAME} is a symbolic link") from None
            raise
        try:
            records = _load(fd, directory / FILE_NAME, limit)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateFileError("another vmip process has it open (two nodes with one "
                                     "state_dir)") from None
            _write_witness(dir_fd, node)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(dir_fd)
    return fd, records, created


def _create(dir_fd: int) -> int:
    """A new state file holding the header: written and synced under a temporary name first."""
    temporary = f".{FILE_NAME}.new"
    try:
        os.unlink(temporary, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.pwrite(fd, HEADER, 0)
        os.fsync(fd)
        os.rename(temporary, FILE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _load(fd: int, path: Path, limit: int = MAX_FILE) -> dict[RecordKey, tuple[int, int]]:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StateFileError(f"{path} is not a regular file")
    if info.st_mode & 0o022:
        raise StateFileError(f"{path} is writable by group or others "
                             f"(mode {stat.S_IMODE(info.st_mode):04o})", f"run chmod 600 {path}")
    if info.st_size > limit:
        raise StateFileError(
            f"{path} is {info.st_size} bytes, more than the {limit} that "
            f"{RECORDS_PER_SA} records per static SA of the config allow",
            "if the config lost many SAs, put them back; else the file is damaged: write "
            "new keys for every static SA on both nodes, then remove the state directory")
    data = bytearray()
    while len(data) < info.st_size:
        chunk = os.pread(fd, info.st_size - len(data), len(data))
        if not chunk:
            break
        data += chunk
    try:
        return parse_state(bytes(data))
    except StateFileError as exc:
        raise StateFileError(f"{path} is corrupt: {exc}") from None


def _write_witness(dir_fd: int, node: str) -> None:
    try:
        fd = os.open(WITNESS_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        return
    try:
        os.write(fd, _WITNESS_TEXT.format(node=node, file=FILE_NAME).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dir_fd)
