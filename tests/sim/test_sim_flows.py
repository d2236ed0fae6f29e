"""Per-flow sending and duplicate mode through running nodes (in-process network,
virtual time): which links carry each flow, and what reaches the other TUN."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from vmip.demo.run import UDP_PORT
from vmip.lab.emulation import LinkProfile
from vmip.mobility.ancillary import Ancillary
from vmip.node.flows import DUPLICATE, FlowPolicy, FlowRule, FlowSender
from vmip.sim.scenario import ProbeStream
from vmip.sim.world import SimWorld
from vmip.wire import proto
from vmip.wire.ipv6 import build_ipv6_header
from vmip.wire.udp import build_udp

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
    """Which (SPI, sequence number) of the MN's ESP to the CN left on which
    link; the SA *skip_spi* (the MH SA of the split layout) left out."""

    def __init__(self, world: SimWorld, skip_spi: int | None = None) -> None:
        self.skip_spi = skip_spi
        self.by_link: dict[str, Counter[tuple[int, int]]] = {"wifi0": Counter(),
                                                             "lte0": Counter()}
        world.network.interceptors.append(self._see)

    def _see(self, sender, packet: bytes, destination) -> bool:
        if sender.node == "mn" and len(packet) >= 48 and packet[6] == 50 \
                and packet[24:40] == IPv6Address(CN).packed:
            spi, seq = int.from_bytes(packet[40:44], "big"), int.from_bytes(packet[44:48], "big")
            if spi != self.skip_spi:
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


# -- with multiple care-of addresses (RFC 5648) -------------------------------------

DUP_PORT, BEST_PORT, LINK_PORT = 7001, 7002, 7003
RATE = 100.0
#: The MN's MH SA towards the CN in the split layout (vmip.sim.layouts): the
#: data SA is the other one.
MN_CN_MH_SPI = 0x1501


class Stream:
    """UDP datagrams one way at RATE per second, each carrying its number."""

    def __init__(self, world: SimWorld, sender: str, src: str, dst: str, port: int) -> None:
        self.world, self.sender, self.port = world, sender, port
        self.src, self.dst = IPv6Address(src), IPv6Address(dst)
        self.sent_at: list[float] = []
        self.arrived: Counter[int] = Counter()
        self._handle = None

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        seq = len(self.sent_at)
        payload = seq.to_bytes(4, "big") + bytes(60)
        segment = build_udp(self.port, self.port, payload, self.src.packed, self.dst.packed)
        packet = build_ipv6_header(self.src.packed, self.dst.packed, proto.UDP,
                                   len(segment)) + segment
        self.world.tuns[self.sender].inject(packet)
        self.sent_at.append(self.world.loop.time())
        self._handle = self.world.loop.call_later(1.0 / RATE, self._tick)

    def received(self, packet: bytes) -> bool:
        if len(packet) < 52 or packet[6] != proto.UDP or packet[8:24] != self.src.packed \
                or int.from_bytes(packet[42:44], "big") != self.port:
            return False
        self.arrived[int.from_bytes(packet[48:52], "big")] += 1
        return True

    def lost(self) -> list[int]:
        return [seq for seq in range(len(self.sent_at)) if not self.arrived[seq]]


def sink(*streams: Stream):
    return lambda packet: any(stream.received(packet) for stream in streams)


def multi_coa_world(mn_flows: str, cn_flows: str = "", **kwargs) -> SimWorld:
    """The lab's world (split SA layout) with an MN bound on both links and these flows."""
    world = SimWorld(profiles=CLEAN, layout="split", **kwargs)
    mn = world.config_paths["mn"]
    mn.write_text(mn.read_text().replace("[mobility]\n", "[mobility]\nmultiple_care_of = true\n",
                                         1) + mn_flows)
    cn = world.config_paths["cn"]
    cn.write_text(cn.read_text() + cn_flows)
    return world


def flow(name: str, port: int, send: str, remote: str | None = None) -> str:
    where = f'remote = "{remote}"\n' if remote else ""
    return (f'\n[[flow]]\nname = "{name}"\nprotocol = "udp"\n{where}'
            f'local_ports = {port}\nremote_ports = {port}\nsend = "{send}"\n')


