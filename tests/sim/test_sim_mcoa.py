"""Several bindings at once (RFC 5648 BIDs, one per link) on running nodes.

The MN has ``[mobility] multiple_care_of = true`` and two links (wifi0,
lte0); the HA and the CN keep up to ``max_care_of_addresses`` bindings per
home address (docs/multi-coa.md).  The draft's own SA layout
(``layout="split"``: MH and data in separate SAs between the MN and the CN)
makes the data rules do the accepting, so the remap sets are what is tested.
"""

from __future__ import annotations

import asyncio
import struct
from ipaddress import IPv6Address

from vmip.ipsec.sa import Direction, Mode
from vmip.lab.emulation import LinkProfile
from vmip.mobility import events as ev
from vmip.sim.scenario import ProbeStream, udp_probe
from vmip.sim.world import SimWorld

HA, CN = IPv6Address("2001:db8:100::1"), IPv6Address("2001:db8:20::2")
HOA = IPv6Address("2001:db8:100::10")
WIFI, LTE = IPv6Address("2001:db8:31::2"), IPv6Address("2001:db8:32::2")
#: The MN's data SA towards the CN (mn-cn-out), and the CN's back (split layout).
MN_CN_DATA_SPI, CN_MN_DATA_SPI = 0x1301, 0x1302
CLEAN = {("mn", "wifi0"): LinkProfile(delay_ms=5.0), ("mn", "lte0"): LinkProfile(delay_ms=30.0)}


def configure(world: SimWorld, *, multiple_care_of: bool = True,
              peers_max: int | None = None) -> None:
    """The MN registers both links (or not); the HA and CN keep *peers_max* per HoA."""
    path = world.config_paths["mn"]
    text = path.read_text().replace(
        'correspondents = ["2001:db8:20::2", "2001:db8:100::20"]',
        'correspondents = ["2001:db8:20::2"]')   # the CN only: mn2 is not started
    if multiple_care_of:
        text = text.replace('tunnel = "esp"', 'tunnel = "esp"\nmultiple_care_of = true', 1)
    path.write_text(text)
    if peers_max is not None:
        for name in ("ha", "cn"):
            path = world.config_paths[name]
            text = path.read_text()
            assert "[mobility]\n" in text
            path.write_text(text.replace("[mobility]\n",
                                         f"[mobility]\nmax_care_of_addresses = {peers_max}\n", 1))


async def start(world: SimWorld) -> None:
    for name in ("ha", "cn", "mn"):
        await world.start(name)


async def until(world: SimWorld, what: str, check, timeout: float) -> float:
    start_at = world.loop.time()
    while not check():
        if world.loop.time() - start_at > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.005)
    return world.loop.time() - start_at


def bound_bids(world: SimWorld, peer: IPv6Address) -> dict[int, IPv6Address]:
    """The (BID, CoA) pairs the MN holds bound with *peer*."""
    entries = world.nodes["mn"].mobility.status()["mn"]["binding_update_list"]
    return {e["bid"]: IPv6Address(e["coa"]) for e in entries
            if e["peer"] == str(peer) and e["state"] == "bound" and e.get("bid")}


def both_bound(world: SimWorld) -> bool:
    want = {1: WIFI, 2: LTE}
    return bound_bids(world, HA) == want and bound_bids(world, CN) == want \
        and [p.remote for p in world.nodes["cn"].mobility.paths_to(HOA.packed)] \
        in ([WIFI, LTE], [LTE, WIFI])


def wire_log(world: SimWorld) -> list[tuple[float, str, str, bytes]]:
    """Every datagram sent from a link that is up, when it was sent:
    (time, sender, sender's link, packet)."""
    seen: list[tuple[float, str, str, bytes]] = []

    def observe(src, packet: bytes, destination) -> bool:
        seen.append((world.loop.time(), src.node, src.name, packet))
        return False                      # look, never take
    world.network.interceptors.append(observe)
    return seen


