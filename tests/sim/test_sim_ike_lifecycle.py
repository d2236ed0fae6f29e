"""The life of IKE SAs between running nodes on virtual time (the sim's lab,
keys.mode = "ike"): simultaneous rekeys by both ends, a dead peer found by
liveness checks and re-established with backoff, terminate that holds, and
DELETEs when a node stops (RFC 7296 §2.4, §2.8.1, §2.8.2, §1.4.1)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

from vmip.sim.scenario import ProbeStream
from vmip.sim.world import SimWorld

HA, CN = "2001:db8:100::1", "2001:db8:20::2"
HOA_MN = "2001:db8:100::10"


async def until(world: SimWorld, what: str, check, timeout: float) -> float:
    """Run the simulation until *check()* holds; returns the virtual time it took."""
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.01)
    return world.loop.time() - start


def sas_with(world: SimWorld, node: str, peer: str) -> list[dict]:
    return [sa for sa in world.nodes[node].keying.listing()["sas"] if sa["name"] == peer]


def established(world: SimWorld, node: str, peer: str) -> list[dict]:
    return [sa for sa in sas_with(world, node, peer)
            if sa["state"] == "established" and sa["children"]]


def peer_row(world: SimWorld, node: str, peer: str) -> dict:
    return next(p for p in world.nodes[node].keying.listing()["peers"] if p["name"] == peer)


def outbound_spis(world: SimWorld, node: str, peer: str) -> set[int]:
    """SPIs the node's outbound IKE policies for *peer*'s children name."""
    spd = world.nodes[node].spd
    names = {c["name"] for sa in sas_with(world, node, peer) for c in sa["children"]}
    return {p.sa_bundle[0] for p in spd.list() if p.name.endswith("-out")
            and any(p.name.startswith(f"ike-{n}-") for n in names)}


def test_simultaneous_child_and_ike_rekeys_by_both_ends_lose_nothing():
    with SimWorld(seed=7, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)
            mn, cn = world.nodes["mn"], world.nodes["cn"]
            probes = ProbeStream(world, "mn", IPv6Address(HOA_MN), IPv6Address(CN), 100)
            world.tun_sinks["cn"] = probes.received
            probes.start()
            await asyncio.sleep(0.5)
            # Both ends at the same virtual instant: the requests cross.
            mn.keying.rekey("cn")
            cn.keying.rekey("mn")
            await until(world, "child rekeys resolved", lambda: all(
                sa["stats"].get("simultaneous_child_rekeys") for node, peer in
                (("mn", "cn"), ("cn", "mn")) for sa in established(world, node, peer)), 10)
            mn.keying.rekey("cn", ike=True)
            cn.keying.rekey("mn", ike=True)
            await until(world, "IKE rekeys resolved", lambda: all(
                sa["stats"].get("simultaneous_ike_rekeys") for node, peer in
                (("mn", "cn"), ("cn", "mn")) for sa in established(world, node, peer)), 10)
            await asyncio.sleep(2.0)
            probes.stop()
            await asyncio.sleep(0.5)
            # One IKE SA and one CHILD_SA pair each side, the same pair.
            mine, theirs = established(world, "mn", "cn"), established(world, "cn", "mn")
            assert len(mine) == 1 and len(theirs) == 1
            assert (mine[0]["spi_i"], mine[0]["spi_r"]) == (theirs[0]["spi_i"], theirs[0]["spi_r"])
            pairs_mn = {(c["spi_in"], c["spi_out"]) for c in mine[0]["children"]}
            pairs_cn = {(c["spi_out"], c["spi_in"]) for c in theirs[0]["children"]}
            assert pairs_mn == pairs_cn and len(pairs_mn) == 1
            # Traffic goes out on that pair, and nothing was lost on the way.
            assert outbound_spis(world, "mn", "cn") == {spi_out for _, spi_out in pairs_mn}
            assert probes.sent > 250 and len(probes.arrivals) == probes.sent
        world.run(scenario())


def test_dead_peer_found_retried_with_backoff_and_recovered():
    """The CN's link goes dead: the MN's liveness check fails, its IKE SA is
    dropped, retries come further and further apart; the link comes back and
    the MN re-establishes by itself (initiate = true)."""
    with SimWorld(seed=8, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)
            # The CN rekeys the IKE SA: the MN is its responder from now on,
            # and must still re-establish it (initiate = true).
            world.nodes["cn"].keying.rekey("mn", ike=True)
            await until(world, "the CN's IKE rekey", lambda: [
                sa for sa in established(world, "mn", "cn") if sa["role"] == "responder"], 10)
            first = established(world, "mn", "cn")[0]["spi_i"]
            world.network.set_up("cn", "eth0", False)
            # Default dpd_interval 30 s, then 5 sends over 31 s.
            took = await until(world, "the dead peer's IKE SA failing",
                               lambda: not established(world, "mn", "cn"), 30 + 31 + 5)
            assert took > 30
            assert "no response to INFORMATIONAL" in peer_row(world, "mn", "cn")["last_error"]
            starts = []
            retries = world.nodes["mn"].keying.counters
            for _ in range(3):
                before = retries["initiate_retries"]
                await until(world, "a retry", lambda: retries["initiate_retries"] > before, 200)
                starts.append(world.loop.time())
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            assert gaps[1] > gaps[0], gaps     # exponential, whatever the jitter
            assert peer_row(world, "mn", "cn")["failures"] >= 3
            world.network.set_up("cn", "eth0", True)
            await until(world, "re-established", lambda: established(world, "mn", "cn"), 200)
            assert established(world, "mn", "cn")[0]["spi_i"] != first
            assert peer_row(world, "mn", "cn")["failures"] == 0
        world.run(scenario())


def test_terminate_holds_until_initiate_and_stop_sends_deletes():
    with SimWorld(seed=9, keys="ike") as world:
        async def scenario():
            await world.start_all()
            mn = world.nodes["mn"]
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn"), 30)
            world.network.set_up("cn", "eth0", False)        # the peer is dead
            result = mn.keying.terminate("cn")
            assert result["terminated"] == 1
            assert not [sa for sa in sas_with(world, "mn", "cn")]   # gone at once
            assert peer_row(world, "mn", "cn")["terminated"]
            await asyncio.sleep(300)                          # no retry of its own
            assert not sas_with(world, "mn", "cn")
            assert mn.keying.counters["initiate_retries"] == 0
            world.network.set_up("cn", "eth0", True)
            assert mn.keying.initiate("cn")["already"] is False
            await until(world, "initiated again", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)
            # Stopping the MN DELETEs its IKE SA with the HA: the HA drops its
            # side at once (the CN's goes through the HA tunnel the MN's
            # deregistration closes at the same time: see the test below).
            ha = world.nodes["ha"]
            assert [sa for sa in ha.keying.listing()["sas"] if sa["name"] == "mn-wifi0"
                    and sa["state"] == "established"]
            await world.stop("mn")
            assert not [sa for sa in ha.keying.listing()["sas"] if sa["name"] == "mn-wifi0"]
            assert ha.keying.counters["ike_sa_deleted"] >= 1
        world.run(scenario())


def test_a_peers_delete_is_re_established_unless_this_side_terminated():
    """The CN terminates its IKE SA with the MN: the MN (initiate = true)
    tries again, and the CN, which terminated, refuses it until it initiates
    itself; a peer's DELETE alone (a peer restarting) is re-established."""
    with SimWorld(seed=10, keys="ike") as world:
        async def scenario():
            await world.start_all()
            mn, cn = world.nodes["mn"], world.nodes["cn"]
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)
            cn.keying.terminate("mn")
            await until(world, "the MN trying again", lambda:
                        cn.keying.counters["ike_refused_terminated"] >= 2, 60)
            assert not established(world, "mn", "cn")
            assert peer_row(world, "mn", "cn")["last_error"]
            cn.keying.initiate("mn")                 # lifts the terminate
            await until(world, "up again", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)
            # A DELETE from the CN without a terminate (a CN restarting, say):
            # the MN re-establishes by itself.
            first = established(world, "mn", "cn")[0]["spi_i"]
            sa = next(s for ep in cn.keying.endpoints.values() for s in ep.sas
                      if s.config.name == "mn" and s.is_established)
            sa.delete(world.loop.time())
            cn.keying._pump_all()
            await until(world, "re-established after the peer's DELETE", lambda: [
                s for s in established(world, "mn", "cn") if s["spi_i"] != first], 30)
        world.run(scenario())


