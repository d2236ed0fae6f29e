"""Link quality measured by running nodes: the MN's RTT and loss per link, on the simulator.

Every access link but the MN's is shaped to 1 ms each way, so a round trip
from the MN over a link whose access delay is d ms takes 2 * (d + 1) ms to
the HA, the CN and the other MN alike; virtual time makes it exact.
"""

from __future__ import annotations

import asyncio

import pytest

from vmip.demo.dashboard import collect, render_text
from vmip.lab.emulation import LinkProfile
from vmip.sim.world import SimWorld

WIFI_MS, LTE_MS, FIXED_MS = 5.0, 30.0, 1.0
WIFI_RTT_MS = 2 * (WIFI_MS + FIXED_MS)      # 12 ms
LTE_RTT_MS = 2 * (LTE_MS + FIXED_MS)        # 62 ms


def _profiles(wifi: LinkProfile | None = None, lte: LinkProfile | None = None) -> dict:
    fixed = LinkProfile(delay_ms=FIXED_MS)
    return {("ha", "eth0"): fixed, ("cn", "eth0"): fixed,
            ("mn2", "wifi0"): fixed, ("mn2", "lte0"): fixed,
            ("mn", "wifi0"): wifi or LinkProfile(delay_ms=WIFI_MS),
            ("mn", "lte0"): lte or LinkProfile(delay_ms=LTE_MS)}


class _Control:
    """The node's own control handlers, called as the control socket would."""

    def __init__(self, node) -> None:
        self.handlers = node.control_handlers.handlers()

    def call(self, command: str, **args):
        return self.handlers[command](args)


def test_srtt_per_link_matches_the_emulated_rtt_and_best_follows_it():
    with SimWorld(seed=5, profiles=_profiles()) as world:
        async def scenario():
            await world.start_all()
            mn = world.nodes["mn"]
            await asyncio.sleep(3)
            # On wifi0: BU → BA with the HA, BU → AOTC → BA with the CN and the
            # other MN; lte0 measured by the early tests of its CoA (AOTO → AOTC → AOTS).
            now = mn.clock()
            wifi, lte = mn.link_quality.link("wifi0", now), mn.link_quality.link("lte0", now)
            assert wifi is not None and lte is not None
            assert wifi.samples >= 3 and lte.samples >= 2
            assert wifi.srtt_ms == pytest.approx(WIFI_RTT_MS, abs=0.5)
            assert lte.srtt_ms == pytest.approx(LTE_RTT_MS, abs=0.5)
            assert wifi.loss == lte.loss == 0.0
            assert mn.link_quality.best(["lte0", "wifi0"], now) == "wifi0"

            # What `vmip status --json` and `vmip top --once` show.
            control = _Control(mn)
            status = control.call("status")
            assert status["link_quality"]["wifi0"]["srtt_ms"] == pytest.approx(WIFI_RTT_MS,
                                                                               abs=0.5)
            assert status["link_quality"]["wifi0"]["best"] is True
            assert control.call("mobility")["link_quality"] == status["link_quality"]
            frame = render_text(collect(control), width=80, height=24)
            rows = {line.split()[0]: line.split() for line in frame.splitlines()
                    if line.split() and line.split()[0] in ("wifi0", "lte0")}
            assert rows["wifi0"][1:6] == ["active", "up", "best", "12ms", "0%"]
            assert rows["lte0"][1:4] == ["up", "62ms", "0%"]
            assert max(len(line) for line in frame.splitlines()) <= 80

            # wifi0 slows down to 200 ms each way: the next signalling over it
            # (back from lte0 after an outage) shows it, and lte0 becomes the best.
            world.network.shape("mn", "wifi0", LinkProfile(delay_ms=200.0))
            world.set_link("mn", "wifi0", False)
            await asyncio.sleep(3)
            world.set_link("mn", "wifi0", True)
            await asyncio.sleep(6)
            now = mn.clock()
            assert mn.active_link == "wifi0"
            wifi = mn.link_quality.link("wifi0", now)
            assert wifi.srtt_ms > LTE_RTT_MS + 20
            assert mn.link_quality.best(["wifi0", "lte0"], now) == "lte0"
            assert _Control(mn).call("status")["link_quality"]["lte0"]["best"] is True
        world.run(scenario())


def test_a_lossy_link_shows_loss_and_a_clean_one_none():
    # 30 % loss each way on wifi0: about half the exchanges over it need a retransmission.
    with SimWorld(seed=11, profiles=_profiles(wifi=LinkProfile(delay_ms=WIFI_MS, loss=0.3))) \
            as world:
        async def scenario():
            await world.start_all()
            mn = world.nodes["mn"]
            # Several moves between the links: each one a round of BUs over each.
            for _ in range(4):
                await asyncio.sleep(4)
                world.set_link("mn", "wifi0", False)
                await asyncio.sleep(4)
                world.set_link("mn", "wifi0", True)
            await asyncio.sleep(10)
            now = mn.clock()
            wifi, lte = mn.link_quality.link("wifi0", now), mn.link_quality.link("lte0", now)
            assert wifi is not None and lte is not None
            assert wifi.outcomes >= 10 and lte.outcomes >= 5
            assert 0.1 < wifi.loss < 0.9
            assert lte.loss == 0.0
            # Samples only from exchanges sent once (Karn), so the RTT is still right.
            assert wifi.srtt_ms == pytest.approx(WIFI_RTT_MS, abs=0.5)
            assert _Control(mn).call("status")["link_quality"]["wifi0"]["loss"] > 0.1
        world.run(scenario())


