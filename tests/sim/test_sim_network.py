"""The simulated underlay itself (vmip.sim.network): delays and order per direction."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from vmip.lab.emulation import LinkProfile
from vmip.sim.loop import VirtualTimeLoop
from vmip.sim.network import SimLink, SimNetwork


def _settings(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, driver="udp", interface=None, bind=None, port=None,
                           keepalive=0.0)


def test_a_fast_link_is_not_held_behind_a_slow_one_into_the_same_receiver() -> None:
    """One node with a 5 ms and a 30 ms link sends to a third node: what it
    sends on the fast link 1 ms after the slow one arrives 24 ms earlier,
    as two real links into one router would deliver it (each direction
    keeps its own order, the receiver's in order of arrival there)."""
    loop = VirtualTimeLoop()
    try:
        network = SimNetwork(loop, seed=1)
        network.add_access("mn", "wifi0", "192.0.2.31", profile=LinkProfile(delay_ms=5.0))
        network.add_access("mn", "lte0", "192.0.2.32", profile=LinkProfile(delay_ms=30.0))
        network.add_access("cn", "eth0", "192.0.2.18", profile=LinkProfile(delay_ms=1.0))
        wifi = SimLink(_settings("wifi0"), network, "192.0.2.31", 6275)
        lte = SimLink(_settings("lte0"), network, "192.0.2.32", 6275)
        cn = SimLink(_settings("eth0"), network, "192.0.2.18", 6275)
        arrivals: list[tuple[bytes, float]] = []
        for link in (wifi, lte):
            link.open(loop, lambda packet, source, link: None)
        cn.open(loop, lambda packet, source, link: arrivals.append((packet, loop.time())))

        async def scenario() -> None:
            lte.send(b"slow", ("192.0.2.18", 6275))
            loop.call_later(0.001, wifi.send, b"fast", ("192.0.2.18", 6275))
            loop.call_later(0.002, lte.send, b"slow again", ("192.0.2.18", 6275))
            await asyncio.sleep(0.1)

        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert [packet for packet, _t in arrivals] == [b"fast", b"slow", b"slow again"]
    times = {packet: round(t * 1000, 3) for packet, t in arrivals}
    assert times == {b"fast": 7.0, b"slow": 31.0, b"slow again": 33.0}
