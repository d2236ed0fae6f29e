"""The demo's traffic agent, one per namespace: UDP probes both ways and a TCP stream.

Run as ``python -m vmip.demo.traffic --role mn|cn ...`` inside a namespace.
Both roles send UDP probes to the peer at ``--rate`` per second, each
carrying a sequence number and the wall-clock send time, and record every
probe they receive with its arrival time.  ``--probe-class NAME=PORT``
(repeatable) runs one such stream per class, each on its own port pair
(the multi-CoA demo maps port 5002 to a duplicated flow and 5003 to the
best link); the classes' send times are staggered across the interval.  The CN side accepts one TCP
connection and counts the bytes it reads; the MN side connects and writes
at a paced rate.  Every ``STATUS_INTERVAL`` the agent rewrites a small
status file (atomic rename); on SIGTERM or after ``--duration`` it writes
the full record (``--out``) and exits.  Every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Probe payload: magic, sequence number, send time (wall clock, seconds).
PROBE = struct.Struct("!4sId")
MAGIC = b"vmpr"
STATUS_INTERVAL = 0.5
#: The MN's TCP writes, paced: bytes per write and writes per second.
TCP_CHUNK = 4096
TCP_WRITES_PER_S = 50
TCP_SAMPLE_INTERVAL = 0.05


class ProbeClass:
    """One probe stream: its port (the same at both ends), socket, counts and arrivals."""

    def __init__(self, name: str, local: str, port: int, peer_port: int) -> None:
        self.name, self.port, self.peer_port = name, port, peer_port
        self.sent = 0
        self.arrivals: list[tuple[int, float, float]] = []
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind((local, port))
        self.sock.settimeout(0.2)


def parse_probe_class(text: str) -> tuple[str, int]:
    """``NAME=PORT`` -> (name, port), for ``--probe-class``."""
    name, sep, port = text.partition("=")
    if not sep or not name or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--probe-class wants NAME=PORT (PORT 1..65535), "
                                         f"not {text!r}")
    return name, int(port)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.started = time.time()
        specs = args.probe_class or [("probes", args.udp_port)]
        if len({name for name, _ in specs}) != len(specs):
            raise SystemExit("--probe-class names must differ")
        self.classes = [
            ProbeClass(name, args.local, port,
                       port if args.probe_class else (args.peer_udp_port or args.udp_port))
            for name, port in specs]
        self.tcp_samples: list[tuple[float, int]] = []
        self.tcp_bytes = 0
        self.tcp_error: str | None = None
        self.tcp_error_at: float | None = None
        self.tcp_connected_at: float | None = None
        self._lock = threading.Lock()

    # -- UDP probes ----------------------------------------------------------------

    def send_probes(self, probes: ProbeClass, offset: float = 0.0) -> None:
        interval = 1.0 / self.args.rate
        next_at = time.monotonic() + offset
        seq = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                self.stop.wait(next_at - now)
                continue
            try:
                probes.sock.sendto(PROBE.pack(MAGIC, seq, time.time()),
                                   (self.args.peer, probes.peer_port))
                probes.sent = seq + 1
            except OSError:
                pass  # no route for a moment during a handover: the probe counts as lost
            seq += 1
            next_at += interval
            if next_at < now - 1.0:
                next_at = now   # we were descheduled: do not burst to catch up

    def receive_probes(self, probes: ProbeClass) -> None:
        while not self.stop.is_set():
            try:
                data, _ = probes.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                continue
            received = time.time()
            if len(data) < PROBE.size:
                continue
            magic, seq, sent = PROBE.unpack_from(data)
            if magic == MAGIC:
                with self._lock:
                    probes.arrivals.append((seq, sent, received))

    def workers(self) -> list[Callable[[], None]]:
        """One sender and one receiver per probe class, the TCP end of the role."""
        spacing = 1.0 / self.args.rate / len(self.classes)
        out: list[Callable[[], None]] = []
        for index, probes in enumerate(self.classes):
            out.append(functools.partial(self.receive_probes, probes))
            out.append(functools.partial(self.send_probes, probes, index * spacing))
        out.append(self.tcp_server if self.args.role == "cn" else self.tcp_client)
        return out

    # -- TCP -----------------------------------------------------------------------

    def _tcp_failed(self, exc: BaseException | str) -> None:
        if self.tcp_error is None and not self.stop.is_set():
            self.tcp_error, self.tcp_error_at = str(exc), time.time()

    def tcp_server(self) -> None:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.args.local, self.args.tcp_port))
        server.listen(1)
        server.settimeout(0.2)
        conn = None
        while conn is None and not self.stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
        server.close()
        if conn is None:
            return
        self.tcp_connected_at = time.time()
        conn.settimeout(0.2)
        last_sample = 0.0
        try:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    data = None
                if data == b"":
                    self._tcp_failed("connection closed by the MN")
                    break
                if data:
                    self.tcp_bytes += len(data)
                now = time.time()
                if now - last_sample >= TCP_SAMPLE_INTERVAL:
                    with self._lock:
                        self.tcp_samples.append((now, self.tcp_bytes))
                    last_sample = now
        except OSError as exc:
            self._tcp_failed(exc)
        finally:
            conn.close()

    def tcp_client(self) -> None:
        sock = None
        deadline = time.monotonic() + 10.0
        while sock is None and not self.stop.is_set() and time.monotonic() < deadline:
            try:
                sock = socket.create_connection((self.args.peer, self.args.tcp_port), timeout=2.0,
                                                source_address=(self.args.local, 0))
            except OSError:
                self.stop.wait(0.2)
        if sock is None:
            self._tcp_failed("could not connect")
            return
        self.tcp_connected_at = time.time()
        # A handover must not be mistaken for a dead peer: long user timeout.
        sock.settimeout(30.0)
        chunk = b"v" * TCP_CHUNK
        interval = 1.0 / TCP_WRITES_PER_S
        try:
            while not self.stop.is_set():
                sock.sendall(chunk)
                self.tcp_bytes += len(chunk)
                self.stop.wait(interval)
        except OSError as exc:
            self._tcp_failed(exc)
        finally:
            sock.close()

    # -- records -------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        first = self.classes[0]
        with self._lock:
            return {
                "role": self.args.role, "local": self.args.local, "peer": self.args.peer,
                "rate": self.args.rate, "started": self.started, "probes_sent": first.sent,
                # The first class, as before classes existed; every class below.
                "arrivals": list(first.arrivals),
                "probe_classes": {c.name: {"port": c.port, "sent": c.sent,
                                           "arrivals": list(c.arrivals)} for c in self.classes},
                "tcp": {"bytes": self.tcp_bytes, "samples": list(self.tcp_samples),
                        "error": self.tcp_error, "error_at": self.tcp_error_at,
                        "connected_at": self.tcp_connected_at},
            }

    def status(self) -> dict[str, Any]:
        with self._lock:
            lasts = [c.arrivals[-1][2] for c in self.classes if c.arrivals]
            return {"t": time.time(), "role": self.args.role,
                    "probes_sent": sum(c.sent for c in self.classes),
                    "probes_received": sum(len(c.arrivals) for c in self.classes),
                    "last_arrival": max(lasts) if lasts else None,
                    "tcp_bytes": self.tcp_bytes, "tcp_connected": self.tcp_connected_at is not None,
                    "tcp_error": self.tcp_error}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vmip.demo.traffic")
    parser.add_argument("--role", choices=("mn", "cn"), required=True)
    parser.add_argument("--local", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--udp-port", type=int, default=5002)
    parser.add_argument("--peer-udp-port", type=int, default=None,
                        help="the peer's probe port (default: --udp-port)")
    parser.add_argument("--probe-class", type=parse_probe_class, action="append",
                        metavar="NAME=PORT",
                        help="one probe stream per class, on PORT at both ends (repeatable; "
                             "default: one stream on --udp-port)")
    parser.add_argument("--tcp-port", type=int, default=5001)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--status", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    agent = Agent(args)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    threads = [threading.Thread(target=w, daemon=True) for w in agent.workers()]
    for thread in threads:
        thread.start()
    end = time.monotonic() + args.duration
    while not agent.stop.is_set() and time.monotonic() < end:
        _write_json(args.status, agent.status())
        agent.stop.wait(STATUS_INTERVAL)
    agent.stop.set()
    for thread in threads:
        thread.join(timeout=3.0)
    _write_json(args.out, agent.record())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
