"""A small pure-Python NFQUEUE client (nfnetlink_queue over AF_NETLINK).

Why not the ``netfilterqueue`` package: it is a C extension built against
libnetfilter_queue, which a fresh machine lacks.  The protocol is small:
three message types (CONFIG, PACKET, VERDICT[_BATCH]) carried in netlink
messages with a ``struct nfgenmsg`` header and ``nlattr`` TLVs.  Numbers are
named after the kernel's uapi headers ``linux/netfilter/nfnetlink_queue.h``,
``linux/netfilter/nfnetlink.h``, ``linux/netfilter.h`` and ``linux/netlink.h``.

Two layers:

- sans-IO codec: ``encode_*`` functions build request bytes, and
  :func:`decode_messages` turns a received datagram into typed records
  (:class:`QueuedPacket`, :class:`NetlinkAck`).  Malformed input raises
  :class:`NetlinkDecodeError` and nothing else.
- :class:`NfqueueSocket`: a thin non-blocking socket wrapper whose ``fileno``
  goes into an event loop (``loop.add_reader``); verdicts may be given in any
  order and long after the packet was read: the kernel holds the packet until
  then.  That is what lets the shaper *schedule* releases instead of sleeping.
"""

from __future__ import annotations

import errno as errno_module
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmip.errors import VmipError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

# --- linux/netlink.h -------------------------------------------------------
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10

NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04

NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

NLMSG_HDRLEN = 16  # struct nlmsghdr: u32 len, u16 type, u16 flags, u32 seq, u32 pid
NLA_HDRLEN = 4  # struct nlattr: u16 len, u16 type

# --- linux/netfilter/nfnetlink.h -------------------------------------------
NFNETLINK_V0 = 0
NFNL_SUBSYS_QUEUE = 3
NFGENMSG_LEN = 4  # struct nfgenmsg: u8 family, u8 version, be16 res_id

# --- linux/netfilter/nfnetlink_queue.h -------------------------------------
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQA_UNSPEC = 0
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_IFINDEX_PHYSINDEV = 7
NFQA_IFINDEX_PHYSOUTDEV = 8
NFQA_HWADDR = 9
NFQA_PAYLOAD = 10
NFQA_CT = 11
NFQA_CT_INFO = 12
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14

NFQNL_CFG_CMD_NONE = 0
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_CFG_CMD_PF_BIND = 3
NFQNL_CFG_CMD_PF_UNBIND = 4

NFQNL_COPY_NONE = 0
NFQNL_COPY_META = 1
NFQNL_COPY_PACKET = 2

NFQA_CFG_UNSPEC = 0
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5

NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2

# --- linux/netfilter.h ------------------------------------------------------
NF_DROP = 0
NF_ACCEPT = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_NFGENMSG = struct.Struct("!BBH")
_PACKET_HDR = struct.Struct("!IHB")  # struct nfqnl_msg_packet_hdr (packed, 7 bytes)
_VERDICT_HDR = struct.Struct("!II")  # struct nfqnl_msg_verdict_hdr
_CONFIG_CMD = struct.Struct("!BxH")  # struct nfqnl_msg_config_cmd
_CONFIG_PARAMS = struct.Struct("!IB")  # struct nfqnl_msg_config_params (packed, 5 bytes)
_BE32 = struct.Struct("!I")
_TIMESTAMP = struct.Struct("!QQ")  # struct nfqnl_msg_packet_timestamp: be64 sec, be64 usec


class NfqueueError(VmipError):
    """Anything that went wrong talking to nfnetlink_queue."""


class NetlinkDecodeError(NfqueueError):
    """A received netlink datagram is malformed (the only error the decoder raises)."""


class NfqueueKernelError(NfqueueError):
    """The kernel refused a request (a netlink NLMSG_ERROR with a non-zero code)."""

    def __init__(self, message: str, errno: int):
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """One NFQNL_MSG_PACKET: a packet the kernel holds until we give a verdict."""

    queue_num: int
    family: int
    packet_id: int
    hw_protocol: int
    hook: int
    # Full packet length: NFQA_CAP_LEN when truncated, else the payload length
    # (0 in NFQNL_COPY_META mode, where the kernel sends neither).
    length: int
    payload: bytes  # the first copy_range bytes (empty in NFQNL_COPY_META mode)
    indev: int | None = None
    outdev: int | None = None
    mark: int | None = None
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class NetlinkAck:
    """An NLMSG_ERROR: ``error == 0`` is an acknowledgement, otherwise -errno."""

    seq: int
    error: int


