"""Mobility scenarios on the in-process network: real nodes, memory ports, virtual time.

No root, no namespaces: every test here runs the same node code as ``vmip
run`` (:class:`vmip.node.runtime.Node`) for the lab's four nodes, joined by
:class:`vmip.sim.network.SimNetwork`, on a :class:`vmip.sim.loop.VirtualTimeLoop`.
Each takes a few seconds of wall time at most.
"""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from vmip.ipsec.sa import Direction
from vmip.lab.emulation import LinkProfile
from vmip.mobility.events import BindingUpdateSent
from vmip.sim.scenario import ProbeStream, SimOptions, demo_profiles, run_sim
from vmip.sim.world import SimWorld

HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA = {"mn": "2001:db8:100::10", "mn2": "2001:db8:100::20"}
COA = {"mn": {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"},
       "mn2": {"wifi0": "2001:db8:41::2", "lte0": "2001:db8:42::2"}}


@pytest.fixture
def world():
    with SimWorld(seed=3, profiles=demo_profiles()) as sim:
        yield sim


def bul(world: SimWorld, node: str) -> dict[str, dict]:
    """The MN's binding update list, by peer."""
    status = world.nodes[node].mobility.status()
    return {e["peer"]: e for e in status["mn"]["binding_update_list"]}


def bound_on(world: SimWorld, node: str, coa: str, peers=(HA, CN)) -> bool:
    entries = bul(world, node)
    return all(entries.get(p, {}).get("state") == "bound" and entries[p]["coa"] == coa
               for p in peers)


async def until(world: SimWorld, what: str, check, timeout: float) -> float:
    """Run the simulation until *check()* holds; returns the virtual time it took."""
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.01)
    return world.loop.time() - start


def test_registration_with_the_ha_the_cn_and_the_other_mn(world) -> None:
    async def scenario():
        await world.start_all()
        await until(world, "mn registered", lambda: bound_on(
            world, "mn", COA["mn"]["wifi0"], (HA, CN, HOA["mn2"])), 5)
        await until(world, "mn2 registered", lambda: bound_on(
            world, "mn2", COA["mn2"]["wifi0"], (HA, CN, HOA["mn"])), 5)
    world.run(scenario())


def test_wifi_lte_wifi_with_address_tests_keeps_probes_flowing(world) -> None:
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        hoa, cn = IPv6Address(HOA["mn"]), IPv6Address(CN)
        out = ProbeStream(world, "mn", hoa, cn, 50)
        back = ProbeStream(world, "cn", cn, hoa, 50)
        world.tun_sinks["cn"], world.tun_sinks["mn"] = out.received, back.received
        out.start()
        back.start()
        for link, up, coa in (("wifi0", False, "lte0"), ("wifi0", True, "wifi0")):
            world.set_link("mn", link, up)
            await until(world, f"bound on {coa}",
                        lambda coa=coa: bound_on(world, "mn", COA["mn"][coa]), 10)
            # The CN challenged the lte CoA once (AOTC/AOTR, draft §4.5.1).
            before = (len(out.arrivals), len(back.arrivals))
            await asyncio.sleep(1.0)
            assert len(out.arrivals) > before[0] + 40 and len(back.arrivals) > before[1] + 40
        out.stop()
        back.stop()
        events = [type(e.event).__name__ for e in world.nodes["mn"].events.timeline]
        assert "AotResponseSent" in events
    world.run(scenario())


def test_both_mobile_nodes_move_at_once(world) -> None:
    """Both MNs leave wifi at the same moment and come back together (draft §5.2.2
    example 4).  On lte both sit behind the NAT, which does no hairpinning: the
    MN-MN binding cannot complete there (docs/iro.md), the HA and CN ones do."""
    async def scenario():
        await world.start_all()
        for node in ("mn", "mn2"):
            await until(world, f"{node} registered", lambda node=node: bound_on(
                world, node, COA[node]["wifi0"], (HA, CN, HOA["mn2" if node == "mn" else "mn"])),
                5)
        for up, link in ((False, "lte0"), (True, "wifi0")):
            world.set_link("mn", "wifi0", up)
            world.set_link("mn2", "wifi0", up)
            await until(world, f"both bound with the HA and the CN on {link}", lambda link=link: (
                bound_on(world, "mn", COA["mn"][link]) and bound_on(world, "mn2",
                                                                    COA["mn2"][link])), 20)
        await until(world, "each bound with the other again on wifi", lambda: bound_on(
            world, "mn", COA["mn"]["wifi0"], (HOA["mn2"],)) and bound_on(
            world, "mn2", COA["mn2"]["wifi0"], (HOA["mn"],)), 20)
    world.run(scenario())