def esp_spi(packet: bytes) -> int | None:
    if len(packet) < 44 or packet[6] != 50:
        return None
    return struct.unpack_from(">I", packet, 40)[0]


def bindings_text(world: SimWorld, node: str, monkeypatch, capsys) -> tuple[str, dict]:
    """What ``vmip bindings`` prints for *node* (and its ``--json``), through the
    node's control handler."""
    import argparse
    import json

    from vmip.cli import node as cli_node

    handler = world.nodes[node].control_handlers.handlers()["mobility"]
    client = type("Client", (), {"call": lambda self, command, **args: handler(args)})()
    monkeypatch.setattr(cli_node, "_client", lambda args: client)
    capsys.readouterr()
    cli_node._bindings(argparse.Namespace(json=False))
    text = capsys.readouterr().out
    cli_node._bindings(argparse.Namespace(json=True))
    return text, json.loads(capsys.readouterr().out)


def test_both_links_are_bound_at_the_ha_and_the_cn_and_data_is_accepted_on_both(
        monkeypatch, capsys) -> None:
    with SimWorld(seed=3, profiles=CLEAN, layout="split") as world:
        configure(world)

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            mn, cn = world.nodes["mn"].mobility, world.nodes["cn"].mobility
            # The MN's data from each CoA reaches the CN: the send path names the link.
            got: list[bytes] = []
            world.tun_sinks["cn"] = got.append
            sent_from: list[bytes] = []
            log = wire_log(world)
            for path in mn.paths_to(CN.packed):
                node = world.nodes["mn"]
                sends: dict = {}
                for seq in range(3):
                    inner = udp_probe(HOA, CN, seq, world.loop.time())
                    result = node.engine.outbound(inner, world.loop.time())
                    wire = node.mobility.outbound(result.packet, path.ancillary(),
                                                  world.loop.time())
                    node._route(inner, wire, sends)
                    sent_from.append(wire[8:24])
                node._flush(sends)
            await asyncio.sleep(0.5)
            # The HA takes the MN's reverse tunnel from its other bound CoA too.
            node = world.nodes["mn"]
            inner = echo_probe(HOA, CN, 77)
            wire = node.mobility.outbound(node.engine.outbound(inner, world.loop.time()).packet,
                                          None, world.loop.time())
            assert wire is not None and wire[8:24] == WIFI.packed     # the primary's tunnel
            node.links["lte0"].send(wire[:8] + LTE.packed + wire[24:], ("192.0.2.2", 6275))
            await asyncio.sleep(0.2)
            return mn, cn, got, sent_from, log

        mn, cn, got, sent_from, log = world.run(scenario())
        ha = world.nodes["ha"].mobility
        assert [p.link for p in mn.paths_to(CN.packed)] == ["wifi0", "lte0"]   # primary first
        assert sent_from == [WIFI.packed] * 3 + [LTE.packed] * 3
        assert len(got) == 7, "the CN did not accept the MN's data from both CoAs"
        assert echo_seq(got[-1]) == 77, "the HA did not forward the tunnel packet from lte"
        # Each copy left on its own link.
        data = [(link, packet[8:24]) for _t, node, link, packet in log
                if node == "mn" and esp_spi(packet) == MN_CN_DATA_SPI]
        assert data == [("wifi0", WIFI.packed)] * 3 + [("lte0", LTE.packed)] * 3
        # The remap listings show the sets (docs/iro-remap.md).
        cn_rules = cn.remap.format_rules()
        assert f"dir: in, SPI: {MN_CN_DATA_SPI}, exp. src: {{{WIFI}, {LTE}}}, remap. src: {HOA}" \
            in cn_rules
        assert f"dir: out, SPI: {CN_MN_DATA_SPI}, exp. dst: {HOA}, " \
               f"remap. dst: ancillary or {WIFI}" in cn_rules
        mn_rules = mn.remap.format_rules()
        assert f"dir: in, SPI: {CN_MN_DATA_SPI}, exp. dst: {{{WIFI}, {LTE}}}, " \
               f"remap. dst: {HOA}" in mn_rules
        # The HA holds both, the tunnel goes to the primary one.
        assert ha.holder_of(WIFI.packed) == HOA and ha.holder_of(LTE.packed) == HOA
        assert ha.paths_to(HOA.packed) == []
        tunnel = [info for info in world.nodes["ha"].sad.dump(publish=False)
                  if info.mode is Mode.TUNNEL and info.direction is Direction.OUT
                  and info.dst in (WIFI, LTE)]
        assert [info.dst for info in tunnel] == [WIFI]
        # vmip bindings shows the BIDs and the paths.
        text, status = bindings_text(world, "mn", monkeypatch, capsys)
        assert "bound paths" in text and "lte0" in text and str(LTE) in text
        assert status["mn"]["care_of_addresses"] == [
            {"bid": 1, "link": "wifi0", "coa": str(WIFI)},
            {"bid": 2, "link": "lte0", "coa": str(LTE)}]
        assert [p["bid"] for p in status["paths"][0]["paths"]] == [1, 2]
        assert {(e["peer"], e["bid"]) for e in status["mn"]["binding_update_list"]} == {
            (str(HA), 1), (str(HA), 2), (str(CN), 1), (str(CN), 2)}
        text, status = bindings_text(world, "cn", monkeypatch, capsys)
        assert "bound paths" in text and str(LTE) in text
        assert sorted(e["bid"] for e in status["cn"]["binding_cache"]) == [1, 2]
        assert status["paths"][0]["mirror"] == str(LTE)    # its latest data came on lte


