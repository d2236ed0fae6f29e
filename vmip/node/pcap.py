"""Packet capture to classic pcap files, for Wireshark and tshark.

``vmip run --pcap-wire FILE`` writes every on-wire IPv6 packet (after IRO
remapping outbound, before it inbound) with link type LINKTYPE_IPV6 (229),
so Wireshark shows ESP directly and, with ``vmip keys --wireshark``, what is
inside.  ``--pcap-inner FILE`` writes the inner packets as the TUN sees them.

The writer buffers and flushes at most every ``flush_interval`` seconds so
the per-packet cost stays a struct pack and a list append.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import BinaryIO

from vmip.errors import VmipError

#: LINKTYPE_IPV6: every record starts with an IPv6 header.
LINKTYPE_IPV6 = 229
#: LINKTYPE_RAW: IPv4 or IPv6, told apart by the version nibble.
LINKTYPE_RAW = 101

_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_MAGIC_USEC = 0xA1B2C3D4


class CaptureError(VmipError):
    """A capture file that cannot be created; the message says what to do."""


def _create_capture(path: Path) -> int:
    # O_EXCL|O_NOFOLLOW: never truncate or follow an existing name.  A root
    # node writing wherever a user's symlink points would clobber any file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        raise CaptureError(f"capture file {path} already exists (a file or a symbolic link); "
                           "remove it or choose another name") from None
    except OSError as exc:
        raise CaptureError(f"cannot create capture file {path}: {exc.strerror}; "
                           "check that the directory exists and is writable") from None
    except ValueError:   # a NUL in the path
        raise CaptureError(f"capture file name {str(path)!r} is not a valid path; "
                           "choose another name") from None


class PcapWriter:
    """Write packets to a new pcap file (created 0600: captures hold addresses).

    The file must not exist yet: :class:`CaptureError` otherwise.
    """

    def __init__(self, path: str | Path, linktype: int = LINKTYPE_IPV6,
                 snaplen: int = 65535, flush_interval: float = 0.5) -> None:
        self.path = Path(path)
        fd = _create_capture(self.path)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._file.write(_GLOBAL_HEADER.pack(_MAGIC_USEC, 2, 4, 0, 0, snaplen, linktype))
        self._snaplen = snaplen
        self._pending: list[bytes] = []
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()
        self.packets = 0

    def write(self, packet: bytes, timestamp: float | None = None) -> None:
        if self._file is None:
            return
        stamp = time.time() if timestamp is None else timestamp
        seconds = int(stamp)
        micros = int((stamp - seconds) * 1_000_000)
        data = packet[: self._snaplen]
        self._pending.append(_RECORD_HEADER.pack(seconds, micros, len(data), len(packet)))
        self._pending.append(bytes(data))
        self.packets += 1
        now = time.monotonic()
        if now - self._last_flush >= self._flush_interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self._file is None:
            return
        if self._pending:
            self._file.write(b"".join(self._pending))
            self._pending.clear()
        self._file.flush()
        self._last_flush = time.monotonic() if now is None else now

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None
