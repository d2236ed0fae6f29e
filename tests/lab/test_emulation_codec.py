"""nfnetlink_queue codec (no root).

Oracles: the kernel's own uapi headers compiled by a C compiler (numbers and
struct sizes), and pyroute2's independent netlink/nla codec (message layout
in both directions).
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg

from vmip.lab import nfqueue as q

# --- an independent codec, written with pyroute2's nla machinery ---------------


class PyrConfig(nfgen_msg):
    nla_map = (("NFQA_CFG_UNSPEC", "none"),
               ("NFQA_CFG_CMD", "cfg_cmd"),
               ("NFQA_CFG_PARAMS", "cfg_params"),
               ("NFQA_CFG_QUEUE_MAXLEN", "be32"),
               ("NFQA_CFG_MASK", "be32"),
               ("NFQA_CFG_FLAGS", "be32"))

    class cfg_cmd(nla):
        fields = (("command", "B"), ("_pad", "B"), ("pf", ">H"))

    class cfg_params(nla):
        fields = (("copy_range", ">I"), ("copy_mode", "B"))


class PyrPacket(nfgen_msg):
    nla_map = (("NFQA_UNSPEC", "none"),
               ("NFQA_PACKET_HDR", "packet_hdr"),
               ("NFQA_VERDICT_HDR", "verdict_hdr"),
               ("NFQA_MARK", "be32"),
               ("NFQA_TIMESTAMP", "timestamp"),
               ("NFQA_IFINDEX_INDEV", "be32"),
               ("NFQA_IFINDEX_OUTDEV", "be32"),
               ("NFQA_IFINDEX_PHYSINDEV", "be32"),
               ("NFQA_IFINDEX_PHYSOUTDEV", "be32"),
               ("NFQA_HWADDR", "hex"),
               ("NFQA_PAYLOAD", "cdata"),
               ("NFQA_CT", "hex"),
               ("NFQA_CT_INFO", "be32"),
               ("NFQA_CAP_LEN", "be32"))

    class packet_hdr(nla):
        fields = (("packet_id", ">I"), ("hw_protocol", ">H"), ("hook", "B"))

    class verdict_hdr(nla):
        fields = (("verdict", ">I"), ("id", ">I"))

    class timestamp(nla):
        fields = (("sec", ">Q"), ("usec", ">Q"))


def pyr_decode(cls, data: bytes) -> dict:
    msg = cls(data)
    msg.decode()
    return {"header": dict(msg["header"]), "res_id": msg["res_id"],
            "family": msg["nfgen_family"], "attrs": dict(msg["attrs"])}


def pyr_packet(*, queue: int, family: int, packet_id: int, hw_protocol: int, hook: int,
               payload: bytes | None, cap_len: int | None, indev: int | None,
               outdev: int | None, mark: int | None, seq: int = 0) -> bytes:
    msg = PyrPacket()
    msg["header"]["type"] = (3 << 8) | 0  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET
    msg["header"]["flags"] = 0
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = family
    msg["version"] = 0
    msg["res_id"] = queue
    attrs = [["NFQA_PACKET_HDR", {"packet_id": packet_id, "hw_protocol": hw_protocol,
                                  "hook": hook}]]
    for name, value in (("NFQA_MARK", mark), ("NFQA_IFINDEX_INDEV", indev),
                        ("NFQA_IFINDEX_OUTDEV", outdev), ("NFQA_PAYLOAD", payload),
                        ("NFQA_CAP_LEN", cap_len)):
        if value is not None:
            attrs.append([name, value])
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


# --- numbers and sizes from the kernel headers ----------------------------------

_C_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#define P(x) printf(#x " %ld\n", (long)(x))
int main(void) {
  P(NETLINK_NETFILTER); P(NETLINK_NO_ENOBUFS); P(NLM_F_REQUEST); P(NLM_F_ACK);
  P(NLMSG_ERROR); P(NLMSG_DONE); P(NFNETLINK_V0); P(NFNL_SUBSYS_QUEUE);
  P(NFQNL_MSG_PACKET); P(NFQNL_MSG_VERDICT); P(NFQNL_MSG_CONFIG); P(NFQNL_MSG_VERDICT_BATCH);
  P(NFQA_PACKET_HDR); P(NFQA_VERDICT_HDR); P(NFQA_MARK); P(NFQA_TIMESTAMP);
  P(NFQA_IFINDEX_INDEV); P(NFQA_IFINDEX_OUTDEV); P(NFQA_PAYLOAD); P(NFQA_CAP_LEN);
  P(NFQNL_CFG_CMD_BIND); P(NFQNL_CFG_CMD_UNBIND); P(NFQNL_CFG_CMD_PF_BIND);
  P(NFQNL_COPY_NONE); P(NFQNL_COPY_META); P(NFQNL_COPY_PACKET);
  P(NFQA_CFG_CMD); P(NFQA_CFG_PARAMS); P(NFQA_CFG_QUEUE_MAXLEN); P(NFQA_CFG_MASK);
  P(NFQA_CFG_FLAGS); P(NFQA_CFG_F_FAIL_OPEN); P(NFQA_CFG_F_GSO); P(NF_DROP); P(NF_ACCEPT);
  P(sizeof(struct nlmsghdr)); P(sizeof(struct nlattr)); P(sizeof(struct nfgenmsg));
  P(sizeof(struct nfqnl_msg_packet_hdr)); P(sizeof(struct nfqnl_msg_verdict_hdr));
  P(sizeof(struct nfqnl_msg_config_cmd)); P(sizeof(struct nfqnl_msg_config_params));
  return 0;
}
"""


