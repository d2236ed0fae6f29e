"""Static keys across restarts, through running nodes (docs/ipsec.md, "Static keys across restarts").

Two nodes on static AES-128-GCM transport SAs (tests/node/pairlab.py).  The
AEAD IV is the ESP sequence number (RFC 4106 §3.1), so a node that began
again at 1 after a restart would repeat (key, nonce) pairs, and a receiver
that forgot its window would accept old packets again (RFC 4303 §3.4.3).
Frames are read from an AF_PACKET socket on b's end of the a-b veth.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import time

import pytest
from pairlab import OVERLAY, SPI, UNDERLAY4, PairLab, netns_exec

from vmip.ipsec.seqstate import FILE_NAME

pytestmark = pytest.mark.root

ETH_P_ALL = 0x0003
UDP_PORT = 6275


@pytest.fixture
def lab(tmp_path):
    lab = PairLab(tmp_path, netns_tag="rn")
    try:
        lab.build()
        lab.start("a")
        lab.start("b")
        yield lab
    finally:
        lab.close()


class Wire:
    """Every frame on b's veth (both directions), read when asked."""

    def __init__(self, lab: PairLab) -> None:
        from vmip.lab.netns import entered

        with entered(lab.netns["b"]):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind(("veth-b", 0))
        self.sock.setblocking(False)

    def esp_from(self, side: str) -> list[tuple[int, int, bytes]]:
        """``(spi, sequence number, udp payload)`` of the ESP datagrams *side* sent so far."""
        found = []
        for _ in range(100_000):   # bounded: the socket buffer holds far fewer frames
            try:
                frame = self.sock.recv(65535)
            except BlockingIOError:
                break
            datagram = _udp_payload(frame, UNDERLAY4[side])
            if datagram is not None and len(datagram) >= 48 and datagram[6] == 50:
                spi, seq = struct.unpack_from(">II", datagram, 40)
                found.append((spi, seq, datagram))
        return found

    def close(self) -> None:
        self.sock.close()


def _udp_payload(frame: bytes, source: str) -> bytes | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    header = (ip[0] & 0x0F) * 4
    if ip[9] != 17 or socket.inet_ntoa(ip[12:16]) != source:
        return None
    if struct.unpack_from(">H", ip, header + 2)[0] != UDP_PORT:
        return None
    return ip[header + 8:]


def ping(lab: PairLab, side: str, count: int = 1, wait: float = 1.0):
    peer = "b" if side == "a" else "a"
    return netns_exec(lab.netns[side], "ping", "-c", str(count), "-i", "0.05", "-W", str(wait),
                      OVERLAY[peer])


def counters(lab: PairLab, side: str) -> dict:
    return json.loads(lab.vmip(side, "counters", "--json").stdout)


def crash(lab: PairLab, side: str) -> None:
    """SIGKILL: no clean-up, no last write."""
    lab.stop(side, signal.SIGKILL)
    # The TUN and the control socket of a killed node stay behind; the next
    # start reuses the one and replaces the other.


def resumes_within(lab: PairLab, side: str, seconds: float) -> float:
    """Seconds from the restarted node being ready to a ping answered through it."""
    start = time.monotonic()
    result = ping(lab, side, count=1, wait=seconds)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    return elapsed


def test_a_crashed_sender_never_repeats_spi_and_sequence_number(lab):
    """(a) SIGKILL a between two captures: no (SPI, seq) pair is on the wire twice."""
    wire = Wire(lab)
    try:
        assert ping(lab, "a", count=5).returncode == 0
        before = [(spi, seq) for spi, seq, _ in wire.esp_from("a") if spi == SPI["a"]]
        assert len(before) >= 5
        crash(lab, "a")
        lab.start("a")
        result = ping(lab, "a", count=5)
        after = [(spi, seq) for spi, seq, _ in wire.esp_from("a") if spi == SPI["a"]]
    finally:
        wire.close()
    assert len(after) >= 5
    assert not set(before) & set(after), "an AEAD nonce was used twice under one key"
    assert result.returncode == 0, result.stdout   # and b took them (not replays)
    assert len(set(before + after)) == len(before + after)
    assert min(seq for _, seq in after) > max(seq for _, seq in before)