def _multiple_care_of_supported() -> bool:
    from vmip.config.model import MobilityConfig
    from vmip.config.schema import keys_of
    from vmip.mobility.mn import MobileNode

    return "multiple_care_of" in keys_of(MobilityConfig) and hasattr(MobileNode, "probe")


@pytest.mark.skipif(not _multiple_care_of_supported(),
                    reason="needs [mobility] multiple_care_of and MobileNode.probe (RFC 5648 "
                           "bindings per link) in this tree")
def test_with_a_binding_per_link_probes_keep_both_measured_and_a_silent_link_loses():
    with SimWorld(seed=7, profiles=_profiles()) as world:
        path = world.config_paths["mn"]
        text = path.read_text().replace(
            'correspondents = ["2001:db8:20::2", "2001:db8:100::20"]',
            'correspondents = ["2001:db8:20::2"]')    # mn2 is not started
        assert 'tunnel = "esp"' in text
        path.write_text(text.replace(
            'tunnel = "esp"',
            'tunnel = "esp"\nmultiple_care_of = true\nlink_probe_interval = 1', 1))

        async def scenario():
            for name in ("ha", "cn", "mn"):
                await world.start(name)
            mn = world.nodes["mn"]
            await asyncio.sleep(10)
            now = mn.clock()
            wifi, lte = mn.link_quality.link("wifi0", now), mn.link_quality.link("lte0", now)
            # Both links bound, so both are refreshed at the HA every second.
            assert mn.link_prober is not None and mn.link_prober.probes >= 10
            assert wifi.srtt_ms == pytest.approx(WIFI_RTT_MS, abs=0.5)
            assert lte.srtt_ms == pytest.approx(LTE_RTT_MS, abs=0.5)
            assert wifi.age_s <= 1.1 and lte.age_s <= 1.1
            assert mn.link_quality.best(["lte0", "wifi0"], now) == "wifi0"

            # wifi0 dies without warning (no link-down event: the MN keeps both
            # bindings): its next probe goes unanswered and lte0 becomes the best.
            world.network.set_up("mn", "wifi0", False)
            died = mn.clock()
            while mn.link_quality.best(["wifi0", "lte0"], mn.clock()) != "lte0":
                assert mn.clock() - died < 5, "wifi0 still the best link 5 s after it died"
                await asyncio.sleep(0.01)
            assert mn.clock() - died <= 1.0 + 0.3   # one probe interval, then 250 ms
            assert _Control(mn).call("status")["link_quality"]["wifi0"]["state"] == "failing"
            # It stays so while the MN sends that probe again (1 s, 2 s ... later).
            while mn.clock() - died < 8:
                await asyncio.sleep(0.05)
                assert mn.link_quality.best(["wifi0", "lte0"], mn.clock()) == "lte0"
        world.run(scenario())


def _flows_supported() -> bool:
    import importlib.util

    return _multiple_care_of_supported() and importlib.util.find_spec("vmip.node.flows") \
        is not None


@pytest.mark.skipif(not _flows_supported(),
                    reason="needs per-flow sending over bound paths (vmip.node.flows) and "
                           "multi-CoA bindings in this tree")
def test_best_link_data_follows_the_measured_quality():
    from ipaddress import IPv6Address

    from vmip.sim.scenario import ProbeStream

    hoa, cn = IPv6Address("2001:db8:100::10"), IPv6Address("2001:db8:20::2")
    with SimWorld(seed=9, profiles=_profiles()) as world:
        path = world.config_paths["mn"]
        text = path.read_text().replace(
            'correspondents = ["2001:db8:20::2", "2001:db8:100::20"]',
            'correspondents = ["2001:db8:20::2"]')
        path.write_text(text.replace(
            'tunnel = "esp"',
            'tunnel = "esp"\nmultiple_care_of = true\nlink_probe_interval = 1', 1))
        # The MN's ESP to the CN, by the link it left on, with the time it left.
        sent: list[tuple[float, str]] = []

        def see(sender, packet: bytes, destination) -> bool:
            if sender.node == "mn" and len(packet) >= 48 and packet[6] == 50 \
                    and packet[24:40] == cn.packed:
                sent.append((world.loop.time(), sender.name))
            return False
        world.network.interceptors.append(see)

        def links_between(start: float, end: float) -> set[str]:
            return {link for t, link in sent if start <= t < end}

        async def scenario():
            for name in ("ha", "cn", "mn"):
                await world.start(name)
            await asyncio.sleep(5)
            probes = ProbeStream(world, "mn", hoa, cn, 50)   # no [[flow]]: "best"
            probes.start()
            await asyncio.sleep(2)
            assert links_between(5.5, 7.0) == {"wifi0"}
            # wifi0 slows to 200 ms each way: its next probes show it, and the
            # data moves to lte0 without any link going down.
            world.network.shape("mn", "wifi0", LinkProfile(delay_ms=200.0))
            slowed = world.loop.time()
            await asyncio.sleep(5)
            assert links_between(slowed + 3, slowed + 5) == {"lte0"}
            # wifi0 fast again, then dead without warning: back on it, then off it
            # within one probe interval and 250 ms.
            world.network.shape("mn", "wifi0", LinkProfile(delay_ms=WIFI_MS))
            await asyncio.sleep(20)
            back = world.loop.time()
            assert links_between(back - 2, back) == {"wifi0"}
            world.network.set_up("mn", "wifi0", False)
            await asyncio.sleep(3)
            assert links_between(back + 1.3, back + 3) == {"lte0"}
            probes.stop()
        world.run(scenario())