def test_a_stopping_mn_deregisters_on_its_ike_sas_then_deletes_them():
    """Stopping an MN on IKE keys: its lifetime-0 BU still travels on the IKE
    SAs (the HA drops its binding), and then its DELETE ends its IKE SA at
    the HA, all within the bounded stop.  Its DELETE to the CN leaves at the
    same time as the deregistration, through the HA tunnel that the
    deregistration closes: the HA may refuse to forward it (best effort;
    the CN's liveness checks find the rest)."""
    hoa = IPv6Address(HOA_MN)

    def holders(world: SimWorld) -> list[str]:
        found = []
        for name in ("ha", "cn"):
            mobility = world.nodes[name].mobility
            caches = [mobility.cn.bindings()]
            if mobility.ha is not None:
                caches.append(mobility.ha.bindings())
            if any(entry.hoa == hoa for cache in caches for entry in cache):
                found.append(name)
        return found

    def ike_with_mn(world: SimWorld, nodes=("ha", "cn")) -> list[str]:
        return [f"{node}:{sa['name']}" for node in nodes
                for sa in world.nodes[node].keying.listing()["sas"]
                if sa["name"].startswith("mn") and not sa["name"].startswith("mn2")
                and sa["state"] == "established"]

    with SimWorld(seed=11, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "bound at the HA, IKE SAs with the HA and the CN",
                        lambda: "ha" in holders(world) and len(ike_with_mn(world)) == 2, 60)
            started = world.loop.time()
            await world.stop("mn")
            assert holders(world) == [] and ike_with_mn(world, ("ha",)) == []
            assert world.loop.time() - started <= 2.0
        world.run(scenario())