def test_traffic_resumes_within_a_second_after_either_side_restarts(lab):
    """(b) A restarted sender skips ahead; a restarted receiver keeps its window's top."""
    assert ping(lab, "a", count=3).returncode == 0
    crash(lab, "a")
    lab.start("a")
    assert resumes_within(lab, "a", 1.0) <= 1.0
    crash(lab, "b")
    lab.start("b")
    assert resumes_within(lab, "a", 1.0) <= 1.0
    # And the other way round, from the side that restarted last.
    assert resumes_within(lab, "b", 1.0) <= 1.0
    for side in ("a", "b"):
        esp = counters(lab, side)["esp"]
        assert not esp.get("replay") and not esp.get("replay_old"), esp


def replay_on_the_link(lab: PairLab, datagrams: list[bytes]) -> None:
    """Send *datagrams* to b from another port of a's underlay address (a spoofed source).

    b's link is bound to its veth (``interface``), so only the a-b link can
    reach it; the attacker namespace of pairlab hangs off another veth.
    """
    from vmip.lab.netns import entered

    with entered(lab.netns["a"]):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender:
        sender.bind((UNDERLAY4["a"], 7777))
        for data in datagrams:
            sender.sendto(data, (UNDERLAY4["b"], UDP_PORT))


def test_a_datagram_replayed_after_the_receiver_restarts_is_dropped(lab):
    """(c) Captured before b restarts, replayed after: dropped as a replay and counted."""
    wire = Wire(lab)
    try:
        assert ping(lab, "a", count=1).returncode == 0
        captured = [data for spi, _seq, data in wire.esp_from("a") if spi == SPI["a"]]
    finally:
        wire.close()
    assert captured
    crash(lab, "b")   # b wrote its inbound mark when it accepted the packet (idle SA)
    lab.start("b")
    before = counters(lab, "b")
    replay_on_the_link(lab, captured)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        esp = counters(lab, "b")["esp"]
        if esp.get("replay", 0) + esp.get("replay_old", 0) >= len(captured):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the replay was not dropped as one: {counters(lab, 'b')}")
    sas = {sa["name"]: sa for sa in json.loads(lab.vmip("b", "sa", "list", "--json").stdout)}
    assert sas["in"]["packets"] == 0   # nothing was accepted
    assert before["esp"].get("replay", 0) == 0
    assert resumes_within(lab, "a", 1.0) <= 1.0   # and a's new packets still are


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_an_unusable_state_file_refuses_to_send_and_says_so(lab, damage):
    """(d) A corrupt or deleted state file: a refuses its static SAs, logs the fix, counts drops."""
    assert ping(lab, "a", count=1).returncode == 0
    lab.stop("a")
    state = lab.workdir / "state-a" / FILE_NAME
    if damage == "garbage":
        state.write_bytes(b"\x00not a state file\n" * 7)
    else:
        state.unlink()
    lab.start("a")
    log = lab.logs["a"].read_text()
    assert "static SAs refuse to send: sequence-number state unusable" in log, log
    assert "new keys" in log and str(state) in log
    result = ping(lab, "a", count=2, wait=0.5)
    assert result.returncode != 0
    deadline = time.monotonic() + 5
    while counters(lab, "a")["esp"].get("seq_state", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counters(lab, "a")["esp"].get("seq_state", 0) >= 2, counters(lab, "a")
    sas = {sa["name"]: sa for sa in json.loads(lab.vmip("a", "sa", "list", "--json").stdout)}
    assert sas["out"]["packets"] == 0
    if damage == "deleted":
        assert not state.exists()   # not silently made again