ECHO_PORT = 7   # the lab's MN sends UDP port 7 to the CN through the HA's tunnel


def echo_probe(src: IPv6Address, dst: IPv6Address, seq: int) -> bytes:
    from vmip.wire.ipv6 import build_ipv6_header
    from vmip.wire.udp import build_udp
    segment = build_udp(ECHO_PORT, ECHO_PORT, struct.pack("!I", seq), src.packed, dst.packed)
    return build_ipv6_header(src.packed, dst.packed, 17, len(segment)) + segment


def echo_seq(packet: bytes) -> int | None:
    if len(packet) >= 52 and packet[6] == 17 and packet[42:44] == ECHO_PORT.to_bytes(2, "big"):
        return struct.unpack_from("!I", packet, 48)[0]
    return None


class Streams:
    """Probes both ways between MN and CN, direct (IRO) and through the HA's
    tunnel (UDP port 7: the lab's MN sends it through the tunnel, the CN
    sends it to the HoA in clear, the HA tunnels it to the MN)."""

    def __init__(self, world: SimWorld, rate: float = 100) -> None:
        self.world = world
        self.to_cn = ProbeStream(world, "mn", HOA, CN, rate)
        self.to_mn = ProbeStream(world, "cn", CN, HOA, rate)
        self.tunnel_sent: list[float] = []
        self.tunnel_got: list[int] = []
        self.tunnel_back_got: list[int] = []
        self._handle = None
        world.tun_sinks["cn"] = self._cn_got
        world.tun_sinks["mn"] = self._mn_got
        self.interval = 1.0 / rate

    def _cn_got(self, packet: bytes) -> None:
        seq = echo_seq(packet)
        if seq is not None:
            self.tunnel_got.append(seq)
        else:
            self.to_cn.received(packet)

    def _mn_got(self, packet: bytes) -> None:
        seq = echo_seq(packet)
        if seq is not None:
            self.tunnel_back_got.append(seq)
        else:
            self.to_mn.received(packet)

    def _tick(self) -> None:
        seq = len(self.tunnel_sent)
        self.world.tuns["mn"].inject(echo_probe(HOA, CN, seq))
        self.world.tuns["cn"].inject(echo_probe(CN, HOA, seq))
        self.tunnel_sent.append(self.world.loop.time())
        self._handle = self.world.loop.call_later(self.interval, self._tick)

    def start(self) -> None:
        self.to_cn.start()
        self.to_mn.start()
        self._tick()

    def stop(self) -> None:
        self.to_cn.stop()
        self.to_mn.stop()
        if self._handle is not None:
            self._handle.cancel()