def _align4(length: int) -> int:
    return (length + 3) & ~3


def nfnl_msg_type(msg: int) -> int:
    """nlmsg_type of an nfnetlink message: subsystem in the high byte (nfnetlink.h)."""
    return (NFNL_SUBSYS_QUEUE << 8) | msg


# --- encoding ---------------------------------------------------------------

def encode_attr(attr_type: int, value: bytes) -> bytes:
    """One nlattr TLV, padded to 4 bytes (the length field excludes the padding)."""
    length = NLA_HDRLEN + len(value)
    if length > 0xFFFF:
        raise NfqueueError(f"netlink attribute too long: {length} bytes")
    return _NLATTR.pack(length, attr_type) + value + b"\0" * (_align4(length) - length)


def encode_nfqnl_message(msg: int, queue_num: int, attrs: bytes, *, seq: int = 0,
                         flags: int = NLM_F_REQUEST, family: int = socket.AF_UNSPEC) -> bytes:
    """A complete netlink message: nlmsghdr + nfgenmsg (res_id = queue number) + attrs."""
    if not 0 <= queue_num <= 0xFFFF:
        raise NfqueueError(f"queue number must be 0..65535, not {queue_num}")
    body = _NFGENMSG.pack(family, NFNETLINK_V0, queue_num) + attrs
    header = _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), nfnl_msg_type(msg), flags,
                            seq & 0xFFFFFFFF, 0)
    return header + body


