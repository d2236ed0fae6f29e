"""Link quality from the real MIPv6 cores: a multi-CoA MN probing its two links at its HA.

The MN core (``multiple_care_of``, wifi: BID 1, lte: BID 2) and the HA and
CN cores talk over the fake network of test_mipv6_pair_harness, with a
one-way delay per link; :class:`vmip.node.quality.QualityFeed` hears the
MN's events as the node's event hub would hand them over, and
:class:`vmip.node.quality.LinkProber` asks ``MobileNode.probe`` for a
refresh of each idle bound link.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from test_mipv6_pair_harness import (
    CN_ADDR,
    HA_ADDR,
    HOA,
    HOME_PREFIX,
    LTE,
    WIFI,
    Net,
    SimNode,
    seeded_rng,
)

from vmip.mobility.cn import Correspondent
from vmip.mobility.events import BindingUpdateSent
from vmip.mobility.ha import HomeAgent
from vmip.mobility.mn import MobileNode
from vmip.node.events import EventHub
from vmip.node.quality import FAILING, LinkProber, LinkQuality, QualityFeed

if not hasattr(MobileNode, "probe"):
    pytest.skip("MobileNode.probe (multi-CoA registration, RFC 5648) is not in this tree",
                allow_module_level=True)

PROBE_INTERVAL = 1.0


@dataclass
class _Link:
    name: str
    coa: Any


class _Services:
    """What the feed and the prober use of the node, on the fake network's clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events = EventHub(lambda: self.now)
        self.config = SimpleNamespace(
            links=[_Link("wifi0", WIFI), _Link("lte0", LTE)],
            mobility=SimpleNamespace(multiple_care_of=True,
                                     link_probe_interval=PROBE_INTERVAL))

    def clock(self) -> float:
        return self.now

    def link_names(self) -> list[str]:
        return ["wifi0", "lte0"]

    def link_coa(self, name: str) -> Any:
        return {"wifi0": WIFI, "lte0": LTE}.get(name)


class _Tap:
    """A pseudo-core on the MN's node: hands the MN's events to the hub as they
    happen (the network collects the MN's core first), and runs the prober's timer."""

    def __init__(self, net: Net, node: SimNode, services: _Services,
                 prober: LinkProber) -> None:
        self.net, self.node, self.services, self.prober = net, node, services, prober
        self.seen = 0

    def next_event(self) -> None:
        self.services.now = self.net.now
        while self.seen < len(self.node.events):
            _, event = self.node.events[self.seen]
            self.seen += 1
            self.services.events.publish(event)

    def datagrams_to_send(self, now: float) -> list:
        return []

    def get_timer(self) -> float | None:
        return self.prober.get_timer()

    def handle_timer(self, now: float) -> None:
        self.services.now = now
        self.prober.handle_timer(now)


@dataclass
class _MobileSimNode(SimNode):
    tap: Any = None

    def cores(self):
        return [*super().cores(), *([self.tap] if self.tap is not None else [])]


class _LinkNet(Net):
    """One-way delay by the MN's link the datagram crosses (its CoA on the wire)."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = {WIFI: 0.006, LTE: 0.031}

    def _emit_packet(self, sender, outgoing) -> None:
        ends = {outgoing.onwire_src, outgoing.onwire_dst}
        self.latency = next((d for coa, d in self.delay.items() if coa in ends), 0.001)
        super()._emit_packet(sender, outgoing)


def _world():
    net = _LinkNet()
    rng = seeded_rng(3)
    net.add(SimNode("ha", ha=HomeAgent(HA_ADDR, HOME_PREFIX, mobile_nodes=[HOA]),
                    cn=Correspondent(known_peers=[HOA], rng=rng), fixed=HA_ADDR))
    net.add(SimNode("cn", cn=Correspondent(known_peers=[HOA], rng=rng), fixed=CN_ADDR))
    mn = net.add(_MobileSimNode("mn", mn=MobileNode(HOA, HA_ADDR, [CN_ADDR], rng=rng,
                                                    multiple_care_of=True),
                                cn=Correspondent(known_peers=[], rng=rng)))
    mn.extra = {WIFI, LTE}
    services = _Services()
    quality = LinkQuality()
    QualityFeed(services, quality)
    prober = LinkProber(services, quality, mn.mn.probe)
    mn.tap = _Tap(net, mn, services, prober)
    mn.mn.set_care_of_addresses({1: WIFI, 2: LTE}, 0.0)
    return net, mn, quality, prober


def test_probes_keep_both_links_measured_and_best_follows_the_faster():
    net, mn, quality, prober = _world()
    net.run(10.0)
    wifi, lte = quality.link("wifi0", 10.0), quality.link("lte0", 10.0)
    # The prober's refreshes at the HA: about one per link and second once bound.
    probes = [e for e in mn.of_type(BindingUpdateSent) if e.peer == HA_ADDR]
    assert prober.probes >= 14
    assert {e.bid for e in probes} == {1, 2}
    assert wifi.srtt_ms == pytest.approx(12.0, abs=0.5)
    assert lte.srtt_ms == pytest.approx(62.0, abs=0.5)
    assert wifi.age_s <= PROBE_INTERVAL + 0.1 and lte.age_s <= PROBE_INTERVAL + 0.1
    assert quality.best(["lte0", "wifi0"], 10.0) == "wifi0"

    # wifi0 slows to 200 ms each way: its probes alone move the choice to lte0.
    net.delay[WIFI] = 0.2
    switched = net.run_until(lambda: quality.best(["wifi0", "lte0"], net.now) == "lte0", 20.0)
    assert switched < 13.0
    assert quality.link("wifi0", net.now).srtt_ms > 62.0


def test_a_silent_link_fails_within_one_probe_interval_and_its_rto():
    net, _mn, quality, _prober = _world()
    net.run(10.0)
    assert quality.best(["wifi0", "lte0"], 10.0) == "wifi0"
    # Wi-Fi dies without warning: nothing crosses it any more.
    net.loss = lambda delivery: WIFI in (delivery.wire_src, delivery.wire_dst)
    probed = net.run_until(lambda: quality.last_request("wifi0") > 10.0, 20.0)
    assert probed <= 10.0 + PROBE_INTERVAL
    # Its next probe gets no BA: once it is overdue (past max(SRTT + 4 RTTVAR,
    # 250 ms)) lte0 is the best link, before the MN's own 1 s retransmission.
    net.run(probed + 0.2)
    assert quality.best(["wifi0", "lte0"], net.now) == "wifi0"
    net.run(probed + 0.26)
    assert quality.best(["wifi0", "lte0"], net.now) == "lte0"
    assert quality.link("wifi0", net.now).state == FAILING
    # And stays so through the MN's retransmissions of that probe (every check
    # 50 ms apart): a retransmission is no answer.
    t = probed + 0.3
    while t < 16.0:
        net.run(t)
        assert quality.best(["wifi0", "lte0"], net.now) == "lte0", f"wifi0 back at {t}"
        t += 0.05
    net.run(16.0)
    wifi = quality.link("wifi0", 16.0)
    # Its probe sent again at +1 s and +3 s (RFC 6275 §11.8 back-off): two losses.
    assert wifi.lost_in_row == 2 and wifi.loss > 0.2
    assert quality.link("lte0", 16.0).loss == 0.0
    # Back: the next answered refresh over it makes it the best again.
    net.loss = lambda delivery: False
    net.run_until(lambda: quality.best(["wifi0", "lte0"], net.now) == "wifi0", 60.0)