def lost(arrived, sent_times: list[float], after: float) -> list[int]:
    got = set(arrived)
    return [seq for seq, t in enumerate(sent_times) if t >= after and seq not in got]


def sent_times(stream: ProbeStream, begin: float) -> list[float]:
    return [begin + seq * stream.interval for seq in range(stream.sent)]


def first_event(world: SimWorld, node: str, check) -> float | None:
    for timed in world.nodes[node].events.timeline:
        if check(timed.event):
            return timed.t
    return None


def test_wifi_dies_abruptly_traffic_goes_on_over_lte_and_nothing_goes_to_the_dead_coa() -> None:
    with SimWorld(seed=5, profiles=CLEAN, layout="split") as world:
        configure(world)

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            streams = Streams(world)
            begin = world.loop.time()
            streams.start()
            await asyncio.sleep(1.0)
            log = wire_log(world)
            died = world.loop.time()
            world.set_link("mn", "wifi0", False)
            cn = world.nodes["cn"].mobility
            await until(world, "the CN's best path is lte",
                        lambda: [p.remote for p in cn.paths_to(HOA.packed)][:1] == [LTE], 1)
            switched = world.loop.time()
            await until(world, "wifi's binding gone at the CN and HA",
                        lambda: bound_bids(world, CN) == {2: LTE}
                        and bound_bids(world, HA) == {2: LTE}, 2)
            await asyncio.sleep(1.0)
            streams.stop()
            await asyncio.sleep(0.3)
            return streams, begin, died, switched, log

        streams, begin, died, switched, log = world.run(scenario())
        # The CN's best path followed the MN within one lte round trip (60 ms).
        assert switched - died < 0.07, switched - died
        to_cn_lost = lost([a.seq for a in streams.to_cn.arrivals],
                          sent_times(streams.to_cn, begin), died)
        to_mn_lost = lost([a.seq for a in streams.to_mn.arrivals],
                          sent_times(streams.to_mn, begin), died)
        tunnel_lost = lost(streams.tunnel_got, streams.tunnel_sent, died)
        tunnel_back_lost = lost(streams.tunnel_back_got, streams.tunnel_sent, died)
        # What was in flight on wifi when it died, and what the CN and HA sent
        # there before they heard of it: at most one lte round trip's worth.
        assert len(to_cn_lost) <= 2, to_cn_lost
        assert len(to_mn_lost) <= 8, to_mn_lost
        assert len(tunnel_lost) <= 8, tunnel_lost
        assert len(tunnel_back_lost) <= 8, tunnel_back_lost
        assert len(streams.tunnel_back_got) > 200
        assert streams.to_cn.sent > 200 and len(streams.to_mn.arrivals) > 200
        # Nothing to the dead CoA once the CN or HA processed wifi's removal.
        for node in ("cn", "ha"):
            gone = first_event(world, node, lambda e: isinstance(e, ev.PathsChanged)
                               and e.peer == HOA and WIFI not in [c for _b, c in e.accept])
            assert gone is not None and gone > died
            late = [t for t, sender, _link, packet in log
                    if sender == node and packet[24:40] == WIFI.packed and t > gone]
            assert late == [], f"{node} sent {len(late)} datagrams to the dead CoA"
        # The HA's tunnel now ends at lte.
        tunnel = [info.dst for info in world.nodes["ha"].sad.dump(publish=False)
                  if info.mode is Mode.TUNNEL and info.direction is Direction.OUT
                  and info.dst in (WIFI, LTE)]
        assert tunnel == [LTE]
        # The CN and the HA forgot where wifi's CoA was; lte's stays theirs.
        for node in ("cn", "ha"):
            learned = {row["address"] for row in world.nodes[node].locators.rows()
                       if row["source"] == "learned"}
            assert str(WIFI) not in learned and str(LTE) in learned, (node, learned)


