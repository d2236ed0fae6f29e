"""Link emulation end to end: a — r — b namespaces, shaping in r.

Oracles are independent of our code: ping's own RTT and loss figures, the
kernel's /proc/net/netfilter/nfnetlink_queue and iptables -S, and a small
UDP/TCP receiver that timestamps what it gets.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmip.lab import emulation, nfqueue
from vmip.lab.emulation import LinkProfile

pytestmark = pytest.mark.root

PREFIX = f"vt{os.getpid()}"
# Documentation prefixes only (RFC 5737, RFC 3849).
A4, R4A, B4, R4B = "192.0.2.1", "192.0.2.254", "198.51.100.1", "198.51.100.254"
A6, R6A, B6, R6B = "2001:db8:a::1", "2001:db8:a::fe", "2001:db8:b::1", "2001:db8:b::fe"


def run(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def in_ns(ns: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *argv, **kwargs)


@dataclass
class Lab:
    a: str
    r: str
    b: str
    state_dir: Path


def _build(a: str, r: str, b: str) -> None:
    for ns in (a, r, b):
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        # No duplicate address detection: addresses are usable at once.
        in_ns(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
              "net.ipv6.conf.default.accept_dad=0")
    in_ns(r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    run("ip", "link", "add", "vta0", "netns", a, "type", "veth", "peer", "ra", "netns", r)
    run("ip", "link", "add", "vtb0", "netns", b, "type", "veth", "peer", "rb", "netns", r)
    for ns, dev, v4, v6 in ((a, "vta0", A4, A6), (r, "ra", R4A, R6A),
                            (b, "vtb0", B4, B6), (r, "rb", R4B, R6B)):
        run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
    for ns, gw4, gw6 in ((a, R4A, R6A), (b, R4B, R6B)):
        run("ip", "-n", ns, "route", "add", "default", "via", gw4)
        run("ip", "-n", ns, "-6", "route", "add", "default", "via", gw6)
    # Resolve neighbours before measuring: the first IPv6 neighbour
    # solicitation on a fresh veth goes unanswered here, costing 1 s.
    for src, dst in ((a, B4), (a, B6), (b, A4), (b, A6)):
        in_ns(src, "ping", "-n", "-q", "-c", "1", "-W", "3", dst)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    names = (f"{PREFIX}-a", f"{PREFIX}-r", f"{PREFIX}-b")
    state_dir = tmp_path_factory.mktemp("emulation-state")
    try:
        _build(*names)
        yield Lab(*names, state_dir)
    finally:
        try:
            emulation.clear_all(names[1], state_dir)
        finally:
            # Whatever happened above, no shaper may outlive the test.
            for pid in emulation.shaper_pids(names[1], state_dir).values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for ns in names:
                run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def r_clean(lab: Lab) -> Iterator[Lab]:
    """Each test leaves r without shaping, even when it fails."""
    try:
        yield lab
    finally:
        emulation.clear_all(lab.r, lab.state_dir)


def ping_rtts(ns: str, dst: str, count: int, interval: float = 0.01) -> list[float]:
    done = in_ns(ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2",
                 dst, check=False, timeout=60)
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", done.stdout)]


def ping_loss(ns: str, dst: str, count: int, interval: float) -> tuple[int, int]:
    # No -w: with a deadline ping sends until `count` replies, not `count` requests.
    done = in_ns(ns, "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
                 dst, check=False, timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", done.stdout)
    assert m, done.stdout + done.stderr
    return int(m.group(1)), int(m.group(2))


def rules(ns: str) -> list[str]:
    lines = []
    for tool in ("iptables", "ip6tables"):
        out = in_ns(ns, tool, "-t", "mangle", "-S", "FORWARD").stdout
        lines += [f"{tool} {line}" for line in out.splitlines() if "NFQUEUE" in line]
    return lines


def kernel_queues(ns: str) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue as the kernel sees it in ``ns``."""
    out = in_ns(ns, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    queues = {}
    for line in out.splitlines():
        f = [int(x) for x in line.split()]
        queues[f[0]] = {"portid": f[1], "held": f[2], "queue_dropped": f[5],
                        "user_dropped": f[6]}
    return queues


@pytest.mark.parametrize("dst", [B4, B6])
def test_rtt_of_a_40ms_link(r_clean: Lab, dst: str) -> None:
    lab = r_clean
    profile = LinkProfile(delay_ms=20.0)
    emulation.apply_profile(lab.r, "rb", "both", profile, lab.state_dir)
    assert emulation.current_profiles(lab.r, lab.state_dir) == {
        ("rb", "in"): profile, ("rb", "out"): profile}
    rtts = ping_rtts(lab.a, dst, 50)
    assert len(rtts) >= 48
    assert 35.0 <= statistics.median(rtts) <= 45.0, rtts
    # Both families go through the rules of their own table.
    assert len(rules(lab.r)) == 4


def test_ten_percent_loss_one_direction(r_clean: Lab) -> None:
    lab = r_clean
    emulation.apply_profile(lab.r, "rb", "out", LinkProfile(loss=0.10), lab.state_dir, seed=1)
    sent, received = ping_loss(lab.a, B4, 1000, 0.002)
    assert sent == 1000
    loss = 1 - received / sent
    assert 0.07 <= loss <= 0.13, loss
    emulation.apply_profile(lab.r, "rb", "out", LinkProfile(), lab.state_dir)
    counters = emulation.shaper_status(lab.r, "rb", "out", lab.state_dir)
    # The shaper saw exactly the echo requests and dropped what ping missed.
    assert counters is not None
    assert counters["received"] == 1000
    assert counters["dropped_loss"] == sent - received
    assert counters["released"] == received


_WALL_SENDER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
gap = float(sys.argv[3])
start = time.monotonic()
sent = []
for seq in range(int(sys.argv[2])):
    while time.monotonic() < start + seq * gap:
        pass
    # The wall clock, as the demo's probes carry it (namespaces share CLOCK_REALTIME).
    sent.append(time.time())
    s.sendto(seq.to_bytes(4, "big") + bytes(108), (sys.argv[1], 9000))
print(json.dumps(sent), flush=True)
"""


def test_the_shaper_says_when_it_dropped_each_lost_datagram(r_clean: Lab) -> None:
    """The multi-CoA report's oracle for lte0's random loss (vmip.demo.metrics):
    every lost datagram is matched, within the lab's window, to a drop time the
    shaper listed, one each."""
    from vmip.demo.metrics import LAB_DROP_WINDOW, Arrival, split_duplicate_losses

    lab = r_clean
    count, gap = 400, 0.005
    emulation.apply_profile(lab.r, "rb", "out", LinkProfile(delay_ms=5.0, loss=0.1),
                            lab.state_dir, seed=5)
    receiver = subprocess.Popen(["ip", "netns", "exec", lab.b, sys.executable, "-c",
                                 _UDP_RECEIVER, B6, str(count)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sent = json.loads(in_ns(lab.a, sys.executable, "-c", _WALL_SENDER, B6, str(count),
                                str(gap)).stdout)
        out, _ = receiver.communicate(timeout=20)
    finally:
        receiver.kill()
        receiver.wait()
    emulation.apply_profile(lab.r, "rb", "out", LinkProfile(), lab.state_dir)
    status = emulation.shaper_status(lab.r, "rb", "out", lab.state_dir)
    assert status is not None
    got = {seq for seq, _ in json.loads(out)}
    lost = sorted(set(range(count)) - got)
    assert 20 <= len(lost) == status["dropped_loss"] == len(status["loss_drop_times"])
    assert all(sent[0] <= t <= sent[-1] + 1.0 for t in status["loss_drop_times"])
    arrivals = [Arrival(seq, sent[seq], 0.0) for seq in sorted(got)]
    handover, background = split_duplicate_losses(
        arrivals, lost, lambda t: True, None, status["loss_drop_times"], LAB_DROP_WINDOW)
    assert (handover, background) == ([], lost)


_UDP_RECEIVER = r"""
import json, socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], 9000))
s.settimeout(3.0)
print("ready", flush=True)
got = []
try:
    while len(got) < int(sys.argv[2]):
        data = s.recv(2048)
        now = time.monotonic_ns()
        seq, sent = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:12], "big")
        got.append((seq, (now - sent) / 1e6))