async def both_links_bound(world: SimWorld) -> None:
    hoa, cn = IPv6Address(HOA).packed, IPv6Address(CN).packed
    await until(world, "both links bound at the CN", lambda: (
        len(world.nodes["mn"].mobility.paths_to(cn)) == 2
        and len(world.nodes["cn"].mobility.paths_to(hoa)) == 2), 10)


def data_on_links(world: SimWorld) -> EspOnLinks:
    """The (SPI, sequence number) of the MN's data ESP to the CN seen on each link."""
    return EspOnLinks(world, skip_spi=MN_CN_MH_SPI)


def esp_drops(node) -> Counter[str]:
    drops: Counter[str] = Counter()
    for info in node.sad.dump(publish=False):
        esp = node.sad.esp(info.spi, info.direction, info.dst)
        if esp is not None:
            drops.update(esp.drops)
    return drops


async def one_stream(world: SimWorld, port: int, seconds: float) -> tuple[Stream, EspOnLinks]:
    """Both links bound, then one MN -> CN stream to *port* for *seconds*; the
    stream and what left on each link."""
    await world.start_all()
    await both_links_bound(world)
    seen = data_on_links(world)
    stream = Stream(world, "mn", HOA, CN, port)
    world.tun_sinks["cn"] = sink(stream)
    stream.start()
    await asyncio.sleep(seconds)
    stream.stop()
    await asyncio.sleep(0.5)
    return stream, seen


def test_a_duplicate_flow_goes_on_both_links_and_reaches_the_cn_once() -> None:
    with multi_coa_world(flow("dup", DUP_PORT, "duplicate"), seed=7) as world:
        dup, seen = world.run(one_stream(world, DUP_PORT, 2.0))
        mn, cn = world.nodes["mn"], world.nodes["cn"]
        sent = len(dup.sent_at)
        assert sent >= 199
        assert dup.arrived == Counter(range(sent))            # every datagram exactly once
        wifi, lte = seen.by_link["wifi0"], seen.by_link["lte0"]
        assert set(wifi) == set(lte) and len(wifi) == sent     # the same ESP on both links
        assert max(wifi.values()) == max(lte.values()) == 1
        assert mn.counters["tx_duplicate_copies"] == sent
        assert mn.counters["tx_duplicate_bytes"] > 0
        drops = esp_drops(cn)
        assert drops["duplicate"] == sent and drops["replay"] == 0 and drops["icv"] == 0


async def streams_across(world, kill: Callable[[], None], *,
                         after: float) -> tuple[dict[str, Stream], float]:
    """A duplicate and a best stream each way over both bound links; *kill*
    one second in, the streams stopped *after* seconds later.  Returns the
    streams and the (virtual) time of the kill."""
    await world.start_all()
    await both_links_bound(world)
    streams = {
        "mn-dup": Stream(world, "mn", HOA, CN, DUP_PORT),
        "mn-best": Stream(world, "mn", HOA, CN, BEST_PORT),
        "cn-dup": Stream(world, "cn", CN, HOA, DUP_PORT),
        "cn-best": Stream(world, "cn", CN, HOA, BEST_PORT),
    }
    world.tun_sinks["cn"] = sink(streams["mn-dup"], streams["mn-best"])
    world.tun_sinks["mn"] = sink(streams["cn-dup"], streams["cn-best"])
    for stream in streams.values():
        stream.start()
    await asyncio.sleep(1.0)
    killed = world.loop.time()
    kill()
    await asyncio.sleep(after)
    for stream in streams.values():
        stream.stop()
    await asyncio.sleep(0.5)
    return streams, killed