def test_wifi_comes_back_and_is_registered_again_then_primary_after_the_hold_down() -> None:
    with SimWorld(seed=6, profiles=CLEAN, layout="split") as world:
        configure(world)

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            await asyncio.sleep(1.0)   # wifi has been up a while: not a flapping link
            world.set_link("mn", "wifi0", False)
            await until(world, "lte only", lambda: bound_bids(world, CN) == {2: LTE}, 2)
            mn = world.nodes["mn"]
            assert mn.active_link == "lte0"
            back = world.loop.time()
            world.set_link("mn", "wifi0", True)
            took = await until(world, "both bound again", lambda: both_bound(world), 2)
            primary_then = mn.active_link
            await until(world, "wifi primary again", lambda: mn.active_link == "wifi0", 4)
            return took, primary_then, world.loop.time() - back

        took, primary_then, primary_after = world.run(scenario())
        # Registered at once (a BU round trip), primary only after the hold-down.
        assert took < 0.5
        assert primary_then == "lte0"
        assert primary_after >= 2.0


def test_peers_without_rfc_5648_get_one_binding_and_traffic_works() -> None:
    """max_care_of_addresses = 0 at the HA and the CN: they skip the BID option
    like any unknown one and answer without it; the MN keeps one binding with
    each, on its primary link, and moves it as without multiple_care_of."""
    with SimWorld(seed=7, profiles=CLEAN, layout="split") as world:
        configure(world, peers_max=0)

        def one_binding(coa: IPv6Address) -> bool:
            entries = world.nodes["mn"].mobility.status()["mn"]["binding_update_list"]
            mine = [(e["peer"], e["coa"], e["state"]) for e in entries]
            return sorted(mine) == sorted([(str(HA), str(coa), "bound"),
                                           (str(CN), str(coa), "bound")])

        async def scenario():
            await start(world)
            await until(world, "one binding on wifi", lambda: one_binding(WIFI), 5)
            streams = Streams(world)
            begin = world.loop.time()
            streams.start()
            await asyncio.sleep(1.0)
            rules = world.nodes["cn"].mobility.remap.format_rules()
            paths = (world.nodes["mn"].mobility.paths_to(CN.packed),
                     world.nodes["cn"].mobility.paths_to(HOA.packed))
            died = world.loop.time()
            world.set_link("mn", "wifi0", False)
            await until(world, "one binding on lte", lambda: one_binding(LTE), 3)
            await asyncio.sleep(1.0)
            streams.stop()
            await asyncio.sleep(0.3)
            return streams, begin, rules, paths, died

        streams, begin, rules, paths, died = world.run(scenario())
        assert paths == ([], [])
        # Example 3's one-address rules, as without RFC 5648.
        assert f"dir: in, SPI: {MN_CN_DATA_SPI}, exp. src: {WIFI}, remap. src: {HOA}" in rules
        assert f"dir: out, SPI: {CN_MN_DATA_SPI}, exp. dst: {HOA}, remap. dst: {WIFI}" in rules
        cn = world.nodes["cn"].mobility.cn
        assert [entry.coa for entry in cn.bindings()] == [LTE]
        assert world.nodes["ha"].mobility.ha.binding(HOA).coa == LTE
        # Probes flowed both ways before and after the move; what the CN sent to
        # wifi before the BU from lte reached it is lost, nothing more.
        for stream in (streams.to_cn, streams.to_mn):
            assert len([a for a in stream.arrivals if a.sent < died]) > 90
            assert len([a for a in stream.arrivals if a.sent > died]) > 90
            assert len(lost([a.seq for a in stream.arrivals], sent_times(stream, begin),
                            died)) <= 8
        assert len(lost(streams.tunnel_got, streams.tunnel_sent, died)) <= 8
        assert len(lost(streams.tunnel_back_got, streams.tunnel_sent, died)) <= 8
        assert len(streams.tunnel_got) > 180 and len(streams.tunnel_back_got) > 180


