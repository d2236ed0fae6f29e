"""An MN proving address after address at a CN, on running nodes: the CN's
proof cache keeps another MN's proofs (docs/mobility.md, "Proof cache").

The attacker holds MN X's keys only and sends from its own underlay endpoint.
Each of its BUs names a fresh address; the CN's address test (draft §4.5.1)
reaches the endpoint the BU came from, so the attacker answers every one and
proves as many addresses as it likes, as an MN owning a whole prefix could.
MN Y's proof of its own CoA must survive: it is what lets Y come back to
that CoA without a new test.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address

from test_sim_coa_attacks import VICTIM_COA, attacker_host, both_registered
from test_sim_mip_duties import endpoint_of, mn_sa, on_wire, world  # noqa: F401
from test_sim_scenarios import CN, HOA, until

from vmip.wire.mh import (
    AlternateCareOfAddress,
    AotChallenge,
    AotResponse,
    BindingAck,
    BindingAckStatus,
    BindingUpdate,
    build_mh_packet,
    parse_mh,
)

ADDRESSES = 40
#: The CN's cache is shrunk to this so that the flood stays short; the
#: default (1024 pairs) falls to 1025 addresses the same way.
CACHE = 24


def test_an_mn_proving_many_addresses_keeps_another_mns_proof(world):  # noqa: F811
    async def scenario():
        await both_registered(world)
        cn = world.nodes["cn"]
        core = cn.mobility.cn
        victim = IPv6Address(HOA["mn2"])
        assert core.proofs.peek(victim, IPv6Address(VICTIM_COA))
        core.proofs.capacity = CACHE
        # X's own node goes quiet: the attacker speaks for X's HoA alone.
        world.set_link("mn", "wifi0", False)
        world.set_link("mn", "lte0", False)
        hoa = IPv6Address(HOA["mn"])
        received: list[bytes] = []
        attacker = attacker_host(world, received)
        out = mn_sa(world, "mn-cn-out")
        inbound = mn_sa(world, "mn-cn-in", ahead=0)
        sequence = core.binding(hoa).sequence
        proven = 0
        for index in range(1, ADDRESSES + 1):
            address = f"2001:db8:66::{index:x}"
            challenge = None
            while challenge is None:
                sequence = (sequence + 1) % 65536
                bu = BindingUpdate(sequence, 100, ack=True,
                                   options=(AlternateCareOfAddress(IPv6Address(address)),))
                received.clear()
                attacker.send(on_wire(build_mh_packet(bu, hoa, IPv6Address(CN)), out,
                                      world.loop.time(), address), endpoint_of(world, "cn"))
                await until(world, "the CN's answer at the attacker", lambda: received, 2)
                opened = inbound.unprotect(received[0][40:], world.loop.time())
                assert opened is not None
                answer = parse_mh(opened[1])
                if isinstance(answer, BindingAck):
                    # X's own node sent BUs after we read the sequence (RFC 6275 §11.7.3).
                    assert answer.status == BindingAckStatus.SEQUENCE_NUMBER_OUT_OF_WINDOW
                    sequence = answer.sequence
                    continue
                assert isinstance(answer, AotChallenge)
                challenge = answer
            aotr = build_mh_packet(AotResponse(challenge.nonce), hoa, IPv6Address(CN))
            attacker.send(on_wire(aotr, out, world.loop.time(), address),
                          endpoint_of(world, "cn"))
            await until(world, "proven", lambda address=address: core.proofs.peek(
                hoa, IPv6Address(address)), 2)
            proven += 1
        await asyncio.sleep(0.1)
        return proven, core.proofs.peek(victim, IPv6Address(VICTIM_COA)), \
            sum(1 for owner, _coa in core.proofs if owner == hoa), getattr(core.proofs, "per_hoa", CACHE)
    proven, kept, attackers, per_hoa = world.run(scenario())
    assert proven == ADDRESSES
    assert kept, "one MN's proofs evicted another MN's"
    assert attackers == per_hoa < CACHE