except TimeoutError:
    pass
print(json.dumps(got), flush=True)
"""

_UDP_SENDER = r"""
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
gap = float(sys.argv[3])
start = time.monotonic()
for seq in range(int(sys.argv[2])):
    # Pace the sender on the clock (CLOCK_MONOTONIC is shared by namespaces).
    while time.monotonic() < start + seq * gap:
        pass
    s.sendto(seq.to_bytes(4, "big") + time.monotonic_ns().to_bytes(8, "big") + bytes(100),
             (sys.argv[1], 9000))
"""


def test_jitter_keeps_packet_order(r_clean: Lab) -> None:
    lab = r_clean
    count, gap = 200, 0.004
    emulation.apply_profile(lab.r, "rb", "out", LinkProfile(delay_ms=20.0, jitter_ms=10.0),
                            lab.state_dir, seed=7)
    receiver = subprocess.Popen(["ip", "netns", "exec", lab.b, sys.executable, "-c",
                                 _UDP_RECEIVER, B6, str(count)],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        in_ns(lab.a, sys.executable, "-c", _UDP_SENDER, B6, str(count), str(gap))
        out, _ = receiver.communicate(timeout=20)
    finally:
        receiver.kill()
        receiver.wait()
    got = json.loads(out)
    sequence = [seq for seq, _ in got]
    delays = [delay for _, delay in got]
    assert len(got) == count
    assert sequence == sorted(sequence), "the shaper reordered packets"
    # Jitter really acted: one-way delays spread over much of the ±10 ms window
    # (a shaper without jitter gives a spread of about a millisecond).
    assert min(delays) >= 20.0 - 10.0 - 1.0, min(delays)
    assert max(delays) - min(delays) >= 8.0, (min(delays), max(delays))
    # FIFO holds a packet behind a later-drawn predecessor, so the typical
    # delay sits above the 20 ms mean, near the top of the jitter window
    # (27-30 ms measured); the upper bound leaves room for a loaded machine.
    assert 20.0 <= statistics.median(delays) <= 20.0 + 10.0 + 15.0, statistics.median(delays)


_TCP_RECEIVER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9001))
s.listen(1)
s.settimeout(10.0)
print("ready", flush=True)
conn, _ = s.accept()
conn.settimeout(20.0)
total, first, last = 0, None, None
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    now = time.monotonic()
    if first is None:
        first = now
    total += len(data)
    last = now
print(json.dumps({"bytes": total, "seconds": last - first}), flush=True)
"""