def test_registration_converges_through_30_percent_loss() -> None:
    lossy = LinkProfile(delay_ms=5.0, loss=0.3)
    profiles = {(node, link): lossy for node in ("mn", "mn2") for link in ("wifi0", "lte0")}
    with SimWorld(seed=11, profiles=profiles) as world:
        async def scenario():
            await world.start_all()
            took = await until(world, "registered through loss", lambda: bound_on(
                world, "mn", COA["mn"]["wifi0"]) and bound_on(world, "mn2", COA["mn2"]["wifi0"]),
                60)
            # Retransmissions did the work (RFC 6275 §11.8 back-off).
            sent = [e for e in world.nodes["mn"].events.timeline
                    if isinstance(e.event, BindingUpdateSent) and e.event.attempt > 1]
            return took, sent
        took, retransmitted = world.run(scenario())
    assert retransmitted, "30% loss and no BU retransmission: was the loss applied?"
    assert took < 60


def test_the_roaming_report_is_the_same_for_the_same_seed(tmp_path: Path) -> None:
    reports = []
    for run in range(2):
        path = tmp_path / f"run{run}.json"
        run_sim(SimOptions(duration=16, seed=5, json_path=path), out=lambda _: None)
        reports.append(path.read_bytes())
    assert reports[0] == reports[1]
    report = json.loads(reports[0])
    assert report["summary"]["handovers"] == 3
    assert [h["to"] for h in report["handovers"]] == ["lte0", "wifi0", "lte0"]
    for handover in report["handovers"]:
        assert handover["bu_ba_ms"] is not None
        assert handover["interruption_ms"]["mn_to_cn"] is not None
    other = tmp_path / "other.json"
    run_sim(SimOptions(duration=16, seed=6, json_path=other), out=lambda _: None)
    assert other.read_bytes() != reports[0]    # the seed matters (loss on lte)


def test_the_mn_recovers_after_the_home_agent_restarts(world) -> None:
    """The HA loses its binding cache; static keys resume their sequence numbers
    (docs/ipsec.md), and the MN's next registration restores the tunnel."""
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        await world.stop("ha")
        await world.start("ha")
        assert world.nodes["ha"].mobility.ha.bindings() == []
        # The MN's refresh comes before its lifetime ends (RFC 6275 §11.7.1).
        await until(world, "the HA holds the MN's binding again",
                    lambda: IPv6Address(HOA["mn"]) in [
                        b.hoa for b in world.nodes["ha"].mobility.ha.bindings()], 420)
        hoa = IPv6Address(HOA["mn"])
        # Traffic through the tunnel again: the MN's clear-text class via the HA.
        echo = ProbeStream(world, "mn", hoa, IPv6Address(CN), 20)
        world.tun_sinks["cn"] = echo.received
        echo.start()
        await until(world, "probes through", lambda: len(echo.arrivals) >= 10, 5)
        echo.stop()
    world.run(scenario())


def test_the_mn_recovers_after_the_correspondent_restarts(world) -> None:
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        await world.stop("cn")
        await world.start("cn")
        hoa, cn = IPv6Address(HOA["mn"]), IPv6Address(CN)
        out = ProbeStream(world, "mn", hoa, cn, 20)
        world.tun_sinks["cn"] = out.received
        out.start()
        took = await until(world, "the CN accepts the MN's traffic again",
                           lambda: len(out.arrivals) >= 10, 420)
        out.stop()
        return took
    world.run(scenario())


def test_a_held_back_datagram_resent_by_an_on_path_attacker_moves_no_locator(world) -> None:
    """The attacker sits on the MN's wifi path: it takes one MN->HA tunnel
    datagram off the wire and re-sends it later from its own endpoint, with
    the CN's address as on-wire source.  The HA authenticates it (the ICV
    covers neither) but its locator for the CN stays the CN's."""
    held: list[bytes] = []

    def hold_back(src_access, packet: bytes, destination) -> bool:
        # ESP (next header 50) from the MN's wifi CoA to the HA, on the tunnel SA.
        if (not held and src_access.node == "mn" and len(packet) > 48 and packet[6] == 50
                and packet[40:44] == (0x1201).to_bytes(4, "big")):
            held.append(packet)
            return True
        return False

    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        ha = world.nodes["ha"]
        before = ha.locators.lookup(IPv6Address(CN))
        world.network.interceptors.append(hold_back)
        hoa = IPv6Address(HOA["mn"])
        # Clear-text class (UDP port 7) goes through the MN's tunnel to the HA.
        from vmip.sim.scenario import udp_probe
        world.tuns["mn"].inject(udp_probe(hoa, IPv6Address(CN), 1, 0.0)[:42]
                                + (7).to_bytes(2, "big") + udp_probe(hoa, IPv6Address(CN),
                                                                     1, 0.0)[44:])
        await until(world, "a tunnel datagram held back", lambda: held, 2)
        attacker = world.add_host("evil", "203.0.113.66", 40066)
        forged = held[0][:8] + IPv6Address(CN).packed + held[0][24:]
        counted = ha.counters["locator_not_vouched"]
        attacker.send(forged, ("192.0.2.2", 6275))
        await until(world, "the HA refusing to move a locator",
                    lambda: ha.counters["locator_not_vouched"] > counted, 2)
        after = ha.locators.lookup(IPv6Address(CN))
        assert after.endpoint == before.endpoint == ("192.0.2.18", 6275)
    world.run(scenario())