def test_constants_and_struct_sizes_match_the_kernel_headers(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    header = Path("/usr/include/linux/netfilter/nfnetlink_queue.h")
    if compiler is None or not header.exists():
        pytest.skip("needs a C compiler and the kernel uapi headers (apt-get install gcc linux-libc-dev)")
    (tmp_path / "probe.c").write_text(_C_PROBE)
    subprocess.run([compiler, "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")],
                   check=True, capture_output=True, timeout=60)
    out = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True,
                         text=True).stdout
    kernel = {name: int(value) for name, value in (line.rsplit(" ", 1) for line in out.splitlines())}
    sizes = {name: value for name, value in kernel.items() if name.startswith("sizeof")}
    for name, value in kernel.items():
        if not name.startswith("sizeof"):
            assert getattr(q, name) == value, name
    assert sizes["sizeof(struct nlmsghdr)"] == q.NLMSG_HDRLEN
    assert sizes["sizeof(struct nlattr)"] == q.NLA_HDRLEN
    assert sizes["sizeof(struct nfgenmsg)"] == q.NFGENMSG_LEN
    # The packed structs: our struct formats must have the kernel's sizes.
    assert sizes["sizeof(struct nfqnl_msg_packet_hdr)"] == struct.calcsize("!IHB")
    assert sizes["sizeof(struct nfqnl_msg_verdict_hdr)"] == struct.calcsize("!II")
    assert sizes["sizeof(struct nfqnl_msg_config_cmd)"] == struct.calcsize("!BxH")
    assert sizes["sizeof(struct nfqnl_msg_config_params)"] == struct.calcsize("!IB")


# --- encoding, checked by pyroute2 --------------------------------------------------

queue_nums = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@given(queue=queue_nums, command=st.sampled_from([q.NFQNL_CFG_CMD_BIND, q.NFQNL_CFG_CMD_UNBIND,
                                                  q.NFQNL_CFG_CMD_PF_BIND]),
       pf=st.sampled_from([socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6]), seq=u32)
def test_config_cmd_layout(queue: int, command: int, pf: int, seq: int) -> None:
    decoded = pyr_decode(PyrConfig, q.encode_config_cmd(queue, command, pf=pf, seq=seq))
    assert decoded["header"]["type"] == (3 << 8) | 2
    assert decoded["header"]["flags"] == 0x01 | 0x04  # NLM_F_REQUEST | NLM_F_ACK
    assert decoded["header"]["sequence_number"] == seq
    assert decoded["res_id"] == queue
    assert decoded["attrs"]["NFQA_CFG_CMD"]["command"] == command
    assert decoded["attrs"]["NFQA_CFG_CMD"]["pf"] == pf


@given(queue=queue_nums, copy_mode=st.sampled_from([0, 1, 2]), copy_range=st.integers(0, 65535),
       max_len=st.none() | u32, fail_open=st.booleans())
def test_config_params_layout(queue: int, copy_mode: int, copy_range: int, max_len: int | None,
                              fail_open: bool) -> None:
    data = q.encode_config_params(queue, copy_mode=copy_mode, copy_range=copy_range,
                                  max_len=max_len, fail_open=fail_open)
    decoded = pyr_decode(PyrConfig, data)
    assert decoded["header"]["length"] == len(data)
    attrs = decoded["attrs"]
    assert attrs["NFQA_CFG_PARAMS"]["copy_mode"] == copy_mode
    assert attrs["NFQA_CFG_PARAMS"]["copy_range"] == copy_range
    assert attrs.get("NFQA_CFG_QUEUE_MAXLEN") == max_len
    assert attrs["NFQA_CFG_MASK"] == 1  # NFQA_CFG_F_FAIL_OPEN
    assert attrs["NFQA_CFG_FLAGS"] == (1 if fail_open else 0)