def encode_config_cmd(queue_num: int, command: int, *, pf: int = socket.AF_UNSPEC,
                      seq: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG with NFQA_CFG_CMD (BIND, UNBIND, PF_BIND, PF_UNBIND)."""
    attrs = encode_attr(NFQA_CFG_CMD, _CONFIG_CMD.pack(command, pf))
    return encode_nfqnl_message(NFQNL_MSG_CONFIG, queue_num, attrs, seq=seq,
                                flags=NLM_F_REQUEST | NLM_F_ACK)


def encode_config_params(queue_num: int, *, copy_mode: int, copy_range: int,
                         max_len: int | None = None, fail_open: bool = True,
                         seq: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG setting copy mode/range, queue max length and flags."""
    attrs = encode_attr(NFQA_CFG_PARAMS, _CONFIG_PARAMS.pack(copy_range, copy_mode))
    if max_len is not None:
        attrs += encode_attr(NFQA_CFG_QUEUE_MAXLEN, _BE32.pack(max_len))
    # The mask says which flags this message changes; FAIL_OPEN makes the kernel
    # accept (instead of drop) packets that find the queue full.
    attrs += encode_attr(NFQA_CFG_MASK, _BE32.pack(NFQA_CFG_F_FAIL_OPEN))
    attrs += encode_attr(NFQA_CFG_FLAGS, _BE32.pack(NFQA_CFG_F_FAIL_OPEN if fail_open else 0))
    return encode_nfqnl_message(NFQNL_MSG_CONFIG, queue_num, attrs, seq=seq,
                                flags=NLM_F_REQUEST | NLM_F_ACK)


def encode_verdict(queue_num: int, packet_id: int, verdict: int, *, seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT for one packet id (no ACK requested: errors still come back)."""
    attrs = encode_attr(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(verdict, packet_id & 0xFFFFFFFF))
    return encode_nfqnl_message(NFQNL_MSG_VERDICT, queue_num, attrs, seq=seq)


def encode_batch_verdict(queue_num: int, last_packet_id: int, verdict: int, *,
                         seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH: the verdict applies to every held id up to and
    including ``last_packet_id`` (kernel compares ids modulo 2^32)."""
    attrs = encode_attr(NFQA_VERDICT_HDR,
                        _VERDICT_HDR.pack(verdict, last_packet_id & 0xFFFFFFFF))
    return encode_nfqnl_message(NFQNL_MSG_VERDICT_BATCH, queue_num, attrs, seq=seq)


# --- decoding ---------------------------------------------------------------

def decode_attrs(data: bytes) -> dict[int, bytes]:
    """nlattr TLVs to {type: value}; the last of repeated types wins."""
    attrs: dict[int, bytes] = {}
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < NLA_HDRLEN:
            raise NetlinkDecodeError(f"truncated attribute header at offset {offset}")
        length, attr_type = _NLATTR.unpack_from(data, offset)
        if length < NLA_HDRLEN or offset + length > end:
            raise NetlinkDecodeError(f"bad attribute length {length} at offset {offset}")
        attrs[attr_type & NLA_TYPE_MASK] = bytes(data[offset + NLA_HDRLEN:offset + length])
        offset += _align4(length)
    return attrs


def _be32_attr(attrs: dict[int, bytes], attr_type: int) -> int | None:
    value = attrs.get(attr_type)
    if value is None:
        return None
    if len(value) != 4:
        raise NetlinkDecodeError(f"attribute {attr_type} must be 4 bytes, got {len(value)}")
    return _BE32.unpack(value)[0]


def _decode_packet(body: bytes) -> QueuedPacket:
    if len(body) < NFGENMSG_LEN:
        raise NetlinkDecodeError("packet message shorter than struct nfgenmsg")
    family, _version, queue_num = _NFGENMSG.unpack_from(body)
    attrs = decode_attrs(body[NFGENMSG_LEN:])
    header = attrs.get(NFQA_PACKET_HDR)
    if header is None or len(header) < _PACKET_HDR.size:
        raise NetlinkDecodeError("packet message without a valid NFQA_PACKET_HDR")
    packet_id, hw_protocol, hook = _PACKET_HDR.unpack_from(header)
    payload = attrs.get(NFQA_PAYLOAD, b"")
    cap_len = _be32_attr(attrs, NFQA_CAP_LEN)
    # The kernel sends NFQA_CAP_LEN only when it copied less than the whole
    # packet (always so in COPY_META mode); otherwise the payload is the packet.
    length = cap_len if cap_len is not None else len(payload)
    stamp = attrs.get(NFQA_TIMESTAMP)
    timestamp = None
    if stamp is not None:
        if len(stamp) != _TIMESTAMP.size:
            raise NetlinkDecodeError("NFQA_TIMESTAMP must be 16 bytes")
        seconds, micros = _TIMESTAMP.unpack(stamp)
        timestamp = seconds + micros / 1e6
    return QueuedPacket(
        queue_num=queue_num, family=family, packet_id=packet_id, hw_protocol=hw_protocol,
        hook=hook, length=length, payload=payload,
        indev=_be32_attr(attrs, NFQA_IFINDEX_INDEV),
        outdev=_be32_attr(attrs, NFQA_IFINDEX_OUTDEV),
        mark=_be32_attr(attrs, NFQA_MARK), timestamp=timestamp,
    )


def decode_messages(data: bytes) -> list[QueuedPacket | NetlinkAck]:
    """Decode one received netlink datagram (it may hold several messages).

    Messages of other subsystems or types are skipped (a newer kernel may
    send more); anything structurally wrong raises :class:`NetlinkDecodeError`.
    """
    records: list[QueuedPacket | NetlinkAck] = []
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < NLMSG_HDRLEN:
            raise NetlinkDecodeError(f"truncated netlink header at offset {offset}")
        length, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < NLMSG_HDRLEN or offset + length > end:
            raise NetlinkDecodeError(f"bad netlink message length {length} at offset {offset}")
        body = data[offset + NLMSG_HDRLEN:offset + length]
        if msg_type == NLMSG_ERROR:
            if len(body) < 4:
                raise NetlinkDecodeError("NLMSG_ERROR without an error code")
            (error,) = struct.unpack_from("=i", body)
            records.append(NetlinkAck(seq=seq, error=error))
        elif msg_type == nfnl_msg_type(NFQNL_MSG_PACKET):
            records.append(_decode_packet(body))
        offset += _align4(length)
    return records


# --- the socket -------------------------------------------------------------

class NfqueueSocket:
    """One bound queue.  Configure in blocking mode, then run non-blocking.

    ``fail_open`` sets NFQA_CFG_F_FAIL_OPEN: when the kernel queue reaches
    ``max_len`` further packets are accepted rather than dropped.  (What keeps
    traffic flowing when the *process* dies is the iptables rule's
    ``--queue-bypass``: a queue with no listener then accepts.)

    The default is COPY_PACKET with a 64-byte range: the kernel then adds
    NFQA_CAP_LEN (the full length) to truncated packets, while COPY_META
    gives no length at all (checked on Linux 6.18), and rate emulation needs it.
    """

    def __init__(self, queue_num: int, *, copy_mode: int = NFQNL_COPY_PACKET,
                 copy_range: int = 64, max_len: int = 4096, fail_open: bool = True,
                 rcvbuf: int = 4 << 20, timeout: float = 2.0):
        self.queue_num = queue_num
        self._seq = 0
        self._pending: list[bytes] = []
        self.malformed = 0  # datagrams that failed to decode
        # Records that arrived while waiting for an acknowledgement.
        self._early: list[QueuedPacket | NetlinkAck] = []
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NfqueueError(f"cannot open a NETLINK_NETFILTER socket: {exc}") from exc
        try:
            self._sock.bind((0, 0))
            self._set_rcvbuf(rcvbuf)
            # Without this a full receive buffer makes recv() fail with ENOBUFS;
            # lost PACKET messages are harmless here (a later batch verdict
            # releases them), so ask the kernel not to report the overrun.
            self._sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self._timeout = timeout
            # Kernels before 3.8 need a per-family PF_BIND; later ones accept
            # and ignore it (nfqnl_recv_config), so sending it costs nothing.
            for family in (socket.AF_INET, socket.AF_INET6):
                self._request(encode_config_cmd(queue_num, NFQNL_CFG_CMD_PF_BIND, pf=family,
                                                seq=self._next_seq()), "bind family")
            self._request(encode_config_cmd(queue_num, NFQNL_CFG_CMD_BIND, seq=self._next_seq()),
                          "bind queue")
            self._request(encode_config_params(queue_num, copy_mode=copy_mode,
                                               copy_range=copy_range, max_len=max_len,
                                               fail_open=fail_open, seq=self._next_seq()),
                          "configure queue")
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def _set_rcvbuf(self, size: int) -> None:
        try:
            # SO_RCVBUFFORCE ignores rmem_max (needs CAP_NET_ADMIN, which a queue needs anyway).
            self._sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _request(self, message: bytes, what: str) -> None:
        """Send a request with NLM_F_ACK and wait (bounded) for its acknowledgement."""
        seq = _NLMSGHDR.unpack_from(message)[3]
        self._sock.send(message)
        deadline = time.monotonic() + self._timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NfqueueError(f"{what}: no answer from the kernel")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError as exc:
                raise NfqueueError(f"{what}: no answer from the kernel") from exc
            for record in decode_messages(data):
                if isinstance(record, NetlinkAck) and record.seq == seq:
                    if record.error:
                        code = -record.error
                        raise NfqueueKernelError(
                            f"{what} {self.queue_num}: {os.strerror(code)}", code)
                    return
                self._early.append(record)

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, max_datagrams: int = 256) -> list[QueuedPacket | NetlinkAck]:
        """Read what is waiting, without blocking, at most ``max_datagrams`` reads."""
        records, self._early = self._early, []
        for _ in range(max_datagrams):
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno_module.ENOBUFS:
                    continue
                raise NfqueueError(f"receive on queue {self.queue_num}: {exc}") from exc
            try:
                records.extend(decode_messages(data))
            except NetlinkDecodeError:
                # One bad datagram must not stop the queue; its packets (if
                # any) are released by the next batch verdict.
                self.malformed += 1
        return records

    def wait_readable(self, timeout: float) -> bool:
        """For simple synchronous users and tests: wait until a message is waiting."""
        readable, _, _ = select.select([self._sock], [], [], timeout)
        return bool(readable)

    def queue_verdict(self, packet_id: int, verdict: int) -> None:
        """Add a single-packet verdict to the next :meth:`flush`."""
        self._pending.append(encode_verdict(self.queue_num, packet_id, verdict))

    def queue_batch_verdict(self, last_packet_id: int, verdict: int) -> None:
        """Add a verdict for every held id up to ``last_packet_id`` to the next flush."""
        self._pending.append(encode_batch_verdict(self.queue_num, last_packet_id, verdict))

    def flush(self) -> None:
        """Send queued verdicts, several netlink messages per datagram (the kernel
        processes every message in one skb, netlink_rcv_skb)."""
        pending, self._pending = self._pending, []
        chunk: list[bytes] = []
        size = 0
        for message in pending:
            if size + len(message) > 16384 and chunk:
                self._send(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(message)
            size += len(message)
        if chunk:
            self._send(b"".join(chunk))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            raise NfqueueError(f"send verdicts on queue {self.queue_num}: {exc}") from exc

    def verdict(self, packet_id: int, verdict: int) -> None:
        self.queue_verdict(packet_id, verdict)
        self.flush()

    def close(self) -> None:
        """Closing the socket unbinds the queue; the kernel drops what is still held,
        so callers accept held packets first."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
