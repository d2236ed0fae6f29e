"""A node's CN role checks a BU's home address, and registers IRO's MH
intents for an SA an IKE exchange adds, without a walk over the SAD
(draft §8.1.2, §6.2.3; docs/scale.md).

A home agent or correspondent keyed by IKE holds an inbound transport SA
per peer.  ``MobilityAgent._known_peer`` dumped the SAD for every BU, and
each inbound transport SA added re-registered the intent of every peer:
O(N) per SA, O(N²) to bring up N peers.  Work is counted in Python line
events (tests/workcount.py), not time.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

from workcount import line_events

from vmip.ipsec.sa import Direction, Mode, SaParams
from vmip.sim.world import SimWorld

CN = IPv6Address("2001:db8:20::2")
HOA_MN = IPv6Address("2001:db8:100::10")
KEY = bytes(range(20))
SMALL, LARGE = 20, 2000


def peer(i: int) -> IPv6Address:
    return IPv6Address("2001:db8:77::") + 0x1_0000 + i


def add_transport_sa(sad, i: int, now: float) -> None:
    sad.add(SaParams(0x5000_0000 + i, Direction.IN, peer(i), CN, "aes128gcm16", KEY,
                     mode=Mode.TRANSPORT, name=f"extra-{i}"), now)


async def until(world: SimWorld, what: str, check, timeout: float) -> None:
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.05)


def test_known_peer_and_a_new_peer_s_sa_cost_the_same_with_100_times_the_peers():
    with SimWorld(seed=5, keys="ike") as world:
        async def scenario():
            await world.start_all()
            node = world.nodes["cn"]
            agent, sad = node.mobility, node.services.sad
            await until(world, "the MN's transport SA at the CN",
                        lambda: agent._known_peer(HOA_MN), 30)
            assert not agent._known_peer(peer(0))
            now = world.loop.time()
            work = {}
            added = 0
            for size in (SMALL, LARGE):
                while added < size:
                    add_transport_sa(sad, added, now)
                    added += 1
                assert agent._known_peer(peer(size - 1))
                known = line_events(lambda: agent._known_peer(HOA_MN))
                one_more = line_events(lambda: add_transport_sa(sad, added, now))
                added += 1
                work[size] = (known, one_more)
            assert agent._known_peer(peer(added - 1))
            (known_small, add_small), (known_large, add_large) = work[SMALL], work[LARGE]
            assert known_large <= known_small + 2, work
            assert add_large < 1.5 * add_small, work
            # A deleted SA's peer is known no more; its other SAs would keep it.
            sad.delete(0x5000_0000, Direction.IN, CN, reason="test")
            assert not agent._known_peer(peer(0))
        world.run(scenario())
