"""SADB event bus: ordering, re-entrant publishing, failing subscribers."""

from __future__ import annotations

import dataclasses
import logging
from ipaddress import IPv6Address

import pytest

from vmip.ipsec.sa import Direction
from vmip.ipsec.sadb import DeleteEvent, GetSpiEvent, SadbBus, SadbEvent, SaInfo

A = IPv6Address("2001:db8:20::2")
B = IPv6Address("2001:db8:100::10")


def getspi(spi: int) -> GetSpiEvent:
    return GetSpiEvent(spi=spi, src=A, dst=B)


def test_every_subscriber_sees_every_event_in_order():
    bus = SadbBus()
    first, second = [], []
    bus.subscribe(first.append)
    bus.subscribe(second.append)
    events = [getspi(n) for n in range(256, 266)]
    for event in events:
        bus.publish(event)
    assert first == events and second == events


def test_events_published_by_a_subscriber_are_queued_not_nested():
    bus = SadbBus()
    log: list[tuple[str, object]] = []
    depth = [0]

    def reacting(event):
        depth[0] += 1
        assert depth[0] == 1, "a callback ran inside another callback"
        log.append(("reacting", event))
        if isinstance(event, GetSpiEvent) and event.spi < 259:
            bus.publish(getspi(event.spi + 1))
        depth[0] -= 1

    def watching(event):
        depth[0] += 1
        assert depth[0] == 1, "a callback ran inside another callback"
        log.append(("watching", event))
        depth[0] -= 1

    bus.subscribe(reacting)
    bus.subscribe(watching)
    bus.publish(getspi(256))
    # Each event reaches both subscribers before the next event starts.
    expected = []
    for spi in (256, 257, 258, 259):
        expected += [("reacting", getspi(spi)), ("watching", getspi(spi))]
    assert log == expected
    assert bus.delivered == 4


def test_a_failing_subscriber_is_logged_and_others_still_run(caplog):
    bus = SadbBus()
    seen = []

    def broken(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="vmip.ipsec.sadb"):
        bus.publish(getspi(300))
        bus.publish(getspi(301))
    assert seen == [getspi(300), getspi(301)]
    assert bus.subscriber_errors == 2
    assert any("subscriber failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_unsubscribe_and_subscribe_during_delivery():
    bus = SadbBus()
    late, quitter = [], []

    def joiner(event):
        bus.subscribe(late.append)

    def leaver(event):
        quitter.append(event)
        bus.unsubscribe(leaver)

    bus.subscribe(joiner)
    bus.subscribe(leaver)
    bus.publish(getspi(400))
    bus.publish(getspi(401))
    assert quitter == [getspi(400)]
    assert late == [getspi(401)]      # joined during 400: sees what comes after
    assert bus.unsubscribe(leaver) is False
    assert bus.subscribe(joiner) is joiner and bus.subscribers.count(joiner) == 1


def test_events_are_frozen_and_typed():
    event = getspi(500)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.spi = 1  # type: ignore[misc]
    assert isinstance(event, SadbEvent)
    with pytest.raises(TypeError):
        SadbBus().publish("not an event")  # type: ignore[arg-type]


def test_sa_info_carries_no_key_material():
    names = {f.name for f in dataclasses.fields(SaInfo)}
    assert not any("key" in name for name in names)
    info = SaInfo(spi=0x1000, direction=Direction.IN, src=A, dst=B, state="larval")
    assert "key" not in repr(DeleteEvent(info))