def test_an_attacker_cannot_move_the_cns_mirror_or_get_a_packet_accepted() -> None:
    """The CN's best path mirrors the CoA of the MN's latest data that passed ESP
    verification and the anti-replay window.  An attacker on the path sends, from
    the MN's other bound CoA: a replay of an authentic packet, a forged one (bad
    ICV), and from an address no binding names a fresh authentic packet it held
    back.  None is delivered and the mirror stays on wifi."""
    with SimWorld(seed=8, profiles=CLEAN, layout="split") as world:
        configure(world)
        captured: list[bytes] = []
        hold_next = [False]

        def tap(sender, packet: bytes, destination) -> bool:
            if sender.node == "mn" and esp_spi(packet) == MN_CN_DATA_SPI:
                captured.append(packet)
                if hold_next[0]:
                    hold_next[0] = False
                    return True       # held back: the CN never sees the original
            return False
        world.network.interceptors.append(tap)
        eve = world.add_host("eve", "203.0.113.66")
        cn_endpoint = ("192.0.2.18", 6275)

        def from_address(packet: bytes, source: IPv6Address) -> bytes:
            return packet[:8] + source.packed + packet[24:]

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            cn_node = world.nodes["cn"]
            cn = cn_node.mobility
            delivered: list[bytes] = []
            world.tun_sinks["cn"] = delivered.append
            probes = ProbeStream(world, "mn", HOA, CN, 50)
            probes.start()
            await until(world, "mirror on wifi", lambda: cn.paths.mirror(HOA) == WIFI, 1)
            probes.stop()
            await asyncio.sleep(0.2)
            before = (len(delivered), dict(cn_node.engine.drops), dict(cn.remap.counters))
            authentic = captured[-1]
            # 1: a replay of an authentic packet, from the MN's other bound CoA.
            eve.send(from_address(authentic, LTE), cn_endpoint)
            # 2: a forged one from there: a sequence number ahead, a flipped byte.
            forged = bytearray(from_address(authentic, LTE))
            forged[44:48] = (struct.unpack_from(">I", authentic, 44)[0] + 100).to_bytes(4, "big")
            forged[-1] ^= 0xFF
            eve.send(bytes(forged), cn_endpoint)
            await asyncio.sleep(0.2)
            mirror_after_attacks = cn.paths.mirror(HOA)
            # 3: a fresh authentic packet, held back and re-sent from an address
            # no binding of that HoA names.
            hold_next[0] = True
            world.tuns["mn"].inject(udp_probe(HOA, CN, 999, world.loop.time()))
            await asyncio.sleep(0.1)
            held = captured[-1]
            eve.send(from_address(held, IPv6Address("2001:db8:666::1")), cn_endpoint)
            await asyncio.sleep(0.2)
            after = (len(delivered), dict(cn_node.engine.drops), dict(cn.remap.counters))
            return before, after, mirror_after_attacks, cn.paths.mirror(HOA)

        before, after, mirror_after_attacks, mirror_end = world.run(scenario())
        assert mirror_after_attacks == WIFI and mirror_end == WIFI
        assert after[0] == before[0], "the CN delivered an attacker's packet"
        drops = {k: after[1].get(k, 0) - before[1].get(k, 0) for k in after[1]}
        assert drops.get("esp_failed", 0) == 2      # the replay and the forgery
        remap = {k: after[2].get(k, 0) - before[2].get(k, 0) for k in after[2]}
        assert remap.get("in_src_mismatch", 0) == 1    # the unbound source
        assert world.nodes["cn"].mobility.paths.counters["mirror_moved"] == 1
        counters = world.nodes["cn"].control_handlers.handlers()["counters"]({})
        assert counters["paths"] == {"mirror_moved": 1}


