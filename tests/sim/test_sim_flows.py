"""Per-flow sending and duplicate mode through running nodes (in-process network,
virtual time): which links carry each flow, and what reaches the other TUN."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from vmip.demo.run import UDP_PORT
from vmip.lab.emulation import LinkProfile
from vmip.mobility.ancillary import Ancillary
from vmip.node.flows import DUPLICATE, FlowPolicy, FlowRule, FlowSender
from vmip.sim.scenario import ProbeStream
from vmip.sim.world import SimWorld

HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA = "2001:db8:100::10"
COA = {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"}
CLEAN = {("mn", "wifi0"): LinkProfile(delay_ms=5.0), ("mn", "lte0"): LinkProfile(delay_ms=30.0)}
#: The probes' flow: UDP to the probe port at the CN.
PROBES = FlowRule("probes", DUPLICATE, protocol=17, remote=IPv6Network(f"{CN}/128"),
                  remote_ports=(UDP_PORT, UDP_PORT))


async def until(world: SimWorld, what: str, check, timeout: float) -> None:
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.005)


def bound_on_wifi(world: SimWorld) -> bool:
    status = world.nodes["mn"].mobility.status()
    entries = {e["peer"]: e for e in status["mn"]["binding_update_list"]}
    return all(entries.get(p, {}).get("state") == "bound" and entries[p]["coa"] == COA["wifi0"]
               for p in (HA, CN))


class EspOnLinks:
    """Which (SPI, sequence number) of the MN's ESP to the CN left on which link."""

    def __init__(self, world: SimWorld) -> None:
        self.by_link: dict[str, Counter[tuple[int, int]]] = {"wifi0": Counter(),
                                                             "lte0": Counter()}
        world.network.interceptors.append(self._see)

    def _see(self, sender, packet: bytes, destination) -> bool:
        if sender.node == "mn" and len(packet) >= 48 and packet[6] == 50 \
                and packet[24:40] == IPv6Address(CN).packed:
            spi, seq = int.from_bytes(packet[40:44], "big"), int.from_bytes(packet[44:48], "big")
            self.by_link[sender.name][(spi, seq)] += 1
        return False


@dataclass(frozen=True)
class FakePath:
    link: str

    def ancillary(self) -> Ancillary:
        return Ancillary.of(IPv6Address(COA[self.link]))


def test_the_send_hook_puts_the_same_esp_packet_on_every_path() -> None:
    """The node's send path with stand-in bound paths: a duplicate flow leaves
    as the same ESP packet (SPI and sequence number) on wifi0 and on lte0,
    each from that link's CoA; the CN's TUN gets each probe once; the
    node counts the extra copies and their bytes."""
    with SimWorld(seed=3, profiles=CLEAN) as world:
        async def scenario():
            await world.start_all()
            await until(world, "registered on wifi", lambda: bound_on_wifi(world), 5)
            mn = world.nodes["mn"]
            paths = [FakePath("wifi0"), FakePath("lte0")]
            mn.flows = FlowSender(FlowPolicy([PROBES]),
                                  lambda peer: paths if peer == IPv6Address(CN).packed else [],
                                  None, mn.counters)
            seen = EspOnLinks(world)
            probes = ProbeStream(world, "mn", IPv6Address(HOA), IPv6Address(CN), 100)
            world.tun_sinks["cn"] = probes.received
            probes.start()
            await asyncio.sleep(1.0)
            probes.stop()
            await asyncio.sleep(0.5)
            return mn, probes, seen, mn.control_handlers._counters({})
        mn, probes, seen, counters = world.run(scenario())
    received = Counter(arrival.seq for arrival in probes.arrivals)
    assert probes.sent >= 99 and received == Counter(range(probes.sent))
    wifi, lte = seen.by_link["wifi0"], seen.by_link["lte0"]
    # The lab's SA also carries the MN's Mobility Headers, sent on one path:
    # exactly the probes' ESP packets went on both links, each once per link.
    assert len(set(wifi) & set(lte)) == probes.sent
    assert max(wifi.values()) == max(lte.values()) == 1
    assert mn.counters["tx_duplicate_copies"] == probes.sent
    assert mn.counters["tx_duplicate_bytes"] > 0
    assert mn.counters["tx_duplicate_bytes"] % probes.sent == 0   # one ESP size per probe
    # `vmip counters`: the packets of each flow.
    assert counters["flows"] == [{"name": "probes", "send": "duplicate",
                                  "packets": probes.sent}]
    assert counters["node"]["tx_duplicate_copies"] == probes.sent


def test_a_node_takes_its_flows_from_the_config_and_a_reload_replaces_them() -> None:
    with SimWorld(seed=3) as world:
        path = world.config_paths["mn"]
        original = path.read_text()
        path.write_text(original + '\n[[flow]]\nname = "voice"\nprotocol = "udp"\n'
                        'remote_ports = "5060"\nsend = "duplicate"\n')

        async def scenario():
            mn = await world.start("mn")
            before = [(rule.name, str(rule.mode)) for rule in mn.flows.policy.rules]
            path.write_text(original + '\n[[flow]]\nname = "bulk"\nsend = "link:lte0"\n')
            refused = mn.reload()
            return mn, before, refused
        mn, before, refused = world.run(scenario())
        after = [(rule.name, str(rule.mode)) for rule in mn.flows.policy.rules]
    assert before == [("voice", "duplicate")]
    assert refused is None and after == [("bulk", "link:lte0")]
