"""Parsers for what iperf3 and ping print.  Malformed input raises ParseError, nothing else."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from netbench.errors import ParseError


@dataclass(frozen=True)
class IperfResult:
    """One iperf3 TCP test, as the client's ``-J`` report gives it."""

    #: Goodput the receiver saw (what a user gets); the figure the harness reports.
    receiver_mbps: float
    sender_mbps: float
    seconds: float
    retransmits: int | None
    #: With ``--bidir``: goodput the client received on the reverse direction
    #: (b → a); None for a one-way test.
    reverse_receiver_mbps: float | None = None
    #: Parallel streams (``-P``), as iperf3 reports them.
    streams: int = 1

    @property
    def total_mbps(self) -> float:
        """Receiver goodput of both directions together (one-way: the forward one)."""
        return self.receiver_mbps + (self.reverse_receiver_mbps or 0.0)


@dataclass(frozen=True)
class PingResult:
    rtts_ms: tuple[float, ...]
    transmitted: int | None
    received: int | None


def _field(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise ParseError(f"iperf3 report has no {'.'.join(path)}")
        node = node[key]
    return node


def _finite_number(value: Any, what: str) -> float:
    # bool is an int subclass in Python; JSON true is not a rate.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParseError(f"iperf3 report: {what} is not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ParseError(f"iperf3 report: {what} is {number!r}, not a finite rate >= 0")
    return number


def parse_iperf3_json(text: str) -> IperfResult:
    """The TCP throughput of an ``iperf3 -c ... -J`` run, in Mbit/s (10^6 bit/s)."""
    try:
        document = json.loads(text)
    # ValueError covers JSONDecodeError and over-long integers; deeply nested
    # input makes the decoder recurse past the interpreter's limit.
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"iperf3 output is not JSON: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise ParseError("iperf3 output is not a JSON object")
    error = document.get("error")
    if error is not None:
        # iperf3 -J reports its own failures (refused, timed out) in "error".
        raise ParseError(f"iperf3 failed: {str(error)[:200]}")
    received_bps = _finite_number(_field(document, "end", "sum_received", "bits_per_second"),
                                  "end.sum_received.bits_per_second")
    sent_bps = _finite_number(_field(document, "end", "sum_sent", "bits_per_second"),
                              "end.sum_sent.bits_per_second")
    seconds = _finite_number(_field(document, "end", "sum_received", "seconds"),
                             "end.sum_received.seconds")
    retransmits_raw = document["end"]["sum_sent"].get("retransmits")
    retransmits = (retransmits_raw if isinstance(retransmits_raw, int)
                   and not isinstance(retransmits_raw, bool) else None)
    reverse_mbps = None
    if "sum_received_bidir_reverse" in document["end"]:
        reverse_mbps = _finite_number(
            _field(document, "end", "sum_received_bidir_reverse", "bits_per_second"),
            "end.sum_received_bidir_reverse.bits_per_second") / 1e6
    streams_raw = document.get("start", {}).get("test_start", {}).get("num_streams", 1) \
        if isinstance(document.get("start"), dict) \
        and isinstance(document["start"].get("test_start"), dict) else 1
    streams = streams_raw if isinstance(streams_raw, int) and not isinstance(streams_raw, bool) \
        and 1 <= streams_raw <= 128 else 1
    return IperfResult(receiver_mbps=received_bps / 1e6, sender_mbps=sent_bps / 1e6,
                       seconds=seconds, retransmits=retransmits,
                       reverse_receiver_mbps=reverse_mbps, streams=streams)


# iputils: "64 bytes from 2001:db8::2: icmp_seq=1 ttl=64 time=0.045 ms".  The
# digit counts are bounded so int()/float() never see absurd strings.
_REPLY = re.compile(r"^\d{1,6} bytes from .*?\bicmp_seq=\d{1,9}\b"
                    r".*?\btime=(\d{1,9}(?:\.\d{1,9})?) ms(.*)$")
_SUMMARY = re.compile(r"^(\d{1,9}) packets transmitted, (\d{1,9}) (?:packets )?received\b")


def parse_ping(text: str) -> PingResult:
    """Round-trip times of every echo reply in iputils ``ping`` output (duplicates ignored)."""
    rtts: list[float] = []
    transmitted: int | None = None
    received: int | None = None
    for line in text.splitlines():
        line = line.strip()
        reply = _REPLY.match(line)
        if reply is not None:
            if "(DUP!)" in reply.group(2):
                continue  # a duplicate is not a new round trip
            rtts.append(float(reply.group(1)))
            continue
        summary = _SUMMARY.match(line)
        if summary is not None:
            transmitted, received = int(summary.group(1)), int(summary.group(2))
    if not rtts:
        raise ParseError("no echo replies in ping output")
    return PingResult(rtts_ms=tuple(rtts), transmitted=transmitted, received=received)
