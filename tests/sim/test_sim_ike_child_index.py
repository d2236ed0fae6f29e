"""The IKE manager finds a CHILD_SA from an SADB event by index, not by a walk
over every child of every peer, and keeps those indexes true through soft
expiry (rekey), hard expiry and the end of an IKE SA (RFC 4301 §4.4.2.1,
RFC 7296 §2.8), between running nodes on virtual time.

A home agent keying N mobile nodes holds about 2N children; each expiry
used to walk them all (and collect every IKE SA afterwards): O(N) per
expiry, O(N²) per lifetime.  Work is counted in Python line events
(tests/workcount.py), not time.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from workcount import line_events

from vmip.ipsec.spd import Direction
from vmip.sim.world import SimWorld

SOFT, HARD = 60.0, 90.0


async def until(world: SimWorld, what: str, check, timeout: float) -> None:
    start = world.loop.time()
    while not check():
        if world.loop.time() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} virtual seconds")
        await asyncio.sleep(0.05)


def children_with(keying, peer: str) -> dict[int, object]:
    return {spi_in: record for spi_in, record in keying.children.items()
            if record.ike_sa.config.name == peer}


def padded_lookup_work(keying, spi_out: int, padding: int) -> int:
    """The work of one outbound-SPI lookup with *padding* more children held."""
    real = next(iter(keying.children.values()))
    fakes = []
    for i in range(padding):
        spi_in = 0x7000_0000 + i
        record = replace(real, ike_sa=object(), event=replace(real.event, spi_in=spi_in,
                                                              spi_out=0x6000_0000 + i))
        keying._index_child(spi_in, record)   # what _install_child does
        fakes.append((spi_in, record))
    try:
        return line_events(lambda: keying._child_of(spi_out, Direction.OUT))
    finally:
        for spi_in, record in fakes:
            del keying.children[spi_in]
            keying._unindex_child(spi_in, record)


def test_expiries_find_their_child_by_index_and_the_indexes_follow_rekeys_and_deletes():
    with SimWorld(seed=21, keys="ike") as world:
        async def scenario():
            await world.start_all()
            cn = world.nodes["cn"].keying
            # Before any CHILD_SA is installed (that takes IKE round trips).
            assert not cn.children
            cn.child_soft, cn.child_hard = SOFT, HARD
            await until(world, "CN's child with the MN", lambda: children_with(cn, "mn"), 30)
            (first_in, first), = children_with(cn, "mn").items()
            first_out = first.event.spi_out
            assert cn._child_of(first_out, Direction.OUT) == first_in
            assert cn._child_of(first_in, Direction.IN) == first_in
            assert cn._child_of(first_out ^ 0x5A5A5A5A, Direction.OUT) is None

            # The lookup costs the same with 2,000 more children than with 20.
            small = padded_lookup_work(cn, first_out, 20)
            large = padded_lookup_work(cn, first_out, 2000)
            assert large <= small + 2, (small, large)

            # Soft expiry (an SADB event from the SAD's timer) makes the CN
            # rekey: the rekey is sent although only that IKE SA was collected.
            await until(world, "rekey on soft expiry",
                        lambda: cn.counters["rekey_on_soft_expire"] > 0
                        and any(spi != first_in for spi in children_with(cn, "mn")), SOFT + 20)
            # The old child goes (the rekey's DELETE, or its hard expiry).
            await until(world, "old child removed",
                        lambda: first_in not in cn.children, HARD - SOFT + 20)
            assert cn._child_of(first_out, Direction.OUT) is None
            (new_in, new), = children_with(cn, "mn").items()
            assert cn._child_of(new.event.spi_out, Direction.OUT) == new_in

            # The IKE SA ends: its children and every index entry go with it.
            ike_sa = new.ike_sa
            cn.terminate("mn")
            await until(world, "children removed", lambda: not children_with(cn, "mn"), 20)
            assert ike_sa not in cn._children_by_ike_sa
            assert new.event.spi_out not in cn._children_by_spi_out
            assert set(cn._children_by_ike_sa) == {r.ike_sa for r in cn.children.values()}
        world.run(scenario())