def spoofed_ike_sa_init(now: float) -> bytes:
    """An IKE_SA_INIT "from" the CN to the MN's HoA, as an off-path host can
    make it (its own DH, any PSK), in a clear IPv6/UDP packet."""
    from vmip.ike.ikesa import IkeSa, IkeSaConfig, Role
    from vmip.wire.ipv6 import build_ipv6_header
    from vmip.wire.udp import build_udp

    sa = IkeSa(IkeSaConfig(psk=b"x" * 32), Role.INITIATOR, (CN, 500), (HOA_MN, 500), now)
    sa.initiate(now)
    (message, _addr), = sa.datagrams_to_send(now)
    src, dst = IPv6Address(CN).packed, IPv6Address(HOA_MN).packed
    udp = build_udp(500, 500, message, src, dst)
    return build_ipv6_header(src, dst, 17, len(udp)) + udp


def test_a_spoofed_ike_sa_init_in_the_peers_name_stops_no_re_establishment():
    """An off-path attacker sends an IKE_SA_INIT in the CN's name to the
    MN's HoA every 10 s (the HA relays the CN's clear IKE to its MN) while
    the CN is dead and after it comes back.  The half-open responder SAs it
    makes carry the CN's name, but they prove nothing about the CN: the MN's
    retries go on with backoff, re-establish once the CN is back, and the
    new IKE SA carries INITIAL_CONTACT."""
    with SimWorld(seed=8, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)
            mn = world.nodes["mn"]
            ha_endpoint = (str(world.plan.node("ha").links[0].node_ipv4.ip), 6275)
            attacker = world.add_host("evil", "203.0.113.66", 40066)
            spoofing = True

            async def spoof() -> None:
                while spoofing:
                    attacker.send(spoofed_ike_sa_init(world.loop.time()), ha_endpoint)
                    await asyncio.sleep(10)

            def half_open_in_cns_name() -> list[dict]:
                return [sa for sa in sas_with(world, "mn", "cn")
                        if sa["role"] == "responder" and sa["state"] == "init-done"]

            task = asyncio.ensure_future(spoof())
            try:
                # The attack reaches the MN: a half-open responder SA named "cn".
                await until(world, "a spoofed half-open SA", lambda: half_open_in_cns_name(), 5)
                world.network.set_up("cn", "eth0", False)
                await until(world, "the dead peer's IKE SA failing",
                            lambda: not established(world, "mn", "cn"), 30 + 31 + 5)
                retries = mn.keying.counters
                before = retries["initiate_retries"]
                await until(world, "retries under the spoofing",
                            lambda: retries["initiate_retries"] >= before + 2, 60)
                await until(world, "a retry scheduled", lambda: peer_row(world, "mn", "cn")
                            ["retry_in_s"] is not None, 60)
                world.network.set_up("cn", "eth0", True)
                # Within the backoff schedule: the pending retry, and its exchange.
                due = peer_row(world, "mn", "cn")["retry_in_s"]
                assert half_open_in_cns_name()
                took = await until(world, "re-established under the spoofing",
                                   lambda: established(world, "mn", "cn"), due + 10)
            finally:
                spoofing = False
                task.cancel()
            assert took <= due + 10
            # Our INITIAL_CONTACT went out: only a half-open SA was there.
            ours = next(sa for ep in mn.keying.endpoints.values() for sa in ep.sas
                        if sa.config.name == "cn" and sa.is_established)
            assert ours.config.initial_contact
            cns = next(sa for ep in world.nodes["cn"].keying.endpoints.values()
                       for sa in ep.sas if sa.config.name == "mn" and sa.is_established)
            assert cns.peer_initial_contact
        world.run(scenario())