def test_a_clean_stop_deregisters_every_binding() -> None:
    """RFC 6275 §11.7.1 with RFC 5648: the MN's lifetime-0 BUs remove all its
    bindings at the HA and the CN, and their BAs still reach it (its MH rules
    keep expecting its CoAs while it deregisters)."""
    with SimWorld(seed=9, profiles=CLEAN, layout="split") as world:
        configure(world)

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            node = world.nodes["mn"]
            stopping = world.loop.time()
            await world.stop("mn")
            return node, stopping

        node, stopping = world.run(scenario())
        assert node.counters["stop_step_timeout"] == 0, "the MN did not hear its BAs"
        answered = {timed.event.peer for timed in node.events.timeline
                    if timed.t >= stopping and isinstance(timed.event, ev.BindingDeregistered)}
        assert answered == {HA, CN}
        assert world.nodes["ha"].mobility.ha.binding(HOA) is None
        assert world.nodes["cn"].mobility.cn.bindings() == []
        assert world.nodes["cn"].mobility.paths_to(HOA.packed) == []
        assert world.nodes["ha"].mobility.holder_of(WIFI.packed) is None
        assert world.nodes["ha"].mobility.holder_of(LTE.packed) is None


def test_an_ike_rekey_keeps_every_coa_in_the_mns_rules() -> None:
    """IKEv2 keys: a CHILD_SA rekey brings new SPIs (draft §6.3), whose MH rules
    must still expect both CoAs, as must the old ones until they go."""
    with SimWorld(seed=10, profiles=CLEAN, keys="ike") as world:
        configure(world)

        def mh_sets() -> set[tuple[IPv6Address, ...]]:
            return {rule.expected_addresses for rule in world.nodes["mn"].mobility.remap.rules()
                    if rule.direction is Direction.IN and rule.owner == f"iro-mn:{HA}"}

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 30)
            assert mh_sets() == {(WIFI, LTE)}
            spis = {r.spi for r in world.nodes["mn"].mobility.remap.rules()}
            world.nodes["mn"].keying.rekey("ha")
            await until(world, "a rekeyed SA with rules", lambda: {
                r.spi for r in world.nodes["mn"].mobility.remap.rules()} - spis, 10)
            await asyncio.sleep(0.5)
            return mh_sets()

        assert world.run(scenario()) == {(WIFI, LTE)}


def test_a_flapping_wifi_ends_with_both_links_bound_and_bus_rate_limited() -> None:
    """Wifi goes down and up every 0.1 s, eleven times, while lte stays: each
    change would add or remove wifi's binding, a BU each time.  RFC 6275
    §11.8 holds per binding (at most three BUs a second for one BID to one
    peer) because the watcher binds a flapping link again only after
    REBIND_WINDOW; once wifi stays up both links end bound at the HA and the
    CN, the CN's paths with them."""
    with SimWorld(seed=11, profiles=CLEAN, layout="split") as world:
        configure(world)

        async def scenario():
            await start(world)
            await until(world, "both links bound", lambda: both_bound(world), 5)
            begin = world.loop.time()
            for flip in range(11):
                world.set_link("mn", "wifi0", flip % 2 == 1)
                await asyncio.sleep(0.1)
            world.set_link("mn", "wifi0", True)
            await until(world, "both bound again", lambda: both_bound(world), 10)
            return begin

        begin = world.run(scenario())
        sent: dict[tuple[IPv6Address, int | None], list[float]] = {}
        for timed in world.nodes["mn"].events.timeline:
            if timed.t >= begin and isinstance(timed.event, ev.BindingUpdateSent):
                sent.setdefault((timed.event.peer, timed.event.bid), []).append(timed.t)
        assert (HA, 1) in sent and (CN, 1) in sent, "no BU for wifi during the flapping"
        assert world.nodes["mn"].movement.status()["rebinds_held"] > 0
        for key, times in sent.items():
            assert max(sum(1 for t in times if start_at <= t < start_at + 1.0)
                       for start_at in times) <= 3, (key, times)
