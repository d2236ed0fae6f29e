"""The emulated mobile nodes: protected Binding Updates out, Binding Acknowledgements in.

Every BU is what a vmip MN sends for a home registration
(:class:`vmip.mobility.mn.MobileNode`: A and H set, K clear, lifetime 420 s,
an Alternate Care-of Address option naming the CoA, a new sequence number
per BU, RFC 6275 §11.7.1), built with vmip's own wire code
(:func:`vmip.wire.mh.build_mh_packet`), protected with the MN's outbound MH
transport SA (:func:`vmip.ipsec.esp.transport_encap`, checksum over HoA ->
HA) and then given the CoA as on-wire source, which is IRO's outbound rule
for the MN's MH SA (draft §3.1 rule 1; docs/iro-remap.md).  It leaves as
the overlay's UDP datagram to the HA's port.

A BA comes back to the CoA under the HA's outbound MH SA; the SPI names the
MN, the MN's inbound rule puts the HoA back as destination (draft §3.1 rule
4), ESP decap and the MH checksum are checked, and the BA's sequence number
says which BU it answers (RFC 6275 §6.1.8), so each BU -> BA time is exact.

The timing loop (:func:`run_step`) offers BUs at a fixed rate and drains
BAs in between; :func:`register_all` brings every MN to a binding with a
bounded window of outstanding BUs.  Nothing here opens namespaces: the
caller hands a socket already bound where it belongs.
"""

from __future__ import annotations

import heapq
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from netbench.swarm_config import HA_ADDRESS, SwarmMn, coa_of
from vmip.ipsec.esp import EspSA, decap, transport_encap
from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.wire.errors import WireError
from vmip.wire.mh import (
    AlternateCareOfAddress,
    BindingAck,
    BindingUpdate,
    build_mh_packet,
    parse_mh,
)

#: RFC 6275 §6.1.7: lifetimes in 4-second units; vmip's MN asks 420 s.
LIFETIME_UNITS = 105
#: vmip's MN refreshes at 80 % of the granted lifetime (docs/mobility.md "Timers").
REFRESH_AFTER = 0.8 * LIFETIME_UNITS * 4
_ESP = 50
_RECV_BATCH = 256


def sa_params(mn: SwarmMn, from_mobile: bool) -> SaParams:
    """The MN's end of its MH SA (``from_mobile``: the one it sends with)."""
    sa = mn.sa("mh", from_mobile)
    enc, auth = mn.key_pair(sa)
    return SaParams(spi=sa.spi, direction=Direction.OUT if from_mobile else Direction.IN,
                    src=IPv6Address(sa.src), dst=IPv6Address(sa.dst), suite=sa.suite,
                    enc_key=enc, auth_key=auth, mode=Mode.TRANSPORT, esn=False,
                    name=sa.name_at(mn.name))


def percentile(samples: list[float], q: float) -> float | None:
    """The *q*-th percentile (0-100) with linear interpolation between ranks; None if empty."""
    if not samples:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0-100")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class EmulatedMn:
    """One MN's protocol state: CoA, sequence number, SAs, BUs waiting for their BA."""

    __slots__ = (
        "accepted_at",
        "bound",
        "coa",
        "generation",
        "hoa",
        "hoa_packed",
        "in_sa",
        "index",
        "out_sa",
        "pending",
        "sequence",
    )

    def __init__(self, mn: SwarmMn, now: float) -> None:
        self.index = mn.index
        self.hoa = mn.hoa
        self.hoa_packed = mn.hoa.packed
        self.generation = 0
        self.coa = coa_of(mn.index, 0)
        self.sequence = 0
        self.out_sa = EspSA(sa_params(mn, True), now)
        self.in_sa = EspSA(sa_params(mn, False), now)
        #: sequence -> (time sent, kind)
        self.pending: dict[int, tuple[float, str]] = {}
        self.bound = False
        #: When the BU of the last accepted binding was sent (its lifetime runs from there).
        self.accepted_at: float | None = None

    def binding_update(self, now: float, *, move: bool = False) -> bytes:
        """The on-wire BU (IPv6 packet, ESP, CoA as source); *move* first takes a new CoA."""
        if move:
            self.generation += 1
            self.coa = coa_of(self.index, self.generation)
        self.sequence = (self.sequence + 1) & 0xFFFF
        bu = BindingUpdate(self.sequence, LIFETIME_UNITS, ack=True, home_registration=True,
                           options=(AlternateCareOfAddress(self.coa),))
        inner = build_mh_packet(bu, self.hoa, HA_ADDRESS)
        protected = transport_encap(inner, self.out_sa, now)
        if protected is None:
            raise RuntimeError(f"ESP refused the BU of MN {self.index}: {dict(self.out_sa.drops)}")
        # IRO outbound rule of the MH SA: the HoA never shows on the wire (draft §3.1 rule 1).
        return protected[:8] + self.coa.packed + protected[24:]

    def binding_ack(self, wire: bytes, now: float) -> BindingAck | None:
        """The BA in an on-wire packet for this MN, or None (bad ESP, not a BA)."""
        if len(wire) < 48 or wire[6] != _ESP:
            return None
        # The MN's inbound rule (draft §3.1 rule 4): CoA -> HoA before ESP.
        packet = wire[:24] + self.hoa_packed + wire[40:]
        inner = decap(packet, 40, self.in_sa, now)
        if inner is None or len(inner) < 48 or inner[6] != 135:
            return None
        try:
            message = parse_mh(inner[40:], HA_ADDRESS, self.hoa)
        except WireError:
            return None
        return message if isinstance(message, BindingAck) else None


