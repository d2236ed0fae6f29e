"""NAT keepalive schedule (sans-IO, fake clock): RFC 3948 §4 idle rule."""

from __future__ import annotations

import pytest

from vmip.links import KeepaliveSchedule, LinkError

PEER_A = ("192.0.2.2", 6275)
PEER_B = ("2001:db8:10::2", 6275)


def test_keepalive_goes_only_to_idle_targets_once_per_interval():
    schedule = KeepaliveSchedule(20)
    schedule.add_target(PEER_A)
    schedule.add_target(PEER_B)
    assert schedule.start(now=100.0) == 120.0
    assert schedule.due(119.9) == []                       # not yet
    schedule.note_sent(PEER_A)                             # data refreshed A's mapping
    assert schedule.due(120.0) == [PEER_B]
    assert schedule.next_deadline() == 140.0
    assert schedule.due(139.0) == []
    assert sorted(schedule.due(140.0)) == sorted([PEER_A, PEER_B])   # both idle now


def test_late_timer_does_not_burst():
    schedule = KeepaliveSchedule(5)
    schedule.add_target(PEER_A)
    schedule.start(now=0.0)
    assert schedule.due(1000.0) == [PEER_A]               # one keepalive, not 200
    assert schedule.next_deadline() == 1005.0


def test_untracked_endpoints_and_removed_targets_get_nothing():
    schedule = KeepaliveSchedule(1)
    schedule.note_sent(("192.0.2.99", 1))                 # not a target: ignored
    schedule.add_target(PEER_A)
    schedule.start(now=0.0)
    schedule.remove_target(PEER_A)
    assert schedule.due(1.0) == []
    assert schedule.targets == frozenset()


def test_not_started_never_due():
    schedule = KeepaliveSchedule(1)
    schedule.add_target(PEER_A)
    assert schedule.due(1e9) == []
    assert schedule.next_deadline() is None


@pytest.mark.parametrize("interval", [0, -1, float("nan")])
def test_interval_must_be_positive(interval):
    with pytest.raises(LinkError):
        KeepaliveSchedule(interval)
