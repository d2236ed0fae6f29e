"""The HA's locator table forgets the CoAs MNs left first (docs/scale.md).

Learned locators are bounded (LRU).  An MN that moves leaves its old CoA
behind; before, that stale entry stayed as recent as the move, so with
thousands of MNs moving the table filled with left CoAs and evicted the
live ones of MNs that stayed put (HA -> MN traffic then had no locator).
Now the HA's binding says which CoA is live: the one it named before goes
to the head of the eviction order.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

import pytest

from vmip.links.locators import DEFAULT_MAX_LEARNED, max_learned_for
from vmip.sim.scenario import demo_profiles
from vmip.sim.world import SimWorld

HA, CN = "2001:db8:100::1", "2001:db8:20::2"
COA = {"mn": {"wifi0": "2001:db8:31::2", "lte0": "2001:db8:32::2"},
       "mn2": {"wifi0": "2001:db8:41::2"}}


@pytest.fixture
def world():
    with SimWorld(seed=3, profiles=demo_profiles()) as sim:
        yield sim


def ha_bound_at(world: SimWorld, hoa: str, coa: str) -> bool:
    binding = world.nodes["ha"].mobility.ha.binding(IPv6Address(hoa))
    return binding is not None and binding.coa == IPv6Address(coa)


async def until(world: SimWorld, what: str, check, timeout: float) -> None:
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.01)


def learned(world: SimWorld) -> list[str]:
    """The HA's learned locators, first to be evicted first."""
    table = world.nodes["ha"].locators
    return [str(key.prefix.network_address) for key in table._learned.values()]


def test_the_coa_an_mn_left_is_the_first_locator_the_ha_evicts(world) -> None:
    async def scenario():
        await world.start_all()
        await until(world, "mn at wifi", lambda: ha_bound_at(
            world, "2001:db8:100::10", COA["mn"]["wifi0"]), 10)
        await until(world, "mn2 at wifi", lambda: ha_bound_at(
            world, "2001:db8:100::20", COA["mn2"]["wifi0"]), 10)
        assert COA["mn"]["wifi0"] in learned(world)
        world.set_link("mn", "wifi0", False)
        await until(world, "mn at lte", lambda: ha_bound_at(
            world, "2001:db8:100::10", COA["mn"]["lte0"]), 10)
        # mn2, which did not move, registered after mn: its CoA was older in
        # the LRU order than mn's move, yet the left CoA goes first.
        order = learned(world)
        assert order[0] == COA["mn"]["wifi0"], order
        assert world.nodes["ha"].locators.counters["left_behind"] >= 1
        # With the table full, the next entry evicts the left CoA, not mn2's.
        table = world.nodes["ha"].locators
        table.max_learned = len(order)
        table.confirm(IPv6Address("2001:db8:99::1"), ("192.0.2.99", 4500), world.loop.time())
        assert COA["mn"]["wifi0"] not in learned(world)
        assert COA["mn2"]["wifi0"] in learned(world) and COA["mn"]["lte0"] in learned(world)
    world.run(scenario())


def test_the_ha_sizes_its_locator_table_from_its_sas(world) -> None:
    assert max_learned_for(20_000) == 20_000
    assert max_learned_for(10) == DEFAULT_MAX_LEARNED

    async def scenario():
        await world.start_all()
        ha = world.nodes["ha"]
        assert len(ha.keys.sas) > 0
        assert ha.locators.max_learned == max_learned_for(len(ha.keys.sas))
    world.run(scenario())
