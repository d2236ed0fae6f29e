"""Batched datagram receive: ``recvmmsg(2)`` through ctypes (Python has no binding).

On the ``raw`` link every packet is its own datagram: the kernel has no GRO
for raw sockets as it has for UDP (docs/performance.md), so a ``recvmsg``
per packet costs a system call per packet.  ``recvmmsg`` fills up to
``slots`` messages in one call.  Each slot is a fixed buffer with a
``gap``-octet head room in front of the payload (the raw driver writes the
rebuilt IPv6 header there), a ``sockaddr_in6`` and a control buffer for
the ancillary data; they are allocated once and reused.

Linux only (``recvmmsg`` exists since 2.6.33).  :func:`available` says
whether this libc has it; the raw driver falls back to ``recvmsg`` when not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from typing import Any

_MSG_DONTWAIT = 0x40


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _load_recvmmsg() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_RECVMMSG = _load_recvmmsg()

#: sockaddr_in6 (28 octets) rounded up; struct cmsghdr is 16 octets on 64-bit Linux.
NAME_SPACE = 32
_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)
_NAMELEN_AT = _Msghdr.msg_namelen.offset
_CONTROLLEN_AT = _Msghdr.msg_controllen.offset
_FLAGS_AT = _Msghdr.msg_flags.offset
_LEN_AT = _Mmsghdr.msg_len.offset
_NAMELEN = struct.Struct("I")
_UINT = struct.Struct("I")
_INT = struct.Struct("i")
_SIZE_T = struct.Struct("N")  # native size_t (alignment is the offsets' business)


def available() -> bool:
    return _RECVMMSG is not None


class MultiReceiver:
    """Reusable buffers for ``recvmmsg`` on one socket.

    After :meth:`receive` returned *n*, slot *i* < *n* holds: the payload at
    ``buffers[i][gap:gap + lengths(i)]``, the sender's ``sockaddr_in6`` in
    ``names[i]``, the control messages in ``controls[i][:control_length(i)]``
    and the ``msg_flags`` in :meth:`flags`.
    """

    def __init__(self, slots: int, payload: int, control: int, gap: int) -> None:
        if _RECVMMSG is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self.slots = slots
        self.gap = gap
        self.control_space = control
        self.buffers = [bytearray(gap + payload) for _ in range(slots)]
        self.names = [bytearray(NAME_SPACE) for _ in range(slots)]
        self.controls = [bytearray(control) for _ in range(slots)]
        # ctypes views of the bytearrays: the kernel writes straight into them.
        self._keep = []
        self._messages = (_Mmsghdr * slots)()
        # The array's bytes, read and written with struct (cheaper than ctypes fields).
        self._raw = memoryview(self._messages).cast("B")
        self._dirty = slots
        self._iovecs = (_Iovec * slots)()
        for i in range(slots):
            data = (ctypes.c_char * payload).from_buffer(self.buffers[i], gap)
            name = (ctypes.c_char * NAME_SPACE).from_buffer(self.names[i])
            ctrl = (ctypes.c_char * control).from_buffer(self.controls[i])
            self._keep += [data, name, ctrl]
            self._iovecs[i].iov_base = ctypes.addressof(data)
            self._iovecs[i].iov_len = payload
            header = self._messages[i].msg_hdr
            header.msg_name = ctypes.addressof(name)
            header.msg_iov = ctypes.pointer(self._iovecs[i])
            header.msg_iovlen = 1
            header.msg_control = ctypes.addressof(ctrl)

    def receive(self, fd: int) -> int:
        """Fill up to ``slots`` messages without blocking; 0 when none is
        queued.  Raises OSError for any other error."""
        raw = self._raw
        # In/out fields: the kernel wrote the lengths of the slots it filled.
        for i in range(self._dirty):
            base = i * _MMSG_SIZE
            _NAMELEN.pack_into(raw, base + _NAMELEN_AT, NAME_SPACE)
            _SIZE_T.pack_into(raw, base + _CONTROLLEN_AT, self.control_space)
        count = _RECVMMSG(fd, self._messages, self.slots, _MSG_DONTWAIT, None)
        if count < 0:
            self._dirty = 0
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(code, os.strerror(code))
        self._dirty = count
        return count

    def result(self, i: int) -> tuple[int, int, int]:
        """``(payload length, control length, msg_flags)`` of slot *i*."""
        base = i * _MMSG_SIZE
        raw = self._raw
        return (_UINT.unpack_from(raw, base + _LEN_AT)[0],
                _SIZE_T.unpack_from(raw, base + _CONTROLLEN_AT)[0],
                _INT.unpack_from(raw, base + _FLAGS_AT)[0])

    def close(self) -> None:
        """Drop the ctypes views so the bytearrays may be freed."""
        self._keep.clear()