@dataclass
class Answer:
    index: int
    sequence: int
    status: int
    rtt: float
    kind: str


@dataclass
class StepResult:
    """One offered rate: what was sent, what came back, how long it took."""

    rate: float
    seconds: float
    sent: int = 0
    answered: int = 0
    lost: int = 0
    late: int = 0
    statuses: Counter = field(default_factory=Counter)
    rtts: dict[str, list[float]] = field(default_factory=lambda: {"refresh": [], "move": []})
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    in_time: int = 0
    lifetime_refreshes: int = 0
    emulator_cpu_s: float = 0.0

    def all_rtts(self) -> list[float]:
        return self.rtts["refresh"] + self.rtts["move"]

    def summary(self) -> dict:
        def ms(samples: list[float], q: float) -> float | None:
            value = percentile(samples, q)
            return None if value is None else round(value * 1000, 3)

        rtts = self.all_rtts()
        return {
            "offered_bu_per_s": self.rate, "seconds": round(self.seconds, 3),
            "sent": self.sent, "answered": self.answered, "lost": self.lost,
            "answered_in_step": self.in_time, "lifetime_refreshes": self.lifetime_refreshes,
            "achieved_bu_per_s": round(self.sent / self.send_seconds, 1)
            if self.send_seconds else None,
            "ba_per_s_in_step": round(self.in_time / self.send_seconds, 1)
            if self.send_seconds else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "bu_ba_ms": {"p50": ms(rtts, 50), "p99": ms(rtts, 99), "max": ms(rtts, 100)},
            "bu_ba_ms_refresh": {"p50": ms(self.rtts["refresh"], 50),
                                 "p99": ms(self.rtts["refresh"], 99)},
            "bu_ba_ms_move": {"p50": ms(self.rtts["move"], 50), "p99": ms(self.rtts["move"], 99)},
            "emulator_cpu_s": round(self.emulator_cpu_s, 3),
        }


class Swarm:
    """Every emulated MN behind one UDP socket (their CoAs share its endpoint)."""

    def __init__(self, mns: list[SwarmMn], sock: socket.socket, ha_endpoint: tuple[str, int],
                 clock: Callable[[], float] = time.monotonic, *,
                 refresh_after: float = REFRESH_AFTER) -> None:
        self.clock = clock
        self.refresh_after = refresh_after
        #: (refresh due, MN index): each binding is refreshed before it expires, as a real
        #: MN does (RFC 6275 §11.7.1), whatever load the caller offers besides.
        self._due: list[tuple[float, int]] = []
        now = clock()
        self.mns = [EmulatedMn(mn, now) for mn in mns]
        # The HA's outbound MH SPI names the MN (one SA pair per MN).
        self._by_spi = {mn.in_sa.spi: mn for mn in self.mns}
        self.sock = sock
        self.ha_endpoint = ha_endpoint
        self.counters: Counter[str] = Counter()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._next = 0

    def close(self) -> None:
        self._selector.close()

    def send_bu(self, mn: EmulatedMn, kind: str) -> None:
        now = self.clock()
        wire = mn.binding_update(now, move=kind == "move")
        mn.pending[mn.sequence] = (now, kind)
        try:
            self.sock.sendto(wire, self.ha_endpoint)
        except BlockingIOError:
            self.counters["send_blocked"] += 1
        except OSError:
            self.counters["send_error"] += 1

    def receive(self, timeout: float) -> list[Answer]:
        """BAs that arrived within *timeout* seconds (drains what is queued)."""
        answers: list[Answer] = []
        if not self._selector.select(max(0.0, timeout)):
            return answers
        for _ in range(_RECV_BATCH):
            try:
                wire = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            now = self.clock()
            if len(wire) < 48:
                self.counters["rx_short"] += 1
                continue
            mn = self._by_spi.get(int.from_bytes(wire[40:44], "big"))
            if mn is None:
                self.counters["rx_unknown_spi"] += 1
                continue
            ba = mn.binding_ack(wire, now)
            if ba is None:
                self.counters["rx_not_ba"] += 1
                continue
            sent = mn.pending.pop(ba.sequence, None)
            if sent is None:
                self.counters["rx_unmatched"] += 1
                continue
            if ba.status < 128:
                mn.bound = True
                mn.accepted_at = sent[0]
                heapq.heappush(self._due, (sent[0] + self.refresh_after, mn.index))
            answers.append(Answer(mn.index, ba.sequence, ba.status, now - sent[0], sent[1]))
        return answers

    def due_refresh(self, now: float) -> EmulatedMn | None:
        """An MN whose binding needs its lifetime refresh now (and has no BU out), or None."""
        due = self._due
        while due and due[0][0] <= now:
            at, index = heapq.heappop(due)
            mn = self.mns[index]
            if mn.accepted_at is not None and mn.accepted_at + self.refresh_after == at \
                    and not mn.pending:
                return mn
        return None

    def next_mn(self) -> EmulatedMn:
        """Round-robin over the MNs, so every binding sees its share of the load."""
        mn = self.mns[self._next]
        self._next = (self._next + 1) % len(self.mns)
        return mn