def test_a_link_dying_loses_nothing_of_a_duplicate_flow() -> None:
    """Both directions, a duplicate flow and a best flow each; wifi0's carrier
    drops mid-stream with no warning (no deregistration first).  The duplicate
    flows lose nothing; a best flow loses at most what the dead link held and
    what the CN sent before the MN's path fell silent (1.5 x the 10 ms rhythm
    of the MN's data: then it hedges on lte0, well before the MN's next
    datagram over lte0 moves its choice)."""
    mn_flows = flow("dup", DUP_PORT, "duplicate")
    cn_flows = flow("dup", DUP_PORT, "duplicate", remote=HOA)
    with multi_coa_world(mn_flows, cn_flows, seed=11) as world:
        streams, killed = world.run(streams_across(
            world, lambda: world.set_link("mn", "wifi0", False), after=2.0))
        hedged = world.nodes["cn"].counters["tx_hedge_copies"]
    for name, stream in streams.items():
        assert len(stream.sent_at) >= 299, name
        assert all(count == 1 for count in stream.arrived.values()), name
    assert streams["mn-dup"].lost() == [] and streams["cn-dup"].lost() == []
    # A best flow: only datagrams sent around the moment wifi0 died.
    in_flight = 0.005 + 2 * 0.030 + 1 / RATE
    for name in ("mn-best", "cn-best"):
        stream = streams[name]
        lost = stream.lost()
        assert all(killed - 0.006 <= stream.sent_at[seq] <= killed + in_flight
                   for seq in lost), (name, lost, [stream.sent_at[s] - killed for s in lost])
    assert streams["cn-best"].lost(), "the best flow lost nothing: the test shows no difference"
    # The hedge: what the CN sent from 20 ms on went on lte0 as well (without
    # it, the datagram of 20 ms is lost too: the MN's first over lte0 arrives at 25).
    assert hedged > 0
    assert all(streams["cn-best"].sent_at[seq] - killed < 0.015
               for seq in streams["cn-best"].lost())


def test_a_link_dying_silently_costs_a_best_flow_only_until_its_silence_shows() -> None:
    """wifi0 stops carrying anything and nobody is told (no carrier event: the
    MN keeps both bindings, its link quality has not caught up): the duplicate
    flows still lose nothing, and each best flow loses only what it sent
    before its path had been silent for 1.5 x its usual gap; from then on a
    hedge copy of each datagram goes on lte0, the MN's for as long as the CN
    is heard on lte0 only (without the hedge the MN's best flow lost all it
    sent on wifi0 for as long as the test ran).  The MN's hedge also asks for
    a probe of wifi0 at once: unanswered, it moves the MN's choice to lte0
    within the overdue rule's quarter second, and the hedge ends there."""
    mn_flows = flow("dup", DUP_PORT, "duplicate")
    cn_flows = flow("dup", DUP_PORT, "duplicate", remote=HOA)
    with multi_coa_world(mn_flows, cn_flows, seed=13) as world:
        streams, killed = world.run(streams_across(
            world, lambda: world.network.set_up("mn", "wifi0", False), after=1.0))
        hedged = {node: world.nodes[node].counters["tx_hedge_copies"] for node in ("mn", "cn")}
        mn = world.nodes["mn"]
        best = mn.link_quality.best(["wifi0", "lte0"], world.loop.time())
        probes = mn.link_prober.probes
    for name, stream in streams.items():
        assert len(stream.sent_at) >= 199, name
        assert all(count == 1 for count in stream.arrived.values()), name
    assert streams["mn-dup"].lost() == [] and streams["cn-dup"].lost() == []
    for name in ("mn-best", "cn-best"):
        stream = streams[name]
        assert all(stream.sent_at[seq] - killed < 0.015 for seq in stream.lost()), name
    # The MN hedged every best datagram it sent after that until its probe of
    # wifi0 went unanswered (0.25 s, MIN_OVERDUE), not for the whole second.
    assert 15 <= hedged["mn"] <= 40 and hedged["cn"] > 0, hedged
    assert best == "lte0" and probes >= 1


def test_a_link_flow_goes_only_on_its_link() -> None:
    with multi_coa_world(flow("lte-only", LINK_PORT, "link:lte0"), seed=5) as world:
        stream, seen = world.run(one_stream(world, LINK_PORT, 1.0))
        counters = world.nodes["mn"].counters
    sent = len(stream.sent_at)
    assert stream.arrived == Counter(range(sent))
    assert len(seen.by_link["lte0"]) == sent and not seen.by_link["wifi0"]
    assert counters["tx_duplicate_copies"] == 0 and counters["tx_flow_link_unbound"] == 0