@given(queue=queue_nums, packet_id=u32, verdict=st.sampled_from([0, 1]), batch=st.booleans())
def test_verdict_layout(queue: int, packet_id: int, verdict: int, batch: bool) -> None:
    encode = q.encode_batch_verdict if batch else q.encode_verdict
    decoded = pyr_decode(PyrPacket, encode(queue, packet_id, verdict))
    assert decoded["header"]["type"] == (3 << 8) | (3 if batch else 1)
    assert decoded["header"]["flags"] == 0x01
    assert decoded["res_id"] == queue
    assert decoded["attrs"]["NFQA_VERDICT_HDR"] == {"verdict": verdict, "id": packet_id}


def test_out_of_range_queue_number_is_refused() -> None:
    with pytest.raises(q.NfqueueError):
        q.encode_verdict(70000, 1, q.NF_ACCEPT)


# --- decoding, fed by pyroute2 ------------------------------------------------------

optional_u32 = st.none() | u32


@given(queue=queue_nums, family=st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       packet_id=u32, hw_protocol=st.integers(0, 0xFFFF), hook=st.integers(0, 4),
       payload=st.none() | st.binary(min_size=1, max_size=200), cap_len=optional_u32,
       indev=optional_u32, outdev=optional_u32, mark=optional_u32)
def test_packet_decoding(queue: int, family: int, packet_id: int, hw_protocol: int, hook: int,
                         payload: bytes | None, cap_len: int | None, indev: int | None,
                         outdev: int | None, mark: int | None) -> None:
    data = pyr_packet(queue=queue, family=family, packet_id=packet_id, hw_protocol=hw_protocol,
                      hook=hook, payload=payload, cap_len=cap_len, indev=indev, outdev=outdev,
                      mark=mark)
    [packet] = q.decode_messages(data)
    assert isinstance(packet, q.QueuedPacket)
    assert (packet.queue_num, packet.family, packet.packet_id) == (queue, family, packet_id)
    assert (packet.hw_protocol, packet.hook) == (hw_protocol, hook)
    assert packet.payload == (payload or b"")
    assert packet.length == (cap_len if cap_len is not None else len(payload or b""))
    assert (packet.indev, packet.outdev, packet.mark) == (indev, outdev, mark)


def test_several_messages_in_one_datagram() -> None:
    first = pyr_packet(queue=1, family=2, packet_id=10, hw_protocol=0x800, hook=2,
                       payload=b"E" + bytes(27), cap_len=None, indev=3, outdev=4, mark=None)
    second = pyr_packet(queue=1, family=10, packet_id=11, hw_protocol=0x86DD, hook=2,
                        payload=b"`" + bytes(63), cap_len=1500, indev=3, outdev=4, mark=None)
    # struct nlmsgerr per linux/netlink.h: an int error then the request's header.
    error = struct.pack("=IHHII", 16 + 4 + 16, 2, 0, 42, 0) + struct.pack("=i", -2) \
        + struct.pack("=IHHII", 32, (3 << 8) | 1, 1, 42, 0)
    records = q.decode_messages(first + second + error)
    assert [type(r).__name__ for r in records] == ["QueuedPacket", "QueuedPacket", "NetlinkAck"]
    assert [records[0].packet_id, records[1].packet_id] == [10, 11]
    assert [records[0].length, records[1].length] == [28, 1500]
    assert records[2] == q.NetlinkAck(seq=42, error=-2)


def test_unknown_message_types_are_skipped() -> None:
    done = struct.pack("=IHHII", 20, 3, 0, 0, 0) + bytes(4)  # NLMSG_DONE
    assert q.decode_messages(done) == []


def test_a_packet_message_without_its_header_attribute_is_malformed() -> None:
    body = struct.pack("!BBH", 2, 0, 5) + struct.pack("=HH", 8, 13) + struct.pack("!I", 100)
    data = struct.pack("=IHHII", 16 + len(body), (3 << 8) | 0, 0, 0, 0) + body
    with pytest.raises(q.NetlinkDecodeError):
        q.decode_messages(data)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_decode_error(data: bytes) -> None:
    try:
        records = q.decode_messages(data)
    except q.NetlinkDecodeError:
        return
    assert all(isinstance(r, (q.QueuedPacket, q.NetlinkAck)) for r in records)


@settings(max_examples=500)
@given(packet_id=u32, payload=st.binary(min_size=1, max_size=80), data=st.data())
def test_damaged_packet_messages_raise_only_the_decode_error(packet_id: int, payload: bytes,
                                                             data: st.DataObject) -> None:
    good = bytearray(pyr_packet(queue=7, family=2, packet_id=packet_id, hw_protocol=0x800,
                                hook=2, payload=payload, cap_len=1400, indev=1, outdev=2,
                                mark=None))
    cut = data.draw(st.integers(0, len(good)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)),
                               max_size=4))
    for index, value in flips:
        good[index] = value
    try:
        q.decode_messages(bytes(good[:cut]))
    except q.NetlinkDecodeError:
        pass
