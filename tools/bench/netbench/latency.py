"""Where a ping's round trip through two vmip nodes spends its time.

``tools/bench/latency`` starts the benchmark's vmip pair with
``VMIP_TRACE_LATENCY`` set (vmip/node/latency_trace.py), sends ICMPv6 echoes
from side a with :data:`PROBE` (a raw socket: send time taken just before
``sendto``, reply time from the kernel's receive timestamp, as ping does),
and lines the probe's times up with both nodes' stage timestamps.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

#: The echo probe, run with ``python3 -c`` in side a's namespace:
#: ``argv = target count interval_s``; one JSON line per answered echo.
PROBE = r"""
import json, os, socket, struct, sys, time
target, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
SO_TIMESTAMPNS = 35
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
sock.settimeout(1.0)
ident = os.getpid() & 0xFFFF
offset = time.time_ns() - time.monotonic_ns()
payload = bytes(range(56))
for seq in range(1, count + 1):
    packet = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    sent = time.monotonic_ns()
    sock.sendto(packet, (target, 0))
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            data, anc, _, _ = sock.recvmsg(2048, 64)
        except TimeoutError:
            break
        if len(data) >= 8 and data[0] == 129 and struct.unpack_from("!HH", data, 4) == (ident, seq):
            stamp = None
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    s, ns = struct.unpack("@ll", value[:16])
                    stamp = s * 1_000_000_000 + ns - offset
            print(json.dumps({"id": ident, "seq": seq, "sent_ns": sent,
                              "reply_ns": stamp if stamp is not None else time.monotonic_ns()}),
                  flush=True)
            break
    time.sleep(max(0.0, interval - (time.monotonic_ns() - sent) / 1e9))
"""

#: (label, node, stage, key kind) in path order; each segment is the time
#: from the previous point to this one.
PATH: tuple[tuple[str, str, str, str], ...] = (
    ("a: TUN reader woken", "a", "tun_wake", "req"),
    ("a: TUN read", "a", "tun_read", "req"),
    ("a: SPD + ESP encrypt", "a", "encrypt", "req"),
    ("a: IRO, route, sendto", "a", "link_send", "req"),
    ("b: kernel got the datagram", "b", "link_rx_kernel", "req"),
    ("b: link reader woken", "b", "link_wake", "req"),
    ("b: recv + remap + ESP decrypt", "b", "decrypt", "req"),
    ("b: checks, queued for the TUN", "b", "tun_queue", "req"),
    ("b: TUN write", "b", "tun_write", "req"),
    ("b: kernel answers, TUN reader woken", "b", "tun_wake", "rep"),
    ("b: TUN read", "b", "tun_read", "rep"),
    ("b: SPD + ESP encrypt", "b", "encrypt", "rep"),
    ("b: IRO, route, sendto", "b", "link_send", "rep"),
    ("a: kernel got the datagram", "a", "link_rx_kernel", "rep"),
    ("a: link reader woken", "a", "link_wake", "rep"),
    ("a: recv + remap + ESP decrypt", "a", "decrypt", "rep"),
    ("a: checks, queued for the TUN", "a", "tun_queue", "rep"),
    ("a: TUN write", "a", "tun_write", "rep"),
)


def read_trace(path: Path) -> dict[tuple[str, str], int]:
    """``(stage, key) -> first time (ns)`` from one node's trace file."""
    times: dict[tuple[str, str], int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            times.setdefault((parts[1], parts[2]), int(parts[0]))
    return times


def breakdown(probes: Iterable[dict], traces: dict[str, dict[tuple[str, str], int]],
              ) -> list[dict[str, float | None]]:
    """Per echo: each segment of :data:`PATH` in µs, ``total``, and ``tail``
    (a's TUN write to the probe's reply timestamp)."""
    rows = []
    for probe in probes:
        keys = {"req": f"128:{probe['id']}:{probe['seq']}",
                "rep": f"129:{probe['id']}:{probe['seq']}"}
        previous = probe["sent_ns"]
        row: dict[str, float | None] = {}
        for label, node, stage, kind in PATH:
            at = traces.get(node, {}).get((stage, keys[kind]))
            row[label] = None if at is None or previous is None else (at - previous) / 1000
            previous = at
        row["a: kernel hands the reply to ping"] = \
            None if previous is None else (probe["reply_ns"] - previous) / 1000
        row["total"] = (probe["reply_ns"] - probe["sent_ns"]) / 1000
        rows.append(row)
    return rows


def summarize_breakdown(rows: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """min, median, max in µs per segment over the echoes that have it."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for label, value in row.items():
            if value is not None:
                values[label].append(value)
    return {label: {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
            for label, v in values.items()}


def render(summary: dict[str, dict[str, float]]) -> str:
    lines = [f"{'segment':42} {'n':>4} {'min µs':>8} {'median':>8} {'max':>8}"]
    for label, s in summary.items():
        lines.append(f"{label:42} {s['n']:>4} {s['min']:8.1f} {s['median']:8.1f} {s['max']:8.1f}")
    return "\n".join(lines)


def parse_probe_output(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