def test_ike_rekeys_during_a_move() -> None:
    """IKE keys: the MN's CHILD_SAs with its HA and the CN are rekeyed (RFC 7296
    §2.8) while it hands over to lte; the new SAs carry the traffic there."""
    with SimWorld(seed=4, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            await world.start_all()
            mn = world.nodes["mn"]
            await until(world, "registered on IKE SAs", lambda: bound_on(
                world, "mn", COA["mn"]["wifi0"]), 15)
            children = {sa["name"]: {c["spi_in"] for c in sa["children"]}
                        for sa in mn.keying.listing()["sas"]}
            hoa, cn = IPv6Address(HOA["mn"]), IPv6Address(CN)
            out = ProbeStream(world, "mn", hoa, cn, 50)
            world.tun_sinks["cn"] = out.received
            out.start()
            world.set_link("mn", "wifi0", False)
            mn.keying.rekey("ha")
            mn.keying.rekey("cn")
            await until(world, "bound on lte", lambda: bound_on(world, "mn", COA["mn"]["lte0"]),
                        15)
            await until(world, "rekeyed", lambda: all(
                {c["spi_in"] for c in sa["children"]} - children.get(sa["name"], set())
                for sa in mn.keying.listing()["sas"] if sa["name"] in ("ha", "cn")), 15)
            arrived = len(out.arrivals)
            await asyncio.sleep(2.0)
            out.stop()
            assert len(out.arrivals) >= arrived + 90   # 2 s at 50/s, on the new SAs
        world.run(scenario())


def test_the_ha_forwards_a_home_address_only_out_of_that_mns_own_tunnel(world) -> None:
    """MN2, holding valid SAs, tunnels a packet whose source is MN's home address
    to the HA: authentic, but not MN's tunnel, so the HA does not forward it
    (RFC 6275 §10.4.5, RFC 4301 §5.2); MN2's own packet on the same tunnel is."""
    from vmip.config import load_config
    from vmip.ipsec.esp import EspSA, tunnel_encap
    from vmip.node.keying_policy import static_keys
    from vmip.wire.ipv6 import build_ipv6_header
    from vmip.wire.udp import build_udp

    def clear_echo(source: str) -> bytes:
        """The lab's clear-text class (UDP port 7), which the CN takes from the home prefix."""
        src, dst = IPv6Address(source).packed, IPv6Address(CN).packed
        segment = build_udp(40000, 7, b"echo", src, dst)
        return build_ipv6_header(src, dst, 17, len(segment)) + segment

    async def scenario():
        await world.start_all()
        await until(world, "mn2 registered", lambda: bound_on(
            world, "mn2", COA["mn2"]["wifi0"], (HA,)), 5)
        params = static_keys(load_config(world.config_paths["mn2"])).sas["mn2-ha-tunnel-out"]
        sa = EspSA(params, world.loop.time())
        sa.seq = 10_000      # ahead of what MN2 has sent on it
        arrived: list[bytes] = []
        world.tun_sinks["cn"] = arrived.append
        attacker = world.add_host("mn2-host", "203.0.113.67", 40067)
        ha = world.nodes["ha"]

        def refused() -> int:
            # The tunnel SA's selectors (RFC 4301 §5.2) or, with coarser policies,
            # the HA's own check that a HoA comes out of that MN's tunnel.
            return ha.engine.drops["selector_mismatch"] + ha.counters["fwd_drop_home_source"]

        before = refused()
        for source in (HOA["mn"], HOA["mn2"]):
            wire = tunnel_encap(clear_echo(source), sa, world.loop.time())
            attacker.send(wire, ("192.0.2.2", 6275))
        await until(world, "MN2's own packet at the CN", lambda: IPv6Address(HOA["mn2"]).packed
                    in [packet[8:24] for packet in arrived], 2)
        assert refused() == before + 1
        assert IPv6Address(HOA["mn"]).packed not in [packet[8:24] for packet in arrived]
    world.run(scenario())


def test_a_move_costs_the_ha_no_walk_over_every_sa(world) -> None:
    """The HA moves an MN's tunnel SAs through an index of them, not by dumping
    the whole SAD and SPD per BU (docs/scale.md: that made a BU cost O(MNs))."""
    async def scenario():
        await world.start_all()
        await until(world, "registered", lambda: bound_on(world, "mn", COA["mn"]["wifi0"]), 5)
        sad = world.nodes["ha"].sad
        dumps = 0
        real_dump = sad.dump

        def counting_dump(*args, **kwargs):
            nonlocal dumps
            dumps += 1
            return real_dump(*args, **kwargs)

        sad.dump = counting_dump
        world.set_link("mn", "wifi0", False)
        await until(world, "bound on lte", lambda: bound_on(world, "mn", COA["mn"]["lte0"]), 10)
        tunnel_out = sad.get(0x1202, Direction.OUT, IPv6Address(COA["mn"]["lte0"]))
        assert tunnel_out is not None          # the tunnel followed the CoA ...
        assert dumps == 0                      # ... without a walk over every SA
    world.run(scenario())


def test_the_mn_ha_ike_sa_follows_a_move_with_mobike() -> None:
    """vmip ⇄ vmip: the MN's IKE SA with its HA negotiated MOBIKE (RFC 4555
    §3.3); on the move to lte the MN sends UPDATE_SA_ADDRESSES from the new
    CoA (§3.5) and the HA's IKE SA follows it; the same IKE SA carries on."""
    with SimWorld(seed=5, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            await world.start_all()
            mn, ha = world.nodes["mn"], world.nodes["ha"]
            await until(world, "registered on IKE SAs", lambda: bound_on(
                world, "mn", COA["mn"]["wifi0"]), 15)
            before = next(sa for sa in mn.keying.listing()["sas"] if sa["name"] == "ha")
            assert before["mobike"] is True
            world.set_link("mn", "wifi0", False)
            await until(world, "bound on lte", lambda: bound_on(world, "mn", COA["mn"]["lte0"]),
                        15)
            lte = COA["mn"]["lte0"]
            await until(world, "the HA's IKE SA at the lte CoA", lambda: any(
                sa["remote"].startswith(lte) and sa["stats"].get("mobike_updates_received")
                for sa in ha.keying.listing()["sas"]), 15)
            after = next(sa for sa in mn.keying.listing()["sas"] if sa["name"] == "ha")
            assert (after["spi_i"], after["spi_r"]) == (before["spi_i"], before["spi_r"])
            assert after["local"].startswith(lte) and after["stats"]["mobike_updates_sent"] == 1
            assert ha.keying.counters["mobike_sa_addresses_updated"] >= 1
        world.run(scenario())


def test_an_ike_datagram_that_breaks_the_core_costs_a_count_not_a_traceback_each(
        monkeypatch, caplog) -> None:
    """A datagram the IKE core chokes on is counted (``rx_ike_internal_error``)
    and its traceback logged once, however many such datagrams arrive: a
    responder must not log a traceback per packet."""
    import logging

    from vmip.ike.endpoint import IkeEndpoint
    from vmip.wire.ipv6 import build_ipv6_header
    from vmip.wire.udp import build_udp

    with SimWorld(seed=6, profiles=demo_profiles(), keys="ike") as world:
        async def scenario():
            await world.start_all()
            cn = world.nodes["cn"]

            def broken(self, *args, **kwargs):
                raise RuntimeError("a bug in the IKE core")
            monkeypatch.setattr(IkeEndpoint, "receive_datagram", broken)
            src, dst = IPv6Address(HA).packed, IPv6Address(CN).packed
            body = bytes(range(1, 9)) + bytes(8) + b"\x21\x20\x22\x08" + bytes(4) + \
                (28).to_bytes(4, "big")
            segment = build_udp(500, 500, body, src, dst)
            packet = build_ipv6_header(src, dst, 17, len(segment)) + segment
            with caplog.at_level(logging.INFO):
                for _ in range(50):
                    assert cn.keying.intercept(packet, src, ("192.0.2.2", 6275), "eth0",
                                               world.loop.time())
            assert cn.keying.counters["rx_ike_internal_error"] == 50
            failures = [r for r in caplog.records if "ike receive failed" in r.getMessage()]
            assert len(failures) == 1
        world.run(scenario())