_TCP_SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 9001), timeout=20)
s.sendall(bytes(int(sys.argv[2])))
s.shutdown(socket.SHUT_WR)
s.recv(1)
"""


def test_rate_limit_of_a_bulk_transfer(r_clean: Lab) -> None:
    lab = r_clean
    rate_mbit, size = 10.0, 2_000_000
    emulation.apply_profile(lab.r, "ra", "in", LinkProfile(rate_mbit=rate_mbit), lab.state_dir)
    receiver = subprocess.Popen(["ip", "netns", "exec", lab.b, sys.executable, "-c",
                                 _TCP_RECEIVER, B4], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        in_ns(lab.a, sys.executable, "-c", _TCP_SENDER, B4, str(size), timeout=40)
        out, _ = receiver.communicate(timeout=40)
    finally:
        receiver.kill()
        receiver.wait()
    result = json.loads(out)
    assert result["bytes"] == size
    measured_mbit = result["bytes"] * 8 / result["seconds"] / 1e6
    assert rate_mbit * 0.8 <= measured_mbit <= rate_mbit * 1.2, measured_mbit


def test_remove_replace_and_idempotence(r_clean: Lab) -> None:
    lab = r_clean
    slow = LinkProfile(delay_ms=30.0)
    emulation.apply_profile(lab.r, "ra", "out", slow, lab.state_dir)
    first_pid = emulation.shaper_pids(lab.r, lab.state_dir)[("ra", "out")]
    emulation.apply_profile(lab.r, "ra", "out", slow, lab.state_dir)
    assert emulation.shaper_pids(lab.r, lab.state_dir)[("ra", "out")] == first_pid
    assert 25.0 <= statistics.median(ping_rtts(lab.a, B4, 20)) <= 35.0

    fast = LinkProfile(delay_ms=10.0)
    emulation.apply_profile(lab.r, "ra", "out", fast, lab.state_dir)
    second_pid = emulation.shaper_pids(lab.r, lab.state_dir)[("ra", "out")]
    assert second_pid != first_pid
    assert not Path(f"/proc/{first_pid}").exists()
    assert len(rules(lab.r)) == 2  # the old rules went with the old shaper
    assert 7.0 <= statistics.median(ping_rtts(lab.a, B4, 20)) <= 14.0

    emulation.apply_profile(lab.r, "ra", "out", LinkProfile(), lab.state_dir)
    assert emulation.current_profiles(lab.r, lab.state_dir) == {}
    assert rules(lab.r) == []
    assert not Path(f"/proc/{second_pid}").exists()
    assert statistics.median(ping_rtts(lab.a, B4, 20)) < 3.0


def test_stopping_a_shaper_releases_what_it_holds(r_clean: Lab) -> None:
    lab = r_clean
    emulation.apply_profile(lab.r, "rb", "out", LinkProfile(delay_ms=2000.0), lab.state_dir)
    queue = json.loads((lab.state_dir / "link-emulation" / lab.r / "rb.out.json")
                       .read_text())["queue"]
    ping = subprocess.Popen(["ip", "netns", "exec", lab.a, "ping", "-n", "-c", "1", "-W", "5",
                             B4], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while kernel_queues(lab.r).get(queue, {}).get("held", 0) < 1:
            assert time.monotonic() < deadline, "the echo request never reached the queue"
        started = time.monotonic()
        emulation.apply_profile(lab.r, "rb", "out", LinkProfile(), lab.state_dir)
        out, _ = ping.communicate(timeout=10)
    finally:
        ping.kill()
        ping.wait()
    # The reply came when the shaper stopped, long before the 2 s delay.
    assert ping.returncode == 0, out
    assert time.monotonic() - started < 1.5
    assert queue not in kernel_queues(lab.r)


def test_a_killed_shaper_fails_open(r_clean: Lab) -> None:
    lab = r_clean
    emulation.apply_profile(lab.r, "rb", "both", LinkProfile(delay_ms=20.0), lab.state_dir)
    assert statistics.median(ping_rtts(lab.a, B6, 10)) >= 35.0
    for pid in emulation.shaper_pids(lab.r, lab.state_dir).values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while kernel_queues(lab.r):
        assert time.monotonic() < deadline, "the kernel kept the dead queues bound"
    # The rules are still there, but with nobody listening the kernel accepts.
    assert len(rules(lab.r)) == 4
    assert emulation.current_profiles(lab.r, lab.state_dir) == {}
    rtts = ping_rtts(lab.a, B6, 20)
    assert len(rtts) == 20
    assert statistics.median(rtts) < 3.0


def test_netem_probe_agrees_with_tc(r_clean: Lab) -> None:
    lab = r_clean
    # Oracle: iproute2's tc on a scratch veth in namespace a.
    run("ip", "-n", lab.a, "link", "add", "vtnetem0", "type", "veth", "peer", "vtnetem1")
    try:
        by_tc = in_ns(lab.a, "tc", "qdisc", "add", "dev", "vtnetem0", "root", "netem",
                      "delay", "1ms", check=False).returncode == 0
    finally:
        run("ip", "-n", lab.a, "link", "del", "vtnetem0", check=False)
    assert emulation.netem_available(lab.r) == by_tc
    if not by_tc:
        with pytest.raises(emulation.EmulationUnavailable, match="netem"):
            emulation.apply_profile(lab.r, "rb", "out", LinkProfile(delay_ms=5.0),
                                    lab.state_dir, backend="netem")
        # "auto" falls back to NFQUEUE.
        emulation.apply_profile(lab.r, "rb", "out", LinkProfile(delay_ms=5.0), lab.state_dir)
        assert len(rules(lab.r)) == 2


def test_clear_all_also_removes_rules_it_lost_track_of(r_clean: Lab) -> None:
    lab = r_clean
    for tool in ("iptables", "ip6tables"):
        in_ns(lab.r, tool, "-t", "mangle", "-A", "FORWARD", "-o", "rb", "-m", "comment",
              "--comment", "vmip-emu rb out", "-j", "NFQUEUE", "--queue-num", "6999",
              "--queue-bypass")
    # Somebody else's rule stays.
    in_ns(lab.r, "iptables", "-t", "mangle", "-A", "FORWARD", "-o", "rb", "-j", "NFQUEUE",
          "--queue-num", "7000", "--queue-bypass")
    try:
        emulation.clear_all(lab.r, lab.state_dir)
        assert rules(lab.r) == [
            "iptables -A FORWARD -o rb -j NFQUEUE --queue-num 7000 --queue-bypass"]
    finally:
        in_ns(lab.r, "iptables", "-t", "mangle", "-F", "FORWARD")


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """This thread in ``ns`` for the body: sockets made there stay there."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        libc.setns(own, 0x40000000)
        os.close(own)
        os.close(target)


def test_a_queue_number_taken_by_another_program_is_skipped(r_clean: Lab) -> None:
    lab = r_clean
    with entered(lab.r):
        squatter = nfqueue.NfqueueSocket(emulation.QUEUE_BASE)
    try:
        emulation.apply_profile(lab.r, "rb", "out", LinkProfile(delay_ms=10.0), lab.state_dir)
        record = json.loads((lab.state_dir / "link-emulation" / lab.r / "rb.out.json")
                            .read_text())
        assert record["queue"] != emulation.QUEUE_BASE
        assert record["queue"] in kernel_queues(lab.r)
        assert 8.0 <= statistics.median(ping_rtts(lab.a, B4, 10)) <= 14.0
    finally:
        squatter.close()