def register_all(swarm: Swarm, *, window: int, timeout: float, retry_after: float = 2.0,
                 ) -> dict:
    """Bring every MN to a binding: at most *window* BUs outstanding, each resent (with a
    new sequence number) after *retry_after* s, the whole phase bounded by *timeout* s."""
    start = swarm.clock()
    deadline = start + timeout
    todo = list(reversed(swarm.mns))
    waiting: dict[int, float] = {}
    sent = resent = refreshed = 0
    rtts: list[float] = []
    statuses: Counter[int] = Counter()
    cpu0 = time.process_time()
    while (todo or waiting) and swarm.clock() < deadline:
        now = swarm.clock()
        for index, since in list(waiting.items()):
            if now - since > retry_after:
                mn = swarm.mns[index]
                mn.pending.clear()
                swarm.send_bu(mn, "refresh")
                waiting[index] = now
                resent += 1
        while (mn := swarm.due_refresh(now)) is not None:
            if mn.index not in waiting:
                swarm.send_bu(mn, "refresh")
                waiting[mn.index] = now
                refreshed += 1
        while todo and len(waiting) < window:
            mn = todo.pop()
            swarm.send_bu(mn, "refresh")
            waiting[mn.index] = swarm.clock()
            sent += 1
        for answer in swarm.receive(0.05):
            statuses[answer.status] += 1
            if answer.status < 128:
                waiting.pop(answer.index, None)
                rtts.append(answer.rtt)
    seconds = swarm.clock() - start
    bound = sum(1 for mn in swarm.mns if mn.bound)
    for mn in swarm.mns:
        mn.pending.clear()
    return {"mns": len(swarm.mns), "bound": bound, "seconds": round(seconds, 3),
            "bu_per_s": round(bound / seconds, 1) if seconds else None,
            "sent": sent, "resent": resent, "lifetime_refreshes": refreshed, "window": window,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "bu_ba_ms": {"p50": _ms(percentile(rtts, 50)), "p99": _ms(percentile(rtts, 99))},
            "emulator_cpu_s": round(time.process_time() - cpu0, 3),
            "complete": bound == len(swarm.mns)}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def run_step(swarm: Swarm, rate: float, seconds: float, *, move_every: int = 2,
             grace: float = 2.0, on_sent: Callable[[], None] | None = None) -> StepResult:
    """Offer BUs at *rate* per second for *seconds*, then wait up to *grace* s for the rest.

    Every *move_every*-th BU is a move to a new CoA (0: none); the others
    are re-registrations from the CoA in use.  Answers after the step ended
    still count (with their real delay) until *grace* runs out; what has
    no answer then is lost.  *on_sent* runs once the sending is over (the
    caller samples the HA's CPU there).
    """
    result = StepResult(rate=rate, seconds=seconds)
    total = max(1, int(rate * seconds))
    for mn in swarm.mns:
        mn.pending.clear()
    cpu0 = time.process_time()
    start = swarm.clock()
    sent = 0

    def take(answers: list[Answer], in_step: bool) -> None:
        for answer in answers:
            result.answered += 1
            result.in_time += in_step
            result.statuses[answer.status] += 1
            result.rtts[answer.kind].append(answer.rtt)

    while sent < total:
        now = swarm.clock()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            mn = swarm.due_refresh(now)
            if mn is not None:
                # A binding about to expire takes this slot: the offered rate stays the same.
                swarm.send_bu(mn, "refresh")
                result.lifetime_refreshes += 1
            else:
                kind = "move" if move_every and sent % move_every == move_every - 1 \
                    else "refresh"
                mn = swarm.next_mn()
                for _ in range(len(swarm.mns)):
                    if not mn.pending:
                        break
                    # Still waiting for its BA: a real MN would not send again before
                    # its retransmission timer (RFC 6275 §11.8); take the next one.
                    mn = swarm.next_mn()
                swarm.send_bu(mn, kind)
            sent += 1
        next_at = start + sent / rate
        take(swarm.receive(next_at - swarm.clock()), True)
    result.sent = sent
    result.send_seconds = swarm.clock() - start
    # The step's own BAs: those that arrive within the step's length.
    while swarm.clock() < start + seconds:
        take(swarm.receive(start + seconds - swarm.clock()), True)
    if on_sent is not None:
        on_sent()
    drain_start = swarm.clock()
    while any(mn.pending for mn in swarm.mns) and swarm.clock() < drain_start + grace:
        take(swarm.receive(0.05), False)
    result.drain_seconds = swarm.clock() - drain_start
    result.lost = sum(len(mn.pending) for mn in swarm.mns)
    result.emulator_cpu_s = time.process_time() - cpu0
    return result