def test_a_dying_spoofed_half_open_sa_leaves_an_initiate_peer_retried():
    """An MN with no IKE SA with the CN and no retry pending (here: the CN
    terminated and the hold lifted without initiating; at start, an
    initiation that failed): when a spoofed half-open SA in the CN's name
    times out, the MN (initiate = true) schedules a retry and establishes."""
    with SimWorld(seed=11, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn"), 30)
            mn = world.nodes["mn"]
            mn.keying.terminate("cn")
            mn.keying._held.discard("cn")
            assert peer_row(world, "mn", "cn")["retry_in_s"] is None
            attacker = world.add_host("evil", "203.0.113.66", 40066)
            attacker.send(spoofed_ike_sa_init(world.loop.time()),
                          (str(world.plan.node("ha").links[0].node_ipv4.ip), 6275))
            await until(world, "a spoofed half-open SA", lambda: sas_with(world, "mn", "cn"), 5)
            await until(world, "it timing out", lambda: not sas_with(world, "mn", "cn")
                        or all(sa["state"] == "failed" for sa in sas_with(world, "mn", "cn")), 60)
            await until(world, "established again", lambda: established(world, "mn", "cn"), 10)
            assert mn.keying.counters["initiate_retries"] == 1
            assert peer_row(world, "mn", "cn")["last_error"] is None
        world.run(scenario())


def test_esp_from_the_peer_counts_as_liveness_so_a_busy_tunnel_sends_no_checks():
    """RFC 7296 §2.4: ESP received on a CHILD_SA proves the peer alive.  With
    traffic both ways for three liveness intervals, neither end sends a
    liveness check; once the traffic stops, the checks come back."""
    with SimWorld(seed=9, keys="ike") as world:
        async def scenario():
            await world.start_all()
            await until(world, "MN-CN IKE SA", lambda: established(world, "mn", "cn")
                        and established(world, "cn", "mn"), 30)

            def checks() -> int:
                return sum(sa["stats"].get("liveness_ok", 0)
                           for node, peer in (("mn", "cn"), ("cn", "mn"))
                           for sa in established(world, node, peer))
            assert checks() == 0
            to_cn = ProbeStream(world, "mn", IPv6Address(HOA_MN), IPv6Address(CN), 5)
            to_mn = ProbeStream(world, "cn", IPv6Address(CN), IPv6Address(HOA_MN), 5)
            world.tun_sinks["cn"] = to_cn.received
            world.tun_sinks["mn"] = to_mn.received
            to_cn.start()
            to_mn.start()
            await asyncio.sleep(3 * 30 + 5)    # the default dpd_interval is 30 s
            to_cn.stop()
            to_mn.stop()
            assert len(to_cn.arrivals) > 400 and len(to_mn.arrivals) > 400
            assert checks() == 0
            await until(world, "a liveness check on the idle tunnel", lambda: checks() > 0, 40)
        world.run(scenario())