def test_a_hedge_stops_once_the_silent_path_carries_again_even_when_the_spare_is_faster_one_way(
        ) -> None:
    """wifi0 is the MN's best link (the shorter round trip) but the slower way
    to the CN (20 ms up, 1 ms down; lte0 12 ms each way).  The CN's datagrams
    to wifi0 are dropped for 50 ms and nothing else: the MN hedges on lte0,
    and as the copies over lte0 arrive first, the CN's choice follows them.
    Once wifi0 carries again the MN must not go on doubling its best flow
    for as long as the CN talks: wifi0 is silent only because the hedge
    itself moved the CN away from it."""
    with multi_coa_world("", seed=17) as world:
        access = world.network.access
        access[("mn", "wifi0")].uplink.profile = LinkProfile(delay_ms=20.0)
        access[("mn", "wifi0")].downlink.profile = LinkProfile(delay_ms=1.0)
        access[("mn", "lte0")].uplink.profile = LinkProfile(delay_ms=12.0)
        access[("mn", "lte0")].downlink.profile = LinkProfile(delay_ms=12.0)
        wifi = IPv6Address(COA["wifi0"]).packed
        window: list[float] = []

        def drop_to_wifi(sender, packet: bytes, destination) -> bool:
            now = world.loop.time()
            return bool(window) and window[0] <= now < window[1] and sender.node == "cn" \
                and packet[24:40] == wifi

        world.network.interceptors.append(drop_to_wifi)

        async def scenario():
            await world.start_all()
            await both_links_bound(world)
            streams = {"mn-best": Stream(world, "mn", HOA, CN, BEST_PORT),
                       "cn-best": Stream(world, "cn", CN, HOA, BEST_PORT)}
            world.tun_sinks["cn"] = sink(streams["mn-best"])
            world.tun_sinks["mn"] = sink(streams["cn-best"])
            for stream in streams.values():
                stream.start()
            await asyncio.sleep(1.0)
            mn = world.nodes["mn"]
            best = mn.link_quality.best(["wifi0", "lte0"], world.loop.time())
            before = mn.counters["tx_hedge_copies"]
            start = world.loop.time()
            window[:] = [start, start + 0.05]
            await asyncio.sleep(0.5)
            during = mn.counters["tx_hedge_copies"] - before
            settled = mn.counters["tx_hedge_copies"]
            await asyncio.sleep(2.0)
            after = mn.counters["tx_hedge_copies"] - settled
            still = mn.link_quality.best(["wifi0", "lte0"], world.loop.time())
            for stream in streams.values():
                stream.stop()
            await asyncio.sleep(0.3)
            return best, still, before, during, after
        best, still, before, during, after = world.run(scenario())
    assert best == still == "wifi0"
    assert before == 0, "the MN hedged before wifi0 fell silent"
    assert during > 0, "the MN did not hedge while the CN's datagrams to wifi0 were dropped"
    assert after <= 10, f"the MN still doubled {after} best datagrams in the 2 s after"


def test_when_only_the_way_to_the_cn_breaks_on_the_best_link_the_hedge_keeps_most_of_the_flow(
        ) -> None:
    """wifi0 still answers the HA (its probes come back) but nothing passes
    between it and the CN.  The probe's answer pauses the hedge for
    HEDGE_PROBE_TRUST only; still silent then, the MN hedges again (one
    probe a second at most): the best flow keeps most of its datagrams."""
    with multi_coa_world("", seed=19) as world:
        wifi = IPv6Address(COA["wifi0"]).packed
        cn = IPv6Address(CN).packed
        broken: list[bool] = []

        def cut(sender, packet: bytes, destination) -> bool:
            if not broken or len(packet) < 40:
                return False
            return (sender.node == "cn" and packet[24:40] == wifi) or \
                (sender.node == "mn" and sender.name == "wifi0" and packet[24:40] == cn)

        world.network.interceptors.append(cut)

        async def scenario():
            await world.start_all()
            await both_links_bound(world)
            stream = Stream(world, "mn", HOA, CN, BEST_PORT)
            back = Stream(world, "cn", CN, HOA, BEST_PORT)
            world.tun_sinks["cn"] = sink(stream)
            world.tun_sinks["mn"] = sink(back)
            stream.start()
            back.start()
            await asyncio.sleep(1.0)
            broken.append(True)
            cut_at = world.loop.time()
            await asyncio.sleep(3.0)
            stream.stop()
            back.stop()
            await asyncio.sleep(0.3)
            mn = world.nodes["mn"]
            return stream, cut_at, mn.link_prober.probes, \
                mn.link_quality.best(["wifi0", "lte0"], world.loop.time())
        stream, cut_at, probes, best = world.run(scenario())
    after = [seq for seq, at in enumerate(stream.sent_at) if at > cut_at + 0.05]
    delivered = sum(1 for seq in after if stream.arrived[seq])
    assert best == "wifi0"                      # link quality sees nothing wrong
    assert delivered >= 0.6 * len(after), (delivered, len(after), probes)
