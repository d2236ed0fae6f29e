"""Duplicate mode's receiver: the anti-replay window keeps exactly one copy of
each ESP packet (RFC 4303 §3.4.3), for every suite, with and without ESN.

A sender in duplicate mode (docs/multi-coa.md) puts the same ESP packet,
same sequence number, on each bound path; the receiver gets the copies in
any order, possibly after the window moved on.  Each case counts how often
``unprotect`` hands back a payload: once per packet, whatever the copies.
Copies inside the window count as ``duplicate`` (not ``replay``), so a
receiver in duplicate mode does not look like it is being attacked.
"""

from __future__ import annotations

import random
from collections import Counter
from ipaddress import IPv6Address

import pytest

from vmip.ipsec.esp import EspSA
from vmip.ipsec.sa import Direction, SaParams
from vmip.ipsec.suites import BACKENDS, SUITES

A, B = IPv6Address("2001:db8:100::10"), IPv6Address("2001:db8:20::2")
WINDOW = 64
CASES = [(suite, backend, esn) for suite in sorted(SUITES) for backend in BACKENDS
         for esn in (False, True)]
IDS = [f"{suite}-{backend}-{'esn' if esn else 'no-esn'}" for suite, backend, esn in CASES]


def pair(suite: str, backend: str, esn: bool) -> tuple[EspSA, EspSA]:
    info = SUITES[suite]
    params = SaParams(spi=0x1301, direction=Direction.OUT, src=A, dst=B, suite=suite,
                      enc_key=bytes(range(7, 7 + info.enc_key_len)),
                      auth_key=bytes(range(3, 3 + info.auth_key_len)), esn=esn,
                      replay_window=WINDOW, backend=backend)
    return EspSA(params, 0.0), EspSA(params, 0.0)


def deliver(receiver: EspSA, packets: list[bytes]) -> Counter[bytes]:
    """Hand every packet to the receiver; count the payloads it accepted."""
    accepted: Counter[bytes] = Counter()
    for packet in packets:
        result = receiver.unprotect(packet, 1.0)
        if result is not None:
            accepted[result[1]] += 1
    return accepted


def send(sender: EspSA, count: int, tag: str = "p") -> tuple[list[bytes], list[bytes]]:
    payloads = [f"{tag}{i}".encode() for i in range(count)]
    return payloads, [sender.protect(payload, 17, 1.0) for payload in payloads]


@pytest.mark.parametrize(("suite", "backend", "esn"), CASES, ids=IDS)
def test_copies_in_order_are_accepted_once(suite: str, backend: str, esn: bool) -> None:
    sender, receiver = pair(suite, backend, esn)
    payloads, packets = send(sender, 40)
    # Each packet right after itself: the second path was as fast as the first.
    accepted = deliver(receiver, [p for packet in packets for p in (packet, packet)])
    assert accepted == Counter(payloads)
    assert receiver.drops == {"duplicate": 40}


@pytest.mark.parametrize(("suite", "backend", "esn"), CASES, ids=IDS)
def test_copies_reordered_within_the_window_are_accepted_once(suite: str, backend: str,
                                                              esn: bool) -> None:
    sender, receiver = pair(suite, backend, esn)
    payloads, packets = send(sender, 3 * WINDOW)
    rng = random.Random(5)
    # Two paths, each reordering a little; copies interleave, at most half a
    # window apart.
    arrivals = []
    for start in range(0, len(packets), WINDOW // 2):
        chunk = packets[start:start + WINDOW // 2] * 2
        rng.shuffle(chunk)
        arrivals += chunk
    accepted = deliver(receiver, arrivals)
    assert accepted == Counter(payloads)
    assert receiver.drops == {"duplicate": len(packets)}


@pytest.mark.parametrize(("suite", "backend", "esn"), CASES, ids=IDS)
def test_a_copy_after_the_window_moved_on_is_dropped(suite: str, backend: str,
                                                     esn: bool) -> None:
    """The slow path's copy arrives when more than a window of packets came
    by the fast one: RFC 4303 §3.4.3 drops it as left of the window; with
    ESN, appendix A2 reads it as the next 2^32 subspace and the ICV drops it."""
    sender, receiver = pair(suite, backend, esn)
    payloads, packets = send(sender, WINDOW + 10)
    accepted = deliver(receiver, packets)
    late = deliver(receiver, packets[:10])
    assert accepted == Counter(payloads) and late == Counter()
    assert receiver.drops == ({"icv": 10} if esn else {"replay_old": 10})


@pytest.mark.parametrize(("suite", "backend"),
                         [(suite, backend) for suite in sorted(SUITES) for backend in BACKENDS])
def test_copies_across_the_esn_boundary_are_accepted_once(suite: str, backend: str) -> None:
    """RFC 4303 appendix A2: copies of numbers on both sides of 2^32 (low halves
    0xfffffff0.. and 0..), in any order inside the window, each accepted once."""
    sender, receiver = pair(suite, backend, esn=True)
    sender.seq = (1 << 32) - 17
    receiver.replay.accept((1 << 32) - 17)    # the receiver has seen everything before
    payloads, packets = send(sender, 32)
    arrivals = packets * 2
    random.Random(11).shuffle(arrivals)
    accepted = deliver(receiver, arrivals)
    assert accepted == Counter(payloads)
    assert receiver.drops == {"duplicate": 32}
    assert receiver.replay.top == (1 << 32) + 15


def test_restart_marks_stay_replays_not_duplicates() -> None:
    """What a restarted receiver cannot have seen is still ``replay``."""
    sender, receiver = pair("aes128gcm16", BACKENDS[0], True)
    _, packets = send(sender, 5)
    receiver.replay.resume(5)
    assert deliver(receiver, packets) == Counter()
    assert receiver.drops == {"replay": 5}
